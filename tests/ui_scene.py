"""A service with history for the status page's tests: three pushes and their outcomes.

The service runs under gunicorn with HTTP Basic on its status page, a GitHub API stand-in
over a Git model (tests/test_github_e2e.py) and a CodePipeline stand-in whose execution
states the test sets (tests/fake_codepipeline.py); outcomes arrive as AWS's published
EventBridge events (tests/aws_events.py). After :func:`scene`:

- push ``new-branch`` creates ``master`` at ``root``: every pipeline starts; all succeed;
- push ``markup`` adds ``svc/collections/<script>alert(1)</script>.py`` (c1): the
  collections pipeline starts and succeeds;
- push ``web`` changes ``web/index.html`` (c2): the web pipeline starts and is still
  running.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.fake_codepipeline import FakeCodePipeline
from tests.harness import FakeAPI, Service
from tests.test_github_e2e import REPO, GitHubWorld, deliver, push_body
from tests.test_outcomes_e2e import EVENTS_KEY, SECRET, send_event

USERS = {"UI_USER_1": "alice:correct horse battery", "UI_USER_2": "bob:staple:paper"}
PIPELINES = ["collections-deploy", "utilities-deploy", "web-deploy"]
MARKUP_FILE = "svc/collections/<script>alert(1)</script>.py"


def basic(pair: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic for ``user:password``."""
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


ALICE = basic(USERS["UI_USER_1"])


def service_config(state: Path, api_url: str, cp_url: str,
                   ui: dict[str, Any] | None) -> dict[str, Any]:
    """The service of these tests; ``ui`` is the status page's section (None: absent)."""
    doc: dict[str, Any] = {
        "state": {"backend": "sqlite", "path": str(state)},
        "launcher": {"backend": "codepipeline", "region": "eu-west-1", "endpoint_url": cp_url},
        "processing": {"lease_seconds": 3, "poll_seconds": 0.5},
        "outcomes": {"api_keys": ["env:E2E_EVENTS_KEY"], "poll_seconds": 60},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master"],
            "pipelines": [
                {"name": "collections-deploy", "paths": ["svc/collections/**"]},
                {"name": "utilities-deploy", "paths": ["svc/utilities/**"]},
                {"name": "web-deploy", "paths": ["web/**", "!**/*.md"]},
            ],
        }],
    }
    if ui is not None:
        doc["ui"] = ui
    return doc


ENV = {"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": "t", "E2E_EVENTS_KEY": EVENTS_KEY, **USERS}


@dataclass
class Scene:
    """The running service and what was pushed and started."""

    svc: Service
    world: GitHubWorld
    cp: FakeCodePipeline
    root: str
    c1: str
    c2: str

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> requests.Response:
        """``path`` of the service, as alice unless ``headers`` say otherwise."""
        return requests.request(method, self.svc.url + path, timeout=10,
                                headers=ALICE if headers is None else headers)

    def execution(self, pipeline: str, n: int = -1) -> str:
        """The id of ``pipeline``'s ``n``-th execution (the last by default)."""
        return self.cp.started(pipeline)[n].execution_id


def _push(svc: Service, delivery_id: str, before: str | None, head: str) -> None:
    answer = deliver(svc, push_body(before, head), delivery_id=delivery_id)
    assert answer.status_code == 202, answer.text
    svc.wait_for(lambda lines: any(e.get("event") == "delivery.processed"
                                   and e.get("delivery_id") == delivery_id for e in lines))


def _finish(scene: Scene, pipeline: str, status: str) -> None:
    execution_id = scene.execution(pipeline)
    scene.cp.set_status(execution_id, status)
    answer = send_event(scene.svc, pipeline, execution_id, status.upper())
    assert answer.status_code == 202, answer.text


@contextlib.contextmanager
def scene(workdir: Path, ui: dict[str, Any]) -> Iterator[Scene]:
    """The service with the three pushes above made and their outcomes recorded."""
    api = FakeAPI()
    world = GitHubWorld(api)
    cp = FakeCodePipeline(PIPELINES)
    svc = Service(service_config(workdir / "state.db", api.url, cp.url, ui), workdir,
                  env=ENV, workers=1)
    root = world.root
    c1 = world.git.commit(root, {MARKUP_FILE: "1"})
    c2 = world.git.commit(c1, {"web/index.html": "2"})
    try:
        svc.start()
        shown = Scene(svc, world, cp, root, c1, c2)
        _push(svc, "new-branch", None, root)
        for name in PIPELINES:
            _finish(shown, name, "Succeeded")
        _push(svc, "markup", root, c1)
        _finish(shown, "collections-deploy", "Succeeded")
        _push(svc, "web", c1, c2)
        yield shown
    finally:
        svc.stop()
        cp.close()
        api.close()

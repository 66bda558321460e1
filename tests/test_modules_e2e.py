"""End to end: the module map (DESIGN.md "Module map") with the service under gunicorn.

A GitHub API stand-in over a Git model answers compares, the repository-side map file
(``GET /repos/{o}/{r}/contents/{path}?ref=``, raw) and commit statuses; the log launcher
counts every start as Succeeded at once, so baselines move with each push.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FakeAPI, Recorded, Service
from tests.test_github_e2e import REPO, GitHubWorld, push_and_wait

SECRET = "e2e-webhook-secret-value"
MAP_PATH = ".webhook-receiver.yaml"
MAP = """\
pipelines:
  - name: acme-api
    paths: ["api/**"]
    depends_on: [libs-common]
"""
JOBS = """\
  - name: acme-jobs
    paths: ["jobs/**"]
"""


def config(tmp_path: Path, api_url: str) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"lease_seconds": 3, "poll_seconds": 0.5},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master"], "commit_status": True,
            "module_map": {"path": MAP_PATH, "allow": ["acme-*"]},
            "modules": {"libs-common": {"paths": ["libs/common/**"]},
                        "ui-kit": {"paths": ["libs/ui/**"], "depends_on": ["libs-common"]}},
            "pipelines": [
                {"name": "svc-{module}-deploy", "paths": ["services/{module}/**"],
                 "depends_on": ["libs-common"], "variables": {"MODULE": "{module}"}},
                {"name": "web-deploy", "paths": ["web/**"], "depends_on": ["ui-kit"]},
                {"name": "docs-deploy", "paths": ["docs/**"]},
            ],
        }],
    }


class Mono:
    """The service, a Git model of the monorepo and the API stand-in."""

    def __init__(self, tmp_path: Path, api: FakeAPI) -> None:
        self.world = GitHubWorld(api)
        self.git = self.world.git
        self.head = self.git.commit(None, {
            "services/billing/a.py": "0", "services/search/a.py": "0",
            "libs/common/c.py": "0", "libs/ui/u.py": "0", "web/i.html": "0",
            "docs/r.md": "0", "api/x.py": "0", "jobs/j.py": "0", MAP_PATH: MAP})
        compare = api.routes.get
        contents = f"/repos/{REPO}/contents/"
        statuses = f"/repos/{REPO}/statuses/"
        mono = self

        class Routes(dict[str, Any]):
            def get(self, path: str, default: Any = None) -> Any:
                if path.startswith(contents):
                    return mono._contents
                if path.startswith(statuses):
                    return lambda rec: (201, {"state": json.loads(rec.body)["state"]}, {})
                return compare(path, default)

        api.routes = Routes()
        self.api = api
        self.svc = Service(config(tmp_path, api.url), tmp_path,
                           env={"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": "t"})

    def _contents(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        path = rec.path.split("/contents/", 1)[1]
        tree = self.git.commits[rec.query["ref"][0]].tree
        if rec.headers.get("accept") != "application/vnd.github.raw+json" or path not in tree:
            return 404, {"message": "Not Found"}, {}
        return 200, tree[path].encode(), {}

    def push(self, changes: dict[str, str | None]) -> str:
        before = self.head
        self.head = self.git.commit(before, changes)
        push_and_wait(self.svc, before, self.head)
        return self.head

    def started(self, commit: str) -> list[str]:
        return sorted(e["pipeline"] for e in self.svc.events("pipeline.started")
                      if e["commit"] == commit)

    def config_statuses(self, commit: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.api.requests
                if r.method == "POST" and r.path == f"/repos/{REPO}/statuses/{commit}"
                and json.loads(r.body)["context"] == "webhook-receiver/config"]


@pytest.fixture
def mono(tmp_path: Path, fake_api: FakeAPI) -> Iterator[Mono]:
    rig = Mono(tmp_path, fake_api)
    rig.svc.start()
    yield rig
    rig.svc.stop()


def test_a_shared_library_change_starts_every_dependent_pipeline_and_nothing_else(
        mono: Mono) -> None:
    first = mono.push({"services/billing/a.py": "1", "services/search/a.py": "1"})
    assert mono.started(first) == ["svc-billing-deploy", "svc-search-deploy"]
    change = mono.push({"libs/common/c.py": "1"})
    assert mono.started(change) == ["acme-api", "svc-billing-deploy", "svc-search-deploy",
                                    "web-deploy"]
    # state shows concrete names, each with its own baseline
    rows = {json.loads(line)["pipeline"]: json.loads(line)
            for line in mono.svc.cli("state").stdout.splitlines()}
    assert sorted(rows) == ["acme-api", "docs-deploy", "svc-billing-deploy",
                            "svc-search-deploy", "web-deploy"]
    assert {row["baseline_commit"] for row in rows.values()} == {change}
    # history says which dependency brought each one in (web-deploy through ui-kit)
    done = mono.svc.cli("history", "--commit", change, "--json")
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    matched = {p["pipeline"]: p["matched"] for p in record["pipelines"]}
    assert matched["web-deploy"] == [["libs/common/c.py", "libs/common/**", "libs-common"]]
    assert matched["svc-billing-deploy"] == [["libs/common/c.py", "libs/common/**",
                                              "libs-common"]]
    assert matched["docs-deploy"] == []
    text = mono.svc.cli("history", "--pipeline", "web-deploy").stdout
    assert "matched via libs-common: libs/common/c.py (libs/common/**)" in text


def test_a_module_added_to_the_repository_map_starts_on_the_next_push_touching_it(
        mono: Mono) -> None:
    added = mono.push({MAP_PATH: MAP + JOBS})
    assert mono.started(added) == []  # the file itself is no path of acme-jobs
    touched = mono.push({"jobs/j.py": "1"})
    assert mono.started(touched) == ["acme-jobs"]
    assert mono.svc.events("module_map.invalid") == []


def test_a_broken_map_keeps_the_previous_one_and_says_so(mono: Mono) -> None:
    added = mono.push({MAP_PATH: MAP + JOBS})
    broken_map = MAP + JOBS + "  - name: other-tool\n    paths: [\"tools/**\"]\n" \
        + "    depends_on: [nowhere]\n"
    broken = mono.push({MAP_PATH: broken_map, "jobs/j.py": "2"})
    assert mono.started(broken) == ["acme-jobs"]  # the kept map still has it
    (invalid,) = mono.svc.events("module_map.invalid")
    assert invalid["commit"] == broken and invalid["path"] == MAP_PATH
    assert invalid["errors"] == [
        "pipelines[2].depends_on: unknown name 'nowhere'; depends_on names a module or a "
        "pipeline",
        "pipelines[2].name: 'other-tool' is not allowed here; allowed: acme-*",
    ]
    assert invalid["kept"] == added
    mono.svc.wait_for(lambda _: len(mono.config_statuses(broken)) == 1)
    (status,) = mono.config_statuses(broken)
    assert status["state"] == "error"
    assert status["description"].startswith(f"{MAP_PATH}: pipelines[2].depends_on: unknown")
    assert status["target_url"].endswith(f"/{REPO}/blob/{broken}/{MAP_PATH}")

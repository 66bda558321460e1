"""End to end: the service under gunicorn, a local stand-in for the GitHub API, moto CodePipeline.

Real signed deliveries go over HTTP; what started is read from the log lines, from
``webhook-receiver state`` and from moto's ListPipelineExecutions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gitmodel import GitModel
from tests.harness import (
    FakeAPI,
    MotoServer,
    Recorded,
    Service,
    create_pipelines,
    executions,
    fixture_bytes,
)

SECRET = "e2e-webhook-secret-value"
TOKEN = "e2e-api-token-value"
REPO = "binkkatal/sample_app"  # the repository of the recorded push fixture
PIPELINES = ["collections-deploy", "utilities-deploy", "web-deploy"]


class GitHubWorld:
    """A fake GitHub API over a Git model, plus the signed deliveries that go with it."""

    def __init__(self, api: FakeAPI) -> None:
        self.api = api
        self.git = GitModel()
        self.root = self.git.commit(None, {"svc/collections/a.py": "1", "svc/utilities/u.py": "1",
                                           "web/index.html": "1"})
        api.routes["*"] = self._compare  # resolved by prefix below
        self._install()

    def _install(self) -> None:
        world = self

        class Routes(dict[str, Any]):
            def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
                prefix = f"/repos/{REPO}/compare/"
                if path.startswith(prefix):
                    return world._compare
                return default

        self.api.routes = Routes()

    def _compare(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        spec = rec.path.rsplit("/", 1)[1]
        base, _, head = spec.partition("...")
        if base not in self.git.commits or head not in self.git.commits:
            return 404, {"message": "Not Found"}, {}
        return 200, self.git.github_compare(base, head), {"X-RateLimit-Remaining": "4999"}

    def compare_calls(self) -> list[Recorded]:
        return [r for r in self.api.requests if "/compare/" in r.path]


def push_body(before: str | None, after: str, ref: str = "refs/heads/master") -> bytes:
    doc = json.loads(fixture_bytes("github/go-playground-push.json"))
    doc.update(ref=ref, before=before or "0" * 40, after=after, created=before is None)
    return json.dumps(doc).encode()


def deliver(svc: Service, body: bytes, delivery_id: str | None = None, secret: str = SECRET,
            event: str = "push") -> requests.Response:
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(svc.url + "/webhooks/github", data=body, timeout=10, headers={
        "Content-Type": "application/json", "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()), "X-Hub-Signature-256": sig,
    })


def push_and_wait(svc: Service, before: str, head: str) -> None:
    """Deliver a signed push from ``before`` to ``head`` and wait until it is processed."""
    answer = deliver(svc, push_body(before, head))
    assert answer.status_code == 202, answer.text
    svc.wait_for(lambda lines: any(
        e.get("event") == "delivery.processed" and e.get("head") == head for e in lines))


def service_config(tmp_path: Path, api_url: str, moto_url: str) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "codepipeline", "region": "us-east-1", "endpoint_url": moto_url},
        "processing": {"lease_seconds": 3, "poll_seconds": 0.5},
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


@pytest.fixture
def world(fake_api: FakeAPI) -> GitHubWorld:
    return GitHubWorld(fake_api)


@pytest.fixture
def service(tmp_path: Path, world: GitHubWorld, moto: MotoServer) -> Iterator[Service]:
    create_pipelines(moto.url, PIPELINES)
    svc = Service(service_config(tmp_path, world.api.url, moto.url), tmp_path,
                  env={"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": TOKEN})
    svc.start()
    yield svc
    svc.stop()


def started(svc: Service) -> list[tuple[str, str]]:
    return sorted((e["pipeline"], e["commit"]) for e in svc.events("pipeline.started"))


def processed(svc: Service, count: int) -> None:
    svc.wait_for(lambda lines: sum(e["event"] == "delivery.processed" for e in lines) >= count)


def state_rows(svc: Service) -> dict[str, dict[str, Any]]:
    done = svc.cli("state")
    assert done.returncode == 0, done.stderr
    return {row["pipeline"]: row for row in map(json.loads, done.stdout.splitlines())}


def test_two_pushes_start_exactly_the_pipelines_whose_modules_changed(
        service: Service, world: GitHubWorld, moto: MotoServer) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    first = deliver(service, push_body(world.root, c1))
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    processed(service, 1)
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2", "web/README.md": "docs only"})
    assert deliver(service, push_body(c1, c2)).status_code == 202
    processed(service, 2)

    assert started(service) == [("collections-deploy", c1), ("utilities-deploy", c2)]
    assert [len(executions(moto.url, p)) for p in PIPELINES] == [1, 1, 0]
    ids = {e["pipeline"]: e["execution_id"] for e in service.events("pipeline.started")}
    assert ids["collections-deploy"] == executions(moto.url, "collections-deploy")[0][
        "pipelineExecutionId"]
    rows = state_rows(service)
    assert {p: rows[p]["baseline_commit"] for p in PIPELINES} == {p: c2 for p in PIPELINES}
    assert rows["collections-deploy"]["last_started_commit"] == c1
    assert rows["utilities-deploy"]["last_execution_id"] == ids["utilities-deploy"]
    assert rows["web-deploy"]["last_started_commit"] is None
    # one compare per push, each authenticated with the configured token
    calls = world.compare_calls()
    assert [c.path.rsplit("/", 1)[1] for c in calls] == [f"{world.root}...{c1}", f"{c1}...{c2}"]
    assert all(c.headers["authorization"] == f"Bearer {TOKEN}" for c in calls)


def test_redelivery_answers_duplicate_and_starts_nothing(
        service: Service, world: GitHubWorld, moto: MotoServer) -> None:
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    body = push_body(world.root, c1)
    assert deliver(service, body, "delivery-1").status_code == 202
    processed(service, 1)
    again = deliver(service, body, "delivery-1")
    assert (again.status_code, again.json()) == (200, {"status": "duplicate",
                                                        "delivery_id": "delivery-1"})
    # the same push under a new delivery id is processed but starts nothing new
    assert deliver(service, body, "delivery-2").status_code == 202
    processed(service, 2)
    assert started(service) == [("web-deploy", c1)]
    assert len(executions(moto.url, "web-deploy")) == 1
    assert len(service.events("webhook.duplicate")) == 1


def test_bad_signature_answers_401_and_changes_nothing(
        service: Service, world: GitHubWorld, moto: MotoServer) -> None:
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    body = push_body(world.root, c1)
    bad = deliver(service, body, "forged-1", secret="not-the-secret")
    assert bad.status_code == 401
    assert bad.json()["error"] == "unauthorized"
    assert SECRET not in bad.text
    # the same id, correctly signed, is still new: nothing was recorded for the forgery
    assert deliver(service, body, "forged-1").status_code == 202
    processed(service, 1)
    rejected = service.events("webhook.rejected")
    assert [(e["reason"], e["provider"], e["status"], e["remote"]) for e in rejected] == \
        [("unauthorized", "github", 401, "127.0.0.1")]
    assert rejected[0]["duration_ms"] >= 0
    # its one line is that webhook.rejected: no separate access line at the default level
    assert not [e for e in service.events("http.access") if e["path"] == "/webhooks/github"]
    assert len(world.compare_calls()) == 1


def test_answer_does_not_wait_for_a_slow_provider_api(
        service: Service, world: GitHubWorld) -> None:
    world.api.delay = 3.0
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    answer = deliver(service, push_body(world.root, c1))
    assert answer.status_code == 202
    assert answer.elapsed.total_seconds() < 2.0
    processed(service, 1)


def test_delivery_accepted_before_a_crash_is_finished_after_restart(
        tmp_path: Path, world: GitHubWorld, moto: MotoServer) -> None:
    create_pipelines(moto.url, PIPELINES)
    config = service_config(tmp_path, world.api.url, moto.url)
    env = {"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": TOKEN}
    first = Service(config, tmp_path, env=env, name="before-crash").start()
    world.api.delay = 30.0  # the compare hangs: the delivery is in flight when we kill
    c1 = world.git.commit(world.root, {"svc/utilities/u.py": "2"})
    try:
        assert deliver(first, push_body(world.root, c1)).status_code == 202
        first.wait_for(lambda _: len(world.compare_calls()) >= 1)
    finally:
        first.stop(signal.SIGKILL)
    assert first.events("delivery.processed") == []
    world.api.delay = 0.0
    second = Service(config, tmp_path, env=env, name="after-restart").start()
    try:
        processed(second, 1)
        assert started(second) == [("utilities-deploy", c1)]
        assert len(executions(moto.url, "utilities-deploy")) == 1
    finally:
        second.stop()


def test_ping_and_branch_deletion_are_ignored(service: Service) -> None:
    ping = fixture_bytes("github/octokit-ping-repo.json")
    answer = deliver(service, ping, event="ping")
    assert (answer.status_code, answer.json()["status"]) == (200, "ignored")
    doc = json.loads(push_body("a" * 40, "b" * 40))
    doc.update(after="0" * 40, deleted=True)
    gone = deliver(service, json.dumps(doc).encode())
    assert (gone.status_code, gone.json()) == (200, {"status": "ignored",
                                                      "reason": "branch deleted: nothing to start"})


def test_logs_carry_the_delivery_fields_and_no_secret(
        service: Service, world: GitHubWorld) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    deliver(service, push_body(world.root, c1), "fields-1")
    processed(service, 1)
    text = service.log_path.read_text()
    assert SECRET not in text and TOKEN not in text
    lines = [e for e in service.logs() if e.get("delivery_id") == "fields-1"]
    assert {e["event"] for e in lines} >= {"webhook.accepted", "pipeline.started",
                                           "delivery.processed"}
    for e in lines:
        assert {"ts", "level", "event", "delivery_id", "provider", "repository"} <= set(e)
        assert (e["provider"], e["repository"]) == ("github", REPO)
    summary = service.events("delivery.processed")[0]
    assert {"branch", "head", "changed_files", "pipelines_started", "pipelines_unchanged",
            "duration_ms"} <= set(summary)
    assert (summary["branch"], summary["head"], summary["changed_files"]) == ("master", c1, 1)
    # one line per webhook request: webhook.accepted says the status, time and client too,
    # so gunicorn's access line for it is left to debug level
    accepted = next(e for e in lines if e["event"] == "webhook.accepted")
    assert (accepted["status"], accepted["remote"]) == (202, "127.0.0.1")
    assert isinstance(accepted["duration_ms"], float) and accepted["duration_ms"] >= 0
    access = [e for e in service.logs() if e["event"] == "http.access"]
    assert [e for e in access if e["path"] == "/webhooks/github"] == []
    # a request the app does not log itself keeps gunicorn's line, in the same JSON format
    assert requests.get(service.url + "/no-such-page", timeout=5).status_code == 404
    service.wait_for(lambda logs: any(e.get("event") == "http.access" for e in logs))
    page = service.events("http.access")[-1]
    assert ({k: page[k] for k in ("method", "path", "status")}
            == {"method": "GET", "path": "(other)", "status": 404})
    assert {"ts", "level", "duration_ms", "remote"} <= set(page)
    # CloudWatch metrics ride on the same lines (Embedded Metric Format)
    assert (accepted["Deliveries"], accepted["outcome"]) == (1, "accepted")
    assert accepted["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["provider", "outcome"]]
    assert (summary["CompareApiCalls"], summary["compare_api_calls"]) == (1, 1)


def test_history_answers_by_pipeline_commit_and_delivery(
        service: Service, world: GitHubWorld) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    deliver(service, push_body(world.root, c1), "why-1")
    processed(service, 1)
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2", "web/README.md": "docs"})
    deliver(service, push_body(c1, c2), "why-2")
    processed(service, 2)
    ids = {e["pipeline"]: e["execution_id"] for e in service.events("pipeline.started")}

    # "when did collections-deploy run, and why?"
    by_pipeline = service.cli("history", "--pipeline", "collections-deploy", "--json")
    assert by_pipeline.returncode == 0, by_pipeline.stderr
    (record,) = [json.loads(line) for line in by_pipeline.stdout.splitlines()]
    (entry,) = record["pipelines"]
    assert (record["delivery_id"], record["head"], entry["verdict"], entry["baseline"],
            entry["execution_id"], entry["matched"]) == \
        ("why-1", c1, "started", world.root, ids["collections-deploy"],
         [["svc/collections/a.py", "svc/collections/**"]])

    # "why didn't web-deploy run for commit c2?" (only a Markdown file changed there)
    by_commit = service.cli("history", "--commit", c2, "--json")
    (record,) = [json.loads(line) for line in by_commit.stdout.splitlines()]
    verdicts = {p["pipeline"]: (p["verdict"], p["baseline"], p["diff"], p["complete"])
                for p in record["pipelines"]}
    assert verdicts == {
        "collections-deploy": ("unchanged", c1, "compare", True),
        "utilities-deploy": ("started", c1, "compare", True),
        "web-deploy": ("unchanged", c1, "compare", True),
    }

    # "what did delivery why-1 do?" in the human form
    text = service.cli("history", "--delivery", "why-1")
    assert text.returncode == 0
    assert f"delivery why-1 (github {REPO}, attempt 1): branch master" in text.stdout
    assert (f"  collections-deploy: started; baseline {world.root[:12]}; diff compare; "
            f"matched svc/collections/a.py (svc/collections/**); "
            f"execution {ids['collections-deploy']}") in text.stdout
    missing = service.cli("history", "--delivery", "never-seen")
    assert (missing.returncode, missing.stderr) == (1, "no decision recorded for that\n")

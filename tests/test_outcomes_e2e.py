"""End to end: baselines follow what was deployed (DESIGN.md "Execution outcomes").

The service runs under gunicorn with a GitHub API stand-in over a Git model and a local
CodePipeline stand-in whose execution states the test sets (tests/fake_codepipeline.py).
Outcomes arrive as EventBridge events on ``POST /events/codepipeline``, or, with events
switched off, from the service's own poll of GetPipelineExecution.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.aws_events import aws_event
from tests.fake_codepipeline import FakeCodePipeline
from tests.harness import FakeAPI, Service
from tests.test_github_e2e import REPO, GitHubWorld, deliver, push_and_wait, push_body

EVENTS_KEY = "events-api-key-value"
SECRET = "e2e-webhook-secret-value"


def config(tmp_path: Path, api_url: str, cp_url: str, *, events: bool) -> dict[str, Any]:
    outcomes: dict[str, Any] = {"poll_seconds": 1}
    if events:
        outcomes["api_keys"] = ["env:E2E_EVENTS_KEY", "env:E2E_EVENTS_KEY_OLD"]
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "codepipeline", "region": "us-east-1", "endpoint_url": cp_url},
        "processing": {"lease_seconds": 3, "poll_seconds": 0.5},
        "outcomes": outcomes,
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master"], "commit_status": True,
            "pipelines": [
                {"name": "a-deploy", "paths": ["svc/a/**"]},
                {"name": "b-deploy", "paths": ["svc/b/**"]},
            ],
        }],
    }


class Rig:
    def __init__(self, tmp_path: Path, api: FakeAPI, *, events: bool) -> None:
        self.world = GitHubWorld(api)
        git = self.world.git
        self.c0 = git.commit(None, {"svc/a/x.py": "0", "svc/b/y.py": "0", "docs/r.md": "0"})
        self.cp = FakeCodePipeline(["a-deploy", "b-deploy"])
        self.svc = Service(config(tmp_path, api.url, self.cp.url, events=events), tmp_path,
                           env={"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": "t",
                                "E2E_EVENTS_KEY": EVENTS_KEY, "E2E_EVENTS_KEY_OLD": "old-key"})
        self.events = events
        self.head = self.c0
        compare = self.world.api.routes.get
        statuses_prefix = f"/repos/{REPO}/statuses/"

        class Routes(dict[str, Any]):
            def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
                if path.startswith(statuses_prefix):
                    return lambda rec: (201, {"state": json.loads(rec.body)["state"]}, {})
                return compare(path, default)

        self.world.api.routes = Routes()

    def statuses(self, commit: str, pipeline: str) -> list[str]:
        """The states written on ``commit`` for ``pipeline``, in order."""
        return [json.loads(r.body)["state"] for r in self.world.api.requests
                if r.method == "POST" and r.path == f"/repos/{REPO}/statuses/{commit}"
                and json.loads(r.body)["context"] == f"codepipeline/{pipeline}"]

    def wait_statuses(self, commit: str, pipeline: str, expected: list[str]) -> None:
        deadline = time.monotonic() + 15
        while self.statuses(commit, pipeline) != expected:
            assert time.monotonic() < deadline, self.statuses(commit, pipeline)
            time.sleep(0.1)

    def push(self, changes: dict[str, str]) -> str:
        before = self.head
        self.head = self.world.git.commit(before, changes)
        push_and_wait(self.svc, before, self.head)
        return self.head

    def starts(self, pipeline: str) -> list[str]:
        return [x.execution_id for x in self.cp.started(pipeline)]

    def finish(self, execution_id: str, status: str, attempt: int = 1) -> None:
        """The execution ends with ``status``: an event, or (events off) what the poll sees."""
        self.cp.set_status(execution_id, status)
        if self.events:
            answer = send_event(self.svc, self.cp.executions[execution_id].pipeline,
                                execution_id, status.upper(), attempt)
            assert answer.status_code == 202, answer.text
        else:
            self.svc.wait_for(lambda lines: any(
                e.get("event") == "execution.finished" and e.get("execution_id") == execution_id
                and e.get("source") == "poll" for e in lines), timeout=15)

    def state(self) -> dict[str, dict[str, Any]]:
        done = self.svc.cli("state")
        assert done.returncode == 0, done.stderr
        return {row["pipeline"]: row for row in map(json.loads, done.stdout.splitlines())}


def event_body(pipeline: str, execution_id: str, state: str, attempt: int = 1) -> bytes:
    """AWS's published event for ``state`` (floats and all), about this execution."""
    return aws_event(pipeline, execution_id, state, attempt)


def send_event(svc: Service, pipeline: str, execution_id: str, state: str, attempt: int = 1,
               key: str | None = EVENTS_KEY) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    return requests.post(svc.url + "/events/codepipeline", timeout=10, headers=headers,
                         data=event_body(pipeline, execution_id, state, attempt))


@contextlib.contextmanager
def running(tmp_path: Path, api: FakeAPI, *, events: bool) -> Iterator[Rig]:
    """The rig with its service started; stopped afterwards."""
    rig = Rig(tmp_path, api, events=events)
    rig.svc.start()
    try:
        yield rig
    finally:
        rig.svc.stop()
        rig.cp.close()


@pytest.fixture(params=[True, False], ids=["events", "poll only"])
def rig(request: pytest.FixtureRequest, tmp_path: Path, fake_api: FakeAPI) -> Iterator[Rig]:
    with running(tmp_path, fake_api, events=request.param) as started:
        yield started


def test_a_failed_execution_is_caught_up_by_the_next_push(rig: Rig) -> None:
    # both modules deployed at c1
    c1 = rig.push({"svc/a/x.py": "1", "svc/b/y.py": "1"})
    (a1,), (b1,) = rig.starts("a-deploy"), rig.starts("b-deploy")
    rig.finish(a1, "Succeeded")
    rig.finish(b1, "Succeeded")
    state = rig.state()
    assert state["a-deploy"]["deployed_commit"] == c1 == state["b-deploy"]["deployed_commit"]

    # a push touching a starts a; its execution fails: a's baseline falls back to c1
    c2 = rig.push({"svc/a/x.py": "2"})
    a2 = rig.starts("a-deploy")[-1]
    assert len(rig.starts("b-deploy")) == 1
    rig.finish(a2, "Failed")
    rig.wait_statuses(c2, "a-deploy", ["pending", "failure"])
    state = rig.state()
    assert state["a-deploy"]["baseline_commit"] == c1
    assert state["a-deploy"]["last_started_commit"] == c2
    assert state["a-deploy"]["last_execution_status"] == "Failed"
    shown = rig.svc.cli("history", "--commit", c2)
    assert f"execution {a2} (Failed)" in shown.stdout, shown.stdout
    as_json = json.loads(rig.svc.cli("history", "--commit", c2, "--json").stdout)
    assert [(p["pipeline"], p["outcome"]) for p in as_json["pipelines"]
            if p["verdict"] == "started"] == [("a-deploy", "Failed")]

    # the next push touches only b: it starts b and a again
    c3 = rig.push({"svc/b/y.py": "3"})
    assert len(rig.starts("a-deploy")) == 3 and len(rig.starts("b-deploy")) == 2
    a3, b3 = rig.starts("a-deploy")[-1], rig.starts("b-deploy")[-1]
    rig.finish(a3, "Succeeded")
    rig.finish(b3, "Succeeded")
    rig.wait_statuses(c3, "a-deploy", ["pending", "success"])
    rig.wait_statuses(c3, "b-deploy", ["pending", "success"])
    state = rig.state()
    for name in ("a-deploy", "b-deploy"):
        assert state[name]["baseline_commit"] == c3
        assert state[name]["deployed_commit"] == c3
        assert state[name]["last_execution_status"] == "Succeeded"

    # a push touching neither starts nothing
    rig.push({"docs/r.md": "4"})
    assert len(rig.starts("a-deploy")) == 3 and len(rig.starts("b-deploy")) == 2


def test_a_failure_with_nothing_deployed_counts_the_pipeline_as_changed(rig: Rig) -> None:
    rig.push({"svc/a/x.py": "1"})
    (a1,) = rig.starts("a-deploy")
    rig.finish(a1, "Failed")
    assert rig.state()["a-deploy"]["baseline_commit"] is None  # nothing deployed
    rig.push({"docs/r.md": "2"})
    assert len(rig.starts("a-deploy")) == 2


def test_a_stopped_execution_that_was_superseded_moves_no_baseline(rig: Rig) -> None:
    rig.push({"svc/a/x.py": "1"})
    (a1,) = rig.starts("a-deploy")
    c2 = rig.push({"svc/a/x.py": "2"})
    rig.finish(a1, "Superseded")
    assert rig.state()["a-deploy"]["baseline_commit"] == c2


def test_a_late_delivery_of_an_older_commit_starts_nothing(rig: Rig) -> None:
    c1 = rig.push({"svc/a/x.py": "1"})
    c2 = rig.push({"svc/a/x.py": "2"})
    rig.finish(rig.starts("a-deploy")[-1], "Failed")  # a falls back below c2
    assert len(rig.starts("a-deploy")) == 2
    answer = deliver(rig.svc, push_body(rig.c0, c1))  # c1's delivery, late
    assert answer.status_code == 202
    rig.svc.wait_for(lambda lines: sum(e.get("event") == "delivery.processed"
                                       for e in lines) == 3)
    assert len(rig.starts("a-deploy")) == 2
    assert rig.state()["a-deploy"]["last_started_commit"] == c2


@pytest.mark.parametrize("events", [True], ids=["events"])
def test_replayed_and_reversed_events_give_the_same_final_state(tmp_path: Path,
                                                                fake_api: FakeAPI,
                                                                events: bool) -> None:
    with running(tmp_path, fake_api, events=events) as rig:
        c1 = rig.push({"svc/a/x.py": "1", "svc/b/y.py": "1"})
        (a1,), (b1,) = rig.starts("a-deploy"), rig.starts("b-deploy")
        sequence = [("a-deploy", a1, "STARTED"), ("a-deploy", a1, "FAILED"),
                    ("b-deploy", b1, "STARTED"), ("b-deploy", b1, "SUCCEEDED")]
        answers = []
        for _ in range(3):
            for pipeline, execution_id, state in reversed(sequence):
                answers.append(send_event(rig.svc, pipeline, execution_id, state).status_code)
        assert answers.count(202) == 2  # the two final states, once each
        assert set(answers) == {200, 202}
        state = rig.state()
        assert state["a-deploy"]["baseline_commit"] is None
        assert state["a-deploy"]["last_execution_status"] == "Failed"
        assert state["b-deploy"]["deployed_commit"] == c1
        rig.wait_statuses(c1, "a-deploy", ["pending", "failure"])
        rig.wait_statuses(c1, "b-deploy", ["pending", "success"])
        # a console retry of the failed execution (same id, attempt 2) succeeds: it counts
        assert send_event(rig.svc, "a-deploy", a1, "STARTED", 2).status_code == 202
        assert send_event(rig.svc, "a-deploy", a1, "SUCCEEDED", 2).status_code == 202
        assert send_event(rig.svc, "a-deploy", a1, "FAILED", 1).status_code == 200
        state = rig.state()
        assert state["a-deploy"]["baseline_commit"] == c1
        assert state["a-deploy"]["deployed_commit"] == c1


def test_event_route_refuses_missing_or_wrong_keys_and_records_nothing(tmp_path: Path,
                                                                      fake_api: FakeAPI) -> None:
    with running(tmp_path, fake_api, events=True) as rig:
        rig.push({"svc/a/x.py": "1"})
        (a1,) = rig.starts("a-deploy")
        for key in (None, "", "wrong-key", EVENTS_KEY + "x"):
            answer = send_event(rig.svc, "a-deploy", a1, "FAILED", key=key)
            assert answer.status_code == 401, (key, answer.text)
        assert rig.state()["a-deploy"]["last_execution_status"] == "InProgress"
        # the older key of a rotation still verifies
        assert send_event(rig.svc, "a-deploy", a1, "FAILED", key="old-key").status_code == 202
        # an execution this service did not start, and another detail-type, are ignored
        other = send_event(rig.svc, "a-deploy", "not-ours", "FAILED")
        assert (other.status_code, other.json()["status"]) == (200, "ignored")
        body = json.loads(event_body("a-deploy", a1, "FAILED"))
        body["detail-type"] = "CodePipeline Stage Execution State Change"
        stage = requests.post(rig.svc.url + "/events/codepipeline", data=json.dumps(body),
                              headers={"Content-Type": "application/json",
                                       "x-api-key": EVENTS_KEY}, timeout=10)
        assert (stage.status_code, stage.json()["status"]) == (200, "ignored")
        assert not any(e.get("level") == "error" for e in rig.svc.logs())
        assert EVENTS_KEY not in rig.svc.log_path.read_text()


def test_poll_asks_only_about_executions_without_a_final_state(tmp_path: Path,
                                                               fake_api: FakeAPI) -> None:
    with running(tmp_path, fake_api, events=False) as rig:
        rig.push({"svc/a/x.py": "1", "svc/b/y.py": "1"})
        (a1,), (b1,) = rig.starts("a-deploy"), rig.starts("b-deploy")
        rig.finish(a1, "Succeeded")
        asked_before = [p["pipelineExecutionId"] for op, p in rig.cp.calls
                        if op == "GetPipelineExecution"]
        time.sleep(2.5)  # two more poll passes
        asked_after = [p["pipelineExecutionId"] for op, p in rig.cp.calls
                       if op == "GetPipelineExecution"][len(asked_before):]
        assert asked_after and set(asked_after) == {b1}


def test_state_seed_sets_baselines_from_each_pipelines_newest_success(tmp_path: Path,
                                                                      fake_api: FakeAPI) -> None:
    import boto3

    rig = Rig(tmp_path, fake_api, events=True)
    try:
        cp = boto3.client("codepipeline", endpoint_url=rig.cp.url, region_name="us-east-1")
        old, new, failed = "1" * 40, "2" * 40, "3" * 40
        for commit, status in ((old, "Succeeded"), (new, "Succeeded"), (failed, "Failed")):
            started = cp.start_pipeline_execution(name="a-deploy", sourceRevisions=[{
                "actionName": "Source", "revisionType": "COMMIT_ID", "revisionValue": commit}])
            rig.cp.set_status(started["pipelineExecutionId"], status)
            time.sleep(0.01)  # distinct start times
        done = rig.svc.cli("state", "seed", "--from-executions")
        assert done.returncode == 0, done.stderr
        lines = {row["pipeline"]: row for row in map(json.loads, done.stdout.splitlines())}
        assert lines["a-deploy"]["commit"] == new and lines["a-deploy"]["seeded"] is True
        assert lines["b-deploy"]["seeded"] is False  # never succeeded: left alone
        state = rig.state()
        assert state["a-deploy"]["baseline_commit"] == new == state["a-deploy"]["deployed_commit"]
        assert state["a-deploy"]["branch"] == "master"
        assert "b-deploy" not in state

        by_hand = rig.svc.cli("state", "seed", "--pipeline", "b-deploy", "--commit", old)
        assert by_hand.returncode == 0, by_hand.stderr
        assert rig.state()["b-deploy"]["deployed_commit"] == old
        wrong = rig.svc.cli("state", "seed", "--pipeline", "nope", "--commit", old)
        assert wrong.returncode == 2 and "nope" in wrong.stderr
    finally:
        rig.cp.close()

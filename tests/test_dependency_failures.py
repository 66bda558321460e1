"""Dependency failures are handled, not hidden (issue 2).

moto cannot produce CodePipeline's throttling or limit errors, so a local HTTP server
plays CodePipeline's JSON error replies (injected errors); botocore's real retry logic runs
against it. DynamoDB being down is shown on the real service under gunicorn.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.base import Diff
from receiver.config import Config, LauncherConfig, RepositoryConfig, parse
from receiver.events import Delivery, PushEvent
from receiver.launcher import CodePipelineLauncher, StartRequest
from receiver.logging import configure
from receiver.processor import Processor
from receiver.state.sqlite import SQLiteStore
from receiver.worker import Worker
from tests.harness import FakeAPI, Recorded, Service, fixture_bytes, free_port

BASE, HEAD = "a" * 40, "b" * 40
REPO = "acme/mono"
OK = (200, {"pipelineExecutionId": "exec-ok"}, {})


def error(code: str) -> tuple[int, Any, dict[str, str]]:
    return 400, {"__type": code, "message": "injected"}, {}


class FakeCodePipeline:
    """Answers StartPipelineExecution from a script, per pipeline; records what was asked."""

    def __init__(self, api: FakeAPI) -> None:
        self.scripts: dict[str, list[tuple[int, Any, dict[str, str]]]] = {}
        self.calls: list[str] = []
        api.routes["/"] = self._answer
        self.url = api.url

    def _answer(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        name = json.loads(rec.body)["name"]
        self.calls.append(name)
        script = self.scripts.get(name, [])
        return script.pop(0) if script else OK


class OneDiff:
    """The provider API stand-in: every compare says both modules changed."""

    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        return Diff("ahead", frozenset({"svc/a/x.py", "svc/b/y.py"}), None, 1)


@pytest.fixture
def cp(fake_api: FakeAPI) -> FakeCodePipeline:
    return FakeCodePipeline(fake_api)


def make_config(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Config:
    monkeypatch.setenv("DEP_SECRET", "x")
    return parse({
        "launcher": {"backend": "codepipeline", "region": "us-east-1", "endpoint_url": endpoint},
        "processing": {"max_attempts": 4, "retry_backoff_seconds": 0},
        "repositories": [{
            "provider": "github", "name": REPO, "webhook_secrets": ["env:DEP_SECRET"],
            "branches": ["main"],
            "pipelines": [{"name": "a-deploy", "paths": ["svc/a/**"]},
                          {"name": "b-deploy", "paths": ["svc/b/**"]}],
        }],
    })


class Rig:
    def __init__(self, tmp_path: Path, cfg: Config) -> None:
        configure()
        self.store = SQLiteStore(str(tmp_path / "s.db"))
        self.store.init()
        processor = Processor(cfg, self.store, CodePipelineLauncher(cfg.launcher),
                              {"github": OneDiff()})  # type: ignore[dict-item]
        self.worker = Worker(processor, self.store, cfg.processing)
        event = PushEvent("github", REPO, "branch", "main", BASE, HEAD)
        self.store.record_delivery(Delivery("d1", "github", REPO, (event,)), 1.0)

    def baseline(self, pipeline: str) -> tuple[str | None, str | None]:
        b = self.store.baselines(f"github:{REPO}", "main").get(pipeline)
        return (b.commit, b.last_started_commit) if b else (None, None)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_throttled_start_is_retried_by_botocore_then_succeeds(cp: FakeCodePipeline) -> None:
    cp.scripts["a-deploy"] = [error("ThrottlingException"), error("ThrottlingException")]
    launcher = CodePipelineLauncher(LauncherConfig(region="us-east-1", endpoint_url=cp.url))
    assert launcher.start(StartRequest("a-deploy", HEAD, "main", REPO)) == "exec-ok"
    assert cp.calls == ["a-deploy"] * 3


def test_throttling_beyond_botocores_retries_keeps_the_baseline_and_retries_the_delivery(
        tmp_path: Path, cp: FakeCodePipeline, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig(tmp_path, make_config(monkeypatch, cp.url))
    cp.scripts["a-deploy"] = [error("ThrottlingException")] * 3  # all of botocore's attempts
    assert rig.worker.run_once() is True
    assert cp.calls.count("a-deploy") == 3
    assert rig.baseline("a-deploy") == (BASE, None)  # kept where it was compared from
    assert rig.baseline("b-deploy") == (HEAD, HEAD)  # the other pipeline was not held up
    first = lines(capsys)
    failed = [e for e in first if e["event"] == "pipeline.start_failed"]
    assert [(e["pipeline"], e["will_retry"]) for e in failed] == [("a-deploy", True)]
    assert [e["event"] for e in first if e["event"] == "delivery.retry"] == ["delivery.retry"]
    # the released delivery is claimed again and this time the start goes through
    assert rig.worker.run_once() is True
    assert rig.baseline("a-deploy") == (HEAD, HEAD)
    assert cp.calls.count("a-deploy") == 4 and cp.calls.count("b-deploy") == 1
    assert rig.worker.run_once() is False  # finished: nothing left to claim


def test_concurrent_executions_limit_is_retried_later_with_the_baseline_kept(
        tmp_path: Path, cp: FakeCodePipeline, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig(tmp_path, make_config(monkeypatch, cp.url))
    cp.scripts["a-deploy"] = [error("ConcurrentPipelineExecutionsLimitExceededException")]
    rig.worker.run_once()
    assert cp.calls.count("a-deploy") == 1  # botocore does not retry this code by itself
    assert rig.baseline("a-deploy") == (BASE, None)
    rig.worker.run_once()
    assert rig.baseline("a-deploy") == (HEAD, HEAD)
    started = [e["pipeline"] for e in lines(capsys) if e["event"] == "pipeline.started"]
    assert sorted(started) == ["a-deploy", "b-deploy"]


def test_missing_pipeline_is_logged_keeps_its_baseline_and_is_not_retried(
        tmp_path: Path, cp: FakeCodePipeline, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig(tmp_path, make_config(monkeypatch, cp.url))
    cp.scripts["a-deploy"] = [error("PipelineNotFoundException")]
    rig.worker.run_once()
    assert rig.worker.run_once() is False  # finished, not released for a retry
    assert cp.calls.count("a-deploy") == 1
    assert rig.baseline("a-deploy") == (BASE, None)
    out = lines(capsys)
    failed = [e for e in out if e["event"] == "pipeline.start_failed"]
    assert [(e["pipeline"], e["will_retry"], e["error"].split(":")[0]) for e in failed] == \
        [("a-deploy", False, "PipelineNotFoundException")]
    assert not [e for e in out if e["event"] == "delivery.retry"]


def test_dynamodb_down_makes_readyz_and_webhooks_answer_503(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: DynamoDB is unreachable
    secret = "ddb-down-secret"
    cfg = {
        "state": {"backend": "dynamodb", "table": "unreachable", "region": "us-east-1",
                  "endpoint_url": dead},
        "launcher": {"backend": "log"},
        "repositories": [{"provider": "github", "name": "binkkatal/sample_app",
                          "webhook_secrets": ["env:DDB_SECRET"], "branches": ["master"],
                          "pipelines": [{"name": "p", "paths": ["**"]}]}],
    }
    svc = Service(cfg, tmp_path, env={"DDB_SECRET": secret}, workers=1).start()
    try:
        assert requests.get(svc.url + "/healthz", timeout=5).status_code == 200
        ready = requests.get(svc.url + "/readyz", timeout=30)
        assert (ready.status_code, ready.json()["checks"]["state"]) == (503, "failing")
        body = fixture_bytes("github/go-playground-push.json")
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        answer = requests.post(svc.url + "/webhooks/github", data=body, timeout=30, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sig})
        assert (answer.status_code, answer.json()["error"]) == (503, "unavailable")
        assert answer.elapsed.total_seconds() < 10  # inside the providers' time-out
        # one line, at error level, saying what failed; the answer does not say it
        svc.wait_for(lambda logs: any(e.get("event") == "webhook.rejected" for e in logs))
        (line,) = svc.events("webhook.rejected")
        assert (line["level"], line["status"], line["reason"]) == ("error", 503, "unavailable")
        assert line["error"] and line["error"] not in answer.text
        assert secret not in svc.log_path.read_text()
    finally:
        svc.stop()

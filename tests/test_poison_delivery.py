"""A delivery that kills its worker on every attempt ends ``failed`` at
``processing.max_attempts`` and never blocks its branch again.

The service runs under gunicorn with one worker, against a GitHub compare stand-in that
never answers the compare of the poisoned push: each time a worker is stuck there, the test
SIGKILLs it (what the OOM killer or an orchestrator does), gunicorn starts a new one, and
that one claims the delivery again once the lease has lapsed. Run with SQLite and with
DynamoDB (moto's server on 127.0.0.1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitmodel import GitModel
from tests.harness import FakeAPI, MotoServer, Recorded, Service
from tests.test_github_e2e import REPO, SECRET, deliver, push_body

MAX_ATTEMPTS = 3


class HangingCompare:
    """GitHub's compare over a GitModel, except that the compare up to ``poison`` never
    answers (until the test ends): the worker processing that push is stuck in it."""

    def __init__(self, api: FakeAPI) -> None:
        self.git = GitModel()
        self.root = self.git.commit(None, {"svc/a/x.py": "1", "svc/b/y.py": "1"})
        self.poison = self.git.commit(self.root, {"svc/a/x.py": "2"}, "poison")
        self.after = self.git.commit(self.poison, {"svc/b/y.py": "2"}, "after")
        self.stuck = threading.Semaphore(0)  # one release per request that hangs
        self.done = threading.Event()
        world = self

        class Routes(dict[str, Any]):
            def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
                prefix = f"/repos/{REPO}/compare/"
                return world.compare if path.startswith(prefix) else default

        api.routes = Routes()
        self.api = api

    def compare(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        base, _, head = rec.path.rsplit("/", 1)[1].partition("...")
        if head == self.poison:
            self.stuck.release()
            self.done.wait(300)
            return 503, {"message": "test over"}, {}
        return 200, self.git.github_compare(base, head), {}

    def compares_of(self, head: str) -> int:
        return sum(1 for r in self.api.requests if r.path.endswith(f"...{head}"))


def config(tmp_path: Path, api_url: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": state,
        "launcher": {"backend": "log"},
        # a short lease: a killed worker's claim lapses within a second
        "processing": {"max_attempts": MAX_ATTEMPTS, "lease_seconds": 1.0,
                       "poll_seconds": 0.2, "retry_backoff_seconds": 0.1},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:POISON_SECRET"], "branches": ["master"],
            "pipelines": [{"name": "a-deploy", "paths": ["svc/a/**"]},
                          {"name": "b-deploy", "paths": ["svc/b/**"]}],
        }],
    }


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (gunicorn's workers of a master)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(params=["sqlite", "dynamodb"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"backend": "sqlite", "path": str(tmp_path / "state.db")}
    moto: MotoServer = request.getfixturevalue("moto")
    return {"backend": "dynamodb", "table": f"poison-{uuid.uuid4().hex[:8]}",
            "region": "us-east-1", "endpoint_url": moto.url}


@pytest.fixture
def world(fake_api: FakeAPI) -> Iterator[HangingCompare]:
    hanging = HangingCompare(fake_api)
    yield hanging
    hanging.done.set()


@pytest.fixture
def service(tmp_path: Path, world: HangingCompare, state: dict[str, Any]) -> Iterator[Service]:
    cfg = config(tmp_path, world.api.url, state)
    env = {"POISON_SECRET": SECRET}
    if state["backend"] == "dynamodb":
        path = tmp_path / "init.yaml"
        path.write_text(yaml.safe_dump(cfg))
        init = subprocess.run([sys.executable, "-m", "receiver.cli", "state", "init",
                               "--config", str(path)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})
        assert init.returncode == 0, init.stderr
    svc = Service(cfg, tmp_path, env=env, workers=1).start()
    yield svc
    svc.stop()


def test_a_delivery_whose_worker_is_killed_on_every_attempt_fails_and_frees_its_branch(
        service: Service, world: HangingCompare) -> None:
    assert service.proc is not None
    answer = deliver(service, push_body(world.root, world.poison), "poison-1")
    assert answer.status_code == 202, answer.text
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert world.stuck.acquire(timeout=90), f"attempt {attempt} never reached the compare"
        (worker,) = children(service.proc.pid)
        os.kill(worker, signal.SIGKILL)
    lines = service.wait_for(lambda ls: any(
        e.get("event") == "delivery.failed" and e.get("delivery_id") == "poison-1"
        for e in ls), timeout=90)
    (failed,) = [e for e in lines if e.get("event") == "delivery.failed"]
    assert failed["attempts"] == MAX_ATTEMPTS
    assert "did not finish" in failed["error"]
    # the metric rides on the line (Embedded Metric Format)
    assert failed["DeliveriesFailed"] == 1
    assert failed["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "DeliveriesFailed", "Unit": "Count"}]
    assert world.compares_of(world.poison) == MAX_ATTEMPTS  # never processed a fourth time

    # the branch is free: the next push is processed at once
    answer = deliver(service, push_body(world.poison, world.after), "after-1")
    assert answer.status_code == 202, answer.text
    lines = service.wait_for(lambda ls: any(
        e.get("event") == "delivery.processed" and e.get("delivery_id") == "after-1"
        for e in ls), timeout=60)
    assert [e["pipeline"] for e in lines if e.get("event") == "pipeline.started"] == ["b-deploy"]
    time.sleep(1.5)  # more than a lease and several polls: nothing claims the failed one again
    assert world.compares_of(world.poison) == MAX_ATTEMPTS
    assert [e for e in service.events("delivery.failed")] == [failed]

    shown = service.cli("history", "--delivery", "poison-1")
    assert shown.returncode == 0, shown.stderr
    assert f"attempt {MAX_ATTEMPTS}" in shown.stdout
    assert (f"  failed: delivery failed after {MAX_ATTEMPTS} attempts: the last attempt did "
            "not finish") in shown.stdout

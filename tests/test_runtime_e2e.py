"""One background runtime under gunicorn: SIGTERM loses no pending work and hands leases over.

The service runs as ``webhook-receiver serve`` (tests/harness.py); the GitHub API is the
compare stand-in of tests/test_github_e2e.py, made slow where a test needs a write in hand
when the SIGTERM comes.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from receiver.leased import RENEW_SECONDS
from tests.harness import FakeAPI, MotoServer, Recorded, Service
from tests.test_github_e2e import REPO, SECRET, GitHubWorld, push_and_wait
from tests.test_replicas import start_services

MODULES = [f"m{i}" for i in range(6)]


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_sigterm_with_status_writes_queued_loses_none_and_writes_none_twice(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    world = GitHubWorld(fake_api)
    compare = fake_api.routes.get
    prefix = f"/repos/{REPO}/statuses/"

    def slow_status(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        time.sleep(1.0)  # a slow provider: a write is in hand when the SIGTERM comes
        return 201, {"state": json.loads(rec.body)["state"]}, {}

    class Routes(dict[str, Any]):
        def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
            return slow_status if path.startswith(prefix) else compare(path, default)

    fake_api.routes = Routes()
    root = world.git.commit(None, {f"{m}/x.py": "0" for m in MODULES})
    head = world.git.commit(root, {f"{m}/x.py": "1" for m in MODULES})
    config = {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},  # a dry run: each start Succeeded at once
        "processing": {"lease_seconds": 5, "poll_seconds": 0.2},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": fake_api.url,
            "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master"], "commit_status": True,
            "pipelines": [{"name": f"{m}-deploy", "paths": [f"{m}/**"]} for m in MODULES]}],
    }
    env = {"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": "t"}
    first = Service(config, tmp_path, env=env, name="first").start()
    try:
        push_and_wait(first, root, head)

        def writes() -> Counter[tuple[str, str]]:
            return Counter((json.loads(r.body)["context"], json.loads(r.body)["state"])
                           for r in list(fake_api.requests)
                           if r.method == "POST" and r.path == prefix + head)

        wait_until(writes, 20, "no status write reached the provider")
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGTERM)  # what ECS does at a deploy
        first.proc.wait(timeout=60)
    finally:
        first.stop()
    before_restart = writes()
    assert sum(before_restart.values()) < len(MODULES), "nothing was left for the restart"
    assert [e["unfinished"] for e in first.events("runtime.stopped")] == \
        [[]] * len(first.events("runtime.stopped")) != []

    second = Service(config, tmp_path, env=env, name="second").start()
    try:
        expected = {(f"codepipeline/{m}-deploy", "success") for m in MODULES}
        wait_until(lambda: set(writes()) >= expected, 60, f"statuses lost: {writes()}")
        time.sleep(2.0)  # anything written twice would have arrived by now
    finally:
        second.stop()
    # every outcome written, each write once (a pending status may precede its success)
    assert set(writes()) >= expected and set(writes().values()) == {1}


def test_sigterm_of_the_lease_holder_hands_poll_and_reconcile_over_within_one_interval(
        tmp_path: Path, fake_api: FakeAPI, moto_server: MotoServer) -> None:
    interval = 20.0  # both loops; a lease that only expired would take 3 x 20 s before
    GitHubWorld(fake_api)  # no branch answers: each pass reads, fails, and logs its pass
    config = {
        "state": {"backend": "dynamodb", "table": f"t-{uuid.uuid4().hex[:12]}",
                  "region": "us-east-1", "endpoint_url": moto_server.url},
        "launcher": {"backend": "codepipeline", "region": "us-east-1",
                     "endpoint_url": moto_server.url},
        "outcomes": {"poll_seconds": interval},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": fake_api.url,
            "webhook_secrets": ["env:REPLICA_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master"], "reconcile_seconds": interval,
            "pipelines": [{"name": "a-deploy", "paths": ["a/**"]}]}],
    }
    os.environ.setdefault("E2E_GH_TOKEN", "t")
    services = start_services(tmp_path, config, ["one", "two"])
    try:
        def holder(lease: str) -> Service | None:
            taken = [(s, e) for s in services for e in s.events("lease.taken")
                     if e["lease"] == lease]
            return taken[-1][0] if taken else None

        held = {lease: wait_until(lambda lease=lease: holder(lease), 30, f"no {lease} holder")
                for lease in ("outcomes-poll", "reconcile")}
        victim = held["reconcile"]
        other = next(s for s in services if s is not victim)
        # the victim may hold both, or the other the poll: only the victim's pass on
        assert victim.proc is not None
        stopped_at = time.time()
        os.kill(victim.proc.pid, signal.SIGTERM)
        victim.proc.wait(timeout=60)
        released = {e["lease"] for e in victim.events("lease.released")}
        assert "reconcile" in released

        def taken_over(lease: str) -> float | None:
            later = [_ts(e) for e in other.events("lease.taken")
                     if e["lease"] == lease and _ts(e) > stopped_at]
            held_before = held[lease] is other
            return (stopped_at if held_before else None) or (later[0] if later else None)

        for lease in ("outcomes-poll", "reconcile"):
            took = wait_until(lambda lease=lease: taken_over(lease), interval,
                              f"{lease} was not taken over within one interval")
            assert took - stopped_at < RENEW_SECONDS + 5  # a renewal, plus a loaded machine
        passes = wait_until(lambda: [e for e in other.events("reconcile.pass")
                                     if _ts(e) > stopped_at], interval,
                            "the other replica did not reconcile within one interval")
        assert _ts(passes[0]) - stopped_at < interval
    finally:
        for s in services:
            s.stop()

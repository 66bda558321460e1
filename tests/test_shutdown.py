"""Graceful shutdown: SIGTERM to the gunicorn master in the middle of a burst loses nothing.

ECS stops a task with SIGTERM to PID 1 (gunicorn's master) and SIGKILL after stopTimeout.
Every delivery answered 202 must be processed: by the stopping process if it can finish
in time, else after a restart (the lease expires and the successor claims it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from receiver import gunicorn_conf
from tests.gitmodel import GitModel
from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

SECRET = "shutdown-secret"
REPO = "binkkatal/sample_app"


def test_sigterm_mid_burst_loses_no_accepted_delivery(tmp_path: Path, fake_api: FakeAPI) -> None:
    git = GitModel()
    root = git.commit(None, {"a/x.py": "0", "b/y.py": "0"})
    pushes: list[tuple[str, str]] = []
    parent = root
    for i in range(40):
        child = git.commit(parent, {("a/x.py" if i % 2 else "b/y.py"): str(i)})
        pushes.append((parent, child))
        parent = child

    class Routes(dict[str, Any]):
        def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
            return compare if path.startswith(f"/repos/{REPO}/compare/") else default

    def compare(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        base, _, head = rec.path.rsplit("/", 1)[1].partition("...")
        return 200, git.github_compare(base, head), {}

    fake_api.routes = Routes()
    fake_api.delay = 0.3  # processing lags behind the answers, as under load
    config = {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"lease_seconds": 3, "poll_seconds": 0.2},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": fake_api.url,
            "webhook_secrets": ["env:SHUTDOWN_SECRET"], "branches": ["master"],
            "pipelines": [{"name": "a-deploy", "paths": ["a/**"]},
                          {"name": "b-deploy", "paths": ["b/**"]}],
        }],
    }
    env = {"SHUTDOWN_SECRET": SECRET}
    first = Service(config, tmp_path, env=env, name="first").start()
    accepted: list[str] = []
    lock = threading.Lock()

    def fire(before: str, after: str) -> None:
        doc = json.loads(fixture_bytes("github/go-playground-push.json"))
        doc.update(before=before, after=after)
        body = json.dumps(doc).encode()
        delivery_id = str(uuid.uuid4())
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        try:
            answer = requests.post(first.url + "/webhooks/github", data=body, timeout=10,
                                   headers={"Content-Type": "application/json",
                                            "X-GitHub-Event": "push",
                                            "X-GitHub-Delivery": delivery_id,
                                            "X-Hub-Signature-256": sig})
        except requests.RequestException:
            return  # refused or cut while shutting down: never answered 202
        if answer.status_code == 202:
            with lock:
                accepted.append(delivery_id)

    senders = [threading.Thread(target=fire, args=pair) for pair in pushes]
    stopped_at = 0.0
    try:
        for i, sender in enumerate(senders):
            sender.start()
            time.sleep(0.02)
            if i == len(senders) // 2:
                assert first.proc is not None
                os.kill(first.proc.pid, signal.SIGTERM)  # what `docker stop` / ECS does
                stopped_at = time.monotonic()
        for sender in senders:
            sender.join()
        assert first.proc is not None
        first.proc.wait(timeout=60)
        exit_seconds = time.monotonic() - stopped_at
    finally:
        first.stop()
    # the master exited by itself, before ECS would SIGKILL it (stopTimeout 30 s)
    assert exit_seconds < gunicorn_conf.graceful_timeout + 5
    assert accepted, "nothing was accepted before the SIGTERM"
    processed_before = {e["delivery_id"] for e in first.events("delivery.processed")}
    # every worker's runtime stopped (its runnables returned) before the deadline
    assert [e["unfinished"] for e in first.events("runtime.stopped")] == \
        [[]] * len(first.events("runtime.stopped")) != []

    second = Service(config, tmp_path, env=env, name="second").start()
    try:
        deadline = time.monotonic() + 60
        while True:
            processed = processed_before | {
                e["delivery_id"] for e in second.events("delivery.processed")}
            if set(accepted) <= processed:
                break
            assert time.monotonic() < deadline, sorted(set(accepted) - processed)[:5]
            time.sleep(0.2)
    finally:
        second.stop()
    # nothing processed twice to completion, and each (pipeline, commit) started once
    starts = [(e["pipeline"], e["commit"]) for s in (first, second)
              for e in s.events("pipeline.started")]
    assert len(starts) == len(set(starts))

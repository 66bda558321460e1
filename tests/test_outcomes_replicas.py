"""Outcomes across replicas (DynamoDB state on moto): one poller at a time, one status write
per (commit, pipeline, state).

Two ``webhook-receiver serve`` processes (separate gunicorn masters, 2 workers each) share
one DynamoDB table on a moto server, a local CodePipeline stand-in whose execution states
the test sets, and a GitHub API stand-in that records commit-status writes. Outcomes come
from the poll only (no EventBridge), so every process competes for the poll's lease.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

from tests.fake_codepipeline import FakeCodePipeline
from tests.harness import FakeAPI, MotoServer, Recorded
from tests.test_replicas import (
    MODULES,
    REPO,
    World,
    body,
    pipeline_of,
    post,
    start_services,
    wait_processed,
)


def test_two_replicas_poll_one_at_a_time_and_write_each_status_once(
        tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> None:
    world = World(fake_api)
    compare = fake_api.routes.get

    class Routes(dict[str, Any]):
        def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
            if path.startswith(f"/repos/{REPO}/statuses/"):
                return lambda rec: (201, {}, {})
            return compare(path, default)

    fake_api.routes = Routes()
    cp = FakeCodePipeline([pipeline_of(m) for m in MODULES])
    table = f"outcomes-{uuid.uuid4().hex[:8]}"
    cfg = {
        "state": {"backend": "dynamodb", "table": table, "region": "us-east-1",
                  "endpoint_url": moto.url},
        "launcher": {"backend": "codepipeline", "region": "us-east-1", "endpoint_url": cp.url},
        "processing": {"lease_seconds": 5, "poll_seconds": 0.3, "retry_backoff_seconds": 0.5},
        "outcomes": {"poll_seconds": 1},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": fake_api.url,
            "webhook_secrets": ["env:REPLICA_SECRET"], "branches": ["master"],
            "commit_status": True,
            "pipelines": [{"name": pipeline_of(m), "paths": [f"{m}/**"]} for m in MODULES],
        }],
    }
    services = start_services(tmp_path, cfg, ["r1", "r2"])
    try:
        pairs = world.chain(8, random.Random(7), world.root)
        for i, (before, after) in enumerate(pairs):
            delivery_id = f"d{i}"
            assert post(services[i % 2], body(before, after), delivery_id) == 202
            wait_processed(services, {delivery_id})
        executions = list(cp.executions.values())
        assert executions
        for x in executions:
            cp.set_status(x.execution_id, random.Random(x.execution_id).choice(
                ["Succeeded", "Failed", "Superseded"]))
        deadline = time.monotonic() + 30
        while True:
            finished = [e for s in services for e in s.events("execution.finished")]
            if {e["execution_id"] for e in finished} == {x.execution_id for x in executions}:
                break
            assert time.monotonic() < deadline, finished
            time.sleep(0.2)
        time.sleep(2)  # more poll passes: nothing is asked or recorded twice
        finished = [e for s in services for e in s.events("execution.finished")]
        assert sorted(e["execution_id"] for e in finished) == sorted(
            x.execution_id for x in executions)
        pollers = {e["owner"] for s in services for e in s.events("outcome.polled")}
        assert len(pollers) == 1, pollers  # the lease holder renews it; nobody else polls

        def writes(rec: Recorded) -> tuple[str, str, str]:
            doc = json.loads(rec.body)
            return rec.path.rsplit("/", 1)[1], doc["context"], doc["state"]

        posted = [writes(r) for r in fake_api.requests
                  if r.method == "POST" and "/statuses/" in r.path]
        assert len(posted) == len(set(posted)), "a status was written twice"
        assert len(posted) == 2 * len(executions), posted  # pending, then the final state
    finally:
        for svc in services:
            svc.stop()
        cp.close()

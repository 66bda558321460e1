"""The reconciler across replicas (DynamoDB state on moto): one process reconciles at a
time; when it is killed (-9) another takes over within the lease, and nothing starts twice.

Two ``webhook-receiver serve`` processes (separate gunicorn masters, 2 workers each) share
one DynamoDB table and one CodePipeline on a moto server, and a GitHub API stand-in over a
Git model (tests.test_replicas.World) with the branch resource added. Which process holds
the lease is read from the ``owner`` (``host:pid:uuid``) of the ``reconcile.pass`` lines.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from receiver.leased import LEASE_SECONDS
from receiver.reconcile import delivery_id as reconcile_id
from tests.harness import FakeAPI, MotoServer, Recorded, Service, create_pipelines
from tests.test_reconcile_e2e import _ts
from tests.test_replicas import (
    MODULES,
    REPO,
    World,
    body,
    config,
    executions_by_commit,
    pipeline_of,
    post,
    start_services,
    wait_processed,
)


def passes(services: list[Service]) -> list[dict[str, Any]]:
    return [e for s in services for e in s.events("reconcile.pass")]


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_one_replica_reconciles_at_a_time_and_another_takes_over_a_killed_holder(
        tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> None:
    world = World(fake_api)
    head = {"master": world.root}
    compare = fake_api.routes.get

    class Routes(dict[str, Any]):
        def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
            prefix = f"/repos/{REPO}/branches/"
            if path.startswith(prefix):
                name = unquote(path.removeprefix(prefix))

                def branch(_rec: Recorded) -> tuple[int, Any, dict[str, str]]:
                    sha = head.get(name)
                    if sha is None:
                        return 404, {"message": "Branch not found"}, {}
                    return 200, {"name": name, "commit": {"sha": sha}}, {}
                return branch
            return compare(path, default)

    fake_api.routes = Routes()
    create_pipelines(moto.url, [pipeline_of(m) for m in MODULES])
    interval = 1
    cfg = config(tmp_path, fake_api.url, moto.url, f"reconcile-{uuid.uuid4().hex[:8]}", 4)
    cfg["repositories"][0]["reconcile_seconds"] = interval
    services = start_services(tmp_path, cfg, ["r1", "r2"])
    try:
        # (1) four processes compete for the lease; one reconciles, pass after pass
        wait_until(lambda: len(passes(services)) >= 5, 60, "no reconcile passes")
        holders = {e["owner"] for e in passes(services)}
        assert len(holders) == 1, holders
        holder = holders.pop()
        assert sum(e.get("event") == "reconcile.adopted" for s in services
                   for e in s.logs()) == 1  # the root head, adopted once

        # (2) pushes land without deliveries, and the holder is killed
        pairs = world.chain(3, random.Random(5), world.root)
        head["master"] = pairs[-1][1]
        os.kill(int(holder.split(":")[1]), signal.SIGKILL)
        killed_at, killed_ts = time.monotonic(), time.time()

        def since_kill() -> list[dict[str, Any]]:
            return [e for e in passes(services) if _ts(e) > killed_ts]

        # (3) another process takes over: its passes start once the lease expires
        def successor() -> str | None:
            owners = [e["owner"] for e in since_kill() if e["owner"] != holder]
            return owners[0] if owners else None
        new_holder = wait_until(successor, 60, "nobody took the lease over")
        took = time.monotonic() - killed_at
        assert new_holder != holder
        assert took < LEASE_SECONDS + interval + 20  # the lease, plus a loaded machine's slack

        caught_up = reconcile_id("github", REPO, "master", pairs[-1][1])
        wait_processed(services, {caught_up}, timeout=90)
        # (4) the late webhooks of the three pushes, to both replicas
        late = [f"late-{i}" for i in range(len(pairs))]
        for i, (delivery, pair) in enumerate(zip(late, pairs, strict=True)):
            assert post(services[i % 2], body(*pair), delivery) == 202
        wait_processed(services, set(late), timeout=90)
        after_late = len(passes(services))
        wait_until(lambda: len(passes(services)) >= after_late + 2, 60, "passes stopped")

        # exactly the modules the three pushes touched started, once, at the head
        touched = {world.touched[after] for _, after in pairs}
        by_pipeline = executions_by_commit(moto.url)
        assert {name: commits for name, commits in by_pipeline.items() if commits} == \
            {pipeline_of(m): [pairs[-1][1]] for m in touched}
        recorded = [e for s in services for e in s.events("reconcile.recorded")]
        assert {e["delivery_id"] for e in recorded} == {caught_up}
        # one holder at a time after the take-over too; the killed one passes no more
        assert {e["owner"] for e in since_kill()} == {new_holder}
    finally:
        for svc in services:
            svc.stop()

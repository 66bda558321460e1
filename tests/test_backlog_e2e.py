"""The backlog shows as metrics (PendingDeliveries, OldestPendingSeconds), not as silence.

The service runs under gunicorn on a state file that already holds 200 recorded
deliveries (as a flood, or an outage of the provider, leaves it), and its provider
stand-in answers slowly, so they wait while one replica measures the backlog.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from receiver.events import Delivery, PushEvent
from receiver.state.sqlite import SQLiteStore
from tests.harness import FakeAPI, Service, fixture_bytes

QUEUED = 200
AGE = 600.0  # seconds the oldest of them has waited


def test_two_hundred_queued_deliveries_appear_in_the_backlog_metrics(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    fake_api.delay = 3.0  # every compare is slow: the queue drains slowly
    push = json.loads(fixture_bytes("github/go-playground-push.json"))
    repo = push["repository"]["full_name"]
    store = SQLiteStore(str(tmp_path / "state.db"))
    store.init()
    now = time.time()
    for i in range(QUEUED):
        event = PushEvent("github", repo, "branch", f"feature-{i}", push["before"], push["after"])
        store.record_delivery(Delivery(f"queued-{i}", "github", repo, (event,)),
                              now - AGE + i)
    svc = Service({
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "github", "name": repo, "api_url": fake_api.url,
            "webhook_secrets": ["env:BACKLOG_SECRET"], "branches": ["**"],
            "pipelines": [{"name": "app-deploy", "paths": ["**"]}]}],
    }, tmp_path, env={"BACKLOG_SECRET": "s"}).start()
    try:
        lines = svc.wait_for(lambda found: any(
            e.get("event") == "backlog.measured" for e in found), timeout=60)
        measured = next(e for e in lines if e.get("event") == "backlog.measured")
    finally:
        svc.stop()
    assert measured["pending_deliveries"] >= QUEUED - 10  # a few may be done already
    assert measured["oldest_pending_seconds"] >= AGE
    metrics = {m["Name"]: m["Unit"] for d in measured["_aws"]["CloudWatchMetrics"]
               for m in d["Metrics"]}
    assert metrics == {"PendingDeliveries": "Count", "OldestPendingSeconds": "Seconds",
                       "PendingTasks": "Count"}
    assert measured["PendingDeliveries"] == measured["pending_deliveries"]
    assert measured["OldestPendingSeconds"] == measured["oldest_pending_seconds"]
    # the service's whole backlog, one series: no dimension a URL or a payload could mint
    assert all(d["Dimensions"] == [[]] for d in measured["_aws"]["CloudWatchMetrics"])

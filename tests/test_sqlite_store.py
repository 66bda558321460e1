"""SQLite specifics beyond the shared contract: retention (DynamoDB uses TTL instead)."""

from __future__ import annotations

from pathlib import Path

from receiver.events import Delivery, PushEvent
from receiver.state.base import DELIVERY_RETENTION_SECONDS, HISTORY_RETENTION_SECONDS
from receiver.state.sqlite import SQLiteStore

DAY = 86400.0


def delivery(delivery_id: str) -> Delivery:
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)
    return Delivery(delivery_id, "github", "acme/mono", (event,))


def test_finished_deliveries_are_purged_after_the_dedup_window(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    store.record_delivery(delivery("old"), 0.0)
    claimed = store.claim_delivery("w", 60, 1.0)
    assert claimed is not None
    store.finish_delivery(claimed, "w", "processed", 2.0)
    store.purge(2.0 + DELIVERY_RETENTION_SECONDS - DAY)
    assert store.record_delivery(delivery("old"), 3.0) is False  # still a duplicate
    store.purge(2.0 + DELIVERY_RETENTION_SECONDS + DAY)
    assert store.record_delivery(delivery("old"), 4.0) is True  # forgotten, as by a TTL


def test_pending_deliveries_are_never_purged(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    store.record_delivery(delivery("waiting"), 0.0)
    store.purge(10 * DELIVERY_RETENTION_SECONDS)
    assert store.pending_count() == 1


def test_decision_records_expire_after_their_retention(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    record = {"delivery_id": "d", "provider": "github", "repository": "acme/mono",
              "ref_type": "branch", "ref": "main", "before": None, "head": "b" * 40,
              "recorded_at": 0.0, "attempt": 1,
              "pipelines": [{"pipeline": "p", "verdict": "started"}]}
    store.record_decision(record)
    store.purge(HISTORY_RETENTION_SECONDS - DAY)
    assert store.history(pipeline="p") == [record]
    store.purge(HISTORY_RETENTION_SECONDS + DAY)
    assert store.history(pipeline="p") == [] and store.history(delivery_id="d") == []

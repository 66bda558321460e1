"""SQLite specifics beyond the shared contract: retention (DynamoDB uses TTL instead) and
the group commit of concurrent recordings."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from receiver.errors import StateError
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


def _record_in_threads(store: SQLiteStore, ids: list[str]) -> dict[str, object]:
    """Record each id from its own thread while the test holds the store's write lock, so
    they queue into one group commit; return each id's result (True/False or the error)."""
    results: dict[str, object] = {}

    def record(delivery_id: str) -> None:
        try:
            results[delivery_id] = store.record_delivery(delivery(delivery_id), 1.0)
        except StateError as exc:
            results[delivery_id] = exc

    threads = [threading.Thread(target=record, args=(i,)) for i in ids]
    with store._write_lock:  # the first caller writes and waits here; the rest queue
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while len(store._queue) < len(ids) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a recording never returned"
    return results


def test_queued_recordings_are_written_together_and_each_told_its_own_result(
        tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    store.record_delivery(delivery("seen"), 0.0)
    results = _record_in_threads(store, ["seen", "new-1", "new-2", "new-3", "new-4"])
    assert results == {"seen": False, "new-1": True, "new-2": True, "new-3": True,
                       "new-4": True}
    assert store.pending_count() == 5


def test_every_queued_recording_gets_the_error_when_the_commit_fails_and_none_hangs(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(str(path))
    store.init()
    ids = [f"d{i}" for i in range(6)]

    results: dict[str, object] = {}
    runner = threading.Thread(target=lambda: results.update(_record_in_threads(store, ids)))
    with sqlite3.connect(path) as other:
        other.execute("DROP TABLE deliveries")
    runner.start()
    runner.join(20)
    assert not runner.is_alive()
    assert sorted(results) == ids
    assert all(isinstance(r, StateError) and "deliveries" in str(r) for r in results.values())
    store.init()  # the table is back: recording works again, nothing is left stuck
    assert store.record_delivery(delivery("after"), 2.0) is True

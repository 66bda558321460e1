"""SQLite specifics beyond the shared contract: retention (DynamoDB uses TTL instead), how
a recording waits for the database, and the recording statement that keeps the GIL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.errors import StateError
from receiver.events import Delivery, PushEvent
from receiver.state import sqlite as sqlite_mod
from receiver.state import sqlite_insert
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


@contextlib.contextmanager
def _writer_holding(path: Path, seconds: float) -> Iterator[None]:
    """Another connection holds SQLite's write lock for ``seconds`` (from a thread)."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, lambda: other.execute("COMMIT"))
    release.start()
    try:
        yield
    finally:
        release.join()
        other.close()


def test_a_recording_waits_for_a_writer_holding_the_database(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    with _writer_holding(tmp_path / "s.db", 0.3):
        t0 = time.monotonic()
        assert store.record_delivery(delivery("waited"), 1.0) is True
        assert time.monotonic() - t0 >= 0.25
    assert store.record_delivery(delivery("waited"), 2.0) is False


def test_a_recording_gives_up_with_a_state_error_when_the_database_stays_locked(
        tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    store.record_timeout = 0.3
    with _writer_holding(tmp_path / "s.db", 2.0):
        t0 = time.monotonic()
        with pytest.raises(StateError, match="locked"):
            store.record_delivery(delivery("refused"), 1.0)
        assert 0.2 <= time.monotonic() - t0 < 1.5
    assert store.record_delivery(delivery("refused"), 2.0) is True  # nothing was recorded


def test_a_recording_into_a_broken_database_fails_at_once(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    with sqlite3.connect(tmp_path / "s.db") as other:
        other.execute("DROP TABLE deliveries")
    t0 = time.monotonic()
    with pytest.raises(StateError, match="deliveries"):
        store.record_delivery(delivery("lost"), 1.0)
    assert time.monotonic() - t0 < 1.0  # not retried: only a locked database is waited for


def _statuses(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT delivery_id, status FROM deliveries").fetchall())


def _claim_all(store: SQLiteStore, now: float) -> list[str]:
    claimed = []
    while (d := store.claim_delivery("w", 60, now)) is not None:
        claimed.append(d.delivery_id)
    return claimed


def test_a_recorded_delivery_stays_out_of_the_queue_indexes_until_a_claim_admits_it(
        tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    store.record_delivery(delivery("first"), 1.0)
    store.record_delivery(delivery("second"), 2.0)
    assert _statuses(tmp_path / "s.db") == {"first": "new", "second": "new"}
    assert store.pending_count() == 2
    assert _claim_all(store, 10.0) == ["first"]  # one ref: the second waits for the first
    assert _statuses(tmp_path / "s.db") == {"first": "pending", "second": "pending"}


def _emptied_by_a_purge(path: Path, recorded: int) -> SQLiteStore:
    """A store that recorded, admitted and finished ``recorded`` deliveries, all since
    purged: its admitted mark is ``recorded`` while the table is empty."""
    store = SQLiteStore(str(path))
    store.init()
    for i in range(recorded):
        store.record_delivery(delivery(f"old-{i}"), float(i))
    while (claimed := store.claim_delivery("w", 60, 100.0)) is not None:
        store.finish_delivery(claimed, "w", "processed", 100.0)
    store.purge(100.0 + DELIVERY_RETENTION_SECONDS + DAY)
    assert _statuses(path) == {}
    return store


def test_deliveries_recorded_after_a_purge_emptied_the_table_are_still_admitted(
        tmp_path: Path) -> None:
    store = _emptied_by_a_purge(tmp_path / "s.db", 5)
    # row ids start again at 1, below the last one this store admitted
    store.record_delivery(delivery("after-1"), 200.0)
    assert _claim_all(store, 300.0) == ["after-1"]


def test_rows_that_reused_ids_below_the_admitted_mark_are_admitted_by_the_periodic_sweep(
        tmp_path: Path) -> None:
    store = _emptied_by_a_purge(tmp_path / "s.db", 3)
    # more deliveries than the old mark arrive before this store claims again: ids 1..5
    for i in range(5):
        store.record_delivery(Delivery(f"new-{i}", "github", "acme/mono", (
            PushEvent("github", "acme/mono", "branch", f"b{i}", "a" * 40, "b" * 40),)),
            200.0 + i)
    assert sorted(_claim_all(store, 300.0)) == ["new-3", "new-4"]  # above the old mark
    store._full_admit_due = 0.0  # a minute later
    assert sorted(_claim_all(store, 300.0)) == ["new-0", "new-1", "new-2"]


# --- the recording statement that keeps the GIL (receiver/state/sqlite_insert.py) ------


def _other_thread_progress_while_recording_a_large_row(store: SQLiteStore) -> int:
    """How often another thread got the GIL while this one recorded a 20 MB delivery (tens
    of milliseconds inside SQLite). That thread wakes every half millisecond and wants the
    GIL only briefly; it is never forced onto this one (switch interval 1 s)."""
    stop = threading.Event()
    progress = [0]

    def tick() -> None:
        while not stop.is_set():
            time.sleep(0.0005)
            progress[0] += 1

    event = PushEvent("github", "acme/mono", "branch", "x" * 20_000_000, "a" * 40, "b" * 40)
    large = Delivery("large", "github", "acme/mono", (event,))
    store.record_delivery(delivery("warm-up"), 0.0)  # the connection is open beforehand
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.01)
        before = progress[0]
        assert store.record_delivery(large, 1.0) is True
        return progress[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
        ticker.join()


def test_a_recording_keeps_the_gil_so_request_threads_do_not_take_turns_inside_it(
        tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    assert _other_thread_progress_while_recording_a_large_row(store) <= 1
    assert store._insert is not None  # it was the GIL-keeping statement that recorded


def test_the_sqlite3_module_s_recording_lets_other_threads_run_inside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the control for the test above: the measurement sees the hand-overs it rules out
    monkeypatch.setattr(sqlite_mod, "open_statement", lambda path, sql: None)
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    assert _other_thread_progress_while_recording_a_large_row(store) >= 5
    assert store._insert is None


def test_without_a_shareable_sqlite_library_recording_falls_back_to_the_sqlite3_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_mod, "open_statement", lambda path, sql: None)
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    assert store.record_delivery(delivery("d"), 1.0) is True
    assert store.record_delivery(delivery("d"), 2.0) is False
    assert _statuses(tmp_path / "s.db") == {"d": "new"}


def test_the_recording_statement_is_the_library_the_sqlite3_module_uses() -> None:
    lib = sqlite_insert._library()
    assert lib is not None, "no separate libsqlite3 mapped: recordings use the sqlite3 module"
    assert lib.sqlite3_libversion().decode() == sqlite3.sqlite_version


def test_a_forked_child_records_on_its_own_connection_and_leaves_the_parent_s_alone(
        tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    assert store.record_delivery(delivery("parent-1"), 1.0) is True
    inherited = store._insert
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if it recorded through a new statement
        try:
            ok = store.record_delivery(delivery("child"), 2.0) and store._insert is not inherited
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._insert is inherited
    assert store.record_delivery(delivery("parent-2"), 3.0) is True
    assert store.record_delivery(delivery("child"), 4.0) is False
    assert set(_statuses(tmp_path / "s.db")) == {"parent-1", "child", "parent-2"}


def _claim_steps_while_the_ref_is_busy(path: Path, queued: int) -> int:
    """SQLite VM steps (in hundreds) of one claim while ``queued`` deliveries of one
    branch wait behind the one being processed: that claim finds nothing to take."""
    store = SQLiteStore(str(path))
    store.init()
    for i in range(queued + 1):
        store.record_delivery(delivery(f"d{i}"), float(i))
    assert store.claim_delivery("A", 600, 1000.0) is not None  # admits the rest too
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store._conn().set_progress_handler(count, 100)
    assert store.claim_delivery("B", 600, 1000.0) is None
    return steps[0]


def test_a_claim_visits_refs_not_the_queue_behind_a_ref_being_processed(
        tmp_path: Path) -> None:
    short = _claim_steps_while_the_ref_is_busy(tmp_path / "short.db", 10)
    long = _claim_steps_while_the_ref_is_busy(tmp_path / "long.db", 5000)
    assert long <= short + 2, (short, long)


def test_a_backlog_is_admitted_in_chunks_each_its_own_write(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    total = sqlite_mod.ADMIT_CHUNK * 2 + 5
    for i in range(total):
        store.record_delivery(delivery(f"d{i:04d}"), float(i))
    writes: list[str] = []
    store._conn().set_trace_callback(writes.append)
    assert store.claim_delivery("A", 600, 1000.0).delivery_id == "d0000"  # type: ignore[union-attr]
    admissions = [w for w in writes if w.startswith("UPDATE deliveries SET status = 'pending'")]
    assert len(admissions) == 3  # autocommit statements, no BEGIN around them
    assert not any(w.startswith("BEGIN") for w in writes[:writes.index(admissions[-1])])
    assert set(_statuses(tmp_path / "s.db").values()) == {"pending"}


def test_the_recording_statement_binds_text_numbers_and_null(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a TEXT, b REAL, c TEXT)")
    statement = sqlite_insert.open_statement(path, "INSERT INTO t VALUES (?, ?, ?)")
    assert statement is not None
    assert statement.run(("ünï\x00code", 1.5, None)) == 1
    statement.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT a, b, c FROM t").fetchall() == [("ünï\x00code", 1.5, None)]


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, 261, 517, sqlite3.SQLITE_LOCKED])
def test_a_busy_code_extended_or_not_is_waited_out(tmp_path: Path, code: int) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    calls = []

    def write() -> bool:
        calls.append(1)
        if len(calls) < 3:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = code  # type: ignore[attr-defined]
            raise error
        return True

    assert store._when_unlocked(write) is True
    assert len(calls) == 3

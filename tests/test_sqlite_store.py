"""SQLite specifics beyond the shared contract: retention (DynamoDB uses TTL instead), how
a write waits for a locked database, the claim's cost, the schema on a fresh file and on a
file written by the version before this one (which recorded deliveries as ``new``)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from receiver.errors import StateError
from receiver.events import Delivery, PushEvent
from receiver.state.base import (
    DELIVERY_RETENTION_SECONDS,
    HISTORY_RETENTION_SECONDS,
    DecisionRecord,
    PipelineDecision,
)
from receiver.state.sqlite import SCHEMA_VERSION, SQLiteStore

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
    record = DecisionRecord("d", "github", "acme/mono", "branch", "main", None, "b" * 40, 0.0, 1,
                            (PipelineDecision("p", "started", None, "compare", True),))
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
    store = SQLiteStore(str(tmp_path / "s.db"), busy_timeout=0.3)
    store.init()
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
    with pytest.raises(StateError, match="deliveries") as raised:
        store.record_delivery(delivery("lost"), 1.0)
    assert time.monotonic() - t0 < 1.0  # not retried: only a locked database is waited for
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)  # the cause is kept


def _statuses(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT delivery_id, status FROM deliveries").fetchall())


def _claim_all(store: SQLiteStore, now: float) -> list[str]:
    claimed = []
    while (d := store.claim_delivery("w", 60, now)) is not None:
        claimed.append(d.delivery_id)
    return claimed


def _claim_steps_while_the_ref_is_busy(path: Path, queued: int) -> int:
    """SQLite VM steps (in hundreds) of one claim while ``queued`` deliveries of one
    branch wait behind the one being processed: that claim finds nothing to take."""
    store = SQLiteStore(str(path))
    store.init()
    for i in range(queued + 1):
        store.record_delivery(delivery(f"d{i}"), float(i))
    assert store.claim_delivery("A", 600, 1000.0) is not None
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




# --- a fresh file, and a file written by the version before SCHEMA_VERSION 1 -------------


def test_state_and_history_on_a_fresh_sqlite_file_answer_empty(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "state.db"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "state": {"backend": "sqlite", "path": str(path)},
        "launcher": {"backend": "log"},
        "repositories": [{"provider": "github", "name": "acme/mono",
                          "webhook_secrets": ["env:FRESH_SECRET"], "branches": ["main"],
                          "pipelines": [{"name": "p", "paths": ["**"]}]}],
    }))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "receiver.cli", *args, "--config",
                               str(config)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "FRESH_SECRET": "x"})

    state = cli("state")
    assert (state.returncode, state.stdout, state.stderr) == (0, "", "")
    history = cli("history", "--pipeline", "p")
    assert (history.returncode, history.stdout, history.stderr) == \
        (1, "", "no decision recorded for that\n")
    assert path.exists()  # the schema was made on the first open, not only by 'state init'


# The schema and the recording statement of the version before SCHEMA_VERSION 1, verbatim:
# a delivery was recorded as 'new', outside the partial indexes, and admitted ('pending')
# by the background worker before it claimed.
PREVIOUS_SCHEMA = """
CREATE TABLE deliveries (
    delivery_id TEXT NOT NULL, provider TEXT NOT NULL, repository TEXT NOT NULL,
    ref_key TEXT NOT NULL DEFAULT '', events TEXT NOT NULL,
    verified_by TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL, outcome TEXT, PRIMARY KEY (provider, delivery_id));
CREATE INDEX deliveries_pending_by_ref_age ON deliveries (ref_key, received_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_leased_by_ref ON deliveries (ref_key, lease_until)
    WHERE status = 'pending' AND lease_owner IS NOT NULL;
CREATE INDEX deliveries_done_by_age ON deliveries (finished_at) WHERE status = 'done';
CREATE TABLE baselines (
    repository TEXT NOT NULL, branch TEXT NOT NULL, pipeline TEXT NOT NULL,
    commit_sha TEXT, last_started_commit TEXT, last_execution_id TEXT,
    updated_at REAL NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (repository, branch, pipeline));
CREATE TABLE decisions (
    delivery_id TEXT NOT NULL, ref_key TEXT NOT NULL, head TEXT, recorded_at REAL NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (delivery_id, ref_key));
CREATE INDEX decisions_head ON decisions (head, recorded_at);
CREATE TABLE decision_pipelines (
    pipeline TEXT NOT NULL, delivery_id TEXT NOT NULL, ref_key TEXT NOT NULL,
    recorded_at REAL NOT NULL, PRIMARY KEY (pipeline, delivery_id, ref_key));
CREATE TABLE starts (
    pipeline TEXT NOT NULL, commit_sha TEXT NOT NULL, state TEXT NOT NULL,
    owner TEXT NOT NULL, attempt INTEGER NOT NULL, execution_id TEXT, error TEXT,
    updated_at REAL NOT NULL, PRIMARY KEY (pipeline, commit_sha));
"""
PREVIOUS_INSERT = (
    "INSERT OR IGNORE INTO deliveries (delivery_id, provider, repository, ref_key, events,"
    " verified_by, received_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'new')")
# a decision record as that version stored it: a plain dict, ``matched`` as [path, glob]
PREVIOUS_DECISION = {
    "delivery_id": "old-1", "provider": "github", "repository": "acme/mono",
    "ref_type": "branch", "ref": "main", "before": "a" * 40, "head": "b" * 40,
    "recorded_at": 5.0, "attempt": 1,
    "pipelines": [{"pipeline": "p", "verdict": "started", "baseline": "a" * 40,
                   "diff": "compare", "complete": True, "reason": None,
                   "matched": [["svc/x.py", "svc/**"]], "matched_count": 1,
                   "execution_id": "exec-1", "error": None}],
}


def _file_of_the_previous_version(path: Path) -> list[Delivery]:
    """A database as the previous version left it: two deliveries of main and one of dev
    recorded but not admitted yet ('new'), one admitted ('pending'), one decision record."""
    waiting = [delivery("old-main-1"), delivery("old-main-2"),
               Delivery("old-dev-1", "github", "acme/mono",
                        (PushEvent("github", "acme/mono", "branch", "dev", "a" * 40, "c" * 40),))]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(PREVIOUS_SCHEMA)
        for i, d in enumerate(waiting):
            conn.execute(PREVIOUS_INSERT, (d.delivery_id, d.provider, d.repository, d.ref_key,
                                           d.events_json(), d.verified_by, float(i)))
        admitted = delivery("old-admitted")
        conn.execute(PREVIOUS_INSERT.replace("'new'", "'pending'"), (
            admitted.delivery_id, admitted.provider, admitted.repository,
            "github:acme/mono#branch:other", admitted.events_json(), "", 10.0))
        conn.execute("INSERT INTO decisions VALUES ('old-1', 'branch:main', ?, 5.0, ?)",
                     ("b" * 40, json.dumps(PREVIOUS_DECISION)))
        conn.execute("INSERT INTO decision_pipelines VALUES ('p', 'old-1', 'branch:main', 5.0)")
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
    return waiting


@pytest.mark.parametrize("first_call", ["init", "claim"])
def test_deliveries_the_previous_version_left_new_are_claimed_and_processed(
        tmp_path: Path, first_call: str) -> None:
    path = tmp_path / "s.db"
    _file_of_the_previous_version(path)
    assert set(_statuses(path).values()) == {"new", "pending"}
    store = SQLiteStore(str(path))
    if first_call == "init":  # as the service and 'state init' do
        store.init()
    held: list[Delivery] = []
    while (claimed := store.claim_delivery("w", 60, 100.0)) is not None:
        held.append(claimed)
    # oldest first, one delivery of a ref at a time: old-main-2 waits for old-main-1
    assert [d.delivery_id for d in held] == ["old-main-1", "old-dev-1", "old-admitted"]
    for claimed in held:
        store.finish_delivery(claimed, "w", "processed", 101.0)
    last = store.claim_delivery("w", 60, 102.0)
    assert last is not None and (last.delivery_id, last.events) == (
        "old-main-2", delivery("old-main-2").events)
    store.finish_delivery(last, "w", "processed", 103.0)
    assert store.pending_count() == 0
    assert set(_statuses(path).values()) == {"done"}
    # and the file is an ordinary one now: new deliveries queue and the old records read
    assert store.record_delivery(delivery("after-upgrade"), 200.0) is True
    assert store.record_delivery(delivery("old-main-1"), 201.0) is False  # still a duplicate
    assert _claim_all(store, 300.0) == ["after-upgrade"]
    (old,) = store.history(pipeline="p")
    assert old == DecisionRecord.from_dict(PREVIOUS_DECISION)
    assert old.pipelines[0].matched == (("svc/x.py", "svc/**"),)
    # its repository, in the record's body only then, is a column now (the status page)
    assert store.recent_decisions("github:acme/mono", branch="main") == [old]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_file_of_the_previous_version_is_upgraded_once_by_processes_starting_together(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    waiting = _file_of_the_previous_version(path)
    stores = [SQLiteStore(str(path)) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(store: SQLiteStore) -> None:
        barrier.wait()
        try:
            store.ping()  # the first open upgrades the file
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(_statuses(path).items()) == sorted(
        [(d.delivery_id, "pending") for d in waiting] + [("old-admitted", "pending")])

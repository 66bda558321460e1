"""SQLite state store: the embedded default. Safe across threads and gunicorn workers.

Each thread has its own connection (sqlite3 connections are not shared across threads), in
autocommit mode: a single statement is its own transaction, and every read-then-write step
(claiming a delivery, taking over a failed start, replacing a decision record) runs inside
``BEGIN IMMEDIATE``, which takes the write lock before the first read, so two processes
cannot both act on what they read. A writer that finds the database locked waits in
SQLite's busy handler for up to ``BUSY_TIMEOUT_SECONDS``, then fails with StateError (the
webhook answers 503). WAL lets readers run beside the one writer.

The schema is created (and a file written by an earlier version brought up to date) the
first time a process opens a file whose ``user_version`` is older than SCHEMA_VERSION, so
every command also works on a fresh file; ``init`` does the same explicitly.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from receiver.errors import StateError
from receiver.events import Delivery
from receiver.state.base import (
    ACTIVE_VERDICTS,
    DELIVERY_RETENTION_SECONDS,
    HISTORY_RETENTION_SECONDS,
    START_RETENTION_SECONDS,
    Backlog,
    Baseline,
    DecisionRecord,
    Execution,
    Head,
    Holding,
    StartRecord,
    Task,
    TaskOutcome,
    Validation,
    pull_request_key,
)

BUSY_TIMEOUT_SECONDS = 30.0  # how long a write waits for a locked database
PURGE_EVERY = 500  # finished deliveries between purges of expired rows
SCHEMA_VERSION = 5  # PRAGMA user_version of a file that has this module's schema

# columns added since the first schema: a file made by an older version gains them
MIGRATIONS = (
    ("deliveries", "ref_key", "TEXT NOT NULL DEFAULT ''"),
    ("starts", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("baselines", "deployed_commit", "TEXT"),
    ("baselines", "deployed_started_at", "REAL NOT NULL DEFAULT 0"),
    ("baselines", "last_execution_status", "TEXT"),
    ("executions", "settled", "TEXT"),
    ("decisions", "repository", "TEXT NOT NULL DEFAULT ''"),
    ("executions", "pull_request", "INTEGER"),
    ("decisions", "pull_request", "TEXT"),
)

TABLES = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    repository TEXT NOT NULL,
    ref_key TEXT NOT NULL DEFAULT '',  -- Delivery.ref_key: one ref's deliveries run in turn
    events TEXT NOT NULL,
    verified_by TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',  -- pending | done
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    outcome TEXT,
    PRIMARY KEY (provider, delivery_id)
);
CREATE TABLE IF NOT EXISTS baselines (
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    commit_sha TEXT,
    last_started_commit TEXT,
    last_execution_id TEXT,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL,
    deployed_commit TEXT,
    deployed_started_at REAL NOT NULL DEFAULT 0,
    last_execution_status TEXT,
    PRIMARY KEY (repository, branch, pipeline)
);
CREATE TABLE IF NOT EXISTS executions (
    pipeline TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    started_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    final INTEGER NOT NULL,
    settled TEXT,  -- Execution.settled: the status whose follow-ups were applied
    pull_request INTEGER,  -- Execution.pull_request: the request a validation is of
    PRIMARY KEY (pipeline, execution_id)
);
-- each pull request's validation (Validation.to_json()), compare-and-set on version
CREATE TABLE IF NOT EXISTS validations (
    repository TEXT NOT NULL,
    number INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (repository, number)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
-- the last known head of each watched branch (the reconciler's memory): one row a branch
CREATE TABLE IF NOT EXISTS heads (
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    sha TEXT NOT NULL,
    etag TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (repository, branch)
);
-- pending effects (commit statuses, notifications) until their sender finishes them
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',  -- pending | done | failed
    due_at REAL NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS decisions (
    delivery_id TEXT NOT NULL,
    ref_key TEXT NOT NULL,  -- DecisionRecord.push_key
    head TEXT,
    recorded_at REAL NOT NULL,
    body TEXT NOT NULL,  -- DecisionRecord.to_json()
    repository TEXT NOT NULL DEFAULT '',  -- DecisionRecord.repository_key
    pull_request TEXT,  -- a pull request's record: '{provider}:{repository}#{number}'
    PRIMARY KEY (delivery_id, ref_key)
);
CREATE TABLE IF NOT EXISTS decision_pipelines (
    pipeline TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    ref_key TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (pipeline, delivery_id, ref_key)
);
CREATE TABLE IF NOT EXISTS module_maps (
    repository TEXT PRIMARY KEY,
    commit_sha TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS starts (
    pipeline TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    execution_id TEXT,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (pipeline, commit_sha)
)
"""

# after MIGRATIONS: they index columns an older file gains there
INDEXES = """
-- each ref's queue in age order: a claim visits the refs, not every queued row (_CLAIMABLE)
CREATE INDEX IF NOT EXISTS deliveries_pending_by_ref_age ON deliveries (ref_key, received_at)
    WHERE status = 'pending';
-- the deliveries being processed (a handful): whether a ref is busy (_ref_free)
CREATE INDEX IF NOT EXISTS deliveries_leased_by_ref ON deliveries (ref_key, lease_until)
    WHERE status = 'pending' AND lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_done_by_age ON deliveries (finished_at)
    WHERE status = 'done';
CREATE INDEX IF NOT EXISTS decisions_head ON decisions (head, recorded_at);
-- a repository's records, and one branch's, newest first (recent_decisions)
CREATE INDEX IF NOT EXISTS decisions_repository ON decisions (repository, recorded_at);
CREATE INDEX IF NOT EXISTS decisions_repository_ref ON decisions (repository, ref_key, recorded_at);
CREATE INDEX IF NOT EXISTS decisions_pull_request ON decisions (pull_request, recorded_at)
    WHERE pull_request IS NOT NULL;
CREATE INDEX IF NOT EXISTS validations_by_update ON validations (updated_at);
-- the open executions (a handful): running, or ended with follow-ups to apply
CREATE INDEX IF NOT EXISTS executions_unsettled ON executions (started_at)
    WHERE final = 0 OR settled IS NOT status;
CREATE INDEX IF NOT EXISTS tasks_pending_by_due ON tasks (due_at) WHERE status = 'pending';
-- the baselines whose last start's outcome is not applied yet (Baseline.in_flight)
CREATE INDEX IF NOT EXISTS baselines_in_flight ON baselines (updated_at)
    WHERE last_execution_status IN ('InProgress', 'Stopping')
"""


def _ref_free(outer: str, now: str = "?") -> str:
    """SQL: no other delivery of ``outer``'s ref is being processed (a live lease) at the
    time bound to the parameter ``now``."""
    return (f"NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.ref_key = {outer}.ref_key"
            f" AND o.status = 'pending' AND o.lease_owner IS NOT NULL AND o.lease_until > {now})")


_DELIVERY_COLUMNS = "delivery_id, provider, repository, events, verified_by, received_at, attempts"

# The oldest claimable delivery: pending, not waiting for a retry (lease_until <= now), of a
# ref with none being processed (_ref_free). Found per ref, as the oldest such row of each
# ref that has pending rows, then the oldest of those: a search of every queued row in age
# order would read the whole queue of a ref that is being processed, on every claim. The
# refs are listed by skipping through the index from one ref_key to the next.
_CLAIMABLE = f"""
WITH RECURSIVE refs(ref_key) AS (
    SELECT (SELECT min(ref_key) FROM deliveries WHERE status = 'pending')
    UNION ALL
    SELECT (SELECT min(ref_key) FROM deliveries WHERE status = 'pending'
            AND ref_key > refs.ref_key)
    FROM refs WHERE refs.ref_key IS NOT NULL
)
SELECT d.rowid, {', '.join('d.' + c for c in _DELIVERY_COLUMNS.split(', '))}
FROM refs JOIN deliveries d ON d.rowid = (
    SELECT rowid FROM deliveries WHERE status = 'pending' AND ref_key = refs.ref_key
    AND lease_until <= ?1 ORDER BY received_at LIMIT 1)
WHERE {_ref_free('refs', '?2')}
ORDER BY d.received_at LIMIT 1
"""

_RECORD = ("INSERT OR IGNORE INTO deliveries (delivery_id, provider, repository, ref_key, events,"
           " verified_by, received_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')")
_BASELINE_COLUMNS = ("repository, branch, pipeline, commit_sha, last_started_commit,"
                     " last_execution_id, updated_at, version, deployed_commit,"
                     " deployed_started_at, last_execution_status")
_EXECUTION_COLUMNS = ("pipeline, execution_id, repository, branch, commit_sha, started_at,"
                      " status, attempt, updated_at, settled, pull_request")
_TASK_COLUMNS = "key, kind, target, payload, due_at, created_at, attempts, error"
# a baseline's compare-and-set
_SAME_VERSION = " WHERE repository = ? AND branch = ? AND pipeline = ? AND version = ?"


class SQLiteStore:
    """StateStore over one SQLite file (see ``receiver.state.base`` for the contract)."""

    def __init__(self, path: str, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._finished = 0

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate what sqlite3 (or opening the file) raises into StateError. The cause is
        kept: SQLite's messages name tables and paths, never a secret."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"sqlite {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (opened, and the schema made current, on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._errors():
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                       isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a committed delivery survives the process dying (the WAL is
                # written before COMMIT returns); only an OS crash or power loss can lose the
                # last commits, and production state is DynamoDB
                conn.execute("PRAGMA synchronous=NORMAL")
                # a bound on memory per thread: any write by another connection empties the
                # cache anyway
                conn.execute("PRAGMA cache_size=-512")
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    self._create_schema(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its first statement."""
        conn = self._conn() if conn is None else conn
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """One statement, its own transaction."""
        conn = self._conn()
        with self._errors():
            return conn.execute(sql, args)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        conn = self._conn()
        with self._errors():
            return conn.execute(sql, args).fetchall()

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # one transaction: processes starting together run it one after the other, and the
        # second finds everything in place
        with self._tx(conn):
            for statement in TABLES.split(";"):
                conn.execute(statement)
            for table, column, ddl in MIGRATIONS:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
            for statement in INDEXES.split(";"):
                conn.execute(statement)
            # files written before SCHEMA_VERSION 1 recorded deliveries as 'new', admitted
            # to the queue later: they are queued deliveries like any other
            conn.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'new'")
            # before SCHEMA_VERSION 3 the follow-ups of a final status were applied with it
            conn.execute("DROP INDEX IF EXISTS executions_open")
            conn.execute("UPDATE executions SET settled = status WHERE final = 1"
                         " AND settled IS NULL")
            # before SCHEMA_VERSION 4 a decision's repository was in its body only
            conn.execute("UPDATE decisions SET repository = json_extract(body, '$.provider')"
                         " || ':' || json_extract(body, '$.repository') WHERE repository = ''")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def init(self) -> None:
        """Create the schema, or bring a file of an earlier version up to date (idempotent)."""
        self._create_schema(self._conn())

    def ping(self) -> None:
        """Check that the schema is there and readable."""
        self._query("SELECT 1 FROM deliveries LIMIT 1")

    def record_delivery(self, delivery: Delivery, now: float) -> bool:
        """The one write on a webhook's answer path. A locked database is retried here after
        50 µs, doubling to 1 ms (for up to ``busy_timeout`` seconds, then StateError), not in
        SQLite's busy handler, whose sleeps of 1, 2, 5, 10 ms and more land on the time a
        provider waits for its answer while the background worker writes."""
        row = (delivery.delivery_id, delivery.provider, delivery.repository, delivery.ref_key,
               delivery.events_json(), delivery.verified_by, now)
        conn = self._conn()
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.00005
        with self._errors():
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                while True:
                    try:
                        cur = conn.execute(_RECORD, row)
                        return cur.rowcount == 1
                    except sqlite3.OperationalError as exc:
                        # the primary code: an extended one (SQLITE_BUSY_RECOVERY...) is busy too
                        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
                        if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or \
                                time.monotonic() + pause > deadline:
                            raise
                    time.sleep(pause)
                    pause = min(pause * 2, 0.001)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def claim_delivery(self, owner: str, lease_seconds: float, now: float) -> Delivery | None:
        with self._tx() as conn:
            found = conn.execute(_CLAIMABLE, (now, now)).fetchone()
            if found is None:
                return None
            conn.execute("UPDATE deliveries SET lease_owner = ?, lease_until = ?,"
                         " attempts = attempts + 1 WHERE rowid = ?",
                         (owner, now + lease_seconds, found[0]))
        delivery_id, provider, repository, events, verified_by, received_at, attempts = found[1:]
        return Delivery(delivery_id=delivery_id, provider=provider, repository=repository,
                        **Delivery.stored_fields(events), verified_by=verified_by,
                        received_at=received_at, attempts=attempts + 1)

    def extend_lease(self, delivery: Delivery, owner: str, until: float) -> bool:
        cur = self._execute(
            "UPDATE deliveries SET lease_until = ? WHERE provider = ? AND delivery_id = ?"
            " AND lease_owner = ? AND status = 'pending'",
            (until, delivery.provider, delivery.delivery_id, owner))
        return cur.rowcount == 1

    def release_delivery(self, delivery: Delivery, owner: str, retry_at: float) -> None:
        self._execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = ?"
            " WHERE provider = ? AND delivery_id = ? AND lease_owner = ? AND status = 'pending'",
            (retry_at, delivery.provider, delivery.delivery_id, owner))

    def finish_delivery(self, delivery: Delivery, owner: str, outcome: str, now: float) -> None:
        self._execute(
            "UPDATE deliveries SET status = 'done', outcome = ?, finished_at = ?,"
            " lease_owner = NULL WHERE provider = ? AND delivery_id = ? AND lease_owner = ?",
            (outcome, now, delivery.provider, delivery.delivery_id, owner))
        self._finished += 1
        if self._finished % PURGE_EVERY == 1:
            self.purge(now)

    def purge(self, now: float) -> None:
        """Drop records past their retention, as DynamoDB's TTL does for that backend."""
        with self._tx() as conn:
            conn.execute("DELETE FROM deliveries WHERE status = 'done' AND finished_at < ?",
                         (now - DELIVERY_RETENTION_SECONDS,))
            conn.execute("DELETE FROM starts WHERE updated_at < ?",
                         (now - START_RETENTION_SECONDS,))
            conn.execute("DELETE FROM decisions WHERE recorded_at < ?",
                         (now - HISTORY_RETENTION_SECONDS,))
            conn.execute("DELETE FROM decision_pipelines WHERE recorded_at < ?",
                         (now - HISTORY_RETENTION_SECONDS,))
            conn.execute("DELETE FROM executions WHERE final = 1 AND updated_at < ?",
                         (now - START_RETENTION_SECONDS,))
            conn.execute("DELETE FROM tasks WHERE status != 'pending' AND finished_at < ?",
                         (now - START_RETENTION_SECONDS,))
            conn.execute("DELETE FROM validations WHERE updated_at < ?",
                         (now - HISTORY_RETENTION_SECONDS,))

    def pending_count(self) -> int:
        """How many deliveries are not finished (for tests and readiness detail)."""
        return int(self._query("SELECT COUNT(*) FROM deliveries WHERE status != 'done'")[0][0])

    def baselines(self, repository: str, branch: str) -> dict[str, Baseline]:
        rows = self._query(f"SELECT {_BASELINE_COLUMNS} FROM baselines"
                           " WHERE repository = ? AND branch = ?", (repository, branch))
        return {row[2]: Baseline(*row) for row in rows}

    def advance_baseline(self, expected: Baseline, commit: str, now: float,
                         execution_id: str | None = None) -> bool:
        key = (expected.repository, expected.branch, expected.pipeline)
        if expected.version == 0:
            cur = self._execute(
                "INSERT OR IGNORE INTO baselines (repository, branch, pipeline, commit_sha,"
                " last_started_commit, last_execution_id, updated_at, version,"
                " last_execution_status) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (*key, commit, commit if execution_id else None, execution_id, now,
                 "InProgress" if execution_id else None))
        elif execution_id is not None:
            cur = self._execute(
                "UPDATE baselines SET commit_sha = ?, last_started_commit = ?,"
                " last_execution_id = ?, updated_at = ?, version = version + 1,"
                " last_execution_status = 'InProgress'" + _SAME_VERSION,
                (commit, commit, execution_id, now, *key, expected.version))
        else:
            cur = self._execute(
                "UPDATE baselines SET commit_sha = ?, updated_at = ?, version = version + 1"
                + _SAME_VERSION, (commit, now, *key, expected.version))
        return cur.rowcount == 1

    def all_baselines(self) -> Iterator[Baseline]:
        rows = self._query(f"SELECT {_BASELINE_COLUMNS} FROM baselines"
                           " ORDER BY repository, branch, pipeline")
        return (Baseline(*row) for row in rows)

    def record_decision(self, record: DecisionRecord) -> None:
        key = (record.delivery_id, record.push_key)
        active = [p.pipeline for p in record.pipelines if p.verdict in ACTIVE_VERDICTS]
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO decisions (delivery_id, ref_key, head, recorded_at, body,"
                " repository, pull_request) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, record.head, record.recorded_at, record.to_json(),
                 record.repository_key, record.pull_request_key))
            conn.execute("DELETE FROM decision_pipelines WHERE delivery_id = ? AND ref_key = ?",
                         key)
            conn.executemany(
                "INSERT INTO decision_pipelines (pipeline, delivery_id, ref_key, recorded_at)"
                " VALUES (?, ?, ?, ?)", [(name, *key, record.recorded_at) for name in active])

    def history(self, *, delivery_id: str | None = None, commit: str | None = None,
                pipeline: str | None = None, pull_request: tuple[str, int] | None = None,
                limit: int = 20) -> list[DecisionRecord]:
        if pull_request is not None:
            rows = self._query("SELECT body FROM decisions WHERE pull_request = ?"
                               " ORDER BY recorded_at DESC LIMIT ?",
                               (pull_request_key(*pull_request), limit))
        elif delivery_id is not None:
            rows = self._query("SELECT body FROM decisions WHERE delivery_id = ?"
                               " ORDER BY recorded_at DESC LIMIT ?", (delivery_id, limit))
        elif commit is not None:
            rows = self._query("SELECT body FROM decisions WHERE head = ?"
                               " ORDER BY recorded_at DESC LIMIT ?", (commit, limit))
        elif pipeline is not None:
            rows = self._query(
                "SELECT d.body FROM decision_pipelines p JOIN decisions d"
                " ON d.delivery_id = p.delivery_id AND d.ref_key = p.ref_key"
                " WHERE p.pipeline = ? ORDER BY p.recorded_at DESC LIMIT ?", (pipeline, limit))
            return [DecisionRecord.from_json(row[0]).only(pipeline) for row in rows]
        else:
            raise ValueError("give delivery_id, commit or pipeline")
        return [DecisionRecord.from_json(row[0]) for row in rows]

    def recent_decisions(self, repository: str, *, branch: str | None = None,
                         limit: int = 20) -> list[DecisionRecord]:
        # one of the two indexes answers each form, newest first, reading ``limit`` rows
        order = " ORDER BY recorded_at DESC, delivery_id DESC, ref_key DESC LIMIT ?"
        if branch is None:
            rows = self._query("SELECT body FROM decisions WHERE repository = ?" + order,
                               (repository, limit))
        else:
            rows = self._query("SELECT body FROM decisions WHERE repository = ?"
                               " AND ref_key = ?" + order, (repository, f"branch:{branch}", limit))
        return [DecisionRecord.from_json(row[0]) for row in rows]

    def begin_start(self, pipeline: str, commit: str, owner: str, attempt: int,
                    now: float) -> StartRecord:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO starts (pipeline, commit_sha, state, owner, attempt,"
                " updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                (pipeline, commit, owner, attempt, now))
            conn.execute(
                "UPDATE starts SET state = 'pending', owner = ?, attempt = ?, error = NULL,"
                " updated_at = ? WHERE pipeline = ? AND commit_sha = ? AND (state = 'failed'"
                " OR (state = 'pending' AND owner = ? AND attempt < ?))",
                (owner, attempt, now, pipeline, commit, owner, attempt))
            row = conn.execute(
                "SELECT pipeline, commit_sha, state, owner, attempt, execution_id, error"
                " FROM starts WHERE pipeline = ? AND commit_sha = ?",
                (pipeline, commit)).fetchone()
        return StartRecord(*row)

    def finish_start(self, pipeline: str, commit: str, owner: str, attempt: int, now: float,
                     execution_id: str | None = None, error: str | None = None) -> None:
        state = "started" if execution_id is not None else "failed"
        self._execute(
            "UPDATE starts SET state = ?, execution_id = ?, error = ?, updated_at = ?"
            " WHERE pipeline = ? AND commit_sha = ? AND owner = ? AND attempt = ?"
            " AND state = 'pending'",
            (state, execution_id, error, now, pipeline, commit, owner, attempt))

    def replace_baseline(self, expected: Baseline, updated: Baseline) -> bool:
        cur = self._execute(
            "UPDATE baselines SET commit_sha = ?, last_started_commit = ?,"
            " last_execution_id = ?, updated_at = ?, version = version + 1,"
            " deployed_commit = ?, deployed_started_at = ?, last_execution_status = ?"
            + _SAME_VERSION,
            (updated.commit, updated.last_started_commit, updated.last_execution_id,
             updated.updated_at, updated.deployed_commit, updated.deployed_started_at,
             updated.last_execution_status, expected.repository, expected.branch,
             expected.pipeline, expected.version))
        return cur.rowcount == 1

    def record_execution(self, execution: Execution) -> None:
        x = execution
        self._execute(f"INSERT OR IGNORE INTO executions ({_EXECUTION_COLUMNS}, final)"
                      " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (x.pipeline, x.execution_id, x.repository, x.branch, x.commit,
                       x.started_at, x.status, x.attempt, x.updated_at, x.settled,
                       x.pull_request, int(x.final)))

    def execution(self, pipeline: str, execution_id: str) -> Execution | None:
        rows = self._query(f"SELECT {_EXECUTION_COLUMNS} FROM executions"
                           " WHERE pipeline = ? AND execution_id = ?", (pipeline, execution_id))
        return Execution(*rows[0]) if rows else None

    def update_execution(self, expected: Execution, updated: Execution) -> bool:
        cur = self._execute(
            "UPDATE executions SET status = ?, attempt = ?, updated_at = ?, final = ?"
            " WHERE pipeline = ? AND execution_id = ? AND status = ? AND attempt = ?",
            (updated.status, updated.attempt, updated.updated_at, int(updated.final),
             expected.pipeline, expected.execution_id, expected.status, expected.attempt))
        return cur.rowcount == 1

    def open_executions(self, started_before: float | None = None,
                        limit: int = 100) -> list[Execution]:
        # the partial index's own condition, word for word, so SQLite uses it
        rows = self._query(f"SELECT {_EXECUTION_COLUMNS} FROM executions"
                           " WHERE (final = 0 OR settled IS NOT status)"
                           " AND (? IS NULL OR started_at < ?) ORDER BY started_at LIMIT ?",
                           (started_before, started_before, limit))
        return [Execution(*row) for row in rows]

    def in_flight_baselines(self, limit: int = 100) -> list[Baseline]:
        rows = self._query(f"SELECT {_BASELINE_COLUMNS} FROM baselines WHERE"
                           " last_execution_status IN ('InProgress', 'Stopping')"
                           " ORDER BY updated_at LIMIT ?", (limit,))
        return [Baseline(*row) for row in rows]

    def settle_execution(self, execution: Execution) -> bool:
        cur = self._execute(
            "UPDATE executions SET settled = status WHERE pipeline = ? AND execution_id = ?"
            " AND status = ? AND attempt = ?",
            (execution.pipeline, execution.execution_id, execution.status, execution.attempt))
        return cur.rowcount == 1

    def acquire_lease(self, name: str, owner: str, until: float, now: float) -> bool:
        cur = self._execute(
            "INSERT INTO leases (name, owner, until) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until"
            " WHERE leases.owner = excluded.owner OR leases.until <= ?",
            (name, owner, until, now))
        return cur.rowcount == 1

    def release_lease(self, name: str, owner: str) -> None:
        self._execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def enqueue_task(self, task: Task) -> bool:
        t = task
        cur = self._execute(f"INSERT OR IGNORE INTO tasks ({_TASK_COLUMNS})"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (t.key, t.kind, t.target, t.payload, t.due_at, t.created_at,
                             t.attempts, t.error))
        return cur.rowcount == 1

    def task_pending(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM tasks WHERE key = ? AND status = 'pending'",
                                (key,)))

    def claim_tasks(self, owner: str, now: float, lease_seconds: float,
                    limit: int) -> list[Task]:
        with self._tx() as conn:
            rows = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE status = 'pending'"
                                " AND due_at <= ? AND lease_until <= ? ORDER BY due_at"
                                " LIMIT ?", (now, now, limit)).fetchall()
            conn.executemany("UPDATE tasks SET lease_owner = ?, lease_until = ? WHERE key = ?",
                             [(owner, now + lease_seconds, row[0]) for row in rows])
        return [Task(*row) for row in rows]

    def retry_task(self, task: Task, owner: str, due_at: float, error: str | None,
                   *, failed: bool = True) -> None:
        self._execute(
            "UPDATE tasks SET due_at = ?, lease_owner = NULL, lease_until = 0,"
            " attempts = attempts + ?, error = CASE WHEN ? THEN ? ELSE error END"
            " WHERE key = ? AND lease_owner = ? AND status = 'pending'",
            (due_at, int(failed), int(failed), error, task.key, owner))

    def finish_task(self, task: Task, owner: str, outcome: TaskOutcome, now: float,
                    error: str | None = None) -> None:
        self._execute(
            "UPDATE tasks SET status = ?, finished_at = ?, error = COALESCE(?, error),"
            " lease_owner = NULL WHERE key = ? AND lease_owner = ? AND status = 'pending'",
            (outcome, now, error, task.key, owner))

    def backlog(self, now: float) -> Backlog:
        deliveries, oldest = self._query("SELECT COUNT(*), MIN(received_at) FROM deliveries"
                                         " WHERE status = 'pending'")[0]
        tasks, oldest_task = self._query("SELECT COUNT(*), MIN(due_at) FROM tasks"
                                         " WHERE status = 'pending'")[0]
        return Backlog(deliveries, oldest, tasks, oldest_task)

    def holdings(self, now: float) -> list[Holding]:
        leases = self._query("SELECT name, owner, until FROM leases WHERE until > ?"
                             " ORDER BY name", (now,))
        refs = self._query("SELECT ref_key, lease_owner, lease_until FROM deliveries"
                           " WHERE status = 'pending' AND lease_owner IS NOT NULL"
                           " AND lease_until > ? ORDER BY ref_key", (now,))
        starts = self._query("SELECT pipeline || '@' || commit_sha, owner FROM starts"
                             " WHERE state = 'pending' ORDER BY pipeline, commit_sha")
        return ([Holding("lease", *row) for row in leases]
                + [Holding("ref", *row) for row in refs]
                + [Holding("start", name, owner, None) for name, owner in starts])

    def heads(self, repository: str) -> dict[str, Head]:
        rows = self._query("SELECT branch, sha, etag, updated_at FROM heads"
                           " WHERE repository = ?", (repository,))
        return {row[0]: Head(row[1], row[2], row[3]) for row in rows}

    def note_head(self, repository: str, branch: str, sha: str | None, etag: str | None,
                  now: float) -> None:
        if sha is None:
            self._execute("DELETE FROM heads WHERE repository = ? AND branch = ?",
                          (repository, branch))
        else:
            self._execute("INSERT OR REPLACE INTO heads (repository, branch, sha, etag,"
                          " updated_at) VALUES (?, ?, ?, ?, ?)",
                          (repository, branch, sha, etag, now))

    def validation(self, repository: str, number: int) -> Validation | None:
        rows = self._query("SELECT body, version FROM validations WHERE repository = ?"
                           " AND number = ?", (repository, number))
        return Validation.from_json(rows[0][0], rows[0][1]) if rows else None

    def save_validation(self, validation: Validation) -> bool:
        v = validation
        if v.version == 0:
            cur = self._execute("INSERT OR IGNORE INTO validations (repository, number,"
                                " version, updated_at, body) VALUES (?, ?, 1, ?, ?)",
                                (v.repository, v.number, v.updated_at, v.to_json()))
        else:
            cur = self._execute("UPDATE validations SET version = version + 1,"
                                " updated_at = ?, body = ? WHERE repository = ? AND number = ?"
                                " AND version = ?", (v.updated_at, v.to_json(), v.repository,
                                                     v.number, v.version))
        return cur.rowcount == 1

    def validations(self, *, repository: str | None = None,
                    limit: int = 50) -> list[Validation]:
        rows = self._query("SELECT body, version FROM validations WHERE ? IS NULL OR"
                           " repository = ? ORDER BY updated_at DESC LIMIT ?",
                           (repository, repository, limit))
        return [Validation.from_json(body, version) for body, version in rows]

    def module_map(self, repository: str) -> tuple[str, str] | None:
        rows = self._query("SELECT commit_sha, body FROM module_maps WHERE repository = ?",
                           (repository,))
        return (rows[0][0], rows[0][1]) if rows else None

    def save_module_map(self, repository: str, commit: str, text: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO module_maps (repository, commit_sha, body, updated_at)"
                         " VALUES (?, ?, ?, ?) ON CONFLICT (repository) DO UPDATE SET"
                         " commit_sha = excluded.commit_sha, body = excluded.body,"
                         " updated_at = excluded.updated_at", (repository, commit, text, now))

"""SQLite state store: the embedded default. Safe across threads and gunicorn workers.

Each thread has its own connection (sqlite3 connections are not shared across threads);
WAL lets readers run beside the one writer; ``BEGIN IMMEDIATE`` makes the read-then-write
steps (claiming a delivery, taking over a failed start) atomic across processes.

Recording a delivery (the one write on the webhook's answer path) is a single
``INSERT OR IGNORE`` in autocommit mode: SQLite takes and drops its write lock inside that
one C call. Every multi-statement transaction instead holds the lock across several calls,
and between them the thread may wait for the GIL for milliseconds while every other
process's writer waits too; measured under load, that left a fifth of the CPU idle. When
the insert finds the database locked it retries after 50 µs, doubling to 1 ms, rather than
in SQLite's busy handler, whose first sleeps are 1, 2 and 5 ms. The row is written as
``status = 'new'``, outside every secondary index (they are partial), so the insert
touches two B-trees instead of four; the background worker admits new rows (``'new'`` ->
``'pending'``) before it claims, ADMIT_CHUNK rows per autocommit UPDATE, and only when
the webhook answers let it (receiver/worker.py defers it while requests are in flight). The
insert runs on one connection per process through ``receiver/state/sqlite_insert.py``,
which keeps the GIL for the few microseconds SQLite takes instead of handing it to
another request thread twice per insert (each hand-over costs context switches).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
    Baseline,
    Execution,
    StartRecord,
)
from receiver.state.sqlite_insert import InsertStatement, open_statement

MIGRATIONS = (
    ("deliveries", "ref_key", "TEXT NOT NULL DEFAULT ''"),
    ("starts", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("baselines", "deployed_commit", "TEXT"),
    ("baselines", "deployed_started_at", "REAL NOT NULL DEFAULT 0"),
    ("baselines", "last_execution_status", "TEXT"),
)
_BASELINE_COLUMNS = ("repository, branch, pipeline, commit_sha, last_started_commit,"
                     " last_execution_id, updated_at, version, deployed_commit,"
                     " deployed_started_at, last_execution_status")
_EXECUTION_COLUMNS = ("pipeline, execution_id, repository, branch, commit_sha, started_at,"
                      " status, attempt, updated_at")


def _ref_free(outer: str, now: str = "?") -> str:
    """SQL: no other delivery of ``outer``'s ref is being processed (a live lease) at the
    time bound to the parameter ``now``."""
    return (f"NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.ref_key = {outer}.ref_key"
            f" AND o.status = 'pending' AND o.lease_owner IS NOT NULL AND o.lease_until > {now})")


PURGE_EVERY = 500  # finished deliveries between purges of expired rows
RECORD_TIMEOUT_SECONDS = 30.0  # how long a recording waits for a locked database: then 503
FULL_ADMIT_SECONDS = 60.0  # how often _admit looks at the whole table, not only its end
ADMIT_CHUNK = 128  # rows admitted per write (see _admit): about 1 ms of the write lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    repository TEXT NOT NULL,
    ref_key TEXT NOT NULL DEFAULT '',
    events TEXT NOT NULL,
    verified_by TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    outcome TEXT,
    PRIMARY KEY (provider, delivery_id)
);
-- indexes
-- partial: a delivery enters them when it is admitted ('new' -> 'pending', in the
-- background), so recording one writes only the table and its key (see record_delivery)
DROP INDEX IF EXISTS deliveries_pending;
DROP INDEX IF EXISTS deliveries_by_status_age;
DROP INDEX IF EXISTS deliveries_by_ref;
DROP INDEX IF EXISTS deliveries_pending_by_age;
-- each ref's queue in age order: a claim visits the refs, not every queued row (_CLAIMABLE)
CREATE INDEX IF NOT EXISTS deliveries_pending_by_ref_age ON deliveries (ref_key, received_at)
    WHERE status = 'pending';
-- the deliveries being processed (a handful): whether a ref is busy (_ref_free). Leased
-- rows only, so admitting a backlog writes one index, not two
DROP INDEX IF EXISTS deliveries_pending_by_ref;
CREATE INDEX IF NOT EXISTS deliveries_leased_by_ref ON deliveries (ref_key, lease_until)
    WHERE status = 'pending' AND lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_done_by_age ON deliveries (finished_at)
    WHERE status = 'done';
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
    PRIMARY KEY (pipeline, execution_id)
);
-- the executions still running (a handful): what the outcome poll asks about
CREATE INDEX IF NOT EXISTS executions_open ON executions (started_at) WHERE final = 0;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS status_writes (
    key TEXT PRIMARY KEY,
    claimed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    delivery_id TEXT NOT NULL,
    ref_key TEXT NOT NULL,
    head TEXT,
    recorded_at REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (delivery_id, ref_key)
);
CREATE INDEX IF NOT EXISTS decisions_head ON decisions (head, recorded_at);
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
);
"""


# The oldest claimable delivery: pending, not waiting for a retry (lease_until <= now), of a
# ref with none being processed (_ref_free). Found per ref, as the oldest such row of each
# ref that has pending rows, then the oldest of those: a search of every queued row in age
# order instead reads the whole queue of a ref that is being processed (measured 15 ms per
# claim with 30,000 deliveries of one branch queued, on every claim the other worker made).
# The refs are listed by skipping through the index from one ref_key to the next.
_CLAIMABLE = f"""
WITH RECURSIVE refs(ref_key) AS (
    SELECT (SELECT min(ref_key) FROM deliveries WHERE status = 'pending')
    UNION ALL
    SELECT (SELECT min(ref_key) FROM deliveries WHERE status = 'pending'
            AND ref_key > refs.ref_key)
    FROM refs WHERE refs.ref_key IS NOT NULL
)
SELECT d.provider, d.delivery_id FROM refs JOIN deliveries d ON d.rowid = (
    SELECT rowid FROM deliveries WHERE status = 'pending' AND ref_key = refs.ref_key
    AND lease_until <= ?1 ORDER BY received_at LIMIT 1)
WHERE {_ref_free('refs', '?2')}
ORDER BY d.received_at LIMIT 1
"""

_INSERT_DELIVERY = (
    "INSERT OR IGNORE INTO deliveries (delivery_id, provider, repository, ref_key, events,"
    " verified_by, received_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'new')")


class SQLiteStore:
    """StateStore over one SQLite file (see ``receiver.state.base`` for the contract)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        # Writers queue on a thread lock, then on an flock shared by every process using
        # the file, instead of in SQLite's busy handler: that handler sleeps and retries
        # (up to 100 ms a sleep), which lands on the webhook answer's latency, while a
        # blocked flock wakes the moment the holder lets go.
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._finished = 0
        self.record_timeout = RECORD_TIMEOUT_SECONDS
        self._admitted = 0  # the highest row id this process has admitted (see _admit)
        self._full_admit_due = 0.0
        self._insert: InsertStatement | None = None  # made on first use, in each process
        self._insert_lock = threading.Lock()
        self._direct_insert = True  # False once the GIL-keeping insert proved unavailable

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a committed delivery survives the process dying (the WAL is
                # written before COMMIT returns); only an OS crash or power loss can lose the
                # last commits, and production state is DynamoDB
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=30000")
                # at most 512 KiB per connection: every write by another connection (another
                # thread or process) empties the cache, so a larger one buys little
                conn.execute("PRAGMA cache_size=-512")
            except (sqlite3.Error, OSError) as exc:
                raise StateError(f"sqlite {self.path}: {exc}") from None
            self._local.conn = conn
        return conn

    def _file_lock(self) -> int | None:
        if self.path == ":memory:":
            return None
        if self._lock_fd is None or self._lock_pid != os.getpid():
            try:
                self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StateError(f"sqlite {self.path}.lock: {exc.strerror}") from None
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            fd = self._file_lock()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateError(f"sqlite {self.path}: {exc}") from None
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"sqlite {self.path}: {exc}") from None

    def init(self) -> None:
        """Create the schema (idempotent)."""
        tables, _, indexes = SCHEMA.partition("-- indexes")
        try:
            conn = self._conn()
            conn.executescript(tables)
            # columns added since the first schema: a file made by an older version gains them
            for table, column, ddl in MIGRATIONS:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if present and column not in present:  # a missing table is created below
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
            conn.executescript(indexes)
        except sqlite3.Error as exc:
            raise StateError(f"sqlite {self.path}: {exc}") from None

    def ping(self) -> None:
        """Check that the schema is there and readable."""
        self._query("SELECT 1 FROM deliveries LIMIT 1")

    def record_delivery(self, delivery: Delivery, now: float) -> bool:
        row = (delivery.delivery_id, delivery.provider, delivery.repository, delivery.ref_key,
               delivery.events_json(), delivery.verified_by, now)
        statement = self._insert_statement()
        if statement is not None:
            return self._when_unlocked(lambda: statement.run(row) == 1)
        conn = self._record_conn()
        return self._when_unlocked(lambda: conn.execute(_INSERT_DELIVERY, row).rowcount == 1)

    def _when_unlocked(self, write: Callable[[], bool]) -> bool:
        """``write()``, retried while the database is locked: after 50 µs, doubling to 1 ms,
        for up to ``record_timeout`` seconds (then StateError, as for any other error)."""
        deadline = time.monotonic() + self.record_timeout
        pause = 0.00005
        while True:
            try:
                return write()
            except sqlite3.Error as exc:
                # the primary code: an extended one (SQLITE_BUSY_RECOVERY...) is busy too
                code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
                busy = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() + pause > deadline:
                    raise StateError(f"sqlite {self.path}: {exc}") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    def _insert_statement(self) -> InsertStatement | None:
        """This process's recording statement, run holding the GIL (see sqlite_insert.py);
        None where that cannot be done safely: then each thread records on its own
        sqlite3 connection (``_record_conn``)."""
        statement = self._insert
        if statement is not None and statement.pid == os.getpid():
            return statement
        if self.path == ":memory:" or not self._direct_insert:
            return None
        self._conn()  # the file and its WAL mode exist before another connection opens
        with self._insert_lock:
            if self._insert is None or self._insert.pid != os.getpid():
                try:
                    self._insert = open_statement(self.path, _INSERT_DELIVERY)
                except sqlite3.Error as exc:
                    raise StateError(f"sqlite {self.path}: {exc}") from None
                self._direct_insert = self._insert is not None
            return self._insert

    def _record_conn(self) -> sqlite3.Connection:
        """This thread's connection for recording: no busy handler (record_delivery waits)."""
        if self.path == ":memory:":
            return self._conn()  # a second connection would open a second, empty database
        conn: sqlite3.Connection | None = getattr(self._local, "record_conn", None)
        if conn is None:
            self._conn()  # the file and its WAL mode exist before a second connection opens
            try:
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
                conn.execute("PRAGMA synchronous=NORMAL")
                # an insert reads a few pages, and a write by any other connection empties
                # this cache anyway: a small one saves memory per thread, not time
                conn.execute("PRAGMA cache_size=-256")
            except sqlite3.Error as exc:
                raise StateError(f"sqlite {self.path}: {exc}") from None
            self._local.record_conn = conn
        return conn

    def _admit(self) -> None:
        """Make recorded ('new') deliveries claimable ('pending'): every row after the last
        one this process admitted, and every row once a minute, in case a purge emptied
        the end of the table and row ids started again below that mark.

        Each ADMIT_CHUNK rows are one autocommit UPDATE, which holds the write lock only
        inside that one call, so webhook answers record between the chunks: admitting a
        backlog of 30,000 rows in one transaction held it for 200 ms."""
        top = self._query("SELECT max(rowid) FROM deliveries")[0][0] or 0
        if top < self._admitted or time.monotonic() >= self._full_admit_due:
            # the whole table is read outside the write lock, and only the rows found
            # are written
            stray = [r[0] for r in self._query(
                "SELECT rowid FROM deliveries WHERE status = 'new' AND rowid <= ?",
                (min(top, self._admitted),))]
            for start in range(0, len(stray), ADMIT_CHUNK):
                chunk = stray[start:start + ADMIT_CHUNK]
                self._write("UPDATE deliveries SET status = 'pending' WHERE status = 'new'"
                            f" AND rowid IN ({','.join('?' * len(chunk))})", tuple(chunk))
            self._admitted = min(top, self._admitted)
            self._full_admit_due = time.monotonic() + FULL_ADMIT_SECONDS
        # the rows recorded since: ranges of the row id key. A row recorded meanwhile gets
        # a higher row id than ``top`` (the largest plus one), so it waits for the next call
        while self._admitted < top:
            upper = min(top, self._admitted + ADMIT_CHUNK)
            self._write("UPDATE deliveries SET status = 'pending'"
                        " WHERE rowid > ? AND rowid <= ? AND status = 'new'",
                        (self._admitted, upper))
            self._admitted = upper

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        """One statement in autocommit mode (waits for the write lock in SQLite's busy
        handler, up to 30 s)."""
        try:
            self._conn().execute(sql, args)
        except sqlite3.Error as exc:
            raise StateError(f"sqlite {self.path}: {exc}") from None

    def claim_delivery(self, owner: str, lease_seconds: float, now: float) -> Delivery | None:
        self._admit()
        for _ in range(3):
            # found outside the write lock (a WAL read blocks nobody), then taken with the
            # same conditions re-checked under it: another worker may have been faster
            found = self._query(_CLAIMABLE, (now, now))
            if not found:
                return None
            claimed = self._take(found[0], owner, lease_seconds, now)
            if claimed is not None:
                return claimed
        return None

    def _take(self, key: tuple[Any, ...], owner: str, lease_seconds: float,
              now: float) -> Delivery | None:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1"
                " WHERE provider = ? AND delivery_id = ? AND status = 'pending'"
                f" AND lease_until <= ? AND {_ref_free('deliveries')}",
                (owner, now + lease_seconds, key[0], key[1], now, now),
            )
            if cur.rowcount != 1:
                return None  # another owner was faster
            full = conn.execute(
                "SELECT delivery_id, provider, repository, events, verified_by, received_at,"
                " attempts FROM deliveries WHERE provider = ? AND delivery_id = ?", key
            ).fetchone()
        return Delivery(delivery_id=full[0], provider=full[1], repository=full[2],
                        events=Delivery.events_from_json(full[3]), verified_by=full[4],
                        received_at=full[5], attempts=full[6])

    def extend_lease(self, delivery: Delivery, owner: str, until: float) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET lease_until = ? WHERE provider = ? AND delivery_id = ?"
                " AND lease_owner = ? AND status = 'pending'",
                (until, delivery.provider, delivery.delivery_id, owner))
            return cur.rowcount == 1

    def release_delivery(self, delivery: Delivery, owner: str, retry_at: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = ?"
                " WHERE provider = ? AND delivery_id = ? AND lease_owner = ?"
                " AND status = 'pending'",
                (retry_at, delivery.provider, delivery.delivery_id, owner),
            )

    def finish_delivery(self, delivery: Delivery, owner: str, outcome: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE deliveries SET status = 'done', outcome = ?, finished_at = ?,"
                " lease_owner = NULL WHERE provider = ? AND delivery_id = ? AND lease_owner = ?",
                (outcome, now, delivery.provider, delivery.delivery_id, owner),
            )
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
            conn.execute("DELETE FROM status_writes WHERE claimed_at < ?",
                         (now - START_RETENTION_SECONDS,))

    def pending_count(self) -> int:
        """How many deliveries are not finished (for tests and readiness detail)."""
        return int(self._query("SELECT COUNT(*) FROM deliveries WHERE status != 'done'")[0][0])

    def baselines(self, repository: str, branch: str) -> dict[str, Baseline]:
        rows = self._query(f"SELECT {_BASELINE_COLUMNS} FROM baselines"
                           " WHERE repository = ? AND branch = ?", (repository, branch))
        return {row[2]: Baseline(*row) for row in rows}

    def advance_baseline(self, expected: Baseline, commit: str, now: float,
                         execution_id: str | None = None) -> bool:
        with self._tx() as conn:
            if expected.version == 0:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO baselines (repository, branch, pipeline, commit_sha,"
                    " last_started_commit, last_execution_id, updated_at, version,"
                    " last_execution_status) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (expected.repository, expected.branch, expected.pipeline, commit,
                     commit if execution_id else None, execution_id, now,
                     "InProgress" if execution_id else None))
            elif execution_id is not None:
                cur = conn.execute(
                    "UPDATE baselines SET commit_sha = ?, last_started_commit = ?,"
                    " last_execution_id = ?, updated_at = ?, version = version + 1,"
                    " last_execution_status = 'InProgress'"
                    " WHERE repository = ? AND branch = ? AND pipeline = ? AND version = ?",
                    (commit, commit, execution_id, now, expected.repository, expected.branch,
                     expected.pipeline, expected.version))
            else:
                cur = conn.execute(
                    "UPDATE baselines SET commit_sha = ?, updated_at = ?, version = version + 1"
                    " WHERE repository = ? AND branch = ? AND pipeline = ? AND version = ?",
                    (commit, now, expected.repository, expected.branch, expected.pipeline,
                     expected.version))
            return cur.rowcount == 1

    def all_baselines(self) -> Iterator[Baseline]:
        rows = self._query(f"SELECT {_BASELINE_COLUMNS} FROM baselines"
                           " ORDER BY repository, branch, pipeline")
        return (Baseline(*row) for row in rows)

    def record_decision(self, record: Mapping[str, Any]) -> None:
        ref_key = f"{record['ref_type']}:{record['ref']}"
        active = [p["pipeline"] for p in record["pipelines"] if p["verdict"] in ACTIVE_VERDICTS]
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO decisions (delivery_id, ref_key, head, recorded_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (record["delivery_id"], ref_key, record["head"], record["recorded_at"],
                 json.dumps(record, separators=(",", ":"))))
            conn.execute("DELETE FROM decision_pipelines WHERE delivery_id = ? AND ref_key = ?",
                         (record["delivery_id"], ref_key))
            conn.executemany(
                "INSERT INTO decision_pipelines (pipeline, delivery_id, ref_key, recorded_at)"
                " VALUES (?, ?, ?, ?)",
                [(name, record["delivery_id"], ref_key, record["recorded_at"]) for name in active])

    def history(self, *, delivery_id: str | None = None, commit: str | None = None,
                pipeline: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        if delivery_id is not None:
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
        else:
            raise ValueError("give delivery_id, commit or pipeline")
        return [json.loads(row[0]) for row in rows]

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
        with self._tx() as conn:
            conn.execute(
                "UPDATE starts SET state = ?, execution_id = ?, error = ?, updated_at = ?"
                " WHERE pipeline = ? AND commit_sha = ? AND owner = ? AND attempt = ?"
                " AND state = 'pending'",
                (state, execution_id, error, now, pipeline, commit, owner, attempt))

    def replace_baseline(self, expected: Baseline, updated: Baseline) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE baselines SET commit_sha = ?, last_started_commit = ?,"
                " last_execution_id = ?, updated_at = ?, version = version + 1,"
                " deployed_commit = ?, deployed_started_at = ?, last_execution_status = ?"
                " WHERE repository = ? AND branch = ? AND pipeline = ? AND version = ?",
                (updated.commit, updated.last_started_commit, updated.last_execution_id,
                 updated.updated_at, updated.deployed_commit, updated.deployed_started_at,
                 updated.last_execution_status, expected.repository, expected.branch,
                 expected.pipeline, expected.version))
            return cur.rowcount == 1

    def record_execution(self, execution: Execution) -> None:
        x = execution
        with self._tx() as conn:
            conn.execute(
                f"INSERT OR IGNORE INTO executions ({_EXECUTION_COLUMNS}, final)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (x.pipeline, x.execution_id, x.repository, x.branch, x.commit, x.started_at,
                 x.status, x.attempt, x.updated_at, int(x.final)))

    def execution(self, pipeline: str, execution_id: str) -> Execution | None:
        rows = self._query(f"SELECT {_EXECUTION_COLUMNS} FROM executions"
                           " WHERE pipeline = ? AND execution_id = ?", (pipeline, execution_id))
        return Execution(*rows[0]) if rows else None

    def update_execution(self, expected: Execution, updated: Execution) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE executions SET status = ?, attempt = ?, updated_at = ?, final = ?"
                " WHERE pipeline = ? AND execution_id = ? AND status = ? AND attempt = ?",
                (updated.status, updated.attempt, updated.updated_at, int(updated.final),
                 expected.pipeline, expected.execution_id, expected.status, expected.attempt))
            return cur.rowcount == 1

    def open_executions(self, started_before: float, limit: int = 100) -> list[Execution]:
        rows = self._query(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE final = 0"
                           " AND started_at < ? ORDER BY started_at LIMIT ?",
                           (started_before, limit))
        return [Execution(*row) for row in rows]

    def acquire_lease(self, name: str, owner: str, until: float, now: float) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO leases (name, owner, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until"
                " WHERE leases.owner = excluded.owner OR leases.until <= ?",
                (name, owner, until, now))
            return cur.rowcount == 1

    def claim_status_write(self, key: str, now: float) -> bool:
        with self._tx() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO status_writes (key, claimed_at)"
                               " VALUES (?, ?)", (key, now))
            return cur.rowcount == 1

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

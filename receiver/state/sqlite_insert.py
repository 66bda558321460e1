"""One prepared SQLite statement run while holding the GIL: the webhook answer's insert.

Why: Python's sqlite3 module lets go of the GIL around every call into SQLite (twice per
``execute``: the step and the reset). A recording takes about 25 µs alone, but under load
each let-go hands the GIL to another request thread of the worker, and winning it back
costs context switches: measured with 2 workers x 4 threads, an insert cost 100-150 µs of
CPU that way, while a 25 µs spin holding the GIL cost 22 µs. Here the same statement is
run through ``ctypes.PyDLL``, which keeps the GIL: the few microseconds SQLite takes are
spent in one piece.

That is safe only because the call never waits: the connection has no busy handler (a
locked database returns SQLITE_BUSY at once and the caller sleeps, letting go of the GIL)
and never checkpoints (``wal_autocheckpoint=0``: the store's other connections do, on their
commits), so it holds the GIL for a few page reads and one WAL append.

It must be the very library the sqlite3 module uses: two copies of SQLite in one process
do not see each other's POSIX locks, and closing a file in one drops the other's locks.
:func:`open_statement` therefore loads the ``libsqlite3`` this process already mapped for
``_sqlite3`` and returns None (use the sqlite3 module) when there is none to find, as when
SQLite is linked into ``_sqlite3`` itself.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sqlite3
import threading
from pathlib import Path

_OPEN_READWRITE = 0x00000002
_OPEN_FULLMUTEX = 0x00010000
_OK, _DONE = 0, 101
_TRANSIENT = ctypes.c_void_p(-1)  # SQLITE_TRANSIENT: SQLite copies the bound bytes


@functools.cache
def _library() -> ctypes.PyDLL | None:
    """The libsqlite3 that the sqlite3 module is linked against, loaded so that calls keep
    the GIL; None when this process has no separate libsqlite3 mapped (or no /proc)."""
    import _sqlite3  # noqa: F401  (maps the library this process must share)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].rsplit("/", 1)[-1].startswith("libsqlite3"):
            paths.add(fields[5])
    if len(paths) != 1:
        return None
    lib = ctypes.PyDLL(paths.pop())
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures: dict[str, tuple[list[type], type | None]] = {
        "sqlite3_open_v2": ([s, ctypes.POINTER(p), i, s], i),
        "sqlite3_close_v2": ([p], i),
        "sqlite3_exec": ([p, s, p, p, p], i),
        "sqlite3_prepare_v2": ([p, s, i, ctypes.POINTER(p), p], i),
        "sqlite3_bind_text": ([p, i, s, i, p], i),
        "sqlite3_bind_double": ([p, i, ctypes.c_double], i),
        "sqlite3_bind_null": ([p, i], i),
        "sqlite3_step": ([p], i),
        "sqlite3_reset": ([p], i),
        "sqlite3_finalize": ([p], i),
        "sqlite3_changes": ([p], i),
        "sqlite3_extended_errcode": ([p], i),
        "sqlite3_errmsg": ([p], s),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result
    return lib


class InsertStatement:
    """One connection to ``path`` and one prepared INSERT on it, shared by the threads of
    a process (calls are serialized by a lock; made after fork, never inherited)."""

    def __init__(self, lib: ctypes.PyDLL, path: str, sql: str) -> None:
        self._lib = lib
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self._db = ctypes.c_void_p()
        self._stmt = ctypes.c_void_p()
        rc = lib.sqlite3_open_v2(path.encode(), ctypes.byref(self._db),
                                 _OPEN_READWRITE | _OPEN_FULLMUTEX, None)
        try:
            self._check(rc)
            for pragma in (b"PRAGMA synchronous=NORMAL", b"PRAGMA wal_autocheckpoint=0",
                           b"PRAGMA cache_size=-256"):
                self._check(lib.sqlite3_exec(self._db, pragma, None, None, None))
            encoded = sql.encode()
            self._check(lib.sqlite3_prepare_v2(self._db, encoded, len(encoded),
                                               ctypes.byref(self._stmt), None))
        except sqlite3.Error:
            self.close()
            raise

    def _check(self, rc: int) -> None:
        if rc != _OK:
            self._raise()

    def _raise(self) -> None:
        """Raise the connection's last error as sqlite3.OperationalError, with its code in
        ``sqlite_errorcode`` as the sqlite3 module sets it."""
        if not self._db:
            raise sqlite3.OperationalError("unable to open database file")
        message = (self._lib.sqlite3_errmsg(self._db) or b"").decode(errors="replace")
        error = sqlite3.OperationalError(message)
        error.sqlite_errorcode = self._lib.sqlite3_extended_errcode(self._db)
        raise error

    def run(self, values: tuple[str | float | None, ...]) -> int:
        """Bind ``values`` (str, float or None) in order, run the statement and return the rows it
        changed. Raises sqlite3.OperationalError (``sqlite_errorcode`` set, e.g. SQLITE_BUSY
        when another connection holds the write lock: it does not wait)."""
        lib, stmt = self._lib, self._stmt
        with self._lock:
            try:
                for index, value in enumerate(values, 1):
                    if isinstance(value, str):
                        data = value.encode()
                        rc = lib.sqlite3_bind_text(stmt, index, data, len(data), _TRANSIENT)
                    elif value is None:
                        rc = lib.sqlite3_bind_null(stmt, index)
                    else:
                        rc = lib.sqlite3_bind_double(stmt, index, float(value))
                    self._check(rc)
                if lib.sqlite3_step(stmt) != _DONE:
                    self._raise()
                return int(lib.sqlite3_changes(self._db))
            finally:
                lib.sqlite3_reset(stmt)

    def __del__(self) -> None:
        # never in a forked child: closing a connection it inherited could checkpoint or
        # remove the WAL under the parent's feet
        if os.getpid() == self.pid:
            self.close()

    def close(self) -> None:
        """Finalize the statement and close the connection (idempotent)."""
        if self._stmt:
            self._lib.sqlite3_finalize(self._stmt)
            self._stmt = ctypes.c_void_p()
        if self._db:
            self._lib.sqlite3_close_v2(self._db)
            self._db = ctypes.c_void_p()


def open_statement(path: str, sql: str) -> InsertStatement | None:
    """``sql`` prepared on a new connection to ``path``, run holding the GIL; None when
    the library cannot be shared safely (then use the sqlite3 module). Raises
    sqlite3.Error when the file cannot be opened or the statement not prepared."""
    lib = _library()
    return None if lib is None else InsertStatement(lib, path, sql)

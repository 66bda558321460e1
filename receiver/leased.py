"""A periodic task that runs in one replica at a time: the holder of a lease in the state store.

Every process of every replica runs a :class:`LeasedLoop`; each pass, it tries to take (or
renew) the lease and runs the task only if it holds it. The lease lasts ``LEASE_PASSES``
intervals, so when its holder dies another process takes over within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from receiver.errors import ReceiverError
from receiver.logging import get_logger
from receiver.state.base import StateStore

LEASE_PASSES = 3  # a lease outlives its holder by at most this many intervals


class LeasedLoop:
    """Runs ``task(now)`` every ``interval`` seconds while this process holds lease ``name``."""

    def __init__(self, name: str, interval: float, store: StateStore, owner: str,
                 task: Callable[[float], None], clock: Callable[[], float] = time.time,
                 run_at_start: bool = True) -> None:
        self.name = name
        self.interval = interval
        self.store = store
        self.owner = owner
        self.task = task
        self.clock = clock
        self.run_at_start = run_at_start
        self.log = get_logger()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"receiver-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Run no further pass; wait up to ``timeout`` seconds for the one in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> bool:
        """One pass: take or renew the lease, then run the task. True if it ran."""
        now = self.clock()
        if not self.store.acquire_lease(self.name, self.owner,
                                        now + LEASE_PASSES * self.interval, now):
            return False
        self.task(now)
        return True

    def _loop(self) -> None:
        if not self.run_at_start:
            self._stop.wait(self.interval)
        while not self._stop.is_set():
            try:
                self.run_once()
            except ReceiverError as exc:  # the store or AWS is down: the next pass tries again
                self.log.warning(f"{self.name}.failed", error=str(exc))
            except Exception as exc:  # a bug must not end the loop for the process's life
                self.log.exception(f"{self.name}.error", error=type(exc).__name__)
            self._stop.wait(self.interval)

"""A periodic task that runs in one replica at a time: the holder of a lease in the state store.

Every process of every replica runs a :class:`LeasedLoop` (a runnable of the runtime). The
lease is short (``LEASE_SECONDS``) and renewed every ``RENEW_SECONDS`` while held, also
while the task runs; so a holder that dies loses it within seconds, and one that stops
(SIGTERM) releases it, whatever the task's interval. The holder runs the task when it takes
the lease and then every ``interval`` seconds; a process that takes the lease over
therefore runs the task at once: after a rolling deploy the next replica polls and
reconciles within one interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from receiver.errors import ReceiverError
from receiver.logging import get_logger
from receiver.runtime import renewing
from receiver.state.base import StateStore

LEASE_SECONDS = 15.0  # a lease outlives a holder that died by at most this long
RENEW_SECONDS = 5.0  # how often the holder renews it (and others try to take it)


class LeasedLoop:
    """Runs ``task(now)`` every ``interval`` seconds while this process holds lease ``name``."""

    def __init__(self, name: str, interval: float, store: StateStore, owner: str,
                 task: Callable[[float], None], clock: Callable[[], float] = time.time,
                 lease_seconds: float = LEASE_SECONDS,
                 renew_seconds: float = RENEW_SECONDS) -> None:
        self.name = name
        self.interval = interval
        self.store = store
        self.owner = owner
        self.task = task
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.renew_seconds = min(renew_seconds, lease_seconds / 3)
        self.log = get_logger()
        self.held = False
        self._next_run: float | None = None  # monotonic; None: at once when the lease is taken

    def run(self, stop: threading.Event) -> None:
        """Take or renew the lease every ``renew_seconds``, run the task when it is due and
        the lease is held; release the lease when ``stop`` is set."""
        try:
            while not stop.is_set():
                self.run_once()
                # next: a renewal, or this holder's next run if that comes first
                due = (self._next_run - time.monotonic() if self.held and self._next_run
                       else self.renew_seconds)
                stop.wait(max(0.0, min(self.renew_seconds, due)))
        finally:
            if self.held:
                self._release()

    def run_once(self) -> bool:
        """One pass: take or renew the lease, then run the task if it is due. True if it ran."""
        try:
            held = self._acquire()
        except ReceiverError as exc:  # the store is down: the next pass tries again
            self.log.warning(f"{self.name}.failed", error=str(exc))
            return False
        if held and not self.held:
            self._next_run = None  # taken (over): run at once
            self.log.info("lease.taken", lease=self.name, owner=self.owner)
        self.held = held
        if not held or (self._next_run is not None and time.monotonic() < self._next_run):
            return False
        self._next_run = time.monotonic() + self.interval
        # a pass may outlast the lease
        with renewing(f"{self.name}-lease", self.renew_seconds, self._renewed):
            try:
                self.task(self.clock())
            except ReceiverError as exc:  # the store or AWS is down: the next run tries again
                self.log.warning(f"{self.name}.failed", error=str(exc))
            except Exception as exc:  # a bug must not end the loop for the process's life
                self.log.exception(f"{self.name}.error", error=type(exc).__name__)
        return True

    def _acquire(self) -> bool:
        now = self.clock()
        return self.store.acquire_lease(self.name, self.owner, now + self.lease_seconds, now)

    def _release(self) -> None:
        try:
            self.store.release_lease(self.name, self.owner)
            self.held = False
            self.log.info("lease.released", lease=self.name, owner=self.owner)
        except ReceiverError as exc:  # it expires on its own within LEASE_SECONDS
            self.log.warning(f"{self.name}.failed", error=str(exc))

    def _renewed(self) -> bool:
        self._acquire()
        return True  # a renewal that finds the lease taken is no reason to stop trying

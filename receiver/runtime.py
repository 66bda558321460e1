"""One background runtime per process: every runnable started together, stopped together.

Modelled on controller-runtime's manager. The service's background work — the delivery
worker, the sender of pending effects, the outcome poll, the reconciler, the backlog
metrics — are :class:`Runnable`\\ s added to one :class:`Runtime`, which runs each in its own
thread and, on SIGTERM (gunicorn's ``worker_exit``), stops them all within one graceful
deadline (below the ECS stop timeout).

The contract of a runnable (``run(stop)``):

- it does its work until ``stop`` is set, then returns promptly: it finishes the item in
  hand (a delivery, a status write) or leaves it claimable (a lease that expires, a task
  given back), and releases what it holds (a lease: the next replica takes over at once);
- it is level-based: it re-derives what to do from stored state on every pass, so a pass
  that was cut short, or an edge no one saw, is made up by the next pass;
- it handles the errors of its own work (a retryable one is tried again on a later pass, a
  terminal one ends that item); an exception that escapes ``run`` is a bug: the runtime
  logs it (``runtime.crashed``) and starts the runnable again after a pause, so one bad
  item cannot end the process's background work for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from receiver.errors import ReceiverError
from receiver.logging import get_logger

RESTART_PAUSE_SECONDS = 1.0


class Runnable(Protocol):
    """A piece of background work (see the module docstring for the contract)."""

    name: str

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; return promptly once it is."""
        ...


class Runtime:
    """Starts every runnable in its own thread, and stops them together."""

    def __init__(self) -> None:
        self._runnables: list[Runnable] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.log = get_logger()

    def add(self, runnable: Runnable) -> None:
        """Run ``runnable`` too (before :meth:`start`)."""
        self._runnables.append(runnable)

    @property
    def names(self) -> list[str]:
        """The runnables' names, in the order they were added."""
        return [r.name for r in self._runnables]

    def start(self) -> None:
        """Start every runnable (idempotent)."""
        if self._threads:
            return
        for runnable in self._runnables:
            thread = threading.Thread(target=self._guarded, args=(runnable,),
                                      name=f"receiver-{runnable.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _guarded(self, runnable: Runnable) -> None:
        while not self._stop.is_set():
            try:
                runnable.run(self._stop)
                return
            except Exception as exc:  # a bug: log it, and run again after a pause
                self.log.exception("runtime.crashed", runnable=runnable.name,
                                   error=type(exc).__name__)
                self._stop.wait(RESTART_PAUSE_SECONDS)

    def stop(self, timeout: float) -> bool:
        """Tell every runnable to stop and wait up to ``timeout`` seconds in all; True when
        every one has returned (``runtime.stopped`` says which did not)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = [r.name for r, t in zip(self._runnables, self._threads, strict=True)
                      if t.is_alive()]
        self.log.info("runtime.stopped", runnables=self.names, unfinished=unfinished)
        return not unfinished

    @contextmanager
    def running(self) -> Iterator[Runtime]:
        """Started inside the block, stopped (briefly) when it ends: for tests and tools."""
        self.start()
        try:
            yield self
        finally:
            self.stop(timeout=10.0)


@contextmanager
def renewing(name: str, period: float, renew: Callable[[], bool]) -> Iterator[None]:
    """Call ``renew`` every ``period`` seconds, in a thread of its own, while the block runs:
    a lease kept through work that may outlast it. ``renew`` returns False when there is
    nothing left to keep (the lease went to another owner); a ReceiverError (the store is
    down) is tried again at the next period."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(period):
            try:
                if not renew():
                    return
            except ReceiverError:
                continue

    thread = threading.Thread(target=loop, name=f"receiver-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()

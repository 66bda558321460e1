"""The background worker: one thread per process that claims and processes deliveries.

A new delivery wakes it at once; a poll every ``poll_seconds`` also picks up deliveries
whose lease expired (their owner died), so work accepted before a crash is finished by
whichever process is alive.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from receiver.config import ProcessingConfig
from receiver.errors import StateError
from receiver.events import Delivery
from receiver.logging import delivery_context, get_logger
from receiver.processor import Processor, RetryLater
from receiver.state.base import StateStore

IDLE_RECHECK = 0.1  # seconds between claim attempts after one found nothing
# Answers come first: a provider gives up on a webhook after about 10 s, a recorded
# delivery can wait. The worker starts on the next delivery once this process has had no
# request in flight for QUIET_SECONDS, and after at most MAX_DEFER_SECONDS in any case,
# so processing never stops under sustained load (it runs at one delivery per
# MAX_DEFER_SECONDS per process then, and catches up as soon as the load drops). Each
# delivery started under load costs answers (claim, admission, processing, measured under
# wrk: one every 2 s per worker answered 3 % more than one every 0.25 s), and a flood is
# over long before a provider would care about a pipeline starting a few seconds later.
QUIET_SECONDS = 0.002
MAX_DEFER_SECONDS = 2.0
# while requests are in flight, look again this often: each look takes the GIL from a
# request thread, so not every QUIET_SECONDS
BUSY_RECHECK_SECONDS = 0.02


class Activity:
    """How many requests this process is answering, and since when it has answered none.

    The app enters and leaves it around every request; the worker waits on it so that
    background processing takes the CPU (and the GIL) only between answers.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._quiet_since = clock()

    def enter(self) -> None:
        """A request started."""
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        """A request finished."""
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._quiet_since = self.clock()

    def wait_quiet(self, quiet: float, max_wait: float, stop: threading.Event) -> bool:
        """Wait until no request has been in flight for ``quiet`` seconds (True), or
        ``max_wait`` seconds have passed or ``stop`` is set (False). Seconds throughout."""
        deadline = self.clock() + max_wait
        while not stop.is_set():
            now = self.clock()
            with self._lock:
                idle_for = now - self._quiet_since if self._in_flight == 0 else 0.0
            if idle_for >= quiet:
                return True
            if now >= deadline:
                return False
            pause = quiet - idle_for if idle_for > 0 else max(quiet, BUSY_RECHECK_SECONDS)
            stop.wait(min(pause, deadline - now))
        return False


class Worker:
    """Claims pending deliveries from the store and runs them through the processor."""

    def __init__(self, processor: Processor, store: StateStore, config: ProcessingConfig,
                 clock: Callable[[], float] = time.time,
                 activity: Activity | None = None,
                 warm_up: Callable[[], None] | None = None) -> None:
        self.processor = processor
        self.store = store
        self.config = config
        self.clock = clock
        self.activity = activity
        self.warm_up = warm_up
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.log = get_logger()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="receiver-worker",
                                            daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """A delivery was recorded: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Claim nothing more; wait up to ``timeout`` seconds for the delivery in hand."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self.log.info("worker.stopped", finished=not self._thread.is_alive())

    def _loop(self) -> None:
        if self.warm_up is not None:
            try:
                self.warm_up()
            except Exception as exc:  # the first start pays for it instead, and says why
                self.log.warning("worker.warm_up_failed", error=f"{type(exc).__name__}: {exc}")
        while not self._stop.is_set():
            if self.activity is not None:
                self.activity.wait_quiet(QUIET_SECONDS, MAX_DEFER_SECONDS, self._stop)
                if self._stop.is_set():
                    break
            try:
                busy = self.run_once()
            except StateError as exc:
                self.log.error("worker.state_unavailable", error=str(exc))
                busy = False
            if not busy:
                # a burst wakes us once per accepted delivery; when nothing could be claimed
                # (its ref is busy elsewhere) look again at most every IDLE_RECHECK seconds
                self._stop.wait(min(IDLE_RECHECK, self.config.poll_seconds))
                self._wake.wait(self.config.poll_seconds)
                self._wake.clear()

    def run_once(self) -> bool:
        """Claim and process one delivery. False when there was nothing to claim."""
        delivery = self.store.claim_delivery(self.owner, self.config.lease_seconds, self.clock())
        if delivery is None:
            return False
        with self._heartbeat(delivery):
            self._process(delivery)
        return True

    @contextlib.contextmanager
    def _heartbeat(self, delivery: Delivery) -> Iterator[None]:
        """Extend the lease every third of its length while the delivery is processed, so a
        slow provider cannot make the lease lapse and hand the work to a second owner."""
        done = threading.Event()
        period = self.config.lease_seconds / 3

        def beat() -> None:
            while not done.wait(period):
                try:
                    held = self.store.extend_lease(delivery, self.owner,
                                                   self.clock() + self.config.lease_seconds)
                except StateError:
                    continue  # the store is down: the next beat tries again
                if not held:
                    with delivery_context(delivery.delivery_id, delivery.provider,
                                          delivery.repository):
                        self.log.warning("delivery.lease_lost")
                    return

        thread = threading.Thread(target=beat, name="receiver-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _process(self, delivery: Delivery) -> None:
        try:
            self.processor.process(delivery)
        except (RetryLater, StateError) as exc:
            self._retry_or_fail(delivery, str(exc))
        except Exception as exc:  # a bug must not kill the worker thread or lose the delivery
            with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
                self.log.exception("delivery.error", error=type(exc).__name__)
            self._retry_or_fail(delivery, type(exc).__name__)
        else:
            self.store.finish_delivery(delivery, self.owner, "processed", self.clock())

    def _retry_or_fail(self, delivery: Delivery, error: str) -> None:
        attempts = delivery.attempts
        with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
            if attempts > self.config.max_attempts:
                self.log.error("delivery.failed", error=error, attempts=attempts)
                self.store.finish_delivery(delivery, self.owner, "failed", self.clock())
                return
            delay = self.config.retry_backoff_seconds * 2 ** (attempts - 1)
            self.log.warning("delivery.retry", error=error, attempt=attempts,
                             retry_in_s=round(delay, 1))
            self.store.release_delivery(delivery, self.owner, self.clock() + delay)

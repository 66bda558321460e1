"""The delivery worker: a runnable (receiver/runtime.py) that claims and processes deliveries.

A new delivery wakes it at once; a poll every ``poll_seconds`` also picks up deliveries
whose lease expired (their owner died), so work accepted before a crash is finished by
whichever process is alive. It runs beside the request threads, whether or not requests
are in flight. A delivery is processed at most ``processing.max_attempts`` times: every
claim counts as an attempt, a failed attempt before the last is released for a retry after
``retry_backoff_seconds * 2 ** (attempt - 1)``, the last one marks it failed. An attempt
that never ends (its process was killed: SIGKILL, out of memory, gunicorn's time-out) counts
too: a claim that finds the attempts used up finishes the delivery failed instead of
processing it again, so a delivery that kills its worker cannot hold its ref for ever.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

from receiver.config import ProcessingConfig
from receiver.errors import RetryLater, StateError
from receiver.events import Delivery
from receiver.logging import delivery_context, get_logger
from receiver.processor import Processor
from receiver.runtime import renewing
from receiver.state.base import DecisionRecord, StateStore

IDLE_RECHECK = 0.1  # seconds between claim attempts after one found nothing
STOP_CHECK = 0.25  # an idle worker notices a stop within this many seconds


class Worker:
    """Claims pending deliveries from the store and runs them through the processor."""

    def __init__(self, processor: Processor, store: StateStore, config: ProcessingConfig,
                 clock: Callable[[], float] = time.time,
                 warm_up: Callable[[], None] | None = None) -> None:
        self.processor = processor
        self.store = store
        self.config = config
        self.clock = clock
        self.warm_up = warm_up
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.log = get_logger()
        self._wake = threading.Event()

    name = "worker"

    def notify(self) -> None:
        """A delivery was recorded: look now instead of at the next poll."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Claim and process deliveries until ``stop`` is set; the delivery in hand is
        finished first (the runtime's deadline bounds it: one cut short keeps its lease and
        is claimed again once that expires, by a peer or this task's successor)."""
        if self.warm_up is not None:
            try:
                self.warm_up()
            except Exception as exc:  # the first start pays for it instead, and says why
                self.log.warning("worker.warm_up_failed", error=f"{type(exc).__name__}: {exc}")
        while not stop.is_set():
            try:
                busy = self.run_once()
            except StateError as exc:
                self.log.error("worker.state_unavailable", error=str(exc))
                busy = False
            if not busy:
                # a burst wakes us once per accepted delivery; when nothing could be claimed
                # (its ref is busy elsewhere) look again at most every IDLE_RECHECK seconds
                stop.wait(min(IDLE_RECHECK, self.config.poll_seconds))
                self._idle(stop)
        self.log.info("worker.stopped")

    def _idle(self, stop: threading.Event) -> None:
        """Wait for a new delivery, at most ``poll_seconds`` (an expired lease or a retry
        comes due without one), and no longer than it takes ``stop`` to be noticed."""
        deadline = time.monotonic() + self.config.poll_seconds
        while not stop.is_set() and not self._wake.wait(
                min(STOP_CHECK, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
        self._wake.clear()

    def run_once(self) -> bool:
        """Claim and process one delivery. False when there was nothing to claim."""
        delivery = self.store.claim_delivery(self.owner, self.config.lease_seconds, self.clock())
        if delivery is None:
            return False
        if delivery.attempts > self.config.max_attempts:
            # the last attempt never ended: the process that held it died (killed, out of
            # memory, timed out), maybe on what this delivery made it do. Not again.
            with self._heartbeat(delivery):  # writing its records may outlast a lease
                self._fail(delivery, "the last attempt did not finish: the process "
                                     "processing it died (killed, out of memory or timed out)",
                           attempts=delivery.attempts - 1)
            return True
        with self._heartbeat(delivery):
            self._process(delivery)
        return True

    def _heartbeat(self, delivery: Delivery) -> AbstractContextManager[None]:
        """Extend the lease every third of its length while the delivery is processed, so a
        slow provider cannot make the lease lapse and hand the work to a second owner."""
        def beat() -> bool:
            held = self.store.extend_lease(delivery, self.owner,
                                           self.clock() + self.config.lease_seconds)
            if not held:
                with delivery_context(delivery.delivery_id, delivery.provider,
                                      delivery.repository):
                    self.log.warning("delivery.lease_lost")
            return held
        return renewing("lease", self.config.lease_seconds / 3, beat)

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
            # the claim counted this attempt: the one numbered max_attempts is the last
            if attempts >= self.config.max_attempts:
                self._fail(delivery, error, attempts=attempts)
                return
            delay = self.config.retry_backoff_seconds * 2 ** (attempts - 1)
            self.log.warning("delivery.retry", error=error, attempt=attempts,
                             retry_in_s=round(delay, 1))
            self.store.release_delivery(delivery, self.owner, self.clock() + delay)

    def _fail(self, delivery: Delivery, error: str, *, attempts: int) -> None:
        """Finish ``delivery`` failed after ``attempts`` attempts: each of its pushes' decision
        records says why (``history``), then ``delivery.failed`` (metric DeliveriesFailed).

        A store error leaves it claimed: the next claim, after the lease, fails it again."""
        now = self.clock()
        failure = f"delivery failed after {attempts} attempts: {error}"
        # what an earlier attempt recorded of a push is kept, with the failure added
        earlier = {r.push_key: r for r in self.store.history(
            delivery_id=delivery.delivery_id, limit=len(delivery.refs))
            if r.provider == delivery.provider}
        for event in delivery.refs:  # its pushes, or its pull request
            if event.after is None:  # a deletion: never recorded, never processed
                continue
            fresh = DecisionRecord(
                delivery_id=delivery.delivery_id, provider=delivery.provider,
                repository=delivery.repository, ref_type=event.ref_type, ref=event.ref_name,
                before=event.before, head=event.after, recorded_at=now, attempt=attempts,
                pipelines=())
            record = earlier.get(fresh.push_key, fresh)
            if record.failure is None:  # else it failed on its own (a ref git refuses)
                self.store.record_decision(dataclasses.replace(
                    record, recorded_at=now, attempt=attempts, failure=failure))
        self.store.finish_delivery(delivery, self.owner, "failed", now)
        with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
            self.log.error("delivery.failed", error=error, attempts=attempts)

"""The background worker: leases kept alive while a slow delivery is processed, a delivery
processed at once when recorded, at most ``processing.max_attempts`` times, and the
warm-up."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from receiver.config import ProcessingConfig
from receiver.errors import RetryLater
from receiver.events import Delivery, PushEvent
from receiver.logging import configure
from receiver.runtime import Runtime
from receiver.state.sqlite import SQLiteStore
from receiver.worker import Worker


class SlowProcessor:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.processed: list[str] = []

    def process(self, delivery: Delivery) -> None:
        time.sleep(self.seconds)
        self.processed.append(delivery.delivery_id)


def test_a_delivery_slower_than_its_lease_is_not_handed_to_a_second_worker(
        tmp_path: Path) -> None:
    configure()
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)
    store.record_delivery(Delivery("slow", "github", "acme/mono", (event,)), time.time())
    config = ProcessingConfig(lease_seconds=0.6, poll_seconds=0.05)
    slow = SlowProcessor(2.0)  # more than three lease lengths
    first = Worker(slow, store, config)  # type: ignore[arg-type]
    second = Worker(SlowProcessor(0), store, config)  # type: ignore[arg-type]
    steals: list[Any] = []

    def keep_trying() -> None:
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:
            steals.append(store.claim_delivery(second.owner, 0.6, time.time()))
            time.sleep(0.05)

    ran: list[bool] = []
    owner = threading.Thread(target=lambda: ran.append(first.run_once()))
    owner.start()
    time.sleep(0.1)  # the first worker holds the lease now
    thief = threading.Thread(target=keep_trying)
    thief.start()
    owner.join()
    thief.join()
    assert ran == [True]
    assert [s for s in steals if s is not None] == []
    assert slow.processed == ["slow"]
    assert store.claim_delivery(second.owner, 0.6, time.time() + 10) is None  # finished


def test_worker_with_nothing_to_do_reports_idle(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    worker = Worker(SlowProcessor(0), store, ProcessingConfig())  # type: ignore[arg-type]
    assert worker.run_once() is False


def _record(store: SQLiteStore, delivery_id: str) -> None:
    event = PushEvent("github", "acme/mono", "branch", delivery_id, "a" * 40, "b" * 40)
    store.record_delivery(Delivery(delivery_id, "github", "acme/mono", (event,)), time.time())


def test_worker_processes_a_recorded_delivery_at_once_when_notified(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    processor = SlowProcessor(0)
    worker = Worker(processor, store, ProcessingConfig(poll_seconds=5.0))  # type: ignore[arg-type]
    runtime = Runtime()
    runtime.add(worker)
    with runtime.running():
        time.sleep(0.05)
        _record(store, "now")
        t0 = time.monotonic()
        worker.notify()
        while not processor.processed and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        assert processor.processed == ["now"]
        # woken, not left for the 5 s poll (generous: a loaded CI machine is slow)
        assert time.monotonic() - t0 < 2.5


class AlwaysFailing:
    def __init__(self) -> None:
        self.attempts: list[int] = []

    def process(self, delivery: Delivery) -> None:
        self.attempts.append(delivery.attempts)
        raise RetryLater("the compare API is down")


def test_a_delivery_that_always_fails_is_processed_max_attempts_times_then_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    _record(store, "d1")
    processor = AlwaysFailing()
    worker = Worker(processor, store,  # type: ignore[arg-type]
                    ProcessingConfig(max_attempts=3, retry_backoff_seconds=0))
    capsys.readouterr()
    for _ in range(5):  # more rounds than attempts: the later ones find nothing to claim
        worker.run_once()
    assert processor.attempts == [1, 2, 3]
    assert store.claim_delivery("another", 60, time.time() + 3600) is None  # not pending
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["event"], d.get("attempt", d.get("attempts"))) for d in docs] == [
        ("delivery.retry", 1), ("delivery.retry", 2), ("delivery.failed", 3)]


def test_the_warm_up_runs_once_in_the_background_before_the_first_claim(
        tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    order: list[str] = []

    class Noting(SlowProcessor):
        def process(self, delivery: Delivery) -> None:
            order.append(f"process {delivery.delivery_id}")

    _record(store, "d1")
    caller: list[threading.Thread] = []
    worker = Worker(Noting(0), store, ProcessingConfig(poll_seconds=0.05),  # type: ignore[arg-type]
                    warm_up=lambda: (order.append("warm"), caller.append(threading.current_thread())))
    runtime = Runtime()
    runtime.add(worker)
    with runtime.running():
        deadline = time.monotonic() + 5
        while "process d1" not in order and time.monotonic() < deadline:
            time.sleep(0.01)
    assert order == ["warm", "process d1"]
    assert caller[0] is not threading.main_thread()


def test_a_failed_warm_up_is_logged_and_deliveries_are_still_processed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    processor = SlowProcessor(0)

    def broken() -> None:
        raise RuntimeError("no region")

    _record(store, "d1")
    worker = Worker(processor, store, ProcessingConfig(poll_seconds=0.05),  # type: ignore[arg-type]
                    warm_up=broken)
    runtime = Runtime()
    runtime.add(worker)
    with runtime.running():
        deadline = time.monotonic() + 5
        while not processor.processed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert processor.processed == ["d1"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [doc["error"] for doc in lines if doc["event"] == "worker.warm_up_failed"] \
        == ["RuntimeError: no region"]


def _same_branch(store: SQLiteStore, delivery_id: str, at: float) -> Delivery:
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)
    delivery = Delivery(delivery_id, "github", "acme/mono", (event,))
    store.record_delivery(delivery, at)
    return delivery


def test_a_claim_that_finds_the_attempts_used_up_fails_the_delivery_without_processing_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    _same_branch(store, "poison", 1.0)
    _same_branch(store, "next", 2.0)
    config = ProcessingConfig(max_attempts=3, lease_seconds=60)
    for n in range(3):  # three workers died processing it: none released or finished it
        assert store.claim_delivery(f"died-{n}", 60, 10.0 + 100 * n) is not None
    now = [400.0]
    processor = SlowProcessor(0)
    worker = Worker(processor, store, config, clock=lambda: now[0])  # type: ignore[arg-type]
    capsys.readouterr()
    assert worker.run_once() is True
    assert processor.processed == []  # not a fourth time
    (failed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (failed["event"], failed["attempts"], failed["delivery_id"]) == \
        ("delivery.failed", 3, "poison")
    assert "did not finish" in failed["error"] and failed["DeliveriesFailed"] == 1
    (record,) = store.history(delivery_id="poison")
    assert (record.ref, record.head, record.attempt, record.pipelines) == \
        ("main", "b" * 40, 3, ())
    assert record.failure is not None and record.failure.startswith(
        "delivery failed after 3 attempts: the last attempt did not finish")
    now[0] = 401.0
    assert worker.run_once() is True  # the branch's next delivery, at once
    assert processor.processed == ["next"]
    assert worker.run_once() is False


class RecordsThenFails:
    """Records a decision for its push, then fails with a retryable error."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def process(self, delivery: Delivery) -> None:
        from receiver.state.base import DecisionRecord, PipelineDecision

        self.store.record_decision(DecisionRecord(
            delivery.delivery_id, "github", "acme/mono", "branch", "main", "a" * 40, "b" * 40,
            time.time(), delivery.attempts,
            (PipelineDecision("p1", "retry", "a" * 40, "compare", True,
                              error="ThrottlingException"),)))
        raise RetryLater("a pipeline start failed with a retryable error")


def test_a_delivery_failed_on_its_last_attempt_keeps_its_record_and_says_why(
        tmp_path: Path) -> None:
    configure()
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.init()
    _same_branch(store, "d1", time.time())
    worker = Worker(RecordsThenFails(store), store,  # type: ignore[arg-type]
                    ProcessingConfig(max_attempts=2, retry_backoff_seconds=0))
    while worker.run_once():
        pass
    (record,) = store.history(delivery_id="d1")
    assert [(p.pipeline, p.verdict, p.error) for p in record.pipelines] == \
        [("p1", "retry", "ThrottlingException")]
    assert (record.attempt, record.failure) == (
        2, "delivery failed after 2 attempts: a pipeline start failed with a retryable error")

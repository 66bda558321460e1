"""The background worker: leases kept alive while a slow delivery is processed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from receiver.config import ProcessingConfig
from receiver.events import Delivery, PushEvent
from receiver.logging import configure
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

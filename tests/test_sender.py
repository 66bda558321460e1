"""The sender of pending effects (receiver/sender.py): a due-time queue kept in the store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import ProviderError, TerminalError
from receiver.logging import configure
from receiver.sender import AFTER_WAIT, RETRY_DELAYS, Sender
from receiver.state.base import Task
from receiver.state.sqlite import SQLiteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """A handler whose sends fail while their target is in ``failing``."""

    kind = "test"
    event = "test"
    done = "sent"

    def __init__(self, pace: float = 0.0) -> None:
        self.sent: list[str] = []
        self.failing: dict[str, Exception] = {}
        self.order: dict[str, tuple[str, ...]] = {}  # task key -> the keys it comes after
        self._pace = pace

    def send(self, task: Task) -> None:
        if task.target in self.failing:
            raise self.failing[task.target]
        self.sent.append(task.key)

    def describe(self, task: Task) -> dict[str, Any]:
        return {"key": task.key}

    def pace(self, target: str) -> float:
        return self._pace

    def after(self, task: Task) -> Sequence[str]:
        return self.order.get(task.key, ())


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "s.db"))
    s.init()
    return s


def enqueue(store: SQLiteStore, key: str, target: str, now: float) -> None:
    store.enqueue_task(Task(key, "test", target, "{}", due_at=now, created_at=now))


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


def test_a_failing_send_waits_its_back_off_while_the_others_go_ahead(
        store: SQLiteStore, capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    clock, handler = Clock(), Recording()
    handler.failing["down"] = ProviderError("HTTP 502")
    for key, target in (("a", "down"), ("b", "up"), ("c", "up")):
        enqueue(store, key, target, clock.now)
    sender = Sender(store, {"test": handler}, "w1", clock)
    assert sender.run_once() == 3
    assert handler.sent == ["b", "c"]  # not held up behind "a"
    assert sender.run_once() == 0  # "a" is not due before its back-off
    clock.now += RETRY_DELAYS[0]
    del handler.failing["down"]
    assert sender.run_once() == 1
    assert handler.sent == ["b", "c", "a"]
    failed = [d for d in lines(capsys) if d["event"] == "test.failed"]
    assert [(d["key"], d["attempt"], d["will_retry"]) for d in failed] == [("a", 1, True)]


def test_a_send_that_keeps_failing_is_given_up_after_the_last_back_off(
        store: SQLiteStore, capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    clock, handler = Clock(), Recording()
    handler.failing["down"] = ProviderError("HTTP 502")
    enqueue(store, "a", "down", clock.now)
    sender = Sender(store, {"test": handler}, "w1", clock)
    for _ in range(len(RETRY_DELAYS) + 3):
        sender.run_once()
        clock.now += max(RETRY_DELAYS)
    failed = [d for d in lines(capsys) if d["event"] == "test.failed"]
    assert [d["attempt"] for d in failed] == list(range(1, len(RETRY_DELAYS) + 2))
    assert [d["will_retry"] for d in failed][-1] is False
    assert store.claim_tasks("w2", clock.now + 10**6, 60, 10) == []  # finished failed


def test_a_terminal_error_ends_the_task_at_once(store: SQLiteStore,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    clock, handler = Clock(), Recording()
    handler.failing["gone"] = TerminalError("acme/old is no longer configured")
    enqueue(store, "a", "gone", clock.now)
    sender = Sender(store, {"test": handler}, "w1", clock)
    sender.run_once()
    assert [d["will_retry"] for d in lines(capsys) if d["event"] == "test.failed"] == [False]
    assert store.claim_tasks("w2", clock.now + 10**6, 60, 10) == []


def test_a_paced_target_gets_one_send_per_interval_without_counting_a_try(
        store: SQLiteStore) -> None:
    clock, handler = Clock(), Recording(pace=1.0)
    for key in ("a", "b", "c"):
        enqueue(store, key, "slack", clock.now)
    enqueue(store, "other", "teams", clock.now)
    sender = Sender(store, {"test": handler}, "w1", clock)
    sender.run_once()
    assert handler.sent == ["a", "other"]
    clock.now += 0.5
    sender.run_once()
    assert handler.sent == ["a", "other"]  # "b" is due at +1 s
    clock.now += 0.5
    sender.run_once()
    clock.now += 1.0
    sender.run_once()
    assert handler.sent == ["a", "other", "b", "c"]
    assert store.claim_tasks("w2", clock.now + 10**6, 60, 10) == []


def test_a_paced_target_is_paced_across_senders_of_other_processes(store: SQLiteStore) -> None:
    clock, handler = Clock(), Recording(pace=1.0)
    one = Sender(store, {"test": handler}, "w1", clock)
    two = Sender(store, {"test": handler}, "w2", clock)
    enqueue(store, "a", "slack", clock.now)
    one.run_once()
    enqueue(store, "b", "slack", clock.now)
    enqueue(store, "c", "teams", clock.now)
    clock.now += 0.5
    two.run_once()
    assert handler.sent == ["a", "c"]  # w1 sent to slack half a second ago
    clock.now += 0.5
    two.run_once()
    assert handler.sent == ["a", "c"]  # due again one pace after w2 found it held
    clock.now += 0.5
    two.run_once()
    assert handler.sent == ["a", "c", "b"]


def test_a_send_in_progress_holds_its_target_for_the_other_processes(
        store: SQLiteStore) -> None:
    clock, handler = Clock(), Recording(pace=1.0)
    two = Sender(store, {"test": handler}, "w2", clock)
    during: list[list[str]] = []

    class Slow(Recording):
        def send(self, task: Task) -> None:  # another process looks while this one sends
            clock.now += 5.0
            enqueue(store, "b", "slack", clock.now)
            two.run_once()
            during.append(list(handler.sent))
            super().send(task)

    slow = Slow(pace=1.0)
    enqueue(store, "a", "slack", clock.now)
    Sender(store, {"test": slow}, "w1", clock).run_once()
    assert during == [[]] and slow.sent == ["a"]  # "b" waited for "a"
    clock.now += 1.0
    two.run_once()
    assert handler.sent == ["b"]


def test_an_outcome_waits_for_the_push_message_another_process_is_sending(
        store: SQLiteStore, capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    clock, handler = Clock(), Recording()
    handler.order["failed"] = ("push",)
    two = Sender(store, {"test": handler}, "w2", clock)
    during: list[list[str]] = []

    class Slow(Recording):
        def send(self, task: Task) -> None:  # the outcome arrives while the push is sent
            enqueue(store, "failed", "slack", clock.now)
            two.run_once()
            during.append(list(handler.sent))
            super().send(task)

    slow = Slow()
    enqueue(store, "push", "slack", clock.now)
    Sender(store, {"test": slow}, "w1", clock).run_once()
    assert during == [[]] and slow.sent == ["push"]  # "failed" waited for "push"
    clock.now += AFTER_WAIT
    assert two.run_once() == 1
    assert handler.sent == ["failed"]
    logged = lines(capsys)
    assert [(d["key"], d["attempt"]) for d in logged if d["event"] == "test.sent"] == \
        [("push", 1), ("failed", 1)]  # the wait counted no try


def test_a_task_that_comes_after_one_never_enqueued_goes_at_once(store: SQLiteStore) -> None:
    clock, handler = Clock(), Recording()
    handler.order["failed"] = ("push",)  # the target does not want push messages
    enqueue(store, "failed", "slack", clock.now)
    Sender(store, {"test": handler}, "w1", clock).run_once()
    assert handler.sent == ["failed"]


def test_on_stop_the_tasks_still_claimed_are_given_back_due_at_once(store: SQLiteStore) -> None:
    clock, stop = Clock(), threading.Event()

    class StopsAfterOne(Recording):
        def send(self, task: Task) -> None:
            super().send(task)
            stop.set()  # SIGTERM arrives while the first send is in hand

    handler = StopsAfterOne()
    for key in ("a", "b", "c"):
        enqueue(store, key, "t", clock.now)
    Sender(store, {"test": handler}, "w1", clock).run_once(stop)
    assert handler.sent == ["a"]  # the one in hand finished
    successor = Recording()
    assert Sender(store, {"test": successor}, "w2", clock).run_once() == 2
    assert successor.sent == ["b", "c"]  # at once: not after w1's lease


def test_a_task_of_an_unknown_kind_is_finished_failed(store: SQLiteStore) -> None:
    clock = Clock()
    store.enqueue_task(Task("x", "retired-kind", "t", "{}", clock.now, clock.now))
    Sender(store, {"test": Recording()}, "w1", clock).run_once()
    assert store.claim_tasks("w2", clock.now + 10**6, 60, 10) == []


def test_the_sender_runs_until_stopped_and_wakes_when_notified(store: SQLiteStore) -> None:
    handler = Recording()
    sender = Sender(store, {"test": handler}, "w1")
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,))
    thread.start()
    try:
        time.sleep(0.05)
        enqueue(store, "a", "t", time.time())
        sender.notify()
        deadline = time.monotonic() + 5
        while not handler.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handler.sent == ["a"]
    finally:
        stop.set()
        sender.notify()
        thread.join(5)
    assert not thread.is_alive()

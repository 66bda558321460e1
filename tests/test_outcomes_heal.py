"""Level-based follow-ups: what an interrupted observation left undone is re-applied.

The processor, the outcome recorder, the listeners and the SQLite store are real; the
store is wrapped to fail once where a real one can (a throttled write, a locked file), and
the provider is the in-memory stand-in of tests/test_processor.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from receiver.effects import Bus, ExecutionChanged
from receiver.errors import StateError
from receiver.outcomes import Observation, poll_outcomes
from receiver.state.base import Baseline, Execution
from receiver.state.sqlite import SQLiteStore
from receiver.statuses import StatusListener
from tests.test_processor import KEY, World


class FlakyStore(SQLiteStore):
    """SQLite, except that the next ``fail`` calls of the named methods raise StateError."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.fail: dict[str, int] = {}

    def _maybe_fail(self, method: str) -> None:
        if self.fail.get(method, 0) > 0:
            self.fail[method] -= 1
            raise StateError(f"sqlite: {method} failed (injected)")

    def replace_baseline(self, expected: Baseline, updated: Baseline) -> bool:
        self._maybe_fail("replace_baseline")
        return super().replace_baseline(expected, updated)


class PollableLauncher:
    """Records starts; answers the poll from ``statuses`` (execution id -> status)."""

    dry_run = False

    def __init__(self) -> None:
        self.started: list[str] = []
        self.statuses: dict[str, str] = {}

    def start(self, request: Any) -> str:
        execution_id = f"x-{request.pipeline}-{len(self.started)}"
        self.started.append(execution_id)
        self.statuses[execution_id] = "InProgress"
        return execution_id

    def execution_status(self, pipeline: str, execution_id: str) -> str:
        return self.statuses[execution_id]


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.store = FlakyStore(str(tmp_path / "s.db"))
        self.bus = Bus()
        self.world = World(tmp_path, store=self.store, bus=self.bus, commit_status=True)
        self.launcher = PollableLauncher()
        self.world.processor.launcher = self.launcher  # type: ignore[assignment]
        StatusListener(self.store, "eu-west-1", {}).subscribe(self.bus)
        self.recorder = self.world.processor.outcomes

    def push(self, files: dict[str, str]) -> tuple[str, str]:
        """A push of ``files`` on top of the last head; (head, the collections execution)."""
        before = self.world.head
        head = self.world.git.commit(before, files)
        self.world.head = head
        self.world.push(before, head)
        return head, self.launcher.started[-1]

    def row(self) -> Baseline:
        return self.store.baselines(KEY, "main")["collections"]

    def status_states(self, commit: str) -> list[str]:
        """The states of the collections pipeline's status tasks on ``commit``."""
        tasks = self.store.claim_tasks("test", 10**12, 60, 100)
        for task in tasks:  # look, do not take
            self.store.retry_task(task, "test", task.due_at, None, failed=False)
        docs = [json.loads(t.payload) for t in tasks]
        return sorted(d["state"] for d in docs
                      if d["commit"] == commit and d["name"] == "codepipeline/collections")


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setenv("PROC_SECRET", "x")
    return Rig(tmp_path)


def deployed_then_failed(rig: Rig) -> tuple[str, str, str]:
    """c1 deployed (Succeeded), then c2 started: (c1, c2, c2's execution)."""
    c1, x1 = rig.push({"svc/collections/a.py": "2"})
    rig.recorder.observe(Observation("collections", x1, "Succeeded", "event", 1), 10.0)
    c2, x2 = rig.push({"svc/collections/a.py": "3"})
    assert (rig.row().commit, rig.row().deployed_commit) == (c2, c1)
    return c1, c2, x2


def test_a_store_error_between_the_execution_and_baseline_writes_heals_at_the_next_poll(
        rig: Rig) -> None:
    c1, c2, x2 = deployed_then_failed(rig)
    rig.store.fail["replace_baseline"] = 1
    with pytest.raises(StateError):  # the event is answered 503 (EventBridge retries)
        rig.recorder.observe(Observation("collections", x2, "Failed", "event", 1), 20.0)
    assert rig.store.execution("collections", x2).status == "Failed"  # type: ignore[union-attr]
    assert rig.row().commit == c2  # the fallback did not land
    assert rig.status_states(c2) == ["running"]  # nor did the failure status
    # one poll pass later (the event was never retried)
    rig.launcher.statuses[x2] = "Failed"
    poll_outcomes(rig.recorder, rig.launcher, 0.0, 30.0)
    assert rig.row().commit == c1  # back at the deployed commit: the next push redeploys
    assert rig.status_states(c2) == ["failure", "running"]
    assert rig.store.open_executions(started_before=10**12) == []  # settled
    # and the next push, touching something else, redeploys collections
    rig.push({"svc/utilities/u.py": "2"})
    assert {x.rsplit("-", 1)[0] for x in rig.launcher.started[2:]} == {
        "x-collections", "x-utilities"}


def test_a_retried_event_whose_follow_ups_did_not_land_is_processed_again(rig: Rig) -> None:
    c1, _, x2 = deployed_then_failed(rig)
    rig.store.fail["replace_baseline"] = 1
    failed = Observation("collections", x2, "Failed", "event", 1)
    with pytest.raises(StateError):
        rig.recorder.observe(failed, 20.0)
    assert rig.recorder.observe(failed, 21.0) == "accepted"  # not "ignored"
    assert rig.row().commit == c1
    assert rig.recorder.observe(failed, 22.0) == "ignored"  # now it is a replay


def test_a_listener_that_failed_is_called_again_by_the_next_poll(rig: Rig) -> None:
    _, c2, x2 = deployed_then_failed(rig)
    calls: list[str] = []

    def flaky(event: ExecutionChanged) -> None:
        calls.append(event.execution.status)
        if len(calls) == 1:
            raise StateError("sqlite: database is locked")

    rig.bus.subscribe(ExecutionChanged, "flaky", flaky)
    assert rig.recorder.observe(Observation("collections", x2, "Failed", "event", 1),
                                20.0) == "accepted"
    assert [x.execution_id for x in rig.store.open_executions(10**12)] == [x2]
    rig.launcher.statuses[x2] = "Failed"
    poll_outcomes(rig.recorder, rig.launcher, 0.0, 30.0)
    assert calls == ["Failed", "Failed"]
    assert rig.store.open_executions(started_before=10**12) == []
    assert rig.status_states(c2) == ["failure", "running"]  # written once: one task a state


def test_an_outcome_settled_before_the_baseline_named_its_start_is_applied_by_the_poll(
        rig: Rig) -> None:
    """The crash window: the outcome arrived (and was settled) between the start and the
    baseline move, and the process died before it applied the outcome to the row."""
    c1, x1 = rig.push({"svc/collections/a.py": "2"})
    rig.recorder.observe(Observation("collections", x1, "Succeeded", "event", 1), 10.0)
    c2 = rig.world.git.commit(c1, {"svc/collections/a.py": "3"})
    x2 = "x-collections-late"
    done = Execution("collections", x2, KEY, "main", c2, started_at=20.0, status="Failed",
                     updated_at=21.0, settled="Failed")
    rig.store.record_execution(done)
    assert rig.store.advance_baseline(rig.row(), c2, 22.0, execution_id=x2)  # then: killed
    assert rig.row().last_execution_status == "InProgress"
    poll_outcomes(rig.recorder, rig.launcher, 0.0, 30.0)
    assert (rig.row().commit, rig.row().last_execution_status) == (c1, "Failed")
    assert rig.store.in_flight_baselines() == []


def test_a_failing_listener_never_fails_the_delivery(rig: Rig) -> None:
    from receiver.effects import DeliveryProcessed, HeadSeen, PipelineStarted

    def broken(_event: Any) -> None:
        raise RuntimeError("a bug in a listener")

    for kind in (PipelineStarted, DeliveryProcessed, HeadSeen):
        rig.bus.subscribe(kind, "broken", broken)
    head, started = rig.push({"svc/collections/a.py": "2"})  # no exception
    assert rig.row().commit == head and rig.row().last_execution_id == started
    # the start's follow-ups are not settled: the poll applies them again
    assert [x.execution_id for x in rig.store.open_executions()] == [started]

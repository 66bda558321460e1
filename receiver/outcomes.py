"""Execution outcomes: how each execution this service started ended, and what that moves.

Two sources report a status (DESIGN.md "Execution outcomes"): EventBridge events pushed to
``POST /events/codepipeline`` and a poll of ``GetPipelineExecution``. Both go through
:meth:`OutcomeRecorder.observe`, which keeps the newest status of the execution and then
applies its follow-ups (the baseline row by :func:`baseline_after`, then the listeners of
:class:`~receiver.effects.ExecutionChanged`: statuses, notifications). Follow-ups are
level-based: an execution stays open until they are all applied, and each poll pass
re-applies what an error interrupted (:meth:`OutcomeRecorder.heal`). The rules are pure
functions:

- Ordering (:func:`advance`): a higher ``pipeline-execution-attempt`` wins (a console retry
  keeps the execution id); within one attempt a final status wins over ``Stopping``, which
  wins over ``InProgress``; anything else is a replay or older, and changes nothing. A poll
  answer is the current truth: it applies whenever it differs.
- Baselines (:func:`baseline_after`): the deployed commit is the commit of the
  latest-started execution that ``Succeeded``. With ``baseline: succeeded``, when the
  pipeline's last start ends ``Failed``, ``Stopped`` or ``Cancelled`` its baseline falls
  back to the deployed commit (or to "nothing deployed"), so the next push redeploys it;
  ``Superseded`` moves nothing (the later start carries the change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from receiver.config import Config
from receiver.effects import Bus, ExecutionChanged
from receiver.errors import BadRequest, Ignored, LaunchError, StateError
from receiver.logging import get_logger
from receiver.state.base import (
    NOTHING_DEPLOYED,
    Baseline,
    Execution,
    ExecutionStatus,
    StateStore,
)

Source = Literal["event", "poll", "dry-run"]
# the statuses after which the last start's change is not deployed
FALLBACK_STATUSES = frozenset({"Failed", "Stopped", "Cancelled"})
DETAIL_TYPE = "CodePipeline Pipeline Execution State Change"
# EventBridge's pipeline-execution states -> GetPipelineExecution's statuses
EVENT_STATES: Mapping[str, ExecutionStatus] = {
    "STARTED": "InProgress", "RESUMED": "InProgress", "STOPPING": "Stopping",
    "SUCCEEDED": "Succeeded", "FAILED": "Failed", "STOPPED": "Stopped",
    "CANCELED": "Cancelled", "SUPERSEDED": "Superseded",
}
_RANK = {"InProgress": 0, "Stopping": 1}  # every final status ranks 2
POLL_BATCH = 100  # executions asked about per poll pass
KNOWN_STATUSES = frozenset(EVENT_STATES.values())
CAS_ROUNDS = 10  # compare-and-set retries of one observation against concurrent writers


@dataclass(frozen=True, slots=True)
class Observation:
    """What one event or poll says of an execution. ``attempt`` is None from a poll."""

    pipeline: str
    execution_id: str
    status: ExecutionStatus
    source: Source
    attempt: int | None = None


def _rank(status: str) -> int:
    return _RANK.get(status, 2)


def advance(current: Execution, seen: Observation, now: float) -> Execution | None:
    """The execution once ``seen`` is taken into account, or None if it changes nothing."""
    if seen.attempt is None:  # a poll: the current truth
        if seen.status == current.status:
            return None
        return dataclasses.replace(current, status=seen.status, updated_at=now)
    if (seen.attempt, _rank(seen.status)) <= (current.attempt, _rank(current.status)):
        return None
    return dataclasses.replace(current, status=seen.status, attempt=seen.attempt,
                               updated_at=now)


def baseline_after(baseline: Baseline, execution: Execution, policy: str,
                   now: float) -> Baseline | None:
    """The baseline row once ``execution`` has its status, or None if nothing moves.

    ``policy`` is the repository's ``baseline`` setting: ``succeeded`` or ``started``.
    """
    changes: dict[str, Any] = {}
    last = baseline.last_execution_id == execution.execution_id
    if last and baseline.last_execution_status != execution.status:
        changes["last_execution_status"] = execution.status
    if execution.status == "Succeeded" and (
            baseline.deployed_commit is None
            or execution.started_at >= baseline.deployed_started_at):
        changes["deployed_commit"] = execution.commit
        changes["deployed_started_at"] = execution.started_at
    if policy == "succeeded" and last:
        if execution.status in FALLBACK_STATUSES:
            changes["commit"] = changes.get("deployed_commit",
                                            baseline.deployed_commit) or NOTHING_DEPLOYED
        elif execution.status == "Succeeded" and \
                baseline.commit == (baseline.deployed_commit or NOTHING_DEPLOYED):
            # the baseline had fallen back, and a console retry of the last start
            # succeeded: its commit is deployed after all
            changes["commit"] = execution.commit
    changes = {k: v for k, v in changes.items() if getattr(baseline, k) != v}
    if not changes:
        return None
    return dataclasses.replace(baseline, **changes, updated_at=now)


def parse_event(doc: Mapping[str, Any]) -> Observation:
    """An EventBridge pipeline-execution event as an Observation.

    Raises Ignored for another source or detail-type (or a state this service does not
    track), BadRequest when the fields it needs are missing or malformed.
    """
    if doc.get("source") != "aws.codepipeline" or doc.get("detail-type") != DETAIL_TYPE:
        raise Ignored("not a CodePipeline pipeline execution state change")
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        raise BadRequest("detail must be an object")
    pipeline, execution_id, state = (detail.get(k) for k in ("pipeline", "execution-id",
                                                             "state"))
    if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in (pipeline, execution_id,
                                                                   state)):
        raise BadRequest("detail needs pipeline, execution-id and state strings")
    assert isinstance(pipeline, str) and isinstance(execution_id, str)
    status = EVENT_STATES.get(str(state))
    if status is None:
        raise Ignored(f"execution state {str(state)[:40]!r} is not tracked")
    attempt = _whole(detail.get("pipeline-execution-attempt", 1))
    if attempt is None or not 0 < attempt < 10**6:
        raise BadRequest("pipeline-execution-attempt must be a positive whole number")
    return Observation(pipeline, execution_id, status, "event", attempt)


def _whole(value: object) -> int | None:
    """A whole number as EventBridge may write it: AWS writes ``1.0`` (a JSON float) in
    real events and in its published samples; ``1`` and ``"1"`` are accepted too. None for
    anything else (a fraction, a boolean, infinity, another type)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


class OutcomeRecorder:
    """Applies observations to the store, then their follow-ups.

    Level-based: what an execution's status requires (its baseline row moved, its
    listeners' work recorded: statuses, notifications) is *derived* from the stored
    execution and applied until it holds. The execution stays open (the poll lists it)
    until :meth:`follow_up` has applied everything for its status; an observation that
    changes nothing but finds follow-ups missing applies them again instead of being
    ignored, and every poll pass re-applies what is missing (:meth:`heal`).
    """

    def __init__(self, store: StateStore, config: Config, bus: Bus) -> None:
        self.store = store
        self.config = config
        self.bus = bus
        self.log = get_logger()

    def observe(self, seen: Observation, now: float) -> Literal["accepted", "unknown",
                                                                 "ignored"]:
        """Record ``seen``: ``accepted`` when it changed the execution (or found its
        follow-ups missing and applied them), ``unknown`` for an execution this service did
        not start, ``ignored`` for a replay or an older status whose follow-ups are all
        applied. Raises StateError when the store cannot answer."""
        for _ in range(CAS_ROUNDS):
            current = self.store.execution(seen.pipeline, seen.execution_id)
            if current is None:
                return "unknown"
            updated = advance(current, seen, now)
            if updated is None:
                if current.settled == current.status:
                    return "ignored"
                self.follow_up(current, seen.source, now)
                return "accepted"
            if self.store.update_execution(current, updated):
                break
        else:
            raise StateError(f"execution {seen.execution_id}: lost {CAS_ROUNDS} updates")
        if updated.final:
            self.log.info("execution.finished", pipeline=updated.pipeline,
                          execution_id=updated.execution_id, commit=updated.commit,
                          status=updated.status, source=seen.source,
                          repository=updated.repository.partition(":")[2],
                          branch=updated.branch, attempt=updated.attempt)
        self.follow_up(updated, seen.source, now)
        return "accepted"

    def follow_up(self, execution: Execution, source: str, now: float) -> bool:
        """Apply what ``execution``'s status requires: move its baseline row, publish
        :class:`ExecutionChanged` to the listeners; then mark it settled. False (and it
        stays open) when a listener failed. Raises StateError when the store cannot
        answer."""
        self.settle(execution, now)
        repo = self.config.repository_by_key(execution.repository)
        done = repo is None or self.bus.publish(ExecutionChanged(repo, execution, source))
        if done:
            self.store.settle_execution(execution)
        return done

    def heal(self, now: float) -> int:
        """Re-apply what an interrupted observation left undone: the follow-ups of every
        open execution whose status is not settled, and the baseline of every row whose
        last start's outcome is known but not applied to it. How many were healed."""
        healed = 0
        for execution in self.store.open_executions(limit=POLL_BATCH):
            if execution.settled != execution.status:
                self.follow_up(execution, "poll", now)
                healed += 1
        for row in self.store.in_flight_baselines(limit=POLL_BATCH):
            assert row.last_execution_id is not None  # a start named it
            named = self.store.execution(row.pipeline, row.last_execution_id)
            if named is not None and named.status != row.last_execution_status:
                self.settle(named, now)
                healed += 1
        if healed:
            self.log.info("outcome.healed", follow_ups=healed)
        return healed

    def settle(self, execution: Execution, now: float) -> None:
        """Move the baseline row of ``execution``'s pipeline as its status requires (a
        pull request's validation moves none: it deploys nothing)."""
        if execution.pull_request is not None:
            return
        repo = self.config.repository_by_key(execution.repository)
        policy = repo.baseline if repo is not None else "succeeded"
        for _ in range(CAS_ROUNDS):
            rows = self.store.baselines(execution.repository, execution.branch)
            current = rows.get(execution.pipeline)
            if current is None:
                return
            updated = baseline_after(current, execution, policy, now)
            if updated is None or self.store.replace_baseline(current, updated):
                if updated is not None and updated.commit != current.commit:
                    self.log.info("baseline.fell_back" if execution.status in FALLBACK_STATUSES
                                  else "baseline.restored", pipeline=execution.pipeline,
                                  branch=execution.branch, previous=current.commit,
                                  commit=updated.commit or None, status=execution.status)
                return
        raise StateError(f"baseline of {execution.pipeline}: lost {CAS_ROUNDS} updates")


class StatusSource(Protocol):
    """What the poll asks: the launcher's ``execution_status`` (raises LaunchError)."""

    def execution_status(self, pipeline: str, execution_id: str) -> str:
        """The execution's status now, as GetPipelineExecution names it."""
        ...


def poll_outcomes(recorder: OutcomeRecorder, launcher: StatusSource, min_age: float,
                  now: float) -> int:
    """Ask about every execution with no final status started at least ``min_age`` seconds
    ago and record what it says, then re-apply what is missing (:meth:`OutcomeRecorder.heal`);
    the number of executions asked about."""
    log = get_logger()
    running = [x for x in recorder.store.open_executions(started_before=now - min_age,
                                                         limit=POLL_BATCH) if not x.final]
    for execution in running:
        try:
            status = launcher.execution_status(execution.pipeline, execution.execution_id)
        except LaunchError as exc:
            log.warning("outcome.poll_failed", pipeline=execution.pipeline,
                        execution_id=execution.execution_id, error=str(exc))
            continue
        if status not in KNOWN_STATUSES:
            continue
        recorder.observe(Observation(execution.pipeline, execution.execution_id,
                                     status, "poll"), now)
    recorder.heal(now)
    return len(running)

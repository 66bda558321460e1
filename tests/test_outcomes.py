"""The outcome rules (receiver.outcomes): ordering of observations, baseline moves, events."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from providers.base import load_json_object
from receiver.errors import BadRequest, Ignored
from receiver.outcomes import Observation, advance, baseline_after, parse_event
from receiver.state.base import NOTHING_DEPLOYED, Baseline, Execution
from tests.harness import fixture_bytes

C0, C1, C2 = "0" * 39 + "a", "1" * 39 + "a", "2" * 39 + "a"
RUNNING = Execution("p", "x1", "github:acme/mono", "main", C1, started_at=10.0)


def seen(status: str, attempt: int | None = 1) -> Observation:
    return Observation("p", "x1", status, "poll" if attempt is None else "event",  # type: ignore[arg-type]
                       attempt)


# (id, current (status, attempt), observation, expected (status, attempt) or None)
ORDERING: list[tuple[str, tuple[str, int], Observation, tuple[str, int] | None]] = [
    ("a final state wins over running", ("InProgress", 1), seen("Failed"), ("Failed", 1)),
    ("a replay of the final state changes nothing", ("Failed", 1), seen("Failed"), None),
    ("a late started event changes nothing", ("Succeeded", 1), seen("InProgress"), None),
    ("stopping wins over running", ("InProgress", 1), seen("Stopping"), ("Stopping", 1)),
    ("a late started event after stopping changes nothing", ("Stopping", 1),
     seen("InProgress"), None),
    ("a later attempt wins over a final state", ("Failed", 1), seen("InProgress", 2),
     ("InProgress", 2)),
    ("an earlier attempt's final state changes nothing", ("InProgress", 2), seen("Failed", 1),
     None),
    ("a poll answer is the current truth", ("InProgress", 1), seen("Succeeded", None),
     ("Succeeded", 1)),
    ("a poll answer that agrees changes nothing", ("InProgress", 1),
     seen("InProgress", None), None),
]


@pytest.mark.parametrize(("current", "observation", "expected"), [c[1:] for c in ORDERING],
                         ids=[c[0] for c in ORDERING])
def test_ordering(current: tuple[str, int], observation: Observation,
                  expected: tuple[str, int] | None) -> None:
    execution = dataclasses.replace(RUNNING, status=current[0], attempt=current[1])
    got = advance(execution, observation, 99.0)
    assert (None if got is None else (got.status, got.attempt)) == expected


def row(**fields: Any) -> Baseline:
    base = {"repository": "github:acme/mono", "branch": "main", "pipeline": "p", "commit": C1,
            "last_started_commit": C1, "last_execution_id": "x1", "version": 3,
            "deployed_commit": C0, "deployed_started_at": 5.0,
            "last_execution_status": "InProgress"}
    return Baseline(**{**base, **fields})


# (id, baseline row, execution status, policy, expected changed fields or None)
BASELINES: list[tuple[str, Baseline, str, str, dict[str, Any] | None]] = [
    ("a failed last start falls back to the deployed commit", row(), "Failed", "succeeded",
     {"commit": C0, "last_execution_status": "Failed"}),
    ("a stopped last start falls back", row(), "Stopped", "succeeded",
     {"commit": C0, "last_execution_status": "Stopped"}),
    ("a cancelled last start falls back", row(), "Cancelled", "succeeded",
     {"commit": C0, "last_execution_status": "Cancelled"}),
    ("a failure with nothing deployed falls back to nothing deployed",
     row(deployed_commit=None, deployed_started_at=0.0), "Failed", "succeeded",
     {"commit": NOTHING_DEPLOYED, "last_execution_status": "Failed"}),
    ("a success records the deployed commit", row(), "Succeeded", "succeeded",
     {"deployed_commit": C1, "deployed_started_at": 10.0, "last_execution_status": "Succeeded"}),
    ("a superseded start moves no baseline", row(), "Superseded", "succeeded",
     {"last_execution_status": "Superseded"}),
    ("with baseline: started a failure moves nothing but the status", row(), "Failed",
     "started", {"last_execution_status": "Failed"}),
    ("a failure of an earlier start leaves the later start's baseline",
     row(commit=C2, last_started_commit=C2, last_execution_id="x2"), "Failed", "succeeded",
     None),
    ("a success of an earlier start than the deployed one moves nothing",
     row(deployed_commit=C2, deployed_started_at=50.0, last_execution_id="x2"), "Succeeded",
     "succeeded", None),
    ("a retried last start that succeeds restores the baseline",
     row(commit=C0, last_execution_status="InProgress"), "Succeeded", "succeeded",
     {"commit": C1, "deployed_commit": C1, "deployed_started_at": 10.0,
      "last_execution_status": "Succeeded"}),
]


@pytest.mark.parametrize(("baseline", "status", "policy", "expected"),
                         [c[1:] for c in BASELINES], ids=[c[0] for c in BASELINES])
def test_baseline_moves(baseline: Baseline, status: str, policy: str,
                        expected: dict[str, Any] | None) -> None:
    got = baseline_after(baseline, dataclasses.replace(RUNNING, status=status), policy, 99.0)
    if expected is None:
        assert got is None
        return
    assert got is not None
    changed = {f.name: getattr(got, f.name) for f in dataclasses.fields(Baseline)
               if getattr(got, f.name) != getattr(baseline, f.name)}
    assert changed == {**expected, "updated_at": 99.0}


def event(**detail: Any) -> dict[str, Any]:
    return {"source": "aws.codepipeline",
            "detail-type": "CodePipeline Pipeline Execution State Change",
            "detail": {"pipeline": "p", "execution-id": "x1", "state": "FAILED",
                       "pipeline-execution-attempt": 2, **detail}}


@pytest.mark.parametrize(("sample", "state"), [
    ("aws-docs-pipeline-started.json", "InProgress"),
    ("aws-docs-pipeline-succeeded.json", "Succeeded"),
    ("aws-docs-pipeline-failed.json", "Failed"),
    ("aws-docs-pipeline-succeeded-git-tags.json", "Succeeded"),
])
def test_parses_the_events_aws_publishes_with_float_attempts(sample: str, state: str) -> None:
    doc = load_json_object(fixture_bytes(f"codepipeline/{sample}"))
    assert doc["detail"]["pipeline-execution-attempt"] == 1.0  # a float, as AWS writes it
    seen = parse_event(doc)
    assert (seen.status, seen.attempt) == (state, 1)
    assert isinstance(seen.attempt, int)


@pytest.mark.parametrize(("written", "attempt"), [(2.0, 2), (2, 2), ("2", 2)],
                         ids=["a float", "an integer", "a digit string"])
def test_reads_a_console_retry_attempt_however_it_is_written(written: Any,
                                                            attempt: int) -> None:
    assert parse_event(event(**{"pipeline-execution-attempt": written})).attempt == attempt


def test_parses_an_eventbridge_execution_event() -> None:
    assert parse_event(event()) == Observation("p", "x1", "Failed", "event", 2)
    assert parse_event(event(state="CANCELED")).status == "Cancelled"
    detail = event()["detail"]
    del detail["pipeline-execution-attempt"]
    assert parse_event({**event(), "detail": detail}).attempt == 1


@pytest.mark.parametrize("doc", [
    {**event(), "source": "aws.codebuild"},
    {**event(), "detail-type": "CodePipeline Action Execution State Change"},
    event(state="PAUSED"),
], ids=["another source", "another detail-type", "an untracked state"])
def test_ignores_what_is_not_a_tracked_pipeline_execution_event(doc: dict[str, Any]) -> None:
    with pytest.raises(Ignored):
        parse_event(doc)


@pytest.mark.parametrize("doc", [
    {**event(), "detail": "x"},
    event(pipeline=None),
    event(**{"execution-id": 7}),
    event(state=""),
    event(**{"pipeline-execution-attempt": 0}),
    event(**{"pipeline-execution-attempt": True}),
    event(**{"pipeline-execution-attempt": 1.5}),
    event(**{"pipeline-execution-attempt": -1.0}),
    event(**{"pipeline-execution-attempt": "1.0"}),
    event(pipeline="p" * 201),
], ids=["detail not an object", "no pipeline", "execution id not a string", "empty state",
        "attempt zero", "attempt boolean", "attempt a fraction", "attempt negative",
        "attempt a decimal string", "pipeline too long"])
def test_refuses_a_malformed_event(doc: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_event(doc)

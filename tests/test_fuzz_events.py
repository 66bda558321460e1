"""Fuzzing ``POST /events/codepipeline`` of the service under gunicorn with Hypothesis.

Thousands of generated requests over one keep-alive session: real-shaped EventBridge events
mutated field by field, random JSON and bytes, invalid UTF-8, deep nesting, oversize
bodies, wrong content types, and every way of getting the API key wrong (missing, empty,
another key, one character off, a prefix). Many requests carry a valid event for the one
execution the service started, so an unauthentic request that slipped through would change
its state.

Every answer is checked as it arrives: never a 5xx, the status its class calls for (415
type, 401 key, 413 size, in that order), and no key in any body. Afterwards the execution the
service started must still be InProgress with its baseline where it was: nothing was
recorded for an unauthenticated request (authenticated ones never name that execution).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fake_codepipeline import FakeCodePipeline
from tests.harness import FakeAPI, Service
from tests.test_github_e2e import REPO, GitHubWorld, deliver, push_body
from tests.test_outcomes_e2e import event_body

KEY = "fuzz-events-key-value"
# (trailing white space is not part of a header's value in HTTP: KEY + "\t" is KEY)
OTHER_KEYS = ["", "x", KEY[:-1], KEY + "x", KEY.upper(), "Bearer " + KEY, KEY[1:]]
LIMIT = 64 * 1024
BATCH = 10
EXAMPLES = int(os.environ.get("FUZZ_EVENT_EXAMPLES", "250"))
STATES = ["STARTED", "SUCCEEDED", "FAILED", "STOPPED", "STOPPING", "CANCELED", "SUPERSEDED",
          "RESUMED", "PAUSED", "", "succeeded", "\u0000"]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                 st.text(max_size=300), st.lists(st.integers(), max_size=5),
                 st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))


@dataclass
class Rig:
    svc: Service
    cp: FakeCodePipeline
    execution_id: str
    world: GitHubWorld


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("fuzz-events")
    api = FakeAPI()
    world = GitHubWorld(api)
    cp = FakeCodePipeline(["a-deploy"])
    svc = Service({
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "codepipeline", "region": "us-east-1", "endpoint_url": cp.url},
        "server": {"max_body_bytes": LIMIT},
        "outcomes": {"api_keys": ["env:FUZZ_EVENTS_KEY"], "poll_seconds": 3600},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api.url,
            "webhook_secrets": ["env:FUZZ_GH_SECRET"], "branches": ["master"],
            "pipelines": [{"name": "a-deploy", "paths": ["svc/a/**"]}],
        }],
    }, workdir, env={"FUZZ_EVENTS_KEY": KEY, "FUZZ_GH_SECRET": "e2e-webhook-secret-value"},
        workers=2).start()
    head = world.git.commit(world.root, {"svc/a/x.py": "2"})
    assert deliver(svc, push_body(world.root, head)).status_code == 202
    svc.wait_for(lambda lines: any(e.get("event") == "pipeline.started" for e in lines))
    (execution,) = cp.executions
    yield Rig(svc, cp, execution, world)
    svc.stop()
    cp.close()
    api.close()


@st.composite
def event(draw: st.DrawFn, execution_id: str) -> bytes:
    doc: dict[str, Any] = json.loads(event_body("a-deploy", execution_id,
                                                draw(st.sampled_from(STATES))))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "detail"]))
        target = doc if where == "top" or not isinstance(doc.get("detail"), dict) \
            else doc["detail"]
        key = draw(st.sampled_from([*sorted(target), "extra"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(JUNK)
    return json.dumps(doc).encode()


@st.composite
def planned(draw: st.DrawFn, execution_id: str) -> tuple[str, bytes, dict[str, str], bool]:
    """(kind, body, headers, authentic)."""
    authentic = draw(st.booleans())
    kind = draw(st.sampled_from(["event", "event", "json", "bytes", "utf8", "deep", "big"]))
    # an authentic request never names the execution the service started
    target = draw(st.text("0123456789abcdef-", min_size=1, max_size=40)) if authentic \
        else execution_id
    body = {
        "event": lambda: draw(event(target)),
        "json": lambda: json.dumps(draw(JUNK)).encode(),
        "bytes": lambda: draw(st.binary(max_size=500)),
        "utf8": lambda: b'{"source": "aws.codepipeline", "x": "\xff\xfe"}',
        "deep": lambda: b"[" * 5000 + b"]" * 5000,
        "big": lambda: b'{"pad": "' + b"x" * (LIMIT + 10) + b'"}',
    }[kind]()
    headers = {"Content-Type": draw(st.sampled_from(
        ["application/json"] * 6 + ["application/json; charset=utf-8", "text/plain",
                                    "application/x-www-form-urlencoded", ""]))}
    if authentic:
        headers["x-api-key"] = KEY
    elif draw(st.booleans()):
        headers["x-api-key"] = draw(st.sampled_from(OTHER_KEYS))
    return kind, body, headers, authentic


def expected(kind: str, headers: dict[str, str], authentic: bool) -> set[int]:
    if headers["Content-Type"].partition(";")[0] != "application/json":
        return {415}
    if not authentic:  # the key is checked before the body is read
        return {401}
    if kind == "big":
        return {413}
    return {200, 202, 400}


def test_fuzzed_events_never_5xx_and_unauthentic_ones_record_nothing(rig: Rig) -> None:
    session = requests.Session()
    sent = {"count": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(planned(rig.execution_id), min_size=BATCH, max_size=BATCH))
    def run(batch: list[tuple[str, bytes, dict[str, str], bool]]) -> None:
        for kind, body, headers, authentic in batch:
            if len(body) > 32 * 1024:
                headers = {**headers, "Connection": "close"}
            answer = session.post(rig.svc.url + "/events/codepipeline", data=body,
                                  headers=headers, timeout=30)
            sent["count"] += 1
            context = f"{kind} {headers} {body[:200]!r}: {answer.text[:200]}"
            assert answer.status_code < 500, context
            assert answer.status_code in expected(kind, headers, authentic), context
            assert KEY not in answer.text, context

    run()
    assert sent["count"] >= min(2000, EXAMPLES * BATCH)
    state = rig.svc.cli("state")
    (row,) = [json.loads(line) for line in state.stdout.splitlines()]
    assert row["last_execution_status"] == "InProgress"
    assert row["baseline_commit"] == row["last_started_commit"]
    assert rig.svc.events("outcome.accepted") == []
    assert rig.svc.events("request.error") == []
    assert requests.get(rig.svc.url + "/healthz", timeout=5).status_code == 200

"""Bitbucket Data Center end to end: real deliveries over HTTP to the service under gunicorn.

The service runs as ``webhook-receiver serve`` with SQLite state in a temporary directory
and the ``log`` launcher; its ``api_url`` is a tests.harness.FakeAPI that answers the
``commits`` and ``changes`` resources from a small commit history. Bodies are the recorded
fixtures (the second push is the first with its hashes moved on, re-serialized), and every
signature is computed over the exact bytes sent. What happened is read back from the
service's JSON log lines and from ``webhook-receiver state``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

SECRET = "bbs-e2e-secret-5f0e9a3c-must-never-be-logged"
OTHER_SECRET = "bbs-e2e-secret-other-1b7d2c40"
TOKEN = "BBDC-e2e-token-84c1f0a9d2e3b4c5"
REPO = "AMUNIZ/test-repos"
API_ROOT = "/rest/api/1.0/projects/AMUNIZ/repos/test-repos"
PUSH = "bitbucket-server/jenkins-server-pushPayload.json"
# the recorded push moves main from C0 to C1; the second push moves it on to C2
C0 = "a8c13e8850dc60300be720019d1ffc1aa2fded87"
C1 = "9fdd7b96d3f5c276d0b9e0bf38c879eb112d889a"
C2 = hashlib.sha1(b"second push on main").hexdigest()
PIPELINE_A = "svc-a-deploy"
PIPELINE_B = "svc-b-deploy"

# --- the fake Bitbucket Data Center ----------------------------------------------------------

# commits reachable from 'until' but not from 'since', newest first, as (id, parent)
HISTORY: dict[tuple[str, str], list[tuple[str, str]]] = {
    (C0, C1): [(C1, C0)],
    (C1, C2): [(C2, C1)],
    (C1, C0): [],
    (C2, C1): [],
}
CHANGES: dict[tuple[str, str], list[str]] = {
    (C0, C1): ["services/a/handler.py", "README.md"],
    (C1, C2): ["services/b/api.py"],
}


def _query(rec: Recorded, name: str) -> str:
    return rec.query.get(name, [""])[0]


def commits_route(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
    """``GET .../commits?since=&until=`` over HISTORY; unknown pairs are unknown commits."""
    listed = HISTORY.get((_query(rec, "since"), _query(rec, "until")))
    if listed is None:
        return 404, {"errors": [{"message": "commit does not exist"}]}, {}
    values = [{"id": c, "displayId": c[:11], "parents": [{"id": p, "displayId": p[:11]}]}
              for c, p in listed]
    return 200, {"values": values, "size": len(values), "isLastPage": True, "start": 0,
                 "limit": int(_query(rec, "limit") or 25), "nextPageStart": None}, {}


def changes_route(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
    """``GET .../changes?since=&until=`` over CHANGES, all in one page."""
    paths = CHANGES.get((_query(rec, "since"), _query(rec, "until")))
    if paths is None:
        return 404, {"errors": [{"message": "commit does not exist"}]}, {}
    values = [{"path": {"components": p.split("/"), "name": p.rsplit("/", 1)[-1],
                        "toString": p}, "type": "MODIFY", "nodeType": "FILE"} for p in paths]
    return 200, {"values": values, "size": len(values), "isLastPage": True, "start": 0,
                 "limit": 1000, "nextPageStart": None}, {}


def fake_bitbucket() -> FakeAPI:
    return FakeAPI(routes={f"{API_ROOT}/commits": commits_route,
                           f"{API_ROOT}/changes": changes_route})


def service_config(workdir: Path, api: FakeAPI) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "bitbucket-server", "name": REPO, "api_url": api.url,
            "webhook_secrets": ["env:BBS_SECRET"], "api_token": "env:BBS_TOKEN",
            "branches": ["main"],
            "pipelines": [{"name": PIPELINE_A, "paths": ["services/a/**"]},
                          {"name": PIPELINE_B, "paths": ["services/b/**"]}],
        }],
    }


@pytest.fixture
def bitbucket() -> Iterator[FakeAPI]:
    api = fake_bitbucket()
    yield api
    api.close()


@pytest.fixture
def service(tmp_path: Path, bitbucket: FakeAPI) -> Iterator[Service]:
    svc = Service(service_config(tmp_path, bitbucket), tmp_path,
                  env={"BBS_SECRET": SECRET, "BBS_TOKEN": TOKEN}).start()
    yield svc
    svc.stop()


# --- helpers ---------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def second_push() -> bytes:
    """The recorded push with main moved on from C1 to C2 (re-serialized; sign these bytes)."""
    doc = json.loads(fixture_bytes(PUSH))
    doc["changes"][0].update(fromHash=C1, toHash=C2)
    return json.dumps(doc).encode()


def deliver(svc: Service, body: bytes, *, event: str = "repo:refs_changed",
            request_id: str | None = None, signature: str | None = "sign") -> requests.Response:
    """POST one delivery; ``signature='sign'`` signs ``body``, None sends no signature."""
    headers = {"Content-Type": "application/json; charset=UTF-8", "X-Event-Key": event,
               "X-Request-Id": request_id or str(uuid.uuid4())}
    if signature is not None:
        headers["X-Hub-Signature"] = sign(body) if signature == "sign" else signature
    return requests.post(svc.url + "/webhooks/bitbucket-server", data=body, headers=headers,
                         timeout=10)


def wait_processed(svc: Service, request_id: str) -> dict[str, Any]:
    lines = svc.wait_for(lambda ls: any(e.get("event") == "delivery.processed"
                                        and e.get("delivery_id") == request_id for e in ls))
    return next(e for e in lines if e.get("event") == "delivery.processed"
                and e.get("delivery_id") == request_id)


def started(svc: Service, request_id: str) -> list[tuple[str, str]]:
    """(pipeline, commit) of every ``pipeline.started`` line of one delivery."""
    return sorted((e["pipeline"], e["commit"]) for e in svc.events("pipeline.started")
                  if e.get("delivery_id") == request_id)


def state(svc: Service) -> list[dict[str, Any]]:
    """``webhook-receiver state``: one JSON object per (repository, branch, pipeline)."""
    done = svc.cli("state")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def baselines(svc: Service) -> dict[str, tuple[str | None, str | None]]:
    """pipeline -> (baseline commit, last started commit) on main."""
    rows = state(svc)
    assert {(r["repository"], r["branch"]) for r in rows} <= {(f"bitbucket-server:{REPO}",
                                                               "main")}
    return {r["pipeline"]: (r["baseline_commit"], r["last_started_commit"]) for r in rows}


def assert_no_secret_in_logs(svc: Service) -> None:
    text = Path(svc.log_path).read_text(errors="replace")
    assert SECRET not in text and TOKEN not in text


# --- the push flow -----------------------------------------------------------------------------


def test_two_pushes_touching_different_modules_start_exactly_their_pipelines(
        service: Service, bitbucket: FakeAPI) -> None:
    first = str(uuid.uuid4())
    resp = deliver(service, fixture_bytes(PUSH), request_id=first)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"status": "accepted", "delivery_id": first}
    summary = wait_processed(service, first)

    assert started(service, first) == [(PIPELINE_A, C1)]
    assert summary["pipelines_started"] == [PIPELINE_A]
    assert summary["pipelines_unchanged"] == [PIPELINE_B]
    assert baselines(service) == {PIPELINE_A: (C1, C1), PIPELINE_B: (C1, None)}

    second = str(uuid.uuid4())
    resp = deliver(service, second_push(), request_id=second)
    assert resp.status_code == 202, resp.text
    wait_processed(service, second)

    assert started(service, second) == [(PIPELINE_B, C2)]
    assert baselines(service) == {PIPELINE_A: (C2, C1), PIPELINE_B: (C2, C2)}
    # the first push compared against its own 'before', the second against the baselines
    asked = [(r.path.rsplit("/", 1)[1], _query(r, "since"), _query(r, "until"))
             for r in bitbucket.requests]
    assert asked == [("commits", C0, C1), ("changes", C0, C1),
                     ("commits", C1, C2), ("changes", C1, C2)]
    assert {r.headers.get("authorization") for r in bitbucket.requests} == {f"Bearer {TOKEN}"}
    assert_no_secret_in_logs(service)


def test_redelivery_of_a_push_answers_duplicate_and_starts_nothing_new(
        service: Service, bitbucket: FakeAPI) -> None:
    request_id = str(uuid.uuid4())
    body = fixture_bytes(PUSH)
    assert deliver(service, body, request_id=request_id).status_code == 202
    wait_processed(service, request_id)
    before = (state(service), len(bitbucket.requests), len(service.events("pipeline.started")))

    resp = deliver(service, body, request_id=request_id)

    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "duplicate", "delivery_id": request_id}
    service.wait_for(lambda ls: any(e.get("event") == "webhook.duplicate"
                                    and e.get("delivery_id") == request_id for e in ls))
    after = (state(service), len(bitbucket.requests), len(service.events("pipeline.started")))
    assert after == before
    assert started(service, request_id) == [(PIPELINE_A, C1)]


def test_unsigned_ping_is_ignored_and_changes_nothing(service: Service,
                                                      bitbucket: FakeAPI) -> None:
    # a recorded state first, so "unchanged" is a real comparison
    request_id = str(uuid.uuid4())
    assert deliver(service, fixture_bytes(PUSH), request_id=request_id).status_code == 202
    wait_processed(service, request_id)
    before = (state(service), len(bitbucket.requests), len(service.events("webhook.accepted")))

    ping_id = str(uuid.uuid4())
    resp = deliver(service, fixture_bytes("bitbucket-server/jenkins-server-ping.json"),
                   event="diagnostics:ping", request_id=ping_id, signature=None)

    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ignored", "reason": "ping event"}
    service.wait_for(lambda ls: any(e.get("event") == "webhook.ignored"
                                    and e.get("reason") == "ping event" for e in ls))
    after = (state(service), len(bitbucket.requests), len(service.events("webhook.accepted")))
    assert after == before


# --- answers that record nothing ---------------------------------------------------------------


def _flip_middle_byte(body: bytes) -> bytes:
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]


@dataclass(frozen=True)
class HttpCase:
    """One delivery that must leave state and the provider API untouched."""

    fixture: str = PUSH
    event: str = "repo:refs_changed"
    signed_with: str | None = SECRET  # None: no X-Hub-Signature header
    after_signing: Callable[[bytes], bytes] = lambda body: body
    content_type: str = "application/json; charset=UTF-8"
    status: int = 200
    expect: Mapping[str, str] = field(default_factory=dict)
    reason_contains: str | None = None


HTTP_CASES: dict[str, HttpCase] = {
    "signed_by_another_secret_is_unauthorized": HttpCase(
        signed_with=OTHER_SECRET, status=401, expect={"error": "unauthorized"}),
    "body_changed_after_signing_is_unauthorized": HttpCase(
        after_signing=_flip_middle_byte, status=401, expect={"error": "unauthorized"}),
    "push_without_signature_is_unauthorized": HttpCase(
        signed_with=None, status=401, expect={"error": "unauthorized"}),
    "ping_key_on_a_push_body_is_only_ignored": HttpCase(
        event="diagnostics:ping", signed_with=None,
        expect={"status": "ignored", "reason": "ping event"}),
    "text_plain_is_unsupported_media_type": HttpCase(
        content_type="text/plain", status=415, expect={"error": "unsupported_media_type"}),
    "mirror_synchronized_is_ignored": HttpCase(
        "bitbucket-server/jenkins-server-mirrorSynchronized.json",
        event="mirror:repo_synchronized", expect={"status": "ignored"},
        reason_contains="mirror"),
    "branch_deletion_is_ignored": HttpCase(
        "bitbucket-server/jenkins-server-branch_deleted.json", expect={"status": "ignored"},
        reason_contains="deleted"),
    "tag_without_a_tag_rule_is_ignored": HttpCase(
        "bitbucket-server/jenkins-server-tag_created.json", expect={"status": "ignored"},
        reason_contains="tag"),
    "push_to_an_unconfigured_repository_is_not_found": HttpCase(
        "bitbucket-server/go-playground-repo-refs-changed-delete.json", status=404,
        expect={"error": "not_found"}),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, FakeAPI]]:
    """One service for the cases below: none of them may record anything."""
    workdir = tmp_path_factory.mktemp("bbs-e2e")
    api = fake_bitbucket()
    svc = Service(service_config(workdir, api), workdir,
                  env={"BBS_SECRET": SECRET, "BBS_TOKEN": TOKEN}, workers=1).start()
    yield svc, api
    svc.stop()
    api.close()


@pytest.mark.parametrize("case", HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_service_answers_delivery_and_records_nothing(shared: tuple[Service, FakeAPI],
                                                      case: HttpCase) -> None:
    svc, api = shared
    body = fixture_bytes(case.fixture)
    request_id = str(uuid.uuid4())
    headers = {"Content-Type": case.content_type, "X-Event-Key": case.event,
               "X-Request-Id": request_id}
    if case.signed_with is not None:
        headers["X-Hub-Signature"] = sign(body, case.signed_with)
    resp = requests.post(svc.url + "/webhooks/bitbucket-server", data=case.after_signing(body),
                         headers=headers, timeout=10)

    assert resp.status_code == case.status, resp.text
    answer = resp.json()
    assert {k: answer.get(k) for k in case.expect} == dict(case.expect)
    if case.reason_contains is not None:
        assert case.reason_contains in answer["reason"]
    assert not [e for e in svc.events("webhook.accepted") if e.get("delivery_id") == request_id]
    assert state(svc) == []
    assert api.requests == []
    assert_no_secret_in_logs(svc)

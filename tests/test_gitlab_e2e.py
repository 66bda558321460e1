"""GitLab end to end: the service under gunicorn, real fixture deliveries over HTTP, a fake
GitLab compare API, SQLite state and the ``log`` launcher.

Two pushes touch different modules and must start exactly the pipeline of each; the first
push is verified by plain token, the second by a signed webhook; a redelivery is a duplicate
and starts nothing; bad tokens and bad signatures are refused with 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

FIXTURE = "gitlab/go-gitlab-webhooks-push.json"
REPOSITORY = "mike/diaspora"
BEFORE = "95790bf891e76fee5e1747ab589903a6a1f80f22"
FIRST = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
SECOND = "4b9cf3d2a8e54b7f9a0c1d2e3f405162738495a6"
TOKEN = "gitlab-e2e-plain-token"
SIGNING = "whsec_" + base64.b64encode(b"gitlab-e2e-signing-key-32-bytes!").decode()
API_TOKEN = "glpat-e2e-api-token"
COMPARE_PATH = "/api/v4/projects/mike%2Fdiaspora/repository/compare"

# what the fake GitLab answers for each straight compare: the paths of the tree difference
CHANGED = {
    (BEFORE, FIRST): ["api/app/models/user.rb", "api/README.md"],
    (FIRST, SECOND): ["web/assets/app.js", "web/README.md"],
}


def _compare(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
    key = (rec.query.get("from", [""])[0], rec.query.get("to", [""])[0])
    if key not in CHANGED:
        return 404, {"message": "404 Ref Not Found"}, {}
    return 200, {
        "commit": {"id": key[1], "parent_ids": [key[0]]},
        "commits": [{"id": key[1], "parent_ids": [key[0]]}],
        "diffs": [{"old_path": p, "new_path": p, "new_file": False, "renamed_file": False,
                   "deleted_file": False, "diff": ""} for p in CHANGED[key]],
        "compare_timeout": False,
        "compare_same_ref": False,
    }, {}


@pytest.fixture(scope="module")
def gitlab_api() -> Iterator[FakeAPI]:
    api = FakeAPI(routes={COMPARE_PATH: _compare})
    yield api
    api.close()


@pytest.fixture(scope="module")
def service(gitlab_api: FakeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("gitlab-e2e")
    config = {
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "gitlab",
            "name": REPOSITORY,
            "api_url": gitlab_api.url,
            "webhook_secrets": ["env:GITLAB_WEBHOOK_TOKEN", "env:GITLAB_SIGNING_TOKEN"],
            "api_token": "env:GITLAB_API_TOKEN",
            "branches": ["master"],
            "pipelines": [
                {"name": "diaspora-api", "paths": ["api/**", "!**/*.md"]},
                {"name": "diaspora-web", "paths": ["web/**", "!**/*.md"]},
            ],
        }],
    }
    svc = Service(config, workdir, env={"GITLAB_WEBHOOK_TOKEN": TOKEN,
                                        "GITLAB_SIGNING_TOKEN": SIGNING,
                                        "GITLAB_API_TOKEN": API_TOKEN})
    svc.start()
    yield svc
    svc.stop()


def _post(svc: Service, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{svc.url}/webhooks/gitlab", data=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", **headers})


def _signed(body: bytes, msg_id: str, timestamp: int, key: str = SIGNING) -> dict[str, str]:
    raw_key = base64.b64decode(key.removeprefix("whsec_"))
    digest = hmac.new(raw_key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"Idempotency-Key": msg_id, "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}


def _second_push() -> bytes:
    # the same recorded push moved one commit on; re-serialized, and signed as sent
    doc = json.loads(fixture_bytes(FIXTURE))
    doc.update(before=FIRST, after=SECOND, checkout_sha=SECOND)
    return json.dumps(doc).encode()


def _processed(svc: Service, delivery_id: str) -> None:
    svc.wait_for(lambda lines: any(
        e.get("event") == "delivery.processed" and e.get("delivery_id") == delivery_id
        for e in lines))


def test_two_pushes_start_exactly_the_changed_pipelines_and_a_redelivery_starts_nothing(
        service: Service, gitlab_api: FakeAPI) -> None:
    first_id = str(uuid.uuid4())
    first = _post(service, fixture_bytes(FIXTURE),
                  {"X-Gitlab-Token": TOKEN, "Idempotency-Key": first_id})
    assert (first.status_code, first.json()) == (202, {"status": "accepted",
                                                       "delivery_id": first_id})
    _processed(service, first_id)

    second_id = str(uuid.uuid4())
    body = _second_push()
    headers = _signed(body, second_id, int(time.time()))
    second = _post(service, body, headers)
    assert (second.status_code, second.json()) == (202, {"status": "accepted",
                                                         "delivery_id": second_id})
    _processed(service, second_id)

    again = _post(service, body, headers)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate",
                                                       "delivery_id": second_id})
    service.wait_for(lambda lines: any(e.get("event") == "webhook.duplicate" for e in lines))

    started = service.events("pipeline.started")
    assert [(e["pipeline"], e["commit"], e["delivery_id"]) for e in started] == [
        ("diaspora-api", FIRST, first_id), ("diaspora-web", SECOND, second_id)]
    assert [e["delivery_id"] for e in service.events("delivery.processed")] == \
        [first_id, second_id]

    compares = [r for r in gitlab_api.requests if r.path == COMPARE_PATH]
    assert [(r.query["from"], r.query["to"], r.query["straight"]) for r in compares] == [
        ([BEFORE], [FIRST], ["true"]), ([FIRST], [SECOND], ["true"])]
    assert {r.headers["authorization"] for r in compares} == {f"Bearer {API_TOKEN}"}

    state = service.cli("state")
    assert state.returncode == 0, state.stderr
    rows = [json.loads(line) for line in state.stdout.splitlines()]
    execution = {e["pipeline"]: e["execution_id"] for e in started}
    assert [{k: row[k] for k in ("repository", "branch", "pipeline", "baseline_commit",
                                 "last_started_commit", "last_execution_id")}
            for row in rows] == [
        {"repository": f"gitlab:{REPOSITORY}", "branch": "master", "pipeline": "diaspora-api",
         "baseline_commit": SECOND, "last_started_commit": FIRST,
         "last_execution_id": execution["diaspora-api"]},
        {"repository": f"gitlab:{REPOSITORY}", "branch": "master", "pipeline": "diaspora-web",
         "baseline_commit": SECOND, "last_started_commit": SECOND,
         "last_execution_id": execution["diaspora-web"]},
    ]


def _wrong_token(msg_id: str) -> tuple[bytes, dict[str, str]]:
    return fixture_bytes(FIXTURE), {"X-Gitlab-Token": TOKEN + "x", "Idempotency-Key": msg_id}


def _no_token(msg_id: str) -> tuple[bytes, dict[str, str]]:
    return fixture_bytes(FIXTURE), {"Idempotency-Key": msg_id}


def _signed_then_body_changed(msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = _second_push()
    tampered = body.replace(SECOND.encode(), SECOND[:-1].encode() + b"7", 1)
    assert tampered != body
    return tampered, _signed(body, msg_id, int(time.time()))


def _signed_too_long_ago(msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = _second_push()
    return body, _signed(body, msg_id, int(time.time()) - 301)


def _signed_with_another_key(msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = _second_push()
    other = "whsec_" + base64.b64encode(b"another-signing-key-of-32-bytes!").decode()
    return body, _signed(body, msg_id, int(time.time()), other)


@pytest.mark.parametrize("delivery", [_wrong_token, _no_token, _signed_then_body_changed,
                                      _signed_too_long_ago, _signed_with_another_key],
                         ids=lambda f: f.__name__.strip("_"))
def test_unauthenticated_delivery_is_401_and_nothing_happens(service: Service,
                                                             gitlab_api: FakeAPI,
                                                             delivery: Any) -> None:
    msg_id = str(uuid.uuid4())
    body, headers = delivery(msg_id)
    api_calls = len(gitlab_api.requests)
    answer = _post(service, body, headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    # refused before anything is recorded or asked of GitLab: its only trace is the refusal
    traced = [(e["event"], e.get("reason")) for e in service.logs()
              if e.get("delivery_id") == msg_id]
    assert traced == [("webhook.rejected", "unauthorized")]
    assert len(gitlab_api.requests) == api_calls

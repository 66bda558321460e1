"""Gitea / Forgejo end to end: real deliveries over HTTP to the service under gunicorn.

The service runs as ``webhook-receiver serve`` with SQLite state and the ``log`` launcher;
its ``api_url`` is tests.gitea_api.GiteaAPI over a tests.gitmodel history, answering
commits pages of at most 20 (a server whose ``MAX_RESPONSE_ITEMS`` is 20). Bodies are the
recorded fixtures, edited only where they must point at the test history, and every
signature is computed over the exact bytes sent. ``diff: git`` runs against a real
``git http-backend`` (tests/gitserver.py) that lets in only Gitea's token form.
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

from providers.gitea import GiteaProvider
from tests.gitea_api import GiteaAPI
from tests.gitserver import GitServer, WorkClone
from tests.harness import FakeAPI, Service, fixture_bytes

SECRET = "gitea-e2e-hook-secret-2c8f-must-never-be-logged"
OTHER_SECRET = "gitea-e2e-hook-secret-other-91ad"
TOKEN = "gitea-e2e-token-5e0b7a6c3d2f1e0a9b8c7d6e5f4a3b2c"
REPO = "gordon/hello-world"  # the repository of the recorded woodpecker push
PUSH = "gitea/woodpecker-gitea-HookPush.json"
MODULES = ["alpha", "beta", "gamma"]
ENV = {"GITEA_E2E_SECRET": SECRET, "GITEA_E2E_TOKEN": TOKEN}


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_body(before: str, after: str, fixture: str = PUSH) -> bytes:
    """A recorded push moved to ``before``..``after`` on main (re-serialized)."""
    doc = json.loads(fixture_bytes(fixture))
    doc.update(ref="refs/heads/main", before=before, after=after)
    doc["repository"]["full_name"] = REPO
    return json.dumps(doc).encode()


def _repointed(body: bytes) -> bytes:
    """A published event's repository pointed at the test repository."""
    doc = json.loads(body)
    doc["repository"]["full_name"] = REPO
    return json.dumps(doc).encode()


def deliver(svc: Service, body: bytes, delivery_id: str, *, family: str = "gitea",
            secret: str | None = SECRET, event: str = "push") -> requests.Response:
    """POST one delivery as Gitea (``gitea``) or a Forgejo sending only its own names."""
    prefix = {"gitea": "X-Gitea", "forgejo": "X-Forgejo"}[family]
    headers = {"Content-Type": "application/json", f"{prefix}-Event": event,
               f"{prefix}-Event-Type": event, f"{prefix}-Delivery": delivery_id}
    if secret is not None:
        headers[f"{prefix}-Signature"] = sign(body, secret)
    return requests.post(svc.url + "/webhooks/gitea", data=body, headers=headers, timeout=10)


def config(workdir: Path, api_url: str, **repository: Any) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"poll_seconds": 0.3, "max_attempts": 2, "retry_backoff_seconds": 0.2},
        "repositories": [{
            "provider": "gitea", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:GITEA_E2E_SECRET"], "api_token": "env:GITEA_E2E_TOKEN",
            "branches": ["main"],
            "pipelines": [{"name": f"{m}-deploy", "paths": [f"services/{m}/**"]}
                          for m in MODULES],
            **repository,
        }],
    }


@pytest.fixture
def gitea(fake_api: FakeAPI) -> GiteaAPI:
    api = GiteaAPI(fake_api, REPO, TOKEN, max_limit=20)
    root = api.git.commit(None, {f"services/{m}/app.py": "0" for m in MODULES})
    api.heads["main"] = root
    return api


@pytest.fixture
def service(tmp_path: Path, gitea: GiteaAPI) -> Iterator[Service]:
    svc = Service(config(tmp_path, gitea.api.url + "/api/v1", commit_status=True), tmp_path,
                  env=ENV).start()
    yield svc
    svc.stop()


def assert_no_secret_in_logs(svc: Service) -> None:
    text = Path(svc.log_path).read_text(errors="replace")
    assert SECRET not in text and TOKEN not in text


# --- the push flow ---------------------------------------------------------------------------


def test_a_module_changed_only_in_a_commit_past_the_first_page_is_started(
        service: Service, gitea: GiteaAPI) -> None:
    root = gitea.heads["main"]
    # 45 commits: the oldest, on the third page of 20, is the only one touching beta
    head = gitea.git.commit(root, {"services/beta/app.py": "1"})
    for i in range(44):
        head = gitea.git.commit(head, {"docs/changelog.md": str(i)})

    answer = deliver(service, push_body(root, head), "gitea-delivery-1")

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "accepted", "delivery_id": "gitea-delivery-1"}
    summary = service.processed("gitea-delivery-1")
    assert service.started("gitea-delivery-1") == [("beta-deploy", head)]
    assert sorted(summary["pipelines_unchanged"]) == ["alpha-deploy", "gamma-deploy"]
    pages = [r.query["page"][0] for r in gitea.api.requests if r.path.endswith("/commits")]
    assert pages == ["1", "2", "3"]
    # the commit status on the head ends success (the log launcher's outcome); a pending
    # write still queued when the outcome came is superseded by it
    service.wait_for(lambda _: any(s["state"] == "success" for s in gitea.statuses))
    assert {(s["sha"], s["context"]) for s in gitea.statuses} == {
        (head, "codepipeline/beta-deploy")}
    assert [s["state"] for s in gitea.statuses][-1] == "success"
    assert {s["state"] for s in gitea.statuses} <= {"pending", "success"}
    assert {r.headers.get("authorization") for r in gitea.api.requests} == {f"token {TOKEN}"}
    assert_no_secret_in_logs(service)


def test_a_forgejo_delivery_with_only_forgejo_headers_is_accepted(
        service: Service, gitea: GiteaAPI) -> None:
    root = gitea.heads["main"]
    head = gitea.git.commit(root, {"services/gamma/app.py": "1"})
    body = push_body(root, head, "gitea/packit-forgejo-push_with_one_commit.json")

    answer = deliver(service, body, "forgejo-delivery-1", family="forgejo")

    assert answer.status_code == 202, answer.text
    service.processed("forgejo-delivery-1")
    assert service.started("forgejo-delivery-1") == [("gamma-deploy", head)]
    accepted = [e for e in service.events("webhook.accepted")
                if e.get("delivery_id") == "forgejo-delivery-1"]
    assert [(e["provider"], e["repository"]) for e in accepted] == [("gitea", REPO)]


def test_a_redelivery_answers_duplicate_and_starts_nothing_new(service: Service,
                                                               gitea: GiteaAPI) -> None:
    root = gitea.heads["main"]
    head = gitea.git.commit(root, {"services/alpha/app.py": "1"})
    body = push_body(root, head)
    assert deliver(service, body, "gitea-dup").status_code == 202
    service.processed("gitea-dup")
    calls = len(gitea.api.requests)

    again = deliver(service, body, "gitea-dup")

    assert (again.status_code, again.json()) == (200, {"status": "duplicate",
                                                       "delivery_id": "gitea-dup"})
    assert service.started("gitea-dup") == [("alpha-deploy", head)]
    assert len([r for r in gitea.api.requests[calls:] if "/statuses/" not in r.path]) == 0


# --- answers that record nothing ---------------------------------------------------------------


def _flip_middle_byte(body: bytes) -> bytes:
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]


@dataclass(frozen=True)
class HttpCase:
    """One delivery that must leave state and the Gitea API untouched."""

    body: Callable[[], bytes] = lambda: fixture_bytes(PUSH)
    event: str = "push"
    secret: str | None = SECRET
    after_signing: Callable[[bytes], bytes] = lambda body: body
    status: int = 200
    expect: Mapping[str, str] = field(default_factory=dict)


HTTP_CASES: dict[str, HttpCase] = {
    "signed_by_another_secret_is_unauthorized": HttpCase(
        secret=OTHER_SECRET, status=401, expect={"error": "unauthorized"}),
    "body_changed_after_signing_is_unauthorized": HttpCase(
        after_signing=_flip_middle_byte, status=401, expect={"error": "unauthorized"}),
    "push_without_signature_is_unauthorized": HttpCase(
        secret=None, status=401, expect={"error": "unauthorized"}),
    "delete_event_is_ignored": HttpCase(
        lambda: fixture_bytes("gitea/go-scm-branch_delete.json"), event="delete",
        expect={"status": "ignored", "reason": "unsupported event type 'delete'"}),
    "pull_request_event_of_a_repository_without_pull_requests_is_ignored": HttpCase(
        lambda: _repointed(fixture_bytes("gitea/go-scm-pull_request_opened.json")),
        event="pull_request",
        expect={"status": "ignored", "reason": "pull requests of this repository are not "
                                               "validated (no pull_requests)"}),
    "branch_not_watched_is_ignored": HttpCase(
        lambda: push_body("a" * 40, "b" * 40).replace(b"refs/heads/main", b"refs/heads/dev"),
        expect={"status": "ignored", "reason": "branch not watched"}),
    "tag_without_a_tag_rule_is_ignored": HttpCase(
        lambda: json.dumps({**json.loads(fixture_bytes("gitea/packit-forgejo-tag_push.json")),
                            "repository": {"full_name": REPO}}).encode(),
        expect={"status": "ignored"}),
    "push_to_an_unconfigured_repository_is_not_found": HttpCase(
        lambda: fixture_bytes("gitea/go-scm-push.json"), status=404,
        expect={"error": "not_found"}),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, FakeAPI]]:
    workdir = tmp_path_factory.mktemp("gitea-e2e")
    api = FakeAPI()
    GiteaAPI(api, REPO, TOKEN)
    svc = Service(config(workdir, api.url + "/api/v1"), workdir, env=ENV, workers=1).start()
    yield svc, api
    svc.stop()
    api.close()


@pytest.mark.parametrize("case", HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_service_answers_delivery_and_records_nothing(shared: tuple[Service, FakeAPI],
                                                      case: HttpCase) -> None:
    svc, api = shared
    body = case.body()
    delivery_id = str(uuid.uuid4())
    headers = {"Content-Type": "application/json", "X-Gitea-Event": case.event,
               "X-Gitea-Delivery": delivery_id}
    if case.secret is not None:
        headers["X-Gitea-Signature"] = sign(body, case.secret)
    resp = requests.post(svc.url + "/webhooks/gitea", data=case.after_signing(body),
                         headers=headers, timeout=10)

    assert resp.status_code == case.status, resp.text
    answer = resp.json()
    assert {k: answer.get(k) for k in case.expect} == dict(case.expect)
    assert not [e for e in svc.events("webhook.accepted") if e.get("delivery_id") == delivery_id]
    done = svc.cli("state")
    assert (done.returncode, done.stdout) == (0, "")
    assert api.requests == []
    assert_no_secret_in_logs(svc)


# --- diff: git against git http-backend ---------------------------------------------------------


def test_diff_git_fetches_with_the_token_as_the_basic_user(tmp_path: Path, gitea: GiteaAPI) -> None:
    repo = tmp_path / "repo"
    authorization = GiteaProvider().git_authorization(_repository(gitea.api.url))
    assert authorization is not None
    server = GitServer(tmp_path / "server", {authorization})
    server.create(REPO)
    work = WorkClone(tmp_path / "work", server.url(REPO), authorization)
    base = work.commit({f"services/{m}/app.py": "0\n" for m in MODULES}, "first")
    work.push()
    head = work.commit({"services/gamma/app.py": "1\n"})
    work.push()
    svc = Service(config(tmp_path, gitea.api.url + "/api/v1", diff="git",
                         git_url=server.url(REPO)) | {"git": {"cache_dir": str(repo)}},
                  tmp_path, env=ENV).start()
    try:
        assert deliver(svc, push_body(base, head), "gitea-git-1").status_code == 202
        summary = svc.processed("gitea-git-1")
        assert svc.started("gitea-git-1") == [("gamma-deploy", head)]
        assert summary["changed_files"] == 1
    finally:
        svc.stop()
        server.close()
    assert server.requests and {r.authorization for r in server.requests} == {authorization}
    assert not [r for r in gitea.api.requests if r.path.endswith("/commits")]  # no API diff
    for secret in (TOKEN, authorization.split()[1]):
        assert secret not in svc.log_path.read_text()


def _repository(api_url: str) -> Any:
    import os

    from receiver.config import parse

    os.environ.update(ENV)
    return parse(config(Path("/nonexistent"), api_url)).repositories[0]

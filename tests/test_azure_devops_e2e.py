"""Azure DevOps end to end: service hook deliveries over HTTP to the service under gunicorn.

The service runs as ``webhook-receiver serve`` with SQLite state and the ``log`` launcher;
its ``api_url`` is tests.azure_devops_api.AzureDevOpsAPI over a tests.gitmodel history,
answering diff pages of at most 100 changes (the API's default page) whatever ``$top``
asks. Bodies are Microsoft's recorded ``git.push`` sample (go-scm's copy), edited only
where it must point at the test history; they carry HTTP Basic credentials as a service
hook sends them. ``diff: git`` runs against a real ``git http-backend``
(tests/gitserver.py) that lets in only the PAT as Azure DevOps takes it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.azure_devops import AzureDevOpsProvider
from tests.azure_devops_api import AzureDevOpsAPI
from tests.gitserver import GitServer, WorkClone
from tests.harness import FakeAPI, Service, fixture_bytes

HOOK = "receiver:3f9a0c7e1b2d4a6c8e0f-must-never-be-logged"
ROTATED = "receiver:rotated-6b1d9e2f4a8c0e3b5d7f"
PAT = "azdo-e2e-pat-0123456789abcdefghijklmnopqrstuvwxyz0123"
ORGANIZATION, PROJECT, REPOSITORY = "fabrikam", "Fabrikam Fiber", "mono repo"
NAME = f"{ORGANIZATION}/{PROJECT}/{REPOSITORY}"
PUSH = "azure-devops/go-scm-push.json"
MODULES = ["alpha", "beta", "zeta"]
ENV = {"AZ_E2E_HOOK": HOOK, "AZ_E2E_ROTATED": ROTATED, "AZ_E2E_PAT": PAT}


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def push_body(before: str, after: str, event_id: str) -> bytes:
    """Microsoft's sample pointed at the test repository, ``before``..``after`` on main."""
    doc = json.loads(fixture_bytes(PUSH))
    doc["id"] = event_id
    doc["resource"]["refUpdates"] = [{"name": "refs/heads/main", "oldObjectId": before,
                                      "newObjectId": after}]
    repo = doc["resource"]["repository"]
    repo.update(name=REPOSITORY, remoteUrl=f"https://dev.azure.com/{ORGANIZATION}/"
                f"Fabrikam%20Fiber/_git/mono%20repo")
    repo["project"]["name"] = PROJECT
    return json.dumps(doc).encode()


def _repointed(body: bytes) -> bytes:
    """A published event's repository pointed at the test repository (as push_body does)."""
    doc = json.loads(body)
    repo = doc["resource"]["repository"]
    repo.update(name=REPOSITORY, remoteUrl=f"https://dev.azure.com/{ORGANIZATION}/"
                f"Fabrikam%20Fiber/_git/mono%20repo")
    repo["project"]["name"] = PROJECT
    return json.dumps(doc).encode()


def deliver(svc: Service, body: bytes, credentials: str | None = HOOK) -> requests.Response:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if credentials is not None:
        headers["Authorization"] = basic(credentials)
    return requests.post(svc.url + "/webhooks/azure-devops", data=body, headers=headers,
                         timeout=10)


def config(workdir: Path, api_url: str, **repository: Any) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"poll_seconds": 0.3, "max_attempts": 2, "retry_backoff_seconds": 0.2},
        "repositories": [{
            "provider": "azure-devops", "name": NAME, "api_url": api_url,
            "webhook_secrets": ["env:AZ_E2E_HOOK", "env:AZ_E2E_ROTATED"],
            "api_token": "env:AZ_E2E_PAT", "branches": ["main"],
            "pipelines": [{"name": f"{m}-deploy", "paths": [f"services/{m}/**"]}
                          for m in MODULES],
            **repository,
        }],
    }


@pytest.fixture
def azure(fake_api: FakeAPI) -> AzureDevOpsAPI:
    api = AzureDevOpsAPI(fake_api, NAME, PAT, max_top=100)
    api.heads["main"] = api.git.commit(None, {f"services/{m}/app.py": "0" for m in MODULES})
    return api


@pytest.fixture
def service(tmp_path: Path, azure: AzureDevOpsAPI) -> Iterator[Service]:
    svc = Service(config(tmp_path, azure.api.url, commit_status=True), tmp_path,
                  env=ENV).start()
    yield svc
    svc.stop()


def assert_no_secret_in_logs(svc: Service) -> None:
    text = Path(svc.log_path).read_text(errors="replace")
    for secret in (HOOK, ROTATED, PAT, basic(HOOK).split()[1], basic(f":{PAT}").split()[1]):
        assert secret not in text


# --- the push flow ---------------------------------------------------------------------------


def test_a_module_whose_file_is_on_page_3_of_100_change_pages_is_started(
        service: Service, azure: AzureDevOpsAPI) -> None:
    root = azure.heads["main"]
    # 230 documentation files sort first; services/zeta/app.py lands on the third page
    head = azure.git.commit(root, {**{f"docs/page{i:03d}.md": "1" for i in range(230)},
                                   "services/zeta/app.py": "1"})
    event_id = "5a1d7c3e-9b2f-4e6a-8c0d-1f3b5d7e9a2c"

    answer = deliver(service, push_body(root, head, event_id))

    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "accepted", "delivery_id": event_id}
    summary = service.processed(event_id)
    assert service.started(event_id) == [("zeta-deploy", head)]
    assert sorted(summary["pipelines_unchanged"]) == ["alpha-deploy", "beta-deploy"]
    assert summary["changed_files"] == 231
    skips = [r.query["$skip"][0] for r in azure.api.requests
             if r.path.endswith("/diffs/commits")]
    assert skips == ["0", "100", "200"]
    # the accepted line and the worker's lines carry the event's id
    accepted = [e for e in service.events("webhook.accepted") if e.get("delivery_id") == event_id]
    assert [(e["provider"], e["repository"]) for e in accepted] == [("azure-devops", NAME)]
    # the commit status on the head ends succeeded (the log launcher's outcome); a pending
    # write still queued when the outcome came is superseded by it
    service.wait_for(lambda _: any(s["state"] == "succeeded" for s in azure.statuses))
    assert {(s["sha"], json.dumps(s["context"])) for s in azure.statuses} == {
        (head, json.dumps({"name": "zeta-deploy", "genre": "codepipeline"}))}
    assert [s["state"] for s in azure.statuses][-1] == "succeeded"
    assert {s["state"] for s in azure.statuses} <= {"pending", "succeeded"}
    assert {r.headers.get("authorization") for r in azure.api.requests} == {basic(f":{PAT}")}
    assert_no_secret_in_logs(service)


def test_a_delivery_with_the_rotated_second_secret_is_accepted(
        service: Service, azure: AzureDevOpsAPI) -> None:
    root = azure.heads["main"]
    head = azure.git.commit(root, {"services/beta/app.py": "1"})
    event_id = "0c2e4a6b-8d1f-4b3c-9e5a-7f9b1d3e5a7c"

    answer = deliver(service, push_body(root, head, event_id), ROTATED)

    assert answer.status_code == 202, answer.text
    service.processed(event_id)
    assert service.started(event_id) == [("beta-deploy", head)]
    accepted = [e for e in service.events("webhook.accepted") if e.get("delivery_id") == event_id]
    assert [e["verified_by"] for e in accepted] == ["env:AZ_E2E_ROTATED"]


def test_a_retried_notification_answers_duplicate_and_starts_nothing_new(
        service: Service, azure: AzureDevOpsAPI) -> None:
    root = azure.heads["main"]
    head = azure.git.commit(root, {"services/alpha/app.py": "1"})
    event_id = "7e9a1c3e-5b7d-4f0a-8c2e-4a6c8e0a2c4e"
    body = push_body(root, head, event_id)
    assert deliver(service, body).status_code == 202
    service.processed(event_id)
    diff_calls = sum(r.path.endswith("/diffs/commits") for r in azure.api.requests)

    again = deliver(service, body)

    assert (again.status_code, again.json()) == (200, {"status": "duplicate",
                                                       "delivery_id": event_id})
    assert service.started(event_id) == [("alpha-deploy", head)]
    assert sum(r.path.endswith("/diffs/commits") for r in azure.api.requests) == diff_calls


# --- answers that record nothing ---------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    """One delivery that must leave state and the Azure DevOps API untouched."""

    body: Callable[[], bytes] = lambda: push_body("a" * 40, "b" * 40, str(uuid.uuid4()))
    credentials: str | None = HOOK
    authorization: str | None = None  # sent as it is instead of Basic credentials
    status: int = 200
    expect: Mapping[str, str] = field(default_factory=dict)


HTTP_CASES: dict[str, HttpCase] = {
    "a_wrong_password_is_unauthorized": HttpCase(
        credentials="receiver:wrong", status=401, expect={"error": "unauthorized"}),
    "missing_credentials_are_unauthorized": HttpCase(
        credentials=None, status=401, expect={"error": "unauthorized"}),
    "a_bearer_token_is_unauthorized": HttpCase(
        authorization="Bearer " + HOOK, status=401, expect={"error": "unauthorized"}),
    "a_pull_request_event_of_a_repository_without_pull_requests_is_ignored": HttpCase(
        lambda: _repointed(fixture_bytes(
            "azure-devops/go-playground-git.pullrequest.created.json")),
        expect={"status": "ignored", "reason": "pull requests of this repository are not "
                                               "validated (no pull_requests)"}),
    "a_push_without_its_repository_is_a_bad_request": HttpCase(
        lambda: fixture_bytes("azure-devops/msdocs-git.push-no-repository.json"), status=400,
        expect={"error": "bad_request"}),
    "microsofts_test_sample_names_an_unconfigured_repository": HttpCase(
        lambda: fixture_bytes(PUSH), status=404, expect={"error": "not_found"}),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, FakeAPI]]:
    workdir = tmp_path_factory.mktemp("azure-e2e")
    api = FakeAPI()
    AzureDevOpsAPI(api, NAME, PAT)
    svc = Service(config(workdir, api.url), workdir, env=ENV, workers=1).start()
    yield svc, api
    svc.stop()
    api.close()


@pytest.mark.parametrize("case", HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_service_answers_delivery_and_records_nothing(shared: tuple[Service, FakeAPI],
                                                      case: HttpCase) -> None:
    svc, api = shared
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if case.authorization is not None:
        headers["Authorization"] = case.authorization
    elif case.credentials is not None:
        headers["Authorization"] = basic(case.credentials)
    resp = requests.post(svc.url + "/webhooks/azure-devops", data=case.body(), headers=headers,
                         timeout=10)

    assert resp.status_code == case.status, resp.text
    answer = resp.json()
    assert {k: answer.get(k) for k in case.expect} == dict(case.expect)
    assert svc.events("webhook.accepted") == []
    done = svc.cli("state")
    assert (done.returncode, done.stdout) == (0, "")
    assert api.requests == []
    assert_no_secret_in_logs(svc)


# --- diff: git against git http-backend ---------------------------------------------------------


def test_diff_git_fetches_with_the_pat_as_a_basic_password(tmp_path: Path,
                                                           azure: AzureDevOpsAPI) -> None:
    authorization = basic(f":{PAT}")
    server = GitServer(tmp_path / "server", {authorization})
    clone_path = "fabrikam/FabrikamFiber/_git/mono"  # Azure's clone URL shape, on the stand-in
    server.create(clone_path)
    work = WorkClone(tmp_path / "work", server.url(clone_path), authorization)
    base = work.commit({f"services/{m}/app.py": "0\n" for m in MODULES}, "first")
    work.push()
    head = work.commit({"services/alpha/app.py": "1\n"})
    work.push()
    svc = Service(config(tmp_path, azure.api.url, diff="git", git_url=server.url(clone_path))
                  | {"git": {"cache_dir": str(tmp_path / "git")}}, tmp_path, env=ENV).start()
    event_id = "2b4d6f8a-0c1e-4a3b-9d5f-6e8a0c2e4b6d"
    try:
        assert deliver(svc, push_body(base, head, event_id)).status_code == 202
        summary = svc.processed(event_id)
        assert svc.started(event_id) == [("alpha-deploy", head)]
        assert summary["changed_files"] == 1
    finally:
        svc.stop()
        server.close()
    repo = AzureDevOpsProvider().git_authorization(_repository(azure.api.url))
    assert repo == authorization  # what the service sent is the provider's own form
    assert server.requests and {r.authorization for r in server.requests} == {authorization}
    assert not [r for r in azure.api.requests if r.path.endswith("/diffs/commits")]
    for secret in (PAT, authorization.split()[1]):
        assert secret not in svc.log_path.read_text()


def _repository(api_url: str) -> Any:
    import os

    from receiver.config import parse

    os.environ.update(ENV)
    return parse(config(Path("/nonexistent"), api_url)).repositories[0]

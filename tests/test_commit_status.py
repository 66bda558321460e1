"""Commit status writes for every provider, and the neutral status of a pipeline execution.

The providers' APIs are stood in for by ``responses``; each expected request is written out
here as the provider documents it (method, URL, JSON body, credentials), not derived from
the code under test. Repositories are built through ``receiver.config.parse`` with secrets
from the environment, as in production. ``sleep`` is injected: nothing really waits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from providers import REGISTRY
from providers.azure_devops import AzureDevOpsProvider
from providers.base import CommitStatus, HttpProvider, Provider
from providers.bitbucket import BitbucketProvider
from providers.bitbucket_server import BitbucketServerProvider
from providers.gitea import GiteaProvider
from providers.github import GitHubProvider
from providers.gitlab import GitLabProvider
from receiver import config
from receiver.config import RepositoryConfig
from receiver.errors import ProviderError
from receiver.statuses import console_url, status_for
from tests.harness import fixture_bytes

TOKEN = "tok_statuses_0123456789SECRET"
COMMIT = hashlib.sha1(b"pushed head").hexdigest()
EXECUTION = "3f7bd5a2-4c1e-4b8e-9d7a-0c6e2f1a9b42"
LINK = console_url("eu-west-1", "acme-billing-deploy", EXECUTION)

# one status per neutral state, the halted error (a stopped run) apart from a plain error
STATUSES: dict[str, CommitStatus] = {
    "pending": CommitStatus("codepipeline/acme-billing-deploy", "pending", LINK,
                            "Waiting to start"),
    "running": CommitStatus("codepipeline/acme-billing-deploy", "running", LINK,
                            "CodePipeline execution in progress"),
    "success": CommitStatus("codepipeline/acme-billing-deploy", "success", LINK,
                            "CodePipeline execution succeeded"),
    "failure": CommitStatus("codepipeline/acme-billing-deploy", "failure", LINK,
                            "CodePipeline execution failed"),
    "halted": CommitStatus("codepipeline/acme-billing-deploy", "error", LINK,
                           "CodePipeline execution was stopped", detail="stopped"),
    "error": CommitStatus("webhook-receiver/config", "error", LINK,
                          "module map .webhook-receiver.yaml is invalid"),
}


@dataclass(frozen=True)
class Case:
    """One provider's documented status request."""

    provider: str
    make: Callable[..., HttpProvider]
    name: str
    api_url: str
    url: str  # the exact POST target for COMMIT
    states: dict[str, str]  # STATUSES key -> the provider's state
    body: Callable[[CommitStatus, str], dict[str, Any]]  # (status, state) -> JSON body
    answer: int
    answer_body: dict[str, Any] | None = None
    # the Authorization header a write sends for the token
    authorization: Callable[[str], str] = lambda token: f"Bearer {token}"


CASES: dict[str, Case] = {
    "github": Case(
        "github", GitHubProvider, "acme/mono", "https://api.github.com",
        f"https://api.github.com/repos/acme/mono/statuses/{COMMIT}",
        {"pending": "pending", "running": "pending", "success": "success",
         "failure": "failure", "halted": "error", "error": "error"},
        lambda s, state: {"state": state, "target_url": s.url, "description": s.description,
                          "context": s.name},
        201, {"id": 1, "state": "pending", "context": "codepipeline/acme-billing-deploy"}),
    "gitlab": Case(
        "gitlab", GitLabProvider, "acme/platform/mono", "https://gitlab.example.com",
        f"https://gitlab.example.com/api/v4/projects/acme%2Fplatform%2Fmono/statuses/{COMMIT}",
        {"pending": "pending", "running": "running", "success": "success",
         "failure": "failed", "halted": "canceled", "error": "failed"},
        lambda s, state: {"state": state, "name": s.name, "target_url": s.url,
                          "description": s.description},
        201, {"id": 93, "status": "running", "name": "codepipeline/acme-billing-deploy"}),
    "bitbucket": Case(
        "bitbucket", BitbucketProvider, "acme/mono", "https://api.bitbucket.org",
        f"https://api.bitbucket.org/2.0/repositories/acme/mono/commit/{COMMIT}/statuses/build",
        {"pending": "INPROGRESS", "running": "INPROGRESS", "success": "SUCCESSFUL",
         "failure": "FAILED", "halted": "STOPPED", "error": "FAILED"},
        # both names are at most 40 characters, so each is its own key
        lambda s, state: {"key": s.name, "state": state, "url": s.url, "name": s.name,
                          "description": s.description},
        201, {"type": "build", "key": "codepipeline/acme-billing-deploy",
              "state": "INPROGRESS"}),
    "bitbucket-server": Case(
        "bitbucket-server", BitbucketServerProvider, "ACME/mono",
        "https://bitbucket.example.com",
        f"https://bitbucket.example.com/rest/api/latest/projects/ACME/repos/mono/commits/"
        f"{COMMIT}/builds",
        {"pending": "INPROGRESS", "running": "INPROGRESS", "success": "SUCCESSFUL",
         "failure": "FAILED", "halted": "CANCELLED", "error": "FAILED"},
        lambda s, state: {"key": s.name, "state": state, "url": s.url, "name": s.name,
                          "description": s.description},
        204),
    # Gitea's CreateStatusOption; the answer is go-scm's recorded status.json
    "gitea": Case(
        "gitea", GiteaProvider, "gordon/hello-world", "https://gitea.example.com/api/v1",
        f"https://gitea.example.com/api/v1/repos/gordon/hello-world/statuses/{COMMIT}",
        {"pending": "pending", "running": "pending", "success": "success",
         "failure": "failure", "halted": "error", "error": "error"},
        lambda s, state: {"state": state, "target_url": s.url, "description": s.description,
                          "context": s.name},
        201, json.loads(fixture_bytes("gitea/go-scm-api-status.json")),
        lambda token: f"token {token}"),
    # Microsoft's "Statuses - Create"; the answer is its recorded example. Every status
    # name here is genre/name
    "azure-devops": Case(
        "azure-devops", AzureDevOpsProvider, "fabrikam/Fabrikam-Fiber-Git/mono",
        "https://dev.azure.com",
        "https://dev.azure.com/fabrikam/Fabrikam-Fiber-Git/_apis/git/repositories/mono/"
        f"commits/{COMMIT}/statuses?api-version=6.0",
        {"pending": "pending", "running": "pending", "success": "succeeded",
         "failure": "failed", "halted": "error", "error": "error"},
        lambda s, state: {"state": state, "description": s.description, "targetUrl": s.url,
                          "context": {"genre": s.name.split("/")[0],
                                      "name": s.name.split("/")[1]}},
        201, json.loads(fixture_bytes("azure-devops/ms-api-statuses-post.json"))[
            "responses"]["201"]["body"],
        lambda token: "Basic " + base64.b64encode(f":{token}".encode()).decode()),
}
PROVIDERS = list(CASES)


class World:
    """Providers with a recording sleep, talking to ``responses``."""

    def __init__(self, api: responses.RequestsMock) -> None:
        self.api = api
        self.sleeps: list[float] = []
        self.hosts: set[str] = set()

    def provider(self, case: Case) -> HttpProvider:
        return case.make(sleep=self.sleeps.append)

    def repo(self, case: Case, *, token: bool = True, **extra: Any) -> RepositoryConfig:
        """The case's repository, validated by ``receiver.config.parse``."""
        raw: dict[str, Any] = {
            "provider": case.provider, "name": case.name, "api_url": case.api_url,
            "webhook_secrets": ["env:TEST_STATUS_WEBHOOK_SECRET"], "branches": ["main"],
            "pipelines": [{"name": "acme-billing-deploy", "paths": ["**"]}],
            **extra,
        }
        if token:
            raw["api_token"] = "env:TEST_STATUS_TOKEN"
        self.hosts.add(urlsplit(case.api_url).netloc)
        return config.parse({"repositories": [raw]}).repositories[0]

    def answer(self, case: Case, status: int | None = None, **kwargs: Any) -> None:
        """Register one answer to the case's status POST (default: its documented success)."""
        code = case.answer if status is None else status
        if "json" not in kwargs and "body" not in kwargs and code != 204:
            kwargs["json"] = case.answer_body if status is None else {"message": "refused"}
        self.api.add(responses.POST, case.url, status=code, **kwargs)

    def posts(self) -> list[Any]:
        return [c.request for c in self.api.calls if c.request.method == "POST"]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Every call must be registered and every registered one made; afterwards each call is
    checked for a timeout and for going only to a configured API host."""
    monkeypatch.setenv("TEST_STATUS_WEBHOOK_SECRET", "webhook-secret-for-tests")
    monkeypatch.setenv("TEST_STATUS_TOKEN", TOKEN)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as api:
        w = World(api)
        yield w
        for call in api.calls:
            assert call.request.req_kwargs["timeout"], f"{call.request.url} has no timeout"
            assert urlsplit(call.request.url).netloc in w.hosts


def sent_json(request: Any) -> Any:
    return json.loads(request.body)


def test_the_table_covers_every_registered_provider() -> None:
    assert sorted(CASES) == sorted(REGISTRY)
    # set_status is part of the protocol every registered provider implements
    assert all(callable(getattr(cls, "set_status", None)) for cls in REGISTRY.values())
    assert "set_status" in Provider.__dict__


# --- the documented request, per provider and state ----------------------------------------


@pytest.mark.parametrize("state", list(STATUSES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_state_is_posted_as_the_provider_documents_it(world: World, provider: str,
                                                           state: str) -> None:
    case = CASES[provider]
    status = STATUSES[state]
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT, status)

    (post,) = world.posts()
    assert post.url == case.url
    assert post.headers["Authorization"] == case.authorization(TOKEN)
    assert post.headers["Content-Type"] == "application/json"
    assert sent_json(post) == case.body(status, case.states[state])
    assert world.sleeps == []


def test_bitbucket_sends_basic_credentials_when_api_username_is_set(world: World) -> None:
    case = CASES["bitbucket"]
    world.answer(case)

    world.provider(case).set_status(world.repo(case, api_username="dev@example.com"), COMMIT,
                                    STATUSES["success"])

    (post,) = world.posts()
    assert post.headers["Authorization"] == \
        "Basic " + base64.b64encode(f"dev@example.com:{TOKEN}".encode()).decode()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_repository_without_a_token_sends_no_authorization(world: World,
                                                             provider: str) -> None:
    case = CASES[provider]
    world.answer(case)

    world.provider(case).set_status(world.repo(case, token=False), COMMIT, STATUSES["running"])

    assert "Authorization" not in world.posts()[0].headers


# --- retries and refusals ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_server_error_is_retried_and_the_write_then_succeeds(world: World, provider: str,
                                                               status: int) -> None:
    case = CASES[provider]
    world.answer(case, status)
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["success"])

    posts = world.posts()
    assert len(posts) == 2
    assert sent_json(posts[0]) == sent_json(posts[1])
    assert world.sleeps == [0.5]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_connection_error_is_retried_and_the_write_then_succeeds(world: World,
                                                                   provider: str) -> None:
    case = CASES[provider]
    world.answer(case, body=requests.ConnectionError("connection reset"))
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["failure"])

    assert len(world.posts()) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_errors_on_every_attempt_raise_provider_error(world: World,
                                                             provider: str) -> None:
    case = CASES[provider]
    for _ in range(3):
        world.answer(case, 503)

    with pytest.raises(ProviderError, match="failed after 3 attempts"):
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["success"])

    assert len(world.posts()) == 3
    assert world.sleeps == [0.5, 1.0]


NEEDS = {
    "github": "repo:status",
    "gitlab": "api scope",
    "bitbucket": "repository scope",
    "bitbucket-server": "REPO_READ",
    "gitea": "write:repository",
    "azure-devops": "Code (Status)",
}
REFUSALS = {
    401: "was refused (HTTP 401)",
    403: "cannot write commit statuses to {name} (HTTP 403)",
    404: "was not found (HTTP 404)",
}


@pytest.mark.parametrize("code", list(REFUSALS))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_write_raises_provider_error_in_words_without_the_token(
        world: World, provider: str, code: int) -> None:
    case = CASES[provider]
    world.answer(case, code, json={"message": f"token {TOKEN} is not allowed"})

    with pytest.raises(ProviderError) as raised:
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["success"])

    message = str(raised.value)
    assert REFUSALS[code].format(name=case.name) in message
    assert case.name in message
    if code != 401:
        assert NEEDS[provider] in message
    assert TOKEN not in message and TOKEN not in repr(raised.value.args)
    assert len(world.posts()) == 1  # a refusal is not retried


def test_a_rate_limited_403_says_so_and_is_left_to_a_later_retry(world: World) -> None:
    case = CASES["github"]
    world.answer(case, 403, headers={"X-RateLimit-Remaining": "0",
                                     "X-RateLimit-Reset": "4102444800"})

    with pytest.raises(ProviderError, match="rate limited"):
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["success"])

    assert world.sleeps == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_validation_refusal_quotes_the_providers_message(world: World,
                                                           provider: str) -> None:
    case = CASES[provider]
    world.answer(case, 422, json={"message": "Validation Failed"})

    with pytest.raises(ProviderError, match="answered HTTP 422: Validation Failed"):
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["success"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_commit_that_is_not_a_full_commit_id_is_refused_before_any_request(
        world: World, provider: str) -> None:
    case = CASES[provider]

    with pytest.raises(ValueError, match="full lower-case commit id"):
        world.provider(case).set_status(world.repo(case), "../../user", STATUSES["success"])

    assert len(world.api.calls) == 0


def test_azure_devops_answering_its_sign_in_page_is_a_refusal_in_words(world: World) -> None:
    case = CASES["azure-devops"]
    world.answer(case, 203, body=b"<html><title>Azure DevOps Services | Sign In</title></html>")

    with pytest.raises(ProviderError, match=r"was refused \(HTTP 203, the sign-in page\)"):
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["success"])

    assert len(world.posts()) == 1


def test_azure_devops_keeps_a_name_without_a_genre_whole(world: World) -> None:
    case = CASES["azure-devops"]
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT, CommitStatus(
        "deploy", "success", LINK, "done"))

    assert sent_json(world.posts()[0])["context"] == {"name": "deploy"}


# --- GitLab: a repeated state -------------------------------------------------------------

TRANSITION = 'Cannot transition status via :{event} from :{current} (Reason(s): Status ' \
             'cannot transition via "{event}")'


@pytest.mark.parametrize(("state", "event"), [("running", "run"), ("pending", "enqueue")])
def test_gitlab_refusing_a_repeat_of_the_same_state_counts_as_written(
        world: World, state: str, event: str) -> None:
    case = CASES["gitlab"]
    world.answer(case, 400, json={"message": TRANSITION.format(event=event, current=state)})

    world.provider(case).set_status(world.repo(case), COMMIT, STATUSES[state])

    assert len(world.posts()) == 1


def test_gitlab_refusing_a_transition_from_another_state_raises(world: World) -> None:
    case = CASES["gitlab"]
    world.answer(case, 400, json={"message": TRANSITION.format(event="enqueue",
                                                                current="running")})

    with pytest.raises(ProviderError, match="HTTP 400: Cannot transition status"):
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["pending"])


def test_gitlab_refusing_a_field_raises_with_its_message(world: World) -> None:
    case = CASES["gitlab"]
    world.answer(case, 400, json={"message": {"target_url": ["is blocked: Requests to "
                                                             "localhost are not allowed"]}})

    with pytest.raises(ProviderError, match=r"HTTP 400: .*target_url.*is blocked"):
        world.provider(case).set_status(world.repo(case), COMMIT, STATUSES["running"])


def test_gitlab_leaves_out_a_link_longer_than_its_255_character_limit(world: World) -> None:
    case = CASES["gitlab"]
    long_link = "https://example.com/" + "x" * 236
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT, CommitStatus(
        "codepipeline/p", "running", long_link, "in progress"))

    assert len(long_link) == 256
    assert "target_url" not in sent_json(world.posts()[0])


# --- length limits ---------------------------------------------------------------------------


def test_github_cuts_a_description_to_its_140_character_limit(world: World) -> None:
    case = CASES["github"]
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT, CommitStatus(
        "codepipeline/p", "failure", LINK, "d" * 200))

    description = sent_json(world.posts()[0])["description"]
    assert description == "d" * 139 + "\u2026"


PIPELINE_100 = "acme-" + "p" * 95  # the longest pipeline name CodePipeline allows


def test_bitbucket_key_for_a_100_character_pipeline_fits_40_and_is_stable(
        world: World) -> None:
    case = CASES["bitbucket"]
    sibling = PIPELINE_100[:-1] + "q"  # the same first 99 characters
    for _ in range(3):
        world.answer(case)
    provider, repo = world.provider(case), world.repo(case)

    for pipeline in (PIPELINE_100, PIPELINE_100, sibling):
        provider.set_status(repo, COMMIT, status_for(pipeline, "InProgress", LINK))

    first, again, other = (sent_json(p) for p in world.posts())
    assert len(first["key"]) == 40
    assert first["key"].startswith("codepipeline/acme-ppp")
    assert first["key"] == again["key"]
    assert other["key"] != first["key"]
    assert first["name"] == f"codepipeline/{PIPELINE_100}"


def test_bitbucket_server_keys_a_100_character_pipeline_by_its_name(world: World) -> None:
    case = CASES["bitbucket-server"]
    world.answer(case)

    world.provider(case).set_status(world.repo(case), COMMIT,
                                    status_for(PIPELINE_100, "Succeeded", LINK))

    assert sent_json(world.posts()[0])["key"] == f"codepipeline/{PIPELINE_100}"


# --- GitHub App --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh RSA key as a PKCS#1 PEM file, the format GitHub hands out for app keys."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("app") / "app.private-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path


def add_installation_token(world: World, token: str) -> None:
    expires = datetime.fromtimestamp(4102444800, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.api.add(responses.POST, "https://api.github.com/app/installations/42/access_tokens",
                  status=201, json={"token": token, "expires_at": expires,
                                    "permissions": {"statuses": "write"}})


def app_repo(world: World, key_file: Path) -> RepositoryConfig:
    return world.repo(CASES["github"], token=False, github_app={
        "app_id": 12345, "private_key": f"file:{key_file}", "installation_id": 42})


def status_posts(world: World) -> list[Any]:
    return [r for r in world.posts() if "/statuses/" in r.url]


def test_github_app_installation_token_is_the_bearer_for_statuses(world: World,
                                                                  app_key_file: Path) -> None:
    case = CASES["github"]
    add_installation_token(world, "ghs_installation_one")
    world.answer(case)
    world.answer(case)
    provider, repo = world.provider(case), app_repo(world, app_key_file)

    provider.set_status(repo, COMMIT, STATUSES["running"])
    provider.set_status(repo, COMMIT, STATUSES["success"])

    assert [r.headers["Authorization"] for r in status_posts(world)] == \
        ["Bearer ghs_installation_one"] * 2
    assert len(world.posts()) == 3  # one token, minted once, for both writes


def test_github_app_token_refused_on_a_status_write_is_replaced_once(
        world: World, app_key_file: Path) -> None:
    case = CASES["github"]
    add_installation_token(world, "ghs_revoked")
    add_installation_token(world, "ghs_fresh")
    world.answer(case, 401, json={"message": "Bad credentials"})
    world.answer(case)

    world.provider(case).set_status(app_repo(world, app_key_file), COMMIT, STATUSES["success"])

    assert [r.headers["Authorization"] for r in status_posts(world)] == \
        ["Bearer ghs_revoked", "Bearer ghs_fresh"]


# --- the neutral status of an execution -----------------------------------------------------

OUTCOMES = [
    # (execution status as CodePipeline or EventBridge spells it, state, detail, description)
    ("InProgress", "running", None, "CodePipeline execution in progress"),
    ("STARTED", "running", None, "CodePipeline execution in progress"),
    ("RESUMED", "running", None, "CodePipeline execution in progress"),
    ("Stopping", "running", None, "CodePipeline execution is stopping"),
    ("Succeeded", "success", None, "CodePipeline execution succeeded"),
    ("SUCCEEDED", "success", None, "CodePipeline execution succeeded"),
    ("Failed", "failure", None, "CodePipeline execution failed"),
    ("FAILED", "failure", None, "CodePipeline execution failed"),
    ("Stopped", "error", "stopped", "CodePipeline execution was stopped"),
    ("Cancelled", "error", "cancelled", "CodePipeline execution was cancelled"),
    ("CANCELED", "error", "cancelled", "CodePipeline execution was cancelled"),
    ("Superseded", "error", "superseded",
     "CodePipeline execution was superseded by a newer execution"),
]


@pytest.mark.parametrize(("execution_status", "state", "detail", "description"), OUTCOMES)
def test_status_for_maps_each_execution_status(execution_status: str, state: str,
                                               detail: str | None, description: str) -> None:
    assert status_for("acme-billing-deploy", execution_status, LINK) == CommitStatus(
        "codepipeline/acme-billing-deploy", state, LINK, description, detail)  # type: ignore[arg-type]


@pytest.mark.parametrize("execution_status", ["Unknown", "", "Succeeded "])
def test_status_for_refuses_an_unknown_execution_status(execution_status: str) -> None:
    with pytest.raises(ValueError, match="unknown CodePipeline execution status"):
        status_for("p", execution_status, LINK)


def test_console_url_is_the_executions_timeline_in_its_region() -> None:
    assert console_url("eu-west-1", "acme-billing-deploy", EXECUTION) == (
        "https://eu-west-1.console.aws.amazon.com/codesuite/codepipeline/pipelines/"
        f"acme-billing-deploy/executions/{EXECUTION}/timeline?region=eu-west-1")


def test_console_url_quotes_the_pipeline_and_execution_id() -> None:
    assert console_url("us-gov-west-1", "deploy@v2", "id/../x") == (
        "https://us-gov-west-1.console.aws.amazon.com/codesuite/codepipeline/pipelines/"
        "deploy%40v2/executions/id%2F..%2Fx/timeline?region=us-gov-west-1")


@pytest.mark.parametrize("region", ["", "eu-west-1.evil.example", "EU-WEST-1", "eu_west_1"])
def test_console_url_refuses_a_region_that_would_change_the_host(region: str) -> None:
    with pytest.raises(ValueError, match="not an AWS region"):
        console_url(region, "p", EXECUTION)


@pytest.mark.parametrize("state", ["pending", "running", "success", "failure"])
def test_a_halt_detail_belongs_only_to_an_error(state: str) -> None:
    with pytest.raises(ValueError, match="needs state 'error'"):
        CommitStatus("codepipeline/p", state, LINK, "x", detail="stopped")  # type: ignore[arg-type]

"""GitHub compare client and GitHub App auth: ``GitHubProvider.changed_files`` over HTTP.

The provider API is stood in for by ``responses``; recorded api.github.com answers
(tests/fixtures/github/pygithub-replay-*.json) are served with their real headers, and
synthetic answers are built from the recorded compare body so their shape stays real.
Every repository is built through ``receiver.config.parse`` with secrets from the
environment, as in production. ``sleep`` and the clock are injected: nothing really waits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from responses import matchers

from providers.github import GitHubProvider
from receiver import config
from receiver.config import RepositoryConfig
from receiver.errors import ProviderError, RepositoryUnreadable

FIXTURES = Path(__file__).parent / "fixtures" / "github"
GITHUB = "https://api.github.com"
GHE = "https://ghe.example.com/api/v3"
API_URLS = [pytest.param(GITHUB, id="github.com"), pytest.param(GHE, id="enterprise")]
NOW = 1_760_000_000.0  # the fake clock's start: an arbitrary fixed instant
TOKEN = "ghp_test0123456789abcdefTOKEN"
FIRST_PAGE = {"per_page": "100", "page": "1"}
# requests would try to gunzip a body that responses serves as plain bytes, and the
# recorded length no longer fits the re-encoded body: drop what describes the wire form
WIRE_HEADERS = {"content-encoding", "transfer-encoding", "content-length", "content-type"}


def sha(label: str) -> str:
    """A stable, well-formed commit id for a test label."""
    return hashlib.sha1(label.encode()).hexdigest()


def recording(name: str) -> list[dict[str, Any]]:
    """The exchanges of one converted PyGithub replay file."""
    exchanges: list[dict[str, Any]] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return exchanges


RECORDED_COMPARE: dict[str, Any] = recording("pygithub-replay-testCompare.json")[0]["body"]


def compare_body(status: str, files: list[str], *, commits: list[str] | None = None,
                 total_commits: int | None = None, with_files: bool = True) -> dict[str, Any]:
    """The recorded compare answer with its status, file list and commits replaced."""
    body = copy.deepcopy(RECORDED_COMPARE)
    file_template = body["files"][0]
    commit_template = body["commits"][0]
    shas = commits if commits is not None else [sha(f"commit-of-{status}")]
    body["status"] = status
    body["commits"] = [dict(commit_template, sha=s) for s in shas]
    body["total_commits"] = len(shas) if total_commits is None else total_commits
    body["ahead_by"] = body["total_commits"] if status in ("ahead", "diverged") else 0
    body["behind_by"] = 1 if status in ("behind", "diverged") else 0
    if with_files:
        body["files"] = [dict(file_template, filename=f, status="modified") for f in files]
    else:
        # later pages of a paginated compare carry no files key at all (see fixtures README)
        del body["files"]
    return body


def commit_body(commit_sha: str, files: list[str]) -> dict[str, Any]:
    """A single-commit answer (GET /repos/o/r/commits/{sha}) listing ``files``."""
    body: dict[str, Any] = copy.deepcopy(RECORDED_COMPARE["commits"][0])
    template = RECORDED_COMPARE["files"][0]
    body["sha"] = commit_sha
    body["files"] = [dict(template, filename=f, status="modified") for f in files]
    return body


def link_next(url: str, page: int) -> dict[str, str]:
    """A Link header pointing at ``page`` of ``url``, as GitHub sends it."""
    return {"Link": f'<{url}?per_page=100&page={page}>; rel="next", '
                    f'<{url}?per_page=100&page={page}>; rel="last"'}


def sent_timeout(call: Any) -> Any:
    """The ``timeout`` argument the provider passed to requests for one recorded call."""
    return call.request.req_kwargs["timeout"]


def page(number: int) -> list[Any]:
    """Match exactly the provider's query for one page."""
    return [matchers.query_param_matcher({"per_page": "100", "page": str(number)})]


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class World:
    """One provider with a recording sleep and a fake clock, talking to ``responses``."""

    def __init__(self, api: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
        self.api = api
        self.monkeypatch = monkeypatch
        self.clock = FakeClock(NOW)
        self.sleeps: list[float] = []
        self.provider = GitHubProvider(sleep=self.sleeps.append, clock=self.clock)
        self.hosts: set[str] = set()

    def repo(self, *, name: str = "acme/mono", api_url: str = GITHUB, token: bool = True,
             **extra: Any) -> RepositoryConfig:
        """A repository validated by ``receiver.config.parse``, secrets from the environment."""
        raw: dict[str, Any] = {
            "provider": "github",
            "name": name,
            "api_url": api_url,
            "webhook_secrets": ["env:TEST_GITHUB_WEBHOOK_SECRET"],
            "branches": ["main"],
            "pipelines": [{"name": "deploy", "paths": ["**"]}],
            **extra,
        }
        if token:
            raw["api_token"] = "env:TEST_GITHUB_TOKEN"
        self.hosts.add(urlsplit(api_url).netloc)
        return config.parse({"repositories": [raw]}).repositories[0]

    def compare_url(self, repo: RepositoryConfig, base: str, head: str) -> str:
        return f"{repo.api_url}/repos/{repo.name}/compare/{base}...{head}"

    def repo_url(self, repo: RepositoryConfig) -> str:
        return f"{repo.api_url}/repos/{repo.name}"

    def commit_url(self, repo: RepositoryConfig, commit_sha: str) -> str:
        return f"{repo.api_url}/repos/{repo.name}/commits/{commit_sha}"

    def requests_to(self, path_part: str) -> list[Any]:
        return [c.request for c in self.api.calls if path_part in urlsplit(c.request.url).path]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A provider wired to ``responses``; afterwards every call is checked for a timeout and
    for going only to a configured API host."""
    monkeypatch.setenv("TEST_GITHUB_WEBHOOK_SECRET", "webhook-secret-for-tests")
    monkeypatch.setenv("TEST_GITHUB_TOKEN", TOKEN)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as api:
        w = World(api, monkeypatch)
        yield w
        for call in api.calls:
            timeout = sent_timeout(call)
            parts = timeout if isinstance(timeout, tuple) else (timeout,)
            assert parts and all(isinstance(t, int | float) and t > 0 for t in parts), \
                f"{call.request.url} was sent without a timeout"
            assert urlsplit(call.request.url).netloc in w.hosts


# --- recorded answers ------------------------------------------------------------------


def register_recorded(world: World, repo: RepositoryConfig, exchange: dict[str, Any],
                      base: str, head: str) -> None:
    """Serve one recorded exchange, with its real headers, for the provider's first page."""
    headers = {k: v for k, v in exchange["response_headers"].items()
               if k.lower() not in WIRE_HEADERS}
    # the recording's query (page=1, per_page=3 or 4) differs from the provider's, so the
    # path is matched as recorded and the query as the provider sends it
    world.api.add(responses.GET, world.compare_url(repo, base, head), json=exchange["body"],
                  status=exchange["status"], headers=headers, match=[
                      matchers.query_param_matcher(FIRST_PAGE)])


@pytest.mark.parametrize("api_url", API_URLS)
@pytest.mark.parametrize(("fixture", "count", "sample"), [
    ("pygithub-replay-testCompare.json", 4, "github/Requester.py"),
    ("pygithub-replay-testCompareCommitPagination.json", 228, ".github/workflows/ci.yml"),
    # its recorded Link says rel="next": with fewer than 300 files page 1 is still complete
    ("pygithub-replay-testCompareCommitsPerPage.json", 4, "setup.py"),
])
def test_recorded_compare_lists_every_file_in_one_call(world: World, api_url: str, fixture: str,
                                                       count: int, sample: str) -> None:
    exchange = next(e for e in recording(fixture) if "/compare/" in e["path"])
    base, head = exchange["path"].split("?")[0].rsplit("/", 1)[1].split("...")
    repo = world.repo(name="PyGithub/PyGithub", api_url=api_url)
    register_recorded(world, repo, exchange, base, head)

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths is not None and len(diff.paths) == count
    assert diff.paths == frozenset(f["filename"] for f in exchange["body"]["files"])
    assert sample in diff.paths
    assert (diff.status, diff.reason, diff.contained) == ("ahead", None, False)
    assert diff.api_calls == 1 and len(world.api.calls) == 1
    assert world.sleeps == []


def test_rename_counts_both_the_previous_and_the_new_path(world: World) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    body = compare_body("ahead", ["README.md", "svc/a/main.py"])
    body["files"][1].update(status="renamed", previous_filename="svc/old/main.py")
    world.api.add(responses.GET, world.compare_url(repo, base, head), json=body, match=page(1))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths == frozenset({"README.md", "svc/a/main.py", "svc/old/main.py"})


# --- one call when it suffices ---------------------------------------------------------


@pytest.mark.parametrize("status", ["identical", "behind"])
def test_head_contained_in_base_needs_one_call_and_no_paths(world: World, status: str) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head),
                  json=compare_body(status, [], commits=[]), match=page(1))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.contained
    assert (diff.status, diff.paths, diff.reason) == (status, frozenset(), None)
    assert diff.api_calls == 1 and len(world.api.calls) == 1


@pytest.mark.parametrize("count", [1, 299])
def test_ahead_under_the_file_cap_needs_exactly_one_call(world: World, count: int) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    files = [f"svc/{i:03d}/main.py" for i in range(count)]
    world.api.add(responses.GET, world.compare_url(repo, base, head),
                  json=compare_body("ahead", files), match=page(1))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths == frozenset(files) and not diff.contained
    assert diff.api_calls == 1 and len(world.api.calls) == 1


# --- force push ------------------------------------------------------------------------


@pytest.mark.parametrize("api_url", API_URLS)
def test_diverged_head_unions_both_compare_directions(world: World, api_url: str) -> None:
    repo = world.repo(api_url=api_url)
    base, head = sha("deployed"), sha("force-pushed")
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("diverged", ["new/only-in-head.py", "shared.py"]))
    world.api.add(responses.GET, world.compare_url(repo, head, base), match=page(1),
                  json=compare_body("diverged", ["dropped/only-in-base.py", "shared.py"]))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.status == "diverged" and not diff.contained
    assert diff.paths == frozenset({"new/only-in-head.py", "dropped/only-in-base.py",
                                  "shared.py"})
    assert diff.api_calls == 2 and len(world.api.calls) == 2


def test_diverged_head_whose_reverse_compare_is_gone_is_incomplete(world: World) -> None:
    repo = world.repo()
    base, head = sha("deployed"), sha("force-pushed")
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("diverged", ["new/only-in-head.py"]))
    world.api.add(responses.GET, world.compare_url(repo, head, base), match=page(1),
                  status=404, json={"message": "Not Found"})

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths is None and diff.reason is not None and "404" in diff.reason


# --- the 300-file cap: walking the commits ---------------------------------------------


def register_commit(world: World, repo: RepositoryConfig, commit_sha: str,
                    files: list[str]) -> None:
    """Serve a commit's file list 100 per page, linking each full page to the next."""
    url = world.commit_url(repo, commit_sha)
    pages = [files[i:i + 100] for i in range(0, len(files), 100)] or [[]]
    for number, chunk in enumerate(pages, start=1):
        headers = link_next(url, number + 1) if number < len(pages) else {}
        world.api.add(responses.GET, url, json=commit_body(commit_sha, chunk), headers=headers,
                      match=page(number))


def test_compare_at_the_file_cap_walks_every_commits_own_files(world: World) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    commits = [sha(f"commit-{i}") for i in range(120)]
    touched = {c: [f"svc/{i:03d}/main.py", f"svc/{i:03d}/test_main.py"]
               for i, c in enumerate(commits)}
    # one commit touches more files than one page of its own list holds
    touched[commits[7]] = [f"vendor/lib/{j:03d}.py" for j in range(130)]
    everything = set().union(*touched.values())
    url = world.compare_url(repo, base, head)
    world.api.add(responses.GET, url, match=page(1), headers=link_next(url, 2),
                  json=compare_body("ahead", sorted(everything)[:300], commits=commits[:100],
                                    total_commits=len(commits)))
    world.api.add(responses.GET, url, match=page(2),
                  json=compare_body("ahead", [], commits=commits[100:],
                                    total_commits=len(commits), with_files=False))
    for c in commits:
        register_commit(world, repo, c, touched[c])

    diff = world.provider.changed_files(repo, base, head)

    assert len(everything) > 300
    assert diff.paths == frozenset(everything) and diff.reason is None
    assert diff.api_calls == 2 + len(commits) + 1 == len(world.api.calls)
    assert {c for c in commits} == {
        urlsplit(r.url).path.rsplit("/", 1)[1] for r in world.requests_to("/commits/")}


@pytest.mark.parametrize(("total_commits", "complete"), [(3, True), (4, False)])
def test_file_cap_walk_stops_beyond_max_compare_commits(world: World, total_commits: int,
                                                        complete: bool) -> None:
    repo = world.repo(max_compare_commits=3)
    base, head = sha("base"), sha("head")
    commits = [sha(f"commit-{i}") for i in range(total_commits)]
    files = [f"mod/{i:03d}.py" for i in range(300)]
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("ahead", files, commits=commits))
    if complete:
        for i, c in enumerate(commits):
            register_commit(world, repo, c, files[i::total_commits])

    diff = world.provider.changed_files(repo, base, head)

    if complete:
        assert diff.paths == frozenset(files) and diff.api_calls == 1 + total_commits
    else:
        assert diff.paths is None and diff.api_calls == 1
        assert diff.reason is not None and "max_compare_commits" in diff.reason


@pytest.mark.parametrize(("big_commit_files", "complete"), [(2999, True), (3000, False)])
def test_a_commit_listing_3000_files_makes_the_diff_incomplete(
        world: World, big_commit_files: int, complete: bool) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    small, big = sha("small-commit"), sha("big-commit")
    big_files = [f"generated/{j:04d}.json" for j in range(big_commit_files)]
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("ahead", big_files[:300], commits=[small, big]))
    register_commit(world, repo, small, ["README.md"])
    register_commit(world, repo, big, big_files)

    diff = world.provider.changed_files(repo, base, head)

    if complete:
        assert diff.paths == frozenset({"README.md", *big_files})
    else:
        assert diff.paths is None
        assert diff.reason is not None and big[:12] in diff.reason and "3000" in diff.reason


def test_a_vanished_commit_during_the_walk_makes_the_diff_incomplete(world: World) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    gone = sha("gone")
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("ahead", [f"m/{i}" for i in range(300)], commits=[gone]))
    world.api.add(responses.GET, world.commit_url(repo, gone), match=page(1), status=404,
                  json={"message": "No commit found for SHA"})

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths is None and diff.reason is not None and gone[:12] in diff.reason


# --- missing commits -------------------------------------------------------------------


@pytest.mark.parametrize("api_url", API_URLS)
def test_vanished_baseline_gives_an_incomplete_diff_not_an_exception(world: World,
                                                                     api_url: str) -> None:
    repo = world.repo(api_url=api_url)
    base, head = sha("garbage-collected"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  status=404, json={"message": "Not Found",
                                    "documentation_url": "https://docs.github.com/rest"})

    world.api.add(responses.GET, world.repo_url(repo), json={"full_name": repo.name})

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths is None and not diff.contained
    assert diff.reason is not None and "404" in diff.reason
    # the compare's 404, then the repository's 200: it is the commit that is gone
    assert diff.api_calls == 2 and world.sleeps == []


# --- a repository the token cannot read ----------------------------------------------


@pytest.mark.parametrize("api_url", API_URLS)
@pytest.mark.parametrize(("compare", "repository", "message"), [
    pytest.param(404, 404, "the token cannot read acme/private, or it does not exist "
                 "(HTTP 404)", id="private-repository-not-visible"),
    pytest.param(403, None, "the token lacks the permission to read acme/private (HTTP 403)",
                 id="compare-forbidden"),
    pytest.param(401, None, "the token is not accepted (missing, wrong, expired or revoked), "
                 "so acme/private cannot be read (HTTP 401)", id="token-refused"),
    pytest.param(301, None, "acme/private has moved (renamed or transferred): configure its "
                 "new name (HTTP 301)", id="repository-renamed"),
    pytest.param(404, 403, "the token lacks the permission to read acme/private (HTTP 403)",
                 id="repository-forbidden"),
])
def test_a_repository_the_token_cannot_read_raises_repository_unreadable(
        world: World, api_url: str, compare: int, repository: int | None,
        message: str) -> None:
    repo = world.repo(name="acme/private", api_url=api_url)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), status=compare,
                  json={"message": "Not Found"})
    if repository is not None:
        world.api.add(responses.GET, world.repo_url(repo), status=repository,
                      json={"message": "Not Found"})

    with pytest.raises(RepositoryUnreadable) as caught:
        world.provider.changed_files(repo, base, head)

    assert str(caught.value) == message
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.args)
    assert len(world.api.calls) == (1 if repository is None else 2) and world.sleeps == []


def test_check_access_reads_the_repository_with_the_token(world: World) -> None:
    repo = world.repo()
    world.api.add(responses.GET, world.repo_url(repo), json={"full_name": repo.name})

    world.provider.check_access(repo)

    (request,) = world.requests_to("/repos/")
    assert urlsplit(request.url).path == "/repos/acme/mono"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_check_access_says_why_a_repository_cannot_be_read(world: World) -> None:
    repo = world.repo(name="acme/private")
    world.api.add(responses.GET, world.repo_url(repo), status=404, json={"message": "Not Found"})

    with pytest.raises(RepositoryUnreadable) as caught:
        world.provider.check_access(repo)

    assert caught.value.cause == "the token cannot read it, or it does not exist (HTTP 404)"
    assert caught.value.repository == "acme/private"


# --- rate limits, errors, timeouts -----------------------------------------------------


def rate_limit_repo(world: World) -> RepositoryConfig:
    return world.repo(max_rate_limit_wait_seconds=30)


@pytest.mark.parametrize(("status", "headers", "expected_wait"), [
    pytest.param(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 10)},
                 10.0, id="primary-403-reset-in-10s"),
    pytest.param(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 30)},
                 30.0, id="primary-403-reset-exactly-at-budget"),
    pytest.param(429, {"Retry-After": "3"}, 3.0, id="429-retry-after"),
    pytest.param(403, {"Retry-After": "3"}, 3.0, id="secondary-403-retry-after"),
])
def test_waits_out_a_rate_limit_then_succeeds(world: World, status: int,
                                              headers: dict[str, str],
                                              expected_wait: float) -> None:
    repo = rate_limit_repo(world)
    base, head = sha("base"), sha("head")
    url = world.compare_url(repo, base, head)
    world.api.add(responses.GET, url, status=status, headers=headers,
                  json={"message": "API rate limit exceeded"})
    world.api.add(responses.GET, url, json=compare_body("ahead", ["a.py"]), match=page(1))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths == frozenset({"a.py"})
    assert world.sleeps == [pytest.approx(expected_wait, abs=1.0)]
    assert len(world.api.calls) == 2


@pytest.mark.parametrize(("status", "headers"), [
    pytest.param(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 31)},
                 id="reset-one-second-past-budget"),
    pytest.param(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 3600)},
                 id="reset-in-an-hour"),
    pytest.param(429, {"Retry-After": "31"}, id="retry-after-past-budget"),
])
def test_rate_limit_beyond_the_wait_budget_raises_without_sleeping(
        world: World, status: int, headers: dict[str, str]) -> None:
    repo = rate_limit_repo(world)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), status=status,
                  headers=headers, json={"message": "API rate limit exceeded"})

    with pytest.raises(ProviderError, match="rate limited") as caught:
        world.provider.changed_files(repo, base, head)

    assert not isinstance(caught.value, RepositoryUnreadable)

    assert world.sleeps == [] and len(world.api.calls) == 1


def test_rate_limited_on_every_attempt_raises_naming_the_status(world: World) -> None:
    repo = rate_limit_repo(world)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), status=403,
                  headers={"X-RateLimit-Remaining": "0",
                           "X-RateLimit-Reset": str(int(NOW) + 5)},
                  json={"message": "API rate limit exceeded"})

    with pytest.raises(ProviderError, match="HTTP 403") as caught:
        world.provider.changed_files(repo, base, head)

    # a rate limit says nothing about access: the repository is not called unreadable
    assert not isinstance(caught.value, RepositoryUnreadable)
    assert len(world.api.calls) == 3
    # no wait after the last attempt: nothing would use it
    assert world.sleeps == [pytest.approx(5.0, abs=1.0)] * 2


def test_forbidden_without_an_exhausted_rate_limit_fails_at_once(world: World) -> None:
    repo = rate_limit_repo(world)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), status=403,
                  headers={"X-RateLimit-Remaining": "4999",
                           "X-RateLimit-Reset": str(int(NOW) + 10)},
                  json={"message": "Resource not accessible by integration"})

    with pytest.raises(RepositoryUnreadable, match="403"):
        world.provider.changed_files(repo, base, head)

    assert world.sleeps == [] and len(world.api.calls) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_growing_back_off(world: World, status: int) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    url = world.compare_url(repo, base, head)
    world.api.add(responses.GET, url, status=status, json={"message": "Server Error"})
    world.api.add(responses.GET, url, status=status, json={"message": "Server Error"})
    world.api.add(responses.GET, url, json=compare_body("ahead", ["a.py"]), match=page(1))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths == frozenset({"a.py"}) and len(world.api.calls) == 3
    assert len(world.sleeps) == 2 and 0 < world.sleeps[0] < world.sleeps[1]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_on_every_attempt_raise_provider_error(world: World, status: int) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), status=status,
                  json={"message": "Server Error"})

    with pytest.raises(ProviderError, match=str(status)) as caught:
        world.provider.changed_files(repo, base, head)

    assert len(world.api.calls) == 3
    assert TOKEN not in str(caught.value) and "api.github.com" not in str(caught.value)


TRANSPORT_FAILURES = [requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout,
                      requests.exceptions.ConnectionError]


@pytest.mark.parametrize("failure", TRANSPORT_FAILURES)
def test_a_transport_failure_is_retried(world: World, failure: type[Exception]) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    url = world.compare_url(repo, base, head)
    world.api.add(responses.GET, url, body=failure("simulated"))
    world.api.add(responses.GET, url, json=compare_body("ahead", ["a.py"]), match=page(1))

    diff = world.provider.changed_files(repo, base, head)

    assert diff.paths == frozenset({"a.py"}) and len(world.api.calls) == 2 and len(world.sleeps) == 1


@pytest.mark.parametrize("failure", TRANSPORT_FAILURES)
def test_a_transport_failure_on_every_attempt_raises_provider_error(
        world: World, failure: type[Exception]) -> None:
    repo = world.repo()
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), body=failure("simulated"))

    with pytest.raises(ProviderError, match=failure.__name__):
        world.provider.changed_files(repo, base, head)

    assert len(world.api.calls) == 3


@pytest.mark.parametrize("seconds", [7.0, 30.0])
def test_every_request_carries_the_configured_timeout(world: World, seconds: float) -> None:
    repo = world.repo(request_timeout_seconds=seconds)
    base, head = sha("base"), sha("head")
    url = world.compare_url(repo, base, head)
    world.api.add(responses.GET, url, status=500, json={"message": "Server Error"})
    world.api.add(responses.GET, url, json=compare_body("ahead", ["a.py"]), match=page(1))

    world.provider.changed_files(repo, base, head)

    timeouts = [sent_timeout(c) for c in world.api.calls]
    assert len(timeouts) == 2
    for connect, read in timeouts:
        assert 0 < connect <= seconds and read == seconds


# --- authentication with a token -------------------------------------------------------


def test_api_token_is_sent_as_a_bearer_token(world: World) -> None:
    repo = world.repo(token=True)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("ahead", ["a.py"]))

    world.provider.changed_files(repo, base, head)

    assert world.api.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_without_api_token_no_authorization_header_is_sent(world: World) -> None:
    repo = world.repo(token=False)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("ahead", ["a.py"]))

    world.provider.changed_files(repo, base, head)

    assert "Authorization" not in world.api.calls[0].request.headers


# --- GitHub App ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key standing in for the app's private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def app_key_file(app_key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
    # PKCS#1 PEM, the format GitHub hands out for app keys
    path = tmp_path / "app.private-key.pem"
    path.write_bytes(app_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return path


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_url(api_url: str) -> str:
    return f"{api_url}/app/installations/42/access_tokens"


def add_installation_token(world: World, api_url: str, token: str, expires_at: float) -> None:
    world.api.add(responses.POST, token_url(api_url), status=201, json={
        "token": token, "expires_at": iso(expires_at),
        "permissions": {"contents": "read", "metadata": "read"},
        "repository_selection": "selected"})


def app_repo(world: World, key_file: Path, api_url: str,
             issuer: tuple[str, int | str] = ("app_id", 12345)) -> RepositoryConfig:
    return world.repo(api_url=api_url, token=False, github_app={
        issuer[0]: issuer[1], "private_key": f"file:{key_file}", "installation_id": 42})


def bearer(request: Any) -> str:
    scheme, _, value = str(request.headers["Authorization"]).partition(" ")
    assert scheme == "Bearer"
    return value


@pytest.mark.parametrize("api_url", API_URLS)
@pytest.mark.parametrize(("issuer", "expected_iss"), [
    pytest.param(("app_id", 12345), "12345", id="app_id"),
    pytest.param(("client_id", "Iv23liTestClient"), "Iv23liTestClient", id="client_id"),
])
def test_installation_token_request_carries_an_rs256_app_jwt(
        world: World, app_key: rsa.RSAPrivateKey, app_key_file: Path, api_url: str,
        issuer: tuple[str, int | str], expected_iss: str) -> None:
    repo = app_repo(world, app_key_file, api_url, issuer)
    base, head = sha("base"), sha("head")
    add_installation_token(world, api_url, "ghs_installation_one", NOW + 3600)
    world.api.add(responses.GET, world.compare_url(repo, base, head), match=page(1),
                  json=compare_body("ahead", ["a.py"]))

    world.provider.changed_files(repo, base, head)

    (post,) = world.requests_to("/access_tokens")
    app_jwt = bearer(post)
    assert jwt.get_unverified_header(app_jwt)["alg"] == "RS256"
    # the fake clock is in the past, so expiry is checked against it below, not against now
    claims = jwt.decode(app_jwt, app_key.public_key(), algorithms=["RS256"],
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == expected_iss
    assert claims["iat"] == int(NOW) - 60
    assert NOW < claims["exp"] <= NOW + 600


@pytest.mark.parametrize("api_url", API_URLS)
def test_installation_token_is_the_bearer_for_compare_and_is_cached(
        world: World, app_key_file: Path, api_url: str) -> None:
    repo = app_repo(world, app_key_file, api_url)
    add_installation_token(world, api_url, "ghs_installation_one", NOW + 3600)
    for head in ("head-1", "head-2"):
        world.api.add(responses.GET, world.compare_url(repo, sha("base"), sha(head)),
                      match=page(1), json=compare_body("ahead", ["a.py"]))

    world.provider.changed_files(repo, sha("base"), sha("head-1"))
    world.clock.advance(60)
    world.provider.changed_files(repo, sha("base"), sha("head-2"))

    assert len(world.requests_to("/access_tokens")) == 1
    compares = world.requests_to("/compare/")
    assert [bearer(r) for r in compares] == ["ghs_installation_one"] * 2


@pytest.mark.parametrize(("seconds_left", "posts", "second_token"), [
    pytest.param(301, 1, "ghs_installation_one", id="more-than-5-minutes-left"),
    pytest.param(299, 2, "ghs_installation_two", id="within-5-minutes-of-expiry"),
])
def test_installation_token_is_renewed_within_five_minutes_of_expiry(
        world: World, app_key: rsa.RSAPrivateKey, app_key_file: Path, seconds_left: int,
        posts: int, second_token: str) -> None:
    repo = app_repo(world, app_key_file, GITHUB)
    expires_at = NOW + 3600
    add_installation_token(world, GITHUB, "ghs_installation_one", expires_at)
    if posts == 2:
        add_installation_token(world, GITHUB, "ghs_installation_two", expires_at + 3600)
    for head in ("head-1", "head-2"):
        world.api.add(responses.GET, world.compare_url(repo, sha("base"), sha(head)),
                      match=page(1), json=compare_body("ahead", ["a.py"]))

    world.provider.changed_files(repo, sha("base"), sha("head-1"))
    world.clock.now = expires_at - seconds_left
    world.provider.changed_files(repo, sha("base"), sha("head-2"))

    token_posts = world.requests_to("/access_tokens")
    assert len(token_posts) == posts
    assert [bearer(r) for r in world.requests_to("/compare/")] == \
        ["ghs_installation_one", second_token]
    # a renewal signs a fresh JWT at the moved clock
    renewed = jwt.decode(bearer(token_posts[-1]), app_key.public_key(), algorithms=["RS256"],
                         options={"verify_exp": False, "verify_iat": False})
    assert renewed["iat"] == int(world.clock.now if posts == 2 else NOW) - 60


@pytest.mark.parametrize(("second_answer", "succeeds"), [
    pytest.param(200, True, id="new-token-accepted"),
    pytest.param(401, False, id="new-token-refused-too"),
])
def test_a_refused_installation_token_is_replaced_once(
        world: World, app_key_file: Path, second_answer: int, succeeds: bool) -> None:
    repo = app_repo(world, app_key_file, GITHUB)
    base, head = sha("base"), sha("head")
    url = world.compare_url(repo, base, head)
    add_installation_token(world, GITHUB, "ghs_revoked", NOW + 3600)
    add_installation_token(world, GITHUB, "ghs_fresh", NOW + 3600)
    world.api.add(responses.GET, url, status=401, json={"message": "Bad credentials"})
    if succeeds:
        world.api.add(responses.GET, url, match=page(1), json=compare_body("ahead", ["a.py"]))
    else:
        world.api.add(responses.GET, url, status=second_answer,
                      json={"message": "Bad credentials"})

    if succeeds:
        assert world.provider.changed_files(repo, base, head).paths == frozenset({"a.py"})
    else:
        with pytest.raises(ProviderError, match="401"):
            world.provider.changed_files(repo, base, head)

    assert len(world.requests_to("/access_tokens")) == 2
    assert [bearer(r) for r in world.requests_to("/compare/")] == ["ghs_revoked", "ghs_fresh"]


def test_a_refused_api_token_fails_without_retrying(world: World) -> None:
    repo = world.repo(token=True)
    base, head = sha("base"), sha("head")
    world.api.add(responses.GET, world.compare_url(repo, base, head), status=401,
                  json={"message": "Bad credentials"})

    with pytest.raises(ProviderError, match="401") as caught:
        world.provider.changed_files(repo, base, head)

    assert len(world.api.calls) == 1 and world.sleeps == []
    assert TOKEN not in str(caught.value)


def test_refused_installation_token_raises_provider_error(world: World,
                                                          app_key_file: Path) -> None:
    repo = app_repo(world, app_key_file, GITHUB)
    world.api.add(responses.POST, token_url(GITHUB), status=401,
                  json={"message": "A JSON web token could not be decoded"})

    with pytest.raises(ProviderError, match="401"):
        world.provider.changed_files(repo, sha("base"), sha("head"))

    assert world.requests_to("/compare/") == []


# --- outbound safety -------------------------------------------------------------------


@pytest.mark.parametrize("api_url", API_URLS)
@pytest.mark.parametrize(("name", "repo_path"), [
    ("acme/mono", "/repos/acme/mono/"),
    ("acme/mono#fragment", "/repos/acme/mono%23fragment/"),
    ("acme/mono?per_page=1", "/repos/acme/mono%3Fper_page%3D1/"),
    ("user@evil.example/mono", "/repos/user%40evil.example/mono/"),
    ("acme/sub/mono", "/repos/acme/sub%2Fmono/"),
])
def test_requests_go_to_the_configured_host_with_quoted_owner_and_repo(
        world: World, api_url: str, name: str, repo_path: str) -> None:
    repo = world.repo(name=name, api_url=api_url)
    base, head = sha("base"), sha("head")
    seen: list[str] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append(str(request.url))
        return 200, {}, json.dumps(compare_body("ahead", ["a.py"]))

    # match any URL at all, so a request to a wrong host is answered and then caught
    world.api.add_callback(responses.GET, re.compile(r".*"), callback=answer)

    world.provider.changed_files(repo, base, head)

    (url,) = seen
    parts = urlsplit(url)
    configured = urlsplit(api_url)
    assert (parts.scheme, parts.netloc) == (configured.scheme, configured.netloc)
    assert parts.path == f"{configured.path}{repo_path}compare/{base}...{head}"
    assert parse_qs(parts.query) == {k: [v] for k, v in FIRST_PAGE.items()}
    assert parts.fragment == ""

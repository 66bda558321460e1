"""The reconciler in one process: its delivery ids, each provider's branch read over HTTP
(a local FakeAPI), and passes against a real SQLite store, processor and providers.

The end-to-end and replica suites (test_reconcile_e2e.py, test_reconcile_replicas.py) run
the same code under gunicorn; here each rule is checked on its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from providers import build_providers
from providers.base import _DELIVERY_ID, BranchHead
from receiver.config import Config, RepositoryConfig, parse
from receiver.errors import ProviderError
from receiver.events import Delivery, PushEvent
from receiver.launcher import LogLauncher
from receiver.logging import configure
from receiver.processor import Processor
from receiver.reconcile import Reconciler, delivery_id, literal_branches
from receiver.state.base import Head
from receiver.state.sqlite import SQLiteStore
from tests.harness import FakeAPI, Recorded
from tests.test_reconcile_e2e import PIPELINES, GitHub

A, B, C = "a" * 40, "b" * 40, "c" * 40
SHA256 = "d" * 64


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_SECRET", "s")
    monkeypatch.setenv("RECONCILE_TOKEN", "t")
    configure()


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


def repo_config(provider: str, name: str, api_url: str, **extra: Any) -> Config:
    return parse({"launcher": {"backend": "log"}, "repositories": [{
        "provider": provider, "name": name, "api_url": api_url,
        "webhook_secrets": ["env:RECONCILE_SECRET"], "api_token": "env:RECONCILE_TOKEN",
        "branches": ["main"], "pipelines": PIPELINES, **extra}]})


# --- delivery ids ----------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "repository", "branch", "head", "expected"), [
    ("github", "acme/mono", "main", A, f"reconcile:github:acme{{2f}}mono:main:{A}"),
    ("gitlab", "group/sub/project", "release/1.x", A,
     f"reconcile:gitlab:group{{2f}}sub{{2f}}project:release{{2f}}1.x:{A}"),
    ("bitbucket-server", "PRJ/repo", "feature_x-1", SHA256,
     f"reconcile:bitbucket-server:PRJ{{2f}}repo:feature_x-1:{SHA256}"),
    ("github", "acme/mono", "naïve{x}", A,
     f"reconcile:github:acme{{2f}}mono:na{{c3}}{{af}}ve{{7b}}x{{7d}}:{A}"),
])
def test_reconcile_delivery_ids_name_the_push_in_the_delivery_id_alphabet(
        provider: str, repository: str, branch: str, head: str, expected: str) -> None:
    got = delivery_id(provider, repository, branch, head)
    assert got == expected
    assert _DELIVERY_ID.fullmatch(got)


def test_a_long_branch_gets_a_128_character_id_that_still_tells_branches_apart() -> None:
    long = "feature/" + "x" * 150
    first = delivery_id("bitbucket-server", "PROJECT/repository", long, SHA256)
    second = delivery_id("bitbucket-server", "PROJECT/repository", long + "y", SHA256)
    assert len(first) == len(second) == 128
    assert first != second
    assert first == delivery_id("bitbucket-server", "PROJECT/repository", long, SHA256)
    assert all(_DELIVERY_ID.fullmatch(i) for i in (first, second))
    assert first.startswith("reconcile:bitbucket-server:PROJECT{2f}reposit{")
    assert first.endswith(f"}}:{SHA256}")
    # with a SHA-1 head and a shorter provider name, more of the names is kept
    short = delivery_id("github", "acme/mono", long, A)
    assert len(short) == 128
    assert short.startswith("reconcile:github:acme{2f}mono:feature{2f}xxxx")


def test_names_that_escape_alike_still_get_different_ids() -> None:
    ids = {delivery_id("github", "acme/mono", b, A)
           for b in ("feature/x", "feature{2f}x", "feature-x", "feature_x")}
    assert len(ids) == 4


def test_only_literal_watched_branch_names_are_read_without_a_known_head() -> None:
    cfg = repo_config("github", "acme/mono", "http://127.0.0.1:9",
                      branches=["main", "release/*", "hotfix-[0-9]", "legacy", "!legacy"])
    assert literal_branches(cfg.repositories[0]) == {"main"}


# --- each provider's branch read -------------------------------------------------------


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    return lambda rec: (status, body, headers or {})


def read(api: FakeAPI, provider: str, name: str, branch: str = "main",
         etag: str | None = None) -> BranchHead:
    repo = repo_config(provider, name, api.url, max_rate_limit_wait_seconds=0).repositories[0]
    return build_providers()[provider].branch_head(repo, branch, etag)


def test_github_sends_the_etag_and_a_304_is_not_modified(fake_api: FakeAPI) -> None:
    path = "/repos/acme/mono/branches/release%2F1.x"
    fake_api.routes[path] = lambda rec: (
        (304, None, {"ETag": '"e1"', "X-RateLimit-Remaining": "4999",
                     "X-RateLimit-Limit": "5000", "X-RateLimit-Reset": "1700000000"})
        if rec.headers.get("if-none-match") == '"e1"'
        else (200, {"name": "release/1.x", "commit": {"sha": A}}, {"ETag": '"e1"'}))
    first = read(fake_api, "github", "acme/mono", "release/1.x")
    assert (first.sha, first.etag, first.not_modified) == (A, '"e1"', False)
    again = read(fake_api, "github", "acme/mono", "release/1.x", etag='"e1"')
    assert again == BranchHead(None, '"e1"', True, 4999, 5000, 1700000000.0)
    assert not again.low_budget
    assert fake_api.requests[0].headers["authorization"] == "Bearer t"
    assert "if-none-match" not in fake_api.requests[0].headers


@pytest.mark.parametrize(("provider", "name", "path", "missing", "gone_repository"), [
    ("github", "acme/mono", "/repos/acme/mono/branches/main",
     {"message": "Branch not found"}, {"message": "Not Found"}),
    ("gitlab", "acme/mono", "/api/v4/projects/acme%2Fmono/repository/branches/main",
     {"message": "404 Branch Not Found"}, {"message": "404 Project Not Found"}),
    ("bitbucket", "acme/mono", "/2.0/repositories/acme/mono/refs/branches/main",
     {"type": "error", "error": {"message": "Branch \"main\" not found"}},
     {"type": "error", "error": {"message": "Repository acme/mono not found"}}),
    # Gitea's ctx.NotFound(err): the branch error in `errors`, none for the repository
    ("gitea", "acme/mono", "/api/v1/repos/acme/mono/branches/main",
     {"message": "The target couldn't be found.", "url": "https://gitea.example/api/swagger",
      "errors": ["branch does not exist [name: main]"]},
     {"message": "The target couldn't be found.", "url": "https://gitea.example/api/swagger",
      "errors": None}),
])
def test_a_missing_branch_has_no_head_but_a_missing_repository_is_an_error(
        fake_api: FakeAPI, provider: str, name: str, path: str, missing: Any,
        gone_repository: Any) -> None:
    fake_api.routes[path] = answer(404, missing)
    assert read(fake_api, provider, name).sha is None
    fake_api.routes[path] = answer(404, gone_repository)
    with pytest.raises(ProviderError, match="not found"):
        read(fake_api, provider, name)


@pytest.mark.parametrize(("provider", "path", "body"), [
    ("github", "/repos/acme/mono/branches/main", {"commit": {"sha": A}}),
    ("gitlab", "/api/v4/projects/acme%2Fmono/repository/branches/main", {"commit": {"id": A}}),
    ("bitbucket", "/2.0/repositories/acme/mono/refs/branches/main", {"target": {"hash": A}}),
    ("gitea", "/api/v1/repos/acme/mono/branches/main", {"commit": {"id": A}}),
])
@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_a_provider_error(fake_api: FakeAPI, provider: str, path: str,
                                             body: Any, status: int) -> None:
    fake_api.routes[path] = answer(200, body)
    assert read(fake_api, provider, "acme/mono").sha == A
    fake_api.routes[path] = answer(status, {"message": "Bad credentials"})
    with pytest.raises(ProviderError, match=f"HTTP {status}"):
        read(fake_api, provider, "acme/mono")


@pytest.mark.parametrize(("provider", "path", "body"), [
    ("github", "/repos/acme/mono/branches/main", {"commit": {"sha": "not-a-sha"}}),
    ("gitlab", "/api/v4/projects/acme%2Fmono/repository/branches/main", {"commit": {}}),
    ("bitbucket", "/2.0/repositories/acme/mono/refs/branches/main", ["not", "an", "object"]),
    ("gitea", "/api/v1/repos/acme/mono/branches/main", {"name": "main", "commit": None}),
])
def test_an_answer_without_a_commit_id_is_a_provider_error(
        fake_api: FakeAPI, provider: str, path: str, body: Any) -> None:
    fake_api.routes[path] = answer(200, body)
    with pytest.raises(ProviderError, match="no commit id"):
        read(fake_api, provider, "acme/mono")


@pytest.mark.parametrize(("provider", "path", "headers", "low"), [
    ("gitlab", "/api/v4/projects/acme%2Fmono/repository/branches/main",
     {"RateLimit-Limit": "2000", "RateLimit-Remaining": "150", "RateLimit-Reset": "17"}, True),
    ("gitlab", "/api/v4/projects/acme%2Fmono/repository/branches/main",
     {"RateLimit-Limit": "2000", "RateLimit-Remaining": "1500"}, False),
    ("bitbucket", "/2.0/repositories/acme/mono/refs/branches/main",
     {"X-RateLimit-Limit": "1000", "X-RateLimit-NearLimit": "true"}, True),
    ("bitbucket", "/2.0/repositories/acme/mono/refs/branches/main",
     {"X-RateLimit-Limit": "1000", "X-RateLimit-NearLimit": "false"}, False),
    ("bitbucket", "/2.0/repositories/acme/mono/refs/branches/main",
     {"X-RateLimit-Remaining": "12"}, True),  # no limit announced: the fixed floor
])
def test_the_rate_limit_budget_each_provider_announces_is_read(
        fake_api: FakeAPI, provider: str, path: str, headers: dict[str, str],
        low: bool) -> None:
    body = {"commit": {"id": A}} if provider == "gitlab" else {"target": {"hash": A}}
    fake_api.routes[path] = answer(200, body, headers)
    assert read(fake_api, provider, "acme/mono").low_budget is low


SERVER_BRANCHES = "/rest/api/latest/projects/PRJ/repos/mono/branches"


def server_pages(values: list[dict[str, Any]], size: int) -> Any:
    def route(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        start = int(rec.query["start"][0])
        page = values[start:start + size]
        last = start + size >= len(values)
        return 200, {"values": page, "start": start, "size": len(page), "isLastPage": last,
                     **({} if last else {"nextPageStart": start + size})}, {}
    return route


def test_data_center_takes_the_exact_display_id_among_substring_matches(
        fake_api: FakeAPI) -> None:
    values = [{"id": f"refs/heads/{n}", "displayId": n, "latestCommit": sha}
              for n, sha in [("main-old", A), ("domain", B), ("main", C)]]
    fake_api.routes[SERVER_BRANCHES] = server_pages(values, 2)
    assert read(fake_api, "bitbucket-server", "PRJ/mono").sha == C
    assert [r.query["filterText"] for r in fake_api.requests] == [["main"], ["main"]]
    assert [r.query["start"] for r in fake_api.requests] == [["0"], ["2"]]
    fake_api.routes[SERVER_BRANCHES] = server_pages(values[:2], 2)
    assert read(fake_api, "bitbucket-server", "PRJ/mono").sha is None
    fake_api.routes[SERVER_BRANCHES] = answer(404, {"errors": [{"message": "no repo"}]})
    with pytest.raises(ProviderError, match="not found"):
        read(fake_api, "bitbucket-server", "PRJ/mono")


# --- passes against a real store, processor and providers ------------------------------


class Setup:
    """A GitHub stand-in (tests.test_reconcile_e2e.GitHub), a SQLite store, the real
    providers and processor, and a Reconciler over a config of ``repositories``."""

    def __init__(self, tmp_path: Path, api: FakeAPI, **extra: Any) -> None:
        self.world = GitHub(api)
        self.config = repo_config("github", self.world.repository, api.url,
                                  **{"branches": [self.world.branch], **extra})
        self.repo: RepositoryConfig = self.config.repositories[0]
        self.store = SQLiteStore(str(tmp_path / "state.db"))
        self.store.init()
        self.providers = build_providers()
        self.notified = 0
        self.processor = Processor(self.config, self.store, LogLauncher(), self.providers)
        self.reconciler = Reconciler(self.config, self.store, self.providers, self.notify,
                                     "test:1:owner")

    def notify(self) -> None:
        self.notified += 1

    def drain(self) -> list[str]:
        """Process every pending delivery as the worker would; their ids in order."""
        done = []
        now = time.time()
        while (found := self.store.claim_delivery("w", 60, now)) is not None:
            self.processor.process(found)
            self.store.finish_delivery(found, "w", "processed", now)
            done.append(found.delivery_id)
        return done

    def webhook(self, before: str, after: str, delivery: str) -> None:
        event = PushEvent("github", self.world.repository, "branch", self.world.branch,
                          before, after)
        assert self.store.record_delivery(Delivery(delivery, "github", self.world.repository,
                                                   (event,), verified_by="env:S"), 2.0)


def test_a_webhook_waiting_to_be_processed_makes_the_reconciled_head_no_missed_push(
        tmp_path: Path, fake_api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    s = Setup(tmp_path, fake_api)
    s.reconciler.run(0.0)  # adopts the root
    root, c1 = s.world.push({"beta/b.py": "1"})
    s.webhook(root, c1, "webhook-1")  # recorded, not processed yet
    s.reconciler.run(1000.0)
    caught = delivery_id("github", s.world.repository, s.world.branch, c1)
    assert s.notified == 1
    assert s.drain() == ["webhook-1", caught]  # one ref: oldest first
    lines = log_lines(capsys)
    events = [e["event"] for e in lines if e["event"].startswith("reconcile.")]
    assert events == ["reconcile.adopted", "reconcile.pass", "reconcile.recorded",
                      "reconcile.pass", "reconcile.caught_up"]
    started = [(e["pipeline"], e["commit"], e["delivery_id"]) for e in lines
               if e["event"] == "pipeline.started"]
    assert started == [("beta-deploy", c1, "webhook-1")]
    assert s.store.history(delivery_id=caught) == []  # nothing was decided for it


def test_a_reconciled_delivery_is_a_push_from_the_last_known_head(
        tmp_path: Path, fake_api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    s = Setup(tmp_path, fake_api)
    s.reconciler.run(0.0)
    root, c1 = s.world.push({"alpha/a.py": "1"})
    _, c2 = s.world.push({"gamma/g.py": "1"})
    s.reconciler.run(1000.0)
    caught = delivery_id("github", s.world.repository, s.world.branch, c2)
    assert s.drain() == [caught]
    record = s.store.history(delivery_id=caught)[0]
    assert (record.before, record.head, record.ref) == (root, c2, s.world.branch)
    lines = log_lines(capsys)
    assert sorted(e["pipeline"] for e in lines if e["event"] == "pipeline.started") == \
        ["alpha-deploy", "gamma-deploy"]
    missed = [e for e in lines if e["event"] == "reconcile.missed"]
    assert [(e["head"], e["previous"], e["MissedPushes"]) for e in missed] == [(c2, root, 1)]
    assert s.store.heads(s.repo.key)[s.world.branch].sha == c2
    # a late webhook of the older push keeps the newer head known
    s.webhook(root, c1, "late-1")
    assert s.drain() == ["late-1"]
    assert s.store.heads(s.repo.key)[s.world.branch].sha == c2


def test_a_deleted_branch_is_forgotten_and_starts_nothing(
        tmp_path: Path, fake_api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    s = Setup(tmp_path, fake_api, branches=["main", "release/*"])
    s.store.note_head(s.repo.key, "release/1.x", A, None, 0.0)
    s.store.note_head(s.repo.key, "gone/unwatched", B, None, 0.0)
    s.world.heads = {"main": s.world.root}  # release/1.x does not exist
    s.reconciler.run(0.0)
    read = sorted(rec.path.rsplit("/", 1)[1] for rec, _ in s.world.answers)
    assert read == ["main", "release%2F1.x"]  # a head of an unwatched branch is not read
    assert s.store.heads(s.repo.key) == {"main": Head(s.world.root, f'"{s.world.root}"', 0.0),
                                         "gone/unwatched": Head(B, None, 0.0)}
    assert s.drain() == []
    events = [e["event"] for e in log_lines(capsys)]
    assert "reconcile.branch_gone" in events and "reconcile.recorded" not in events


def test_branches_with_baselines_are_read_too(tmp_path: Path, fake_api: FakeAPI) -> None:
    from receiver.state.base import Baseline

    s = Setup(tmp_path, fake_api, branches=["main", "release/*"])
    assert s.store.advance_baseline(Baseline(s.repo.key, "release/2.x", "alpha-deploy"), A, 0.0)
    s.world.heads = {"main": s.world.root, "release/2.x": s.world.root}
    s.reconciler.run(0.0)
    assert set(s.store.heads(s.repo.key)) == {"main", "release/2.x"}  # both adopted


def test_each_repository_is_reconciled_on_its_own_interval(
        tmp_path: Path, fake_api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    world = GitHub(fake_api)
    cfg = parse({"launcher": {"backend": "log"}, "repositories": [
        {"provider": "github", "name": world.repository, "api_url": fake_api.url,
         "webhook_secrets": ["env:RECONCILE_SECRET"], "branches": ["master"],
         "pipelines": PIPELINES, "reconcile_seconds": seconds}
        | ({"name": f"acme/r{seconds}"} if seconds != 10 else {})
        for seconds in (10, 30, 0)]})
    store = SQLiteStore(str(tmp_path / "state.db"))
    store.init()
    reconciler = Reconciler(cfg, store, build_providers(), lambda: None, "o")
    assert reconciler.interval == 10
    for now in (0.0, 10.0, 20.0, 30.0):
        reconciler.run(now)
    counted = [e["repositories"] for e in log_lines(capsys) if e["event"] == "reconcile.pass"]
    assert counted == [2, 1, 1, 2]


def test_a_failing_repository_does_not_stop_the_pass(
        tmp_path: Path, fake_api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    world = GitHub(fake_api)
    cfg = parse({"launcher": {"backend": "log"}, "repositories": [
        {"provider": "github", "name": name, "api_url": fake_api.url,
         "webhook_secrets": ["env:RECONCILE_SECRET"], "branches": ["master"],
         "pipelines": PIPELINES} for name in ("acme/a-unreadable", world.repository)]})
    store = SQLiteStore(str(tmp_path / "state.db"))
    store.init()
    Reconciler(cfg, store, build_providers(), lambda: None, "o").run(0.0)
    lines = log_lines(capsys)
    failed = [(e["repository"], e["branch"]) for e in lines if e["event"] == "reconcile.failed"]
    assert failed == [("acme/a-unreadable", "master")]
    assert [e["repository"] for e in lines if e["event"] == "reconcile.adopted"] == \
        [world.repository]

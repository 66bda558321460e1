"""The Gitea / Forgejo provider: signatures, delivery ids, normalization, the commits API.

Webhook tests run ``GiteaProvider`` directly over the recorded payloads in
tests/fixtures/gitea/ (Gitea's from go-scm, go-playground and woodpecker; Forgejo's from
packit and woodpecker); signatures are computed over the exact bytes handed to ``verify``.
The API is tests.gitea_api.GiteaAPI on 127.0.0.1 over a tests.gitmodel history, in the
shapes Gitea's API answers. Repositories are built through ``receiver.config.parse``;
``sleep`` is injected, so nothing waits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest

from providers.base import BranchHead
from providers.gitea import COMMITS_LIMIT, MAX_COMMIT_PAGES, GiteaProvider
from receiver import config
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError, RepositoryUnreadable, Unauthorized
from receiver.events import PushEvent
from receiver.secrets import SecretRef
from tests.gitea_api import GiteaAPI
from tests.harness import FakeAPI, Recorded, fixture_bytes

SECRET = "gitea-hook-secret-4b2e9c1d-must-never-be-logged"
ROTATED = "gitea-hook-secret-rotated-7f31a0c8"
TOKEN = "gitea-token-0123456789abcdef0123456789abcdef"
DELIVERY = "6f2d0c4e-8b1a-4d3f-9e7c-5a2b1c0d9e8f"
NAME = "gordon/hello-world"


def sign(body: bytes, secret: str = SECRET) -> str:
    """The hex HMAC-SHA256 Gitea sends in X-Gitea-Signature (no prefix)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def secrets(*values: str) -> list[SecretRef]:
    return [SecretRef(f"env:S{i}", (v,)) for i, v in enumerate(values)]


def headers(family: str = "gitea", event: str = "push", **extra: str) -> dict[str, str]:
    """The lower-case headers of one delivery from Gitea (``gitea``), a Forgejo that sends
    only its own names (``forgejo``) or one that sends both (``both``)."""
    names = {"gitea": ["x-gitea"], "forgejo": ["x-forgejo"],
             "both": ["x-forgejo", "x-gitea"]}[family]
    out = {"content-type": "application/json"}
    for prefix in names:
        out[f"{prefix}-event"] = event
        out[f"{prefix}-delivery"] = DELIVERY
    return {**out, **extra}


def signed(body: bytes, family: str = "gitea", secret: str = SECRET,
           event: str = "push") -> dict[str, str]:
    sig = sign(body, secret)
    prefixes = {"gitea": ["x-gitea"], "forgejo": ["x-forgejo"],
                "both": ["x-forgejo", "x-gitea"]}[family]
    return headers(family, event, **{f"{p}-signature": sig for p in prefixes})


# --- verification --------------------------------------------------------------------------

PUSH = "gitea/woodpecker-gitea-HookPush.json"


@dataclass(frozen=True)
class VerifyCase:
    family: str = "gitea"
    secret: str = SECRET
    configured: tuple[str, ...] = (SECRET,)
    tamper: bool = False
    drop_signature: bool = False
    override: dict[str, str] | None = None
    accepted: bool = True


VERIFY_CASES = {
    "a gitea signature by the configured secret is accepted": VerifyCase(),
    "a forgejo signature alone is accepted": VerifyCase(family="forgejo"),
    "both families carrying the same signature are accepted": VerifyCase(family="both"),
    "a signature by the rotated second secret is accepted": VerifyCase(
        secret=ROTATED, configured=(SECRET, ROTATED)),
    "a signature by another secret is refused": VerifyCase(secret="not-the-secret",
                                                           accepted=False),
    "a body changed after signing is refused": VerifyCase(tamper=True, accepted=False),
    "a delivery without a signature is refused": VerifyCase(drop_signature=True,
                                                            accepted=False),
    "a github-style sha256= prefix is refused": VerifyCase(
        override={"x-gitea-signature": "sha256=" + "0" * 57}, accepted=False),
    "a signature that is not hex is refused": VerifyCase(
        override={"x-gitea-signature": "z" * 64}, accepted=False),
    "two families that disagree are refused": VerifyCase(
        family="both", override={"x-gitea-signature": "0" * 64}, accepted=False),
}


@pytest.mark.parametrize("case", VERIFY_CASES.values(), ids=VERIFY_CASES.keys())
def test_verification(case: VerifyCase) -> None:
    body = fixture_bytes(PUSH)
    sent = signed(body, case.family, case.secret)
    if case.drop_signature:
        sent = {k: v for k, v in sent.items() if not k.endswith("-signature")}
    sent.update(case.override or {})
    delivered = body + b" " if case.tamper else body
    provider = GiteaProvider()
    configured = secrets(*case.configured)
    if case.accepted:
        assert provider.verify(sent, delivered, configured).values()[0] == case.secret
    else:
        with pytest.raises(Unauthorized):
            provider.verify(sent, delivered, configured)


def test_the_credential_headers_are_both_signature_headers() -> None:
    assert set(GiteaProvider.credential_headers) == {"x-gitea-signature", "x-forgejo-signature"}
    assert all(h == h.lower() for h in GiteaProvider.credential_headers)


# --- delivery ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gitea", "forgejo", "both"])
def test_the_delivery_id_is_read_from_either_family(family: str) -> None:
    assert GiteaProvider().delivery_id(headers(family)) == DELIVERY


@pytest.mark.parametrize(("sent", "message"), [
    ({}, "missing header X-Gitea-Delivery"),
    ({"x-gitea-delivery": "a b"}, "malformed X-Gitea-Delivery"),
    ({"x-gitea-delivery": DELIVERY, "x-forgejo-delivery": "other-id"}, "disagree"),
])
def test_a_missing_malformed_or_ambiguous_delivery_id_is_a_bad_request(
        sent: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        GiteaProvider().delivery_id(sent)


# --- normalization ---------------------------------------------------------------------------

A, B = "4b2626259b5a97b6b4eab5e6cca66adb986b672b", "ef98532add3b2feb7a137426bba1248724367df5"
PARSED: dict[str, tuple[str, str, PushEvent]] = {
    "gitea branch update": ("gitea/woodpecker-gitea-HookPush.json", "gitea", PushEvent(
        "gitea", NAME, "branch", "main", A, B)),
    "forgejo branch update": ("gitea/woodpecker-forgejo-HookPush.json", "forgejo", PushEvent(
        "gitea", NAME, "branch", "main", A, B)),
    "forgejo push of three commits": ("gitea/woodpecker-forgejo-HookPushMulti.json", "both",
                                      PushEvent("gitea", "Test-CI/multi-line-secrets", "branch",
                                                "main",
                                                "6efcf5b7c98f3e7a491675164b7a2e7acac27941",
                                                "29be01c073851cf0db0c6a466e396b725a670453")),
    "forgejo v10 push of one commit": (
        "gitea/packit-forgejo-push_with_one_commit.json", "forgejo", PushEvent(
            "gitea", "packit/test-repo-to-generate-events", "branch", "main",
            "b5827a36fbab61567da4376f7494a0e519d38a6e",
            "c85008a0b44a60370e48a45a9f9d39da5b472e11")),
    "gitea new branch": ("gitea/go-playground-push-event.json", "gitea", PushEvent(
        "gitea", "example/example", "branch", "master", None,
        "67b56589a45103f891bdee7c0546e5d40bc02001")),
    "codeberg branch created from an existing commit": (
        "gitea/woodpecker-gitea-HookPushBranch.json", "gitea", PushEvent(
            "gitea", "meisam/woodpecktester", "branch", "fdsafdsa", None,
            "28c3613ae62640216bea5e7dc71aa65356e4298b")),
    "gitea push without head_commit": ("gitea/go-scm-push.json", "gitea", PushEvent(
        "gitea", "gogits/hello-world", "branch", "master",
        "9836a96a253cce25d17988fcf41b8c4205cf779f", "4522cbcefc20728a5b72b3a86af35e608622c514")),
    # an annotated tag: `after` is the tag object, head_commit.id the commit
    "forgejo annotated tag takes its commit": ("gitea/packit-forgejo-tag_push.json", "forgejo",
                                               PushEvent(
        "gitea", "packit/test-repo-to-generate-events", "tag", "fifth", None,
        "b8a8746d7b91bcff18e9f59a9a1b440089fc2dd5")),
}


@pytest.mark.parametrize(("fixture", "family", "expected"), PARSED.values(), ids=PARSED.keys())
def test_each_recorded_push_is_normalized(fixture: str, family: str,
                                          expected: PushEvent) -> None:
    provider = GiteaProvider()
    provider.name = "gitea"
    assert provider.parse(headers(family), fixture_bytes(fixture)) == (expected,)


@pytest.mark.parametrize(("fixture", "event", "reason"), [
    ("gitea/go-scm-branch_delete.json", "delete", "unsupported event type 'delete'"),
    ("gitea/go-scm-pull_request_opened.json", "pull_request",
     "unsupported event type 'pull_request'"),
])
def test_other_event_types_are_ignored(fixture: str, event: str, reason: str) -> None:
    with pytest.raises(Ignored, match=reason):
        GiteaProvider().parse(headers(event=event), fixture_bytes(fixture))


def test_event_headers_that_disagree_are_a_bad_request() -> None:
    sent = {**headers("both"), "x-gitea-event": "delete"}
    with pytest.raises(BadRequest, match="disagree"):
        GiteaProvider().parse(sent, fixture_bytes(PUSH))


@pytest.mark.parametrize(("change", "message"), [
    ({"repository": {"full_name": "no-slash"}}, "repository.full_name"),
    ({"repository": {"full_name": "a/b/c"}}, "repository.full_name"),
    ({"after": "not-a-sha"}, "after is not a commit id"),
    ({"before": "0" * 40, "after": "0" * 40}, "cannot both be empty"),
])
def test_a_malformed_push_is_a_bad_request(change: dict[str, Any], message: str) -> None:
    doc = json.loads(fixture_bytes(PUSH))
    doc.update(change)
    with pytest.raises(BadRequest, match=message):
        GiteaProvider().parse(headers(), json.dumps(doc).encode())


def test_a_push_without_an_event_header_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="X-Gitea-Event"):
        GiteaProvider().parse({"content-type": "application/json"}, fixture_bytes(PUSH))


# --- the commits API -------------------------------------------------------------------------


class World:
    """GiteaAPI over a history on main: root, then the commits a test adds."""

    def __init__(self, api: FakeAPI, max_limit: int = 50) -> None:
        self.api = api
        self.gitea = GiteaAPI(api, NAME, TOKEN, max_limit=max_limit)
        self.git = self.gitea.git
        self.root = self.git.commit(None, {"alpha/a.py": "0", "beta/b.py": "0"})
        self.sleeps: list[float] = []

    def provider(self) -> GiteaProvider:
        return GiteaProvider(sleep=self.sleeps.append)

    def repo(self, **extra: Any) -> RepositoryConfig:
        return repository(self.api.url + "/api/v1", **extra)

    def line(self, parent: str, count: int, path: str = "docs/notes.md") -> str:
        """``count`` commits on ``parent``, each changing ``path``: the last one's sha."""
        head = parent
        for i in range(count):
            head = self.git.commit(head, {path: f"{head}:{i}"})
        return head

    def listings(self) -> list[tuple[str, str, str]]:
        """(sha, not, page) of every commits page read."""
        return [(r.query["sha"][0][:8], r.query["not"][0][:8], r.query["page"][0])
                for r in self.api.requests if r.path.endswith("/commits")]


def repository(api_url: str, **extra: Any) -> RepositoryConfig:
    import os

    os.environ["TEST_GITEA_SECRET"] = SECRET
    os.environ["TEST_GITEA_TOKEN"] = TOKEN
    raw = {"provider": "gitea", "name": NAME, "api_url": api_url,
           "webhook_secrets": ["env:TEST_GITEA_SECRET"], "api_token": "env:TEST_GITEA_TOKEN",
           "branches": ["main"], "pipelines": [{"name": "p", "paths": ["**"]}], **extra}
    return config.parse({"repositories": [raw]}).repositories[0]


@pytest.fixture
def world(fake_api: FakeAPI) -> World:
    return World(fake_api)


def test_an_ordinary_push_costs_a_base_lookup_and_one_page(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1", "gamma/new.py": "1"})

    diff = world.provider().changed_files(world.repo(), world.root, head)

    assert (diff.status, diff.paths, diff.reason) == (
        "ahead", frozenset({"alpha/a.py", "gamma/new.py"}), None)
    assert diff.api_calls == 2
    paths = [r.path.rsplit("/", 2)[-2:] for r in world.api.requests]
    assert paths == [["commits", world.root], ["hello-world", "commits"]]
    assert {r.headers["authorization"] for r in world.api.requests} == {f"token {TOKEN}"}
    listing = world.api.requests[1].query
    assert (listing["sha"], listing["not"], listing["files"], listing["limit"]) == (
        [head], [world.root], ["true"], [str(COMMITS_LIMIT)])


@pytest.mark.parametrize("max_limit", [50, 20])
def test_files_of_commits_past_the_first_page_are_counted(fake_api: FakeAPI,
                                                          max_limit: int) -> None:
    world = World(fake_api, max_limit=max_limit)
    # the oldest commit of the push (on the last page) is the only one touching beta/
    first = world.git.commit(world.root, {"beta/b.py": "changed"})
    head = world.line(first, 119)

    diff = world.provider().changed_files(world.repo(), world.root, head)

    assert diff.paths == frozenset({"beta/b.py", "docs/notes.md"})
    assert diff.status == "ahead"
    pages = -(-120 // max_limit)
    assert [p for _, _, p in world.listings()] == [str(i) for i in range(1, pages + 1)]
    assert diff.api_calls == 1 + pages


def test_a_head_already_in_the_base_is_behind_after_one_empty_page(world: World) -> None:
    newer = world.git.commit(world.root, {"alpha/a.py": "1"})
    diff = world.provider().changed_files(world.repo(), newer, world.root)
    assert (diff.status, diff.paths, diff.api_calls) == ("behind", frozenset(), 2)


def test_identical_commits_cost_no_call(world: World) -> None:
    diff = world.provider().changed_files(world.repo(), world.root, world.root)
    assert (diff.status, diff.paths, diff.api_calls) == ("identical", frozenset(), 0)
    assert world.api.requests == []


def test_a_force_push_counts_the_files_of_the_commits_it_dropped(world: World) -> None:
    dropped = world.git.commit(world.root, {"alpha/a.py": "dropped"})
    rewritten = world.git.commit(world.root, {"beta/b.py": "rewritten"})

    diff = world.provider().changed_files(world.repo(), dropped, rewritten)

    assert (diff.status, diff.paths) == ("diverged", frozenset({"alpha/a.py", "beta/b.py"}))
    assert [(s, n) for s, n, _ in world.listings()] == [
        (rewritten[:8], dropped[:8]), (dropped[:8], rewritten[:8])]


def test_a_rename_counts_its_old_and_new_path(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": None, "gamma/a.py": "0"})
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths == frozenset({"alpha/a.py", "gamma/a.py"})


def test_a_baseline_that_is_gone_is_incomplete_not_an_error(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    diff = world.provider().changed_files(world.repo(), "f" * 40, head)
    assert (diff.status, diff.paths) == ("diverged", None)
    assert diff.reason is not None and "is gone" in diff.reason
    # the one extra call tells a gone commit from a repository the token cannot see
    assert world.api.requests[-1].path == f"/api/v1/repos/{NAME}"


def test_a_repository_the_token_cannot_see_is_unreadable(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    world.gitea.readable = False
    with pytest.raises(RepositoryUnreadable, match="HTTP 404"):
        world.provider().changed_files(world.repo(), world.root, head)


def test_a_refused_token_is_unreadable_and_not_retried(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    repo = dataclasses.replace(world.repo(), api_token=SecretRef("env:X", ("wrong",)))
    with pytest.raises(RepositoryUnreadable, match="HTTP 401"):
        world.provider().changed_files(repo, world.root, head)
    assert len(world.api.requests) == 1


def test_a_server_that_ignores_not_is_incomplete(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    world.gitea.honour_not = False
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is None
    assert diff.reason is not None and "`not`" in diff.reason


def test_a_listing_past_the_page_cap_is_incomplete_without_reading_it(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    real = world.gitea.commits

    def announcing(q: dict[str, str]) -> Any:
        status, body, sent = real(q)
        return status, body, {**sent, "X-Total-Count": str(MAX_COMMIT_PAGES * 50 + 1)}

    world.gitea.commits = announcing  # type: ignore[method-assign]
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is None and diff.reason is not None
    assert "more than" in diff.reason
    assert len(world.listings()) == 1


def test_a_server_that_always_says_more_is_read_only_to_the_page_cap(world: World) -> None:
    # hostile: every page is the same non-empty page and says another follows
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    page = [world.gitea.commit_json(head)]
    for i in range(3):
        page.append({**world.gitea.commit_json(head), "sha": f"{i:040d}"})

    def endless(rec: Recorded) -> Any:
        if rec.path.endswith("/commits"):
            n = int(rec.query["page"][0])
            return 200, [{**c, "sha": f"{n:032d}{j:08d}"} for j, c in enumerate(page)], {
                "X-HasMore": "true"}
        return world.gitea.route(rec)

    world.api.routes = type(world.api.routes)(endless)
    started = time.monotonic()
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is None
    assert diff.reason == f"commits needed more than {MAX_COMMIT_PAGES} pages"
    assert len(world.listings()) == MAX_COMMIT_PAGES
    assert time.monotonic() - started < 60  # orders of magnitude above the ~1 s it takes


def test_a_commit_listed_without_files_is_incomplete(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})

    def no_files(rec: Recorded) -> Any:
        if rec.path.endswith("/commits"):
            return 200, [world.gitea.commit_json(head, files=False)], {"X-HasMore": "false"}
        return world.gitea.route(rec)

    world.api.routes = type(world.api.routes)(no_files)
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is None and diff.reason is not None
    assert "without its files" in diff.reason


def test_a_listing_that_ends_short_of_its_announced_total_is_incomplete(world: World) -> None:
    head = world.line(world.root, 3)

    def short(rec: Recorded) -> Any:
        answer = world.gitea.route(rec)
        if rec.path.endswith("/commits") and answer is not None:
            return answer[0], answer[1][:1], {**answer[2], "X-HasMore": "false"}
        return answer

    world.api.routes = type(world.api.routes)(short)
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is None
    assert diff.reason == "commits listed 1 of the 3 it announced"


# --- branch heads, statuses, files, links ------------------------------------------------------


def test_a_branch_head_is_its_commit_id(world: World) -> None:
    world.gitea.heads["release/1.x"] = world.root
    head = world.provider().branch_head(world.repo(), "release/1.x", None)
    assert head == BranchHead(world.root)
    assert world.api.requests[0].path == f"/api/v1/repos/{NAME}/branches/release%2F1.x"


def test_a_missing_branch_has_no_head_but_a_hidden_repository_is_an_error(world: World) -> None:
    assert world.provider().branch_head(world.repo(), "gone", None).sha is None
    world.gitea.readable = False
    with pytest.raises(ProviderError, match="not found"):
        world.provider().branch_head(world.repo(), "gone", None)


def test_the_module_map_file_is_read_raw_at_the_commit(world: World) -> None:
    head = world.git.commit(world.root, {".webhook-receiver.yaml": "pipelines: []\n"})
    provider, repo = world.provider(), world.repo()
    assert provider.file_content(repo, ".webhook-receiver.yaml", head) == b"pipelines: []\n"
    assert provider.file_content(repo, ".webhook-receiver.yaml", world.root) is None


def test_api_url_may_be_given_with_or_without_api_v1(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    bare = world.provider().changed_files(repository(world.api.url), world.root, head)
    full = world.provider().changed_files(world.repo(), world.root, head)
    assert bare.paths == full.paths == frozenset({"alpha/a.py"})


def test_git_takes_the_token_as_the_basic_user_name() -> None:
    import base64

    repo = repository("https://git.example.com/api/v1")
    assert GiteaProvider().git_authorization(repo) == \
        "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()

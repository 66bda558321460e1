"""The Bitbucket Data Center provider: signatures, delivery ids, normalization, compare client.

Webhook tests run ``BitbucketServerProvider`` directly over every recorded payload in
tests/fixtures/bitbucket-server/; signatures are computed over the exact bytes handed to
``verify``. The REST API is stood in for by ``responses``: the recorded ``commits`` page
(jenkins-api-commits-since-...json) is served as recorded, and ``changes`` pages (none was
recorded anywhere we looked) are built in the documented RestChange shape. Repositories
are built through ``receiver.config.parse``; ``sleep`` is injected, so nothing waits.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
from responses import matchers

from providers.bitbucket_server import CHANGES_CAP, BitbucketServerProvider
from receiver import config
from receiver.config import RepositoryConfig
from receiver.errors import (
    BadRequest,
    Ignored,
    ProviderError,
    RepositoryUnreadable,
    Unauthorized,
)
from receiver.events import PushEvent
from receiver.secrets import SecretRef
from tests.harness import FIXTURES, fixture_bytes

SERVER = FIXTURES / "bitbucket-server"
SECRET = "bbs-hook-secret-6a1f0c2e-must-never-be-logged"
OTHER_SECRET = "bbs-hook-secret-rotated-9d3b7e51"
JENKINS_SECRET = "Gkvl$k$wyNpQAF42"  # the secret of the upstream signed_payload test vector
REQUEST_ID = "3a1e5f2c-0b9d-4c6e-8f7a-2d4b6c8e0f13"
BASE_URL = "https://bitbucket.example.com"
TOKEN = "BBDC-test-token-0123456789abcdef"
RECORDED_COMMITS = "jenkins-api-commits-since-174561d-until-feature_diffstat.json"

# --- helpers -------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    """The ``X-Hub-Signature`` value Bitbucket Data Center sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_key_of(body: bytes) -> str:
    """The event key a fixture was delivered with (the ping body carries none)."""
    doc = json.loads(body)
    return str(doc.get("eventKey", "diagnostics:ping"))


def bbs_headers(event: str, body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    """Lower-case headers of a signed delivery of ``body``."""
    return {
        "content-type": "application/json; charset=UTF-8",
        "x-event-key": event,
        "x-request-id": REQUEST_ID,
        "x-hub-signature": sign(body, secret),
    }


def secret_ref(value: str = SECRET, ref: str = "env:BBS_SECRET") -> SecretRef:
    """A resolved secret reference holding ``value``."""
    return SecretRef(ref, (value,))


@pytest.fixture
def provider() -> BitbucketServerProvider:
    """A fresh provider; the webhook side never builds an API client."""
    return BitbucketServerProvider(sleep=lambda _s: None)


# --- 1. normalization of every recorded webhook body ---------------------------------------

AMUNIZ = "AMUNIZ/test-repos"
FB522 = "fb522a6f08c7c7df337312e4e65ec1b57710672e"

# Expected values read from each fixture file and written here literally.
PUSHES: dict[str, tuple[PushEvent, ...]] = {
    "jenkins-server-pushPayload.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="branch", ref_name="main",
        before="a8c13e8850dc60300be720019d1ffc1aa2fded87",
        after="9fdd7b96d3f5c276d0b9e0bf38c879eb112d889a", forced=False),),
    "jenkins-server-pushPayload_v10.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="branch",
        ref_name="feature/BB-1", before=None, after=FB522, forced=False),),
    "jenkins-server-branch_deleted.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="branch",
        ref_name="feature/BB-1", before=FB522, after=None, forced=False),),
    "jenkins-server-tag_created.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="tag", ref_name="simple-tag",
        before=None, after=FB522, forced=False),),
    # an annotated tag's toHash is the tag object, not the commit it points at
    "jenkins-server-annotated_tag_created.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="tag",
        ref_name="annotated-tag", before=None,
        after="118cc36527dd376b94de5b0e6424b1dfbd4717ff", forced=False),),
    "jenkins-server-tag_deleted.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="tag", ref_name="simple-tag",
        before=FB522, after=None, forced=False),),
    "jenkins-server-signed_payload.json": (PushEvent(
        provider="bitbucket-server", repository=AMUNIZ, ref_type="branch",
        ref_name="feature/BB-1", before=FB522, after=None, forced=False),),
    "go-playground-repo-refs-changed-delete.json": (PushEvent(
        provider="bitbucket-server", repository="~gopher/webhook-test", ref_type="branch",
        ref_name="feature/wip", before="32a0b8a740c2963c6f56bd8baf3dc05683d299e0", after=None,
        forced=False),),
}
PING = "jenkins-server-ping.json"
MIRROR = "jenkins-server-mirrorSynchronized.json"
WEBHOOK_FIXTURES = sorted([*PUSHES, PING, MIRROR])
SIGNED_PUSH = "jenkins-server-pushPayload.json"  # the delivery the negative cases start from


def test_every_bitbucket_server_fixture_has_a_row_in_the_tables() -> None:
    on_disk = sorted(p.name for p in SERVER.glob("*.json") if p.name != RECORDED_COMMITS)
    assert on_disk == WEBHOOK_FIXTURES


@pytest.mark.parametrize("name", sorted(PUSHES))
def test_normalizes_refs_changed_fixture_to_the_expected_events(
        provider: BitbucketServerProvider, name: str) -> None:
    body = fixture_bytes(f"bitbucket-server/{name}")
    headers = bbs_headers("repo:refs_changed", body)
    provider.preflight(headers)  # a push passes preflight untouched
    assert provider.parse(headers, body) == PUSHES[name]


def test_preflight_answers_the_unsigned_ping_ignored_and_builds_nothing(
        provider: BitbucketServerProvider) -> None:
    # the headers of the recorded ping: preflight decides before its body is read
    headers = {"content-type": "application/json", "x-event-key": "diagnostics:ping",
               "x-request-id": REQUEST_ID}
    with pytest.raises(Ignored) as info:
        provider.preflight(headers)
    assert info.value.reason == "ping event"
    assert len(provider._clients) == 0


def test_parse_also_ignores_a_ping_that_arrives_signed(provider: BitbucketServerProvider) -> None:
    body = fixture_bytes(f"bitbucket-server/{PING}")
    with pytest.raises(Ignored) as info:
        provider.parse(bbs_headers("diagnostics:ping", body), body)
    assert info.value.reason == "ping event"


def test_ignores_mirror_synchronized_as_a_repeat_of_the_upstream_push(
        provider: BitbucketServerProvider) -> None:
    body = fixture_bytes(f"bitbucket-server/{MIRROR}")
    headers = bbs_headers("mirror:repo_synchronized", body)
    provider.preflight(headers)  # verification decides before anything is ignored
    with pytest.raises(Ignored) as info:
        provider.parse(headers, body)
    assert "mirror:repo_synchronized" in info.value.reason


@pytest.mark.parametrize("event", ["repo:modified", "pr:opened", "repo:comment:added"])
def test_ignores_other_event_keys_as_unsupported(provider: BitbucketServerProvider,
                                                 event: str) -> None:
    body = fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}")
    with pytest.raises(Ignored) as info:
        provider.parse(bbs_headers(event, body), body)
    assert "unsupported event type" in info.value.reason and event in info.value.reason


def _doc(name: str = SIGNED_PUSH) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fixture_bytes(f"bitbucket-server/{name}"))
    return doc


def _change(name: str) -> dict[str, Any]:
    change: dict[str, Any] = _doc(name)["changes"][0]
    return change


def test_one_push_moving_several_refs_gives_one_event_per_ref_in_order(
        provider: BitbucketServerProvider) -> None:
    doc = _doc()
    doc["changes"] = [_change(SIGNED_PUSH), _change("jenkins-server-tag_created.json"),
                      _change("jenkins-server-branch_deleted.json")]
    body = json.dumps(doc).encode()

    events = provider.parse(bbs_headers("repo:refs_changed", body), body)

    assert events == (PUSHES[SIGNED_PUSH][0],
                      PUSHES["jenkins-server-tag_created.json"][0],
                      PUSHES["jenkins-server-branch_deleted.json"][0])


def test_skips_a_change_of_a_ref_that_is_neither_branch_nor_tag(
        provider: BitbucketServerProvider) -> None:
    doc = _doc()
    other = copy.deepcopy(doc["changes"][0])
    other["ref"]["type"] = "NOTE"
    doc["changes"] = [other, doc["changes"][0]]
    body = json.dumps(doc).encode()
    assert provider.parse(bbs_headers("repo:refs_changed", body), body) == PUSHES[SIGNED_PUSH]


def test_ignores_a_push_whose_only_ref_is_neither_branch_nor_tag(
        provider: BitbucketServerProvider) -> None:
    doc = _doc()
    doc["changes"][0]["ref"]["type"] = "NOTE"
    body = json.dumps(doc).encode()
    with pytest.raises(Ignored) as info:
        provider.parse(bbs_headers("repo:refs_changed", body), body)
    assert "branch or a tag" in info.value.reason


# --- 2. signatures that verify -------------------------------------------------------------


def test_verifies_the_upstream_signed_payload_test_vector(
        provider: BitbucketServerProvider) -> None:
    body = fixture_bytes("bitbucket-server/jenkins-server-signed_payload.json")
    ref = SecretRef("env:JENKINS_SECRET", (JENKINS_SECRET,))
    headers = {"x-hub-signature":
               "sha256=4ffba9e7b58ea3d7e1a230446e8c92baea0aeec89b73f598932387254f0de13e"}
    assert provider.verify(headers, body, [ref]) is ref


@pytest.mark.parametrize("name", WEBHOOK_FIXTURES)
def test_verifies_fixture_signed_over_its_exact_bytes(provider: BitbucketServerProvider,
                                                      name: str) -> None:
    body = fixture_bytes(f"bitbucket-server/{name}")
    ref = secret_ref()
    assert provider.verify(bbs_headers(event_key_of(body), body), body, [ref]) is ref


@pytest.mark.parametrize("signer", [0, 1], ids=["old_secret", "new_secret"])
def test_verifies_with_either_rotated_secret_and_returns_the_one_that_matched(
        provider: BitbucketServerProvider, signer: int) -> None:
    body = fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}")
    refs = [secret_ref(SECRET, "env:BBS_SECRET_OLD"), secret_ref(OTHER_SECRET, "env:BBS_SECRET")]
    used = (SECRET, OTHER_SECRET)[signer]
    headers = bbs_headers("repo:refs_changed", body, secret=used)
    assert provider.verify(headers, body, refs) is refs[signer]


# --- 3. signatures that do not verify ------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook call to verify: headers, body and the configured secrets."""

    headers: Mapping[str, str]
    body: bytes
    secrets: tuple[SecretRef, ...] = field(default_factory=lambda: (secret_ref(),))


def _signed_push() -> Delivery:
    body = fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}")
    return Delivery(bbs_headers("repo:refs_changed", body), body)


def _flip_middle_byte(d: Delivery) -> Delivery:
    i = len(d.body) // 2
    return replace(d, body=d.body[:i] + bytes([d.body[i] ^ 0x01]) + d.body[i + 1:])


def _with_signature(value: str) -> Callable[[Delivery], Delivery]:
    def change(d: Delivery) -> Delivery:
        return replace(d, headers={**d.headers, "x-hub-signature": value})
    return change


def _renamed_signature_header(name: str) -> Callable[[Delivery], Delivery]:
    def change(d: Delivery) -> Delivery:
        headers = {k: v for k, v in d.headers.items() if k != "x-hub-signature"}
        return replace(d, headers={**headers, name: d.headers["x-hub-signature"]})
    return change


_DIGEST = sign(fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}")).removeprefix("sha256=")

UNAUTHENTICATED: dict[str, Callable[[Delivery], Delivery]] = {
    "body_changed_by_one_byte": _flip_middle_byte,
    "wrong_secret": lambda d: replace(d, secrets=(secret_ref(OTHER_SECRET),)),
    "no_secret_configured": lambda d: replace(d, secrets=()),
    "missing_signature_header": lambda d: replace(
        d, headers={k: v for k, v in d.headers.items() if k != "x-hub-signature"}),
    "signature_sent_in_the_github_header_name": _renamed_signature_header("x-hub-signature-256"),
    "empty_signature_header": _with_signature(""),
    "sha1_algorithm_prefix": _with_signature("sha1=" + _DIGEST),
    "upper_case_algorithm_prefix": _with_signature("SHA256=" + _DIGEST),
    "no_algorithm_prefix": _with_signature(_DIGEST),
    "signature_truncated_by_one_hex_digit": _with_signature("sha256=" + _DIGEST[:-1]),
    "signature_with_a_non_hex_digit": _with_signature("sha256=" + _DIGEST[:-1] + "g"),
    "signature_of_another_body": _with_signature(
        sign(fixture_bytes("bitbucket-server/jenkins-server-tag_created.json"))),
}


def test_accepts_the_unchanged_delivery_the_negative_cases_start_from(
        provider: BitbucketServerProvider) -> None:
    d = _signed_push()
    assert provider.verify(d.headers, d.body, d.secrets) is d.secrets[0]


@pytest.mark.parametrize("change", UNAUTHENTICATED.values(), ids=UNAUTHENTICATED.keys())
def test_rejects_delivery_as_unauthorized_when(provider: BitbucketServerProvider,
                                               change: Callable[[Delivery], Delivery]) -> None:
    d = change(_signed_push())
    with pytest.raises(Unauthorized):
        provider.verify(d.headers, d.body, d.secrets)


# --- 4. delivery id, event header and body shape -------------------------------------------


@pytest.mark.parametrize("value", [REQUEST_ID, "a" * 128, "1.2:3_{4}-5"],
                         ids=["uuid", "128_characters", "every_allowed_punctuation"])
def test_returns_the_request_id_as_delivery_id(provider: BitbucketServerProvider,
                                               value: str) -> None:
    assert provider.delivery_id({"x-request-id": value}) == value


MALFORMED_REQUEST_IDS: dict[str, str | None] = {
    "missing": None,
    "empty": "",
    "containing_a_space": "3a1e5f2c 0b9d-4c6e-8f7a-2d4b6c8e0f13",
    "over_128_characters": "a" * 129,
    "containing_a_slash": "../3a1e5f2c",
    "ending_in_a_newline": REQUEST_ID + "\n",
}


@pytest.mark.parametrize("value", MALFORMED_REQUEST_IDS.values(),
                         ids=MALFORMED_REQUEST_IDS.keys())
def test_rejects_request_id_as_bad_request(provider: BitbucketServerProvider,
                                           value: str | None) -> None:
    headers = {} if value is None else {"x-request-id": value}
    with pytest.raises(BadRequest):
        provider.delivery_id(headers)


@pytest.mark.parametrize("value", [None, ""], ids=["missing", "empty"])
def test_rejects_delivery_without_event_key_as_bad_request(provider: BitbucketServerProvider,
                                                           value: str | None) -> None:
    body = fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}")
    headers = {k: v for k, v in bbs_headers("repo:refs_changed", body).items()
               if k != "x-event-key"}
    if value is not None:
        headers["x-event-key"] = value
    with pytest.raises(BadRequest):
        provider.parse(headers, body)


def _edited(edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = _doc()
    edit(doc)
    return json.dumps(doc).encode()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path (digits index lists) to ``value``."""
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return edit


_TO = "9fdd7b96d3f5c276d0b9e0bf38c879eb112d889a"


def _zero_both_hashes(doc: dict[str, Any]) -> None:
    doc["changes"][0].update(fromHash="0" * 40, toHash="0" * 40)


MALFORMED_PUSH_BODIES: dict[str, bytes] = {
    "not_json": b"eventKey=repo:refs_changed",
    "json_array": b"[" + fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}") + b"]",
    "invalid_utf8": fixture_bytes(f"bitbucket-server/{SIGNED_PUSH}").replace(
        b'"test-repos"', b'"test-repos\xff"', 1),
    "body_event_key_of_another_event": _edited(_set("eventKey", "mirror:repo_synchronized")),
    "missing_repository": _edited(_drop("repository")),
    "missing_project_key": _edited(_drop("repository.project.key")),
    "missing_repository_slug": _edited(_drop("repository.slug")),
    "slug_with_a_slash": _edited(_set("repository.slug", "test/repos")),
    "missing_changes": _edited(_drop("changes")),
    "empty_changes": _edited(_set("changes", [])),
    "changes_not_a_list": _edited(_set("changes", {"0": {}})),
    "change_not_an_object": _edited(_set("changes.0", "refs/heads/main")),
    "change_without_ref": _edited(_drop("changes.0.ref")),
    "ref_without_display_id": _edited(_drop("changes.0.ref.displayId")),
    "ref_with_empty_display_id": _edited(_set("changes.0.ref.displayId", "")),
    "unknown_change_type": _edited(_set("changes.0.type", "FORCE_UPDATE")),
    "to_hash_not_hex": _edited(_set("changes.0.toHash", "not-a-commit-id-at-all-not-a-commit!!")),
    "to_hash_abbreviated": _edited(_set("changes.0.toHash", _TO[:11])),
    "to_hash_upper_case": _edited(_set("changes.0.toHash", _TO.upper())),
    "to_hash_a_number": _edited(_set("changes.0.toHash", 12345)),
    "from_hash_not_hex": _edited(_set("changes.0.fromHash", "HEAD~1")),
    # the one case that needs both fields: a change that names no commit on either side
    "both_hashes_zero": _edited(_zero_both_hashes),
}


def test_the_edited_bodies_start_from_a_reserialized_push_that_parses(
        provider: BitbucketServerProvider) -> None:
    body = _edited(lambda _doc: None)
    assert provider.parse(bbs_headers("repo:refs_changed", body), body) == PUSHES[SIGNED_PUSH]


@pytest.mark.parametrize("body", MALFORMED_PUSH_BODIES.values(),
                         ids=MALFORMED_PUSH_BODIES.keys())
def test_rejects_malformed_refs_changed_body_as_bad_request(provider: BitbucketServerProvider,
                                                            body: bytes) -> None:
    with pytest.raises(BadRequest):
        provider.parse(bbs_headers("repo:refs_changed", body), body)


# --- 5. the compare client over HTTP (responses) -------------------------------------------

RECORDED: dict[str, Any] = json.loads(fixture_bytes(f"bitbucket-server/{RECORDED_COMMITS}"))
# the recording is GET .../commits?since=174561d...&until=feature/diffstat; the branch's tip
# is the newest commit listed, and 174561d is the parent of the oldest
REC_BASE = "174561d625c9623b60d8aba09b7f08ddc9df45cd"
REC_HEAD = "251fce291f086cdde68ae2a896148abb5b58033e"
UNRELATED = "0123456789abcdef0123456789abcdef01234567"
# GET .../projects/{key}/repos/{slug}, shaped as the REST API documents a repository
REPOSITORY = {"slug": "test-repos", "id": 1, "name": "test-repos", "scmId": "git",
              "state": "AVAILABLE", "project": {"key": "AMUNIZ", "id": 1, "name": "amuniz"}}
EMPTY_COMMITS = {"values": [], "size": 0, "isLastPage": True, "start": 0, "limit": 100,
                 "nextPageStart": None}


def path_json(path: str) -> dict[str, Any]:
    """A RestPath as the server renders it."""
    components = path.split("/")
    name = components[-1]
    out: dict[str, Any] = {"components": components, "parent": "/".join(components[:-1]),
                           "name": name, "toString": path}
    if "." in name:
        out["extension"] = name.rsplit(".", 1)[1]
    return out


def change(path: str, kind: str = "MODIFY", src: str | None = None) -> dict[str, Any]:
    """A RestChange (``type`` ADD, MODIFY, DELETE, MOVE, COPY; ``srcPath`` for MOVE/COPY)."""
    out: dict[str, Any] = {
        "contentId": hashlib.sha1(path.encode()).hexdigest(),
        "fromContentId": hashlib.sha1(b"from" + path.encode()).hexdigest(),
        "path": path_json(path), "executable": False, "percentUnchanged": -1, "type": kind,
        "nodeType": "FILE", "srcExecutable": False, "properties": {"gitChangeType": kind},
    }
    if src is not None:
        out["srcPath"] = path_json(src)
    return out


def changes_page(values: list[dict[str, Any]], *, start: int = 0, last: bool = True,
                 next_start: int | None = None) -> dict[str, Any]:
    """A page of the ``changes`` resource."""
    return {"fromHash": REC_BASE, "toHash": REC_HEAD, "properties": {}, "values": values,
            "size": len(values), "isLastPage": last, "start": start, "limit": 1000,
            "nextPageStart": next_start}


class World:
    """One provider whose API calls go to ``responses``."""

    def __init__(self, api: responses.RequestsMock) -> None:
        self.api = api
        self.sleeps: list[float] = []
        self.provider = BitbucketServerProvider(sleep=self.sleeps.append)

    def repo(self, *, name: str = AMUNIZ, api_url: str = BASE_URL,
             token: bool = True) -> RepositoryConfig:
        """A repository validated by ``receiver.config.parse``, secrets from the environment."""
        raw: dict[str, Any] = {
            "provider": "bitbucket-server", "name": name, "api_url": api_url,
            "webhook_secrets": ["env:TEST_BBS_WEBHOOK_SECRET"], "branches": ["main"],
            "pipelines": [{"name": "deploy", "paths": ["**"]}],
        }
        if token:
            raw["api_token"] = "env:TEST_BBS_TOKEN"
        return config.parse({"repositories": [raw]}).repositories[0]

    @staticmethod
    def url(repo: RepositoryConfig, resource: str) -> str:
        key, slug = repo.name.split("/")
        return f"{repo.api_url}/rest/api/1.0/projects/{key}/repos/{slug}/{resource}"

    @staticmethod
    def repo_url(repo: RepositoryConfig) -> str:
        key, slug = repo.name.split("/")
        return f"{repo.api_url}/rest/api/1.0/projects/{key}/repos/{slug}"

    def commits(self, repo: RepositoryConfig, since: str, until: str, body: Any, *,
                limit: int = 100, status: int = 200) -> None:
        self.api.add(responses.GET, self.url(repo, "commits"), json=body, status=status,
                     match=[matchers.query_param_matcher(
                         {"since": since, "until": until, "limit": str(limit),
                          "merges": "include"})])

    def changes(self, repo: RepositoryConfig, body: Any, *, start: int = 0,
                status: int = 200, base: str = REC_BASE, head: str = REC_HEAD) -> None:
        self.api.add(responses.GET, self.url(repo, "changes"), json=body, status=status,
                     match=[matchers.query_param_matcher(
                         {"since": base, "until": head, "start": str(start),
                          "limit": "1000"})])


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A provider wired to ``responses``; afterwards every call is checked for a timeout,
    the configured host and the Bearer token."""
    monkeypatch.setenv("TEST_BBS_WEBHOOK_SECRET", "webhook-secret-for-tests")
    monkeypatch.setenv("TEST_BBS_TOKEN", TOKEN)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as api:
        yield World(api)
        for call in api.calls:
            sent = getattr(call.request, "req_kwargs", {})
            assert sent.get("timeout"), f"{call.request.url} has no timeout"
            assert urlsplit(call.request.url).netloc == "bitbucket.example.com"


def test_recorded_commits_page_proves_ahead_in_one_call_then_lists_the_changes(
        world: World) -> None:
    repo = world.repo()
    world.commits(repo, REC_BASE, REC_HEAD, RECORDED)
    world.changes(repo, changes_page([change("src/main/App.java"), change("docs/new.md", "ADD"),
                                      change("docs/renamed.md", "MOVE", src="docs/old.md")]))

    diff = world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert diff.paths == frozenset({"src/main/App.java", "docs/new.md", "docs/renamed.md",
                                    "docs/old.md"})
    assert (diff.status, diff.reason, diff.contained, diff.api_calls) == \
        ("ahead", None, False, 2)


def test_sends_the_api_token_as_a_bearer_header_on_every_call(world: World) -> None:
    repo = world.repo()
    world.commits(repo, REC_BASE, REC_HEAD, RECORDED)
    world.changes(repo, changes_page([change("a.txt")]))

    world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert len(world.api.calls) == 2
    for call in world.api.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.request.headers["Accept"] == "application/json"


def test_sends_no_authorization_header_without_an_api_token(world: World) -> None:
    repo = world.repo(token=False)
    world.commits(repo, REC_BASE, REC_HEAD, EMPTY_COMMITS)

    world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert "Authorization" not in world.api.calls[0].request.headers


@pytest.mark.parametrize(("name", "api_url"), [
    ("~gopher/webhook-test", BASE_URL),
    (AMUNIZ, BASE_URL + "/bitbucket"),  # a server under a context path, like the fixtures'
], ids=["personal_project_key", "context_path"])
def test_builds_api_urls_from_the_configured_server_and_repository(
        world: World, name: str, api_url: str) -> None:
    repo = world.repo(name=name, api_url=api_url)
    world.commits(repo, REC_BASE, REC_HEAD, EMPTY_COMMITS)

    assert world.provider.changed_files(repo, REC_BASE, REC_HEAD).contained
    assert str(world.api.calls[0].request.url).startswith(world.url(repo, "commits?"))


def test_multi_page_changes_are_followed_by_next_page_start(world: World) -> None:
    repo = world.repo()
    world.commits(repo, REC_BASE, REC_HEAD, RECORDED)
    world.changes(repo, changes_page([change("svc/a/1.py"), change("svc/a/2.py")],
                                     last=False, next_start=2))
    world.changes(repo, changes_page([change("svc/b/3.py", "DELETE"),
                                      change("svc/c/new.py", "MOVE", src="svc/b/old.py")],
                                     start=2, last=False, next_start=4), start=2)
    # a copy leaves its source untouched: only the new path counts
    world.changes(repo, changes_page([change("svc/d/copy.py", "COPY", src="svc/z/template.py"),
                                      change("svc/e/5.py", "ADD")], start=4), start=4)

    diff = world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert diff.paths == frozenset({"svc/a/1.py", "svc/a/2.py", "svc/b/3.py", "svc/c/new.py",
                                    "svc/b/old.py", "svc/d/copy.py", "svc/e/5.py"})
    assert "svc/z/template.py" not in diff.paths
    assert (diff.status, diff.reason, diff.api_calls) == ("ahead", None, 4)


def test_head_equal_to_the_baseline_is_identical_without_a_call(world: World) -> None:
    diff = world.provider.changed_files(world.repo(), REC_HEAD, REC_HEAD)
    assert (diff.status, diff.paths, diff.contained, diff.api_calls) == \
        ("identical", frozenset(), True, 0)


def test_head_already_contained_in_the_baseline_is_behind_after_one_call(world: World) -> None:
    repo = world.repo()
    # the reverse of the recording: nothing reachable from the old commit is new
    world.commits(repo, REC_HEAD, REC_BASE, EMPTY_COMMITS)

    diff = world.provider.changed_files(repo, REC_HEAD, REC_BASE)

    assert (diff.status, diff.paths, diff.contained, diff.api_calls) == \
        ("behind", frozenset(), True, 1)


def test_complete_commit_page_without_the_baseline_as_parent_is_diverged(world: World) -> None:
    repo = world.repo()
    world.commits(repo, UNRELATED, REC_HEAD, RECORDED)
    world.changes(repo, changes_page([change("a.txt")]), base=UNRELATED)

    diff = world.provider.changed_files(repo, UNRELATED, REC_HEAD)

    assert (diff.status, diff.paths, diff.api_calls) == ("diverged", frozenset({"a.txt"}), 2)


@pytest.mark.parametrize(("reverse_values", "status"), [
    ([], "ahead"), (RECORDED["values"][:1], "diverged")], ids=["base_contained", "base_not"])
def test_a_range_longer_than_one_page_asks_the_reverse_direction_once(
        world: World, reverse_values: list[Any], status: str) -> None:
    repo = world.repo()
    first = dict(RECORDED, values=RECORDED["values"][:1], size=1, isLastPage=False,
                 nextPageStart=1)
    world.commits(repo, REC_BASE, REC_HEAD, first)
    world.commits(repo, REC_HEAD, REC_BASE, dict(EMPTY_COMMITS, values=reverse_values),
                  limit=1)
    world.changes(repo, changes_page([change("a.txt")]))

    diff = world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert (diff.status, diff.paths, diff.api_calls) == (status, frozenset({"a.txt"}), 3)


@pytest.mark.parametrize("status", [404, 400])
def test_unknown_baseline_on_the_commits_call_gives_an_incomplete_diff(world: World,
                                                                       status: int) -> None:
    repo = world.repo()
    world.commits(repo, UNRELATED, REC_HEAD,
                  {"errors": [{"message": f"Commit '{UNRELATED}' does not exist"}]},
                  status=status)
    world.api.add(responses.GET, world.repo_url(repo), json=REPOSITORY)

    diff = world.provider.changed_files(repo, UNRELATED, REC_HEAD)

    assert diff.paths is None and diff.reason is not None and "gone" in diff.reason
    # the repository's 200 after the commits call says it is the commit that is missing
    assert (diff.contained, diff.api_calls) == (False, 2)


@pytest.mark.parametrize(("commits", "repository", "message"), [
    pytest.param(404, 404, "the token cannot read AMUNIZ/test-repos, or it does not exist "
                 "(HTTP 404)", id="private-repository-not-visible"),
    pytest.param(403, None, "the token lacks the permission to read AMUNIZ/test-repos "
                 "(HTTP 403)", id="commits-forbidden"),
    pytest.param(401, None, "the token is not accepted (missing, wrong, expired or revoked), "
                 "so AMUNIZ/test-repos cannot be read (HTTP 401)", id="token-refused"),
    pytest.param(404, 401, "the token is not accepted (missing, wrong, expired or revoked), "
                 "so AMUNIZ/test-repos cannot be read (HTTP 401)", id="repository-refused"),
])
def test_a_repository_the_token_cannot_read_raises_repository_unreadable(
        world: World, commits: int, repository: int | None, message: str) -> None:
    repo = world.repo()
    error = {"errors": [{"exceptionName": "com.atlassian.bitbucket.repository."
                         "NoSuchRepositoryException",
                         "message": "Repository AMUNIZ/test-repos does not exist."}]}
    world.commits(repo, REC_BASE, REC_HEAD, error, status=commits)
    if repository is not None:
        world.api.add(responses.GET, world.repo_url(repo), json=error, status=repository)

    with pytest.raises(RepositoryUnreadable) as caught:
        world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert str(caught.value) == message and TOKEN not in str(caught.value)
    assert len(world.api.calls) == (1 if repository is None else 2) and world.sleeps == []


def test_check_access_reads_the_repository_with_the_token(world: World) -> None:
    repo = world.repo()
    world.api.add(responses.GET, world.repo_url(repo), json=REPOSITORY)

    world.provider.check_access(repo)

    assert world.api.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_check_access_says_why_a_repository_cannot_be_read(world: World) -> None:
    repo = world.repo()
    world.api.add(responses.GET, world.repo_url(repo), status=404, json={"errors": []})

    with pytest.raises(RepositoryUnreadable) as caught:
        world.provider.check_access(repo)

    assert caught.value.cause == "the token cannot read it, or it does not exist (HTTP 404)"


def test_changes_answering_404_gives_an_incomplete_diff_with_the_reason(world: World) -> None:
    repo = world.repo()
    # BSERV-4621: for an unknown 'since' some versions list all of head's commits
    world.commits(repo, UNRELATED, REC_HEAD, RECORDED)
    world.changes(repo, {"errors": [{"message": "not found"}]}, status=404, base=UNRELATED)

    diff = world.provider.changed_files(repo, UNRELATED, REC_HEAD)

    assert diff.paths is None and diff.reason is not None and "404" in diff.reason
    assert (diff.contained, diff.api_calls) == (False, 2)


CUT_LISTS: dict[str, list[dict[str, Any]]] = {
    "not_last_page_and_no_next_page_start": [
        changes_page([change("a.txt")], last=False, next_start=None)],
    "next_page_start_that_does_not_advance": [
        changes_page([change("a.txt")], last=False, next_start=0)],
    "not_last_page_but_empty": [changes_page([], last=False, next_start=5)],
    "list_reaching_the_page_max_changes_cap": [
        changes_page([change(f"f/{i}.txt") for i in range(CHANGES_CAP)])],
    "cap_reached_across_two_pages": [
        changes_page([change(f"f/{i}.txt") for i in range(600)], last=False, next_start=600),
        changes_page([change(f"g/{i}.txt") for i in range(CHANGES_CAP - 600)], start=600)],
}


@pytest.mark.parametrize("pages", CUT_LISTS.values(), ids=CUT_LISTS.keys())
def test_a_cut_change_list_gives_an_incomplete_diff(world: World,
                                                    pages: list[dict[str, Any]]) -> None:
    repo = world.repo()
    world.commits(repo, REC_BASE, REC_HEAD, RECORDED)
    for page in pages:
        world.changes(repo, page, start=page["start"])

    diff = world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert diff.paths is None and diff.reason
    assert (diff.status, diff.contained, diff.api_calls) == ("ahead", False, 1 + len(pages))


def test_one_change_short_of_the_cap_is_a_complete_list(world: World) -> None:
    repo = world.repo()
    world.commits(repo, REC_BASE, REC_HEAD, RECORDED)
    world.changes(repo, changes_page([change(f"f/{i}.txt") for i in range(CHANGES_CAP - 1)]))

    diff = world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert diff.paths is not None and len(diff.paths) == CHANGES_CAP - 1


def test_a_change_without_a_path_gives_an_incomplete_diff(world: World) -> None:
    repo = world.repo()
    pathless = change("a.txt")
    del pathless["path"]
    world.commits(repo, REC_BASE, REC_HEAD, RECORDED)
    world.changes(repo, changes_page([change("b.txt"), pathless]))

    diff = world.provider.changed_files(repo, REC_BASE, REC_HEAD)

    assert diff.paths is None and diff.reason is not None and "path" in diff.reason


def test_server_errors_are_retried_then_raise_provider_error(world: World) -> None:
    repo = world.repo()
    for _ in range(3):
        world.commits(repo, REC_BASE, REC_HEAD, {"errors": []}, status=503)

    with pytest.raises(ProviderError):
        world.provider.changed_files(repo, REC_BASE, REC_HEAD)
    assert len(world.api.calls) == 3 and len(world.sleeps) == 2


@pytest.mark.parametrize("body", ["<html>login</html>", [1, 2], {"size": 0}],
                         ids=["not_json", "json_list", "object_without_values"])
def test_an_answer_that_is_not_a_page_raises_provider_error(world: World, body: Any) -> None:
    repo = world.repo()
    if isinstance(body, str):
        world.api.add(responses.GET, world.url(repo, "commits"), body=body, status=200)
    else:
        world.commits(repo, REC_BASE, REC_HEAD, body)

    with pytest.raises(ProviderError):
        world.provider.changed_files(repo, REC_BASE, REC_HEAD)

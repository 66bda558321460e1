"""The Bitbucket Cloud provider: signature, delivery id, normalization and the compare client.

Webhook tests call ``BitbucketProvider.verify``/``delivery_id``/``parse`` over every recorded
``repo:push`` body in tests/fixtures/bitbucket-cloud/, signing the file's exact bytes. The
compare client runs against ``responses`` with the recorded diffstat and commits answers
where they fit, and small literal pages where a test needs paging, 404s or foreign links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import responses
from responses import matchers

from providers.base import Diff
from providers.bitbucket import COMMITS_FIELDS, BitbucketProvider
from receiver.config import RepositoryConfig
from receiver.config import parse as parse_config
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

CLOUD = FIXTURES / "bitbucket-cloud"
SECRET = "bb-hook-secret-5e1d93c2-must-never-be-logged"
OTHER_SECRET = "bb-hook-secret-rotated-7a40f1b9"
REQUEST_UUID = "{3f2b1c6e-5a7d-4e8f-9b0a-1c2d3e4f5a6b}"  # X-Request-UUID, braces included

# the published test vector (jenkinsci/bitbucket-branch-source-plugin, see fixtures README)
VECTOR_FILE = "jenkins-cloud-signed_payload.json"
VECTOR_SECRET = "Gkvl$k$wyNpQAF42"
VECTOR_SIGNATURE = "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"


def sign(body: bytes, secret: str = SECRET) -> str:
    """The ``X-Hub-Signature`` value Bitbucket Cloud sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def bb_headers(body: bytes, *, event: str = "repo:push", secret: str = SECRET) -> dict[str, str]:
    """Lower-case headers of a signed Bitbucket Cloud delivery of ``body``."""
    return {
        "content-type": "application/json",
        "x-event-key": event,
        "x-request-uuid": REQUEST_UUID,
        "x-hook-uuid": "{0e4f5c3a-9d1b-4b7e-8a2c-6f1e0d9c8b7a}",
        "x-attempt-number": "1",
        "x-hub-signature": sign(body, secret),
    }


def secret_ref(value: str = SECRET, ref: str = "env:BB_SECRET") -> SecretRef:
    """A resolved secret reference holding ``value``."""
    return SecretRef(ref, (value,))


@pytest.fixture
def provider() -> BitbucketProvider:
    """A provider whose retries do not sleep."""
    return BitbucketProvider(sleep=lambda _s: None)


# --- 1. normalization of every recorded repo:push body -------------------------------------


def _ev(repository: str, ref_type: str, ref_name: str, before: str | None, after: str | None,
        forced: bool = False) -> PushEvent:
    return PushEvent(provider="bitbucket", repository=repository, ref_type=ref_type,  # type: ignore[arg-type]
                     ref_name=ref_name, before=before, after=after, forced=forced)


# Expected values read from each fixture file and written here literally.
PUSHES: dict[str, tuple[PushEvent, ...]] = {
    "go-playground-repo-push.json": (
        _ev("team_name/repo_name", "branch", "name-of-branch",
            "1e65c05c1d5171631d92438a13901ca7dae9618c",
            "709d658dc5b6d6afcd46049c2f332ee3f515a67d"),),
    "jenkins-cloud-annotated_tag_created.json": (
        _ev("amuniz/test-repos", "tag", "test-tag", None,
            "7ef5981d59145c3ed300b1ab77b93907d33abe59"),),
    "jenkins-cloud-branch_created.json": (
        _ev("amuniz/test-repos", "branch", "feature/test", None,
            "174561d625c9623b60d8aba09b7f08ddc9df45cd"),),
    "jenkins-cloud-branch_deleted.json": (
        _ev("amuniz/test-repos", "branch", "feature/test",
            "174561d625c9623b60d8aba09b7f08ddc9df45cd", None),),
    # forced=true and truncated=true: truncation only cut the change's commit list
    "jenkins-cloud-commit_created.json": (
        _ev("amuniz/test-repos", "branch", "feature/issue-819",
            "a10199272451f4c7c5edced2d40b5d6f2f6f5fa3",
            "5ecffa3874e96920f24a2b3c0d0038e47d5cd1a4", forced=True),),
    "jenkins-cloud-push-createPayload.json": (
        _ev("cloudbeers/temp", "branch", "main", None,
            "501bf5b99365d1d870882254b9360c17172bda0e"),),
    "jenkins-cloud-push-multipleChangesPayload.json": (
        _ev("cloudbeers/temp", "branch", "main", "fc4d1ce2853b6f1ac0d0dbad643d17ef4a6e0be7",
            "325d37697849f4b1fe42cb19c20134af08e03a82"),
        _ev("cloudbeers/temp", "branch", "manchu", None,
            "e22fcb49645b4586a845938afac5eb3ac1950586"),
        _ev("cloudbeers/temp", "tag", "v0.1", None,
            "1986c228494671574242f99b62d1a00a4bfb69a5"),
    ),
    "jenkins-cloud-push-newTagPayload.json": (
        _ev("acme/tds.cm.maven.plugins-java", "tag", "test", None,
            "fee1dcdb330d1318502f303ccd4792531c28dc8e"),),
    "jenkins-cloud-push-updatePayload.json": (
        _ev("cloudbeers/temp", "branch", "main", "501bf5b99365d1d870882254b9360c17172bda0e",
            "e42fac24456e4a56f1b7f9358afc3070e3b7ddec"),),
    "jenkins-cloud-signed_payload.json": (
        _ev("nfalco79/test-repos", "branch", "feature/webhook", None,
            "d7f300a32270053bdfd97a6d64113f58202c33e7"),),
    "jenkins-cloud-tag_created.json": (
        _ev("amuniz/test-repos", "tag", "simple-tag", None,
            "7ef5981d59145c3ed300b1ab77b93907d33abe59"),),
    "jenkins-cloud-tag_deleted.json": (
        _ev("amuniz/test-repos", "tag", "test", "174561d625c9623b60d8aba09b7f08ddc9df45cd",
            None),),
}
API_RECORDINGS = ("jenkins-api-commits-include-feature_diffstat-exclude-174561d.json",
                  "jenkins-api-diffstat-feature_diffstat..174561d.json")


def test_every_bitbucket_cloud_fixture_has_a_row_in_the_tables() -> None:
    on_disk = sorted(p.name for p in CLOUD.glob("*.json"))
    assert on_disk == sorted([*PUSHES, *API_RECORDINGS])


@pytest.mark.parametrize("name", sorted(PUSHES))
def test_normalizes_push_fixture_to_the_expected_events(provider: BitbucketProvider,
                                                        name: str) -> None:
    body = fixture_bytes(f"bitbucket-cloud/{name}")
    assert provider.parse(bb_headers(body), body) == PUSHES[name]


def _doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fixture_bytes(f"bitbucket-cloud/{name}"))
    return doc


def _reserialized(name: str, edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = _doc(name)
    edit(doc)
    return json.dumps(doc).encode()


def _first_change(doc: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = doc["push"]["changes"][0]
    return change


def _set_new_type(kind: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        _first_change(doc)["new"]["type"] = kind
    return edit


def test_annotated_tag_type_normalizes_to_a_tag(provider: BitbucketProvider) -> None:
    name = "jenkins-cloud-annotated_tag_created.json"
    body = _reserialized(name, _set_new_type("annotated_tag"))
    assert provider.parse(bb_headers(body), body) == PUSHES[name]


@pytest.mark.parametrize("truncated", [False, True])
def test_truncated_flag_does_not_change_the_events(provider: BitbucketProvider,
                                                   truncated: bool) -> None:
    name = "jenkins-cloud-commit_created.json"

    def edit(doc: dict[str, Any]) -> None:
        _first_change(doc)["truncated"] = truncated

    body = _reserialized(name, edit)
    assert provider.parse(bb_headers(body), body) == PUSHES[name]


@pytest.mark.parametrize("forced", [False, None], ids=["false", "missing"])
def test_force_flag_false_or_missing_gives_an_unforced_event(provider: BitbucketProvider,
                                                             forced: bool | None) -> None:
    name = "jenkins-cloud-commit_created.json"

    def edit(doc: dict[str, Any]) -> None:
        if forced is None:
            del _first_change(doc)["forced"]
        else:
            _first_change(doc)["forced"] = forced

    body = _reserialized(name, edit)
    assert provider.parse(bb_headers(body), body) == (replace(PUSHES[name][0], forced=False),)


def test_change_of_a_mercurial_ref_kind_is_skipped_and_the_rest_kept(
        provider: BitbucketProvider) -> None:
    name = "jenkins-cloud-push-multipleChangesPayload.json"

    def edit(doc: dict[str, Any]) -> None:
        doc["push"]["changes"][1]["new"]["type"] = "named_branch"

    body = _reserialized(name, edit)
    main, _manchu, tag = PUSHES[name]
    assert provider.parse(bb_headers(body), body) == (main, tag)


def _bookmark_only(doc: dict[str, Any]) -> None:
    change = _first_change(doc)
    change["old"]["type"] = change["new"]["type"] = "bookmark"


IGNORED_PUSHES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no_changes": (lambda doc: doc["push"].update(changes=[]), "push moved no branch or tag"),
    "only_a_bookmark": (_bookmark_only, "push moved no branch or tag"),
}


@pytest.mark.parametrize(("edit", "reason"), IGNORED_PUSHES.values(), ids=IGNORED_PUSHES.keys())
def test_ignores_push_that_moves_no_git_ref(provider: BitbucketProvider,
                                            edit: Callable[[dict[str, Any]], None],
                                            reason: str) -> None:
    body = _reserialized("jenkins-cloud-push-updatePayload.json", edit)
    with pytest.raises(Ignored) as info:
        provider.parse(bb_headers(body), body)
    assert info.value.reason == reason


@pytest.mark.parametrize("event", ["repo:fork", "pullrequest:created", "repo:commit_status_updated",
                                   "repo:refs_changed", "diagnostics:ping"])
def test_ignores_every_event_key_but_repo_push(provider: BitbucketProvider, event: str) -> None:
    body = fixture_bytes("bitbucket-cloud/jenkins-cloud-push-updatePayload.json")
    with pytest.raises(Ignored) as info:
        provider.parse(bb_headers(body, event=event), body)
    assert info.value.reason == f"unsupported event type {event!r}"


@pytest.mark.parametrize("value", [None, ""], ids=["missing", "empty"])
def test_rejects_delivery_without_event_key_as_bad_request(provider: BitbucketProvider,
                                                           value: str | None) -> None:
    body = fixture_bytes("bitbucket-cloud/jenkins-cloud-push-updatePayload.json")
    headers = {k: v for k, v in bb_headers(body).items() if k != "x-event-key"}
    if value is not None:
        headers["x-event-key"] = value
    with pytest.raises(BadRequest):
        provider.parse(headers, body)


# --- malformed bodies: each changes one thing in updatePayload ------------------------------

BASE_PUSH = "jenkins-cloud-push-updatePayload.json"
_NEW = "e42fac24456e4a56f1b7f9358afc3070e3b7ddec"


def _edit_change(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        node: dict[str, Any] = _first_change(doc)
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


_DELETE = object()


def _drop_doc(*path: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


MALFORMED_BODIES: dict[str, bytes] = {
    "not_json": b"push=main",
    "json_array": b"[" + fixture_bytes(f"bitbucket-cloud/{BASE_PUSH}") + b"]",
    "invalid_utf8": fixture_bytes(f"bitbucket-cloud/{BASE_PUSH}").replace(
        b'"cloudbeers/temp"', b'"cloudbeers/temp\xff"', 1),
    "missing_repository": _reserialized(BASE_PUSH, _drop_doc("repository")),
    "missing_repository_full_name": _reserialized(BASE_PUSH,
                                                  _drop_doc("repository", "full_name")),
    "full_name_without_slash": _reserialized(
        BASE_PUSH, lambda d: d["repository"].update(full_name="temp")),
    "missing_push": _reserialized(BASE_PUSH, _drop_doc("push")),
    "changes_not_a_list": _reserialized(BASE_PUSH, lambda d: d["push"].update(changes={})),
    "change_not_an_object": _reserialized(BASE_PUSH, lambda d: d["push"].update(changes=[1])),
    "change_with_neither_old_nor_new": _reserialized(
        BASE_PUSH, lambda d: _first_change(d).update(old=None, new=None)),
    "new_without_target": _reserialized(BASE_PUSH, _edit_change(("new", "target"), _DELETE)),
    "new_without_name": _reserialized(BASE_PUSH, _edit_change(("new", "name"), _DELETE)),
    "new_without_type": _reserialized(BASE_PUSH, _edit_change(("new", "type"), _DELETE)),
    "new_hash_not_hex": _reserialized(BASE_PUSH, _edit_change(("new", "target", "hash"),
                                                              "not-a-commit-id-at-all-not-a-co!")),
    "new_hash_abbreviated": _reserialized(BASE_PUSH, _edit_change(("new", "target", "hash"),
                                                                  _NEW[:12])),
    "new_hash_upper_case": _reserialized(BASE_PUSH, _edit_change(("new", "target", "hash"),
                                                                 _NEW.upper())),
    "new_hash_all_zero": _reserialized(BASE_PUSH, _edit_change(("new", "target", "hash"),
                                                               "0" * 40)),
    "new_hash_null": _reserialized(BASE_PUSH, _edit_change(("new", "target", "hash"), None)),
    "old_and_new_name_differ": _reserialized(BASE_PUSH, _edit_change(("new", "name"), "other")),
    "old_branch_new_tag": _reserialized(BASE_PUSH, _edit_change(("new", "type"), "tag")),
}


def test_the_edited_bodies_start_from_a_reserialized_push_that_parses(
        provider: BitbucketProvider) -> None:
    body = _reserialized(BASE_PUSH, lambda _doc: None)
    assert provider.parse(bb_headers(body), body) == PUSHES[BASE_PUSH]


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_rejects_malformed_push_body_as_bad_request(provider: BitbucketProvider,
                                                    body: bytes) -> None:
    with pytest.raises(BadRequest):
        provider.parse(bb_headers(body), body)


# --- 2. signatures that verify -------------------------------------------------------------


def test_verifies_the_published_bitbucket_cloud_signature_vector(
        provider: BitbucketProvider) -> None:
    body = fixture_bytes(f"bitbucket-cloud/{VECTOR_FILE}")
    assert len(body) == 14515  # the exact upstream bytes, no trailing newline added
    ref = SecretRef("env:BB_SECRET", (VECTOR_SECRET,))
    assert provider.verify({"x-hub-signature": VECTOR_SIGNATURE}, body, [ref]) is ref


@pytest.mark.parametrize("name", sorted(PUSHES))
def test_verifies_fixture_signed_over_its_exact_bytes(provider: BitbucketProvider,
                                                      name: str) -> None:
    body = fixture_bytes(f"bitbucket-cloud/{name}")
    ref = secret_ref()
    assert provider.verify(bb_headers(body), body, [ref]) is ref


@pytest.mark.parametrize("signer", [0, 1], ids=["old_secret", "new_secret"])
def test_verifies_with_either_rotated_secret_and_returns_the_one_that_matched(
        provider: BitbucketProvider, signer: int) -> None:
    body = fixture_bytes(f"bitbucket-cloud/{VECTOR_FILE}")
    refs = [secret_ref(SECRET, "env:BB_SECRET_OLD"), secret_ref(OTHER_SECRET, "env:BB_SECRET")]
    used = (SECRET, OTHER_SECRET)[signer]
    assert provider.verify(bb_headers(body, secret=used), body, refs) is refs[signer]


# --- 3. signatures that do not verify: each changes one thing in the published vector -------


@dataclass(frozen=True)
class Signed:
    """One delivery to verify: headers, body and the configured secrets."""

    headers: Mapping[str, str]
    body: bytes
    secrets: tuple[SecretRef, ...] = field(
        default_factory=lambda: (SecretRef("env:BB_SECRET", (VECTOR_SECRET,)),))


def _vector() -> Signed:
    return Signed({"x-hub-signature": VECTOR_SIGNATURE},
                  fixture_bytes(f"bitbucket-cloud/{VECTOR_FILE}"))


def _flip_middle_byte(d: Signed) -> Signed:
    i = len(d.body) // 2
    return replace(d, body=d.body[:i] + bytes([d.body[i] ^ 0x01]) + d.body[i + 1:])


def _with_signature(value: str) -> Callable[[Signed], Signed]:
    def change(d: Signed) -> Signed:
        return replace(d, headers={"x-hub-signature": value})
    return change


def _reserialize_body(d: Signed) -> Signed:
    return replace(d, body=json.dumps(json.loads(d.body)).encode())


_DIGEST = VECTOR_SIGNATURE.removeprefix("sha256=")

UNAUTHENTICATED: dict[str, Callable[[Signed], Signed]] = {
    "body_changed_by_one_byte": _flip_middle_byte,
    "body_with_a_trailing_newline": lambda d: replace(d, body=d.body + b"\n"),
    "body_reserialized": _reserialize_body,
    "wrong_secret": lambda d: replace(d, secrets=(secret_ref(OTHER_SECRET),)),
    "no_secret_configured": lambda d: replace(d, secrets=()),
    "missing_signature_header": lambda d: replace(d, headers={}),
    "signature_in_githubs_sha256_header": lambda d: replace(
        d, headers={"x-hub-signature-256": VECTOR_SIGNATURE}),
    "empty_signature_header": _with_signature(""),
    "sha1_algorithm_prefix": _with_signature("sha1=" + _DIGEST),
    "sha512_algorithm_prefix": _with_signature("sha512=" + _DIGEST),
    "no_algorithm_prefix": _with_signature(_DIGEST),
    "signature_truncated_by_one_hex_digit": _with_signature("sha256=" + _DIGEST[:-1]),
    "signature_with_a_non_hex_digit": _with_signature("sha256=" + _DIGEST[:-1] + "g"),
    "signature_of_another_body": _with_signature(sign(b"{}", VECTOR_SECRET)),
}


def test_accepts_the_unchanged_vector_the_negative_cases_start_from(
        provider: BitbucketProvider) -> None:
    d = _vector()
    assert provider.verify(d.headers, d.body, d.secrets) is d.secrets[0]


@pytest.mark.parametrize("change", UNAUTHENTICATED.values(), ids=UNAUTHENTICATED.keys())
def test_rejects_delivery_as_unauthorized_when(provider: BitbucketProvider,
                                               change: Callable[[Signed], Signed]) -> None:
    d = change(_vector())
    with pytest.raises(Unauthorized):
        provider.verify(d.headers, d.body, d.secrets)


# --- 4. delivery id ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [REQUEST_UUID, REQUEST_UUID.strip("{}"), "a" * 128],
                         ids=["braced_uuid", "bare_uuid", "128_characters"])
def test_returns_the_request_uuid_as_delivery_id(provider: BitbucketProvider, value: str) -> None:
    assert provider.delivery_id({"x-request-uuid": value}) == value


MALFORMED_DELIVERY_IDS: dict[str, dict[str, str]] = {
    "missing": {},
    "empty": {"x-request-uuid": ""},
    "only_the_hook_uuid": {"x-hook-uuid": REQUEST_UUID},
    "containing_a_space": {"x-request-uuid": "3f2b1c6e 5a7d"},
    "over_128_characters": {"x-request-uuid": "a" * 129},
    "containing_a_slash": {"x-request-uuid": "../3f2b1c6e"},
}


@pytest.mark.parametrize("headers", MALFORMED_DELIVERY_IDS.values(),
                         ids=MALFORMED_DELIVERY_IDS.keys())
def test_rejects_delivery_id_as_bad_request(provider: BitbucketProvider,
                                            headers: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        provider.delivery_id(headers)


@pytest.mark.parametrize("headers", [{"x-event-key": "repo:push"}, {}],
                         ids=["unsigned_push", "no_headers_at_all"])
def test_preflight_lets_every_request_through_to_verification(provider: BitbucketProvider,
                                                              headers: dict[str, str]) -> None:
    # Bitbucket Cloud sends no unsigned test request, so nothing may be answered unverified
    provider.preflight(headers)


# --- 5. the compare client -----------------------------------------------------------------

API = "https://api.bitbucket.org"
REPO_URL = f"{API}/2.0/repositories/amuniz/test-repos"
TOKEN = "bb-api-token-0f9e8d7c-never-logged"
# the recorded pair: feature/diffstat's head and the commit it branched from
BASE = "174561d625c9623b60d8aba09b7f08ddc9df45cd"
HEAD = "251fce291f086cdde68ae2a896148abb5b58033e"
RECORDED_PATHS = frozenset({
    "Jenkinsfile",
    "resources/README.md",
    "folder/file.properties",  # renamed: old.path
    "resources/file.properties",  # renamed: new.path
    "resources/image.png",
})


def repo_config(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> RepositoryConfig:
    """The amuniz/test-repos repository as the service would configure it."""
    monkeypatch.setenv("BB_SECRET", SECRET)
    monkeypatch.setenv("BB_TOKEN", TOKEN)
    entry = {"provider": "bitbucket", "name": "amuniz/test-repos",
             "webhook_secrets": ["env:BB_SECRET"], "api_token": "env:BB_TOKEN",
             "branches": ["**"], "pipelines": [{"name": "p", "paths": ["**"]}], **extra}
    entry = {k: v for k, v in entry.items() if v is not None}
    return parse_config({"repositories": [entry]}).repositories[0]


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    """Every outbound call must be registered; each registered one must be made."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def _commits(rsps: responses.RequestsMock, include: str, exclude: str, body: Any, *,
             status: int = 200, pagelen: int = 100) -> None:
    rsps.get(f"{REPO_URL}/commits", json=body, status=status, match=[
        matchers.query_param_matcher({"include": include, "exclude": exclude,
                                      "pagelen": str(pagelen), "fields": COMMITS_FIELDS})])


def _diffstat_url(head: str = HEAD, base: str = BASE) -> str:
    return f"{REPO_URL}/diffstat/{head}..{base}"


def _diffstat(rsps: responses.RequestsMock, body: Any, *, status: int = 200) -> None:
    rsps.get(_diffstat_url(), json=body, status=status,
             match=[matchers.query_param_matcher({"topic": "false"})])


def _entry(old: str | None, new: str | None) -> dict[str, Any]:
    return {"type": "diffstat", "status": "modified",
            "old": None if old is None else {"path": old, "type": "commit_file"},
            "new": None if new is None else {"path": new, "type": "commit_file"}}


def _commit(sha: str, *parents: str) -> dict[str, Any]:
    return {"hash": sha, "parents": [{"hash": p} for p in parents]}


AHEAD = {"values": [_commit(HEAD, BASE)], "pagelen": 100}


def test_recorded_diffstat_parses_to_its_file_list(api: responses.RequestsMock,
                                                   provider: BitbucketProvider,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    commits = json.loads(fixture_bytes(f"bitbucket-cloud/{API_RECORDINGS[0]}"))
    diffstat = json.loads(fixture_bytes(f"bitbucket-cloud/{API_RECORDINGS[1]}"))
    _commits(api, HEAD, BASE, commits)
    _diffstat(api, diffstat)

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    # the recorded commits page lists 2674e72, whose parent is the base: head is ahead
    assert diff == Diff("ahead", RECORDED_PATHS, None, 2)
    assert api.calls[1].request.url == _diffstat_url() + "?topic=false"


def test_follows_next_links_to_the_last_diffstat_page(api: responses.RequestsMock,
                                                      provider: BitbucketProvider,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(api, HEAD, BASE, AHEAD)
    page2 = f"{_diffstat_url()}?topic=false&page=2"
    page3 = f"{_diffstat_url()}?topic=false&page=3"
    _diffstat(api, {"values": [_entry("a/one.py", "a/one.py")], "next": page2, "size": 4})
    api.get(page2, json={"values": [_entry(None, "b/two.py"), _entry("c/old.py", "c/new.py")],
                         "next": page3, "size": 4},
            match=[matchers.query_param_matcher({"topic": "false", "page": "2"})])
    api.get(page3, json={"values": [_entry("d/gone.py", None)], "size": 4},
            match=[matchers.query_param_matcher({"topic": "false", "page": "3"})])

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff("ahead", frozenset({"a/one.py", "b/two.py", "c/old.py", "c/new.py",
                                            "d/gone.py"}), None, 4)


def test_head_contained_in_base_is_behind_after_one_call(api: responses.RequestsMock,
                                                         provider: BitbucketProvider,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(api, HEAD, BASE, {"values": [], "pagelen": 100})

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff("behind", frozenset(), None, 1)
    assert diff.contained


def test_same_commit_is_identical_without_any_call(api: responses.RequestsMock,
                                                   provider: BitbucketProvider,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert provider.changed_files(repo_config(monkeypatch), HEAD, HEAD) == \
        Diff("identical", frozenset(), None, 0)
    assert len(api.calls) == 0


def test_head_without_the_base_as_ancestor_is_diverged(api: responses.RequestsMock,
                                                       provider: BitbucketProvider,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # a force push: head's new commits end at a commit whose parent is not the base
    fork = "9" * 40
    _commits(api, HEAD, BASE, {"values": [_commit(HEAD, "8" * 40), _commit("8" * 40, fork)]})
    _diffstat(api, {"values": [_entry("x.py", "x.py")]})

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff("diverged", frozenset({"x.py"}), None, 2)


@pytest.mark.parametrize(("reverse", "status"), [([], "ahead"), ([_commit(BASE, "7" * 40)],
                                                                 "diverged")],
                         ids=["base_contained_in_head", "base_has_commits_head_lacks"])
def test_long_push_asks_the_reverse_direction_once(api: responses.RequestsMock,
                                                   provider: BitbucketProvider,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   reverse: list[Any], status: str) -> None:
    _commits(api, HEAD, BASE, {"values": [_commit(HEAD, "6" * 40)],
                               "next": f"{REPO_URL}/commits?page=2"})
    _commits(api, BASE, HEAD, {"values": reverse}, pagelen=1)
    _diffstat(api, {"values": [_entry("x.py", "x.py")]})

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff(status, frozenset({"x.py"}), None, 3)  # type: ignore[arg-type]


def test_commits_404_of_a_readable_repository_gives_an_incomplete_diff(
        api: responses.RequestsMock, provider: BitbucketProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(api, HEAD, BASE, {"type": "error", "error": {"message": "not found"}}, status=404)
    api.get(REPO_URL, json={"type": "repository", "full_name": "amuniz/test-repos"})

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff.paths is None and not diff.contained
    assert diff.reason == "commits answered 404: the baseline or head commit is gone"
    assert diff.api_calls == 2


@pytest.mark.parametrize(("commits", "repository", "message"), [
    pytest.param(404, 404, "the token cannot read amuniz/test-repos, or it does not exist "
                 "(HTTP 404)", id="private-repository-not-visible"),
    pytest.param(403, None, "the token lacks the permission to read amuniz/test-repos "
                 "(HTTP 403)", id="commits-forbidden"),
    pytest.param(401, None, "the token is not accepted (missing, wrong, expired or revoked), "
                 "so amuniz/test-repos cannot be read (HTTP 401)", id="token-refused"),
    pytest.param(404, 403, "the token lacks the permission to read amuniz/test-repos "
                 "(HTTP 403)", id="repository-forbidden"),
])
def test_a_repository_the_token_cannot_read_raises_repository_unreadable(
        api: responses.RequestsMock, provider: BitbucketProvider,
        monkeypatch: pytest.MonkeyPatch, commits: int, repository: int | None,
        message: str) -> None:
    error = {"type": "error", "error": {"message": "Repository not found"}}
    _commits(api, HEAD, BASE, error, status=commits)
    if repository is not None:
        api.get(REPO_URL, json=error, status=repository)

    with pytest.raises(RepositoryUnreadable) as caught:
        provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert str(caught.value) == message and TOKEN not in str(caught.value)
    assert len(api.calls) == (1 if repository is None else 2)


def test_check_access_reads_the_repository_itself(api: responses.RequestsMock,
                                                  provider: BitbucketProvider,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    api.get(REPO_URL, json={"type": "repository", "full_name": "amuniz/test-repos"})

    provider.check_access(repo_config(monkeypatch))

    assert api.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_check_access_says_why_a_repository_cannot_be_read(api: responses.RequestsMock,
                                                           provider: BitbucketProvider,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    api.get(REPO_URL, status=404, json={"type": "error", "error": {"message": "not found"}})

    with pytest.raises(RepositoryUnreadable) as caught:
        provider.check_access(repo_config(monkeypatch))

    assert caught.value.cause == "the token cannot read it, or it does not exist (HTTP 404)"


def test_diffstat_404_gives_an_incomplete_diff(api: responses.RequestsMock,
                                               provider: BitbucketProvider,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(api, HEAD, BASE, AHEAD)
    _diffstat(api, {"type": "error", "error": {"message": "not found"}}, status=404)

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff("ahead", None, "diffstat answered 404: the baseline or head commit is "
                        "gone", 2)


def test_diffstat_listing_fewer_entries_than_its_size_is_incomplete(
        api: responses.RequestsMock, provider: BitbucketProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(api, HEAD, BASE, AHEAD)
    _diffstat(api, {"values": [_entry("x.py", "x.py")], "size": 2})

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff("ahead", None, "diffstat listed 1 of the 2 entries it announced", 2)


FOREIGN_NEXT: dict[str, str] = {
    "another_host": "https://evil.example/2.0/repositories/amuniz/test-repos/diffstat/x?page=2",
    "plain_http": f"http://api.bitbucket.org/2.0/repositories/amuniz/test-repos/diffstat/"
                  f"{HEAD}..{BASE}?page=2",
    "another_port": f"https://api.bitbucket.org:8443/2.0/repositories/amuniz/test-repos/"
                    f"diffstat/{HEAD}..{BASE}?page=2",
    "userinfo_host_trick": "https://api.bitbucket.org@evil.example/2.0/repositories/x/y/"
                           "diffstat/z?page=2",
    "suffix_host": "https://api.bitbucket.org.evil.example/2.0/repositories/x/y/diffstat/z",
    "outside_the_api_root": "https://api.bitbucket.org/site/oauth2/access_token?page=2",
}


@pytest.mark.parametrize("link", FOREIGN_NEXT.values(), ids=FOREIGN_NEXT.keys())
def test_refuses_a_diffstat_next_link_off_the_configured_api(
        api: responses.RequestsMock, provider: BitbucketProvider,
        monkeypatch: pytest.MonkeyPatch, link: str) -> None:
    _commits(api, HEAD, BASE, AHEAD)
    _diffstat(api, {"values": [_entry("x.py", "x.py")], "next": link})

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    # the registered calls were made and nothing else (responses refuses unregistered URLs)
    assert diff == Diff("ahead", None, "diffstat next link points outside "
                        "https://api.bitbucket.org and was not followed", 2)


def test_refuses_a_diffstat_next_link_that_repeats_a_page(api: responses.RequestsMock,
                                                          provider: BitbucketProvider,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _commits(api, HEAD, BASE, AHEAD)
    page2 = f"{_diffstat_url()}?topic=false&page=2"
    _diffstat(api, {"values": [_entry("x.py", "x.py")], "next": page2})
    api.get(page2, json={"values": [_entry("y.py", "y.py")], "next": page2},
            match=[matchers.query_param_matcher({"topic": "false", "page": "2"})])

    diff = provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

    assert diff == Diff("ahead", None, "diffstat next link repeats a page already read", 3)


def test_next_link_under_an_api_url_with_a_path_prefix_is_followed(
        api: responses.RequestsMock, provider: BitbucketProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "https://proxy.internal/bitbucket"
    repo_url = f"{prefix}/2.0/repositories/amuniz/test-repos"
    api.get(f"{repo_url}/commits", json=AHEAD)
    api.get(f"{repo_url}/diffstat/{HEAD}..{BASE}",
            json={"values": [_entry("x.py", "x.py")],
                  "next": f"{repo_url}/diffstat/{HEAD}..{BASE}?topic=false&page=2"},
            match=[matchers.query_param_matcher({"topic": "false"})])
    api.get(f"{repo_url}/diffstat/{HEAD}..{BASE}", json={"values": [_entry("y.py", "y.py")]},
            match=[matchers.query_param_matcher({"topic": "false", "page": "2"})])

    diff = provider.changed_files(repo_config(monkeypatch, api_url=prefix), BASE, HEAD)

    assert diff == Diff("ahead", frozenset({"x.py", "y.py"}), None, 3)


AUTH_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "access_token_as_bearer": ({}, f"Bearer {TOKEN}"),
    "atlassian_api_token_as_basic_with_username": (
        {"api_username": "dev@example.com"},
        "Basic " + base64.b64encode(f"dev@example.com:{TOKEN}".encode()).decode()),
    "no_token_sends_no_authorization": ({"api_token": None}, None),
}


@pytest.mark.parametrize(("extra", "authorization"), AUTH_CASES.values(), ids=AUTH_CASES.keys())
def test_sends_the_configured_credentials_on_every_call(
        api: responses.RequestsMock, provider: BitbucketProvider,
        monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any],
        authorization: str | None) -> None:
    _commits(api, HEAD, BASE, AHEAD)
    _diffstat(api, {"values": [_entry("x.py", "x.py")]})

    provider.changed_files(repo_config(monkeypatch, **extra), BASE, HEAD)

    assert [c.request.headers.get("Authorization") for c in api.calls] == [authorization] * 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_after_retries_raise_provider_error(api: responses.RequestsMock,
                                                          provider: BitbucketProvider,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          status: int) -> None:
    for _ in range(3):
        _commits(api, HEAD, BASE, {"type": "error"}, status=status)

    with pytest.raises(ProviderError) as info:
        provider.changed_files(repo_config(monkeypatch), BASE, HEAD)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("body", [["not", "an", "object"], {"pagelen": 100}],
                         ids=["json_array", "no_values_list"])
def test_unexpected_answer_shape_raises_provider_error(api: responses.RequestsMock,
                                                       provider: BitbucketProvider,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       body: Any) -> None:
    _commits(api, HEAD, BASE, body)
    with pytest.raises(ProviderError):
        provider.changed_files(repo_config(monkeypatch), BASE, HEAD)

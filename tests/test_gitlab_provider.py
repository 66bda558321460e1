"""GitLabProvider: push normalization over every recorded payload, token and signed-webhook
verification (the Standard Webhooks published vector), delivery ids, and the compare client
against a `responses`-mocked API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from providers.base import Diff
from providers.gitlab import GitLabOptions, GitLabProvider
from receiver.config import RepositoryConfig
from receiver.errors import (
    BadRequest,
    Ignored,
    ProviderError,
    RepositoryUnreadable,
    Unauthorized,
)
from receiver.events import PushEvent
from receiver.matcher import PathRules
from receiver.secrets import SecretRef
from tests.harness import FIXTURES, fixture_bytes

# --- push normalization -------------------------------------------------------------------

PARSED = [
    ("go-gitlab-webhooks-push.json", "Push Hook", PushEvent(
        "gitlab", "mike/diaspora", "branch", "master",
        "95790bf891e76fee5e1747ab589903a6a1f80f22", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")),
    ("go-gitlab-webhooks-tag_push.json", "Tag Push Hook", PushEvent(
        "gitlab", "jsmith/example", "tag", "v1.0.0",
        None, "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7")),
    ("go-playground-push-event.json", "Push Hook", PushEvent(
        "gitlab", "mike/diaspora", "branch", "master",
        "95790bf891e76fee5e1747ab589903a6a1f80f22", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")),
    ("go-playground-system-push-event.json", "System Hook", PushEvent(
        "gitlab", "mike/diaspora", "branch", "master",
        "95790bf891e76fee5e1747ab589903a6a1f80f22", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")),
    ("go-playground-tag-event.json", "Tag Push Hook", PushEvent(
        "gitlab", "jsmith/example", "tag", "v1.0.0",
        None, "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7")),
    ("packit-push_branch.json", "Push Hook", PushEvent(
        "gitlab", "testing/packit/hello-there", "branch", "test",
        "1f6a716aa7a618a9ffe56970d77177d99d100022", "952cfd32c1a9317f4c460dbe4a6bb3ac406c1002")),
    ("packit-push_with_many_commits.json", "Push Hook", PushEvent(
        "gitlab", "packit-service/rpms/open-vm-tools", "branch", "c9s",
        "8c349949521e5c3fcd5c1811d1acbc5a752b385e", "15af92227f9e965b392e85ba2f08a41a5aeb278a")),
    ("packit-push_with_one_commit.json", "Push Hook", PushEvent(
        "gitlab", "testing/packit/hello-there", "branch", "test2",
        "0e27f070efa4bef2a7c0168f07a0ac36ef90d8cb", "cb2859505e101785097e082529dced35bbee0c8f")),
    ("packit-tag_push.json", "Tag Push Hook", PushEvent(
        "gitlab", "fedora/src/python-teamcity-messages", "tag", "v1.32",
        None, "6147b3de219ecdda30ba727cf74a0414ca1e618a")),
    ("zulip-push_hook__remove_branch.json", "Push Hook", PushEvent(
        "gitlab", "TomaszKolek/my-awesome-project", "branch", "tomek",
        "68595bc36ba5561c86c73c34ca7a3aae5a0dcfd8", None)),
]

CHANGES = {
    "go-gitlab-webhooks-push.json": "updated",
    "go-gitlab-webhooks-tag_push.json": "created",
    "go-playground-push-event.json": "updated",
    "go-playground-system-push-event.json": "updated",
    "go-playground-tag-event.json": "created",
    "packit-push_branch.json": "updated",
    "packit-push_with_many_commits.json": "updated",
    "packit-push_with_one_commit.json": "updated",
    "packit-tag_push.json": "created",
    "zulip-push_hook__remove_branch.json": "deleted",
}


def test_table_covers_every_gitlab_fixture() -> None:
    on_disk = sorted(p.name for p in (FIXTURES / "gitlab").glob("*.json"))
    assert sorted(name for name, _, _ in PARSED) == on_disk
    assert sorted(CHANGES) == on_disk


@pytest.mark.parametrize(("fixture", "event", "expected"), PARSED,
                         ids=[name for name, _, _ in PARSED])
def test_parses_recorded_payload_into_exact_event(fixture: str, event: str,
                                                  expected: PushEvent) -> None:
    body = fixture_bytes(f"gitlab/{fixture}")
    assert GitLabProvider().parse({"x-gitlab-event": event}, body) == (expected,)


@pytest.mark.parametrize(("fixture", "event", "expected"), PARSED,
                         ids=[name for name, _, _ in PARSED])
def test_zero_shas_decide_created_updated_deleted(fixture: str, event: str,
                                                  expected: PushEvent) -> None:
    (parsed,) = GitLabProvider().parse({"x-gitlab-event": event},
                                       fixture_bytes(f"gitlab/{fixture}"))
    assert parsed.change == CHANGES[fixture]


def _edited(fixture: str, **changes: Any) -> bytes:
    doc = json.loads(fixture_bytes(f"gitlab/{fixture}"))
    doc.update(changes)
    return json.dumps(doc).encode()


def test_branch_push_with_zero_before_is_a_branch_creation() -> None:
    body = _edited("packit-push_branch.json", before="0" * 40)
    (parsed,) = GitLabProvider().parse({"x-gitlab-event": "Push Hook"}, body)
    assert parsed == PushEvent("gitlab", "testing/packit/hello-there", "branch", "test", None,
                               "952cfd32c1a9317f4c460dbe4a6bb3ac406c1002")
    assert parsed.change == "created"


def test_annotated_tag_head_is_the_checkout_sha_commit_not_the_tag_object() -> None:
    body = _edited("packit-tag_push.json", after="a" * 40)
    (parsed,) = GitLabProvider().parse({"x-gitlab-event": "Tag Push Hook"}, body)
    assert parsed.after == "6147b3de219ecdda30ba727cf74a0414ca1e618a"


@pytest.mark.parametrize(("event", "body", "reason"), [
    ("Merge Request Hook", fixture_bytes("gitlab/go-gitlab-webhooks-push.json"),
     "unsupported event type 'Merge Request Hook'"),
    ("Note Hook", b"{}", "unsupported event type 'Note Hook'"),
    ("System Hook", json.dumps({"event_name": "repository_update"}).encode(),
     "system hook event 'repository_update' is not a push"),
    ("System Hook", json.dumps({"object_kind": "merge_request"}).encode(),
     "system hook event 'merge_request' is not a push"),
    ("Push Hook", _edited("go-gitlab-webhooks-push.json", ref="refs/merge-requests/1/head"),
     "ref 'refs/merge-requests/1/head' is neither a branch nor a tag"),
])
def test_ignores_what_is_not_a_push(event: str, body: bytes, reason: str) -> None:
    with pytest.raises(Ignored) as info:
        GitLabProvider().parse({"x-gitlab-event": event}, body)
    assert info.value.reason == reason


@pytest.mark.parametrize(("headers", "body"), [
    ({}, fixture_bytes("gitlab/go-gitlab-webhooks-push.json")),
    ({"x-gitlab-event": "Push Hook"}, b"{not json"),
    ({"x-gitlab-event": "Push Hook"}, b"[1, 2]"),
    ({"x-gitlab-event": "Push Hook"}, _edited("go-gitlab-webhooks-push.json", project=None)),
    ({"x-gitlab-event": "Push Hook"},
     _edited("go-gitlab-webhooks-push.json", after="not-a-commit")),
    ({"x-gitlab-event": "Push Hook"},
     _edited("go-gitlab-webhooks-push.json", before="0" * 40, after="0" * 40)),
    ({"x-gitlab-event": "Push Hook"}, fixture_bytes("gitlab/go-gitlab-webhooks-tag_push.json")),
], ids=["no-event-header", "invalid-json", "json-array", "no-project", "after-not-hex",
        "both-shas-zero", "push-hook-with-tag-push-body"])
def test_rejects_malformed_push_as_bad_request(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(BadRequest):
        GitLabProvider().parse(headers, body)


# --- signed webhooks: the Standard Webhooks published test vector ----------------------------

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER_SIGNING = "whsec_" + base64.b64encode(b"k" * 32).decode()


def _signed_headers(**override: str) -> dict[str, str]:
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS),
               "webhook-signature": VECTOR_SIGNATURE}
    headers.update(override)
    return headers


def _secret(value: str, ref: str = "env:GITLAB_WEBHOOK_SECRET") -> SecretRef:
    return SecretRef(ref, (value,))


def _at(now: float) -> GitLabProvider:
    return GitLabProvider(clock=lambda: now)


@pytest.mark.parametrize("offset", [0, 299, -299])
def test_published_vector_verifies_within_tolerance(offset: int) -> None:
    secret = _secret(VECTOR_SECRET)
    assert _at(VECTOR_TS + offset).verify(_signed_headers(), VECTOR_BODY, [secret]) is secret


def test_any_listed_signature_may_match() -> None:
    headers = _signed_headers(**{"webhook-signature": (
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v1a,ignored " + VECTOR_SIGNATURE)})
    secret = _secret(VECTOR_SECRET)
    assert _at(VECTOR_TS).verify(headers, VECTOR_BODY, [secret]) is secret


def test_the_matching_secret_is_returned_among_several() -> None:
    plain, other, vector = (_secret("plain-token", "env:A"), _secret(OTHER_SIGNING, "env:B"),
                            _secret(VECTOR_SECRET, "env:C"))
    assert _at(VECTOR_TS).verify(_signed_headers(), VECTOR_BODY, [plain, other, vector]) is vector


@pytest.mark.parametrize(("headers", "body", "secret"), [
    (_signed_headers(), VECTOR_BODY.replace(b"4", b"5", 1), VECTOR_SECRET),
    (_signed_headers(**{"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJel"}), VECTOR_BODY,
     VECTOR_SECRET),
    (_signed_headers(**{"webhook-timestamp": str(VECTOR_TS + 1)}), VECTOR_BODY, VECTOR_SECRET),
    (_signed_headers(**{"webhook-signature": VECTOR_SIGNATURE.replace("g0hM", "g0hN")}),
     VECTOR_BODY, VECTOR_SECRET),
    (_signed_headers(), VECTOR_BODY, OTHER_SIGNING),
], ids=["body-byte", "id", "timestamp", "signature", "secret"])
def test_rejects_signed_delivery_with_one_thing_changed(headers: dict[str, str], body: bytes,
                                                        secret: str) -> None:
    with pytest.raises(Unauthorized, match="does not match"):
        _at(VECTOR_TS).verify(headers, body, [_secret(secret)])


@pytest.mark.parametrize("offset", [301, -301, 86400])
def test_rejects_signed_delivery_outside_the_tolerance(offset: int) -> None:
    with pytest.raises(Unauthorized, match="300s from now"):
        _at(VECTOR_TS + offset).verify(_signed_headers(), VECTOR_BODY, [_secret(VECTOR_SECRET)])


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp"])
def test_rejects_signature_without_its_id_or_timestamp(missing: str) -> None:
    headers = _signed_headers()
    del headers[missing]
    with pytest.raises(Unauthorized):
        _at(VECTOR_TS).verify(headers, VECTOR_BODY, [_secret(VECTOR_SECRET)])


@pytest.mark.parametrize("stamp", ["1614265330.0", "-1614265330", "", "+1614265330",
                                   "1614265330\n"])
def test_rejects_malformed_timestamp(stamp: str) -> None:
    with pytest.raises(Unauthorized):
        _at(VECTOR_TS).verify(_signed_headers(**{"webhook-timestamp": stamp}), VECTOR_BODY,
                              [_secret(VECTOR_SECRET)])


@pytest.mark.parametrize("signature", ["v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                                       "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                                       "v1,not*base64"])
def test_rejects_signature_header_without_a_usable_v1_entry(signature: str) -> None:
    with pytest.raises(Unauthorized):
        _at(VECTOR_TS).verify(_signed_headers(**{"webhook-signature": signature}), VECTOR_BODY,
                              [_secret(VECTOR_SECRET)])


# --- plain tokens -----------------------------------------------------------------------------

BODY = fixture_bytes("gitlab/go-gitlab-webhooks-push.json")


def test_plain_token_that_matches_verifies() -> None:
    secret = _secret("s3cret-token")
    assert GitLabProvider().verify({"x-gitlab-token": "s3cret-token"}, BODY, [secret]) is secret


def test_plain_token_matches_any_value_of_a_rotating_secret() -> None:
    secret = SecretRef("env:T", ("new-token", "old-token"))
    assert GitLabProvider().verify({"x-gitlab-token": "old-token"}, BODY, [secret]) is secret


@pytest.mark.parametrize("headers", [{"x-gitlab-token": "s3cret-tokem"}, {}],
                         ids=["wrong", "missing"])
def test_rejects_wrong_or_missing_plain_token(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized):
        GitLabProvider().verify(headers, BODY, [_secret("s3cret-token")])


def test_a_signing_token_is_never_accepted_as_a_plain_token() -> None:
    with pytest.raises(Unauthorized):
        GitLabProvider().verify({"x-gitlab-token": VECTOR_SECRET}, BODY, [_secret(VECTOR_SECRET)])


def test_plain_token_still_verifies_next_to_a_signature_no_configured_key_made() -> None:
    token = _secret("s3cret-token")
    headers = {**_signed_headers(), "x-gitlab-token": "s3cret-token"}
    assert _at(VECTOR_TS).verify(headers, VECTOR_BODY, [token, _secret(OTHER_SIGNING)]) is token


# --- per-repository rules: require_signed and tolerance ---------------------------------------

API = "https://gitlab.example.com"


def _repo(*, secrets: tuple[SecretRef, ...] = (), name: str = "mike/diaspora",
          api_url: str = API, token: str | None = "glpat-example", require_signed: bool = False,
          tolerance: float = 300.0, max_wait: float = 60.0) -> RepositoryConfig:
    return RepositoryConfig(
        provider="gitlab", name=name, api_url=api_url, webhook_secrets=secrets,
        api_token=SecretRef("env:GITLAB_TOKEN", (token,)) if token else None,
        branches=PathRules.compile(["master"]), pipelines=(), max_rate_limit_wait_seconds=max_wait,
        options=GitLabOptions(require_signed=require_signed, signature_tolerance_seconds=tolerance))


def test_require_signed_refuses_a_correct_plain_token() -> None:
    repo = _repo(secrets=(_secret("s3cret-token"), _secret(VECTOR_SECRET)), require_signed=True)
    with pytest.raises(Unauthorized, match="requires signed webhooks"):
        _at(VECTOR_TS).verify_repositories({"x-gitlab-token": "s3cret-token"}, VECTOR_BODY,
                                           [repo])


def test_require_signed_accepts_a_signed_delivery() -> None:
    signing = _secret(VECTOR_SECRET)
    repo = _repo(secrets=(signing,), require_signed=True)
    assert _at(VECTOR_TS).verify_repositories(_signed_headers(), VECTOR_BODY, [repo]) is signing


def test_require_signed_is_not_satisfied_by_a_token_next_to_a_bad_signature() -> None:
    repo = _repo(secrets=(_secret("s3cret-token"), _secret(VECTOR_SECRET)), require_signed=True)
    headers = {**_signed_headers(), "x-gitlab-token": "s3cret-token"}
    with pytest.raises(Unauthorized, match="does not match"):
        _at(VECTOR_TS).verify_repositories(headers, VECTOR_BODY.replace(b"4", b"5", 1), [repo])


def test_repository_tolerance_applies_instead_of_the_default() -> None:
    repo = _repo(secrets=(_secret(VECTOR_SECRET),), tolerance=60)
    provider = _at(VECTOR_TS + 120)
    assert provider.verify(_signed_headers(), VECTOR_BODY, repo.webhook_secrets)  # default 300
    with pytest.raises(Unauthorized, match="60s from now"):
        provider.verify_repositories(_signed_headers(), VECTOR_BODY, [repo])


def test_any_repository_may_accept_the_delivery() -> None:
    strict = _repo(name="a/strict", secrets=(_secret("s3cret-token"),), require_signed=True)
    plain = _repo(name="b/plain", secrets=(_secret("s3cret-token", "env:B"),))
    found = GitLabProvider().verify_repositories({"x-gitlab-token": "s3cret-token"}, BODY,
                                                 [strict, plain])
    assert found is plain.webhook_secrets[0]


# --- delivery id ------------------------------------------------------------------------------

IDEMPOTENCY = "908a6d9e-45fd-46c8-97e6-c4f350f219dd"
EVENT_UUID = "5d2a2a8e-21a1-4b7a-8d07-2f7d8a1c0b11"
WEBHOOK_ID = "0b3a8f5e-7c1d-4e0f-9a2b-6c5d4e3f2a1b"


@pytest.mark.parametrize(("headers", "expected"), [
    ({"idempotency-key": IDEMPOTENCY, "x-gitlab-event-uuid": EVENT_UUID,
      "webhook-id": WEBHOOK_ID}, IDEMPOTENCY),
    ({"x-gitlab-event-uuid": EVENT_UUID, "webhook-id": WEBHOOK_ID}, EVENT_UUID),
    ({"webhook-id": WEBHOOK_ID}, WEBHOOK_ID),
    ({"idempotency-key": "", "x-gitlab-event-uuid": EVENT_UUID}, EVENT_UUID),
], ids=["idempotency-key-first", "event-uuid-second", "webhook-id-last", "empty-is-absent"])
def test_delivery_id_precedence(headers: dict[str, str], expected: str) -> None:
    assert GitLabProvider().delivery_id(headers) == expected


@pytest.mark.parametrize("headers", [
    {}, {"x-gitlab-webhook-uuid": WEBHOOK_ID},
    {"idempotency-key": "has space", "x-gitlab-event-uuid": EVENT_UUID},
    {"idempotency-key": "x" * 129},
], ids=["none", "only-webhook-uuid", "malformed-first-is-not-skipped", "too-long"])
def test_rejects_missing_or_malformed_delivery_id(headers: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        GitLabProvider().delivery_id(headers)


# --- compare client ---------------------------------------------------------------------------

BASE = "95790bf891e76fee5e1747ab589903a6a1f80f22"
HEAD = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
MID = "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327"
COMPARE = f"{API}/api/v4/projects/mike%2Fdiaspora/repository/compare"
COMMIT_BASE = f"{API}/api/v4/projects/mike%2Fdiaspora/repository/commits/{BASE}"
PROJECT = f"{API}/api/v4/projects/mike%2Fdiaspora"


def _commit(sha: str, *parents: str) -> dict[str, Any]:
    return {"id": sha, "short_id": sha[:11], "title": "change", "parent_ids": list(parents)}


def _diff(old: str, new: str | None = None, **flags: bool) -> dict[str, Any]:
    return {"old_path": old, "new_path": new or old, "a_mode": "100644", "b_mode": "100644",
            "diff": "@@ -1 +1 @@\n-a\n+b\n", "new_file": flags.get("new_file", False),
            "renamed_file": flags.get("renamed_file", False),
            "deleted_file": flags.get("deleted_file", False)}


def _compare(commits: list[dict[str, Any]], diffs: list[dict[str, Any]], *,
             timeout: bool = False, same: bool = False) -> dict[str, Any]:
    return {"commit": commits[-1] if commits else None, "commits": commits, "diffs": diffs,
            "compare_timeout": timeout, "compare_same_ref": same,
            "web_url": f"{API}/mike/diaspora/-/compare/{BASE}...{HEAD}"}


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def _query(call: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(call.request.url).query)


COMPARE_CASES = [
    ("normal", _compare([_commit(MID, BASE), _commit(HEAD, MID)],
                        [_diff("api/app.rb"), _diff("web/new.js", new_file=True),
                         _diff("old/gone.rb", deleted_file=True)]),
     Diff("ahead", frozenset({"api/app.rb", "web/new.js", "old/gone.rb"}), None, 1)),
    ("renamed", _compare([_commit(HEAD, BASE)],
                         [_diff("lib/old_name.rb", "lib/new_name.rb", renamed_file=True)]),
     Diff("ahead", frozenset({"lib/old_name.rb", "lib/new_name.rb"}), None, 1)),
    ("diverged", _compare([_commit(HEAD, MID)], [_diff("api/app.rb")]),
     Diff("diverged", frozenset({"api/app.rb"}), None, 1)),
    ("contained", _compare([], [_diff("api/app.rb")]), Diff("behind", frozenset(), None, 1)),
    ("identical", _compare([], [], same=True), Diff("identical", frozenset(), None, 1)),
    ("compare-timeout", _compare([_commit(HEAD, BASE)], [_diff("api/app.rb")], timeout=True),
     Diff("ahead", None, "compare_timeout: GitLab cut the diff list at its diff limits "
          "(files, lines or bytes)", 1)),
    ("empty-commit", _compare([_commit(HEAD, BASE)], []), Diff("ahead", frozenset(), None, 1)),
]


@pytest.mark.parametrize(("answer", "expected"), [c[1:] for c in COMPARE_CASES],
                         ids=[c[0] for c in COMPARE_CASES])
def test_compare_answer_becomes_diff(api: responses.RequestsMock, answer: dict[str, Any],
                                     expected: Diff) -> None:
    api.get(COMPARE, json=answer)
    assert GitLabProvider().changed_files(_repo(), BASE, HEAD) == expected


def test_compare_is_straight_from_base_to_head_with_a_bearer_token(
        api: responses.RequestsMock) -> None:
    api.get(COMPARE, json=_compare([_commit(HEAD, BASE)], [_diff("a.txt")]))
    GitLabProvider().changed_files(_repo(token="glpat-abc"), BASE, HEAD)
    (call,) = api.calls
    assert _query(call) == {"from": [BASE], "to": [HEAD], "straight": ["true"]}
    assert call.request.headers["Authorization"] == "Bearer glpat-abc"
    assert "PRIVATE-TOKEN" not in call.request.headers


def test_compare_without_token_sends_no_authorization(api: responses.RequestsMock) -> None:
    api.get(COMPARE, json=_compare([_commit(HEAD, BASE)], [_diff("a.txt")]))
    GitLabProvider().changed_files(_repo(token=None), BASE, HEAD)
    assert "Authorization" not in api.calls[0].request.headers


@pytest.mark.parametrize("api_url", [API, f"{API}/", f"{API}/api/v4"])
def test_nested_namespace_is_url_encoded_once_under_api_v4(api: responses.RequestsMock,
                                                           api_url: str) -> None:
    url = f"{API}/api/v4/projects/group%2Fsub%2Fproject/repository/compare"
    api.get(url, json=_compare([_commit(HEAD, BASE)], [_diff("a.txt")]))
    diff = GitLabProvider().changed_files(_repo(name="group/sub/project", api_url=api_url),
                                          BASE, HEAD)
    assert diff.paths == frozenset({"a.txt"})


def test_compare_404_of_a_readable_project_is_an_incomplete_diff(
        api: responses.RequestsMock) -> None:
    api.get(COMPARE, status=404, json={"message": "404 Ref Not Found"})
    api.get(PROJECT, json={"id": 3, "path_with_namespace": "mike/diaspora"})
    diff = GitLabProvider().changed_files(_repo(), BASE, HEAD)
    assert (diff.status, diff.paths, diff.api_calls) == ("diverged", None, 2)
    assert diff.reason is not None and "404" in diff.reason


@pytest.mark.parametrize(("compare", "project", "cause"), [
    pytest.param(404, 404, "the token cannot read mike/diaspora, or it does not exist "
                 "(HTTP 404)", id="project-not-visible"),
    pytest.param(403, None, "the token lacks the permission to read mike/diaspora (HTTP 403)",
                 id="compare-forbidden"),
    pytest.param(401, None, "the token is not accepted (missing, wrong, expired or revoked), "
                 "so mike/diaspora cannot be read (HTTP 401)", id="token-refused"),
    pytest.param(404, 401, "the token is not accepted (missing, wrong, expired or revoked), "
                 "so mike/diaspora cannot be read (HTTP 401)", id="project-refused"),
])
def test_a_project_the_token_cannot_read_raises_repository_unreadable(
        api: responses.RequestsMock, compare: int, project: int | None, cause: str) -> None:
    api.get(COMPARE, status=compare, json={"message": f"{compare} Project Not Found"})
    if project is not None:
        api.get(PROJECT, status=project, json={"message": f"{project} Project Not Found"})
    with pytest.raises(RepositoryUnreadable) as caught:
        GitLabProvider().changed_files(_repo(token="glpat-SECRET-value"), BASE, HEAD)
    assert str(caught.value) == cause
    assert "glpat-SECRET-value" not in str(caught.value)
    assert len(api.calls) == (1 if project is None else 2)


def test_check_access_reads_the_project_once(api: responses.RequestsMock) -> None:
    api.get(PROJECT, json={"id": 3, "path_with_namespace": "mike/diaspora"})
    GitLabProvider().check_access(_repo(token="glpat-example"))
    assert api.calls[0].request.headers["Authorization"] == "Bearer glpat-example"


def test_check_access_names_an_invisible_project(api: responses.RequestsMock) -> None:
    api.get(PROJECT, status=404, json={"message": "404 Project Not Found"})
    with pytest.raises(RepositoryUnreadable) as caught:
        GitLabProvider().check_access(_repo())
    assert caught.value.cause == "the token cannot read it, or it does not exist (HTTP 404)"


def test_empty_compare_checks_the_base_commit_and_finds_head_contained(
        api: responses.RequestsMock) -> None:
    api.get(COMPARE, json=_compare([], []))
    api.get(COMMIT_BASE, json=_commit(BASE, MID))
    assert GitLabProvider().changed_files(_repo(), BASE, HEAD) == \
        Diff("behind", frozenset(), None, 2)


def test_empty_compare_with_base_gone_is_an_incomplete_diff(
        api: responses.RequestsMock) -> None:
    api.get(COMPARE, json=_compare([], []))
    api.get(COMMIT_BASE, status=404, json={"message": "404 Commit Not Found"})
    assert GitLabProvider().changed_files(_repo(), BASE, HEAD) == \
        Diff("diverged", None, "baseline commit 95790bf891e7 is gone", 2)


def test_rate_limited_compare_waits_retry_after_then_succeeds(
        api: responses.RequestsMock) -> None:
    slept: list[float] = []
    api.get(COMPARE, status=429, json={"message": "Retry later"},
            headers={"Retry-After": "7", "RateLimit-Remaining": "0",
                     "RateLimit-Reset": "1700000007"})
    api.get(COMPARE, json=_compare([_commit(HEAD, BASE)], [_diff("api/app.rb")]))
    provider = GitLabProvider(sleep=slept.append, clock=lambda: 1700000000.0)
    diff = provider.changed_files(_repo(), BASE, HEAD)
    assert slept == [7.0]
    assert diff == Diff("ahead", frozenset({"api/app.rb"}), None, 2)


def test_rate_limit_beyond_the_wait_budget_is_a_provider_error(
        api: responses.RequestsMock) -> None:
    api.get(COMPARE, status=429, json={"message": "Retry later"},
            headers={"Retry-After": "600", "RateLimit-Remaining": "0"})
    provider = GitLabProvider(sleep=lambda _s: None)
    with pytest.raises(ProviderError, match="rate limited"):
        provider.changed_files(_repo(max_wait=60.0), BASE, HEAD)


@pytest.mark.parametrize(("status", "body"), [(401, {"message": "401 Unauthorized"}),
                                              (200, ["not", "an", "object"]),
                                              (200, {"commits": [], "diffs": None})],
                         ids=["unauthorized", "not-an-object", "no-diffs-list"])
def test_failing_or_malformed_compare_is_a_provider_error(api: responses.RequestsMock,
                                                          status: int, body: Any) -> None:
    api.get(COMPARE, status=status, json=body)
    with pytest.raises(ProviderError):
        GitLabProvider(sleep=lambda _s: None).changed_files(_repo(), BASE, HEAD)


"""The GitHub provider's webhook side: signature check, delivery id, normalization.

Most tests call ``GitHubProvider.verify``/``delivery_id``/``parse`` directly over the real
recorded payloads in tests/fixtures/github/; a few drive the service under gunicorn.
Signatures are always computed over the exact bytes sent (the fixture file's bytes, or the
form-encoded body), never over a re-serialization.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import pytest
import requests

from providers.github import GitHubProvider
from receiver.errors import BadRequest, Ignored, Unauthorized
from receiver.events import PushEvent
from receiver.secrets import SecretRef
from tests.harness import FIXTURES, Service, fixture_bytes

SECRET = "gh-hook-secret-3c9e1f7a-must-never-be-logged"
OTHER_SECRET = "gh-hook-secret-rotated-b24d6e08"
GITHUB = FIXTURES / "github"
FORM = "application/x-www-form-urlencoded"
VALID_DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"  # the form GitHub documents

# --- helpers -------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_sha1(body: bytes, secret: str = SECRET) -> str:
    """The legacy SHA-1 ``X-Hub-Signature`` value."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def gh_headers(event: str, body: bytes, *, secret: str = SECRET,
               content_type: str = "application/json") -> dict[str, str]:
    """Lower-case headers of a signed GitHub delivery of ``body``."""
    return {
        "content-type": content_type,
        "x-github-event": event,
        "x-github-delivery": VALID_DELIVERY,
        "x-hub-signature-256": sign(body, secret),
    }


def form_body(json_bytes: bytes) -> bytes:
    """``payload=<url-encoded JSON>``, as GitHub sends with content type form."""
    return urlencode({"payload": json_bytes.decode("utf-8")}).encode("ascii")


def secret_ref(value: str = SECRET, ref: str = "env:GH_SECRET") -> SecretRef:
    """A resolved secret reference holding ``value``."""
    return SecretRef(ref, (value,))


@pytest.fixture
def provider() -> GitHubProvider:
    """A fresh provider (no API client is used by the webhook side)."""
    return GitHubProvider()


# --- 1. normalization of every real webhook body -------------------------------------------

# Expected values read from each fixture file and written here literally.
PUSHES: dict[str, PushEvent] = {
    "go-playground-push.json": PushEvent(
        provider="github", repository="binkkatal/sample_app", ref_type="branch",
        ref_name="master", before="737d38c599c1b2991664dfc6155d6bf516fcce36",
        after="fd489864e7642b48eaad6e3f155c10e46810ec72", forced=False),
    "octokit-push-branch-created-installation.json": PushEvent(
        provider="github", repository="Codertocat/Hello-World", ref_type="branch",
        ref_name="master", before=None,
        after="6113728f27ae82c7b1a177c8d03f9e96e0adf246", forced=False),
    "octokit-push-tag-created.json": PushEvent(
        provider="github", repository="Codertocat/Hello-World", ref_type="tag",
        ref_name="simple-tag", before=None,
        after="6113728f27ae82c7b1a177c8d03f9e96e0adf246", forced=False),
    "octokit-push-tag-deleted.json": PushEvent(
        provider="github", repository="Codertocat/Hello-World", ref_type="tag",
        ref_name="simple-tag", before="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        after=None, forced=False),
    "octokit-push-tag-deleted-org.json": PushEvent(
        provider="github", repository="Codertocat/Hello-World", ref_type="tag",
        ref_name="simple-tag", before="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        after=None, forced=False),
    "packit-push-branch-created.json": PushEvent(
        provider="github", repository="packit-service/hello-world", ref_type="branch",
        ref_name="build-branch", before=None,
        after="04885ff850b0fa0e206cd09db73565703d48f99b", forced=False),
    "packit-push-forced-existing-branch.json": PushEvent(
        provider="github", repository="flightctl/flightctl", ref_type="branch",
        ref_name="EDM-1179", before="d89fce43657c5fc2de8f677a052c9dcca941872a",
        after="1f65bfd479dddb9453466feeaf4ac9249a2ac9df", forced=True),
    "zulip-push__delete_branch.json": PushEvent(
        provider="github", repository="eeshangarg/public-repo", ref_type="branch",
        ref_name="feature", before="2e8cf535fb38a3dab2476cdf856efda904ad4c94",
        after=None, forced=False),
}
PINGS = ("go-playground-ping.json", "octokit-ping-org.json", "octokit-ping-repo.json")
OTHER_EVENTS = {"octokit-create-tag.json": "create", "octokit-delete-tag.json": "delete"}
WEBHOOK_FIXTURES = sorted([*PUSHES, *PINGS, *OTHER_EVENTS])
SIGNED_PUSH = "go-playground-push.json"  # the valid delivery the negative cases start from


def test_every_github_webhook_fixture_has_a_row_in_the_tables() -> None:
    on_disk = sorted(p.name for p in GITHUB.glob("*.json")
                     if not p.name.startswith("pygithub-replay-"))
    assert on_disk == WEBHOOK_FIXTURES


@pytest.mark.parametrize("name", sorted(PUSHES))
def test_normalizes_push_fixture_to_the_expected_event(provider: GitHubProvider,
                                                        name: str) -> None:
    body = fixture_bytes(f"github/{name}")
    assert provider.parse(gh_headers("push", body), body) == (PUSHES[name],)


@pytest.mark.parametrize("name", PINGS)
def test_ignores_ping_fixture_as_ping_event(provider: GitHubProvider, name: str) -> None:
    body = fixture_bytes(f"github/{name}")
    with pytest.raises(Ignored) as info:
        provider.parse(gh_headers("ping", body), body)
    assert info.value.reason == "ping event"


@pytest.mark.parametrize(("name", "event"), sorted(OTHER_EVENTS.items()))
def test_ignores_create_and_delete_events_as_unsupported(provider: GitHubProvider, name: str,
                                                         event: str) -> None:
    body = fixture_bytes(f"github/{name}")
    with pytest.raises(Ignored) as info:
        provider.parse(gh_headers(event, body), body)
    assert "unsupported event type" in info.value.reason
    assert event in info.value.reason


# --- 2. signatures that verify -------------------------------------------------------------


def test_verifies_githubs_published_signature_vector(provider: GitHubProvider) -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    ref = SecretRef("env:DOCS_SECRET", ("It's a Secret to Everybody",))
    headers = {"x-hub-signature-256":
               "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}
    assert provider.verify(headers, b"Hello, World!", [ref]) is ref


@pytest.mark.parametrize("name", WEBHOOK_FIXTURES)
def test_verifies_fixture_signed_over_its_exact_bytes(provider: GitHubProvider,
                                                      name: str) -> None:
    body = fixture_bytes(f"github/{name}")
    ref = secret_ref()
    assert provider.verify(gh_headers("push", body), body, [ref]) is ref


@pytest.mark.parametrize("signer", [0, 1], ids=["old_secret", "new_secret"])
def test_verifies_with_either_rotated_secret_and_returns_the_one_that_matched(
        provider: GitHubProvider, signer: int) -> None:
    body = fixture_bytes(f"github/{SIGNED_PUSH}")
    refs = [secret_ref(SECRET, "env:GH_SECRET_OLD"), secret_ref(OTHER_SECRET, "env:GH_SECRET")]
    used = (SECRET, OTHER_SECRET)[signer]
    assert provider.verify(gh_headers("push", body, secret=used), body, refs) is refs[signer]


@pytest.mark.parametrize("used", [SECRET, OTHER_SECRET], ids=["first_value", "second_value"])
def test_verifies_with_either_value_of_one_rotating_secret_ref(provider: GitHubProvider,
                                                               used: str) -> None:
    body = fixture_bytes(f"github/{SIGNED_PUSH}")
    other = secret_ref("unrelated-secret", "env:UNRELATED")
    rotating = SecretRef("file:/run/secrets/gh", (SECRET, OTHER_SECRET))
    got = provider.verify(gh_headers("push", body, secret=used), body, [other, rotating])
    assert got is rotating


# --- 3. signatures that do not verify ------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook call to verify: headers, body and the configured secrets."""

    headers: Mapping[str, str]
    body: bytes
    secrets: tuple[SecretRef, ...] = field(default_factory=lambda: (secret_ref(),))


def _signed_push() -> Delivery:
    body = fixture_bytes(f"github/{SIGNED_PUSH}")
    return Delivery(gh_headers("push", body), body)


def _flip_middle_byte(d: Delivery) -> Delivery:
    i = len(d.body) // 2
    return replace(d, body=d.body[:i] + bytes([d.body[i] ^ 0x01]) + d.body[i + 1:])


def _with_signature(value: str) -> Callable[[Delivery], Delivery]:
    def change(d: Delivery) -> Delivery:
        return replace(d, headers={**d.headers, "x-hub-signature-256": value})
    return change


def _without(header: str) -> Callable[[Delivery], Delivery]:
    def change(d: Delivery) -> Delivery:
        return replace(d, headers={k: v for k, v in d.headers.items() if k != header})
    return change


def _sha1_header_only(d: Delivery) -> Delivery:
    headers = {k: v for k, v in d.headers.items() if k != "x-hub-signature-256"}
    return replace(d, headers={**headers, "x-hub-signature": sign_sha1(d.body)})


_DIGEST = sign(fixture_bytes(f"github/{SIGNED_PUSH}")).removeprefix("sha256=")

UNAUTHENTICATED: dict[str, Callable[[Delivery], Delivery]] = {
    "body_changed_by_one_byte": _flip_middle_byte,
    "wrong_secret": lambda d: replace(d, secrets=(secret_ref(OTHER_SECRET),)),
    "no_secret_configured": lambda d: replace(d, secrets=()),
    "missing_signature_header": _without("x-hub-signature-256"),
    "only_the_sha1_signature_header": _sha1_header_only,
    "empty_signature_header": _with_signature(""),
    "sha1_algorithm_prefix": _with_signature("sha1=" + _DIGEST),
    "sha512_algorithm_prefix": _with_signature("sha512=" + _DIGEST),
    "no_algorithm_prefix": _with_signature(_DIGEST),
    "signature_truncated_by_one_hex_digit": _with_signature("sha256=" + _DIGEST[:-1]),
    "signature_truncated_by_one_byte": _with_signature("sha256=" + _DIGEST[:-2]),
    "signature_with_a_non_hex_digit": _with_signature("sha256=" + _DIGEST[:-1] + "g"),
    "signature_all_non_hex": _with_signature("sha256=" + "z" * 64),
}


def test_accepts_the_unchanged_delivery_the_negative_cases_start_from(
        provider: GitHubProvider) -> None:
    d = _signed_push()
    assert provider.verify(d.headers, d.body, d.secrets) is d.secrets[0]


@pytest.mark.parametrize("change", UNAUTHENTICATED.values(), ids=UNAUTHENTICATED.keys())
def test_rejects_delivery_as_unauthorized_when(provider: GitHubProvider,
                                               change: Callable[[Delivery], Delivery]) -> None:
    d = change(_signed_push())
    with pytest.raises(Unauthorized):
        provider.verify(d.headers, d.body, d.secrets)


# --- 4. application/x-www-form-urlencoded --------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUSHES))
def test_form_delivery_verifies_and_parses_like_the_json_delivery(provider: GitHubProvider,
                                                                  name: str) -> None:
    raw = fixture_bytes(f"github/{name}")
    body = form_body(raw)
    headers = gh_headers("push", body, content_type=FORM)
    ref = secret_ref()
    assert provider.verify(headers, body, [ref]) is ref
    assert provider.parse(headers, body) == provider.parse(gh_headers("push", raw), raw)
    assert provider.parse(headers, body) == (PUSHES[name],)


def test_rejects_form_delivery_signed_over_the_inner_json(provider: GitHubProvider) -> None:
    raw = fixture_bytes(f"github/{SIGNED_PUSH}")
    body = form_body(raw)
    headers = {**gh_headers("push", body, content_type=FORM), "x-hub-signature-256": sign(raw)}
    with pytest.raises(Unauthorized):
        provider.verify(headers, body, [secret_ref()])


_FORM_JSON = fixture_bytes(f"github/{SIGNED_PUSH}")
_FORM_PAYLOAD = quote_plus(_FORM_JSON.decode("utf-8")).encode("ascii")
# the repository name sits in the payload; a byte there turns it into invalid UTF-8
_NAME = quote_plus("binkkatal/sample_app").encode("ascii")

MALFORMED_FORMS: dict[str, bytes] = {
    "empty_form": b"",
    "no_payload_field": b"payloads=" + _FORM_PAYLOAD,
    "two_payload_fields": b"payload=" + _FORM_PAYLOAD + b"&payload=" + _FORM_PAYLOAD,
    "invalid_utf8_byte": b"payload=" + _FORM_PAYLOAD.replace(_NAME, _NAME + b"\xff", 1),
    "percent_encoded_invalid_utf8": b"payload=" + _FORM_PAYLOAD.replace(_NAME, _NAME + b"%FF", 1),
    "payload_not_json": b"payload=" + _FORM_PAYLOAD[1:],
}


def test_the_malformed_form_cases_start_from_a_form_that_parses(
        provider: GitHubProvider) -> None:
    # guards the replacements above: each case must differ from a valid form in one place
    assert _NAME in _FORM_PAYLOAD
    body = b"payload=" + _FORM_PAYLOAD
    assert provider.parse(gh_headers("push", body, content_type=FORM), body) == \
        (PUSHES[SIGNED_PUSH],)


@pytest.mark.parametrize("body", MALFORMED_FORMS.values(), ids=MALFORMED_FORMS.keys())
def test_rejects_malformed_form_body_as_bad_request(provider: GitHubProvider,
                                                    body: bytes) -> None:
    headers = gh_headers("push", body, content_type=FORM)
    assert provider.verify(headers, body, [secret_ref()]).ref == "env:GH_SECRET"
    with pytest.raises(BadRequest):
        provider.parse(headers, body)


# --- 5. delivery id, event header and body shape -------------------------------------------


@pytest.mark.parametrize("value", [VALID_DELIVERY, "a" * 128, "1.2:3_{4}-5"],
                         ids=["github_uuid", "128_characters", "every_allowed_punctuation"])
def test_returns_a_well_formed_delivery_id(provider: GitHubProvider, value: str) -> None:
    assert provider.delivery_id({"x-github-delivery": value}) == value


MALFORMED_DELIVERY_IDS: dict[str, str | None] = {
    "missing": None,
    "empty": "",
    "containing_a_space": "72d3162e cc78-11e3-81ab-4c9367dc0958",
    "over_128_characters": "a" * 129,
    "containing_a_slash": "../72d3162e",
    "ending_in_a_newline": VALID_DELIVERY + "\n",
}


@pytest.mark.parametrize("value", MALFORMED_DELIVERY_IDS.values(),
                         ids=MALFORMED_DELIVERY_IDS.keys())
def test_rejects_delivery_id_as_bad_request(provider: GitHubProvider, value: str | None) -> None:
    headers = {} if value is None else {"x-github-delivery": value}
    with pytest.raises(BadRequest):
        provider.delivery_id(headers)


@pytest.mark.parametrize("value", [None, ""], ids=["missing", "empty"])
def test_rejects_delivery_without_event_header_as_bad_request(provider: GitHubProvider,
                                                              value: str | None) -> None:
    body = fixture_bytes(f"github/{SIGNED_PUSH}")
    headers = {k: v for k, v in gh_headers("push", body).items() if k != "x-github-event"}
    if value is not None:
        headers["x-github-event"] = value
    with pytest.raises(BadRequest):
        provider.parse(headers, body)


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fixture_bytes(f"github/{SIGNED_PUSH}"))
    return doc


def _edited(edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = _doc()
    edit(doc)
    return json.dumps(doc).encode()


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc[key] = value
    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        del doc[key]
    return edit


def _drop_full_name(doc: dict[str, Any]) -> None:
    del doc["repository"]["full_name"]


def _zero_both(doc: dict[str, Any]) -> None:
    doc["before"] = doc["after"] = "0" * 40


_AFTER = "fd489864e7642b48eaad6e3f155c10e46810ec72"

MALFORMED_PUSH_BODIES: dict[str, bytes] = {
    "not_json": b"ref=refs/heads/master",
    "json_array": b"[" + fixture_bytes(f"github/{SIGNED_PUSH}") + b"]",
    "json_string": b'"refs/heads/master"',
    "invalid_utf8": fixture_bytes(f"github/{SIGNED_PUSH}").replace(
        b"binkkatal/sample_app", b"binkkatal/sample_app\xff"),
    "missing_ref": _edited(_drop("ref")),
    "ref_not_a_string": _edited(_set("ref", ["refs/heads/master"])),
    "ref_with_empty_branch_name": _edited(_set("ref", "refs/heads/")),
    "missing_repository": _edited(_drop("repository")),
    "missing_repository_full_name": _edited(_drop_full_name),
    "after_not_hex": _edited(_set("after", "not-a-commit-id-at-all-not-a-commit-id!")),
    "after_abbreviated": _edited(_set("after", _AFTER[:7])),
    "after_upper_case": _edited(_set("after", _AFTER.upper())),
    "after_a_number": _edited(_set("after", 12345)),
    "after_with_trailing_newline": _edited(_set("after", _AFTER + "\n")),
    "before_not_hex": _edited(_set("before", "HEAD~1")),
    "before_and_after_both_zero": _edited(_zero_both),
}


def test_the_edited_bodies_start_from_a_reserialized_push_that_parses(
        provider: GitHubProvider) -> None:
    body = _edited(lambda _doc: None)
    assert provider.parse(gh_headers("push", body), body) == (PUSHES[SIGNED_PUSH],)


@pytest.mark.parametrize("body", MALFORMED_PUSH_BODIES.values(),
                         ids=MALFORMED_PUSH_BODIES.keys())
def test_rejects_malformed_push_body_as_bad_request(provider: GitHubProvider,
                                                    body: bytes) -> None:
    with pytest.raises(BadRequest):
        provider.parse(gh_headers("push", body), body)


@pytest.mark.parametrize("ref", ["refs/pull/1/merge", "refs/notes/commits", "master"])
def test_ignores_push_of_a_ref_that_is_neither_branch_nor_tag(provider: GitHubProvider,
                                                              ref: str) -> None:
    body = _edited(_set("ref", ref))
    with pytest.raises(Ignored) as info:
        provider.parse(gh_headers("push", body), body)
    assert "neither a branch nor a tag" in info.value.reason


# --- 6. over HTTP, the service under gunicorn ----------------------------------------------

WATCHED_REPO = "binkkatal/sample_app"  # go-playground-push.json pushes its master branch
DELETION_REPO = "eeshangarg/public-repo"  # zulip-push__delete_branch.json deletes 'feature'


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service with the log launcher and two GitHub repositories."""
    workdir = tmp_path_factory.mktemp("github-webhook")
    pipelines = [{"name": "sample-deploy", "paths": ["**"]}]
    config = {
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [
            # 'main' only, so the fixture's push to master is a push to an unwatched branch
            {"provider": "github", "name": WATCHED_REPO, "webhook_secrets": ["env:GH_SECRET"],
             "branches": ["main"], "pipelines": pipelines},
            # the deleted branch is watched, so "ignored" comes from the deletion itself
            {"provider": "github", "name": DELETION_REPO, "webhook_secrets": ["env:GH_SECRET"],
             "branches": ["feature"], "pipelines": pipelines},
        ],
    }
    svc = Service(config, workdir, env={"GH_SECRET": SECRET}, workers=1).start()
    yield svc
    svc.stop()


@dataclass(frozen=True)
class HttpCase:
    """One request to the service and the answer expected."""

    fixture: str
    event: str = "push"
    path: str = "/webhooks/github"
    content_type: str = "application/json"
    secret: str = SECRET
    status: int = 200
    expect: Mapping[str, str] = field(default_factory=dict)
    reason_contains: str | None = None


HTTP_CASES: dict[str, HttpCase] = {
    "signed_ping_is_ignored": HttpCase(
        "go-playground-ping.json", event="ping",
        expect={"status": "ignored", "reason": "ping event"}),
    "push_to_unwatched_branch_is_ignored": HttpCase(
        SIGNED_PUSH, expect={"status": "ignored", "reason": "branch not watched"}),
    "push_for_unconfigured_repository_is_not_found": HttpCase(
        "packit-push-forced-existing-branch.json", status=404, expect={"error": "not_found"}),
    "bad_signature_is_unauthorized": HttpCase(
        SIGNED_PUSH, secret=OTHER_SECRET, status=401, expect={"error": "unauthorized"}),
    "text_plain_is_unsupported_media_type": HttpCase(
        SIGNED_PUSH, content_type="text/plain", status=415,
        expect={"error": "unsupported_media_type"}),
    "unknown_provider_path_is_not_found": HttpCase(
        SIGNED_PUSH, path="/webhooks/nope", status=404, expect={"error": "not_found"}),
    "branch_deletion_is_ignored": HttpCase(
        "zulip-push__delete_branch.json", expect={"status": "ignored"},
        reason_contains="deleted"),
}


@pytest.mark.parametrize("case", HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_service_answers_github_delivery(service: Service, case: HttpCase) -> None:
    body = fixture_bytes(f"github/{case.fixture}")
    delivery = str(uuid.uuid4())
    headers = {
        "Content-Type": case.content_type,
        "X-GitHub-Event": case.event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(body, case.secret),
    }
    resp = requests.post(service.url + case.path, data=body, headers=headers, timeout=10)

    assert resp.status_code == case.status, resp.text
    answer = resp.json()
    assert {k: answer.get(k) for k in case.expect} == dict(case.expect)
    if "error" in case.expect:
        assert set(answer) == {"error", "message"}
    if case.reason_contains is not None:
        assert case.reason_contains in answer["reason"]
    assert SECRET not in resp.text
    assert not [e for e in service.events("webhook.accepted")
                if e.get("delivery_id") == delivery]
    assert SECRET not in Path(service.log_path).read_text(errors="replace")

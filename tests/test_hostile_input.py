"""Hostile input over HTTP, for every provider path, on the service under gunicorn.

One service holds two repositories per provider: a *home* repository (the one the recorded
push fixture belongs to) whose ``api_url`` is the FakeAPI ``api_a``, and an *other*
repository with its own secret and token whose ``api_url`` is ``api_b``. A third FakeAPI,
``attacker``, is the host hostile payloads point at; it must never receive anything.

Covered: the limits and their status codes (413 with and without Content-Length, 415, 400
for deep JSON and broken framing, 414/431 from gunicorn's header limits), verification
before parsing (the same malformed body is 401 unsigned and 400 signed), answers that
reveal nothing (unknown repository and provider path, no echoed signature, token or
secret), payloads that try to steer outbound calls, and replays (delivery-id dedup and the
GitLab signed-webhook timestamp window). Every body is signed over its exact bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from providers import REGISTRY
from providers.base import MAX_JSON_DEPTH, load_json_object
from receiver.errors import BadRequest
from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

PROVIDERS = ("github", "gitlab", "bitbucket", "bitbucket-server")
LIMIT = 64 * 1024  # server.max_body_bytes of this module's service
GITLAB_SIGNING = "whsec_" + base64.b64encode(b"hostile-gitlab-signing-key-32byt").decode()

# --- the four wire formats ---------------------------------------------------------------------


def hub_signature(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256>``: GitHub's X-Hub-Signature-256 and both Bitbuckets' X-Hub-Signature."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def gitlab_signed(body: bytes, msg_id: str, timestamp: int,
                  key: str = GITLAB_SIGNING) -> dict[str, str]:
    """The Standard Webhooks headers GitLab sends for a signed webhook."""
    raw = base64.b64decode(key.removeprefix("whsec_"))
    digest = hmac.new(raw, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}


@dataclass(frozen=True)
class Wire:
    """How one provider delivers a push, and where its configured API routes are."""

    provider: str
    fixture: str  # a recorded push of the home repository
    home: str  # configured name of the home repository
    other: str  # configured name of the other repository
    event: tuple[str, str]  # the event header and its push value
    delivery_header: str
    signature_header: str  # for GitLab: the plain-token header
    api_root: Callable[[str], str]  # repository name -> its path prefix on the API
    routes: str  # regex of the API paths below the prefix

    def sign(self, body: bytes, secret: str) -> str:
        """The signature header value (GitLab: the token itself)."""
        return secret if self.provider == "gitlab" else hub_signature(body, secret)

    def headers(self, body: bytes, delivery_id: str, secret: str) -> dict[str, str]:
        """Headers of a correctly signed delivery of ``body``."""
        return {"Content-Type": "application/json", self.event[0]: self.event[1],
                self.delivery_header: delivery_id,
                self.signature_header: self.sign(body, secret)}


def _gitlab_root(name: str) -> str:
    return "/api/v4/projects/" + name.replace("/", "%2F")


HEX40 = "[0-9a-f]{40}"
WIRES: dict[str, Wire] = {
    "github": Wire(
        "github", "github/go-playground-push.json", "binkkatal/sample_app",
        "binkkatal/other_app", ("X-GitHub-Event", "push"), "X-GitHub-Delivery",
        "X-Hub-Signature-256", lambda n: f"/repos/{n}",
        rf"/compare/{HEX40}\.\.\.{HEX40}|/commits/{HEX40}"),
    "gitlab": Wire(
        "gitlab", "gitlab/go-gitlab-webhooks-push.json", "mike/diaspora", "mike/other",
        ("X-Gitlab-Event", "Push Hook"), "Idempotency-Key", "X-Gitlab-Token", _gitlab_root,
        rf"/repository/compare|/repository/commits/{HEX40}"),
    "bitbucket": Wire(
        "bitbucket", "bitbucket-cloud/jenkins-cloud-push-updatePayload.json",
        "cloudbeers/temp", "cloudbeers/other", ("X-Event-Key", "repo:push"),
        "X-Request-UUID", "X-Hub-Signature", lambda n: f"/2.0/repositories/{n}",
        rf"/commits|/diffstat/{HEX40}\.\.{HEX40}"),
    "bitbucket-server": Wire(
        "bitbucket-server", "bitbucket-server/jenkins-server-pushPayload.json",
        "AMUNIZ/test-repos", "AMUNIZ/other-repo", ("X-Event-Key", "repo:refs_changed"),
        "X-Request-Id", "X-Hub-Signature",
        lambda n: "/rest/api/1.0/projects/{}/repos/{}".format(*n.split("/")),
        r"/commits|/changes"),
}
# webhook secrets and API tokens, distinct per repository so a mix-up shows
SECRETS = {p: f"hostile-{p}-home-secret-{i}a7c3" for i, p in enumerate(PROVIDERS)}
OTHER_SECRETS = {p: f"hostile-{p}-other-secret-{i}e19d" for i, p in enumerate(PROVIDERS)}
TOKENS = {p: f"hostile-{p}-home-token-{i}5b0f" for i, p in enumerate(PROVIDERS)}
OTHER_TOKENS = {p: f"hostile-{p}-other-token-{i}c2d8" for i, p in enumerate(PROVIDERS)}


def env_name(kind: str, provider: str) -> str:
    """The environment variable a secret reference of this module names."""
    return f"HOSTILE_{kind}_{provider.replace('-', '_').upper()}"


# --- payload editing (the recorded push, re-serialized and signed as sent) ---------------------


def _doc(wire: Wire) -> dict[str, Any]:
    return dict(json.loads(fixture_bytes(wire.fixture)))


def retarget(wire: Wire, doc: dict[str, Any], branch: str, before: str, after: str) -> None:
    """Make ``doc`` a push of ``branch`` from ``before`` to ``after``."""
    if wire.provider in ("github", "gitlab"):
        doc.update(ref=f"refs/heads/{branch}", before=before, after=after)
        if wire.provider == "gitlab":
            doc["checkout_sha"] = after
    elif wire.provider == "bitbucket":
        change = doc["push"]["changes"][0]
        doc["push"]["changes"] = [change]
        for side, sha in (("old", before), ("new", after)):
            change[side]["name"] = branch
            change[side]["target"]["hash"] = sha
    else:
        change = doc["changes"][0]
        doc["changes"] = [change]
        change["ref"].update(displayId=branch, id=f"refs/heads/{branch}")
        change.update(refId=f"refs/heads/{branch}", fromHash=before, toHash=after)


def rename(wire: Wire, doc: dict[str, Any], name: str) -> None:
    """Make ``doc`` name the repository ``name`` (in the provider's own fields)."""
    if wire.provider in ("github", "bitbucket"):
        doc["repository"]["full_name"] = name
    elif wire.provider == "gitlab":
        doc["project"]["path_with_namespace"] = name
    else:
        key, _, slug = name.partition("/")
        doc["repository"]["project"]["key"] = key
        doc["repository"]["slug"] = slug


def sha(seed: str) -> str:
    """A made-up commit id."""
    return hashlib.sha1(seed.encode()).hexdigest()


@dataclass
class Push:
    """A fresh push of the home repository: its own branch and commits, so it makes API calls."""

    wire: Wire
    doc: dict[str, Any]
    branch: str
    before: str
    after: str
    delivery_id: str

    @classmethod
    def new(cls, wire: Wire) -> Push:
        """A push moving a new, never seen branch between two new commits."""
        tag = uuid.uuid4().hex
        doc = _doc(wire)
        push = cls(wire, doc, f"hostile-{tag[:12]}", sha("before" + tag), sha("after" + tag),
                   str(uuid.uuid4()))
        retarget(wire, doc, push.branch, push.before, push.after)
        return push

    def body(self) -> bytes:
        """The bytes sent (and signed)."""
        return json.dumps(self.doc).encode()

    def headers(self, body: bytes, secret: str | None = None) -> dict[str, str]:
        """Headers signing ``body`` with the home secret (or ``secret``)."""
        return self.wire.headers(body, self.delivery_id,
                                 secret or SECRETS[self.wire.provider])


# --- the service -----------------------------------------------------------------------------


@dataclass
class Rig:
    """The running service, the three FakeAPIs and the state file."""

    svc: Service
    api_a: FakeAPI
    api_b: FakeAPI
    attacker: FakeAPI
    db: Path

    def post(self, provider: str, body: bytes, headers: dict[str, str],
             path: str | None = None) -> requests.Response:
        return requests.post(self.svc.url + (path or f"/webhooks/{provider}"), data=body,
                             headers=headers, timeout=30)

    def recorded(self, delivery_id: str) -> list[tuple[str, str]]:
        """(provider, repository) of every deliveries row with this id."""
        with sqlite3.connect(self.db) as conn:
            return list(conn.execute("SELECT provider, repository FROM deliveries "
                                     "WHERE delivery_id = ?", (delivery_id,)))

    def processed(self, delivery_id: str) -> None:
        self.svc.wait_for(lambda lines: any(
            e.get("event") == "delivery.processed" and e.get("delivery_id") == delivery_id
            for e in lines))

    def traced(self, delivery_id: str) -> list[str]:
        """The log events of one delivery, in order."""
        return [e["event"] for e in self.svc.logs() if e.get("delivery_id") == delivery_id]


def _repository(provider: str, name: str, api: FakeAPI, kind: str) -> dict[str, Any]:
    secrets = [f"env:{env_name(kind + '_SECRET', provider)}"]
    if provider == "gitlab" and kind == "HOME":
        secrets.append(f"env:{env_name('SIGNING', provider)}")
    return {"provider": provider, "name": name, "api_url": api.url,
            "webhook_secrets": secrets, "api_token": f"env:{env_name(kind + '_TOKEN', provider)}",
            "branches": ["**"], "pipelines": [{"name": f"{kind.lower()}-deploy",
                                               "paths": ["**"]}]}


def _readable(_rec: Recorded) -> tuple[int, Any, dict[str, str]]:
    return 200, {}, {}


def service_config(db: Path, api_a: FakeAPI, api_b: FakeAPI,
                   limit: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Config and environment: home repositories on ``api_a``, other ones on ``api_b``.

    Each repository itself is readable on its API (GET of the repository answers 200), so a
    compare the API answers 404 is a missing commit: every pipeline counts as changed."""
    repos = []
    env = {env_name("SIGNING", "gitlab"): GITLAB_SIGNING}
    for p in PROVIDERS:
        repos.append(_repository(p, WIRES[p].home, api_a, "HOME"))
        repos.append(_repository(p, WIRES[p].other, api_b, "OTHER"))
        api_a.routes[WIRES[p].api_root(WIRES[p].home)] = _readable
        api_b.routes[WIRES[p].api_root(WIRES[p].other)] = _readable
        env.update({env_name("HOME_SECRET", p): SECRETS[p],
                    env_name("OTHER_SECRET", p): OTHER_SECRETS[p],
                    env_name("HOME_TOKEN", p): TOKENS[p],
                    env_name("OTHER_TOKEN", p): OTHER_TOKENS[p]})
    config = {"state": {"backend": "sqlite", "path": str(db)}, "launcher": {"backend": "log"},
              "server": {"max_body_bytes": limit}, "repositories": repos}
    return config, env


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("hostile")
    api_a, api_b, attacker = FakeAPI(), FakeAPI(), FakeAPI()
    db = workdir / "state.db"
    config, env = service_config(db, api_a, api_b, LIMIT)
    svc = Service(config, workdir, env=env, workers=2).start()
    yield Rig(svc, api_a, api_b, attacker, db)
    svc.stop()
    for api in (api_a, api_b, attacker):
        api.close()


def assert_nothing_happened(rig: Rig, delivery_id: str) -> None:
    """No deliveries row and no acceptance for this id."""
    assert rig.recorded(delivery_id) == []
    assert "webhook.accepted" not in rig.traced(delivery_id)


# --- 1. limits -------------------------------------------------------------------------------


def _padded(push: Push, size: int) -> bytes:
    # trailing whitespace keeps the JSON valid, so only the size differs
    body = push.body()
    return body + b" " * (size - len(body))


def _chunks(body: bytes) -> Iterator[bytes]:
    # a generator makes requests send Transfer-Encoding: chunked, without Content-Length
    for i in range(0, len(body), 8192):
        yield body[i:i + 8192]


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_body_exactly_at_the_limit_is_accepted(rig: Rig, provider: str,
                                                      chunked: bool) -> None:
    push = Push.new(WIRES[provider])
    body = _padded(push, LIMIT)
    answer = rig.post(provider, _chunks(body) if chunked else body,  # type: ignore[arg-type]
                      push.headers(body))
    assert (answer.status_code, answer.json()["status"]) == (202, "accepted")


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_body_one_byte_over_the_limit_is_413_and_nothing_recorded(
        rig: Rig, provider: str, chunked: bool) -> None:
    push = Push.new(WIRES[provider])
    body = _padded(push, LIMIT + 1)
    answer = rig.post(provider, _chunks(body) if chunked else body,  # type: ignore[arg-type]
                      push.headers(body))
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    assert_nothing_happened(rig, push.delivery_id)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_endless_chunked_body_is_cut_off_with_413(rig: Rig, provider: str) -> None:
    push = Push.new(WIRES[provider])

    def endless() -> Iterator[bytes]:
        yield push.body()
        for _ in range(4096):  # 32 MiB if the service read it all
            yield b" " * 8192

    answer = rig.post(provider, endless(), push.headers(b""))  # type: ignore[arg-type]
    assert answer.status_code == 413
    assert_nothing_happened(rig, push.delivery_id)


REFUSED_TYPES = ["text/plain", "application/xml", "multipart/form-data; boundary=x",
                 "application/jsonx", None]


@pytest.mark.parametrize("content_type", REFUSED_TYPES, ids=str)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_push_with_a_refused_content_type_is_415_and_nothing_recorded(
        rig: Rig, provider: str, content_type: str | None) -> None:
    push = Push.new(WIRES[provider])
    body = push.body()
    headers = push.headers(body)
    del headers["Content-Type"]
    if content_type is not None:
        headers["Content-Type"] = content_type
    answer = rig.post(provider, body, headers)
    assert answer.status_code == 415
    assert answer.json()["error"] == "unsupported_media_type"
    assert_nothing_happened(rig, push.delivery_id)


@pytest.mark.parametrize("provider", ["gitlab", "bitbucket", "bitbucket-server"])
def test_form_encoding_is_415_where_only_github_uses_it(rig: Rig, provider: str) -> None:
    push = Push.new(WIRES[provider])
    body = push.body()
    answer = rig.post(provider, body, {**push.headers(body),
                                       "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 415
    assert_nothing_happened(rig, push.delivery_id)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_json_content_type_with_charset_parameter_is_accepted(rig: Rig, provider: str) -> None:
    push = Push.new(WIRES[provider])
    body = push.body()
    answer = rig.post(provider, body, {**push.headers(body),
                                       "Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 202


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize(("extra_depth", "status"), [(MAX_JSON_DEPTH - 1, 202),
                                                     (MAX_JSON_DEPTH, 400)],
                         ids=["at_the_cap", "one_level_past_the_cap"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_push_nesting_past_the_json_depth_cap_is_400(rig: Rig, provider: str,
                                                           extra_depth: int,
                                                           status: int) -> None:
    push = Push.new(WIRES[provider])
    push.doc["x-nested"] = _nested(extra_depth)  # the top object is level 1
    body = push.body()
    answer = rig.post(provider, body, push.headers(body))
    assert answer.status_code == status, answer.text
    if status == 400:
        assert answer.json() == {"error": "bad_request",
                                 "message": f"body nests deeper than {MAX_JSON_DEPTH} levels"}
        assert_nothing_happened(rig, push.delivery_id)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'], ids=["arrays", "objects"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_body_nested_twelve_thousand_levels_is_400_not_a_crash(rig: Rig, provider: str,
                                                                     opening: bytes) -> None:
    body = opening * 12_000  # under the size limit
    answer = rig.post(provider, body, WIRES[provider].headers(body, str(uuid.uuid4()),
                                                              SECRETS[provider]))
    assert answer.status_code == 400
    assert rig.svc.events("request.error") == []


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "form_field_text"])
def test_well_formed_json_nested_a_million_levels_is_refused_not_a_crash(as_text: bool) -> None:
    # 2 MB, within the default body limit, and well-formed, so the parser has to descend
    # all the way (an old orjson overflowed its stack here and killed the worker)
    data = b"[" * 1_000_000 + b"]" * 1_000_000
    with pytest.raises(BadRequest, match=f"nests deeper than {MAX_JSON_DEPTH} levels"):
        load_json_object(data.decode() if as_text else data)


def raw_http(rig: Rig, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes on a new connection; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", rig.svc.port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _raw_post(provider: str, extra: bytes, body: bytes = b"") -> bytes:
    # with a credential header (its value never checked: the framing fails first), so the
    # body must be read; a request without one is refused 401 before its body is read
    credential = REGISTRY[provider].credential_headers[0]
    return (f"POST /webhooks/{provider} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\n{credential}: x\r\n").encode() \
        + extra + b"\r\n" + body


FRAMING = {
    "chunk_size_not_hex": (b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunked_body_cut_short": (b"Transfer-Encoding: chunked\r\n", b"10\r\nabc"),
    "chunk_without_terminator": (b"Transfer-Encoding: chunked\r\n", b"3\r\nabcXY0\r\n\r\n"),
    "content_length_and_chunked": (b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                                   b"0\r\n\r\n"),
    "two_content_lengths": (b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"),
    "negative_content_length": (b"Content-Length: -1\r\n", b""),
    "nul_in_a_header": (b"X-Event-Key: repo\x00push\r\nContent-Length: 2\r\n", b"{}"),
    "body_shorter_than_content_length": (b"Content-Length: 100\r\n", b'{"ref": "refs/h'),
}


@pytest.mark.parametrize(("extra", "body"), FRAMING.values(), ids=FRAMING.keys())
@pytest.mark.parametrize("provider", PROVIDERS)
def test_broken_http_framing_is_400_never_5xx(rig: Rig, provider: str, extra: bytes,
                                              body: bytes) -> None:
    status, _ = raw_http(rig, _raw_post(provider, extra, body))
    assert status == 400


@pytest.mark.parametrize("provider", PROVIDERS)
def test_client_sent_script_name_header_is_dropped_not_a_500(rig: Rig, provider: str) -> None:
    # gunicorn trusts SCRIPT_NAME from 127.0.0.1 unless forwarder_headers is emptied
    push = Push.new(WIRES[provider])
    body = push.body()
    answer = rig.post(provider, body, {**push.headers(body), "SCRIPT_NAME": "/elsewhere"})
    assert answer.status_code == 202


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_transfer_coding_is_refused_as_400_before_the_app(rig: Rig,
                                                                  provider: str) -> None:
    # gunicorn answers 501 (RFC 9112 section 6.1) while parsing; our worker class keeps it a
    # client error, so bad input never gets a 5xx (the app never runs either way)
    delivery_id = str(uuid.uuid4())
    status, body = raw_http(rig, _raw_post(
        provider, f"Transfer-Encoding: foo\r\n{WIRES[provider].delivery_header}: "
        f"{delivery_id}\r\n".encode()))
    assert (status, b"Transfer-Encoding" in body) == (400, True)
    assert_nothing_happened(rig, delivery_id)
    assert rig.traced(delivery_id) == []


@pytest.mark.parametrize(("case", "status"), [
    ("header_field_of_8191_bytes", 431),
    ("101_header_fields", 431),
    ("request_line_of_8191_bytes", 414),
    ("header_field_of_8190_bytes", 401),
    ("100_header_fields", 401),
])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_gunicorn_header_limits_answer_4xx(rig: Rig, provider: str, case: str,
                                           status: int) -> None:
    # the limits count a field line as 'Name: value' plus CRLF; 401 shows the request
    # got through to the app (it is unsigned)
    headers = {"Content-Type": "application/json"}
    path = f"/webhooks/{provider}"
    if case.startswith("header_field"):
        size = int(case.split("_")[3])
        headers["X-Padding"] = "p" * (size - len("X-Padding: ") - 2)
    elif case.endswith("header_fields"):
        # requests adds Host, User-Agent, Accept-Encoding, Accept, Connection, Content-Length
        count = int(case.split("_")[0])
        headers.update({f"X-Field-{i}": "v" for i in range(count - 7)})
    else:
        path += "?" + "q" * (8191 - len(f"POST {path}? HTTP/1.1"))
    answer = requests.post(rig.svc.url + path, data=b"{}", headers=headers, timeout=10)
    assert answer.status_code == status


# --- 2. verification before parsing; answers that reveal nothing -------------------------------


def _list_for_a_name(wire: Wire, doc: dict[str, Any]) -> None:
    """Put a JSON array where the parser looks a name up (a set lookup once raised here)."""
    if wire.provider == "github":
        doc["ref"] = ["refs/heads/main"]
    elif wire.provider == "gitlab":
        doc["object_kind"] = ["push"]
    elif wire.provider == "bitbucket":
        doc["push"]["changes"][0]["new"]["type"] = ["branch"]
    else:
        doc["changes"][0]["type"] = ["UPDATE"]


def _malformed(wire: Wire) -> dict[str, bytes]:
    push = Push.new(wire)
    doc = push.doc
    listed = json.loads(json.dumps(doc))
    _list_for_a_name(wire, listed)
    no_name = json.loads(json.dumps(doc))
    rename(wire, no_name, "")
    bad_after = json.loads(json.dumps(doc))
    retarget(wire, bad_after, push.branch, push.before, "not-a-commit")
    return {
        "not_json": b"push to main",
        "json_array": b"[" + push.body() + b"]",
        "invalid_utf8": push.body().replace(push.branch.encode(), push.branch.encode() + b"\xff"),
        "truncated_json": push.body()[:-1],
        "no_repository_name": json.dumps(no_name).encode(),
        "after_not_a_commit": json.dumps(bad_after).encode(),
        "array_where_a_name_belongs": json.dumps(listed).encode(),
        "empty_body": b"",
    }


MALFORMED = sorted(_malformed(WIRES["github"]))


@pytest.mark.parametrize("signed", [True, False], ids=["signed_400", "unsigned_401"])
@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_payload_is_400_only_when_signed_and_never_recorded(
        rig: Rig, provider: str, case: str, signed: bool) -> None:
    wire = WIRES[provider]
    body = _malformed(wire)[case]
    delivery_id = str(uuid.uuid4())
    headers = wire.headers(body, delivery_id, SECRETS[provider])
    if not signed:
        del headers[wire.signature_header]
    answer = rig.post(provider, body, headers)
    assert answer.status_code == (400 if signed else 401), answer.text
    assert answer.json()["error"] == ("bad_request" if signed else "unauthorized")
    assert_nothing_happened(rig, delivery_id)
    assert rig.traced(delivery_id) == ["webhook.rejected"]


def _unsigned(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    headers = push.headers(body)
    del headers[wire.signature_header]
    return headers


def _other_secret(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    return push.headers(body, OTHER_SECRETS[wire.provider])


def _signed_one_byte_different(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    if wire.provider == "gitlab":  # a plain token covers no body: the signed scheme does
        return {**_unsigned(wire, push, body),
                **gitlab_signed(body + b" ", push.delivery_id, int(time.time()))}
    return push.headers(body + b" ")


def _truncated_signature(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    headers = push.headers(body)
    headers[wire.signature_header] = headers[wire.signature_header][:-1]
    return headers


def _uppercase_signature(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    headers = push.headers(body)
    headers[wire.signature_header] = headers[wire.signature_header].upper()
    return headers


def _signature_in_another_header(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    headers = _unsigned(wire, push, body)
    headers["Authorization"] = f"Bearer {wire.sign(body, SECRETS[wire.provider])}"
    return headers


UNAUTHENTIC = [_unsigned, _other_secret, _signed_one_byte_different, _truncated_signature,
               _uppercase_signature, _signature_in_another_header]


@pytest.mark.parametrize("forge", UNAUTHENTIC, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_unauthentic_delivery_is_401_without_echoing_and_without_outbound_calls(
        rig: Rig, provider: str, forge: Callable[[Wire, Push, bytes], dict[str, str]]) -> None:
    wire = WIRES[provider]
    push = Push.new(wire)
    body = push.body()
    headers = forge(wire, push, body)
    answer = rig.post(provider, body, headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    for value in (SECRETS[provider], OTHER_SECRETS[provider], *headers.values()):
        if value not in (push.delivery_id, "application/json", wire.event[1]):
            assert value not in answer.text
    assert_nothing_happened(rig, push.delivery_id)
    time.sleep(0.2)  # a worker that wrongly picked it up would have called out by now
    calls = json.dumps([[r.path, r.query] for api in (rig.api_a, rig.api_b)
                        for r in api.requests])
    assert push.before not in calls and push.after not in calls


@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_push_of_an_unconfigured_repository_is_404_naming_nothing(rig: Rig,
                                                                        provider: str) -> None:
    wire = WIRES[provider]
    push = Push.new(wire)
    rename(wire, push.doc, "someone/unconfigured-repo")
    body = push.body()
    answer = rig.post(provider, body, push.headers(body))
    assert (answer.status_code, answer.json()) == (
        404, {"error": "not_found", "message": "repository not configured"})
    assert_nothing_happened(rig, push.delivery_id)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unsigned_push_of_an_unconfigured_repository_is_401_like_any_other(
        rig: Rig, provider: str) -> None:
    # without a valid secret nobody can tell configured from unconfigured repositories
    wire = WIRES[provider]
    push = Push.new(wire)
    rename(wire, push.doc, "someone/unconfigured-repo")
    body = push.body()
    answer = rig.post(provider, body, _unsigned(wire, push, body))
    assert answer.status_code == 401


@pytest.mark.parametrize("path", ["/webhooks/nope", "/webhooks/GitHub", "/webhooks/github/",
                                  "/webhooks/..%2fgithub", "/webhooks/github%00",
                                  "/webhooks/bitbucket-server-x"])
def test_unknown_provider_path_is_404_with_one_fixed_answer(rig: Rig, path: str) -> None:
    wire = WIRES["github"]
    push = Push.new(wire)
    body = push.body()
    answer = rig.post("github", body, push.headers(body), path=path)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"
    for name in (*(w.home for w in WIRES.values()), *(w.other for w in WIRES.values())):
        assert name not in answer.text
    assert_nothing_happened(rig, push.delivery_id)


@pytest.fixture(scope="module")
def github_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service configured for one GitHub repository only."""
    workdir = tmp_path_factory.mktemp("github-only")
    api = FakeAPI()
    config, env = service_config(workdir / "state.db", api, api, LIMIT)
    config["repositories"] = [r for r in config["repositories"]
                              if (r["provider"], r["name"]) == ("github", WIRES["github"].home)]
    svc = Service(config, workdir, env=env, workers=1).start()
    yield svc
    svc.stop()
    api.close()


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
@pytest.mark.parametrize("provider", ["gitlab", "bitbucket", "bitbucket-server"])
def test_provider_without_configured_repositories_answers_like_an_unknown_path(
        github_only: Service, provider: str, content_type: str) -> None:
    # a registered provider nobody configured must not be told apart from a made-up path
    wire = WIRES[provider]
    push = Push.new(wire)
    body = push.body()
    headers = {**push.headers(body), "Content-Type": content_type}
    answers = [requests.post(f"{github_only.url}{path}", data=body, headers=headers, timeout=10)
               for path in (f"/webhooks/{provider}", "/webhooks/nope")]
    assert [(a.status_code, a.json()) for a in answers] == [
        (404, {"error": "not_found", "message": "unknown provider path"})] * 2


# --- 3. payloads that try to steer outbound calls ----------------------------------------------


def _point_urls_at(value: Any, target: str) -> Any:
    """Every URL-looking string in ``value`` moved to ``target`` (keeping its path)."""
    if isinstance(value, dict):
        return {k: _point_urls_at(v, target) for k, v in value.items()}
    if isinstance(value, list):
        return [_point_urls_at(v, target) for v in value]
    if isinstance(value, str) and re.match(r"^(https?|ssh|git)://|^git@", value):
        return target + "/" + re.sub(r"^[a-z]+://[^/]+/?|^git@[^:]+:", "", value)
    return value


@dataclass(frozen=True)
class Steer:
    """A signed payload that tries to steer: its edit, the answer, and whose API it may reach."""

    edit: Callable[[Wire, Push, str], None]  # (wire, push, attacker url)
    status: int
    reaches: str | None = "home"  # 'home', 'other' or None (no outbound call at all)
    secret: str = "home"
    server_status: int | None = None  # Bitbucket Data Center's, where its checks differ

    def expected(self, provider: str) -> int:
        """The status this provider answers."""
        if provider == "bitbucket-server" and self.server_status is not None:
            return self.server_status
        return self.status


def _urls(wire: Wire, push: Push, attacker: str) -> None:
    push.doc = _point_urls_at(push.doc, attacker)
    # Bitbucket's own links and the usual API url fields, named explicitly as well
    push.doc.setdefault("repository", {})["links"] = {
        "html": {"href": attacker + "/x"}, "self": [{"href": attacker + "/api"}],
        "clone": [{"href": attacker + "/x.git", "name": "http"}]}
    for key in ("url", "api_url", "clone_url", "html_url", "git_url", "compare"):
        push.doc.setdefault(key, attacker + "/" + key)


def _other_name(wire: Wire, push: Push, attacker: str) -> None:
    rename(wire, push.doc, wire.other)


def _name_with_dot_segments(wire: Wire, push: Push, attacker: str) -> None:
    rename(wire, push.doc, f"{wire.home}/../../{wire.other}")


def _name_dot_dot(wire: Wire, push: Push, attacker: str) -> None:
    rename(wire, push.doc, wire.home.split("/")[0] + "/..")


def _name_in_other_case(wire: Wire, push: Push, attacker: str) -> None:
    rename(wire, push.doc, wire.home.swapcase())


def _after_with_path(wire: Wire, push: Push, attacker: str) -> None:
    retarget(wire, push.doc, push.branch, push.before, f"{push.after[:20]}/../../..{attacker}")


def _after_url_encoded(wire: Wire, push: Push, attacker: str) -> None:
    retarget(wire, push.doc, push.branch, push.before, push.after[:34] + "%2e%2e%2f")


def _after_with_query(wire: Wire, push: Push, attacker: str) -> None:
    retarget(wire, push.doc, push.branch, push.before, push.after + "?access_token=x")


def _before_is_an_url(wire: Wire, push: Push, attacker: str) -> None:
    retarget(wire, push.doc, push.branch, attacker, push.after)


def _branch_with_dot_segments(wire: Wire, push: Push, attacker: str) -> None:
    retarget(wire, push.doc, f"../../{push.branch}/{attacker}", push.before, push.after)


STEERS: dict[str, Steer] = {
    "every_url_in_the_payload_points_at_the_attacker": Steer(_urls, 202),
    "other_configured_repository_signed_with_home_secret": Steer(_other_name, 401, None),
    "other_configured_repository_signed_with_its_own_secret": Steer(
        _other_name, 202, "other", secret="other"),
    # a Data Center slug cannot hold '/': the payload is malformed before any lookup
    "repository_name_with_dot_segments": Steer(_name_with_dot_segments, 404, None,
                                               server_status=400),
    "repository_name_dot_dot": Steer(_name_dot_dot, 404, None),
    "repository_name_in_other_case": Steer(_name_in_other_case, 202),
    "after_with_path_characters": Steer(_after_with_path, 400, None),
    "after_url_encoded_dot_segments": Steer(_after_url_encoded, 400, None),
    "after_with_a_query_string": Steer(_after_with_query, 400, None),
    "before_is_an_url": Steer(_before_is_an_url, 400, None),
    "branch_with_dot_segments_and_an_url": Steer(_branch_with_dot_segments, 202),
}


@pytest.mark.parametrize("case", STEERS.values(), ids=STEERS.keys())
@pytest.mark.parametrize("provider", PROVIDERS)
def test_payload_cannot_steer_outbound_calls(rig: Rig, provider: str, case: Steer) -> None:
    wire = WIRES[provider]
    push = Push.new(wire)
    case.edit(wire, push, rig.attacker.url)
    body = push.body()
    secret = (SECRETS if case.secret == "home" else OTHER_SECRETS)[provider]
    seen = {id(r) for api in (rig.api_a, rig.api_b) for r in api.requests}
    answer = rig.post(provider, body, push.headers(body, secret))
    assert answer.status_code == case.expected(provider), answer.text
    if case.reaches is None:
        assert_nothing_happened(rig, push.delivery_id)
        time.sleep(0.2)  # a worker that wrongly picked it up would have called out by now
    else:
        rig.processed(push.delivery_id)

    def ours(call: Recorded) -> bool:
        text = call.path + json.dumps(call.query)
        return push.before in text or push.after[:20] in text

    home, other = ([r for r in api.requests if id(r) not in seen and ours(r)]
                   for api in (rig.api_a, rig.api_b))
    assert rig.attacker.requests == []
    reached = {"home": home, "other": other}
    for side, calls in reached.items():
        assert bool(calls) == (case.reaches == side), f"{side}: {calls}"
        name = wire.home if side == "home" else wire.other
        token = (TOKENS if side == "home" else OTHER_TOKENS)[provider]
        for call in calls:
            root = wire.api_root(name)
            assert call.path.startswith(root + "/"), call.path
            assert re.fullmatch(wire.routes, call.path[len(root):]), call.path
            assert call.headers["authorization"] == f"Bearer {token}"
            commits = set(re.findall("[0-9a-f]{40}", call.path + json.dumps(call.query)))
            assert commits <= {push.before, push.after}


# --- 5. replays --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_redelivered_delivery_id_is_a_duplicate_even_with_another_body(rig: Rig,
                                                                      provider: str) -> None:
    wire = WIRES[provider]
    push = Push.new(wire)
    body = push.body()
    first = rig.post(provider, body, push.headers(body))
    again = rig.post(provider, body, push.headers(body))
    retarget(wire, push.doc, push.branch, push.before, sha("replayed" + push.after))
    changed = push.body()
    other_body = rig.post(provider, changed, push.headers(changed))
    assert [(a.status_code, a.json()["status"]) for a in (first, again, other_body)] == [
        (202, "accepted"), (200, "duplicate"), (200, "duplicate")]
    assert rig.recorded(push.delivery_id) == [(provider, wire.home)]
    rig.processed(push.delivery_id)
    assert not any(sha("replayed" + push.after) in r.path + str(r.query)
                   for r in rig.api_a.requests)


@pytest.mark.parametrize(("offset", "status"), [(-301, 401), (301, 401), (-290, 202),
                                                (290, 202)],
                         ids=["301s_old", "301s_ahead", "290s_old", "290s_ahead"])
def test_gitlab_signed_webhook_outside_the_timestamp_tolerance_is_401(rig: Rig, offset: int,
                                                                     status: int) -> None:
    wire = WIRES["gitlab"]
    push = Push.new(wire)
    body = push.body()
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
               **gitlab_signed(body, push.delivery_id, int(time.time()) + offset)}
    answer = rig.post("gitlab", body, headers)
    assert answer.status_code == status, answer.text
    if status == 401:
        assert_nothing_happened(rig, push.delivery_id)


def test_gitlab_signed_webhook_replayed_under_a_new_id_is_401(rig: Rig) -> None:
    # the id is part of what is signed, so a captured delivery cannot dodge the dedup
    wire = WIRES["gitlab"]
    push = Push.new(wire)
    body = push.body()
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
               **gitlab_signed(body, push.delivery_id, int(time.time()))}
    first = rig.post("gitlab", body, headers)
    new_id = str(uuid.uuid4())
    replayed = rig.post("gitlab", body, {**headers, "webhook-id": new_id})
    assert (first.status_code, replayed.status_code) == (202, 401)
    assert_nothing_happened(rig, new_id)

"""The status page's readers: ALB OIDC tokens, HTTP Basic, loopback only, and the ``ui``
configuration (receiver/ui/auth.py, receiver/ui/__init__.py, receiver/config.py).

The tokens are ALB-shaped (tests/alb_tokens.py: AWS's documented header and claims, padded
base64url) and signed with the test's own ES256 key, served by a stand-in of the regional
public-key endpoint on 127.0.0.1.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from receiver.config import ALB_PUBLIC_KEY_URL, parse
from receiver.errors import ConfigError, ServiceUnavailable, Unauthorized
from receiver.secrets import SecretRef
from receiver.ui import check, loopback
from receiver.ui.auth import KEY_FETCHES_PER_MINUTE, AlbOidc, Basic, LoopbackOnly
from tests.alb_tokens import ARN, EMAIL, KID, OTHER_ARN, Signer, key_endpoint
from tests.harness import FakeAPI, free_port

NOW = time.time()


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def keys(signer: Signer) -> Iterator[FakeAPI]:
    api = key_endpoint(signer)
    yield api
    api.close()


def alb(keys: FakeAPI) -> AlbOidc:
    return AlbOidc(ARN, keys.url + "/{region}/{kid}", clock=lambda: NOW)


def identify(auth: Any, token: str | None) -> str:
    headers = {} if token is None else {"x-amzn-oidc-data": token}
    return str(auth.identify(headers, {}))


def test_an_alb_token_as_alb_pads_it_identifies_the_user(keys: FakeAPI, signer: Signer) -> None:
    token = signer.token()
    # the docs' claims (79 bytes) and the signature (64) both end in padding
    assert [part.endswith("=") for part in token.split(".")[1:]] == [True, True]
    assert identify(alb(keys), token) == EMAIL
    (fetched,) = keys.requests
    assert fetched.path == f"/us-east-1/{KID}"  # the region of the ARN, the token's key id


def test_an_unpadded_token_as_rfc_7515_writes_it_is_accepted_too(
        keys: FakeAPI, signer: Signer) -> None:
    assert identify(alb(keys), signer.token(padded=False)) == EMAIL


def _strip_padding(token: str) -> str:
    return ".".join(part.rstrip("=") for part in token.split("."))


@pytest.mark.parametrize(("make", "reason"), [
    (lambda s: None, "no x-amzn-oidc-data header"),
    (lambda s: s.token(key=Signer().key), "does not verify"),  # another key signed it
    (lambda s: s.token(signer=OTHER_ARN), "another load balancer"),
    (lambda s: s.token(exp=NOW - 1), "expired"),
    (lambda s: s.token(alg="none"), "ES256"),
    (lambda s: s.token(alg="HS256"), "ES256"),
    (lambda s: s.token(kid="00000000-0000-0000-0000-000000000000"), "no public key"),
    (lambda s: s.token(kid="../../etc/passwd"), "key id"),
    # what ALB signed is the padded text: taking the padding off breaks the signature
    (lambda s: _strip_padding(s.token()), "does not verify"),
    (lambda s: s.token() + ".x", "not a JWT"),
    (lambda s: "%%%." + s.token().split(".", 1)[1], "not base64url"),
], ids=["missing", "wrong key", "wrong signer", "expired", "alg none", "alg HS256",
        "unknown kid", "kid not an id", "padding stripped", "four segments", "not base64"])
def test_an_alb_token_is_refused(keys: FakeAPI, signer: Signer, make: Any,
                                 reason: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        identify(alb(keys), make(signer))
    assert reason in refused.value.message


def test_a_header_without_expiry_is_refused(keys: FakeAPI, signer: Signer) -> None:
    token = signer.token()
    header = base64.urlsafe_b64decode(token.split(".")[0]).replace(b'"exp"', b'"nbf"')
    forged = base64.urlsafe_b64encode(header).decode() + "." + token.split(".", 1)[1]
    with pytest.raises(Unauthorized, match="no expiry"):
        identify(alb(keys), forged)


def test_the_key_is_fetched_once_per_key_id(keys: FakeAPI, signer: Signer) -> None:
    auth = alb(keys)
    for _ in range(5):
        assert identify(auth, signer.token()) == EMAIL
    assert len(keys.requests) == 1


def test_unknown_key_ids_cost_at_most_a_few_fetches_a_minute(
        keys: FakeAPI, signer: Signer) -> None:
    auth = alb(keys)
    for i in range(KEY_FETCHES_PER_MINUTE + 5):
        with pytest.raises(Unauthorized):
            identify(auth, signer.token(kid=f"forged-{i}"))
    assert len(keys.requests) == KEY_FETCHES_PER_MINUTE
    # the known key is still fetched, and kept, once the minute has passed
    later = AlbOidc(ARN, auth.public_key_url, clock=lambda: NOW + 61)
    later._fetches = auth._fetches
    assert identify(later, signer.token(exp=NOW + 600)) == EMAIL


@pytest.mark.parametrize(("answer", "expected"), [
    ((500, {"message": "boom"}, {}), ServiceUnavailable),
    ((200, b"not a key", {}), ServiceUnavailable),
    ((404, {"message": "Not Found"}, {}), Unauthorized),
])
def test_a_key_endpoint_that_fails_or_answers_no_key_refuses(
        signer: Signer, answer: tuple[int, Any, dict[str, str]], expected: type) -> None:
    api = FakeAPI()
    api.routes[f"/us-east-1/{KID}"] = lambda _rec: answer
    try:
        with pytest.raises(expected):
            identify(alb(api), signer.token())
    finally:
        api.close()


def test_an_unreachable_key_endpoint_is_unavailable_not_unauthorized(signer: Signer) -> None:
    auth = AlbOidc(ARN, f"http://127.0.0.1:{free_port()}/{{region}}/{{kid}}")
    with pytest.raises(ServiceUnavailable):
        identify(auth, signer.token())


# --- HTTP Basic ---------------------------------------------------------------------------


USERS = (SecretRef("env:UI_USER_1", ("alice:correct horse",)),
         SecretRef("env:UI_USER_2", ("bob:battery:staple",)))


def basic_header(pair: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


@pytest.mark.parametrize(("headers", "user"), [
    (basic_header("alice:correct horse"), "alice"),
    (basic_header("bob:battery:staple"), "bob"),  # a colon in the password
    ({"authorization": "basic " + base64.b64encode(b"alice:correct horse").decode()}, "alice"),
])
def test_a_configured_user_and_password_identify_the_user(headers: dict[str, str],
                                                          user: str) -> None:
    assert Basic(USERS).identify(headers, {}) == user


@pytest.mark.parametrize("headers", [
    {},
    basic_header("alice:wrong"),
    basic_header("mallory:correct horse"),
    basic_header("alice:correct horse "),
    {"authorization": "Bearer " + base64.b64encode(b"alice:correct horse").decode()},
    {"authorization": "Basic %%%"},
    {"authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
], ids=["none", "wrong password", "unknown user", "trailing space", "bearer", "not base64",
        "not utf-8"])
def test_wrong_or_missing_basic_credentials_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized):
        Basic(USERS).identify(headers, {})


# --- auth: none ---------------------------------------------------------------------------


def test_none_serves_a_connection_that_arrived_at_a_loopback_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()[:2]), \
            server.accept()[0] as accepted:
        assert LoopbackOnly().identify({}, {"gunicorn.socket": accepted}) == ""


def test_none_refuses_a_connection_over_a_unix_socket() -> None:
    left, right = socket.socketpair()  # its address is a path, not a loopback address
    with left, right, pytest.raises(Unauthorized):
        LoopbackOnly().identify({}, {"gunicorn.socket": left})


def test_none_refuses_a_request_whose_connection_it_cannot_see() -> None:
    with pytest.raises(Unauthorized):
        LoopbackOnly().identify({}, {})


@pytest.mark.parametrize(("bind", "expected"), [
    ("127.0.0.1:8080", True), ("127.0.0.2:8080", True), ("[::1]:8080", True),
    ("127.0.0.1", True), ("0.0.0.0:8080", False), ("[::]:8080", False),
    ("10.0.0.5:8080", False), ("localhost:8080", False), ("unix:/tmp/receiver.sock", False),
    ("::1", True),
])
def test_a_bind_is_loopback_only_when_its_address_is(bind: str, expected: bool) -> None:
    assert loopback(bind) is expected


# --- configuration ------------------------------------------------------------------------


def config(ui: Any) -> dict[str, Any]:
    return {"ui": ui, "repositories": [{
        "provider": "github", "name": "acme/mono", "webhook_secrets": ["env:GH"],
        "branches": ["main"], "pipelines": [{"name": "p", "paths": ["**"]}]}]}


def test_without_ui_there_is_no_status_page() -> None:
    assert parse(config(None)).ui is None
    assert parse({k: v for k, v in config(None).items() if k != "ui"}).ui is None


def test_the_public_key_url_defaults_to_albs_regional_endpoint() -> None:
    ui = parse(config({"auth": "alb-oidc", "alb_arn": ARN})).ui
    assert ui is not None and ui.public_key_url == ALB_PUBLIC_KEY_URL == \
        "https://public-keys.auth.elb.{region}.amazonaws.com/{kid}"


@pytest.mark.parametrize(("ui", "problem"), [
    ({}, "ui.auth: is required"),
    ({"auth": "oauth"}, "ui.auth: 'oauth' is not allowed; allowed: alb-oidc, basic, none"),
    ({"auth": "alb-oidc"}, "ui.alb_arn: is required with auth: alb-oidc"),
    ({"auth": "alb-oidc", "alb_arn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
      "loadbalancer/net/receiver/50dc6c495c0c9188"}, "ui.alb_arn: must be an Application"),
    ({"auth": "basic"}, "ui.basic: is required with auth: basic"),
    ({"auth": "basic", "basic": {"users": []}}, "ui.basic.users: must not be empty"),
    ({"auth": "basic", "basic": {"users": ["UI_USER"]}}, "ui.basic.users[0]"),
    ({"auth": "none", "alb_arn": ARN}, "ui.alb_arn: is only for auth: alb-oidc"),
    ({"auth": "none", "basic": {"users": ["env:U"]}}, "ui.basic: is only for auth: basic"),
    ({"auth": "none", "public_key_url": "http://keys.example.com/{kid}"},
     "ui.public_key_url: must be an https URL (http only on a loopback address)"),
    ({"auth": "none", "public_key_url": "https://keys.example.com/{region}"},
     "ui.public_key_url: must be a URL template with {kid}"),
    ({"auth": "none", "public_key_url": "https://keys.example.com/{kid}/{account}"},
     "ui.public_key_url: must be a URL template with {kid}"),
    ({"auth": "none", "theme": "dark"}, "ui.theme: unknown key"),
])
def test_a_wrong_ui_section_names_its_key(ui: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(config(ui))
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


def test_start_up_refuses_none_on_a_bind_that_is_not_loopback() -> None:
    cfg = parse(config({"auth": "none"}))
    check(cfg, "127.0.0.1:8080")
    with pytest.raises(ConfigError, match=r"ui\.auth: none is allowed only"):
        check(cfg, "0.0.0.0:8080")


@pytest.mark.parametrize("value", ["alice", ":password", "alice:"])
def test_start_up_refuses_a_basic_user_that_is_not_user_colon_password(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("UI_USER_1", value)
    cfg = parse(config({"auth": "basic", "basic": {"users": ["env:UI_USER_1"]}}))
    with pytest.raises(ConfigError, match=r"ui.basic.users\[0\]: env:UI_USER_1: must hold"):
        check(cfg, "0.0.0.0:8080")

"""Redaction: no secret, token or signature ever reaches a log line or a response body.

The service runs under gunicorn with known, distinctive webhook secrets (a plain token and
a ``whsec_`` signing token for GitLab), API tokens (Bitbucket Cloud's as Basic credentials
with a username) and the real CodePipeline launcher against moto. Every provider then goes
through a broad set of scenarios: accepted (and processed: a compare call carrying the API
token, one pipeline started and one whose start fails), duplicate, ignored, 400, 401 (with
signature and token headers that CONTAIN the secret, so an echo would show), 404 (an
unconfigured repository, and a path made of the secret), 413 at the default 25 MiB limit,
and 415. The fake provider API answers with a body echoing the Authorization header it got,
so a service that logged API answers would leak the token too.

Afterwards the whole log file (JSON lines and gunicorn's own lines alike) and every response
body are searched for every secret value, and the fake API's request log shows the token
only in the Authorization header.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests.harness import FakeAPI, MotoServer, Recorded, Service, create_pipelines
from tests.test_hostile_input import (
    PROVIDERS,
    WIRES,
    Push,
    Wire,
    gitlab_signed,
    rename,
)

DEFAULT_LIMIT = 25 * 1024 * 1024
SECRETS = {p: f"redact-{p}-webhook-secret-Zq81vXe4" for p in PROVIDERS}
TOKENS = {p: f"redact-{p}-api-token-Hk5Lw02c" for p in PROVIDERS}
SIGNING_KEY = b"redaction-gitlab-signing-key-32b"
SIGNING = "whsec_" + base64.b64encode(SIGNING_KEY).decode()
BITBUCKET_USER = "redact-bot@example.com"
BASIC = base64.b64encode(f"{BITBUCKET_USER}:{TOKENS['bitbucket']}".encode()).decode()
# what must never be written anywhere (the decoded signing key included)
NEVER = {**{f"{p}_webhook_secret": v for p, v in SECRETS.items()},
         **{f"{p}_api_token": v for p, v in TOKENS.items()},
         "gitlab_signing_token": SIGNING, "gitlab_signing_token_base64": SIGNING[len("whsec_"):],
         "gitlab_signing_key": SIGNING_KEY.decode(), "bitbucket_basic_credentials": BASIC}


def deploy(provider: str) -> str:
    """The pipeline that exists in moto."""
    return f"redact-{provider}-deploy"


def missing(provider: str) -> str:
    """The pipeline that does not: its start fails."""
    return f"redact-{provider}-missing"


def _env(kind: str, provider: str) -> str:
    return f"REDACT_{kind}_{provider.replace('-', '_').upper()}"


# --- the scenarios -------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request as sent, and its answer."""

    provider: str
    scenario: str
    headers: dict[str, str]
    status: int
    text: str
    delivery_id: str


@dataclass(frozen=True)
class Scenario:
    """How to build a request from a fresh push, and the status it must get."""

    build: Callable[[Wire, Push], tuple[str, bytes, dict[str, str]]]  # path, body, headers
    status: int


def _signed(wire: Wire, push: Push, body: bytes) -> dict[str, str]:
    return wire.headers(body, push.delivery_id, SECRETS[wire.provider])


def _accepted(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    body = push.body()
    return f"/webhooks/{wire.provider}", body, _signed(wire, push, body)


def _ignored(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    body = push.body()
    # events no repository here subscribes to (pull requests are read now: not those)
    other_event = {"github": "ping", "gitlab": "Issue Hook", "bitbucket": "repo:fork",
                   "bitbucket-server": "repo:comment:added"}[wire.provider]
    headers = {**_signed(wire, push, body), wire.event[0]: other_event}
    if wire.provider == "gitlab":  # the signed-webhook scheme, with the whsec_ token
        del headers["X-Gitlab-Token"]
        headers.update(gitlab_signed(body, push.delivery_id, int(time.time()), SIGNING))
    return f"/webhooks/{wire.provider}", body, headers


def _malformed(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    body = b'["not", "a", "push"]'
    return f"/webhooks/{wire.provider}", body, _signed(wire, push, body)


def _secret_inside_the_signature(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    body = push.body()
    secret = SECRETS[wire.provider]
    value = f"{secret}-not-it" if wire.provider == "gitlab" else f"sha256={secret}"
    return f"/webhooks/{wire.provider}", body, {**_signed(wire, push, body),
                                                 wire.signature_header: value}


def _signed_with_another_secret(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    body = push.body()
    return f"/webhooks/{wire.provider}", body, wire.headers(
        body, push.delivery_id, SECRETS[wire.provider][::-1])


def _unconfigured_repository(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    rename(wire, push.doc, "someone/unconfigured")
    return _accepted(wire, push)


def _secret_as_the_path(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    _, body, headers = _accepted(wire, push)
    return f"/webhooks/{SECRETS[wire.provider]}", body, headers


def _oversize(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    body = push.body()
    body += b" " * (DEFAULT_LIMIT + 1 - len(body))
    return f"/webhooks/{wire.provider}", body, _signed(wire, push, body)


def _plain_text(wire: Wire, push: Push) -> tuple[str, bytes, dict[str, str]]:
    path, body, headers = _accepted(wire, push)
    return path, body, {**headers, "Content-Type": "text/plain"}


SCENARIOS: dict[str, Scenario] = {
    "accepted": Scenario(_accepted, 202),
    "duplicate": Scenario(_accepted, 200),  # the 'accepted' delivery again
    "ignored": Scenario(_ignored, 200),
    "malformed_400": Scenario(_malformed, 400),
    "secret_inside_the_signature_401": Scenario(_secret_inside_the_signature, 401),
    "signed_with_another_secret_401": Scenario(_signed_with_another_secret, 401),
    "unconfigured_repository_404": Scenario(_unconfigured_repository, 404),
    "secret_as_the_path_404": Scenario(_secret_as_the_path, 404),
    "oversize_413": Scenario(_oversize, 413),
    "plain_text_415": Scenario(_plain_text, 415),
}


# --- one run of everything -----------------------------------------------------------------------


def _echo_authorization(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
    # a careless API (or proxy) error that repeats the credentials it was given
    return 404, {"message": f"Not Found for {rec.headers.get('authorization')}"}, {}


@dataclass
class Run:
    """The service, the fake API and everything sent."""

    svc: Service
    api: FakeAPI
    sent: list[Sent] = field(default_factory=list)
    pushes: dict[str, Push] = field(default_factory=dict)  # provider -> the accepted push


def _config(tmp: Any, api: FakeAPI, moto_url: str) -> dict[str, Any]:
    repos = []
    for p in PROVIDERS:
        secrets = [f"env:{_env('SECRET', p)}"] + ([f"env:{_env('SIGNING', p)}"]
                                                  if p == "gitlab" else [])
        repo: dict[str, Any] = {
            "provider": p, "name": WIRES[p].home, "api_url": api.url,
            "webhook_secrets": secrets, "api_token": f"env:{_env('TOKEN', p)}",
            "branches": ["**"],
            "pipelines": [{"name": deploy(p), "paths": ["**"]},
                          {"name": missing(p), "paths": ["**"]}]}
        if p == "bitbucket":
            repo["api_username"] = BITBUCKET_USER
        repos.append(repo)
    # no 'server' section: the default 25 MiB limit applies
    return {"state": {"backend": "sqlite", "path": str(tmp / "state.db")},
            "launcher": {"backend": "codepipeline", "endpoint_url": moto_url,
                         "region": "us-east-1"},
            "processing": {"max_attempts": 1}, "repositories": repos}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer) -> Iterator[Run]:
    moto_server.reset()
    create_pipelines(moto_server.url, [deploy(p) for p in PROVIDERS])
    tmp = tmp_path_factory.mktemp("redaction")
    api = FakeAPI()
    # the compare API answers 404, echoing the token; the repository itself is readable, so
    # that 404 is a missing commit (every pipeline then counts as changed)
    for p in PROVIDERS:
        api.routes.update({f"{WIRES[p].api_root(WIRES[p].home)}{tail}": _echo_authorization
                           for tail in ("/commits", "/changes", "/repository/compare")})
        api.routes[WIRES[p].api_root(WIRES[p].home)] = lambda _rec: (200, {}, {})
    env = {_env("SIGNING", "gitlab"): SIGNING}
    for p in PROVIDERS:
        env.update({_env("SECRET", p): SECRETS[p], _env("TOKEN", p): TOKENS[p]})
    svc = Service(_config(tmp, api, moto_server.url), tmp, env=env, workers=2).start()
    result = Run(svc, api)
    try:
        for p in PROVIDERS:
            wire = WIRES[p]
            for name, scenario in SCENARIOS.items():
                push = result.pushes[p] if name == "duplicate" else Push.new(wire)
                if name == "accepted":
                    result.pushes[p] = push
                    # GitHub's compare path names the commits, so its route is per push
                    api.routes[f"/repos/{wire.home}/compare/{push.before}...{push.after}"] = \
                        _echo_authorization
                path, body, headers = scenario.build(wire, push)
                answer = requests.post(svc.url + path, data=body, headers=headers, timeout=60)
                result.sent.append(Sent(p, name, headers, answer.status_code, answer.text,
                                        push.delivery_id))
        processed = {push.delivery_id for push in result.pushes.values()}

        def all_processed(lines: list[dict[str, Any]]) -> bool:
            return processed <= {e.get("delivery_id") for e in lines
                                 if e.get("event") == "delivery.processed"}

        svc.wait_for(all_processed, timeout=60)
        yield result
    finally:
        svc.stop()
        api.close()


# --- what must hold ------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_scenario_got_its_answer(run: Run, provider: str, scenario: str) -> None:
    [sent] = [s for s in run.sent if (s.provider, s.scenario) == (provider, scenario)]
    assert sent.status == SCENARIOS[scenario].status, sent.text
    expected_status = {"accepted": "accepted", "duplicate": "duplicate", "ignored": "ignored"}
    if scenario in expected_status:
        assert json.loads(sent.text)["status"] == expected_status[scenario]


def test_every_scenario_left_its_log_line(run: Run) -> None:
    logs = run.svc.logs()
    for p in PROVIDERS:
        mine = [e for e in logs if e.get("provider") == p]
        events = {e["event"] for e in mine}
        assert {"webhook.accepted", "webhook.duplicate", "webhook.ignored",
                "delivery.processed"} <= events, p
        assert {e.get("status") for e in mine if e["event"] == "webhook.rejected"} >= \
            {400, 401, 404, 413, 415}, p
        assert [e["pipeline"] for e in logs if e["event"] == "pipeline.started"
                and e["delivery_id"] == run.pushes[p].delivery_id] == [deploy(p)]
        assert [e["pipeline"] for e in logs if e["event"] == "pipeline.start_failed"
                and e["delivery_id"] == run.pushes[p].delivery_id] == [missing(p)]


@pytest.mark.parametrize("value", NEVER.values(), ids=NEVER.keys())
def test_no_response_body_holds_a_secret_or_token(run: Run, value: str) -> None:
    assert [s.scenario for s in run.sent if value in s.text] == []


def test_no_response_body_echoes_a_signature_or_token_header_sent(run: Run) -> None:
    for sent in run.sent:
        wire = WIRES[sent.provider]
        for name in (wire.signature_header, "webhook-signature"):
            value = sent.headers.get(name)
            if value:
                assert value not in sent.text, (sent.provider, sent.scenario)


@pytest.mark.parametrize("value", NEVER.values(), ids=NEVER.keys())
def test_no_log_line_holds_a_secret_or_token(run: Run, value: str) -> None:
    text = run.svc.log_path.read_text(errors="replace")
    assert run.svc.events("delivery.processed")  # the run was logged
    assert value not in text


def test_no_log_line_holds_a_signature_sent(run: Run) -> None:
    text = run.svc.log_path.read_text(errors="replace")
    signatures = {v for s in run.sent for k, v in s.headers.items()
                  if k in ("X-Hub-Signature-256", "X-Hub-Signature", "webhook-signature")}
    assert len(signatures) > 20
    assert [v for v in signatures if v in text] == []


def test_fake_api_saw_the_token_only_in_the_authorization_header(run: Run) -> None:
    assert {r.path.split("/")[1] for r in run.api.requests} >= {"repos", "api", "2.0", "rest"}
    for rec in run.api.requests:
        provider = next(p for p in PROVIDERS if (root := WIRES[p].api_root(WIRES[p].home))
                        == rec.path or rec.path.startswith(root + "/"))
        token = TOKENS[provider]
        expected = f"Basic {BASIC}" if provider == "bitbucket" else f"Bearer {token}"
        assert rec.headers["authorization"] == expected
        elsewhere = json.dumps([rec.path, rec.query, rec.body.decode(errors="replace"),
                                {k: v for k, v in rec.headers.items() if k != "authorization"}])
        assert token not in elsewhere and BASIC not in elsewhere


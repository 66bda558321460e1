"""``aws-secretsmanager:`` secret references against moto's server mode, rotation included.

Secrets Manager is moto's real wire protocol on 127.0.0.1, reached through boto3's own
``AWS_ENDPOINT_URL_SECRETS_MANAGER`` override. The cache is timed with an injected clock,
except over HTTP, where the service runs under gunicorn with a one-second TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

import receiver.secrets as secrets_mod
from providers.base import match_hex_hmac
from receiver.config import parse, read_secrets
from receiver.errors import ConfigError, Unauthorized
from receiver.logging import configure
from receiver.secrets import TTL_ENV, AwsSecretRef, SecretRef, resolve
from tests.harness import FakeAPI, MotoServer, Service, fixture_bytes, free_port

ENDPOINT_ENV = "AWS_ENDPOINT_URL_SECRETS_MANAGER"
OLD = "sm-old-webhook-secret-4b1d"
NEW = "sm-new-webhook-secret-9e27"
PLAIN = "sm-plain-secret-value-71c0"
BUNDLE_GITHUB = "sm-bundle-github-value-3f5a"
BUNDLE_GITLAB = "sm-bundle-gitlab-value-0d22"
BUNDLE = {"github": BUNDLE_GITHUB, "gitlab": BUNDLE_GITLAB, "port": 8443}
EVERY_VALUE = (OLD, NEW, PLAIN, BUNDLE_GITHUB, BUNDLE_GITLAB)
PUSH = "github/go-playground-push.json"
PUSH_REPO = "binkkatal/sample_app"  # the repository of the recorded push


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def sm(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Secrets Manager client on the emptied moto server, which the code under test uses too."""
    monkeypatch.setenv(ENDPOINT_ENV, moto.url)
    monkeypatch.delenv(TTL_ENV, raising=False)
    monkeypatch.setenv("SM_TEST_OTHER", "unused-env-secret")
    return boto3.client("secretsmanager", region_name="us-east-1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def github_signature(secret: str, body: bytes) -> str:
    """The hex digest GitHub sends in X-Hub-Signature-256 (after ``sha256=``)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def config_with(ref: str, where: str = "webhook_secrets") -> dict[str, Any]:
    """A valid configuration whose only secret reference at ``where`` is ``ref``."""
    repo: dict[str, Any] = {
        "provider": "github", "name": "acme/mono", "webhook_secrets": ["env:SM_TEST_OTHER"],
        "branches": ["main"], "pipelines": [{"name": "acme-deploy", "paths": ["src/**"]}],
    }
    if where == "webhook_secrets":
        repo["webhook_secrets"] = [ref]
    else:
        repo[where] = ref
    return {"launcher": {"backend": "log"}, "repositories": [repo]}


def rotate_to_pending(sm: Any, name: str) -> None:
    """Finish a rotation the way AWS's rotation template does: AWSCURRENT moves to the pending
    version, then AWSPENDING is removed (the old version becomes AWSPREVIOUS)."""
    stages = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
    current = next(v for v, s in stages.items() if "AWSCURRENT" in s)
    pending = next(v for v, s in stages.items() if "AWSPENDING" in s)
    sm.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT",
                                   MoveToVersionId=pending, RemoveFromVersionId=current)
    sm.update_secret_version_stage(SecretId=name, VersionStage="AWSPENDING",
                                   RemoveFromVersionId=pending)


# --- resolution --------------------------------------------------------------------------


def _plain_by_name(sm: Any) -> str:
    sm.create_secret(Name="hooks/plain", SecretString=PLAIN)
    return "aws-secretsmanager:hooks/plain"


def _json_key(sm: Any) -> str:
    sm.create_secret(Name="hooks/bundle", SecretString=json.dumps(BUNDLE))
    return "aws-secretsmanager:hooks/bundle#gitlab"


def _plain_by_arn(sm: Any) -> str:
    arn = sm.create_secret(Name="hooks/plain", SecretString=PLAIN)["ARN"]
    return f"aws-secretsmanager:{arn}"


def _arn_in_another_region(sm: Any) -> str:
    # moto keeps regions apart: only a client for us-west-2 finds this secret
    west = boto3.client("secretsmanager", region_name="us-west-2")
    arn = west.create_secret(Name="hooks/west", SecretString=PLAIN)["ARN"]
    return f"aws-secretsmanager:{arn}"


def _json_key_by_arn(sm: Any) -> str:
    arn = sm.create_secret(Name="hooks/bundle", SecretString=json.dumps(BUNDLE))["ARN"]
    return f"aws-secretsmanager:{arn}#github"


def _pending_version(sm: Any) -> str:
    sm.create_secret(Name="hooks/rotating", SecretString=OLD)
    sm.put_secret_value(SecretId="hooks/rotating", SecretString=NEW, VersionStages=["AWSPENDING"])
    return "aws-secretsmanager:hooks/rotating"


def _pending_on_the_current_version(sm: Any) -> str:
    version = sm.create_secret(Name="hooks/rotated", SecretString=OLD)["VersionId"]
    sm.update_secret_version_stage(SecretId="hooks/rotated", VersionStage="AWSPENDING",
                                   MoveToVersionId=version)
    return "aws-secretsmanager:hooks/rotated"


def _pending_without_the_json_key(sm: Any) -> str:
    sm.create_secret(Name="hooks/bundle", SecretString=json.dumps(BUNDLE))
    sm.put_secret_value(SecretId="hooks/bundle", SecretString=json.dumps({"gitlab": NEW}),
                        VersionStages=["AWSPENDING"])
    return "aws-secretsmanager:hooks/bundle#github"


def _pending_json_key(sm: Any) -> str:
    sm.create_secret(Name="hooks/bundle", SecretString=json.dumps(BUNDLE))
    sm.put_secret_value(SecretId="hooks/bundle", SecretString=json.dumps({"github": NEW}),
                        VersionStages=["AWSPENDING"])
    return "aws-secretsmanager:hooks/bundle#github"


RESOLVED = {
    "plain_string_by_name_is_the_value": (_plain_by_name, (PLAIN,)),
    "json_key_is_that_key_of_the_object": (_json_key, (BUNDLE_GITLAB,)),
    "plain_string_by_arn_is_the_value": (_plain_by_arn, (PLAIN,)),
    "arn_is_read_in_its_own_region": (_arn_in_another_region, (PLAIN,)),
    "json_key_by_arn_is_that_key": (_json_key_by_arn, (BUNDLE_GITHUB,)),
    "pending_version_is_accepted_after_current": (_pending_version, (OLD, NEW)),
    "pending_on_the_current_version_counts_once": (_pending_on_the_current_version, (OLD,)),
    "pending_json_key_is_accepted_after_current": (_pending_json_key, (BUNDLE_GITHUB, NEW)),
    "pending_without_the_json_key_is_left_out": (_pending_without_the_json_key,
                                                 (BUNDLE_GITHUB,)),
}


@pytest.mark.parametrize(("setup", "expected"), RESOLVED.values(), ids=RESOLVED.keys())
def test_reference_resolves_to_current_then_pending(
        sm: Any, setup: Callable[[Any], str], expected: tuple[str, ...]) -> None:
    ref = setup(sm)
    secret = resolve(ref)
    assert isinstance(secret, AwsSecretRef)
    assert secret.ref == ref
    assert secret.values() == expected
    assert secret.value() == expected[0]


@pytest.mark.parametrize("where", ["webhook_secrets", "api_token"])
def test_config_reads_the_reference_on_first_use(sm: Any, where: str) -> None:
    ref = "aws-secretsmanager:hooks/bundle#gitlab"
    repo = parse(config_with(ref, where)).repositories[0]  # before the secret even exists
    secret = repo.webhook_secrets[0] if where == "webhook_secrets" else repo.api_token
    assert secret is not None and secret.ref == ref
    sm.create_secret(Name="hooks/bundle", SecretString=json.dumps(BUNDLE))
    assert secret.value() == BUNDLE_GITLAB


@pytest.mark.parametrize("setup", [_plain_by_name, _json_key, _pending_version],
                         ids=["plain", "json_key", "rotating"])
def test_repr_and_config_repr_show_the_reference_and_no_value(
        sm: Any, setup: Callable[[Any], str]) -> None:
    ref = setup(sm)
    secret = resolve(ref)
    shown = repr(secret) + str(secret) + repr(parse(config_with(ref)))
    assert ref in repr(secret)
    assert not [v for v in EVERY_VALUE if v in shown]


# --- start-up failures: a config error naming the key path and the reference -----------
# A malformed reference is refused while parsing; one that cannot be read is refused by
# read_secrets, which serve runs at start-up (commands that need no secret never read it).

BASELINE_REF = "aws-secretsmanager:hooks/bundle#github"


@pytest.fixture
def stored(sm: Any) -> Any:
    """The secrets every start-up case reads: a plain string, a JSON object, a binary one."""
    sm.create_secret(Name="hooks/plain", SecretString=PLAIN)
    sm.create_secret(Name="hooks/bundle", SecretString=json.dumps(BUNDLE))
    sm.create_secret(Name="hooks/blob", SecretBinary=b"\x00binary")
    return sm


def test_baseline_reference_of_the_failure_table_loads(stored: Any) -> None:
    cfg = parse(config_with(BASELINE_REF))
    read_secrets(cfg)
    assert cfg.repositories[0].webhook_secrets[0].values() == (BUNDLE_GITHUB,)


DEAD = "dead-endpoint"  # replaced by a closed port on 127.0.0.1
LOAD_FAILURES = {
    "unknown_secret": ("webhook_secrets", "aws-secretsmanager:hooks/missing", {},
                       "no such secret"),
    "unknown_secret_as_api_token": ("api_token", "aws-secretsmanager:hooks/missing", {},
                                    "no such secret"),
    "missing_json_key": ("webhook_secrets", "aws-secretsmanager:hooks/bundle#bitbucket", {},
                         "the AWSCURRENT JSON object has no key 'bitbucket'"),
    "json_key_of_a_plain_string": ("webhook_secrets", "aws-secretsmanager:hooks/plain#github", {},
                                   "the AWSCURRENT value is not a JSON object"),
    "json_key_that_is_not_a_string": ("webhook_secrets", "aws-secretsmanager:hooks/bundle#port",
                                      {}, "key 'port' of the AWSCURRENT JSON object is not a "
                                      "string"),
    "empty_json_key": ("webhook_secrets", "aws-secretsmanager:hooks/bundle#", {},
                       "the JSON key after '#' is empty"),
    "malformed_secret_name": ("webhook_secrets", "aws-secretsmanager:hooks bundle#github", {},
                              "'hooks bundle' is neither a secret name"),
    "binary_secret": ("webhook_secrets", "aws-secretsmanager:hooks/blob", {},
                      "the AWSCURRENT version holds binary data, not a string"),
    "unreachable_secrets_manager": ("webhook_secrets", BASELINE_REF, {ENDPOINT_ENV: DEAD},
                                    "Secrets Manager request failed (EndpointConnectionError)"),
    "no_default_region_for_a_name": ("webhook_secrets", BASELINE_REF,
                                     {"AWS_DEFAULT_REGION": None}, "no AWS region"),
    "ttl_that_is_not_a_number": ("webhook_secrets", BASELINE_REF, {TTL_ENV: "soon"},
                                 "RECEIVER_SECRET_TTL_SECONDS='soon' must be a number of seconds "
                                 "above 0"),
    "ttl_of_zero": ("webhook_secrets", BASELINE_REF, {TTL_ENV: "0"},
                    "RECEIVER_SECRET_TTL_SECONDS='0' must be a number of seconds above 0"),
}
MALFORMED = {"empty_json_key", "malformed_secret_name"}  # the others are well-formed


@pytest.mark.parametrize(("case", "where", "ref", "env", "expected"),
                         [(k, *v) for k, v in LOAD_FAILURES.items()], ids=LOAD_FAILURES.keys())
def test_unusable_reference_is_a_config_error_naming_key_path_and_reference(
        stored: Any, monkeypatch: pytest.MonkeyPatch, case: str, where: str, ref: str,
        env: dict[str, str | None], expected: str) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}" if value == DEAD else value)
    monkeypatch.delenv("AWS_REGION", raising=False)
    key_path = "repositories[0].webhook_secrets[0]" if where == "webhook_secrets" \
        else f"repositories[0].{where}"
    with pytest.raises(ConfigError) as info:
        if case in MALFORMED:
            parse(config_with(ref, where))
        else:
            read_secrets(parse(config_with(ref, where)))
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(f"{key_path}: {ref}: {expected}"), \
        info.value.problems
    assert not [v for v in EVERY_VALUE if v in str(info.value)]


# --- the cache ---------------------------------------------------------------------------

TTLS = {
    "default_ttl_of_300_seconds": (None, 300.0),
    "ttl_from_the_environment": ("30", 30.0),
    "fractional_ttl": ("0.5", 0.5),
}


@pytest.mark.parametrize(("env_ttl", "ttl"), TTLS.values(), ids=TTLS.keys())
def test_changed_value_is_picked_up_after_the_ttl_and_not_before(
        sm: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, env_ttl: str | None,
        ttl: float) -> None:
    if env_ttl is not None:
        monkeypatch.setenv(TTL_ENV, env_ttl)
    sm.create_secret(Name="hooks/ttl", SecretString=OLD)
    secret = resolve("aws-secretsmanager:hooks/ttl", clock=clock)
    sm.put_secret_value(SecretId="hooks/ttl", SecretString=NEW)
    clock.advance(ttl * 0.99)
    assert secret.values() == (OLD,)
    assert secret.value() == OLD
    clock.advance(ttl * 0.02)
    assert secret.values() == (NEW,)
    assert secret.value() == NEW


def _dead_endpoint(sm: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    real = os.environ[ENDPOINT_ENV]
    monkeypatch.setenv(ENDPOINT_ENV, f"http://127.0.0.1:{free_port()}")

    def repair() -> None:
        monkeypatch.setenv(ENDPOINT_ENV, real)
        sm.put_secret_value(SecretId="hooks/flaky", SecretString=NEW)
    return repair


def _deleted_secret(sm: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    sm.delete_secret(SecretId="hooks/flaky", ForceDeleteWithoutRecovery=True)

    def repair() -> None:
        sm.create_secret(Name="hooks/flaky", SecretString=NEW)
    return repair


REFRESH_FAILURES = {
    "secrets_manager_unreachable": (_dead_endpoint, "Secrets Manager request failed "
                                    "(EndpointConnectionError)"),
    "secret_deleted": (_deleted_secret, "no such secret, or it has no AWSCURRENT version"),
}


@pytest.mark.parametrize(("breaker", "error"), REFRESH_FAILURES.values(),
                         ids=REFRESH_FAILURES.keys())
def test_failed_refresh_serves_cached_values_and_retries_after_a_backoff(
        sm: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        breaker: Callable[[Any, pytest.MonkeyPatch], Callable[[], None]], error: str) -> None:
    configure()
    ref = "aws-secretsmanager:hooks/flaky"
    sm.create_secret(Name="hooks/flaky", SecretString=OLD)
    secret = resolve(ref, clock=clock)
    repair = breaker(sm, monkeypatch)
    capsys.readouterr()

    def failures() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in out if line.startswith("{")]
        return [e for e in lines if e["event"] == "secret.refresh_failed"]

    out: list[str] = []
    clock.advance(300.1)
    assert secret.values() == (OLD,)
    out += capsys.readouterr().out.splitlines()
    assert [(e["ref"], e["error"], e["retry_in_seconds"]) for e in failures()] == \
        [(ref, f"{ref}: {error}", 1.0)]
    assert secret.values() == (OLD,)  # within the back-off: no new attempt
    out += capsys.readouterr().out.splitlines()
    assert len(failures()) == 1
    clock.advance(1.01)
    assert secret.values() == (OLD,)
    out += capsys.readouterr().out.splitlines()
    assert [e["retry_in_seconds"] for e in failures()] == [1.0, 2.0]
    repair()
    clock.advance(2.01)
    assert secret.values() == (NEW,)
    out += capsys.readouterr().out.splitlines()
    assert any(json.loads(line)["event"] == "secret.versions_changed" for line in out
               if line.startswith("{"))
    assert not [v for v in EVERY_VALUE if any(v in line for line in out)]


def test_concurrent_access_after_the_ttl_fetches_once_and_never_blocks_on_it(
        sm: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    sm.create_secret(Name="hooks/busy", SecretString=OLD)
    secret = resolve("aws-secretsmanager:hooks/busy", clock=clock)
    sm.put_secret_value(SecretId="hooks/busy", SecretString=NEW)
    real_client = secrets_mod._client
    calls: list[str] = []

    class SlowCountingClient:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def get_secret_value(self, **kwargs: Any) -> Any:
            calls.append(kwargs["VersionStage"])
            time.sleep(0.3)  # a slow Secrets Manager: the other threads must not wait for it
            return self.inner.get_secret_value(**kwargs)

    monkeypatch.setattr(secrets_mod, "_client",
                        lambda region: SlowCountingClient(real_client(region)))
    clock.advance(301)
    barrier = threading.Barrier(16)
    results: list[tuple[tuple[str, ...], float]] = []

    def read() -> None:
        barrier.wait()
        started = time.monotonic()
        values = secret.values()
        results.append((values, time.monotonic() - started))

    threads = [threading.Thread(target=read) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert calls == ["AWSCURRENT", "AWSPENDING"]
    assert sorted(v for v, _ in results) == [(NEW,)] + [(OLD,)] * 15
    assert sum(1 for _, took in results if took >= 0.3) == 1
    assert secret.values() == (NEW,)


# --- rotation, verified with the shared GitHub-style HMAC helper ------------------------

ROTATION_NAME = "hooks/github-rotation"


def rotation_phase(sm: Any, clock: FakeClock, phase: str) -> SecretRef:
    """The reference (resolved before the rotation began) as it stands at ``phase``."""
    sm.create_secret(Name=ROTATION_NAME, SecretString=OLD)
    secret = resolve(f"aws-secretsmanager:{ROTATION_NAME}", clock=clock)
    if phase == "before":
        return secret
    sm.put_secret_value(SecretId=ROTATION_NAME, SecretString=NEW, VersionStages=["AWSPENDING"])
    clock.advance(300.1)
    # deliveries keep arriving while the rotation runs
    assert secret.values() == (OLD, NEW)
    if phase == "rotating":
        return secret
    rotate_to_pending(sm, ROTATION_NAME)
    if phase == "completed_within_ttl":
        return secret
    clock.advance(300.1)
    assert phase == "completed_after_ttl"
    return secret


ROTATION = {
    "old_secret_verifies_before_the_rotation": ("before", OLD, True),
    "new_secret_is_refused_before_the_rotation": ("before", NEW, False),
    "pending_secret_verifies_during_the_rotation": ("rotating", NEW, True),
    "current_secret_still_verifies_during_the_rotation": ("rotating", OLD, True),
    "old_secret_verifies_until_the_ttl_after_completion": ("completed_within_ttl", OLD, True),
    "old_secret_is_refused_after_completion_and_the_ttl": ("completed_after_ttl", OLD, False),
    "new_secret_verifies_after_completion_and_the_ttl": ("completed_after_ttl", NEW, True),
}


@pytest.mark.parametrize(("phase", "signed_with", "verifies"), ROTATION.values(),
                         ids=ROTATION.keys())
def test_rotation_phase_decides_which_github_signature_verifies(
        sm: Any, clock: FakeClock, phase: str, signed_with: str, verifies: bool) -> None:
    secret = rotation_phase(sm, clock, phase)
    body = fixture_bytes(PUSH)
    signature = github_signature(signed_with, body)
    if verifies:
        assert match_hex_hmac(body, signature, [secret]) is secret
    else:
        with pytest.raises(Unauthorized, match="signature does not match"):
            match_hex_hmac(body, signature, [secret])


# --- end to end: the service under gunicorn ---------------------------------------------

E2E_NAME = "e2e/github-webhook"


def _e2e_by_name(sm: Any) -> str:
    sm.create_secret(Name=E2E_NAME, SecretString=OLD)
    return f"aws-secretsmanager:{E2E_NAME}"


def _e2e_by_arn(sm: Any) -> str:
    arn = sm.create_secret(Name=E2E_NAME, SecretString=OLD)["ARN"]
    return f"aws-secretsmanager:{arn}"


def _e2e_json_key(sm: Any) -> str:
    sm.create_secret(Name=E2E_NAME, SecretString=json.dumps({"github": OLD}))
    return f"aws-secretsmanager:{E2E_NAME}#github"


E2E_FORMS: dict[str, tuple[Callable[[Any], str], Callable[[str], str]]] = {
    "by_name": (_e2e_by_name, lambda v: v),
    "by_arn": (_e2e_by_arn, lambda v: v),
    "json_key": (_e2e_json_key, lambda v: json.dumps({"github": v})),
}


def deliver(svc: Service, secret: str) -> requests.Response:
    body = fixture_bytes(PUSH)
    return requests.post(svc.url + "/webhooks/github", data=body, timeout=10, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + github_signature(secret, body),
    })


@pytest.fixture
def e2e_service(tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> Iterator[
        Callable[[str], Service]]:
    started: list[Service] = []

    def start(ref: str) -> Service:
        config = {
            "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
            "launcher": {"backend": "log"},
            "repositories": [{
                "provider": "github", "name": PUSH_REPO, "api_url": fake_api.url,
                "webhook_secrets": [ref], "branches": ["master"],
                "pipelines": [{"name": "app-deploy", "paths": ["**"]}],
            }],
        }
        svc = Service(config, tmp_path, env={ENDPOINT_ENV: moto.url, TTL_ENV: "1"})
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


@pytest.mark.parametrize(("create", "stored_as"), E2E_FORMS.values(), ids=E2E_FORMS.keys())
def test_rotation_over_http_accepts_the_pending_secret_then_refuses_the_old_one(
        sm: Any, e2e_service: Callable[[str], Service], create: Callable[[Any], str],
        stored_as: Callable[[str], str]) -> None:
    ref = create(sm)
    svc = e2e_service(ref)
    answers = [("old before rotation", deliver(svc, OLD), 202)]
    sm.put_secret_value(SecretId=E2E_NAME, SecretString=stored_as(NEW),
                        VersionStages=["AWSPENDING"])
    time.sleep(1.2)  # past the TTL: every worker refreshes on its next request
    answers += [("pending during rotation", deliver(svc, NEW), 202),
                ("old during rotation", deliver(svc, OLD), 202)]
    rotate_to_pending(sm, E2E_NAME)
    time.sleep(1.2)
    answers += [("old after rotation", deliver(svc, OLD), 401),
                ("new after rotation", deliver(svc, NEW), 202)]
    assert [(what, r.status_code) for what, r, _ in answers] == \
        [(what, status) for what, _, status in answers]
    refused = answers[3][1].json()
    assert refused["error"] == "unauthorized"
    accepted = svc.events("webhook.accepted")
    assert [e["verified_by"] for e in accepted] == [ref] * 4
    everything = svc.log_path.read_text(errors="replace") + \
        "".join(r.text for _, r, _ in answers)
    assert not [v for v in (OLD, NEW) if v in everything]

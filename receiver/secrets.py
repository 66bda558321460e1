"""Secret references: configuration names where a secret lives, never the secret itself.

Forms:

- ``env:NAME`` (ECS injects Secrets Manager values as environment variables),
- ``file:PATH``,
- ``aws-secretsmanager:ARN_OR_NAME`` optionally followed by ``#json_key`` (the secret string
  is a JSON object and the value is that key), read with boto3 and cached for
  ``RECEIVER_SECRET_TTL_SECONDS`` (default 300). During a rotation both the ``AWSCURRENT``
  and the ``AWSPENDING`` version count, so a provider may be switched to the new secret
  before the rotation completes without losing a delivery.

The reference string (``ref``) is safe to log; the value never is, and ``repr`` shows only
the reference. Every error message names the reference, never a value.

A reference is checked for its form when the configuration is parsed (:func:`parse_ref`)
and read when its value is first used, so a command that needs no secret runs without it
(``receiver.config.read_secrets`` reads them all at ``serve``'s start-up).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainValidator

from receiver.errors import SecretError

ALLOWED_FORMS = "env:NAME, file:PATH or aws-secretsmanager:ARN_OR_NAME[#json_key]"
AWS_SCHEME = "aws-secretsmanager"
TTL_ENV = "RECEIVER_SECRET_TTL_SECONDS"
DEFAULT_TTL_SECONDS = 300.0
CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"
# after a failed refresh the cached values are served and the next access retries once this
# has passed; it doubles per consecutive failure, capped at BACKOFF_MAX_SECONDS and the TTL
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0

_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")

Clock = Callable[[], float]


class SecretRef:
    """A secret reference. ``values()`` are the currently accepted values, read on first use.

    Built from a parsed reference (:func:`parse_ref`), or with its ``values`` given.
    """

    __slots__ = ("_values", "ref")

    def __init__(self, ref: str, values: tuple[str, ...] | None = None) -> None:
        self.ref = ref
        self._values = values

    def __repr__(self) -> str:
        return f"SecretRef({self.ref!r})"

    def values(self) -> tuple[str, ...]:
        """Every value that currently counts as this secret (more than one during a rotation).

        Raises SecretError when the first read fails (unset, unreadable or empty)."""
        values = self._values
        if values is None:
            # two threads reading at once both read the same value: no lock needed
            values = self._values = self._load()
        return values

    def value(self) -> str:
        """The current value (the first of :meth:`values`)."""
        return self.values()[0]

    def _load(self) -> tuple[str, ...]:
        scheme, _, target = self.ref.partition(":")
        if scheme == "env":
            value = os.environ.get(target)
            if value is None:
                raise SecretError(f"{self.ref}: environment variable {target} is not set")
        else:
            try:
                value = Path(target).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SecretError(f"{self.ref}: cannot read file ({exc.strerror})") from None
        if not value:
            raise SecretError(f"{self.ref}: the secret is empty")
        return (value,)


@dataclass(frozen=True, slots=True)
class _Version:
    version_id: str
    value: str = field(repr=False)


class AwsSecretRef(SecretRef):
    """An ``aws-secretsmanager:`` reference: ``AWSCURRENT`` first, then ``AWSPENDING`` if any.

    The values are fetched on first use (a failure then is a :class:`SecretError`, and the
    region and ``RECEIVER_SECRET_TTL_SECONDS`` are looked up then) and again on the first
    access after ``ttl`` seconds. A failed refresh keeps serving the cached values and is
    retried on an access after a short back-off. Thread-safe: one thread refreshes while
    the others keep the cached values.
    """

    __slots__ = ("_clock", "_failures", "_json_key", "_lock", "_next_fetch", "_refreshing",
                 "_region", "_secret_id", "_ttl", "_version_ids")

    def __init__(self, ref: str, secret_id: str, json_key: str | None, region: str | None, *,
                 clock: Clock = time.monotonic) -> None:
        super().__init__(ref)
        self._secret_id = secret_id
        self._json_key = json_key
        self._region = region or ""  # "": the default region, looked up on first use
        self._ttl = DEFAULT_TTL_SECONDS
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing = False
        self._failures = 0
        self._version_ids: tuple[str, str | None] = ("", None)
        self._next_fetch = 0.0

    def values(self) -> tuple[str, ...]:
        """``AWSCURRENT``, then ``AWSPENDING`` when one exists and differs; refreshed per TTL.

        Raises SecretError when the first fetch fails (no values to serve yet)."""
        if self._values is None:
            return super().values()
        self._refresh_if_due()
        return self._values

    def _load(self) -> tuple[str, ...]:
        self._ttl = _ttl_from_env(self.ref)
        self._region = self._region or _default_region() or ""
        if not self._region:
            raise SecretError(f"{self.ref}: no AWS region: set AWS_REGION or give the "
                              "secret's ARN")
        current, pending = self._fetch(self.ref)
        self._version_ids = _ids(current, pending)
        self._next_fetch = self._clock() + self._ttl
        return _accepted(current, pending)

    def _refresh_if_due(self) -> None:
        with self._lock:
            if self._refreshing or self._clock() < self._next_fetch:
                return
            self._refreshing = True
        # fetched outside the lock: other threads keep verifying with the cached values
        try:
            current, pending = self._fetch(self.ref)
        except Exception as exc:  # any failure: a refresh must never fail a request
            with self._lock:
                self._failures += 1
                failures = self._failures
                wait = min(BACKOFF_FIRST_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS,
                           self._ttl)
                self._next_fetch = self._clock() + wait
                self._refreshing = False
            # our own messages name the reference only; foreign ones are reduced to a name
            error = str(exc) if isinstance(exc, SecretError) else _error_name(exc)
            _log().warning("secret.refresh_failed", ref=self.ref, error=error,
                           failures=failures, retry_in_seconds=round(wait, 3),
                           serving="cached values")
            return
        ids = _ids(current, pending)
        with self._lock:
            changed = ids != self._version_ids
            self._values = _accepted(current, pending)
            self._version_ids = ids
            self._failures = 0
            self._next_fetch = self._clock() + self._ttl
            self._refreshing = False
        if changed:
            # version ids are opaque identifiers, not secret: they tell an operator
            # which rotation step this process has seen
            _log().info("secret.versions_changed", ref=self.ref, current_version=ids[0],
                        pending_version=ids[1])

    def _fetch(self, ref: str) -> tuple[_Version, _Version | None]:
        """Read both stages; raises SecretError (naming ``ref`` only) when AWSCURRENT fails."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = _client(self._region)
            current = self._read(client, CURRENT, ref)
            try:
                pending: _Version | None = self._read(client, PENDING, ref)
            except ClientError as exc:
                if _error_code(exc) != "ResourceNotFoundException":
                    raise
                pending = None  # no rotation in progress
            except SecretError as exc:
                # a broken pending version must not block updates of the current one
                _log().warning("secret.pending_unusable", ref=ref, error=str(exc))
                pending = None
        except ClientError as exc:
            raise SecretError(f"{ref}: {_client_error_text(exc)}") from None
        except BotoCoreError as exc:
            # no answer at all: unreachable endpoint, timeout, missing credentials
            raise SecretError(f"{ref}: Secrets Manager request failed "
                              f"({type(exc).__name__})") from None
        return current, pending

    def _read(self, client: Any, stage: str, ref: str) -> _Version:
        answer = client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
        text = answer.get("SecretString")
        if text is None:
            raise SecretError(f"{ref}: the {stage} version holds binary data, not a string")
        value = text if self._json_key is None else _json_field(text, self._json_key, ref, stage)
        if not value:
            raise SecretError(f"{ref}: the {stage} value is empty")
        return _Version(str(answer.get("VersionId", "")), value)


def _json_field(text: str, key: str, ref: str, stage: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    # the decoder's message may quote the document, so it is not passed on
    if not isinstance(doc, dict):
        raise SecretError(f"{ref}: the {stage} value is not a JSON object, so it has no key "
                          f"{key!r}")
    if key not in doc:
        raise SecretError(f"{ref}: the {stage} JSON object has no key {key!r}")
    value = doc[key]
    if not isinstance(value, str):
        raise SecretError(f"{ref}: key {key!r} of the {stage} JSON object is not a string")
    return value


def _accepted(current: _Version, pending: _Version | None) -> tuple[str, ...]:
    if pending is None or pending.value == current.value:
        return (current.value,)
    return (current.value, pending.value)


def _ids(current: _Version, pending: _Version | None) -> tuple[str, str | None]:
    return current.version_id, pending.version_id if pending else None


def _error_code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _error_name(exc: BaseException) -> str:
    # codes and class names only: messages from a failing dependency are not ours to vouch for
    return _error_code(exc) or type(exc).__name__


_CLIENT_ERRORS = {
    "ResourceNotFoundException": "no such secret, or it has no AWSCURRENT version",
    "AccessDeniedException": "access denied (the task role needs "
                             "secretsmanager:GetSecretValue on it)",
    "DecryptionFailure": "Secrets Manager cannot decrypt it (KMS key access)",
    "InvalidRequestException": "the secret cannot be read now (is it scheduled for deletion?)",
}


def _client_error_text(exc: Any) -> str:
    code = _error_code(exc)
    return _CLIENT_ERRORS.get(code, f"Secrets Manager answered {code or 'an error'}")


_clients: dict[tuple[int, str, str | None], Any] = {}
_clients_lock = threading.Lock()


def _client(region: str) -> Any:
    """The process's ``secretsmanager`` client for ``region``.

    Keyed by process id because gunicorn forks workers after the master has loaded the
    configuration, and a client must not be shared across a fork. The endpoint override
    (``AWS_ENDPOINT_URL_SECRETS_MANAGER``, honoured by boto3 itself) is part of the key so
    that the client follows it.
    """
    key = (os.getpid(), region, os.environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER"))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            # a refresh runs inside a webhook request: fail within seconds, then the
            # cached values carry on
            client = boto3.session.Session().client(
                "secretsmanager", region_name=region,
                config=Config(retries={"mode": "standard", "total_max_attempts": 2},
                              connect_timeout=2, read_timeout=3),
            )
            _clients[key] = client
        return client


def _default_region() -> str | None:
    import boto3

    region = boto3.session.Session().region_name
    return str(region) if region else None


def _ttl_from_env(ref: str) -> float:
    raw = os.environ.get(TTL_ENV)
    if raw is None or raw == "":
        return DEFAULT_TTL_SECONDS
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0 or ttl == float("inf"):
        raise SecretError(f"{ref}: {TTL_ENV}={raw!r} must be a number of seconds above 0")
    return ttl


def _parse_aws(ref: str, target: str, clock: Clock) -> AwsSecretRef:
    secret_id, sep, json_key = target.partition("#")  # '#' cannot occur in names or ARNs
    if sep and not json_key:
        raise SecretError(f"{ref}: the JSON key after '#' is empty")
    arn = _SECRET_ARN.fullmatch(secret_id)
    if arn is None and not _SECRET_NAME.fullmatch(secret_id):
        raise SecretError(f"{ref}: {secret_id!r} is neither a secret name (letters, digits, "
                          "/_+=.@-) nor a Secrets Manager ARN")
    return AwsSecretRef(ref, secret_id, json_key if sep else None,
                        arn.group("region") if arn else None, clock=clock)


def parse_ref(ref: object, *, clock: Clock = time.monotonic) -> SecretRef:
    """Check a reference's form; nothing is read. Raises SecretError if malformed.

    ``clock`` (monotonic seconds) times the cache of ``aws-secretsmanager:`` references.
    """
    if not isinstance(ref, str):
        raise SecretError(f"must be a secret reference ({ALLOWED_FORMS}), not an inline value")
    scheme, sep, target = ref.partition(":")
    if not sep or not target:
        raise SecretError(f"must be a secret reference ({ALLOWED_FORMS})")
    if scheme == AWS_SCHEME:
        return _parse_aws(ref, target, clock)
    if scheme not in ("env", "file"):
        raise SecretError(f"unknown secret scheme {scheme!r}; allowed: {ALLOWED_FORMS}")
    return SecretRef(ref)


def resolve(ref: object, *, clock: Clock = time.monotonic) -> SecretRef:
    """Parse and read a reference now. Raises SecretError if malformed, unset, unreadable
    or empty."""
    secret = parse_ref(ref, clock=clock)
    secret.values()
    return secret


def _secret_field(value: object) -> SecretRef:
    return value if isinstance(value, SecretRef) else parse_ref(value)


# a configuration field holding a secret reference (validated for its form, read on use)
Secret = Annotated[SecretRef, PlainValidator(_secret_field)]


def _log() -> Any:
    from receiver.logging import get_logger

    return get_logger()

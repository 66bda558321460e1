"""Who may read the status page: one :class:`Authenticator` per ``ui.auth`` mode.

- ``alb-oidc`` (:class:`AlbOidc`): the load balancer's ``authenticate-oidc`` rule signed
  the user's claims into ``x-amzn-oidc-data``, a JWT whose header names the signing load
  balancer (``signer``) and its key (``kid``); the key is an ES256 (P-256) public key in PEM
  at ``https://public-keys.auth.elb.{region}.amazonaws.com/{kid}``. ALB pads its base64url
  segments with ``=`` and signs the padded text, so the signature is checked over the
  header and payload exactly as they arrived (padded or not), never re-encoded.
- ``basic`` (:class:`Basic`): HTTP Basic, ``user:password`` compared in constant time
  with every configured value.
- ``none`` (:class:`LoopbackOnly`): no credentials, for a service bound to a loopback
  address only (:func:`receiver.ui.check` refuses any other bind at start-up, and each
  request is checked to have arrived on a loopback socket).

Each ``identify`` returns the reader's name (for the page header) or raises
:class:`~receiver.errors.Unauthorized` saying why (never what a secret is), or
:class:`~receiver.errors.ServiceUnavailable` when the key cannot be fetched now.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm

from providers.base import constant_time_equal
from receiver.errors import ServiceUnavailable, Unauthorized
from receiver.secrets import SecretRef

ALB_HEADER = "x-amzn-oidc-data"
BASIC_CHALLENGE = 'Basic realm="webhook-receiver status", charset="UTF-8"'
# ALB's key ids are UUIDs; anything else is refused before it can shape a URL
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")  # the base64 module skips other characters
TOKEN_MAX_CHARS = 16 * 1024  # ALB's claims header is far smaller (its user info is capped)
KEY_MAX_BYTES = 4096  # a P-256 public key in PEM is about 180 bytes
KEY_TIMEOUT_SECONDS = 5.0
# unknown key ids fetched per process and minute: ALB signs with a handful of keys, and a
# forged header must not turn the service into a stream of requests to the key endpoint
KEY_FETCHES_PER_MINUTE = 10
_ES256 = ECAlgorithm(ECAlgorithm.SHA256)


class Authenticator(Protocol):
    """How one ``ui.auth`` mode identifies a reader."""

    #: the ``WWW-Authenticate`` value of a 401 answer (None: there is nothing to ask for)
    challenge: str | None

    def identify(self, headers: Mapping[str, str], environ: Mapping[str, Any]) -> str:
        """The reader's name (may be empty), from the request's ``headers`` (any case) and
        WSGI ``environ``; raises Unauthorized (401) saying why, or ServiceUnavailable."""


class Basic:
    """HTTP Basic against ``user:password`` secret references (several: rotation, teams)."""

    challenge: str | None = BASIC_CHALLENGE

    def __init__(self, users: tuple[SecretRef, ...]) -> None:
        self.users = users

    def identify(self, headers: Mapping[str, str], environ: Mapping[str, Any]) -> str:
        """The user name, when the Authorization header carries a configured pair."""
        scheme, _, encoded = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise Unauthorized("HTTP Basic credentials are required")
        try:
            given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the HTTP Basic credentials are not base64 of user:password") \
                from None
        # every value compared, so timing does not tell which one is close
        matches = [constant_time_equal(given, value) for ref in self.users
                   for value in ref.values()]
        if not any(matches):
            raise Unauthorized("wrong user name or password")
        return given.partition(":")[0]


class LoopbackOnly:
    """No credentials, on a connection that arrived at a loopback address only."""

    challenge: str | None = None

    def identify(self, headers: Mapping[str, str], environ: Mapping[str, Any]) -> str:
        """Empty: nobody in particular. The socket's own address decides, not the Host
        header: gunicorn hands the connection over as ``gunicorn.socket``."""
        sock = environ.get("gunicorn.socket")
        try:
            local = ipaddress.ip_address(sock.getsockname()[0]) if sock is not None else None
        except (OSError, ValueError, IndexError, TypeError):
            local = None
        if local is None or not local.is_loopback:
            raise Unauthorized("ui.auth none serves connections to a loopback address only")
        return ""


class AlbOidc:
    """Verifies ALB's ``x-amzn-oidc-data``: ES256, signed by ``alb_arn``, not expired, with
    the key ``public_key_url`` names for its ``kid`` (fetched once per key id and kept)."""

    challenge: str | None = None

    def __init__(self, alb_arn: str, public_key_url: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.alb_arn = alb_arn
        self.region = alb_arn.split(":")[3]  # arn:aws:elasticloadbalancing:REGION:...
        self.public_key_url = public_key_url
        self.clock = clock
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetches: deque[float] = deque()
        self._lock = threading.Lock()

    def identify(self, headers: Mapping[str, str], environ: Mapping[str, Any]) -> str:
        """The user's ``email`` claim, else ``sub``."""
        token = headers.get(ALB_HEADER) or ""
        if not token:
            raise Unauthorized(f"no {ALB_HEADER} header: the request did not pass the load "
                               "balancer's authenticate-oidc rule")
        parts = token.split(".")
        if len(token) > TOKEN_MAX_CHARS or len(parts) != 3:
            raise Unauthorized(f"{ALB_HEADER} is not a JWT")
        header = _segment(parts[0])
        if header.get("alg") != "ES256":
            raise Unauthorized(f"{ALB_HEADER} is not signed with ES256")
        if header.get("signer") != self.alb_arn:
            raise Unauthorized(f"{ALB_HEADER} is signed by another load balancer than ui.alb_arn")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise Unauthorized(f"{ALB_HEADER} has no usable key id (kid)")
        now = self.clock()
        _check_expiry(header.get("exp"), now, required=True)
        key = self._key(kid)
        # ALB signs the header and payload as it sends them, padding included
        signing_input, _, signature = token.rpartition(".")
        if not _ES256.verify(signing_input.encode("ascii"), key, _decode(signature)):
            raise Unauthorized(f"the signature of {ALB_HEADER} does not verify")
        claims = _segment(parts[1])
        _check_expiry(claims.get("exp"), now, required=False)
        return str(claims.get("email") or claims.get("sub") or "")

    def _key(self, kid: str) -> ec.EllipticCurvePublicKey:
        """The public key of ``kid``: kept, or fetched (a few unknown ids a minute)."""
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = self.clock()
            while self._fetches and self._fetches[0] <= now - 60:
                self._fetches.popleft()
            if len(self._fetches) >= KEY_FETCHES_PER_MINUTE:
                raise Unauthorized("too many unknown key ids in a minute; try again later")
            self._fetches.append(now)
        url = self.public_key_url.format(region=self.region, kid=quote(kid, safe=""))
        try:
            answer = requests.get(url, timeout=KEY_TIMEOUT_SECONDS, stream=True)
            body = answer.raw.read(KEY_MAX_BYTES + 1, decode_content=True)
            answer.close()
        except (requests.RequestException, OSError) as exc:
            raise ServiceUnavailable("the load balancer's public key could not be fetched; "
                                     "retry later", cause=type(exc).__name__) from exc
        if answer.status_code >= 500:
            raise ServiceUnavailable("the load balancer's public key could not be fetched; "
                                     "retry later", cause=f"HTTP {answer.status_code}")
        if answer.status_code != 200:
            raise Unauthorized(f"no public key for the key id of {ALB_HEADER} "
                               f"(HTTP {answer.status_code})")
        key = _p256(body)
        with self._lock:
            self._keys[kid] = key
        return key


def _p256(pem: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM; ServiceUnavailable for anything else (the endpoint
    answered, but not with what ALB signs with)."""
    try:
        key = load_pem_public_key(pem) if len(pem) <= KEY_MAX_BYTES else None
    except ValueError:
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ServiceUnavailable("the key endpoint answered something other than a P-256 "
                                 "public key", cause="not a P-256 PEM key")
    return key


def _decode(segment: str) -> bytes:
    """A base64url segment, padded (as ALB sends it) or not (as RFC 7515 has it)."""
    if not _BASE64URL.fullmatch(segment):
        raise Unauthorized(f"{ALB_HEADER} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment.encode("ascii") + b"=" * (-len(segment) % 4))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Unauthorized(f"{ALB_HEADER} is not base64url") from None


def _segment(segment: str) -> dict[str, Any]:
    """A JWT header or payload segment as its JSON object."""
    try:
        value = json.loads(_decode(segment))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise Unauthorized(f"{ALB_HEADER} is not a JWT")
    return value


def _check_expiry(exp: Any, now: float, *, required: bool) -> None:
    """``exp`` (epoch seconds) lies after ``now``; a header without one is refused."""
    if exp is None and not required:
        return
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise Unauthorized(f"{ALB_HEADER} has no expiry (exp)")
    if exp <= now:
        raise Unauthorized(f"{ALB_HEADER} has expired")

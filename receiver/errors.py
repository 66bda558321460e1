"""One error hierarchy for the whole service.

Request errors (``RequestError`` subclasses) carry their HTTP status and a stable
``code``; ``receiver.app`` maps them to JSON answers in one place. Dependency errors
(``DependencyError`` subclasses) are what foreign exceptions (requests, botocore) are
translated into at the boundary, so nothing above a client sees a foreign type.
Messages never contain a secret, a token or a payload.
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every error this service raises on purpose."""


# --- configuration -------------------------------------------------------------------


class ConfigError(ReceiverError):
    """The configuration is invalid; ``problems`` has one line per error, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# --- request errors (mapped to HTTP) ---------------------------------------------------


class RequestError(ReceiverError):
    """A refused webhook request: ``status`` is the HTTP status, ``code`` the error id."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RequestError):
    """Malformed body or headers (400)."""

    status = 400
    code = "bad_request"


class Unauthorized(RequestError):
    """Missing or wrong signature or token (401)."""

    status = 401
    code = "unauthorized"


class NotFound(RequestError):
    """Unknown provider path or repository not configured (404)."""

    status = 404
    code = "not_found"


class PayloadTooLarge(RequestError):
    """Body over the configured limit (413)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    """Content type not accepted for this provider (415)."""

    status = 415
    code = "unsupported_media_type"


class ServiceUnavailable(RequestError):
    """The state store cannot record the delivery (503), so a provider that retries will.

    ``cause`` is the store's own error, for the log line only (never in the answer)."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class Ignored(ReceiverError):
    """A verified delivery with nothing to do (answered 200 ``ignored`` with ``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- dependency errors (translated at the client boundary) -----------------------------


class DependencyError(ReceiverError):
    """A call to something outside the process failed."""


class ProviderError(DependencyError):
    """The provider API failed in a way a later retry may fix (timeout, 5xx, rate limit)."""


class StateError(DependencyError):
    """The state store failed (unreachable, throttled, corrupt)."""


class LaunchError(DependencyError):
    """Starting a pipeline failed. ``code`` is the AWS error code or a short id."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

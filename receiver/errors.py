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


class RetryLater(ReceiverError):
    """Processing a delivery must be retried later (the worker releases it with back-off,
    or fails it once its attempts are used up)."""


# --- dependency errors (translated at the client boundary) -----------------------------


class DependencyError(ReceiverError):
    """A call to something outside the process failed."""


class TerminalError(ReceiverError):
    """Work that no later try can do (a commit status for a repository no longer
    configured, a payload that cannot be read): the background task that met it is
    finished failed at once instead of being retried (controller-runtime's
    ``TerminalError``). Every other ReceiverError raised by background work may be
    retried with back-off."""


class ProviderError(DependencyError):
    """The provider API failed in a way a later retry may fix (timeout, 5xx, rate limit).

    ``status`` is the HTTP status of the answer that refused the call outright (a 4xx or
    3xx that is not a rate limit), None when no answer did (timeouts, 5xx, rate limits)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# why a repository cannot be read, by HTTP status, about "{repository}"
_UNREADABLE = {
    401: "the token is not accepted (missing, wrong, expired or revoked), so {repository} "
         "cannot be read",
    403: "the token lacks the permission to read {repository}",
    404: "the token cannot read {repository}, or it does not exist",
}
_MOVED = "{repository} has moved (renamed or transferred): configure its new name"


class RepositoryUnreadable(ProviderError):
    """The configured repository cannot be read with the configured token and ``api_url``:
    401/403, a 404 for the repository itself (not for a commit in it), or a redirect.

    Not an incomplete difference: nothing says which files changed, and a retry helps only
    once someone fixes the token, ``name`` or ``api_url``. So the delivery is retried and
    finally fails, starting nothing. ``cause`` says why in words, about "it" (for lines that
    name the repository already); ``str()`` names the repository; neither holds a secret.
    """

    def __init__(self, repository: str, status: int) -> None:
        template = _UNREADABLE.get(status) or (
            _MOVED if 300 <= status < 400 else "the API refused to read {repository}")
        self.repository = repository
        self.cause = f"{template.format(repository='it')} (HTTP {status})"
        super().__init__(f"{template.format(repository=repository)} (HTTP {status})",
                         status=status)


class StateError(DependencyError):
    """The state store failed (unreachable, throttled, corrupt)."""


class LaunchError(DependencyError):
    """Starting a pipeline failed. ``code`` is the AWS error code or a short id."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

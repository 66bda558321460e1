"""One error hierarchy for the whole service, mapped to HTTP in one place (receiver/app.py).

::

    ReceiverError                   every error this service raises on purpose
    ├── ConfigError                 the configuration is invalid (problems, with key paths)
    ├── SecretError                 a secret reference is malformed or points at nothing
    ├── RequestError                a refused request: HTTP status and stable code
    │   ├── BadRequest              400 malformed body or headers
    │   ├── Unauthorized            401 missing or wrong signature, token or key
    │   ├── NotFound                404 unknown provider path, repository not configured
    │   ├── PayloadTooLarge         413 body over the limit
    │   ├── UnsupportedMediaType    415 content type not accepted
    │   └── ServiceUnavailable      503 the state store cannot record it (retry later)
    ├── Ignored                     200 ``ignored``: verified, nothing to do
    ├── RetryLater                  background work to redo later, with back-off (retryable)
    ├── TerminalError               background work no later try can do (not retried)
    └── DependencyError             a call outside the process failed (translated at the
        │                           boundary from requests, botocore, sqlite3, git; cause kept)
        ├── ProviderError           the provider API or git server (retryable)
        │   └── RepositoryUnreadable  the token or name cannot read the repository
        ├── NotifyError             a notification target (SNS, a chat webhook) (retryable)
        ├── StateError              the state store (retryable)
        └── LaunchError             starting a pipeline (``retryable`` says which)

Retryable vs terminal (controller-runtime's distinction): background work that raises a
``TerminalError`` is finished failed at once; any other ReceiverError may succeed on a later
try and is retried with back-off within its bounds (``processing.max_attempts`` for a
delivery, the sender's back-off for a task). Messages never contain a secret, a token or a
payload.
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


class SecretError(ReceiverError, ValueError):
    """A secret reference that is malformed or points at nothing; the message names the
    reference only. A ValueError too, so configuration validation reports it at its key."""


class RetryLater(ReceiverError):
    """Background work must be redone later (a delivery is released with back-off)."""


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


# --- repository content ----------------------------------------------------------------


class FileTooLarge(ReceiverError):
    """A file read from a repository (the module map) is larger than ``limit`` bytes; found
    without reading it whole. Not retried: a commit always holds the same file. ``size``
    is its size when known (None: more than ``limit`` came before reading stopped)."""

    def __init__(self, path: str, limit: int, size: int | None = None) -> None:
        self.path = path
        self.limit = limit
        self.size = size
        super().__init__(f"{path} is {size} bytes, more than {limit}" if size is not None
                         else f"{path} is larger than {limit} bytes")


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


class NotifyError(DependencyError):
    """A notification target (SNS, a chat webhook) failed in a way a later try may fix:
    it could not be reached, throttled, or answered 5xx. A refusal no retry can fix is a
    :class:`TerminalError` instead. The message never holds a webhook URL."""


class StateError(DependencyError):
    """The state store failed (unreachable, throttled, corrupt)."""


class LaunchError(DependencyError):
    """Starting a pipeline failed. ``code`` is the AWS error code or a short id."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

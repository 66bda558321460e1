"""The Provider protocol, the compare result, and the crypto and HTTP helpers all providers share.

Providers see headers (a mapping with lower-case keys) and the raw body bytes, never a
Flask request, and return the frozen event model. Outbound URLs are built only from the
configured repository (``api_url`` and ``name``) and commit ids that were validated as hex,
so nothing in a payload chooses a host, a path or a token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Concatenate, Literal, ParamSpec, Protocol, TypeVar, cast

import orjson
import requests

from receiver.config import RepositoryConfig
from receiver.errors import (
    BadRequest,
    FileTooLarge,
    Ignored,
    ProviderError,
    RepositoryUnreadable,
    Unauthorized,
)
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent, RefType
from receiver.secrets import SecretRef

Headers = Mapping[str, str]
CompareStatus = Literal["ahead", "behind", "identical", "diverged"]
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_ZERO_SHAS = ("0" * 40, "0" * 64)
# an abbreviated commit id in a pull request payload (Bitbucket Cloud sends 12 digits)
_ABBREVIATED_SHA = re.compile(r"^[0-9a-f]{12,64}$")
MAX_PULL_REQUEST_NUMBER = 2**31 - 1
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:{}_-]{1,128}$")
# real push payloads nest about 6 levels; the cap keeps hostile bodies from costing more
MAX_JSON_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed from ``base`` to ``head``.

    ``status`` relates head to base (``behind``/``identical``: head is contained in base).
    ``paths`` is the complete set of changed paths (renames give both old and new), or
    None when the provider could not list all of them; ``reason`` then says why.
    ``api_calls`` counts the HTTP requests made.
    """

    status: CompareStatus
    paths: frozenset[str] | None
    reason: str | None = None
    api_calls: int = 0

    @property
    def contained(self) -> bool:
        """Head is already part of base: nothing new to deploy."""
        return self.status in ("behind", "identical")


# below this share of the limit (or, where no limit is announced, this many calls) the
# reconciler leaves the rest of a repository's branches for a later pass
LOW_BUDGET_SHARE = 0.10
LOW_BUDGET_FLOOR = 50


@dataclass(frozen=True, slots=True)
class BranchHead:
    """What a provider said about one branch's head.

    ``sha`` is its head commit (validated lower-case hex), None when the branch does not
    exist or when ``not_modified`` (a 304: the head is the one the given ETag stands for).
    ``etag`` is the answer's ETag (None where the provider gives none or it is not used).
    ``remaining``/``limit`` are the rate-limit budget the answer announced (None when it
    announced none), ``reset_at`` when it refills (UNIX seconds), ``near_limit`` a
    provider's own low-budget flag (Bitbucket Cloud's ``X-RateLimit-NearLimit``).
    """

    sha: str | None
    etag: str | None = None
    not_modified: bool = False
    remaining: int | None = None
    limit: int | None = None
    reset_at: float | None = None
    near_limit: bool = False

    @property
    def low_budget(self) -> bool:
        """The rate-limit budget is low: further reads should wait for a later pass."""
        if self.near_limit:
            return True
        if self.remaining is None:
            return False
        if self.limit:
            return self.remaining < self.limit * LOW_BUDGET_SHARE
        return self.remaining < LOW_BUDGET_FLOOR


StatusState = Literal["pending", "running", "success", "failure", "error"]
HaltReason = Literal["stopped", "cancelled", "superseded"]


@dataclass(frozen=True, slots=True)
class CommitStatus:
    """One status on one commit, in provider-neutral terms (each provider maps it).

    ``name`` identifies the status on the commit: a later write with the same name replaces
    it (GitHub ``context``, GitLab ``name``, Bitbucket ``name`` and a ``key`` derived from
    it), e.g. ``codepipeline/<pipeline>`` or ``webhook-receiver/config``. ``state``:
    ``pending`` (queued), ``running``, ``success``, ``failure`` or ``error``; ``detail`` is
    set only with ``error`` and says the run was halted rather than broken (stopped,
    cancelled or superseded), which GitLab and Bitbucket show as cancelled/stopped.
    ``url`` is the link target; ``description`` a short text, cut to each provider's limit.
    """

    name: str
    state: StatusState
    url: str
    description: str
    detail: HaltReason | None = None

    def __post_init__(self) -> None:
        if self.detail is not None and self.state != "error":
            raise ValueError(f"detail {self.detail!r} needs state 'error', not {self.state!r}")
        if not self.name:
            raise ValueError("a commit status needs a name")


@dataclass(frozen=True, slots=True)
class NoOptions:
    """The options of a provider that has no repository keys of its own."""


class Provider(Protocol):
    """One Git hosting provider: verification, normalization and the compare API.

    ``name`` is the registry key (also the module name, URL segment and config value):
    ``providers.build_providers`` sets it on each instance, and events carry it.
    ``content_types`` are the media types its webhooks may use (others are 415).
    ``default_api_url`` is a repository's ``api_url`` when it gives none (None: required);
    ``default_git_url`` the ``git_url`` template (``{name}``) on the public host that API
    serves; :meth:`git_url_for` the clone URL a repository gets when ``diff: git`` names
    none (None: ``git_url`` is required).
    ``Options`` is a frozen dataclass, validated by pydantic, whose fields are the
    repository keys only this provider has; a repository's ``options`` is an instance.
    ``credential_headers`` are the lower-case names of the headers that carry a
    delivery's signature or token: :meth:`verify` needs at least one of them (present and
    non-empty) and refuses every request with none. The service answers such a request
    401 from its headers alone, before its body is read (after :meth:`preflight`), so a
    client that sends no credential cannot make it wait for a body.
    """

    name: str
    content_types: tuple[str, ...]
    credential_headers: ClassVar[tuple[str, ...]]
    default_api_url: ClassVar[str | None]
    default_git_url: ClassVar[str | None]
    Options: ClassVar[type[Any]]

    @classmethod
    def git_url_for(cls, api_url: str, name: str) -> str | None:
        """The HTTPS clone URL of repository ``name`` served by ``api_url``, when it follows
        from them; None when it does not (a self-managed host whose clone URL is unknown)."""
        ...

    @staticmethod
    def webhook_secret_problem(value: str) -> str | None:
        """Why ``value`` cannot be one of this provider's webhook secrets, or None.

        Checked when the secrets are read at start-up (``receiver.config.read_secrets``).
        """
        ...

    def preflight(self, headers: Headers) -> None:
        """Raise Ignored for a provider test request that is sent unsigned by design.

        Decides from the headers alone: it runs before the body is read and before the
        credential headers are required, must change nothing, and may only answer
        ``ignored`` (e.g. Bitbucket Data Center's ``diagnostics:ping``). Most providers do
        nothing.
        """
        ...

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """Return the secret that authenticates ``body``; raise Unauthorized if none does.

        Runs before anything parses the body. Comparisons are constant-time.
        """
        ...

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """The provider's delivery id. Raises BadRequest when missing or malformed.

        ``body`` is the raw body once the delivery is verified; before (the id a rejected
        request is logged with) it is None. Most providers send the id as a header and
        ignore it; a provider that sends it only in the body (Azure DevOps: the event's
        ``id``) reads it from a verified body and raises BadRequest when given None.
        """
        ...

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """Normalize a verified delivery into push events (one per ref moved).

        Raises Ignored for events that are not pushes (pings, other types), BadRequest for a
        malformed body. Commit ids in the result are validated lower-case hex.
        """
        ...

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """Normalize a verified pull (merge) request delivery, or None when the delivery is
        about something else (then :meth:`parse` reads it).

        Raises Ignored for a request event that moves no head and changes nothing a
        validation looks at (labels, reviewers, comments, a title), BadRequest for a
        malformed body. Commit ids in the result are validated lower-case hex (Bitbucket
        Cloud: at least 12 digits, see :meth:`resolve_commit`).
        """
        ...

    def merge_base(self, repo: RepositoryConfig, target: str, head: str) -> str | None:
        """The merge base of ``target`` (a branch name or commit id) and commit ``head``
        through the provider's API (``diff: api``), or None when the API does not say or
        the two share no history. Raises ProviderError as :meth:`changed_files` does."""
        ...

    def resolve_commit(self, repo: RepositoryConfig, commit: str) -> str:
        """The full id of the abbreviated commit id ``commit`` (a full one as it is).
        Raises ProviderError when the provider cannot say (no such commit, refused)."""
        ...

    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """The tree difference from ``base`` to ``head`` through the provider's compare API.

        Missing commits or a difference too large to list give an incomplete Diff (never
        an exception). Raises ProviderError when the API is unreachable, failing or rate
        limited beyond the configured wait: a later retry may succeed. Raises its subclass
        RepositoryUnreadable when the API refuses the repository (401/403, a redirect) or
        answers 404 for the repository itself, not only for a commit: one extra call, a
        GET of the repository (as :meth:`check_access`), tells the two 404s apart.
        """
        ...

    def check_access(self, repo: RepositoryConfig) -> None:
        """Return if ``repo``'s token (or app) can read the repository at ``api_url``.

        One GET of the repository itself. Raises RepositoryUnreadable (``cause`` in words,
        with the HTTP status) when it is refused or not found, ProviderError when the API
        cannot be reached or fails. Used by ``check-config --online`` and by
        :meth:`changed_files` after a 404.
        """
        ...

    def git_authorization(self, repo: RepositoryConfig) -> str | None:
        """The ``Authorization`` header value for HTTPS git (``diff: git``): the
        repository's ``api_token`` (GitHub: the App's installation token) in the scheme the
        provider documents for git; None without a token. Raises ProviderError when a
        token must be minted and cannot be."""
        ...

    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """The web page of ``path`` at ``commit`` on the repository's host (the link of a
        ``webhook-receiver/config`` status)."""
        ...

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """The web page of ``commit`` on the repository's host (the link of a
        notification)."""
        ...

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """Create or replace the status named ``status.name`` on ``commit`` (40 or 64 hex).

        One logical write: connection errors and 5xx are retried with ApiClient's bounded
        back-off. Writing the state the status already has is a success, not an error
        (GitLab refuses such a repeat with a 400; that answer counts as done). Raises
        ProviderError (message in words, naming the repository and what the token needs,
        never the token) for 401/403/404, any other refusal, a rate limit, or when the
        retries run out; ValueError when ``commit`` is not a full lower-case commit id.
        """
        ...

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """The head commit of ``branch`` (a plain name, no ``refs/heads/``), one API read.

        ``etag`` is the one a previous answer gave for this branch, sent as
        ``If-None-Match`` where the provider honours it (GitHub, whose 304 costs no rate
        limit); the answer is then ``not_modified``. A branch that does not exist gives
        ``sha`` None. Same credentials, time-outs and retries as ``changed_files``. Raises
        ProviderError (in words, never the token) for 401/403, a repository that is not
        found (or that the token cannot see), a malformed answer, a rate limit beyond the
        wait budget, or when the retries run out.
        """
        ...

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """The raw bytes of the file ``path`` (repository-root-relative) at ``commit`` (40
        or 64 hex), through the provider's file API (the repository-side module map).

        None when the file does not exist at that commit. Raises ProviderError for any
        other refusal, when the retries run out, or for a rate limit beyond the wait
        budget; FileTooLarge when the file is larger than ``MAX_FILE_BYTES`` (found without
        reading it whole: ``file_answer``); ValueError when ``commit`` is not a full
        lower-case commit id.
        """
        ...


def verify_for(provider: Provider, headers: Headers, body: bytes,
               repos: Sequence[RepositoryConfig]) -> SecretRef:
    """Verify a delivery against ``repos``: the secret that authenticates it, or Unauthorized.

    A provider with per-repository verification rules (GitLab: ``require_signed`` and
    ``signature_tolerance_seconds``) offers ``verify_repositories(headers, body, repos)``;
    every other provider is checked against the union of the repositories' secrets.
    """
    per_repository = getattr(provider, "verify_repositories", None)
    if per_repository is not None:
        return cast(SecretRef, per_repository(headers, body, repos))
    return provider.verify(headers, body, [s for r in repos for s in r.webhook_secrets])


# --- crypto ----------------------------------------------------------------------------


def hmac_sha256(key: str | bytes, message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` under ``key`` (UTF-8 when a str)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(raw, message, hashlib.sha256).digest()


def constant_time_equal(a: bytes | str, b: bytes | str) -> bool:
    """Compare two values without leaking where they differ."""
    ab = a.encode("utf-8") if isinstance(a, str) else a
    bb = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(ab, bb)


def match_hex_hmac(body: bytes, signature_hex: str, secrets: Sequence[SecretRef]) -> SecretRef:
    """The secret whose HMAC-SHA256 of ``body`` equals ``signature_hex``; Unauthorized if none.

    Every candidate is computed and compared, so timing does not reveal which matched.
    """
    try:
        expected = bytes.fromhex(signature_hex)
    except ValueError:
        raise Unauthorized("malformed signature") from None
    found: SecretRef | None = None
    for secret in secrets:
        for value in secret.values():
            if constant_time_equal(hmac_sha256(value, body), expected) and found is None:
                found = secret
    if found is None:
        raise Unauthorized("signature does not match")
    return found


def verify_sha256_header(headers: Headers, header: str, body: bytes,
                         secrets: Sequence[SecretRef]) -> SecretRef:
    """Check a ``sha256=<hex HMAC-SHA256 of the body>`` signature header (GitHub's
    ``X-Hub-Signature-256``, Bitbucket's ``X-Hub-Signature``). Unauthorized if it fails."""
    signature = headers.get(header.lower())
    if not signature:
        raise Unauthorized(f"missing {header}")
    algo, _, digest = signature.partition("=")
    if algo != "sha256" or len(digest) != 64:
        raise Unauthorized(f"malformed {header}")
    return match_hex_hmac(body, digest, secrets)


def match_token(token: str, secrets: Sequence[SecretRef]) -> SecretRef:
    """The secret equal to ``token`` (constant-time); Unauthorized if none."""
    found: SecretRef | None = None
    for secret in secrets:
        for value in secret.values():
            if constant_time_equal(value, token) and found is None:
                found = secret
    if found is None:
        raise Unauthorized("token does not match")
    return found


# --- payload helpers -------------------------------------------------------------------


def require_header(headers: Headers, name: str) -> str:
    """A header that must be present (BadRequest otherwise)."""
    value = headers.get(name.lower())
    if not value:
        raise BadRequest(f"missing header {name}")
    return value


def checked_delivery_id(value: str | None, header: str) -> str:
    """Validate a delivery id taken from ``header``: 1-128 of ``A-Za-z0-9._:{}_-``."""
    if not value:
        raise BadRequest(f"missing header {header}")
    if not _DELIVERY_ID.fullmatch(value):
        raise BadRequest(f"malformed {header}")
    return value


def checked_sha(value: object, field: str) -> str | None:
    """A commit id from a payload: None for null or 40/64 zeros, else validated lower-case hex."""
    if value is None or value in _ZERO_SHAS:
        return None
    if not isinstance(value, str) or not _SHA.fullmatch(value):
        raise BadRequest(f"{field} is not a commit id")
    return value


def pull_request_event(provider: str, *, repository: object, number: object,
                       action: PullRequestAction, source_branch: object,
                       target_branch: object, head: object, target: object,
                       source_ref: str | None = None, in_target: bool = True, fork: bool,
                       draft: bool,
                       merge_base: object = None,
                       abbreviated: bool = False) -> PullRequestEvent:
    """A PullRequestEvent from payload values, each checked: BadRequest naming the field
    when one is missing or malformed. ``number`` a positive whole number; branches plain
    names (``refs/heads/`` is taken off) git accepts; ``head`` a commit id (``abbreviated``:
    12 or more hex digits will do), ``target`` and ``merge_base`` one or nothing.
    ``source_ref`` defaults to the source branch's ref; ``in_target`` False: the target
    repository holds no ref of the head (a Bitbucket Cloud fork), ``source_ref`` is None."""
    if not isinstance(repository, str) or "/" not in repository.strip("/"):
        raise BadRequest("pull request payload needs its repository's full name")
    if isinstance(number, bool) or not isinstance(number, int) \
            or not 0 < number <= MAX_PULL_REQUEST_NUMBER:
        raise BadRequest("pull request number must be a positive whole number")
    source = _branch(source_branch, "source branch")
    target_name = _branch(target_branch, "target branch")
    head_sha = _commit(head, "head", abbreviated)
    if head_sha is None:
        raise BadRequest("pull request payload needs its head commit")
    ref = (source_ref or f"refs/heads/{source}") if in_target else None
    if ref is not None:
        _check_ref(ref, "source ref")
    return PullRequestEvent(
        provider=provider, repository=repository, number=number, action=action,
        source_branch=source, target_branch=target_name, head=head_sha,
        target=_commit(target, "target commit", abbreviated), source_ref=ref, fork=fork,
        draft=draft, merge_base=_commit(merge_base, "merge base", False))


def _branch(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"pull request payload needs its {field}")
    name = value.removeprefix("refs/heads/")
    _check_ref(f"refs/heads/{name}", field)
    return name


def _check_ref(ref: str, field: str) -> None:
    from receiver.gitdiff import ref_problem  # here: gitdiff imports this module

    problem = ref_problem(ref)
    if problem is not None:
        raise BadRequest(f"{field} is not a name git accepts: it {problem}")


def _commit(value: object, field: str, abbreviated: bool) -> str | None:
    if value is None or value in _ZERO_SHAS:
        return None
    if isinstance(value, str) and (_SHA.fullmatch(value) or (
            abbreviated and _ABBREVIATED_SHA.fullmatch(value))):
        return value
    raise BadRequest(f"{field} is not a commit id")


def split_ref(ref: str) -> tuple[RefType, str]:
    """``refs/heads/x`` -> ("branch", "x"), ``refs/tags/v1`` -> ("tag", "v1").

    Ignored for other refs (pull-request refs, notes), BadRequest for an empty name.
    """
    ref_type: RefType
    if ref.startswith("refs/heads/"):
        ref_type, name = "branch", ref[len("refs/heads/"):]
    elif ref.startswith("refs/tags/"):
        ref_type, name = "tag", ref[len("refs/tags/"):]
    else:
        raise Ignored(f"ref {printable(ref)!r} is neither a branch nor a tag")
    if not name:
        raise BadRequest("ref has no name")
    return ref_type, name


def load_json_object(data: bytes | str) -> dict[str, Any]:
    """Decode a JSON object body.

    BadRequest for invalid UTF-8, invalid JSON (including what RFC 8259 leaves to the
    parser and providers never send: NaN, a byte-order mark, an unpaired surrogate
    escape), a non-object, or nesting deeper than ``MAX_JSON_DEPTH``.
    """
    try:
        # orjson, not the json module: 7 µs instead of 18 µs for an 8 KB push, on every
        # request; it refuses more than 1,024 levels itself (pyproject pins a version that
        # does), so no body can exhaust the stack
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # worded 'recursion depth exceeded' or 'depth limit exceeded', by version
        if "depth" in str(exc):
            raise BadRequest(f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("body is not a JSON object")
    # a document cannot nest deeper than it has opening brackets (those inside strings
    # only raise the count), so a typical push skips the walk: one C pass over the bytes
    openers = (len(data) - len(data.translate(None, b"{[")) if isinstance(data, bytes)
               else data.count("{") + data.count("["))
    if openers > MAX_JSON_DEPTH and _nesting_exceeds(doc, MAX_JSON_DEPTH):
        raise BadRequest(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _nesting_exceeds(doc: dict[str, Any], limit: int) -> bool:
    """Whether ``doc`` nests objects and arrays more than ``limit`` deep (``doc`` is 1)."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(doc, 1)]
    while stack:  # a loop, not recursion: the check itself must not hit the recursion limit
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


PUSHER_MAX = 100  # characters of a pusher's name kept (payload text: bounded)


def pusher_in(doc: Mapping[str, Any], *paths: tuple[str, ...]) -> str | None:
    """Who pushed: the first non-empty string found at one of ``paths`` (keys from the
    payload's top) in ``doc``, made printable and cut to PUSHER_MAX characters; None when
    the payload names no one there."""
    for path in paths:
        value: Any = doc
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value.strip():
            return printable(value.strip(), PUSHER_MAX)
    return None


def printable(value: object, limit: int = 64) -> str:
    """A short, log- and response-safe rendering of an untrusted header value."""
    text = str(value)[:limit]
    return "".join(ch if ch.isprintable() else "?" for ch in text)


# --- HTTP ------------------------------------------------------------------------------


class ApiClient:
    """requests wrapper for provider APIs: timeouts on every call, bounded retries.

    Retries connection errors and 5xx with exponential back-off; honours ``Retry-After``
    and ``X-RateLimit-Remaining``/``-Reset`` on 403/429 when the wait fits in the budget.
    Translates every requests failure into ProviderError. ``calls`` counts requests sent.
    """

    def __init__(self, *, timeout: float, max_wait: float, attempts: int = 3,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time,
                 session: requests.Session | None = None) -> None:
        self.timeout = timeout
        self.max_wait = max_wait
        self.attempts = attempts
        self.sleep = sleep
        self.clock = clock
        self.session = session or requests.Session()
        self.calls = 0

    def request(self, method: str, url: str, *, headers: Mapping[str, str],
                params: Mapping[str, str | int] | None = None,
                ok: Sequence[int] = (200,), json: object = None,
                stream: bool = False) -> requests.Response:
        """Send one logical request; returns the response whose status is in ``ok`` or 404.

        ``json``, when given, is sent as the JSON body. ``stream``: the body of the
        response returned is not read yet (the caller reads what it will take, then closes
        it). Raises ProviderError for anything else after the retries.
        """
        waited = 0.0
        last = "no attempt"
        for attempt in range(self.attempts):
            self.calls += 1
            try:
                resp = self.session.request(method, url, headers=dict(headers), params=params,
                                            timeout=(min(3.05, self.timeout), self.timeout),
                                            allow_redirects=False, json=json, stream=stream)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
                self._backoff(attempt)
                continue
            if resp.status_code in ok or resp.status_code == 404:
                return resp
            if stream:  # an answer not taken: its connection goes back to the pool
                resp.close()
            last = f"HTTP {resp.status_code}"
            wait = self._rate_limit_wait(resp)
            if wait is not None:
                if waited + wait > self.max_wait:
                    raise ProviderError(f"rate limited (HTTP {resp.status_code}); reset in "
                                        f"{wait:.0f}s is beyond the {self.max_wait:.0f}s budget")
                # waiting only pays off when another attempt follows it
                if attempt + 1 < self.attempts:
                    waited += wait
                    self.sleep(wait)
                continue
            if resp.status_code >= 500:
                self._backoff(attempt)
                continue
            raise ProviderError(f"{method} {_path_only(url)} answered HTTP {resp.status_code}",
                                status=resp.status_code)
        raise ProviderError(f"{method} {_path_only(url)} failed after {self.attempts} attempts "
                            f"({last})")

    def _backoff(self, attempt: int) -> None:
        if attempt + 1 < self.attempts:
            self.sleep(min(8.0, 0.5 * 2**attempt))

    def _rate_limit_wait(self, resp: requests.Response) -> float | None:
        if resp.status_code not in (403, 429):
            return None
        retry_after = resp.headers.get("Retry-After")
        if retry_after is not None:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                return 60.0
        # GitHub: X-RateLimit-*; GitLab: RateLimit-* (both give the reset as epoch seconds)
        for prefix in ("X-RateLimit-", "RateLimit-"):
            if resp.headers.get(prefix + "Remaining") == "0":
                try:
                    reset = float(resp.headers.get(prefix + "Reset", ""))
                except ValueError:
                    return 60.0
                return max(1.0, reset - self.clock())
        if resp.status_code == 429:
            return 60.0
        return None


class ApiClients:
    """One ApiClient per configured repository, with that repository's time-out and wait budget."""

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.sleep = sleep
        self.clock = clock
        self._clients: dict[str, ApiClient] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._clients)

    def get(self, repo: RepositoryConfig) -> ApiClient:
        """The client for ``repo`` (created on first use; safe across threads)."""
        with self._lock:
            client = self._clients.get(repo.key)
            if client is None:
                client = ApiClient(timeout=repo.request_timeout_seconds,
                                   max_wait=repo.max_rate_limit_wait_seconds,
                                   sleep=self.sleep, clock=self.clock)
                self._clients[repo.key] = client
            return client


class HttpProvider:
    """What every provider implementation shares: injectable sleep and clock (tests), and one
    API client per configured repository. Subclasses implement the Provider protocol."""

    default_api_url: ClassVar[str | None] = None
    default_git_url: ClassVar[str | None] = None
    # the user an HTTPS git server takes a token as the Basic password of; None: Bearer
    git_user: ClassVar[str | None] = None
    Options: ClassVar[type[Any]] = NoOptions

    @classmethod
    def git_url_for(cls, api_url: str, name: str) -> str | None:
        """Provider.git_url_for: ``default_git_url`` on the public host its API serves."""
        if cls.default_git_url is None or api_url != cls.default_api_url:
            return None
        return cls.default_git_url.format(name=name)

    @staticmethod
    def webhook_secret_problem(value: str) -> str | None:
        """Any value will do (see Provider)."""
        return None

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._clients = ApiClients(sleep=sleep, clock=clock)

    def _client(self, repo: RepositoryConfig) -> ApiClient:
        return self._clients.get(repo)

    def _headers(self, repo: RepositoryConfig) -> dict[str, str]:
        """JSON, with the repository's API token as a Bearer token (GitLab personal, project,
        group and OAuth tokens, where PRIVATE-TOKEN would refuse OAuth ones; Bitbucket Data
        Center HTTP access tokens). Providers with another scheme override this."""
        headers = {"Accept": "application/json"}
        if repo.api_token is not None:
            headers["Authorization"] = f"Bearer {repo.api_token.value()}"
        return headers

    def check_access(self, repo: RepositoryConfig) -> None:
        """Provider.check_access: one GET of ``_repository_url(repo)``."""
        with refusals_unreadable(repo):
            resp = self._client(repo).request("GET", self._repository_url(repo),
                                              headers=self._headers(repo))
        if resp.status_code == 404:
            raise RepositoryUnreadable(repo.name, 404)

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """The API URL of the repository itself (each provider names its own)."""
        raise NotImplementedError

    def merge_base(self, repo: RepositoryConfig, target: str, head: str) -> str | None:
        """Provider.merge_base: this provider's API does not say (None)."""
        return None

    def resolve_commit(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.resolve_commit: a full id as it is; this provider sends no other."""
        if not _SHA.fullmatch(commit):
            raise ProviderError(f"{commit[:12]!r} is not a full commit id")
        return commit

    def git_authorization(self, repo: RepositoryConfig) -> str | None:
        """Provider.git_authorization: the ``api_token`` as the Basic password of
        ``git_user``, or as a Bearer token when the class names no user."""
        token = self._git_token(repo)
        if token is None:
            return None
        user = self._git_user(repo)
        if user is None:
            return f"Bearer {token}"
        return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode("ascii")

    def _git_token(self, repo: RepositoryConfig) -> str | None:
        return repo.api_token.value() if repo.api_token is not None else None

    def _git_user(self, repo: RepositoryConfig) -> str | None:
        return self.git_user


@contextmanager
def refusals_unreadable(repo: RepositoryConfig) -> Iterator[None]:
    """Inside the block, an API answer refusing ``repo`` outright (401, 403, a redirect)
    raises RepositoryUnreadable instead of a bare ProviderError (the cause is kept)."""
    try:
        yield
    except RepositoryUnreadable:
        raise
    except ProviderError as exc:
        if exc.status in (401, 403) or (exc.status is not None and 300 <= exc.status < 400):
            raise RepositoryUnreadable(repo.name, exc.status) from exc
        raise


_S = TypeVar("_S")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def unreadable_on_refusal(
        method: Callable[Concatenate[_S, RepositoryConfig, _P], _T],
) -> Callable[Concatenate[_S, RepositoryConfig, _P], _T]:
    """Decorate a provider method taking ``repo`` first: it runs inside
    :func:`refusals_unreadable` for that repository."""

    @functools.wraps(method)
    def wrapper(self: _S, repo: RepositoryConfig, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with refusals_unreadable(repo):
            return method(self, repo, *args, **kwargs)

    return wrapper


def rate_budget(resp: requests.Response) -> dict[str, Any]:
    """The rate-limit fields of :class:`BranchHead` from an answer's headers: GitHub's and
    Data Center's ``X-RateLimit-*``, GitLab's ``RateLimit-*`` (reset as epoch seconds),
    Bitbucket Cloud's ``X-RateLimit-NearLimit``. Absent or malformed headers give None."""

    def number(name: str) -> float | None:
        for prefix in ("X-RateLimit-", "RateLimit-"):
            value = resp.headers.get(prefix + name)
            if value is not None:
                try:
                    return float(value)
                except ValueError:
                    return None
        return None

    remaining, limit = number("Remaining"), number("Limit")
    return {"remaining": None if remaining is None else int(remaining),
            "limit": None if limit is None else int(limit), "reset_at": number("Reset"),
            "near_limit": resp.headers.get("X-RateLimit-NearLimit", "").lower() == "true"}


def branch_missing(resp: requests.Response) -> bool:
    """Whether a 404 to a branch read says the branch is missing, not the repository (the
    providers' texts: GitHub "Branch not found", GitLab "404 Branch Not Found", Bitbucket
    Cloud's error message naming the branch). Any other 404 is the repository's."""
    text = error_message(resp).lower()
    return "branch" in text and "repositor" not in text and "project" not in text


def branch_answer(resp: requests.Response, repository: str, sha_of: Callable[[Any], object],
                  *, etags: bool = False) -> BranchHead:
    """The :class:`BranchHead` of one branch read's answer: 304 not modified, 404 a missing
    branch (ProviderError when the repository is the one missing), else ``sha_of(JSON
    body)`` validated as a commit id (ProviderError when it is not). The ETag is kept only
    with ``etags`` (a provider whose conditional reads are used): others would change it
    on every read for nothing."""
    budget = rate_budget(resp)
    etag = resp.headers.get("ETag") if etags else None
    if resp.status_code == 304:
        return BranchHead(None, etag, True, **budget)
    if resp.status_code == 404:
        if branch_missing(resp):
            return BranchHead(None, None, **budget)
        raise ProviderError(f"{repository} was not found (HTTP 404), or the token cannot "
                            "read it")
    try:
        sha = sha_of(resp.json())
    except (ValueError, KeyError, TypeError, AttributeError):
        sha = None
    return BranchHead(head_sha(sha, repository), etag, **budget)


def head_sha(value: object, repository: str) -> str:
    """A branch head from a provider answer, checked as a full lower-case commit id."""
    if not isinstance(value, str) or not _SHA.fullmatch(value):
        raise ProviderError(f"the branch answer for {repository} has no commit id")
    return value


def _path_only(url: str) -> str:
    # keep hosts and query strings out of error messages and logs
    from urllib.parse import urlsplit

    return urlsplit(url).path


# --- commit statuses -------------------------------------------------------------------

# GitHub and GitLab answer 201, Bitbucket Cloud 200 or 201, Bitbucket Data Center 204
STATUS_WRITTEN = (200, 201, 204)
_STATUS_ANSWERS = (*STATUS_WRITTEN, *(code for code in range(400, 500) if code != 429))


def status_commit(commit: str) -> str:
    """``commit`` checked as a full lower-case commit id before it goes into a URL path."""
    if not _SHA.fullmatch(commit):
        raise ValueError("a commit status needs a full lower-case commit id")
    return commit


def fit_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters; an ellipsis marks a cut."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def status_key(name: str, limit: int) -> str:
    """A key of at most ``limit`` characters that stands for the status ``name``.

    The name itself when it fits; else its first characters, ``-`` and 12 hex digits of its
    SHA-256, so the key is stable across writes and two long names sharing a prefix still
    get different keys.
    """
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
    return f"{name[:limit - len(digest) - 1]}-{digest}"


def post_status(client: ApiClient, url: str, headers: Mapping[str, str],
                body: Mapping[str, object]) -> requests.Response:
    """POST one status write; the answer when it is written or a refusal (4xx but 429).

    Connection errors and 5xx are retried by ``client`` and then raise ProviderError, as
    does a 429 beyond the wait budget. Refusals are returned rather than raised so that
    :func:`check_status_answer` can say in words what the token lacks or what the
    provider refused; a rate-limited 403 is therefore not waited for here (status writes
    are retried in the background and must not hold a worker).
    """
    return client.request("POST", url, headers=headers, json=dict(body), ok=_STATUS_ANSWERS)


def check_status_answer(client: ApiClient, resp: requests.Response, *, repository: str,
                        commit: str, needs: str) -> None:
    """Return when ``resp`` says the status was written; else raise ProviderError in words.

    ``needs`` says which token scope or permission a status write takes on this provider.
    """
    code = resp.status_code
    if code in STATUS_WRITTEN:
        return
    if code == 401:
        raise ProviderError(f"the token for {repository} was refused (HTTP 401) writing a "
                            "commit status: it is missing, invalid, expired or revoked")
    if code == 403 and client._rate_limit_wait(resp) is not None:
        raise ProviderError(f"rate limited (HTTP 403) writing a commit status to {repository}; "
                            "a later retry may succeed")
    if code == 403:
        raise ProviderError(f"the token cannot write commit statuses to {repository} "
                            f"(HTTP 403): {needs}")
    if code == 404:
        raise ProviderError(f"{repository} or its commit {commit[:12]} was not found (HTTP 404), "
                            f"or the token cannot see the repository: {needs}")
    raise ProviderError(f"writing a commit status to {repository} answered HTTP {code}: "
                        f"{error_message(resp)}")


def error_message(resp: requests.Response) -> str:
    """The provider's own short error text from a refusal (its ``message`` when JSON)."""
    try:
        doc = resp.json()
    except ValueError:
        return printable(resp.text, 200) or "(no message)"
    if isinstance(doc, dict):
        # GitHub and GitLab: {"message": ...}; Bitbucket Cloud: {"error": {"message": ...}};
        # Data Center: {"errors": [{"message": ...}]}
        error = doc.get("error")
        errors = doc.get("errors")
        for candidate in (doc.get("message"),
                          error.get("message") if isinstance(error, dict) else None,
                          errors[0].get("message") if isinstance(errors, list) and errors
                          and isinstance(errors[0], dict) else None):
            if isinstance(candidate, str) and candidate:
                return printable(candidate, 200)
    return printable(orjson.dumps(doc).decode(), 200)


# --- files ------------------------------------------------------------------------------

# a file read from a repository (the module map): it is kept in the state store, and
# DynamoDB's 400 KB item must hold it with its other attributes even where zlib cannot
# shrink it (incompressible text grows by a few bytes per 16 KiB block)
MAX_FILE_BYTES = 256 * 1024
_CHUNK = 64 * 1024


def file_answer(resp: requests.Response, *, repository: str, path: str,
                commit: str) -> bytes | None:
    """The body of a raw-file answer (requested with ``stream=True``): None on 404;
    ProviderError for any other non-200; FileTooLarge for a body over ``MAX_FILE_BYTES``,
    found from its ``Content-Length`` or by reading at most one byte more than that (the
    rest is never read: a 20 MB file costs no more memory than one at the limit)."""
    with resp:
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ProviderError(f"reading {path} at {commit[:12]} of {repository} answered "
                                f"HTTP {resp.status_code}: {error_message(resp)}")
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_FILE_BYTES:
            raise FileTooLarge(path, MAX_FILE_BYTES, int(declared))
        body = bytearray()
        try:
            for chunk in resp.iter_content(_CHUNK):
                body += chunk
                if len(body) > MAX_FILE_BYTES:
                    raise FileTooLarge(path, MAX_FILE_BYTES)
        except requests.RequestException as exc:
            raise ProviderError(f"reading {path} at {commit[:12]} of {repository} failed: "
                                f"{type(exc).__name__}") from exc
        return bytes(body)

"""GitHub (github.com and Enterprise Server): signatures, push events, the compare API.

Signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``; the SHA-1
``X-Hub-Signature`` alone is refused. Delivery id: ``X-GitHub-Delivery``. Bodies come as
``application/json`` or ``application/x-www-form-urlencoded`` (``payload=<json>``); the
signature covers the raw bytes either way, so it is checked before decoding.

Changed files come from ``GET /repos/{owner}/{repo}/compare/{base}...{head}``. That compare
is three-dot (from the merge base), so a diverged head (force push) needs both directions.
Its ``files`` list stops at 300 with no truncation flag: at 300 the commits' own file lists
are walked instead, up to ``max_compare_commits`` commits; beyond that the diff is incomplete.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qs, quote

import jwt
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationInfo

from providers.base import (
    ApiClient,
    BranchHead,
    CommitStatus,
    Diff,
    Headers,
    HttpProvider,
    StatusState,
    branch_answer,
    check_status_answer,
    checked_delivery_id,
    checked_sha,
    file_answer,
    fit_text,
    load_json_object,
    post_status,
    printable,
    pull_request_event,
    pusher_in,
    require_header,
    split_ref,
    status_commit,
    unreadable_on_refusal,
    verify_sha256_header,
)
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError, Unauthorized
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent
from receiver.secrets import Secret, SecretRef

FILES_CAP = 300  # the compare API lists at most this many files, without saying it cut
COMMIT_FILES_CAP = 3000  # the single-commit API lists at most this many files
PER_PAGE = 100
TOKEN_RENEW_MARGIN = 300.0  # renew an installation token this many seconds before expiry


def _id_text(value: Any) -> Any:
    # an app id is a number in GitHub's UI; the JWT carries it as text
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@dataclass(frozen=True, slots=True)
class GitHubAppConfig:
    """GitHub App credentials: exactly one of ``app_id`` or ``client_id`` (the JWT issuer),
    the private key and the installation."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    private_key: Secret
    installation_id: Annotated[int, Field(gt=0, strict=True)]
    app_id: Annotated[str, BeforeValidator(_id_text), Field(min_length=1)] | None = None
    client_id: Annotated[str, Field(min_length=1)] | None = None

    def __post_init__(self) -> None:
        if (self.app_id is None) == (self.client_id is None):
            raise ValueError("needs exactly one of app_id or client_id")

    @property
    def issuer(self) -> str:
        """The JWT ``iss`` claim: the client id, else the app id."""
        return str(self.client_id or self.app_id)


def _without_api_token(app: GitHubAppConfig | None,
                       info: ValidationInfo) -> GitHubAppConfig | None:
    if app is not None and (info.context or {}).get("repository", {}).get("api_token"):
        raise ValueError("give either api_token or github_app, not both")
    return app


@dataclass(frozen=True, slots=True)
class GitHubOptions:
    """The repository keys only GitHub has."""

    # instead of api_token: installation tokens minted for a GitHub App
    github_app: Annotated[GitHubAppConfig | None, AfterValidator(_without_api_token)] = None
    # commits walked when the compare lists its FILES_CAP; beyond, the diff is incomplete
    max_compare_commits: Annotated[int, Field(ge=1, le=10000, strict=True)] = 250


class GitHubAppAuth:
    """Installation tokens for a GitHub App, cached and renewed before they expire."""

    def __init__(self, app: GitHubAppConfig, api_url: str, client: ApiClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.api_url = api_url
        self.client = client
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def app_jwt(self) -> str:
        """An RS256 JWT for the app: issued 60 s in the past, expiring 9 minutes ahead."""
        now = int(self.clock())
        claims = {"iat": now - 60, "exp": now + 540, "iss": self.app.issuer}
        return jwt.encode(claims, self.app.private_key.value(), algorithm="RS256")

    def token(self) -> str:
        """A valid installation token (minted when none is cached or it expires within 5 min)."""
        with self._lock:
            if self._token is None or self._expires_at - self.clock() < TOKEN_RENEW_MARGIN:
                self._token, self._expires_at = self._mint()
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` because the API refused it; the next :meth:`token` mints anew."""
        with self._lock:
            # another thread may already have replaced it with a good one
            if self._token == token:
                self._token, self._expires_at = None, 0.0

    def _mint(self) -> tuple[str, float]:
        url = f"{self.api_url}/app/installations/{self.app.installation_id}/access_tokens"
        resp = self.client.request("POST", url, ok=(201,), headers={
            "Authorization": f"Bearer {self.app_jwt()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        })
        if resp.status_code != 201:
            raise ProviderError(f"installation token request answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = str(body["token"])
            expires = datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            raise ProviderError("installation token response is malformed") from None
        return token, expires.timestamp()


class GitHubProvider(HttpProvider):
    """The GitHub implementation of ``providers.base.Provider``."""

    name = "github"
    content_types: tuple[str, ...] = ("application/json", "application/x-www-form-urlencoded")
    # verify() reads the SHA-256 signature only; a SHA-1 X-Hub-Signature alone is refused
    credential_headers: ClassVar[tuple[str, ...]] = ("x-hub-signature-256",)
    default_api_url: ClassVar[str | None] = "https://api.github.com"
    default_git_url: ClassVar[str | None] = "https://github.com/{name}.git"
    # "Authenticating as a GitHub App installation": the installation token is the HTTP
    # password of user x-access-token; a personal access token works with any user name
    git_user: ClassVar[str | None] = "x-access-token"
    Options = GitHubOptions

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(sleep=sleep, clock=clock)
        self._apps: dict[str, GitHubAppAuth] = {}
        self._lock = threading.Lock()

    # --- webhook side ------------------------------------------------------------------

    def preflight(self, headers: Headers) -> None:
        """GitHub signs its pings too: nothing is answered before verification."""

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """Check ``X-Hub-Signature-256`` against every configured secret."""
        if not headers.get("x-hub-signature-256") and headers.get("x-hub-signature"):
            raise Unauthorized("X-Hub-Signature-256 is required; SHA-1 signatures are "
                               "not accepted")
        return verify_sha256_header(headers, "X-Hub-Signature-256", body, secrets)

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """``X-GitHub-Delivery``."""
        return checked_delivery_id(headers.get("x-github-delivery"), "X-GitHub-Delivery")

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """Normalize a ``push``; ``ping`` and every other event type are ignored."""
        event = require_header(headers, "X-GitHub-Event")
        if event == "ping":
            raise Ignored("ping event")
        if event != "push":
            raise Ignored(f"unsupported event type {printable(event)!r}")
        doc = load_json_object(self._json_bytes(headers, body))
        return (self._push(doc),)

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """A ``pull_request`` event: ``opened``/``reopened`` (opened), ``synchronize``
        (updated), ``ready_for_review`` (ready), ``closed`` (closed, or merged when
        ``pull_request.merged``); its other actions move no head and are ignored. A fork's
        head is another repository's (``head.repo``; null once the fork is deleted)."""
        if headers.get("x-github-event") != "pull_request":
            return None
        doc = load_json_object(self._json_bytes(headers, body))
        action = doc.get("action")
        normalized = PULL_REQUEST_ACTIONS.get(action) if isinstance(action, str) else None
        pr = doc.get("pull_request")
        if not isinstance(pr, dict):
            raise BadRequest("pull_request payload needs pull_request")
        if normalized is None:
            raise Ignored(f"pull_request action {printable(action)!r} moves no head")
        if normalized == "closed" and pr.get("merged") is True:
            normalized = "merged"
        head, base = pr.get("head"), pr.get("base")
        if not isinstance(head, dict) or not isinstance(base, dict):
            raise BadRequest("pull_request payload needs pull_request.head and .base")
        repo = doc.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        source_repo, base_repo = _full_name(head.get("repo")), base.get("repo")
        number = doc.get("number", pr.get("number"))
        return pull_request_event(
            self.name, repository=full_name, number=number, action=normalized,
            source_branch=head.get("ref"), target_branch=base.get("ref"),
            head=head.get("sha"), target=base.get("sha"),
            source_ref=f"refs/pull/{number}/head" if isinstance(number, int) else None,
            # the head's repository is gone (null) or another one: a fork
            fork=source_repo is None or source_repo != (_full_name(base_repo)
                                                        or _full_name(repo)),
            draft=pr.get("draft") is True)

    @staticmethod
    def _json_bytes(headers: Headers, body: bytes) -> bytes | str:
        mime = headers.get("content-type", "").split(";")[0].strip().lower()
        if mime != "application/x-www-form-urlencoded":
            return body
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=16,
                            errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("form body is malformed") from None
        payload = form.get("payload")
        if not payload or len(payload) != 1:
            raise BadRequest("form body needs exactly one payload field")
        return payload[0]

    def _push(self, doc: dict[str, Any]) -> PushEvent:
        ref = doc.get("ref")
        repo = doc.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        if not isinstance(ref, str) or not isinstance(full_name, str) or "/" not in full_name:
            raise BadRequest("push payload needs ref and repository.full_name")
        ref_type, ref_name = split_ref(ref)
        before = checked_sha(doc.get("before"), "before")
        after = checked_sha(doc.get("after"), "after")
        if before is None and after is None:
            raise BadRequest("before and after cannot both be empty")
        return PushEvent(provider=self.name, repository=full_name, ref_type=ref_type,
                         ref_name=ref_name, before=before, after=after,
                         forced=doc.get("forced") is True,
                         pusher=pusher_in(doc, ("pusher", "name"), ("sender", "login")))

    # --- API side ----------------------------------------------------------------------

    def _client(self, repo: RepositoryConfig) -> ApiClient:
        client = super()._client(repo)
        with self._lock:
            app = repo.options_as(GitHubOptions).github_app
            if app is not None and repo.key not in self._apps:
                self._apps[repo.key] = GitHubAppAuth(app, repo.api_url, client, self._clock)
            return client

    def _git_token(self, repo: RepositoryConfig) -> str | None:
        # with github_app, the installation token
        self._client(repo)  # makes the App's token source on first use
        app = self._apps.get(repo.key)
        return super()._git_token(repo) if app is None else app.token()

    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """Provider.file_url: ``/{owner}/{repo}/blob/{sha}/{path}`` on github.com or the
        Enterprise Server host of ``api_url``."""
        return f"{self._web(repo)}/{repo.name}/blob/{commit}/{quote(path, safe='/')}"

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.commit_url: ``/{owner}/{repo}/commit/{sha}`` on the same host."""
        return f"{self._web(repo)}/{repo.name}/commit/{commit}"

    def _web(self, repo: RepositoryConfig) -> str:
        """github.com, or the Enterprise Server host that serves ``api_url``."""
        api = repo.api_url.rstrip("/")
        return "https://github.com" if api == self.default_api_url else api.removesuffix("/api/v3")

    def _headers(self, repo: RepositoryConfig) -> dict[str, str]:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if repo.key in self._apps:
            headers["Authorization"] = f"Bearer {self._apps[repo.key].token()}"
        elif repo.api_token is not None:
            headers["Authorization"] = f"Bearer {repo.api_token.value()}"
        return headers

    @unreadable_on_refusal
    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """Tree difference base→head; the union of both directions when they diverged."""
        client = self._client(repo)
        start = client.calls
        forward = self._compare(repo, base, head)
        if forward is None:
            # GitHub answers 404 for a repository the token cannot see, too
            self.check_access(repo)
            return Diff("diverged", None, "compare answered 404: the baseline or head commit "
                        "is gone", client.calls - start)
        status = str(forward.get("status"))
        if status in ("identical", "behind"):
            return Diff(status, frozenset(), None, client.calls - start)  # type: ignore[arg-type]
        if status not in ("ahead", "diverged"):
            raise ProviderError(f"compare answered unknown status {printable(status)!r}")
        paths, reason = self._files(repo, base, head, forward)
        if status == "diverged" and paths is not None:
            backward = self._compare(repo, head, base)
            if backward is None:
                paths, reason = None, "compare answered 404 for the reverse direction"
            else:
                back_paths, reason = self._files(repo, head, base, backward)
                paths = None if back_paths is None else paths | back_paths
        return Diff(status, paths, reason, client.calls - start)  # type: ignore[arg-type]

    def _url(self, repo: RepositoryConfig, tail: str) -> str:
        owner, _, name = repo.name.partition("/")
        return f"{repo.api_url}/repos/{quote(owner, safe='')}/{quote(name, safe='')}/{tail}"

    def _get(self, repo: RepositoryConfig, url: str,
             params: dict[str, str | int]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        client = self._client(repo)
        app = self._apps.get(repo.key)
        headers = self._headers(repo)
        resp = client.request("GET", url, headers=headers, params=params,
                              ok=(200, 401) if app is not None else (200,))
        if resp.status_code == 401 and app is not None:
            # a revoked installation token would otherwise stay cached until near its expiry
            app.invalidate(headers["Authorization"].removeprefix("Bearer "))
            resp = client.request("GET", url, headers=self._headers(repo), params=params)
        if resp.status_code == 404:
            return None, {}
        try:
            body = resp.json()
        except ValueError:
            raise ProviderError(f"{url.split('?')[0].rsplit('/', 2)[-2]} answer is not JSON") \
                from None
        if not isinstance(body, dict):
            raise ProviderError("compare answer is not a JSON object")
        return body, dict(resp.links)

    def _compare(self, repo: RepositoryConfig, base: str, head: str) -> dict[str, Any] | None:
        body, _ = self._get(repo, self._url(repo, _spec(base, head)),
                            {"per_page": PER_PAGE, "page": 1})
        return body

    def _files(self, repo: RepositoryConfig, base: str, head: str,
               first: dict[str, Any]) -> tuple[frozenset[str] | None, str | None]:
        files = first.get("files") or []
        if len(files) < FILES_CAP:
            return _paths(files), None
        # 300 files is GitHub's silent cap: fall back to each commit's own file list
        total = int(first.get("total_commits") or 0)
        max_commits = repo.options_as(GitHubOptions).max_compare_commits
        if total > max_commits:
            return None, (f"compare lists {FILES_CAP} files (its cap) and {total} commits, more "
                          f"than max_compare_commits={max_commits}")
        shas = self._commit_shas(repo, base, head, first, total)
        if shas is None:
            return None, "a compare page of commits vanished while walking them"
        paths: set[str] = set()
        for sha in shas:
            commit_paths = self._commit_files(repo, sha)
            if commit_paths is None:
                return None, f"commit {sha[:12]} lists {COMMIT_FILES_CAP}+ files or is gone"
            paths |= commit_paths
        return frozenset(paths), None

    def _commit_shas(self, repo: RepositoryConfig, base: str, head: str,
                     first: dict[str, Any], total: int) -> list[str] | None:
        shas = [str(c["sha"]) for c in first.get("commits") or []]
        page = 1
        while len(shas) < total:
            page += 1
            body, _ = self._get(repo, self._url(repo, _spec(base, head)),
                                {"per_page": PER_PAGE, "page": page})
            commits = body.get("commits") if body else None
            if not commits:
                return None
            shas.extend(str(c["sha"]) for c in commits)
        return shas

    def _commit_files(self, repo: RepositoryConfig, sha: str) -> frozenset[str] | None:
        paths: set[str] = set()
        count = 0
        page = 1
        while True:
            body, links = self._get(repo, self._url(repo, f"commits/{quote(sha, safe='')}"),
                                    {"per_page": PER_PAGE, "page": page})
            if body is None:
                return None
            files = body.get("files") or []
            count += len(files)
            paths |= _paths(files)
            if count >= COMMIT_FILES_CAP:
                return None
            if "next" not in links or not files:
                return frozenset(paths)
            page += 1

    def merge_base(self, repo: RepositoryConfig, target: str, head: str) -> str | None:
        """``GET /repos/{owner}/{repo}/compare/{target}...{head}``'s ``merge_base_commit``
        (one call; the files are asked for afterwards, from the merge base)."""
        body, _ = self._get(repo, self._url(repo, _spec(target, head)),
                            {"per_page": 1, "page": 1})
        if body is None:
            self.check_access(repo)
            return None
        found = body.get("merge_base_commit")
        sha = found.get("sha") if isinstance(found, dict) else None
        return sha if isinstance(sha, str) and checked_sha(sha, "merge base") else None

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """``GET /repos/{owner}/{repo}``."""
        return self._url(repo, "").removesuffix("/")

    # --- commit statuses ---------------------------------------------------------------

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """``POST /repos/{owner}/{repo}/statuses/{sha}`` with ``context`` = ``status.name``.

        Checked against docs.github.com "Create a commit status" as github/rest-api-description
        models it (ReposCreateCommitStatusRequest): body ``state`` (error, failure, pending,
        success), ``target_url``, ``description``, ``context``; a new status with the same
        context replaces the one shown; at most 1,000 statuses per sha and context. A
        description over 140 characters is refused with 422 "description is too long
        (maximum is 140 characters)" (quoted in zalando/zappr#378), so it is cut to fit. A
        revoked GitHub App installation token is replaced once, as for compare.
        """
        client = self._client(repo)
        app = self._apps.get(repo.key)
        url = self._url(repo, f"statuses/{status_commit(commit)}")
        body = {"state": GITHUB_STATES[status.state], "target_url": status.url,
                "description": fit_text(status.description, GITHUB_DESCRIPTION_MAX),
                "context": status.name}
        headers = self._headers(repo)
        resp = post_status(client, url, headers, body)
        if resp.status_code == 401 and app is not None:
            app.invalidate(headers["Authorization"].removeprefix("Bearer "))
            resp = post_status(client, url, self._headers(repo), body)
        check_status_answer(client, resp, repository=repo.name, commit=commit,
                            needs=GITHUB_STATUS_NEEDS)

    # --- branch heads ------------------------------------------------------------------

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """``GET /repos/{owner}/{repo}/branches/{branch}``, conditional on ``etag``.

        Checked against docs.github.com "Get a branch" (answer: ``name``, ``commit.sha``;
        404 "Branch not found") and "Use conditional requests": an authorized request
        with ``If-None-Match`` that is answered 304 does not count against the primary
        rate limit. The ETag is kept per branch by the caller. A revoked GitHub App
        installation token is replaced once, as for compare.
        """
        client = self._client(repo)
        app = self._apps.get(repo.key)
        url = self._url(repo, f"branches/{quote(branch, safe='')}")
        conditional = {"If-None-Match": etag} if etag else {}
        headers = {**self._headers(repo), **conditional}
        resp = client.request("GET", url, headers=headers,
                              ok=(200, 304, 401) if app is not None else (200, 304))
        if resp.status_code == 401 and app is not None:
            app.invalidate(headers["Authorization"].removeprefix("Bearer "))
            resp = client.request("GET", url, headers={**self._headers(repo), **conditional},
                                  ok=(200, 304))
        return branch_answer(resp, repo.name, lambda doc: doc["commit"]["sha"], etags=True)

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """``GET /repos/{owner}/{repo}/contents/{path}?ref={sha}`` with the raw media type
        (``application/vnd.github.raw+json``: the file's bytes, not base64 JSON; files up
        to 100 MB). 404 when the path does not exist at that commit."""
        client = self._client(repo)
        app = self._apps.get(repo.key)
        url = self._url(repo, f"contents/{quote(path, safe='/')}")
        params: dict[str, str | int] = {"ref": status_commit(commit)}
        headers = {**self._headers(repo), "Accept": "application/vnd.github.raw+json"}
        resp = client.request("GET", url, headers=headers, stream=True, params=params,
                              ok=(200, 401) if app is not None else (200,))
        if resp.status_code == 401 and app is not None:
            resp.close()
            app.invalidate(headers["Authorization"].removeprefix("Bearer "))
            headers = {**self._headers(repo), "Accept": "application/vnd.github.raw+json"}
            resp = client.request("GET", url, headers=headers, stream=True, params=params)
        return file_answer(resp, repository=repo.name, path=path, commit=commit)


def _full_name(repo: object) -> str | None:
    """A repository object's ``full_name``, folded (GitHub names ignore case)."""
    name = repo.get("full_name") if isinstance(repo, dict) else None
    return name.casefold() if isinstance(name, str) else None


# pull_request actions that move a head or end the request, and what they mean
PULL_REQUEST_ACTIONS: dict[str, PullRequestAction] = {
    "opened": "opened", "reopened": "opened", "synchronize": "updated",
    "ready_for_review": "ready", "closed": "closed"}


def _spec(base: str, head: str) -> str:
    # quoted: explain passes operator input here, not only validated commit ids
    return f"compare/{quote(base, safe='')}...{quote(head, safe='')}"


def _paths(files: list[Any]) -> frozenset[str]:
    out: set[str] = set()
    for f in files:
        if isinstance(f, dict):
            for key in ("filename", "previous_filename"):
                if isinstance(f.get(key), str):
                    out.add(f[key])
    return frozenset(out)


# --- commit statuses -------------------------------------------------------------------

GITHUB_DESCRIPTION_MAX = 140
# GitHub has no running or cancelled state: a run in progress is pending, a halted one an error
GITHUB_STATES: dict[StatusState, str] = {
    "pending": "pending", "running": "pending", "success": "success", "failure": "failure",
    "error": "error"}
GITHUB_STATUS_NEEDS = ("a classic personal access token needs the repo:status (or repo) scope; "
                       "a fine-grained token or a GitHub App installation needs the "
                       "'Commit statuses' repository permission set to write")

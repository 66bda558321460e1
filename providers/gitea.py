"""Gitea and Forgejo: signatures, push events, the commits API.

Webhook headers (Gitea's and Forgejo's ``services/webhook``): ``X-Gitea-Delivery`` (a UUID
per delivery), ``X-Gitea-Event`` (``push`` for branch and tag pushes alike) and
``X-Gitea-Signature``, the hex HMAC-SHA256 of the raw body with no prefix. Forgejo sends
the same values as ``X-Forgejo-*`` too, and a Forgejo that stops sending the Gitea names
must still be accepted: either family will do, and a request carrying both must carry the
same value in each. Gitea tries a delivery once, with a short time-out, and never again:
the reconciler is what catches a push whose delivery failed.

A push payload is GitHub-shaped: ``ref``, ``before``, ``after`` (40 zeros on creation and
deletion) and ``repository.full_name`` (``owner/repo``). For an annotated tag ``after`` is
the tag object and ``head_commit.id`` the commit it points at, which is the head used. It
says nothing of force pushes, so ``forced`` is False; the difference below covers them.

Changed files. Gitea's compare API (``GET /repos/{owner}/{repo}/compare/{basehead}``, 1.22+)
lists every commit from the merge base in one unpaged answer, so it is not used. Instead
``GET /repos/{owner}/{repo}/commits?sha=HEAD&not=BASE&files=true`` (``git log HEAD ^BASE``,
the ``not`` parameter since Gitea 1.20, go-gitea/gitea#24409) lists the commits head has and
base lacks, each with its files (``git log --name-status -m --first-parent --no-renames``:
a merge against its first parent, a rename as its old and new path). It pages: the server
clamps ``limit`` to its ``MAX_RESPONSE_ITEMS`` (50 by default; fewer if configured) and
says ``X-HasMore``, ``X-Total-Count`` and ``Link: rel="next"``; every page is read (a client
that stops at the first misses the files of older commits). The union of those files
holds every path whose content differs from base to head (and may hold a path changed and
changed back). When head and base diverged (a force push), the commits base has and head
lacks are listed as well: their files are what the head no longer has.

An unknown ``not`` commit makes the listing fail with a 500, so the base is first looked
up (``GET /repos/{owner}/{repo}/git/commits/{sha}``, 404 when it is gone).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from providers.base import (
    BranchHead,
    CommitStatus,
    CompareStatus,
    Diff,
    Headers,
    HttpProvider,
    StatusState,
    branch_answer,
    check_status_answer,
    checked_delivery_id,
    checked_sha,
    file_answer,
    load_json_object,
    match_hex_hmac,
    post_status,
    printable,
    pull_request_event,
    pusher_in,
    rate_budget,
    split_ref,
    status_commit,
    unreadable_on_refusal,
)
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError, Unauthorized
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent
from receiver.secrets import SecretRef

# each header in its two spellings, the Forgejo one first
SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature")
EVENT_HEADERS = ("X-Forgejo-Event", "X-Gitea-Event")
DELIVERY_HEADERS = ("X-Forgejo-Delivery", "X-Gitea-Delivery")
PUSH_EVENT = "push"
PULL_REQUEST_EVENT = "pull_request"
# the pull_request actions validation reads ("closed" with merged: true is a merge)
PULL_REQUEST_ACTIONS: dict[str, PullRequestAction] = {
    "opened": "opened", "reopened": "opened", "synchronized": "updated",
    "closed": "closed"}

COMMITS_LIMIT = 50  # asked per commits page; the server may clamp it lower
MAX_COMMIT_PAGES = 100  # past this many pages in one direction the difference is incomplete
API_SUFFIX = "/api/v1"


class GiteaProvider(HttpProvider):
    """The Gitea and Forgejo implementation of ``providers.base.Provider``."""

    name = "gitea"
    content_types: tuple[str, ...] = ("application/json",)
    credential_headers: ClassVar[tuple[str, ...]] = tuple(h.lower() for h in SIGNATURE_HEADERS)
    # no public default: api_url (https://HOST/api/v1) names the server, and git_url its
    # clone URL (https://HOST/owner/repo.git)

    # --- webhook side ------------------------------------------------------------------

    def preflight(self, headers: Headers) -> None:
        """Gitea signs its test deliveries like any other: nothing is answered before."""

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """Check the hex HMAC-SHA256 in ``X-Gitea-Signature`` or ``X-Forgejo-Signature``."""
        signature = _one_of(headers, SIGNATURE_HEADERS, Unauthorized)
        if signature is None:
            raise Unauthorized("missing X-Gitea-Signature (or X-Forgejo-Signature)")
        if len(signature) != 64:
            raise Unauthorized("malformed X-Gitea-Signature")
        return match_hex_hmac(body, signature, secrets)

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """``X-Gitea-Delivery`` or ``X-Forgejo-Delivery``."""
        value = _one_of(headers, DELIVERY_HEADERS, BadRequest)
        return checked_delivery_id(value, "X-Gitea-Delivery")

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """A ``pull_request`` event: ``opened``/``reopened`` (opened), ``synchronized``
        (updated), ``closed`` (closed, or merged when ``pull_request.merged``); its other
        actions (edited, labels, assignees, reviews) are ignored. Gitea holds the head
        under ``refs/pull/{number}/head`` and names the ``merge_base`` itself."""
        if _one_of(headers, EVENT_HEADERS, BadRequest) != PULL_REQUEST_EVENT:
            return None
        doc = load_json_object(body)
        action = doc.get("action")
        normalized = PULL_REQUEST_ACTIONS.get(action) if isinstance(action, str) else None
        if normalized is None:
            raise Ignored(f"pull_request action {printable(action)!r} moves no head")
        pr = doc.get("pull_request")
        if not isinstance(pr, dict):
            raise BadRequest("pull_request payload needs pull_request")
        if normalized == "closed" and pr.get("merged") is True:
            normalized = "merged"
        head, base = pr.get("head"), pr.get("base")
        if not isinstance(head, dict) or not isinstance(base, dict):
            raise BadRequest("pull_request payload needs pull_request.head and .base")
        repo = doc.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        number = doc.get("number", pr.get("number"))
        source_repo = _repo_name(head.get("repo"))
        return pull_request_event(
            self.name, repository=full_name, number=number, action=normalized,
            source_branch=head.get("ref"), target_branch=base.get("ref"),
            head=head.get("sha"), target=base.get("sha"),
            source_ref=f"refs/pull/{number}/head" if isinstance(number, int) else None,
            fork=source_repo is None or source_repo != (_repo_name(base.get("repo"))
                                                        or _repo_name(repo)),
            draft=pr.get("draft") is True, merge_base=pr.get("merge_base"))

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """Normalize a ``push`` (branch or tag); every other event type is ignored."""
        event = _one_of(headers, EVENT_HEADERS, BadRequest)
        if event is None:
            raise BadRequest("missing header X-Gitea-Event (or X-Forgejo-Event)")
        if event != PUSH_EVENT:
            raise Ignored(f"unsupported event type {printable(event)!r}")
        doc = load_json_object(body)
        ref = doc.get("ref")
        repo = doc.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        if not isinstance(ref, str) or not isinstance(full_name, str) \
                or full_name.count("/") != 1 or "" in full_name.split("/"):
            raise BadRequest("push payload needs ref and repository.full_name (owner/repo)")
        ref_type, ref_name = split_ref(ref)
        before = checked_sha(doc.get("before"), "before")
        after = checked_sha(doc.get("after"), "after")
        if before is None and after is None:
            raise BadRequest("before and after cannot both be empty")
        head_commit = doc.get("head_commit")
        if ref_type == "tag" and after is not None and isinstance(head_commit, dict):
            # an annotated tag's `after` is the tag object; head_commit is its commit
            after = checked_sha(head_commit.get("id"), "head_commit.id") or after
        return (PushEvent(provider=self.name, repository=full_name, ref_type=ref_type,
                          ref_name=ref_name, before=before, after=after, forced=False,
                          pusher=pusher_in(doc, ("pusher", "login"), ("pusher", "username"),
                                           ("sender", "login"))),)

    # --- API side ----------------------------------------------------------------------

    def _headers(self, repo: RepositoryConfig) -> dict[str, str]:
        """JSON, with the access token in Gitea's documented ``Authorization: token``."""
        headers = {"Accept": "application/json"}
        if repo.api_token is not None:
            headers["Authorization"] = f"token {repo.api_token.value()}"
        return headers

    def git_authorization(self, repo: RepositoryConfig) -> str | None:
        """The access token as the Basic *user name*, with an empty password.

        Gitea's basic authentication takes a token from the password, but older releases
        then also required the user name to be the token's owner; a token given as the
        user name with no password is looked up on its own in every release (and Forgejo).
        """
        if repo.api_token is None:
            return None
        return "Basic " + base64.b64encode(f"{repo.api_token.value()}:".encode()).decode("ascii")

    @classmethod
    def git_url_for(cls, api_url: str, name: str) -> str | None:
        """Provider.git_url_for: ``https://HOST/{owner}/{repo}.git`` beside the API."""
        return f"{_web_root(api_url)}/{name}.git"

    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """Provider.file_url: ``/{owner}/{repo}/src/commit/{sha}/{path}`` on the host."""
        return f"{_web_root(repo.api_url)}/{repo.name}/src/commit/{commit}/{quote(path, safe='/')}"

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.commit_url: ``/{owner}/{repo}/commit/{sha}`` on the host."""
        return f"{_web_root(repo.api_url)}/{repo.name}/commit/{commit}"

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """``GET /api/v1/repos/{owner}/{repo}``."""
        return _repo_url(repo, "").removesuffix("/")

    @unreadable_on_refusal
    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """Tree difference base→head from the commits each side has and the other lacks.

        Calls, fewest first: none when base equals head. One lookup of base (gone: the
        difference is incomplete). Then the pages of ``HEAD ^BASE``: none listed means
        head is contained (``behind``); base as a parent of a listed commit proves
        ``ahead``; a complete listing without that means ``diverged``, and the pages of
        ``BASE ^HEAD`` follow.
        """
        if base == head:
            return Diff("identical", frozenset(), None, 0)
        client = self._client(repo)
        start = client.calls
        if not self._commit_exists(repo, base):
            # a repository the token cannot see answers 404 as well as a missing commit
            self.check_access(repo)
            return Diff("diverged", None, f"baseline commit {base[:12]} is gone",
                        client.calls - start)
        forward = self._listing(repo, include=head, exclude=base)
        if isinstance(forward, str):
            return Diff("diverged", None, forward, client.calls - start)
        commits, paths = forward
        if not commits:
            return Diff("behind", frozenset(), None, client.calls - start)
        # base is an ancestor of head exactly when the commit after it on some path down
        # from head is listed, with base as a parent
        status: CompareStatus = "ahead" if any(base in parents for parents in commits.values()) \
            else "diverged"
        if status == "ahead":
            return Diff(status, frozenset(paths), None, client.calls - start)
        backward = self._listing(repo, include=base, exclude=head)
        if isinstance(backward, str):
            return Diff(status, None, backward, client.calls - start)
        return Diff(status, frozenset(paths | backward[1]), None, client.calls - start)

    def _commit_exists(self, repo: RepositoryConfig, sha: str) -> bool:
        url = _repo_url(repo, f"git/commits/{quote(sha, safe='')}")
        resp = self._client(repo).request("GET", url, headers=self._headers(repo), params={
            "stat": "false", "verification": "false", "files": "false"})
        return resp.status_code != 404

    def _listing(self, repo: RepositoryConfig, *, include: str,
                 exclude: str) -> tuple[dict[str, set[str]], set[str]] | str:
        """Every commit of ``include ^exclude`` (sha -> parent shas) and the union of their
        files, reading every page; or why the listing cannot be complete."""
        client = self._client(repo)
        url = _repo_url(repo, "commits")
        commits: dict[str, set[str]] = {}
        paths: set[str] = set()
        total: int | None = None
        for page in range(1, MAX_COMMIT_PAGES + 1):
            resp = client.request("GET", url, headers=self._headers(repo), params={
                "sha": include, "not": exclude, "files": "true", "stat": "false",
                "verification": "false", "page": page, "limit": COMMITS_LIMIT})
            if resp.status_code == 404:
                return ("commits answered 404: the head commit is gone" if page == 1
                        else "a commits page vanished while paging")
            listed = _commit_page(resp)
            if page == 1:
                total = _header_int(resp, "X-Total-Count")
                per_page = _header_int(resp, "X-PerPage") or len(listed) or COMMITS_LIMIT
                if total is not None and -(-total // per_page) > MAX_COMMIT_PAGES:
                    return (f"{total} commits to list, more than {MAX_COMMIT_PAGES} pages of "
                            f"{per_page}")
            for sha, parents, files in listed:
                if sha == exclude:
                    # `not` was ignored (Gitea before 1.20): the listing is all history
                    return "the server ignored the commits `not` parameter (Gitea 1.20+ needed)"
                if files is None:
                    return f"commit {sha[:12]} was listed without its files"
                commits[sha] = parents
                paths |= files
            if not listed or not _more(resp, page):
                if total is not None and len(commits) < total:
                    return f"commits listed {len(commits)} of the {total} it announced"
                return commits, paths
        return f"commits needed more than {MAX_COMMIT_PAGES} pages"

    # --- commit statuses ---------------------------------------------------------------

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """``POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`` with ``context`` = the name.

        Checked against Gitea's ``CreateStatusOption`` (``state`` pending, success, error,
        failure or warning; ``target_url``; ``description``; ``context``) and its
        ``routers/api/v1/repo/status.go`` (answer 201). The latest status of a context is
        the one shown. Gitea keeps description and link as TEXT: nothing is cut.
        """
        client = self._client(repo)
        url = _repo_url(repo, f"statuses/{status_commit(commit)}")
        body = {"state": GITEA_STATES[status.state], "target_url": status.url,
                "description": status.description, "context": status.name}
        resp = post_status(client, url, self._headers(repo), body)
        check_status_answer(client, resp, repository=repo.name, commit=commit,
                            needs=GITEA_STATUS_NEEDS)

    # --- branch heads and files --------------------------------------------------------

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """``GET /api/v1/repos/{owner}/{repo}/branches/{branch}`` (answer ``commit.id``).

        A missing branch answers 404 with ``errors: ["branch does not exist [name: …]"]``
        (``ctx.NotFound(err)``); a repository the token cannot see answers 404 with no
        errors. ``etag`` is not used.
        """
        url = _repo_url(repo, f"branches/{quote(branch, safe='')}")
        resp = self._client(repo).request("GET", url, headers=self._headers(repo))
        if resp.status_code == 404 and _branch_missing(resp):
            return BranchHead(None, **rate_budget(resp))
        return branch_answer(resp, repo.name, lambda doc: doc["commit"]["id"])

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """``GET /api/v1/repos/{owner}/{repo}/raw/{path}?ref={sha}``: the file's raw bytes;
        404 when the path does not exist at that commit."""
        url = _repo_url(repo, f"raw/{quote(path, safe='/')}")
        headers = {**self._headers(repo), "Accept": "*/*"}  # raw bytes, not JSON
        resp = self._client(repo).request("GET", url, headers=headers, stream=True,
                                          params={"ref": status_commit(commit)})
        return file_answer(resp, repository=repo.name, path=path, commit=commit)


# --- helpers ---------------------------------------------------------------------------


def _repo_name(repo: object) -> str | None:
    """A repository object's ``full_name``, folded (Gitea names ignore case)."""
    name = repo.get("full_name") if isinstance(repo, dict) else None
    return name.casefold() if isinstance(name, str) else None


def _one_of(headers: Headers, names: tuple[str, ...],
            error: type[BadRequest] | type[Unauthorized]) -> str | None:
    """The value of whichever of ``names`` is present; ``error`` when they disagree."""
    values = {v for name in names if (v := headers.get(name.lower()))}
    if len(values) > 1:
        raise error(f"{' and '.join(names)} disagree")
    return values.pop() if values else None


def _api_root(api_url: str) -> str:
    # accept https://HOST and https://HOST/api/v1 alike
    root = api_url.rstrip("/")
    return root if root.endswith(API_SUFFIX) else root + API_SUFFIX


def _web_root(api_url: str) -> str:
    return _api_root(api_url).removesuffix(API_SUFFIX)


def _repo_url(repo: RepositoryConfig, tail: str) -> str:
    owner, _, name = repo.name.partition("/")
    return f"{_api_root(repo.api_url)}/repos/{quote(owner, safe='')}/{quote(name, safe='')}/{tail}"


def _commit_page(resp: requests.Response) -> list[tuple[str, set[str], set[str] | None]]:
    """(sha, parent shas, file names or None) of each commit of one commits page."""
    try:
        page = resp.json()
    except ValueError:
        raise ProviderError("commits answer is not JSON") from None
    if not isinstance(page, list):
        raise ProviderError("commits answer is not a list")
    out: list[tuple[str, set[str], set[str] | None]] = []
    for commit in page:
        sha = commit.get("sha") if isinstance(commit, dict) else None
        if not isinstance(sha, str) or not sha:
            raise ProviderError("commits answer lists a commit without its sha")
        parents = commit.get("parents")
        parent_shas = {p["sha"] for p in parents if isinstance(p, dict)
                       and isinstance(p.get("sha"), str)} if isinstance(parents, list) else set()
        files = commit.get("files")
        names = {f["filename"] for f in files if isinstance(f, dict)
                 and isinstance(f.get("filename"), str) and f["filename"]} \
            if isinstance(files, list) else None
        out.append((sha, parent_shas, names))
    return out


def _more(resp: requests.Response, page: int) -> bool:
    """Whether another page follows ``page``: ``X-HasMore`` when sent, else a ``next``
    link, else a page count; a server that says none of them is read to an empty page."""
    has_more = resp.headers.get("X-HasMore")
    if has_more in ("true", "false"):
        return has_more == "true"
    if resp.headers.get("Link") is not None:
        return "next" in resp.links
    pages = _header_int(resp, "X-PageCount")
    return page < pages if pages is not None else True


def _header_int(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name, "")
    return int(value) if value.isdigit() else None


def _branch_missing(resp: requests.Response) -> bool:
    """Whether a 404 to a branch read names the branch (``errors``), not the repository."""
    try:
        errors: Any = resp.json().get("errors")
    except (ValueError, AttributeError):
        return False
    return isinstance(errors, list) and any(
        isinstance(e, str) and "branch does not exist" in e for e in errors)


# --- commit statuses -------------------------------------------------------------------

# Gitea has no running or cancelled state: a run in progress is pending, a halted one an error
GITEA_STATES: dict[StatusState, str] = {
    "pending": "pending", "running": "pending", "success": "success", "failure": "failure",
    "error": "error"}
GITEA_STATUS_NEEDS = ("an access token with the write:repository scope, of a user who may "
                      "write to the repository")

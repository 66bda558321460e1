"""Bitbucket Data Center / Server: signatures, ``repo:refs_changed`` events, the REST API.

Webhook headers (Atlassian, "Event payload"): ``X-Request-Id`` (a UUID per request, the
delivery id), ``X-Event-Key`` (``repo:refs_changed`` for a push) and, when the webhook has a
secret, ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``. The "Test connection"
button sends ``X-Event-Key: diagnostics:ping`` with the body ``{"test": true}`` and no
signature, so it is answered ``ignored`` before verification (see :meth:`preflight`).

One push can move several refs: ``changes[]`` holds one entry per ref, each with ``type``
ADD/UPDATE/DELETE (``RefChangeType`` has exactly these three: nothing says a push was
forced, so ``forced`` is always False; the tree difference covers force pushes anyway),
``fromHash``/``toHash`` (40 zeros on ADD/DELETE) and ``ref`` (``type`` BRANCH or TAG,
``displayId`` the short name). The repository is ``project.key/slug``; personal
projects have keys like ``~gopher``.

Changed files come from ``GET /rest/api/1.0/projects/{key}/repos/{slug}/changes?since=B&until=H``,
which compares the two trees directly (``git diff B H``). ``compare/changes?from=H&to=B`` is
not used: it lists the changes "available in the from commit but not in the to commit",
i.e. from the merge base, so a force push that dropped commits would lose their files.
The changes resource pages with ``start``/``limit`` (``isLastPage``, ``nextPageStart``) but
applies a hard cap, ``page.max.changes`` (1000 by default), beyond which no further page
can be requested; client authors report (cosmin/stashy#131, #151) that a capped list says
``isLastPage: false`` with no usable ``nextPageStart``. Either sign, or a list that
reaches the cap, makes the Diff incomplete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote

from providers.base import (
    BranchHead,
    CommitStatus,
    CompareStatus,
    Diff,
    Headers,
    HttpProvider,
    check_status_answer,
    checked_delivery_id,
    checked_sha,
    file_answer,
    fit_text,
    head_sha,
    load_json_object,
    post_status,
    printable,
    pull_request_event,
    pusher_in,
    rate_budget,
    require_header,
    status_commit,
    status_key,
    unreadable_on_refusal,
    verify_sha256_header,
)
from providers.bitbucket import bitbucket_state
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent, RefType
from receiver.secrets import SecretRef

PING_EVENT = "diagnostics:ping"
PUSH_EVENT = "repo:refs_changed"
MIRROR_EVENT = "mirror:repo_synchronized"
REF_TYPES: dict[str, RefType] = {"BRANCH": "branch", "TAG": "tag"}
CHANGE_TYPES = frozenset({"ADD", "UPDATE", "DELETE"})
# the pull request events validation reads, and what each means
PULL_REQUEST_EVENTS: dict[str, PullRequestAction] = {
    "pr:opened": "opened", "pr:from_ref_updated": "updated", "pr:merged": "merged",
    "pr:declined": "closed", "pr:deleted": "closed"}

CHANGES_CAP = 1000  # page.max.changes default: the server lists no change past this many
CHANGES_PAGE_LIMIT = 1000  # ask for the whole cap at once; the server clamps to its maximum
MAX_CHANGE_PAGES = 100  # a server answering tiny pages cannot keep us paging forever
COMMITS_PROBE_LIMIT = 100  # page.max.commits default: the most one commits page returns


class BitbucketServerProvider(HttpProvider):
    """The Bitbucket Data Center implementation of ``providers.base.Provider``."""

    name = "bitbucket-server"
    content_types: tuple[str, ...] = ("application/json",)
    # the unsigned diagnostics:ping is answered by preflight() first
    credential_headers: ClassVar[tuple[str, ...]] = ("x-hub-signature",)

    # --- webhook side ------------------------------------------------------------------

    def preflight(self, headers: Headers) -> None:
        """Answer "Test connection" (``diagnostics:ping``, sent unsigned) as ``ignored``.

        Nothing is read, recorded or called: the answer is the same whoever sends it.
        """
        if headers.get("x-event-key") == PING_EVENT:
            raise Ignored("ping event")

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """Check ``X-Hub-Signature: sha256=<hex>`` against every configured secret."""
        return verify_sha256_header(headers, "X-Hub-Signature", body, secrets)

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """``X-Request-Id``."""
        return checked_delivery_id(headers.get("x-request-id"), "X-Request-Id")

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """``pr:opened`` (opened), ``pr:from_ref_updated`` (updated), ``pr:merged``,
        ``pr:declined`` and ``pr:deleted`` (closed); the other ``pr:*`` keys are ignored.
        The head is ``fromRef.latestCommit``, held in the target repository under
        ``refs/pull-requests/{id}/from``; a fork's ``fromRef`` is another repository."""
        event = headers.get("x-event-key", "")
        if not event.startswith("pr:"):
            return None
        action = PULL_REQUEST_EVENTS.get(event)
        if action is None:
            raise Ignored(f"event {printable(event)!r} moves no pull request head")
        doc = load_json_object(body)
        # X-Event-Key is not covered by the signature; the body's eventKey is
        if doc.get("eventKey") != event:
            raise BadRequest("eventKey in the body does not match X-Event-Key")
        pr = doc.get("pullRequest")
        if not isinstance(pr, dict):
            raise BadRequest("pull request payload needs pullRequest")
        from_ref, to_ref = pr.get("fromRef"), pr.get("toRef")
        if not isinstance(from_ref, dict) or not isinstance(to_ref, dict):
            raise BadRequest("pull request payload needs pullRequest.fromRef and .toRef")
        repository = _repository_name(to_ref.get("repository"))
        number = pr.get("id")
        try:
            source_repository: str | None = _repository_name(from_ref.get("repository"))
        except BadRequest:
            source_repository = None  # a deleted fork
        return pull_request_event(
            self.name, repository=repository, number=number, action=action,
            source_branch=from_ref.get("id"), target_branch=to_ref.get("id"),
            head=from_ref.get("latestCommit"), target=to_ref.get("latestCommit"),
            source_ref=f"refs/pull-requests/{number}/from" if isinstance(number, int)
            else None,
            fork=source_repository is None or source_repository.casefold() != repository.casefold(),
            draft=pr.get("draft") is True)

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """Normalize ``repo:refs_changed`` into one event per branch or tag it moved."""
        event = require_header(headers, "X-Event-Key")
        if event == PING_EVENT:
            raise Ignored("ping event")
        if event == MIRROR_EVENT:
            # A mirror reporting that it caught up with its upstream: the same ref changes
            # already arrived from the upstream as repo:refs_changed (under another request
            # id), and with refLimitExceeded the list may be partial. Nothing new to do.
            raise Ignored("mirror:repo_synchronized repeats pushes already sent as "
                          "repo:refs_changed")
        if event != PUSH_EVENT:
            raise Ignored(f"unsupported event type {printable(event)!r}")
        doc = load_json_object(body)
        # X-Event-Key is not covered by the signature; the body's eventKey is
        body_key = doc.get("eventKey", PUSH_EVENT)
        if body_key != PUSH_EVENT:
            raise BadRequest("eventKey in the body does not match X-Event-Key")
        repository = _repository_name(doc.get("repository"))
        changes = doc.get("changes")
        if not isinstance(changes, list) or not changes:
            raise BadRequest("repo:refs_changed needs a non-empty changes list")
        pusher = pusher_in(doc, ("actor", "displayName"), ("actor", "name"))
        events = [replace(e, pusher=pusher) for i, c in enumerate(changes)
                  if (e := _push(self.name, repository, c, i)) is not None]
        if not events:
            raise Ignored("no change moved a branch or a tag")
        return tuple(events)

    # --- API side ----------------------------------------------------------------------

    @unreadable_on_refusal
    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """Tree difference base→head, after a containment check.

        Calls, fewest first: none when base equals head. One ``commits?since=base&until=head``
        page: empty means head is contained (``behind``); otherwise base being a parent of a
        listed commit proves ``ahead``, and a complete list without that proves
        ``diverged``. Only a range longer than one page needs the reverse query to tell
        the two apart. Then the ``changes`` pages (one for up to 1000 paths).
        """
        client = self._client(repo)
        start = client.calls
        if base == head:
            return Diff("identical", frozenset(), None, 0)
        probe = self._commits(repo, since=base, until=head, limit=COMMITS_PROBE_LIMIT)
        if probe is None:
            # a repository the token cannot see answers 404 as well as a missing commit
            self.check_access(repo)
            return Diff("diverged", None, "commits answered 404 (no such commit): the "
                        "baseline or head commit is gone", client.calls - start)
        values, last_page = probe
        if not values:
            return Diff("behind", frozenset(), None, client.calls - start)
        status: CompareStatus
        # if base is an ancestor of head, the commit right after base on any path down from
        # head is listed and has base as a parent; a complete list without one rules it out
        if any(base in _parent_ids(c) for c in values):
            status = "ahead"
        elif last_page:
            status = "diverged"
        else:
            reverse = self._commits(repo, since=head, until=base, limit=1)
            if reverse is None:
                return Diff("diverged", None, "commits answered 404 for the reverse "
                            "direction: the baseline commit is gone", client.calls - start)
            status = "diverged" if reverse[0] else "ahead"
        paths, reason = self._changes(repo, base, head)
        return Diff(status, paths, reason, client.calls - start)

    @staticmethod
    def _url(repo: RepositoryConfig, tail: str) -> str:
        key, _, slug = repo.name.partition("/")
        return (f"{repo.api_url}/rest/api/1.0/projects/{quote(key, safe='')}"
                f"/repos/{quote(slug, safe='')}/{tail}")

    def _get(self, repo: RepositoryConfig, tail: str,
             params: dict[str, str | int]) -> dict[str, Any] | None:
        """One GET; None when the server says a commit (or the repository) does not exist."""
        # 400 is "one of the supplied commit IDs or refs was invalid": ids here are
        # validated full hex, so it means the commit is unknown, like 404
        resp = self._client(repo).request("GET", self._url(repo, tail),
                                          headers=self._headers(repo), params=params,
                                          ok=(200, 400))
        if resp.status_code in (400, 404):
            return None
        try:
            body = resp.json()
        except ValueError:
            raise ProviderError(f"{tail} answer is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("values"), list):
            raise ProviderError(f"{tail} answer is not a page of values")
        return body

    def _commits(self, repo: RepositoryConfig, *, since: str, until: str,
                 limit: int) -> tuple[list[Any], bool] | None:
        """The first page of commits reachable from ``until`` but not from ``since``.

        Returns (values, is last page), or None when a commit is unknown. Note BSERV-4621:
        some versions list every commit of ``until`` for an unknown ``since``; the changes
        call that follows then answers 404, so the result is still an incomplete Diff.
        """
        page = self._get(repo, "commits", {"since": since, "until": until, "limit": limit,
                                           "merges": "include"})
        if page is None:
            return None
        return list(page["values"]), page.get("isLastPage") is True

    def _changes(self, repo: RepositoryConfig, base: str,
                 head: str) -> tuple[frozenset[str] | None, str | None]:
        paths: set[str] = set()
        count = 0
        start = 0
        for _ in range(MAX_CHANGE_PAGES):
            page = self._get(repo, "changes", {"since": base, "until": head, "start": start,
                                               "limit": CHANGES_PAGE_LIMIT})
            if page is None:
                return None, "changes answered 404: the baseline or head commit is gone"
            values: list[Any] = page["values"]
            for change in values:
                change_paths = _change_paths(change)
                if change_paths is None:
                    return None, "changes listed an entry without a path"
                paths |= change_paths
            count += len(values)
            if count >= CHANGES_CAP:
                return None, (f"changes listed {count} entries, the server's page.max.changes "
                              f"cap ({CHANGES_CAP} by default): the list may be cut")
            if page.get("isLastPage") is True:
                return frozenset(paths), None
            next_start = page.get("nextPageStart")
            if not values or not isinstance(next_start, int) or isinstance(next_start, bool) \
                    or next_start <= start:
                return None, ("changes stopped before its last page (isLastPage false without "
                              "a next page): the server cut the list")
            start = next_start
        return None, f"changes needed more than {MAX_CHANGE_PAGES} pages"

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """``GET /rest/api/1.0/projects/{key}/repos/{slug}``."""
        return self._url(repo, "").removesuffix("/")

    # --- commit statuses ---------------------------------------------------------------

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """``POST /rest/api/latest/projects/{key}/repos/{slug}/commits/{sha}/builds``.

        Checked against developer.atlassian.com "Updating build status for commits" (Data
        Center): ``key``, ``state`` INPROGRESS, SUCCESSFUL, FAILED, CANCELLED or UNKNOWN,
        ``url``, ``name``, ``description``; a write with an existing key replaces that
        build status; the answer is 204. This repository-scoped resource exists from
        Bitbucket 7.4; older servers only have the legacy ``POST
        /rest/build-status/1.0/commits/{sha}`` (no CANCELLED state, not tied to a
        repository), which is not used. The key is the status name (255 characters at
        most, far above ``codepipeline/`` and a 100-character pipeline name).
        """
        client = self._client(repo)
        url = _builds_url(repo, status_commit(commit))
        body = {"key": status_key(status.name, SERVER_KEY_MAX),
                "state": server_state(status), "url": status.url,
                "name": fit_text(status.name, SERVER_TEXT_MAX),
                "description": fit_text(status.description, SERVER_TEXT_MAX)}
        resp = post_status(client, url, self._headers(repo), body)
        check_status_answer(client, resp, repository=repo.name, commit=commit,
                            needs=SERVER_STATUS_NEEDS)

    # --- branch heads ------------------------------------------------------------------

    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """Provider.file_url: ``/projects/{key}/repos/{slug}/browse/{path}?at={sha}``.
        (HTTP access tokens only work as Bearer for git too: ``git_user`` stays None.)"""
        key, _, slug = repo.name.partition("/")
        return (f"{repo.api_url.rstrip('/')}/projects/{key}/repos/{slug}/browse/"
                f"{quote(path, safe='/')}?at={commit}")

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.commit_url: ``/projects/{key}/repos/{slug}/commits/{sha}``."""
        key, _, slug = repo.name.partition("/")
        return f"{repo.api_url.rstrip('/')}/projects/{key}/repos/{slug}/commits/{commit}"

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """``GET /rest/api/latest/projects/{key}/repos/{slug}/branches?filterText={branch}``.

        Checked against developer.atlassian.com "Bitbucket Data Center REST API: Repository
        / Get branches" (a page of ``values`` with ``id`` ``refs/heads/...``,
        ``displayId`` and ``latestCommit``; ``isLastPage``/``nextPageStart``).
        ``filterText`` matches substrings, so the branch is the value whose ``displayId``
        is exactly ``branch``, looked for over at most BRANCH_PAGES pages; none means
        the branch does not exist. A 404 is the repository's. ``etag`` is not used.
        """
        key, _, slug = repo.name.partition("/")
        url = (f"{repo.api_url}/rest/api/latest/projects/{quote(key, safe='')}"
               f"/repos/{quote(slug, safe='')}/branches")
        client = self._client(repo)
        start = 0
        for _ in range(BRANCH_PAGES):
            resp = client.request("GET", url, headers=self._headers(repo), params={
                "filterText": branch, "start": start, "limit": BRANCH_PAGE_LIMIT})
            if resp.status_code == 404:
                raise ProviderError(f"{repo.name} was not found (HTTP 404), or the token "
                                    "cannot read it")
            try:
                page = resp.json()
                values = list(page["values"])
            except (ValueError, KeyError, TypeError):
                raise ProviderError("branches answer is not a page of values") from None
            for value in values:
                if isinstance(value, dict) and value.get("displayId") == branch:
                    return BranchHead(head_sha(value.get("latestCommit"), repo.name),
                                      **rate_budget(resp))
            next_start = page.get("nextPageStart")
            if page.get("isLastPage") is not False or not isinstance(next_start, int) \
                    or next_start <= start:
                return BranchHead(None, **rate_budget(resp))
            start = next_start
        raise ProviderError(f"branches of {repo.name} matching {branch!r} span more than "
                            f"{BRANCH_PAGES} pages")

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """``GET /rest/api/latest/projects/{key}/repos/{slug}/raw/{path}?at={sha}``: the
        file's raw bytes. 404 when the path does not exist at that commit."""
        key, _, slug = repo.name.partition("/")
        url = (f"{repo.api_url}/rest/api/latest/projects/{quote(key, safe='')}/repos/"
               f"{quote(slug, safe='')}/raw/{quote(path, safe='/')}")
        headers = {**self._headers(repo), "Accept": "*/*"}  # raw bytes, not JSON
        resp = self._client(repo).request("GET", url, headers=headers, stream=True,
                                          params={"at": status_commit(commit)})
        return file_answer(resp, repository=repo.name, path=path, commit=commit)


def _repository_name(repo: object) -> str:
    """``PROJECT/slug`` (``~user/slug`` for a personal repository)."""
    project = repo.get("project") if isinstance(repo, dict) else None
    key = project.get("key") if isinstance(project, dict) else None
    slug = repo.get("slug") if isinstance(repo, dict) else None
    if not isinstance(key, str) or not key or not isinstance(slug, str) or not slug \
            or "/" in key or "/" in slug:
        raise BadRequest("repo:refs_changed needs repository.project.key and repository.slug")
    return f"{key}/{slug}"


def _push(provider: str, repository: str, change: object, index: int) -> PushEvent | None:
    """The event for ``changes[index]``; None for a ref that is neither branch nor tag."""
    where = f"changes[{index}]"
    if not isinstance(change, dict):
        raise BadRequest(f"{where} is not an object")
    ref = change.get("ref")
    if not isinstance(ref, dict):
        raise BadRequest(f"{where}.ref is missing")
    ref_type = REF_TYPES.get(str(ref.get("type")))
    if ref_type is None:
        return None
    name = ref.get("displayId")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.ref.displayId is missing")
    change_type = change.get("type")
    # a JSON array or object here is unhashable: set membership would raise TypeError
    if not isinstance(change_type, str) or change_type not in CHANGE_TYPES:
        raise BadRequest(f"{where}.type must be ADD, UPDATE or DELETE")
    before = checked_sha(change.get("fromHash"), f"{where}.fromHash")
    after = checked_sha(change.get("toHash"), f"{where}.toHash")
    if before is None and after is None:
        raise BadRequest(f"{where}: fromHash and toHash cannot both be empty")
    return PushEvent(provider=provider, repository=repository, ref_type=ref_type,
                     ref_name=name, before=before, after=after, forced=False)


def _parent_ids(commit: object) -> set[str]:
    parents = commit.get("parents") if isinstance(commit, dict) else None
    if not isinstance(parents, list):
        return set()
    return {p["id"] for p in parents if isinstance(p, dict) and isinstance(p.get("id"), str)}


def _change_paths(change: object) -> set[str] | None:
    """``path`` and, for a move, ``srcPath`` (a copy leaves its source unchanged)."""
    if not isinstance(change, dict):
        return None
    path = _path_string(change.get("path"))
    if path is None:
        return None
    out = {path}
    if change.get("type") != "COPY":
        src = _path_string(change.get("srcPath"))
        if src is not None:
            out.add(src)
    return out


def _path_string(path: object) -> str | None:
    if not isinstance(path, dict):
        return None
    text = path.get("toString")
    if isinstance(text, str) and text:
        return text
    components = path.get("components")
    if isinstance(components, list) and components and all(
            isinstance(c, str) and c for c in components):
        return "/".join(components)
    return None


# --- commit statuses -------------------------------------------------------------------

# key, name and description: 255 characters each (BSERV-12804 reports the name's limit;
# jenkinsci/bitbucket-branch-source-plugin#928 the name's and url's, 450, for Data Center)
SERVER_KEY_MAX = 255
SERVER_TEXT_MAX = 255
SERVER_STATUS_NEEDS = ("it needs read permission (REPO_READ) on the repository; an HTTP "
                       "access token needs at least repository read")


def server_state(status: CommitStatus) -> str:
    """The Data Center state: Cloud's, but a halted run is CANCELLED."""
    return bitbucket_state(status, halted="CANCELLED")


def _builds_url(repo: RepositoryConfig, commit: str) -> str:
    key, _, slug = repo.name.partition("/")
    return (f"{repo.api_url}/rest/api/latest/projects/{quote(key, safe='')}"
            f"/repos/{quote(slug, safe='')}/commits/{quote(commit, safe='')}/builds")


# --- branch heads ----------------------------------------------------------------------

BRANCH_PAGE_LIMIT = 100  # branches a filterText page lists (substring matches)
BRANCH_PAGES = 5  # pages looked through for the exact displayId: then ProviderError

"""Bitbucket Cloud: signatures, ``repo:push`` events, the diffstat and commits APIs.

Signature: ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` (the SHA-256 value
travels in the header GitHub uses for SHA-1). Delivery id: ``X-Request-UUID`` (documented
as "the UUID of the request"; ``X-Attempt-Number`` counts Bitbucket's retries of it). Event
type: ``X-Event-Key``; only ``repo:push`` is handled.

One ``repo:push`` carries ``push.changes[]``, one entry per ref moved, each with ``old`` and
``new`` (``null`` when the ref was created or deleted). ``truncated`` only says the entry's
``commits`` list was cut; the commit list is never used, the API is asked instead.

Changed files come from ``GET /2.0/repositories/{workspace}/{repo_slug}/diffstat/{spec}``
with ``spec = head..base``: Bitbucket reads the first commit as the one "containing the
changes" and the second as the state it is compared to, the opposite of ``git diff``.
Whether head is already contained in base comes from ``GET .../commits?include=head&
exclude=base`` (``git log head ^base``): no commits means nothing new.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import Field

from providers.base import (
    BranchHead,
    CommitStatus,
    CompareStatus,
    Diff,
    Headers,
    HttpProvider,
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
    status_commit,
    status_key,
    unreadable_on_refusal,
    verify_sha256_header,
)
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent, RefType
from receiver.secrets import SecretRef

PUSH_EVENT = "repo:push"
# the pull request events validation reads, and what each means
PULL_REQUEST_EVENTS: dict[str, PullRequestAction] = {
    "pullrequest:created": "opened", "pullrequest:updated": "updated",
    "pullrequest:fulfilled": "merged", "pullrequest:rejected": "closed"}
# Bitbucket names a ref's kind in old/new.type; Mercurial-era kinds ("named_branch",
# "bookmark") are not git refs and are skipped
REF_TYPES: dict[str, RefType] = {"branch": "branch", "tag": "tag", "annotated_tag": "tag"}
# one page of new commits is usually the whole push, so ahead/diverged is decided from it;
# 100 is the largest page the commits endpoint serves
COMMITS_PAGELEN = 100
# only hashes and parent hashes are read: a partial response keeps a 100-commit page small
COMMITS_FIELDS = "next,values.hash,values.parents.hash"
# diffstat pages hold 500 entries by default; past this many pages the diff is called
# incomplete rather than walked without end
MAX_DIFFSTAT_PAGES = 100


@dataclass(frozen=True, slots=True)
class BitbucketOptions:
    """The repository keys only Bitbucket Cloud has."""

    # with api_token: an Atlassian API token, sent as Basic api_username:api_token
    api_username: Annotated[str, Field(min_length=1)] | None = None


class BitbucketProvider(HttpProvider):
    """The Bitbucket Cloud implementation of ``providers.base.Provider``."""

    name = "bitbucket"
    # annotated: the protocol's attribute is tuple[str, ...], and an inferred tuple[str]
    # would not match it (attributes are invariant)
    content_types: tuple[str, ...] = ("application/json",)
    credential_headers: ClassVar[tuple[str, ...]] = ("x-hub-signature",)
    default_api_url: ClassVar[str | None] = "https://api.bitbucket.org"
    default_git_url: ClassVar[str | None] = "https://bitbucket.org/{name}.git"
    # "Using Repository Access Tokens" (and the project and workspace ones): user
    # x-token-auth. "Using API tokens": an Atlassian API token (the kind that comes with an
    # api_username, the account e-mail git refuses as a user) authenticates git as the
    # static user x-bitbucket-api-token-auth; username:app-password stopped working on
    # 2026-06-09 (the app password deprecation)
    git_user: ClassVar[str | None] = "x-token-auth"
    Options = BitbucketOptions

    # --- webhook side ------------------------------------------------------------------

    def preflight(self, headers: Headers) -> None:
        """Bitbucket Cloud has no unsigned test request: nothing is answered before verification."""

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """Check ``X-Hub-Signature: sha256=<hex>`` against every configured secret."""
        return verify_sha256_header(headers, "X-Hub-Signature", body, secrets)

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """``X-Request-UUID``."""
        return checked_delivery_id(headers.get("x-request-uuid"), "X-Request-UUID")

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """``pullrequest:created`` (opened), ``pullrequest:updated`` (updated: Bitbucket
        sends it for a title or reviewer change too, which the service tells apart by the
        head), ``pullrequest:fulfilled`` (merged), ``pullrequest:rejected`` (closed); the
        other ``pullrequest:*`` keys are ignored. Commit hashes come abbreviated (12 hex
        digits): they are resolved before anything uses them."""
        event = headers.get("x-event-key", "")
        if not event.startswith("pullrequest:"):
            return None
        action = PULL_REQUEST_EVENTS.get(event)
        if action is None:
            raise Ignored(f"event {printable(event)!r} moves no pull request head")
        doc = load_json_object(body)
        pr = doc.get("pullrequest")
        if not isinstance(pr, dict):
            raise BadRequest("pull request payload needs pullrequest")
        source, destination = pr.get("source"), pr.get("destination")
        if not isinstance(source, dict) or not isinstance(destination, dict):
            raise BadRequest("pull request payload needs pullrequest.source and .destination")
        repo = doc.get("repository")
        source_repo = _name_of(source.get("repository"))
        fork = source_repo is None or source_repo != (
            _name_of(destination.get("repository")) or _name_of(repo))
        return pull_request_event(
            self.name, repository=_name_of(repo, fold=False), number=pr.get("id"),
            action=action, source_branch=_name_of(source.get("branch"), key="name"),
            target_branch=_name_of(destination.get("branch"), key="name"),
            head=_name_of(source.get("commit"), key="hash", fold=False),
            target=_name_of(destination.get("commit"), key="hash", fold=False),
            # the source branch: Bitbucket Cloud has no pull request refs, and a fork's
            # branch is in the fork
            in_target=not fork, fork=fork, draft=pr.get("draft") is True, abbreviated=True)

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """One PushEvent per ``push.changes[]`` entry; every other event key is ignored."""
        event = require_header(headers, "X-Event-Key")
        if event != PUSH_EVENT:
            raise Ignored(f"unsupported event type {printable(event)!r}")
        doc = load_json_object(body)
        repo = doc.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        if not isinstance(full_name, str) or "/" not in full_name.strip("/"):
            raise BadRequest("push payload needs repository.full_name (workspace/repo_slug)")
        push = doc.get("push")
        changes = push.get("changes") if isinstance(push, dict) else None
        if not isinstance(changes, list):
            raise BadRequest("push payload needs push.changes")
        events: list[PushEvent] = []
        pusher = pusher_in(doc, ("actor", "display_name"), ("actor", "nickname"))
        for i, change in enumerate(changes):
            event_or_none = _change(self.name, full_name, change, f"push.changes[{i}]")
            if event_or_none is not None:
                events.append(replace(event_or_none, pusher=pusher))
        if not events:
            raise Ignored("push moved no branch or tag")
        return tuple(events)

    # --- API side ----------------------------------------------------------------------

    def _git_user(self, repo: RepositoryConfig) -> str | None:
        if repo.options_as(BitbucketOptions).api_username:
            return "x-bitbucket-api-token-auth"
        return self.git_user

    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """Provider.file_url: ``/{workspace}/{slug}/src/{sha}/{path}`` on bitbucket.org."""
        return f"{self._web(repo)}/{repo.name}/src/{commit}/{quote(path, safe='/')}"

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.commit_url: ``/{workspace}/{slug}/commits/{sha}`` on bitbucket.org."""
        return f"{self._web(repo)}/{repo.name}/commits/{commit}"

    def _web(self, repo: RepositoryConfig) -> str:
        api = repo.api_url.rstrip("/")
        return "https://bitbucket.org" if api == self.default_api_url else api

    def _headers(self, repo: RepositoryConfig) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if repo.api_token is None:
            return headers
        token = repo.api_token.value()
        username = repo.options_as(BitbucketOptions).api_username
        if username:
            # Atlassian API tokens authenticate as the account: Basic email-or-name:token
            pair = f"{username}:{token}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            # repository, project and workspace access tokens are bearer tokens
            headers["Authorization"] = f"Bearer {token}"
        return headers

    @unreadable_on_refusal
    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """Tree difference base→head: one containment call, then the diffstat pages.

        The containment call is needed because a two-dot diffstat of an old head against a
        newer baseline is not empty: it lists what the baseline added, and would start
        pipelines for a delivery that is merely late.
        """
        if base == head:
            return Diff("identical", frozenset(), None, 0)
        client = self._client(repo)
        start = client.calls
        status = self._relation(repo, base, head)
        if status is None:
            # a repository the token cannot see answers 404 as well as a missing commit
            self.check_access(repo)
            return Diff("diverged", None, "commits answered 404: the baseline or head commit "
                        "is gone", client.calls - start)
        if status == "behind":
            return Diff(status, frozenset(), None, client.calls - start)
        paths, reason = self._diffstat(repo, base, head)
        return Diff(status, paths, reason, client.calls - start)

    def _repo_url(self, repo: RepositoryConfig, tail: str) -> str:
        workspace, _, slug = repo.name.partition("/")
        return (f"{repo.api_url}/2.0/repositories/{quote(workspace, safe='')}/"
                f"{quote(slug, safe='')}/{tail}")

    def _get(self, repo: RepositoryConfig, what: str, url: str,
             params: dict[str, str | int] | None) -> dict[str, Any] | None:
        """One JSON page with a ``values`` list; None on 404."""
        resp = self._client(repo).request("GET", url, headers=self._headers(repo),
                                          params=params)
        if resp.status_code == 404:
            return None
        try:
            body = resp.json()
        except ValueError:
            raise ProviderError(f"{what} answer is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("values"), list):
            raise ProviderError(f"{what} answer has no values list")
        return body

    def _commits(self, repo: RepositoryConfig, include: str, exclude: str,
                 pagelen: int) -> dict[str, Any] | None:
        return self._get(repo, "commits", self._repo_url(repo, "commits"), {
            "include": include, "exclude": exclude, "pagelen": pagelen,
            "fields": COMMITS_FIELDS})

    def resolve_commit(self, repo: RepositoryConfig, commit: str) -> str:
        """``GET /2.0/repositories/{workspace}/{slug}/commit/{hash}``'s full ``hash``."""
        if _FULL.fullmatch(commit):
            return commit
        resp = self._client(repo).request("GET", self._repo_url(
            repo, f"commit/{quote(commit, safe='')}"), headers=self._headers(repo),
            params={"fields": "hash"})
        found = _json_field(resp, "hash") if resp.status_code == 200 else None
        if found is None or not found.startswith(commit):
            raise ProviderError(f"commit {commit[:12]} of {repo.name} was not found (HTTP "
                                f"{resp.status_code})")
        return found

    def merge_base(self, repo: RepositoryConfig, target: str, head: str) -> str | None:
        """``GET /2.0/repositories/{workspace}/{slug}/merge-base/{target}..{head}``'s
        ``hash`` (None on 404: no common ancestor or a commit unknown)."""
        resp = self._client(repo).request("GET", self._repo_url(
            repo, f"merge-base/{quote(target, safe='')}..{quote(head, safe='')}"),
            headers=self._headers(repo))
        return _json_field(resp, "hash") if resp.status_code == 200 else None

    def _relation(self, repo: RepositoryConfig, base: str, head: str) -> CompareStatus | None:
        """How head relates to base (never ``identical``: base != head); None on 404.

        ``commits?include=head&exclude=base`` lists the commits head has and base lacks,
        newest first. No commits: head is contained in base (``behind``). Otherwise base is an
        ancestor of head exactly when one of those commits has base as a parent, so the
        first page answers ``ahead`` for every ordinary push; without such a parent and
        without a next page, head and base ``diverged`` (a force push). Only a push of more
        than a page of commits whose boundary is not on the first page costs a second,
        one-commit call in the other direction.
        """
        page = self._commits(repo, head, base, COMMITS_PAGELEN)
        if page is None:
            return None
        values = page["values"]
        if not values:
            return "behind"
        if any(base in _parent_hashes(v) for v in values):
            return "ahead"
        if not page.get("next"):
            return "diverged"
        reverse = self._commits(repo, base, head, 1)
        if reverse is None:
            return None
        return "ahead" if not reverse["values"] else "diverged"

    def _diffstat(self, repo: RepositoryConfig, base: str,
                  head: str) -> tuple[frozenset[str] | None, str | None]:
        """Every path in the two-dot diffstat head..base, following ``next`` to the end.

        ``topic=false`` asks for the plain difference between the two trees. The default
        (deprecated ``merge=true``) would merge head into base first, and ``topic=true`` diffs
        against the merge base: both hide what a force push dropped from the baseline.
        """
        url = self._repo_url(repo, f"diffstat/{head}..{base}")
        params: dict[str, str | int] | None = {"topic": "false"}
        paths: set[str] = set()
        entries = 0
        seen: set[str] = set()
        expected: object = None
        for _ in range(MAX_DIFFSTAT_PAGES):
            page = self._get(repo, "diffstat", url, params)
            if page is None:
                return None, ("diffstat answered 404: the baseline or head commit is gone"
                              if not seen else "a diffstat page vanished while paging")
            seen.add(url)
            if expected is None:
                expected = page.get("size")
            for entry in page["values"]:
                entries += 1
                paths |= _entry_paths(entry)
            nxt = page.get("next")
            if not nxt:
                if isinstance(expected, int) and entries < expected:
                    return None, (f"diffstat listed {entries} of the {expected} entries it "
                                  "announced")
                return frozenset(paths), None
            if not isinstance(nxt, str) or not _same_api(repo.api_url, nxt):
                # the next link would carry the token elsewhere: the listing stays unfinished
                return None, (f"diffstat next link points outside {_origin(repo.api_url)} "
                              "and was not followed")
            if nxt in seen:
                return None, "diffstat next link repeats a page already read"
            # next links carry every query parameter already; they are followed as given
            url, params = nxt, None
        return None, f"diffstat has more than {MAX_DIFFSTAT_PAGES} pages"

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """``GET /2.0/repositories/{workspace}/{repo_slug}``."""
        return self._repo_url(repo, "").removesuffix("/")

    # --- commit statuses ---------------------------------------------------------------

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """``POST /2.0/repositories/{workspace}/{repo_slug}/commit/{sha}/statuses/build``.

        Checked against developer.atlassian.com "Bitbucket Cloud REST API: Commit statuses"
        ("Create a build status for a commit": ``key``, ``state`` INPROGRESS, SUCCESSFUL,
        FAILED or STOPPED, ``url``, ``name``, ``description``; a write with an existing key
        overwrites that status). ``key`` is refused above 40 characters ("key: Ensure this
        value has at most 40 characters", quoted in buildbot/buildbot#7049 and
        NixOS/hydra#493), so a longer name gets a stable shortened key (:func:`status_key`).
        Same credentials as compare (Bearer access token, or Basic with ``api_username``).
        """
        client = self._client(repo)
        url = self._repo_url(repo, f"commit/{status_commit(commit)}/statuses/build")
        body = {"key": status_key(status.name, BITBUCKET_KEY_MAX),
                "state": bitbucket_state(status), "url": status.url,
                "name": fit_text(status.name, BITBUCKET_TEXT_MAX),
                "description": fit_text(status.description, BITBUCKET_TEXT_MAX)}
        resp = post_status(client, url, self._headers(repo), body)
        check_status_answer(client, resp, repository=repo.name, commit=commit,
                            needs=BITBUCKET_STATUS_NEEDS)

    # --- branch heads ------------------------------------------------------------------

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """``GET /2.0/repositories/{workspace}/{repo_slug}/refs/branches/{name}``.

        Checked against developer.atlassian.com "Bitbucket Cloud REST API: Refs" ("Get a
        branch": ``name``, ``target.hash``, ``type`` branch). ``etag`` is not used.
        Bitbucket Cloud announces no remaining budget, only ``X-RateLimit-NearLimit``
        (true below a fifth of the hourly limit), which counts as a low budget.
        """
        url = self._repo_url(repo, f"refs/branches/{quote(branch, safe='')}")
        resp = self._client(repo).request("GET", url, headers=self._headers(repo))
        return branch_answer(resp, repo.name, lambda doc: doc["target"]["hash"])

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """``GET /2.0/repositories/{workspace}/{repo_slug}/src/{sha}/{path}``: a file's raw
        bytes (a directory would answer a JSON listing; the map's path names a file). 404
        when the path does not exist at that commit."""
        url = self._repo_url(repo, f"src/{status_commit(commit)}/{quote(path, safe='/')}")
        headers = {**self._headers(repo), "Accept": "*/*"}  # raw bytes, not JSON
        resp = self._client(repo).request("GET", url, headers=headers, stream=True)
        return file_answer(resp, repository=repo.name, path=path, commit=commit)


# --- payload helpers -------------------------------------------------------------------


def _change(provider: str, full_name: str, change: object, field: str) -> PushEvent | None:
    """The PushEvent of one ``push.changes[]`` entry; None for a ref that is not git's."""
    if not isinstance(change, dict):
        raise BadRequest(f"{field} is not an object")
    old, new = change.get("old"), change.get("new")
    if old is None and new is None:
        raise BadRequest(f"{field} has neither old nor new")
    kinds: set[str] = set()
    names: set[str] = set()
    hashes: dict[str, str | None] = {"old": None, "new": None}
    for side, ref in (("old", old), ("new", new)):
        if ref is None:
            continue
        if not isinstance(ref, dict):
            raise BadRequest(f"{field}.{side} is not an object")
        kind, name, target = ref.get("type"), ref.get("name"), ref.get("target")
        if not isinstance(kind, str) or not isinstance(name, str) or not name:
            raise BadRequest(f"{field}.{side} needs type and name")
        if not isinstance(target, dict):
            raise BadRequest(f"{field}.{side}.target is missing")
        kinds.add(kind)
        names.add(name)
        hashes[side] = checked_sha(target.get("hash"), f"{field}.{side}.target.hash")
        if hashes[side] is None:
            raise BadRequest(f"{field}.{side}.target.hash is not a commit id")
    if len(names) != 1:
        raise BadRequest(f"{field} old and new have different names")
    ref_types = {REF_TYPES.get(k) for k in kinds}
    if len(ref_types) != 1:
        raise BadRequest(f"{field} old and new are different kinds of ref")
    ref_type = ref_types.pop()
    if ref_type is None:
        return None
    forced = change.get("forced", False)
    return PushEvent(provider=provider, repository=full_name, ref_type=ref_type,
                     ref_name=names.pop(), before=hashes["old"], after=hashes["new"],
                     forced=forced is True)


def _parent_hashes(commit: object) -> set[str]:
    parents = commit.get("parents") if isinstance(commit, dict) else None
    if not isinstance(parents, list):
        return set()
    return {p["hash"] for p in parents if isinstance(p, dict) and isinstance(p.get("hash"), str)}


def _entry_paths(entry: object) -> set[str]:
    """old.path and new.path of one diffstat entry (a rename gives both)."""
    out: set[str] = set()
    if isinstance(entry, dict):
        for side in ("old", "new"):
            f = entry.get(side)
            if isinstance(f, dict) and isinstance(f.get("path"), str) and f["path"]:
                out.add(f["path"])
    return out


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _same_api(api_url: str, link: str) -> bool:
    """Whether ``link`` stays on the configured API: same scheme, host and port, same root."""
    api, target = urlsplit(api_url), urlsplit(link)
    root = api.path.rstrip("/") + "/2.0/"
    return (target.scheme == api.scheme and target.netloc.lower() == api.netloc.lower()
            and target.path.startswith(root))


# --- commit statuses -------------------------------------------------------------------

BITBUCKET_KEY_MAX = 40
# name and description: plugin authors report 255 characters for Cloud and Data Center
# alike (jenkinsci/bitbucket-branch-source-plugin#928); url is limited to 450, which a
# console link (pipeline names <= 100 characters) stays far below
BITBUCKET_TEXT_MAX = 255
BITBUCKET_STATUS_NEEDS = ("it needs access to the repository and the repository scope "
                          "(read:repository:bitbucket for an Atlassian API token)")


def bitbucket_state(status: CommitStatus, halted: str = "STOPPED") -> str:
    """The Bitbucket build state: a halted run (stopped, cancelled, superseded) is
    ``halted`` (Cloud: STOPPED; Data Center names it CANCELLED)."""
    if status.state == "error":
        return halted if status.detail is not None else "FAILED"
    return {"pending": "INPROGRESS", "running": "INPROGRESS", "success": "SUCCESSFUL",
            "failure": "FAILED"}[status.state]


_FULL = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def _name_of(value: object, *, key: str = "full_name", fold: bool = True) -> Any:
    """``value[key]`` when ``value`` is an object with a string there (case-folded with
    ``fold``: repository names ignore case), else None."""
    found = value.get(key) if isinstance(value, dict) else None
    if not isinstance(found, str):
        return None
    return found.casefold() if fold else found


def _json_field(resp: Any, key: str) -> str | None:
    """A full commit id at ``key`` of a JSON answer, or None."""
    try:
        found = resp.json().get(key)
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and _FULL.fullmatch(found) else None

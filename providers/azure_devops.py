"""Azure DevOps (Azure Repos): service hooks, ``git.push`` events, the Git REST API.

Azure DevOps signs nothing. A *Web Hooks* service hook subscription can only send HTTP
Basic credentials (its "Basic authentication username/password" fields), so a delivery is
authenticated by ``Authorization: Basic base64(user:password)`` compared, in constant time,
with every configured ``webhook_secrets`` value (``user:password``; several during a
rotation). Anyone who can read the traffic can replay it, so the URL must be HTTPS.

The body is the event (Microsoft's "Service hooks events", ``git.push``): ``id`` (the
event's id, repeated when Azure DevOps retries the notification: the delivery id),
``eventType``, and ``resource`` with ``refUpdates[]`` (``name`` ``refs/heads/…`` or
``refs/tags/…``, ``oldObjectId``/``newObjectId``, 40 zeros on creation and deletion) and
``repository`` (``name``, ``project.name``, ``remoteUrl``). The configured name is
``organization/project/repository``: the organization comes from ``remoteUrl``
(``https://dev.azure.com/{org}/…``, ``https://{org}.visualstudio.com/…``, or on Azure DevOps
Server the collection before ``/{project}/_git/``). Nothing says a push was forced.

Changed files: ``GET …/diffs/commits?baseVersion=B&targetVersion=H&diffCommonCommit=false``
diffs the two trees (``diffCommonCommit=true``, the default, would diff from the merge
base and lose what a force push dropped). ``aheadCount``/``behindCount`` say how head
relates to base. The changes page with ``$top``/``$skip`` (100 by default, and no
continuation token): ``$skip`` moves by the number of changes a page held, whatever
``$top`` asked, and the listing ends at an empty page or once ``changeCounts`` (the count
of every change of the difference, by type) is reached; fewer listed than counted, or a
page that repeats the one before (``$skip`` not applied), is an incomplete difference.
Folder entries are counted but are no paths.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

import requests

from providers.base import (
    BranchHead,
    CommitStatus,
    CompareStatus,
    Diff,
    Headers,
    HttpProvider,
    StatusState,
    check_status_answer,
    checked_delivery_id,
    checked_sha,
    file_answer,
    head_sha,
    load_json_object,
    match_token,
    post_status,
    printable,
    pull_request_event,
    pusher_in,
    rate_budget,
    refusals_unreadable,
    split_ref,
    status_commit,
    unreadable_on_refusal,
)
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError, RepositoryUnreadable, Unauthorized
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent
from receiver.secrets import SecretRef

PUSH_EVENT = "git.push"
PULL_REQUEST_EVENTS = ("git.pullrequest.created", "git.pullrequest.updated",
                       "git.pullrequest.merged")
# 6.0: Azure DevOps Services and Azure DevOps Server 2020 and later all serve it
API_VERSION = "6.0"
DIFF_TOP = 1000  # asked per diff page; the server may answer fewer (100 by default)
MAX_DIFF_PAGES = 100  # past this many pages the difference is incomplete
REFS_TOP = 100  # refs per page of a branch look-up (filter is a prefix match)
REFS_PAGES = 5  # pages looked through for the exact ref: then ProviderError
CONTINUATION = "x-ms-continuationtoken"


class AzureDevOpsProvider(HttpProvider):
    """The Azure DevOps implementation of ``providers.base.Provider``."""

    name = "azure-devops"
    content_types: tuple[str, ...] = ("application/json",)
    # a service hook's Basic authentication (webhook_secret_problem): the only credential
    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)
    default_api_url: ClassVar[str | None] = "https://dev.azure.com"
    # "Use personal access tokens": git takes a PAT as the Basic password of an empty
    # user name (Authorization: Basic base64(":PAT"))
    git_user: ClassVar[str | None] = ""

    @staticmethod
    def webhook_secret_problem(value: str) -> str | None:
        """A secret is the service hook's ``user:password`` pair (a password is required)."""
        _user, sep, password = value.partition(":")
        if not sep or not password:
            return ("must be user:password, the service hook's Basic authentication user "
                    "name and password")
        return None

    # --- webhook side ------------------------------------------------------------------

    def preflight(self, headers: Headers) -> None:
        """The *Test* button sends its sample with the same credentials: nothing to do."""

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """The secret equal to the ``user:password`` of ``Authorization: Basic``."""
        header = headers.get("authorization")
        if not header:
            raise Unauthorized("missing Authorization (HTTP Basic)")
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise Unauthorized("Authorization must be HTTP Basic")
        try:
            pair = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Unauthorized("malformed Basic credentials") from None
        if ":" not in pair:
            raise Unauthorized("malformed Basic credentials")
        return match_token(pair, secrets)

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """The event's ``id`` from the verified body (Azure DevOps sends no id header)."""
        if body is None:
            raise BadRequest("the delivery id is the event's id, in the body")
        return checked_delivery_id(_text(load_json_object(body).get("id")), "id")

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """``git.pullrequest.created`` (opened), ``git.pullrequest.updated`` (updated while
        ``active``; ``completed`` is a merge and ``abandoned`` a close: Azure DevOps sends
        this one for votes and reviewers too, which the service tells apart by the head),
        ``git.pullrequest.merged`` once the merge ``succeeded``. The head is
        ``lastMergeSourceCommit``; a request from a fork has ``forkSource``, and its head is
        a parent of ``refs/pull/{id}/merge`` in the target repository."""
        if b'"git.pullrequest.' not in body:  # a push is parsed once, by parse()
            return None
        doc = load_json_object(body)
        event_type = doc.get("eventType")
        if event_type not in PULL_REQUEST_EVENTS:
            return None
        resource = doc.get("resource")
        if not isinstance(resource, dict):
            raise BadRequest(f"{event_type} needs resource (set Resource details to send: All)")
        status = resource.get("status")
        action: PullRequestAction
        if event_type == "git.pullrequest.merged":
            if resource.get("mergeStatus") != "succeeded" or status != "completed":
                raise Ignored("merge attempted, not completed")
            action = "merged"
        elif status == "completed":
            action = "merged"
        elif status == "abandoned":
            action = "closed"
        elif status == "active":
            action = "opened" if event_type == "git.pullrequest.created" else "updated"
        else:
            raise Ignored(f"pull request status {printable(status)!r}")
        number = resource.get("pullRequestId")
        source = resource.get("lastMergeSourceCommit")
        target = resource.get("lastMergeTargetCommit")
        fork = isinstance(resource.get("forkSource"), dict)
        return pull_request_event(
            self.name, repository=_repository_name(resource.get("repository")),
            number=number, action=action, source_branch=resource.get("sourceRefName"),
            target_branch=resource.get("targetRefName"),
            head=source.get("commitId") if isinstance(source, dict) else None,
            target=target.get("commitId") if isinstance(target, dict) else None,
            source_ref=f"refs/pull/{number}/merge" if fork and isinstance(number, int)
            else None,
            fork=fork, draft=resource.get("isDraft") is True)

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """One event per branch or tag a ``git.push`` moved; other event types are ignored."""
        doc = load_json_object(body)
        event_type = doc.get("eventType")
        if event_type != PUSH_EVENT:
            raise Ignored(f"unsupported event type {printable(event_type)!r}")
        resource = doc.get("resource")
        if not isinstance(resource, dict):
            raise BadRequest("git.push needs resource (set Resource details to send: All)")
        repository = _repository_name(resource.get("repository"))
        updates = resource.get("refUpdates")
        if not isinstance(updates, list) or not updates:
            raise BadRequest("git.push needs resource.refUpdates")
        pusher = pusher_in(resource, ("pushedBy", "displayName"))
        events = [replace(e, pusher=pusher) for i, u in enumerate(updates)
                  if (e := _ref_update(self.name, repository, u, i)) is not None]
        if not events:
            raise Ignored("push moved no branch or tag")
        return tuple(events)

    # --- API side ----------------------------------------------------------------------

    def _headers(self, repo: RepositoryConfig) -> dict[str, str]:
        """JSON, with the PAT as the Basic password of an empty user name."""
        headers = {"Accept": "application/json"}
        token = self._git_token(repo)
        if token is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f":{token}".encode()).decode("ascii")
        return headers

    @classmethod
    def git_url_for(cls, api_url: str, name: str) -> str | None:
        """Provider.git_url_for: ``{api_url}/{org}/{project}/_git/{repository}`` (Azure
        DevOps Services, and Server with the collection as the organization)."""
        parts = name.split("/")
        if len(parts) != 3:
            return None
        org, project, repository = parts
        return (f"{api_url.rstrip('/')}/{quote(org, safe='')}/{quote(project, safe='')}"
                f"/_git/{quote(repository, safe='')}")

    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """Provider.file_url: ``/{org}/{project}/_git/{repo}?path=/{path}&version=GC{sha}``."""
        org, project, name = _parts(repo)
        return (f"{repo.api_url.rstrip('/')}/{quote(org, safe='')}/{quote(project, safe='')}"
                f"/_git/{quote(name, safe='')}?path=/{quote(path, safe='/')}&version=GC{commit}")

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.commit_url: ``/{org}/{project}/_git/{repo}/commit/{sha}``."""
        org, project, name = _parts(repo)
        return (f"{repo.api_url.rstrip('/')}/{quote(org, safe='')}/{quote(project, safe='')}"
                f"/_git/{quote(name, safe='')}/commit/{commit}")

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """``GET {org}/{project}/_apis/git/repositories/{repo}``."""
        return f"{_repo_api(repo, '').removesuffix('/')}?api-version={API_VERSION}"

    def check_access(self, repo: RepositoryConfig) -> None:
        """Provider.check_access, where a 203 (the sign-in page Azure DevOps answers a PAT
        it does not take) is a refusal too."""
        resp = self._get(repo, self._repository_url(repo), None)
        if resp.status_code == 404:
            raise RepositoryUnreadable(repo.name, 404)

    def _get(self, repo: RepositoryConfig, url: str, params: dict[str, str | int] | None,
             headers: dict[str, str] | None = None, *, stream: bool = False
             ) -> requests.Response:
        """One GET answered 200 or 404; refusals (401, 403, 203, a redirect) raise
        RepositoryUnreadable. ``stream``: the body is read by the caller (a file, capped)."""
        with refusals_unreadable(repo):
            resp = self._client(repo).request("GET", url, headers=headers or self._headers(repo),
                                              params=params, ok=(200, 203), stream=stream)
        if resp.status_code == 203:
            raise RepositoryUnreadable(repo.name, 203)
        return resp

    @unreadable_on_refusal
    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """Tree difference base→head from the diff pages (one call for up to 1000 changes
        where the server honours ``$top``)."""
        if base == head:
            return Diff("identical", frozenset(), None, 0)
        client = self._client(repo)
        start = client.calls
        url = _repo_api(repo, "diffs/commits")
        paths: set[str] = set()
        status: CompareStatus | None = None
        total: int | None = None
        listed = 0
        previous: object = None  # the first change of the page before
        for _ in range(MAX_DIFF_PAGES):
            resp = self._get(repo, url, {
                "baseVersion": base, "baseVersionType": "commit", "targetVersion": head,
                "targetVersionType": "commit", "diffCommonCommit": "false",
                "$top": DIFF_TOP, "$skip": listed, "api-version": API_VERSION})
            if resp.status_code == 404:
                if status is not None:
                    return Diff(status, None, "a diff page vanished while paging",
                                client.calls - start)
                # a repository the token cannot see answers 404 as well as a missing commit
                self.check_access(repo)
                return Diff("diverged", None, "diffs answered 404: the baseline or head "
                            "commit is gone", client.calls - start)
            page = _json_object(resp, "diffs")
            if status is None:
                status = _relation(page)
                if status in ("behind", "identical"):
                    return Diff(status, frozenset(), None, client.calls - start)
                total = _change_total(page.get("changeCounts"))
            changes = page.get("changes")
            if not isinstance(changes, list):
                raise ProviderError("diffs answer has no changes list")
            if changes and changes[0] == previous:
                # $skip was not applied: counting the same page again would end the list
                # at changeCounts with pages never seen
                return Diff(status, None, "diffs answered the same page for another $skip",
                            client.calls - start)
            previous = changes[0] if changes else None
            for change in changes:
                change_paths = _change_paths(change)
                if change_paths is None:
                    return Diff(status, None, "diffs listed a change without a path",
                                client.calls - start)
                paths |= change_paths
            listed += len(changes)
            if not changes or (total is not None and listed >= total):
                if total is not None and listed < total:
                    return Diff(status, None, f"diffs listed {listed} of the {total} changes "
                                "it counted", client.calls - start)
                return Diff(status, frozenset(paths), None, client.calls - start)
        return Diff(status or "diverged", None, f"diffs needed more than {MAX_DIFF_PAGES} "
                    "pages", client.calls - start)

    # --- commit statuses ---------------------------------------------------------------

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """``POST {org}/{project}/_apis/git/repositories/{repo}/commits/{sha}/statuses``.

        Checked against Microsoft's "Statuses - Create" (``state`` error, failed,
        notApplicable, notSet, pending or succeeded; ``description``; ``targetUrl``;
        ``context`` {``name``, ``genre``}; answer 201). The status name's first segment
        is the genre (``codepipeline/acme-deploy`` is genre ``codepipeline``, name
        ``acme-deploy``), which Azure DevOps shows as ``genre/name``. Each write adds a
        status; the latest of a context is the one shown. A halted run is an error, never
        notApplicable, which a branch policy would let pass.
        """
        client = self._client(repo)
        url = f"{_repo_api(repo, f'commits/{status_commit(commit)}/statuses')}" \
              f"?api-version={API_VERSION}"
        genre, sep, name = status.name.partition("/")
        context = {"name": name, "genre": genre} if sep and genre and name \
            else {"name": status.name}
        body = {"state": AZURE_STATES[status.state], "description": status.description,
                "targetUrl": status.url, "context": context}
        try:
            resp = post_status(client, url, self._headers(repo), body)
        except ProviderError as exc:
            if exc.status != 203:
                raise
            raise ProviderError(f"the PAT for {repo.name} was refused (HTTP 203, the sign-in "
                                "page) writing a commit status: it is missing, invalid or "
                                "expired", status=203) from exc
        check_status_answer(client, resp, repository=repo.name, commit=commit,
                            needs=AZURE_STATUS_NEEDS)

    # --- branch heads and files --------------------------------------------------------

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """``GET {org}/{project}/_apis/git/repositories/{repo}/refs?filter=heads/{branch}``.

        Checked against Microsoft's "Refs - List" (``value`` of ``name``/``objectId``;
        ``filter`` matches names starting with it, so the branch is the ref named exactly
        ``refs/heads/{branch}``; more pages come with ``x-ms-continuationtoken``). No such
        ref: the branch does not exist. A 404 is the repository's. ``etag`` is not used.
        """
        url = _repo_api(repo, "refs")
        wanted = f"refs/heads/{branch}"
        params: dict[str, str | int] = {"filter": f"heads/{branch}", "$top": REFS_TOP,
                                        "api-version": API_VERSION}
        for _ in range(REFS_PAGES):
            resp = self._get(repo, url, params)
            if resp.status_code == 404:
                raise ProviderError(f"{repo.name} was not found (HTTP 404), or the token "
                                    "cannot read it")
            values = _json_object(resp, "refs").get("value")
            if not isinstance(values, list):
                raise ProviderError("refs answer has no value list")
            for ref in values:
                if isinstance(ref, dict) and ref.get("name") == wanted:
                    return BranchHead(head_sha(ref.get("objectId"), repo.name),
                                      **rate_budget(resp))
            token = resp.headers.get(CONTINUATION)
            if not token or not values:
                return BranchHead(None, **rate_budget(resp))
            params = {**params, "continuationToken": token}
        raise ProviderError(f"refs of {repo.name} starting with heads/{branch!r} span more "
                            f"than {REFS_PAGES} pages")

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """``GET {org}/{project}/_apis/git/repositories/{repo}/items?path=…`` at the commit,
        as the raw bytes (``Accept: application/octet-stream``); 404 when the path does
        not exist at that commit."""
        headers = {**self._headers(repo), "Accept": "application/octet-stream"}
        resp = self._get(repo, _repo_api(repo, "items"), {
            "path": f"/{path}", "versionDescriptor.version": status_commit(commit),
            "versionDescriptor.versionType": "commit", "download": "true",
            "$format": "octetStream", "api-version": API_VERSION}, headers, stream=True)
        return file_answer(resp, repository=repo.name, path=path, commit=commit)


# --- payload helpers -------------------------------------------------------------------


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _repository_name(repository: object) -> str:
    """``organization/project/repository`` of a payload's ``resource.repository``."""
    repo = repository if isinstance(repository, dict) else {}
    project = repo.get("project")
    name = _text(repo.get("name"))
    project_name = _text(project.get("name")) if isinstance(project, dict) else None
    remote = _text(repo.get("remoteUrl"))
    if not name or not project_name or not remote:
        raise BadRequest("git.push needs resource.repository name, project.name and remoteUrl")
    organization = _organization(remote, project_name)
    if not organization or any("/" in part for part in (organization, project_name, name)):
        raise BadRequest("resource.repository.remoteUrl does not name the organization")
    return f"{organization}/{project_name}/{name}"


def _organization(remote_url: str, project: str) -> str | None:
    """The organization (on Azure DevOps Server: the collection) of a clone URL."""
    parts = urlsplit(remote_url)
    host = (parts.hostname or "").lower()
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if host == "dev.azure.com":
        return segments[0] if segments else None
    if host.endswith(".visualstudio.com"):
        return host.removesuffix(".visualstudio.com") or None
    # Azure DevOps Server: …/{collection}/{project}/_git/{repository}, the project left
    # out when the repository has the project's name
    if "_git" not in segments:
        return None
    before = segments[:segments.index("_git")]
    if len(before) >= 2 and before[-1].casefold() == project.casefold():
        return before[-2]
    return before[-1] if before else None


def _ref_update(provider: str, repository: str, update: object, index: int) -> PushEvent | None:
    """The event of ``refUpdates[index]``; None for a ref that is neither branch nor tag."""
    where = f"resource.refUpdates[{index}]"
    if not isinstance(update, dict) or not isinstance(update.get("name"), str):
        raise BadRequest(f"{where} needs a name")
    try:
        ref_type, ref_name = split_ref(update["name"])
    except Ignored:
        return None
    before = checked_sha(update.get("oldObjectId"), f"{where}.oldObjectId")
    after = checked_sha(update.get("newObjectId"), f"{where}.newObjectId")
    if before is None and after is None:
        raise BadRequest(f"{where}: oldObjectId and newObjectId cannot both be empty")
    return PushEvent(provider=provider, repository=repository, ref_type=ref_type,
                     ref_name=ref_name, before=before, after=after, forced=False)


# --- API helpers -----------------------------------------------------------------------


def _parts(repo: RepositoryConfig) -> tuple[str, str, str]:
    parts = repo.name.split("/")
    if len(parts) != 3:
        raise ProviderError(f"{repo.name}: an Azure DevOps name is "
                            "organization/project/repository")
    return parts[0], parts[1], parts[2]


def _repo_api(repo: RepositoryConfig, tail: str) -> str:
    org, project, name = _parts(repo)
    return (f"{repo.api_url.rstrip('/')}/{quote(org, safe='')}/{quote(project, safe='')}"
            f"/_apis/git/repositories/{quote(name, safe='')}/{tail}")


def _json_object(resp: requests.Response, what: str) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        raise ProviderError(f"{what} answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ProviderError(f"{what} answer is not a JSON object")
    return doc


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _relation(page: dict[str, Any]) -> CompareStatus:
    """How head (target) relates to base from the first diff page: ``aheadCount`` commits
    head has that base lacks, ``behindCount`` the reverse; else the common commit."""
    ahead, behind = _count(page.get("aheadCount")), _count(page.get("behindCount"))
    if ahead is not None and behind is not None:
        if ahead and behind:
            return "diverged"
        return "ahead" if ahead else ("behind" if behind else "identical")
    common = page.get("commonCommit")
    if isinstance(common, str) and common:
        if common == page.get("baseCommit"):
            return "ahead"
        if common == page.get("targetCommit"):
            return "behind"
        return "diverged"
    raise ProviderError("diffs answer says neither aheadCount/behindCount nor commonCommit")


def _change_total(counts: object) -> int | None:
    """The number of changes in the whole difference (``changeCounts`` summed), or None
    when the answer does not say."""
    if not isinstance(counts, dict) or not counts:
        return None
    values = [_count(v) for v in counts.values()]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _change_paths(change: object) -> set[str] | None:
    """The repository-relative paths of one change (a rename gives its old path too);
    an empty set for a folder; None when it names no path."""
    item = change.get("item") if isinstance(change, dict) else None
    path = item.get("path") if isinstance(item, dict) else None
    if not isinstance(change, dict) or not isinstance(item, dict) \
            or not isinstance(path, str) or not path.strip("/"):
        return None
    if item.get("isFolder") is True or item.get("gitObjectType") == "tree":
        return set()
    out = {path.lstrip("/")}
    for key in ("originalPath", "sourceServerItem"):
        other = change.get(key)
        if isinstance(other, str) and other.strip("/"):
            out.add(other.lstrip("/"))
    return out


# --- commit statuses -------------------------------------------------------------------

# Azure DevOps has no running or cancelled state: a run in progress is pending, a halted
# one an error (notApplicable would satisfy a branch policy)
AZURE_STATES: dict[StatusState, str] = {
    "pending": "pending", "running": "pending", "success": "succeeded", "failure": "failed",
    "error": "error"}
AZURE_STATUS_NEEDS = ("the PAT needs the Code (Status) scope (vso.code_status) and a user "
                      "who can read the repository")

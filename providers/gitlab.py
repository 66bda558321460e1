"""GitLab (gitlab.com and self-managed): tokens and signed webhooks, push events, compare.

Verification. A configured secret whose value starts with ``whsec_`` is a *signing token*
(GitLab's signed webhooks follow the Standard Webhooks scheme): ``webhook-signature`` holds
space-separated ``v1,<base64 HMAC-SHA256>`` entries over ``"{webhook-id}.{webhook-timestamp}.
{body}"``, keyed with the base64-decoded part after ``whsec_``; any entry may match, and the
timestamp must lie within the tolerance of now (default 300 s) so a captured delivery cannot
be replayed later. Any other secret value is compared, in constant time, with the plain
``X-Gitlab-Token`` header. A ``whsec_`` value is never accepted as a plain token.

``verify`` sees only secrets, so it applies the default tolerance and cannot know a
repository's ``require_signed``; ``verify_repositories`` applies each repository's own
``signature_tolerance_seconds`` and ``require_signed`` (the app calls it when present).

Delivery id: ``Idempotency-Key`` (GitLab 17.4+, stable across retries), else
``X-Gitlab-Event-UUID``, else ``webhook-id`` (equal to Idempotency-Key when signing is on).

Events: ``Push Hook``, ``Tag Push Hook``, and ``System Hook`` whose body is a push or tag
push. GitLab sends no created/deleted/forced flags: zero SHAs mark creation and deletion,
and ``forced`` is unknown (False). For a tag, ``after`` may be the annotated tag object;
``checkout_sha`` is the commit it points at, so that is the head used.

Changed files come from ``GET /api/v4/projects/:id/repository/compare?from=&to=&straight=true``
— ``straight`` diffs the two trees directly (``from..to``), which is exactly the tree
difference DESIGN.md asks for, in both directions at once. ``commits`` is still
``git log from..to`` whatever ``straight`` says, so an empty list means head is contained
in base. ``compare_timeout`` is GitLab's "the diff collection overflowed its limits" flag
(max files, lines or bytes): the diff list was cut, so the difference is incomplete.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import requests
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
    constant_time_equal,
    file_answer,
    fit_text,
    hmac_sha256,
    load_json_object,
    match_token,
    post_status,
    printable,
    pull_request_event,
    pusher_in,
    require_header,
    split_ref,
    status_commit,
    unreadable_on_refusal,
)
from receiver.config import RepositoryConfig
from receiver.errors import BadRequest, Ignored, ProviderError, Unauthorized
from receiver.events import PullRequestAction, PullRequestEvent, PushEvent
from receiver.secrets import SecretRef

SIGNING_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300.0  # GitLab's and the Standard Webhooks libraries' default
DELIVERY_ID_HEADERS = ("Idempotency-Key", "X-Gitlab-Event-UUID", "webhook-id")
PUSH_HOOKS = {"Push Hook": "push", "Tag Push Hook": "tag_push"}
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True, slots=True)
class GitLabOptions:
    """The repository keys only GitLab has."""

    # refuse X-Gitlab-Token: only signed webhooks (webhook-signature) are accepted
    require_signed: Annotated[bool, Field(strict=True)] = False
    # how far webhook-timestamp may lie from now: a captured delivery replays only within it
    signature_tolerance_seconds: Annotated[float, Field(gt=0, le=3600, strict=True)] = \
        DEFAULT_TOLERANCE_SECONDS


class GitLabProvider(HttpProvider):
    """The GitLab implementation of ``providers.base.Provider``."""

    name = "gitlab"
    content_types: tuple[str, ...] = ("application/json",)
    # a plain token, or a Standard Webhooks signature (with webhook-id and -timestamp)
    credential_headers: ClassVar[tuple[str, ...]] = ("x-gitlab-token", "webhook-signature")
    default_api_url: ClassVar[str | None] = "https://gitlab.com"
    default_git_url: ClassVar[str | None] = "https://gitlab.com/{name}.git"
    # "OAuth 2.0 API", Access Git over HTTPS with access token: user oauth2 (personal,
    # project and group tokens accept any user name, oauth2 included)
    git_user: ClassVar[str | None] = "oauth2"
    Options = GitLabOptions

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time,
                 tolerance: float = DEFAULT_TOLERANCE_SECONDS) -> None:
        super().__init__(sleep=sleep, clock=clock)
        self._tolerance = tolerance

    # --- webhook side ------------------------------------------------------------------

    def preflight(self, headers: Headers) -> None:
        """GitLab sends its test deliveries with the same token or signature: nothing to do."""

    @staticmethod
    def webhook_secret_problem(value: str) -> str | None:
        """A ``whsec_`` value must be a signing token: ``whsec_`` followed by base64."""
        if value.startswith(SIGNING_PREFIX) and not _signing_key(value):
            return "a whsec_ signing token must be whsec_ followed by base64"
        return None

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef]) -> SecretRef:
        """The secret whose signature (``whsec_`` values) or plain token authenticates ``body``.

        Uses the default timestamp tolerance and accepts plain tokens; per-repository rules
        are applied by :meth:`verify_repositories`.
        """
        return self._authenticate(headers, body, secrets, self._tolerance, require_signed=False)

    def verify_repositories(self, headers: Headers, body: bytes,
                            repos: Sequence[RepositoryConfig]) -> SecretRef:
        """Like :meth:`verify`, under each repository's own tolerance and ``require_signed``.

        The delivery is authentic when at least one of ``repos`` accepts it; the secret
        returned is that repository's. Every repository is evaluated, so timing does not
        reveal which one matched.
        """
        found: SecretRef | None = None
        refusal: Unauthorized | None = None
        for repo in repos:
            options = repo.options_as(GitLabOptions)
            try:
                secret = self._authenticate(headers, body, repo.webhook_secrets,
                                            options.signature_tolerance_seconds,
                                            require_signed=options.require_signed)
            except Unauthorized as exc:
                refusal = refusal or exc
                continue
            found = found or secret
        if found is None:
            raise refusal or Unauthorized("no repository is configured for this provider")
        return found

    def _authenticate(self, headers: Headers, body: bytes, secrets: Sequence[SecretRef],
                      tolerance: float, *, require_signed: bool) -> SecretRef:
        signing = _signing_keys(secrets)
        signature = headers.get("webhook-signature")
        refusal: Unauthorized | None = None
        if signature:
            if signing:
                try:
                    return self._match_signature(headers, body, signature, signing, tolerance)
                except Unauthorized as exc:
                    refusal = exc
            else:
                refusal = Unauthorized("webhook-signature sent, but no signing token (whsec_...) "
                                       "is configured")
        if require_signed:
            raise refusal or Unauthorized("this repository requires signed webhooks "
                                          "(webhook-signature); X-Gitlab-Token is refused")
        # a plain token on its own is what this repository accepts, so a failed signature
        # next to a valid token (a hook that also carries a signing token we were not
        # given) does not refuse the delivery; require_signed is the switch for that
        token = headers.get("x-gitlab-token")
        if not token:
            raise refusal or Unauthorized("missing X-Gitlab-Token or webhook-signature")
        plain = [SecretRef(s.ref, tuple(v for v in s.values()
                                        if not v.startswith(SIGNING_PREFIX)))
                 for s in secrets]
        try:
            found = match_token(token, plain)
        except Unauthorized as exc:
            raise refusal or exc from None
        return secrets[plain.index(found)]

    def _match_signature(self, headers: Headers, body: bytes, signature: str,
                         signing: list[tuple[SecretRef, bytes]], tolerance: float) -> SecretRef:
        msg_id = headers.get("webhook-id")
        stamp = headers.get("webhook-timestamp")
        if not msg_id or not stamp:
            raise Unauthorized("a signed webhook needs webhook-id and webhook-timestamp")
        if not msg_id.isascii():
            raise Unauthorized("malformed webhook-id")
        if not _TIMESTAMP.fullmatch(stamp):
            raise Unauthorized("malformed webhook-timestamp")
        if abs(self._clock() - int(stamp)) > tolerance:
            raise Unauthorized(f"webhook-timestamp is more than {tolerance:.0f}s from now "
                               "(a replay, or clock skew)")
        candidates = _v1_signatures(signature)
        if not candidates:
            raise Unauthorized("webhook-signature has no v1 signature")
        signed = f"{msg_id}.{stamp}.".encode("ascii") + body
        found: SecretRef | None = None
        for secret, key in signing:
            digest = hmac_sha256(key, signed)
            for candidate in candidates:
                if constant_time_equal(digest, candidate) and found is None:
                    found = secret
        if found is None:
            raise Unauthorized("webhook-signature does not match")
        return found

    def delivery_id(self, headers: Headers, body: bytes | None = None) -> str:
        """``Idempotency-Key``, else ``X-Gitlab-Event-UUID``, else ``webhook-id``."""
        for header in DELIVERY_ID_HEADERS:
            value = headers.get(header.lower())
            if value:
                return checked_delivery_id(value, header)
        raise BadRequest("missing header Idempotency-Key (or X-Gitlab-Event-UUID, webhook-id)")

    def pull_request(self, headers: Headers, body: bytes) -> PullRequestEvent | None:
        """A ``Merge Request Hook``: ``open``/``reopen`` (opened), ``update`` with
        ``oldrev`` (updated: new commits), ``update`` that takes the draft off (ready),
        ``close``, ``merge``; other actions and updates (title, labels, approvals) are
        ignored. A fork's source project is another project than the target."""
        if headers.get("x-gitlab-event") != "Merge Request Hook":
            return None
        doc = load_json_object(body)
        if doc.get("object_kind", "merge_request") != "merge_request":
            raise BadRequest("X-Gitlab-Event 'Merge Request Hook' does not match object_kind "
                             f"{printable(doc.get('object_kind'))!r}")
        attrs = doc.get("object_attributes")
        if not isinstance(attrs, dict):
            raise BadRequest("Merge Request Hook needs object_attributes")
        action = attrs.get("action")
        changes = doc.get("changes")
        draft_change = changes.get("draft") if isinstance(changes, dict) else None
        normalized: PullRequestAction
        if action in ("open", "reopen"):
            normalized = "opened"
        elif action == "update" and attrs.get("oldrev"):
            normalized = "updated"
        elif action == "update" and isinstance(draft_change, dict) \
                and draft_change.get("previous") is True and draft_change.get("current") is False:
            normalized = "ready"
        elif action in ("close", "merge"):
            normalized = "closed" if action == "close" else "merged"
        else:
            raise Ignored(f"merge request action {printable(action)!r} moves no head")
        project = doc.get("project")
        last = attrs.get("last_commit")
        draft = attrs.get("draft")
        iid = attrs.get("iid")
        return pull_request_event(
            self.name,
            repository=project.get("path_with_namespace") if isinstance(project, dict) else None,
            number=iid, action=normalized, source_branch=attrs.get("source_branch"),
            target_branch=attrs.get("target_branch"),
            head=last.get("id") if isinstance(last, dict) else None, target=None,
            source_ref=f"refs/merge-requests/{iid}/head" if isinstance(iid, int) else None,
            fork=attrs.get("source_project_id") != attrs.get("target_project_id"),
            # `draft` since GitLab 14; `work_in_progress` before
            draft=draft if isinstance(draft, bool) else attrs.get("work_in_progress") is True)

    def parse(self, headers: Headers, body: bytes) -> tuple[PushEvent, ...]:
        """Normalize a push or tag push (project or system hook); other events are ignored."""
        event = require_header(headers, "X-Gitlab-Event")
        if event in PUSH_HOOKS:
            doc = load_json_object(body)
            kind = doc.get("object_kind")
            if kind is not None and kind != PUSH_HOOKS[event]:
                raise BadRequest(f"X-Gitlab-Event {event!r} does not match object_kind "
                                 f"{printable(kind)!r}")
        elif event == "System Hook":
            doc = load_json_object(body)
            # system hook pushes carry event_name; newer payloads also carry object_kind
            kind = doc.get("object_kind", doc.get("event_name"))
            if kind not in ("push", "tag_push"):
                raise Ignored(f"system hook event {printable(kind)!r} is not a push")
        else:
            raise Ignored(f"unsupported event type {printable(event)!r}")
        return (_push(self.name, doc),)

    # --- API side ----------------------------------------------------------------------

    @unreadable_on_refusal
    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """Tree difference base→head from one straight compare (two calls in one rare case)."""
        client = self._client(repo)
        start = client.calls
        doc = self._get(repo, _project_url(repo, "repository/compare"),
                        {"from": base, "to": head, "straight": "true"})
        if doc is None:
            # a project the token cannot see answers 404 as well as a missing commit
            self.check_access(repo)
            return Diff("diverged", None, "compare answered 404: the baseline or head commit "
                        "is gone", client.calls - start)
        commits = doc.get("commits")
        diffs = doc.get("diffs")
        if not isinstance(commits, list) or not isinstance(diffs, list):
            raise ProviderError("compare answer lacks the commits or diffs list")
        cut = doc.get("compare_timeout") is True
        if not commits:
            if doc.get("compare_same_ref") is True:
                return Diff("identical", frozenset(), None, client.calls - start)
            if diffs or cut:
                # a diff was computed, so base exists: head is an ancestor of it
                return Diff("behind", frozenset(), None, client.calls - start)
            # no commits and no diff: head is an ancestor of base with the same tree, or
            # base is gone (GitLab versions that answer 200 with empty lists for an unknown
            # `from`). The compare alone cannot tell these apart; the commit lookup can.
            if self._commit_exists(repo, base):
                return Diff("behind", frozenset(), None, client.calls - start)
            return Diff("diverged", None, f"baseline commit {base[:12]} is gone",
                        client.calls - start)
        # base..head reaches base's child exactly when base is an ancestor of head
        ahead = any(isinstance(c, dict) and base in (c.get("parent_ids") or ())
                    for c in commits)
        status: CompareStatus = "ahead" if ahead else "diverged"
        if cut:
            return Diff(status, None, "compare_timeout: GitLab cut the diff list at its diff "
                        "limits (files, lines or bytes)", client.calls - start)
        return Diff(status, _paths(diffs), None, client.calls - start)

    def _get(self, repo: RepositoryConfig, url: str,
             params: dict[str, str | int] | None = None) -> dict[str, Any] | None:
        resp = self._client(repo).request("GET", url, headers=self._headers(repo), params=params)
        if resp.status_code == 404:
            return None
        try:
            body = resp.json()
        except ValueError:
            raise ProviderError("GitLab API answer is not JSON") from None
        if not isinstance(body, dict):
            raise ProviderError("GitLab API answer is not a JSON object")
        return body

    def merge_base(self, repo: RepositoryConfig, target: str, head: str) -> str | None:
        """``GET /projects/:id/repository/merge_base?refs[]={target}&refs[]={head}``: the
        commit's ``id``; None when GitLab finds none (400/404)."""
        url = (_project_url(repo, "repository/merge_base") + "?"
               + "&".join(f"refs%5B%5D={quote(ref, safe='')}" for ref in (target, head)))
        resp = self._client(repo).request("GET", url, headers=self._headers(repo),
                                          ok=(200, 400))
        if resp.status_code != 200:
            return None
        try:
            found = resp.json().get("id")
        except (ValueError, AttributeError):
            raise ProviderError("GitLab merge_base answer is not a commit") from None
        return found if isinstance(found, str) and checked_sha(found, "merge base") else None

    def _commit_exists(self, repo: RepositoryConfig, sha: str) -> bool:
        url = _project_url(repo, f"repository/commits/{quote(sha, safe='')}")
        return self._get(repo, url) is not None

    def _repository_url(self, repo: RepositoryConfig) -> str:
        """``GET /projects/:id`` (the id being the URL-encoded path with namespace)."""
        return f"{_api_root(repo.api_url)}/projects/{quote(repo.name, safe='')}"


    # --- commit statuses ---------------------------------------------------------------

    def set_status(self, repo: RepositoryConfig, commit: str, status: CommitStatus) -> None:
        """``POST /api/v4/projects/:id/statuses/:sha`` with ``name`` = ``status.name``.

        Checked against GitLab's doc/api/commits.md ("Post the build status to a commit",
        newer: "Set the pipeline status of a commit": ``state`` pending, running, success,
        failed or canceled; ``name`` or ``context``; ``target_url``; ``description``) and
        its Ci::CreateCommitStatusService: a write updates the pending or running status
        of that name, so repeating ``running`` (or ``pending``) is refused with 400
        "Cannot transition status via :run from :running"; that answer means the status
        is already there and counts as written. A write after a final state starts a new
        status (so a final write repeated shows twice: the caller writes each state once).
        GenericCommitStatus limits ``target_url`` to 255 characters: a longer link is left
        out rather than have the whole status refused. No ``ref`` is sent: GitLab then
        files the status under a branch that contains the commit.
        """
        client = self._client(repo)
        url = _project_url(repo, f"statuses/{status_commit(commit)}")
        state = gitlab_state(status)
        body = {"state": state, "name": status.name,
                "description": fit_text(status.description, GITLAB_DESCRIPTION_MAX)}
        if len(status.url) <= GITLAB_TARGET_URL_MAX:
            body["target_url"] = status.url
        resp = post_status(client, url, self._headers(repo), body)
        if resp.status_code == 400 and _already_in(resp, state):
            return
        check_status_answer(client, resp, repository=repo.name, commit=commit,
                            needs=GITLAB_STATUS_NEEDS)

    # --- branch heads ------------------------------------------------------------------

    def file_content(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """``GET /api/v4/projects/:id/repository/files/:file_path/raw?ref=:sha``, the path
        URL-encoded as one segment (GitLab's doc/api/repository_files.md "Get raw file from
        repository"). 404 when the file does not exist at that commit."""
        url = _project_url(repo, f"repository/files/{quote(path, safe='')}/raw")
        headers = {**self._headers(repo), "Accept": "*/*"}  # raw bytes, not JSON
        resp = self._client(repo).request("GET", url, headers=headers, stream=True,
                                          params={"ref": status_commit(commit)})
        return file_answer(resp, repository=repo.name, path=path, commit=commit)


    def file_url(self, repo: RepositoryConfig, path: str, commit: str) -> str:
        """Provider.file_url: ``/{namespace}/{project}/-/blob/{sha}/{path}``."""
        return f"{_web(repo)}/{repo.name}/-/blob/{commit}/{quote(path, safe='/')}"

    def commit_url(self, repo: RepositoryConfig, commit: str) -> str:
        """Provider.commit_url: ``/{namespace}/{project}/-/commit/{sha}``."""
        return f"{_web(repo)}/{repo.name}/-/commit/{commit}"

    def branch_head(self, repo: RepositoryConfig, branch: str, etag: str | None) -> BranchHead:
        """``GET /api/v4/projects/:id/repository/branches/:branch`` (the name URL-encoded).

        Checked against GitLab's doc/api/branches.md "Get single repository branch"
        (answer: ``name``, ``commit.id``; 404 "404 Branch Not Found", while a project the
        token cannot see is "404 Project Not Found"). ``etag`` is not used: GitLab counts
        a conditional read like any other. The budget comes from ``RateLimit-*``.
        """
        url = _project_url(repo, f"repository/branches/{quote(branch, safe='')}")
        resp = self._client(repo).request("GET", url, headers=self._headers(repo))
        return branch_answer(resp, repo.name, lambda doc: doc["commit"]["id"])



def _web(repo: RepositoryConfig) -> str:
    """The web host of the GitLab that serves ``api_url``."""
    return repo.api_url.rstrip("/").removesuffix("/api/v4")


def _push(provider: str, doc: dict[str, Any]) -> PushEvent:
    ref = doc.get("ref")
    project = doc.get("project")
    path = project.get("path_with_namespace") if isinstance(project, dict) else None
    if not isinstance(ref, str) or not isinstance(path, str) or "/" not in path:
        raise BadRequest("push payload needs ref and project.path_with_namespace")
    ref_type, ref_name = split_ref(ref)
    before = checked_sha(doc.get("before"), "before")
    after = checked_sha(doc.get("after"), "after")
    if after is not None:
        # a deletion has after = zeros and checkout_sha null; otherwise checkout_sha is the
        # commit (for an annotated tag, after is the tag object)
        after = checked_sha(doc.get("checkout_sha"), "checkout_sha") or after
    if before is None and after is None:
        raise BadRequest("before and after cannot both be empty")
    return PushEvent(provider=provider, repository=path, ref_type=ref_type, ref_name=ref_name,
                     before=before, after=after, forced=False,
                     pusher=pusher_in(doc, ("user_username",), ("user_name",)))


def _signing_key(value: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` value; None for another value or bad base64."""
    if not value.startswith(SIGNING_PREFIX):
        return None
    try:
        return base64.b64decode(value[len(SIGNING_PREFIX):], validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _signing_keys(secrets: Sequence[SecretRef]) -> list[tuple[SecretRef, bytes]]:
    # a whsec_ value that does not decode cannot sign anything: it is left out (start-up
    # refuses one, see webhook_secret_problem)
    return [(secret, key) for secret in secrets for value in secret.values()
            if (key := _signing_key(value)) is not None]


def _v1_signatures(header: str) -> list[bytes]:
    out: list[bytes] = []
    for entry in header.split():
        version, sep, value = entry.partition(",")
        if version != "v1" or not sep:
            continue  # other schemes (e.g. v1a, asymmetric) are not ours to check
        try:
            out.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def _api_root(api_url: str) -> str:
    # accept both https://gitlab.example.com and https://gitlab.example.com/api/v4
    root = api_url.rstrip("/")
    return root if root.endswith("/api/v4") else f"{root}/api/v4"


def _project_url(repo: RepositoryConfig, tail: str) -> str:
    return f"{_api_root(repo.api_url)}/projects/{quote(repo.name, safe='')}/{tail}"


def _paths(diffs: list[Any]) -> frozenset[str]:
    out: set[str] = set()
    for d in diffs:
        if isinstance(d, dict):
            for key in ("old_path", "new_path"):
                if isinstance(d.get(key), str) and d[key]:
                    out.add(d[key])
    return frozenset(out)


# --- commit statuses -------------------------------------------------------------------

GITLAB_TARGET_URL_MAX = 255  # GenericCommitStatus: validates :target_url, length maximum 255
# the description has no documented limit; one as long as the link's keeps it modest
GITLAB_DESCRIPTION_MAX = 255
GITLAB_STATUS_NEEDS = ("it needs the api scope and at least the Developer role on the project")
_TRANSITION_REFUSED = re.compile(r"Cannot transition status via :\w+ from :(\w+)")


def gitlab_state(status: CommitStatus) -> str:
    """The GitLab state for ``status``: a halted run (stopped, cancelled, superseded) is
    canceled, any other error failed."""
    if status.state == "error":
        return "canceled" if status.detail is not None else "failed"
    return {"pending": "pending", "running": "running", "success": "success",
            "failure": "failed"}[status.state]


def _already_in(resp: requests.Response, state: str) -> bool:
    """Whether a 400 says the status already is in ``state`` (a same-state repeat)."""
    try:
        message = resp.json().get("message")
    except (ValueError, AttributeError):
        return False
    match = _TRANSITION_REFUSED.search(message) if isinstance(message, str) else None
    return match is not None and match.group(1) == state

"""The rig of the pull request tests: one repository served by ``git http-backend``
(tests/gitserver.py), the service under gunicorn with ``diff: git``, the CodePipeline
stand-in (tests/fake_codepipeline.py), a provider API stand-in that records commit
statuses, and each provider's published pull request payload, signed as that provider
signs it, with only what must point at the test repository changed: the head, the target
commit, the number, and for the negative cases one field more (fork, draft).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.aws_events import aws_event
from tests.fake_codepipeline import FakeCodePipeline
from tests.gitserver import GitServer, WorkClone, basic
from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

SECRET = "pr-hook-secret-0b8e4c2a-must-never-be-logged"
TOKEN = "pr-api-token-5d1f9a3c-must-never-be-logged"
EVENTS_KEY = "pr-events-key-7c3e"
HOOK_USER = "receiver"
PIPELINES = ["api-deploy", "api-validate", "web-deploy", "db-deploy", "db-validate",
             "docs-deploy"]


def _sha256(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def _hex(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class PR:
    """What one delivery of a request says: the fields the test sets."""

    head: str
    target_commit: str
    number: int
    fork: bool = False
    draft: bool = False
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def _at(doc: Any, path: str) -> Any:
    """The object holding the last key of the dotted ``path``."""
    *parents, _ = path.split(".")
    for key in parents:
        doc = doc[key]
    return doc


def _set(doc: Any, path: str, value: Any) -> None:
    _at(doc, path)[path.rsplit(".", 1)[-1]] = value


@dataclass(frozen=True)
class Kit:
    """One provider: its published payload, how it signs and names a delivery, where the
    request's head lives in the target repository, and how its status writes read."""

    provider: str
    repository: str  # as the fixture names it (the service is configured with it)
    fixture: str  # an "opened" event
    event: dict[str, str]  # the event header(s)
    target: str
    source: str
    number: int
    source_ref: Callable[[int], str]
    edit: Callable[[dict[str, Any], PR], None]
    abbreviated: bool = False  # the payload carries 12-digit commit ids
    options: dict[str, Any] = field(default_factory=dict)

    def body(self, pr: PR) -> bytes:
        doc = json.loads(fixture_bytes(self.fixture))
        self.edit(doc, pr)
        return json.dumps(doc).encode()

    def headers(self, body: bytes, delivery_id: str) -> dict[str, str]:
        p = self.provider
        base = {"Content-Type": "application/json", **self.event}
        if p == "github":
            return {**base, "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256":
                    _sha256(body)}
        if p == "gitlab":
            return {**base, "X-Gitlab-Token": SECRET, "Idempotency-Key": delivery_id}
        if p == "bitbucket":
            return {**base, "X-Request-UUID": delivery_id, "X-Hub-Signature": _sha256(body)}
        if p == "bitbucket-server":
            return {**base, "X-Request-Id": delivery_id, "X-Hub-Signature": _sha256(body)}
        if p == "gitea":
            return {**base, "X-Gitea-Delivery": delivery_id, "X-Gitea-Signature": _hex(body)}
        return {**base, "Authorization": basic(HOOK_USER, SECRET)}  # azure-devops

    def secrets(self) -> list[str]:
        return ["env:PR_HOOK" if self.provider != "azure-devops" else "env:PR_HOOK_PAIR"]

    def status(self, rec: Recorded) -> tuple[str, str, str] | None:
        """(commit, status name, state as the neutral state) of a status write."""
        if rec.method != "POST":
            return None
        parts = rec.path.split("/")
        doc = json.loads(rec.body)
        p = self.provider
        if p in ("github", "gitea") and "statuses" in parts:
            return parts[-1], doc["context"], doc["state"]
        if p == "gitlab" and "statuses" in parts:
            return parts[-1], doc["name"], {"running": "pending", "failed": "failure",
                                            "canceled": "error"}.get(doc["state"],
                                                                     doc["state"])
        if p in ("bitbucket", "bitbucket-server") and parts[-1] in ("build", "builds"):
            commit = parts[-3] if p == "bitbucket" else parts[-2]
            return commit, doc["key"], {"INPROGRESS": "pending", "SUCCESSFUL": "success",
                                        "FAILED": "failure", "STOPPED": "error",
                                        "CANCELLED": "error"}[doc["state"]]
        if p == "azure-devops" and "statuses" in parts:
            context = doc["context"]
            return parts[-2], f"{context['genre']}/{context['name']}", {
                "succeeded": "success", "failed": "failure"}.get(doc["state"], doc["state"])
        return None

    @property
    def denied_states(self) -> set[str]:
        """The states a denied fork's summary may have: error, or the provider's nearest
        state that is not success where it has no error state."""
        return {"error"} if self.provider in ("github", "gitea", "azure-devops") \
            else {"failure"}


def _github(doc: dict[str, Any], pr: PR) -> None:
    doc["number"] = doc["pull_request"]["number"] = pr.number
    _set(doc, "pull_request.head.sha", pr.head)
    _set(doc, "pull_request.base.sha", pr.target_commit)
    doc["pull_request"]["draft"] = pr.draft
    if pr.fork:
        _set(doc, "pull_request.head.repo.full_name", "someone-else/Hello-World")


def _gitlab(doc: dict[str, Any], pr: PR) -> None:
    attrs = doc["object_attributes"]
    attrs["iid"] = pr.number
    attrs["last_commit"]["id"] = pr.head
    attrs["draft"] = pr.draft
    if pr.fork:
        attrs["source_project_id"] = attrs["target_project_id"] + 1


def _bitbucket(doc: dict[str, Any], pr: PR) -> None:
    p = doc["pullrequest"]
    p["id"] = pr.number
    p["source"]["commit"]["hash"] = pr.head[:12]  # Bitbucket Cloud sends 12 digits
    p["destination"]["commit"]["hash"] = pr.target_commit[:12]
    if pr.fork:
        p["source"]["repository"]["full_name"] = "someone-else/temp"


def _server(doc: dict[str, Any], pr: PR) -> None:
    p = doc["pullRequest"]
    p["id"] = pr.number
    p["fromRef"]["latestCommit"] = pr.head
    p["toRef"]["latestCommit"] = pr.target_commit
    p["draft"] = pr.draft
    if pr.fork:
        p["fromRef"]["repository"]["project"]["key"] = "~someone"


def _gitea(doc: dict[str, Any], pr: PR) -> None:
    doc["number"] = doc["pull_request"]["number"] = pr.number
    _set(doc, "pull_request.head.sha", pr.head)
    _set(doc, "pull_request.base.sha", pr.target_commit)
    doc["pull_request"]["merge_base"] = None  # the mirror computes it
    if pr.fork:
        _set(doc, "pull_request.head.repo.full_name", "someone-else/my-repo")


def _azure(doc: dict[str, Any], pr: PR) -> None:
    doc["id"] = pr.event_id
    r = doc["resource"]
    r["pullRequestId"] = pr.number
    r["lastMergeSourceCommit"]["commitId"] = pr.head
    r["lastMergeTargetCommit"]["commitId"] = pr.target_commit
    r["isDraft"] = pr.draft
    if pr.fork:
        r["forkSource"] = {"name": "refs/heads/mytopic", "repository": {"name": "fork"}}


KITS: dict[str, Kit] = {k.provider: k for k in [
    Kit("github", "Codertocat/Hello-World", "github/pull-requests/octokit-pull_request-opened.json",
        {"X-GitHub-Event": "pull_request"}, "master", "changes", 2,
        lambda n: f"refs/pull/{n}/head", _github),
    Kit("gitlab", "gitlabhq/gitlab-test", "gitlab/pull-requests/go-gitlab-webhooks-merge_request.json",
        {"X-Gitlab-Event": "Merge Request Hook"}, "master", "ms-viewport", 1,
        lambda n: f"refs/merge-requests/{n}/head", _gitlab),
    Kit("bitbucket", "cloudbeers/temp",
        "bitbucket-cloud/pull-requests/jenkins-cloud-pr-createPayloadOrigin.json",
        {"X-Event-Key": "pullrequest:created"}, "main", "foo", 1,
        lambda n: "refs/heads/foo", _bitbucket, abbreviated=True),
    Kit("bitbucket-server", "~gopher/webhook-test",
        "bitbucket-server/pull-requests/go-playground-pr-opened.json",
        {"X-Event-Key": "pr:opened"}, "master", "feature/wip", 5,
        lambda n: f"refs/pull-requests/{n}/from", _server),
    Kit("gitea", "jcitizen/my-repo", "gitea/go-scm-pull_request_opened.json",
        {"X-Gitea-Event": "pull_request"}, "master", "feature", 1,
        lambda n: f"refs/pull/{n}/head", _gitea),
    Kit("azure-devops", "fabrikam/Fabrikam/Fabrikam",
        "azure-devops/go-playground-git.pullrequest.created.json", {}, "master", "mytopic", 1,
        lambda n: "refs/heads/mytopic", _azure),
]}


class Rig:
    """A running service validating one kit's requests, and its git and AWS stand-ins."""

    def __init__(self, kit: Kit, tmp_path: Path, *, drafts: bool = False,
                 extra: dict[str, Any] | None = None) -> None:
        self.kit = kit
        self.tmp_path = tmp_path
        self.api = FakeAPI()
        self.commits: list[str] = []  # every commit the test made
        self.api.routes = _Echo(self.commits)
        self.cp = FakeCodePipeline(PIPELINES)
        self.repo_config = {
            "provider": kit.provider, "name": kit.repository,
            "api_url": self.api.url + ("/api/v1" if kit.provider == "gitea" else ""),
            "webhook_secrets": kit.secrets(), "api_token": "env:PR_TOKEN",
            "branches": [kit.target], "commit_status": True, "diff": "git",
            "pull_requests": {"targets": [kit.target], "drafts": drafts},
            "modules": {"common": {"paths": ["libs/common/**"]}},
            "pipelines": [
                {"name": "api-deploy", "paths": ["services/api/**"], "depends_on": ["common"],
                 "validate": "api-validate", "source_action": "Source"},
                # validated by its own pipeline: the namespaces must keep the two apart
                {"name": "web-deploy", "paths": ["services/web/**"], "validate": "web-deploy",
                 "source_action": "Source"},
                {"name": "db-deploy", "paths": ["services/db/**"], "validate": "db-validate",
                 "source_action": "Source"},
                {"name": "docs-deploy", "paths": ["docs/**"], "source_action": "Source"},
            ], **(extra or {})}
        self.server = GitServer(tmp_path / "server", set())
        self.repo_config["git_url"] = self.server.url(kit.repository)
        self.server.accepted.add(self._git_authorization())
        self.server.create(kit.repository)
        self.work = WorkClone(tmp_path / "work", self.server.url(kit.repository),
                              next(iter(self.server.accepted)))
        self.svc = Service({
            "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
            "launcher": {"backend": "codepipeline", "region": "us-east-1",
                         "endpoint_url": self.cp.url},
            "processing": {"lease_seconds": 10, "poll_seconds": 0.2, "max_attempts": 3,
                           "retry_backoff_seconds": 0.2},
            "outcomes": {"api_keys": ["env:PR_EVENTS_KEY"], "poll_seconds": 60},
            "git": {"cache_dir": str(tmp_path / "git-cache")},
            "ui": {"auth": "none"},  # the status page, on this loopback-only service
            "repositories": [self.repo_config],
        }, tmp_path, env={"PR_HOOK": SECRET, "PR_HOOK_PAIR": f"{HOOK_USER}:{SECRET}",
                          "PR_TOKEN": TOKEN, "PR_EVENTS_KEY": EVENTS_KEY})

    def _git_authorization(self) -> str:
        import os

        from providers import build_providers
        from receiver.config import parse
        os.environ["PR_TOKEN"] = TOKEN
        os.environ.setdefault("PR_HOOK", SECRET)
        os.environ.setdefault("PR_HOOK_PAIR", f"{HOOK_USER}:{SECRET}")
        repo = parse({"repositories": [self.repo_config]}).repositories[0]
        found = build_providers()[self.kit.provider].git_authorization(repo)
        assert found is not None
        return found

    def close(self) -> None:
        self.svc.stop()
        self.cp.close()
        self.api.close()
        self.server.close()

    # --- git ---------------------------------------------------------------------------

    def commit(self, changes: dict[str, str], message: str = "change") -> str:
        made = self.work.commit(changes, message)
        self.commits.append(made)
        return made

    def publish_request(self, number: int, head: str) -> None:
        """The provider's refs of a request whose head is ``head``: its source branch and
        the ref that holds it in the target repository."""
        self.work.git("push", "--quiet", "--force", "origin",
                      f"{head}:refs/heads/{self.kit.source}")
        self.work.git("push", "--quiet", "--force", "origin",
                      f"{head}:{self.kit.source_ref(number)}")

    # --- deliveries --------------------------------------------------------------------

    def deliver(self, body: bytes, delivery_id: str,
                headers: dict[str, str] | None = None) -> requests.Response:
        sent = headers if headers is not None else self.kit.headers(body, delivery_id)
        return requests.post(f"{self.svc.url}/webhooks/{self.kit.provider}", data=body,
                             headers=sent, timeout=10)

    def open(self, pr: PR, delivery_id: str | None = None) -> tuple[requests.Response, str]:
        """Deliver the kit's opened event for ``pr``; the answer and the delivery id."""
        delivery_id = delivery_id or (pr.event_id if self.kit.provider == "azure-devops"
                                      else str(uuid.uuid4()))
        if self.kit.provider == "azure-devops":
            pr.event_id = delivery_id
        return self.deliver(self.kit.body(pr), delivery_id), delivery_id

    def wait_line(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        lines = self.svc.wait_for(lambda ls: any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in ls), timeout=timeout)
        return next(e for e in lines if e.get("event") == event
                    and all(e.get(k) == v for k, v in fields.items()))

    # --- what came out ------------------------------------------------------------------

    def starts(self) -> list[tuple[str, str, list[dict[str, str]]]]:
        """(pipeline, execution id, sourceRevisions) of every StartPipelineExecution."""
        with self.cp.lock:
            calls = list(self.cp.calls)
        return [(p["name"], self.cp.tokens.get(p.get("clientRequestToken", ""), ""),
                 p.get("sourceRevisions", [])) for op, p in calls
                if op == "StartPipelineExecution"]

    def started_at(self, head: str) -> list[str]:
        return sorted({name for name, _, revisions in self.starts()
                       if any(r["revisionValue"] == head for r in revisions)})

    def statuses(self, commit: str) -> dict[str, list[str]]:
        """The states written on ``commit``, by status name, in order."""
        out: dict[str, list[str]] = {}
        for rec in list(self.api.requests):
            found = self.kit.status(rec)
            if found is not None and found[0] == commit:
                out.setdefault(found[1], []).append(found[2])
        return out

    def descriptions(self, commit: str, name: str) -> list[str]:
        return [json.loads(r.body).get("description", "") for r in list(self.api.requests)
                if (s := self.kit.status(r)) is not None and s[0] == commit and s[1] == name]

    def wait_statuses(self, commit: str, expected: dict[str, list[str]],
                      timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.statuses(commit)
            if all(got.get(name, [])[-len(states):] == states and got.get(name, [])
                   for name, states in expected.items()):
                return
            assert time.monotonic() < deadline, (expected, got)
            time.sleep(0.1)

    def finish(self, pipeline: str, head: str, status: str) -> None:
        """The execution of ``pipeline`` at ``head`` ends ``status`` (an EventBridge event,
        AWS's published sample)."""
        (execution_id,) = {self.cp.tokens[p["clientRequestToken"]] for op, p in self.cp.calls
                           if op == "StartPipelineExecution" and p["name"] == pipeline
                           and any(r["revisionValue"] == head
                                   for r in p.get("sourceRevisions", []))}
        self.cp.set_status(execution_id, status)
        answer = requests.post(self.svc.url + "/events/codepipeline", timeout=10,
                               headers={"Content-Type": "application/json",
                                        "x-api-key": EVENTS_KEY},
                               data=aws_event(pipeline, execution_id, status.upper()))
        assert answer.status_code == 202, answer.text


class _Echo(dict[str, Any]):
    """Every status write is answered 201 with what was written (the shape the providers
    document: the status object); Bitbucket Cloud's commit lookup by an abbreviated hash
    with its published answer (jenkins-api-commit-174561d625c9.json) naming the test's
    commit; anything else 404."""

    def __init__(self, commits: list[str]) -> None:
        super().__init__()
        self.commits = commits

    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if any(part in path for part in ("/statuses", "/builds")):
            return lambda rec: (201, json.loads(rec.body), {})
        if path.startswith("/2.0/repositories/") and "/commit/" in path:
            return self._commit
        return default

    def _commit(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        short = rec.path.rsplit("/", 1)[1]
        found = [c for c in self.commits if c.startswith(short)]
        if len(found) != 1:
            return 404, {"type": "error", "error": {"message": f"Commit not found: {short}"}}, {}
        doc = json.loads(fixture_bytes(
            "bitbucket-cloud/pull-requests/jenkins-api-commit-174561d625c9.json"))
        doc["hash"] = found[0]
        return 200, doc, {}


@contextmanager
def running(kit: Kit, tmp_path: Path, **options: Any) -> Iterator[Rig]:
    rig = Rig(kit, tmp_path, **options)
    try:
        yield rig
    finally:
        rig.close()

"""Reconciler end to end, for each provider: pushes made while the service was down are
caught up from the branch heads, once, and their late webhooks start nothing more.

The service runs under gunicorn (``webhook-receiver serve``, SQLite state, the ``log``
launcher). Each provider's API is a FakeAPI over one tests.gitmodel.GitModel history: its
compare resources (the same shapes as the per-provider e2e suites) and its branch resource,
whose head the test moves without sending a delivery. What happened is read back from the
JSON log lines and ``webhook-receiver history``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from receiver.reconcile import delivery_id as reconcile_id
from tests.gitmodel import GitModel
from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

SECRET = "reconcile-e2e-hook-secret-3c9d"
TOKEN = "reconcile-e2e-api-token-81f2"
PIPELINES = [{"name": f"{m}-deploy", "paths": [f"{m}/**"]} for m in ("alpha", "beta", "gamma")]
Answer = tuple[int, Any, dict[str, str]]


class Routes(dict[str, Any]):
    """FakeAPI routes resolved by one function of the whole path (prefix routes)."""

    def __init__(self, route: Callable[[Recorded], Answer | None]) -> None:
        super().__init__()
        self.route = route

    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        return lambda rec: self.route(rec) or (404, {"message": "Not Found"}, {})


class World:
    """One provider's API over a Git model, and the signed deliveries that go with it."""

    provider = ""
    repository = ""
    branch = ""

    def __init__(self, api: FakeAPI) -> None:
        self.api = api
        self.git = GitModel()
        self.root = self.git.commit(None, {"alpha/a.py": "0", "beta/b.py": "0",
                                           "gamma/g.py": "0"})
        self.heads: dict[str, str] = {self.branch: self.root}
        self.rate_headers: dict[str, str] = {}
        self.answers: list[tuple[Recorded, int]] = []  # every branch read and its status
        api.routes = Routes(self.route)

    def push(self, changes: dict[str, str]) -> tuple[str, str]:
        """A commit on the branch head, which moves there (no delivery is sent)."""
        before = self.heads[self.branch]
        after = self.git.commit(before, changes)
        self.heads[self.branch] = after
        return before, after

    def repository_config(self, reconcile_seconds: float) -> dict[str, Any]:
        return {"provider": self.provider, "name": self.repository, "api_url": self.api.url,
                "webhook_secrets": ["env:RECONCILE_SECRET"], "api_token": "env:RECONCILE_TOKEN",
                "branches": [self.branch], "pipelines": PIPELINES,
                "reconcile_seconds": reconcile_seconds}

    def route(self, rec: Recorded) -> Answer | None:
        raise NotImplementedError

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        raise NotImplementedError

    def branch_read(self, rec: Recorded, name: str, found: Callable[[str], Any],
                    missing: Any) -> Answer:
        """Answer one branch read (recorded with its status in ``answers``)."""
        sha = self.heads.get(name)
        answer: Answer = (404, missing, {}) if sha is None else (200, found(sha), {})
        self.answers.append((rec, answer[0]))
        return answer[0], answer[1], {**answer[2], **self.rate_headers}

    def commits_between(self, since: str, until: str) -> list[str]:
        """``git log since..until``, newest first."""
        new = self.git.ancestors(until) - self.git.ancestors(since)
        return [c for c in reversed(self.git.commits) if c in new]

    def known(self, *shas: str) -> bool:
        return all(s in self.git.commits for s in shas)


class GitHub(World):
    provider, repository, branch = "github", "binkkatal/sample_app", "master"

    def route(self, rec: Recorded) -> Answer | None:
        prefix = f"/repos/{self.repository}/"
        if rec.path.startswith(prefix + "compare/"):
            base, _, head = rec.path.rsplit("/", 1)[1].partition("...")
            if not self.known(base, head):
                return 404, {"message": "Not Found"}, {}
            return 200, self.git.github_compare(base, head), {}
        if rec.path.startswith(prefix + "branches/"):
            name = unquote(rec.path.removeprefix(prefix + "branches/"))
            sha = self.heads.get(name)
            if sha is not None and rec.headers.get("if-none-match") == f'"{sha}"':
                self.answers.append((rec, 304))
                return 304, None, {"ETag": f'"{sha}"', **self.rate_headers}
            status, body, headers = self.branch_read(
                rec, name, lambda s: {"name": name, "commit": {"sha": s}},
                {"message": "Branch not found"})
            return status, body, {**headers, **({"ETag": f'"{sha}"'} if sha else {})}
        return None

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        doc = json.loads(fixture_bytes("github/go-playground-push.json"))
        doc.update(ref=f"refs/heads/{self.branch}", before=before, after=after)
        body = json.dumps(doc).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(svc.url + "/webhooks/github", data=body, timeout=10, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256": sig}).status_code


class GitLab(World):
    provider, repository, branch = "gitlab", "mike/diaspora", "master"

    def route(self, rec: Recorded) -> Answer | None:
        prefix = "/api/v4/projects/mike%2Fdiaspora/repository/"
        q = {k: v[0] for k, v in rec.query.items()}
        if rec.path == prefix + "compare":
            base, head = q.get("from", ""), q.get("to", "")
            if not self.known(base, head):
                return 404, {"message": "404 Ref Not Found"}, {}
            commits = [{"id": c, "parent_ids": list(self.git.commits[c].parents)}
                       for c in self.commits_between(base, head)]
            diffs = [{"old_path": p, "new_path": p, "new_file": False, "renamed_file": False,
                      "deleted_file": False, "diff": ""}
                     for p in sorted(self.git.tree_diff(base, head))]
            return 200, {"commits": commits, "diffs": diffs, "compare_timeout": False,
                         "compare_same_ref": base == head}, {}
        if rec.path.startswith(prefix + "commits/"):
            sha = rec.path.rsplit("/", 1)[1]
            return (200, {"id": sha}, {}) if self.known(sha) else None
        if rec.path.startswith(prefix + "branches/"):
            name = unquote(rec.path.removeprefix(prefix + "branches/"))
            return self.branch_read(rec, name, lambda s: {"name": name, "commit": {"id": s}},
                                    {"message": "404 Branch Not Found"})
        return None

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        doc = json.loads(fixture_bytes("gitlab/go-gitlab-webhooks-push.json"))
        doc.update(ref=f"refs/heads/{self.branch}", before=before, after=after,
                   checkout_sha=after)
        return requests.post(svc.url + "/webhooks/gitlab", data=json.dumps(doc).encode(),
                             timeout=10, headers={
                                 "Content-Type": "application/json",
                                 "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET,
                                 "Idempotency-Key": delivery_id}).status_code


class Bitbucket(World):
    provider, repository, branch = "bitbucket", "cloudbeers/temp", "main"

    def route(self, rec: Recorded) -> Answer | None:
        prefix = f"/2.0/repositories/{self.repository}/"
        q = {k: v[0] for k, v in rec.query.items()}
        if rec.path == prefix + "commits":
            if not self.known(q["include"], q["exclude"]):
                return 404, {"type": "error", "error": {"message": "Commit not found"}}, {}
            values = [{"hash": c, "parents": [{"hash": p} for p in self.git.commits[c].parents]}
                      for c in self.commits_between(q["exclude"], q["include"])]
            return 200, {"values": values, "pagelen": int(q["pagelen"])}, {}
        if rec.path.startswith(prefix + "diffstat/"):
            head, _, base = rec.path.rsplit("/", 1)[1].partition("..")
            if not self.known(base, head):
                return None
            old, new = self.git.commits[base].tree, self.git.commits[head].tree
            values = [{"type": "diffstat", "status": "modified",
                       "old": {"path": p} if p in old else None,
                       "new": {"path": p} if p in new else None}
                      for p in sorted(self.git.tree_diff(base, head))]
            return 200, {"values": values, "pagelen": 500, "size": len(values), "page": 1}, {}
        if rec.path.startswith(prefix + "refs/branches/"):
            name = unquote(rec.path.removeprefix(prefix + "refs/branches/"))
            return self.branch_read(
                rec, name, lambda s: {"type": "branch", "name": name,
                                      "target": {"type": "commit", "hash": s}},
                {"type": "error", "error": {"message": f"Branch {name!r} not found"}})
        return None

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        doc = json.loads(fixture_bytes("bitbucket-cloud/jenkins-cloud-push-updatePayload.json"))
        change = doc["push"]["changes"][0]
        change["old"]["target"]["hash"] = before
        change["new"]["target"]["hash"] = after
        body = json.dumps(doc).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(svc.url + "/webhooks/bitbucket", data=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Event-Key": "repo:push",
            "X-Request-UUID": delivery_id, "X-Hook-UUID": "{7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d}",
            "X-Attempt-Number": "1", "X-Hub-Signature": sig}).status_code


class BitbucketServer(World):
    provider, repository, branch = "bitbucket-server", "AMUNIZ/test-repos", "main"

    def __init__(self, api: FakeAPI) -> None:
        super().__init__(api)
        # filterText=main also lists this one: only the exact displayId is the branch
        self.heads["maintenance"] = self.git.commit(self.root, {"alpha/a.py": "other"})

    def route(self, rec: Recorded) -> Answer | None:
        q = {k: v[0] for k, v in rec.query.items()}
        if rec.path == "/rest/api/1.0/projects/AMUNIZ/repos/test-repos/commits":
            if not self.known(q["since"], q["until"]):
                return 404, {"errors": [{"message": "commit does not exist"}]}, {}
            values = [{"id": c, "parents": [{"id": p} for p in self.git.commits[c].parents]}
                      for c in self.commits_between(q["since"], q["until"])]
            return 200, {"values": values, "size": len(values), "isLastPage": True,
                         "start": 0, "limit": int(q["limit"]), "nextPageStart": None}, {}
        if rec.path == "/rest/api/1.0/projects/AMUNIZ/repos/test-repos/changes":
            if not self.known(q["since"], q["until"]):
                return 404, {"errors": [{"message": "commit does not exist"}]}, {}
            values = [{"path": {"components": p.split("/"), "toString": p}, "type": "MODIFY",
                       "nodeType": "FILE"} for p in sorted(self.git.tree_diff(q["since"],
                                                                              q["until"]))]
            return 200, {"values": values, "size": len(values), "isLastPage": True,
                         "start": 0, "limit": 1000, "nextPageStart": None}, {}
        if rec.path == "/rest/api/latest/projects/AMUNIZ/repos/test-repos/branches":
            text = q.get("filterText", "")
            values = [{"id": f"refs/heads/{b}", "displayId": b, "type": "BRANCH",
                       "latestCommit": sha, "latestChangeset": sha, "isDefault": b == "main"}
                      for b, sha in sorted(self.heads.items(), reverse=True) if text in b]
            self.answers.append((rec, 200))
            return 200, {"size": len(values), "limit": 100, "isLastPage": True,
                         "values": values, "start": 0}, self.rate_headers
        return None

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        doc = json.loads(fixture_bytes("bitbucket-server/jenkins-server-pushPayload.json"))
        doc["changes"][0].update(fromHash=before, toHash=after)
        body = json.dumps(doc).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(svc.url + "/webhooks/bitbucket-server", data=body, timeout=10,
                             headers={"Content-Type": "application/json; charset=UTF-8",
                                      "X-Event-Key": "repo:refs_changed",
                                      "X-Request-Id": delivery_id,
                                      "X-Hub-Signature": sig}).status_code


class Gitea(World):
    provider, repository, branch = "gitea", "gordon/hello-world", "main"

    def __init__(self, api: FakeAPI) -> None:
        super().__init__(api)
        from tests.gitea_api import GiteaAPI

        self.gitea = GiteaAPI(api, self.repository, TOKEN, git=self.git)
        api.routes = Routes(self.route)  # branch reads are answered (and counted) here

    def route(self, rec: Recorded) -> Answer | None:
        prefix = f"/api/v1/repos/{self.repository}/branches/"
        if rec.path.startswith(prefix):
            name = unquote(rec.path.removeprefix(prefix))
            return self.branch_read(
                rec, name, lambda s: {"name": name, "commit": {"id": s}},
                {"message": "The target couldn't be found.", "url": "",
                 "errors": [f"branch does not exist [name: {name}]"]})
        return self.gitea.route(rec)

    def repository_config(self, reconcile_seconds: float) -> dict[str, Any]:
        return {**super().repository_config(reconcile_seconds),
                "api_url": self.api.url + "/api/v1"}

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        doc = json.loads(fixture_bytes("gitea/woodpecker-gitea-HookPush.json"))
        doc.update(ref=f"refs/heads/{self.branch}", before=before, after=after)
        body = json.dumps(doc).encode()
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(svc.url + "/webhooks/gitea", data=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Gitea-Event": "push",
            "X-Gitea-Delivery": delivery_id, "X-Gitea-Signature": sig}).status_code


class AzureDevOps(World):
    provider, repository, branch = "azure-devops", "fabrikam/Fabrikam Fiber/mono", "main"

    def __init__(self, api: FakeAPI) -> None:
        super().__init__(api)
        from tests.azure_devops_api import AzureDevOpsAPI

        self.azure = AzureDevOpsAPI(api, self.repository, TOKEN, git=self.git)
        api.routes = Routes(self.route)  # branch reads are answered (and counted) here

    def repository_config(self, reconcile_seconds: float) -> dict[str, Any]:
        # its webhook secret is the service hook's user:password
        return {**super().repository_config(reconcile_seconds),
                "webhook_secrets": ["env:RECONCILE_AZURE_HOOK"]}

    def route(self, rec: Recorded) -> Answer | None:
        if rec.path == f"{self.azure.root}/refs":
            name = rec.query["filter"][0].removeprefix("heads/")
            return self.branch_read(
                rec, name, lambda s: {"value": [{"name": f"refs/heads/{name}", "objectId": s}],
                                      "count": 1},
                {"value": [], "count": 0})
        return self.azure.route(rec)

    def branch_read(self, rec: Recorded, name: str, found: Callable[[str], Any],
                    missing: Any) -> Answer:
        # a missing ref is an empty list (200), not a 404
        _status, body, headers = super().branch_read(rec, name, found, missing)
        return 200, body, headers

    def deliver(self, svc: Service, before: str, after: str, delivery_id: str) -> int:
        doc = json.loads(fixture_bytes("azure-devops/go-scm-push.json"))
        doc["id"] = delivery_id
        doc["resource"]["refUpdates"] = [{"name": f"refs/heads/{self.branch}",
                                          "oldObjectId": before, "newObjectId": after}]
        repo = doc["resource"]["repository"]
        repo.update(name="mono", remoteUrl="https://dev.azure.com/fabrikam/Fabrikam%20Fiber/"
                    "_git/mono")
        repo["project"]["name"] = "Fabrikam Fiber"
        pair = base64.b64encode(f"hook:{SECRET}".encode()).decode()
        return requests.post(svc.url + "/webhooks/azure-devops", data=json.dumps(doc).encode(),
                             timeout=10, headers={"Content-Type": "application/json",
                                                  "Authorization": f"Basic {pair}"}).status_code


WORLDS: list[type[World]] = [GitHub, GitLab, Bitbucket, BitbucketServer, Gitea, AzureDevOps]
ENV = {"RECONCILE_SECRET": SECRET, "RECONCILE_TOKEN": TOKEN,
       "RECONCILE_AZURE_HOOK": f"hook:{SECRET}"}


def service(tmp_path: Path, world: World, name: str, reconcile_seconds: float,
            **repository: Any) -> Service:
    config = {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"poll_seconds": 0.3},
        "repositories": [{**world.repository_config(reconcile_seconds), **repository}],
    }
    return Service(config, tmp_path, env=ENV, name=name)


def started(*services: Service) -> list[tuple[str, str]]:
    return sorted((e["pipeline"], e["commit"]) for s in services
                  for e in s.events("pipeline.started"))


def passes_after(svc: Service, count: int, after: float) -> None:
    """Wait until ``count`` reconcile passes began after ``after`` (time.time())."""
    def enough(lines: list[dict[str, Any]]) -> bool:
        return sum(e.get("event") == "reconcile.pass" and _ts(e) > after for e in lines) >= count
    svc.wait_for(enough, timeout=30)


def _ts(line: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00")).timestamp()


@pytest.fixture
def world(request: pytest.FixtureRequest, fake_api: FakeAPI) -> World:
    cls: type[World] = request.param
    return cls(fake_api)


@pytest.mark.parametrize("world", WORLDS, ids=[w.provider for w in WORLDS], indirect=True)
def test_pushes_made_while_the_service_was_down_start_the_changed_pipelines_once(
        tmp_path: Path, world: World) -> None:
    # a first push, delivered as usual while the reconciler is off: the head becomes known
    first = service(tmp_path, world, "before", 0).start()
    try:
        root, c1 = world.push({"alpha/a.py": "1"})
        assert world.deliver(first, root, c1, "{11111111-0000-4000-8000-000000000001}") == 202
        first.processed("{11111111-0000-4000-8000-000000000001}")
    finally:
        first.stop()
    assert started(first) == [("alpha-deploy", c1)]
    assert not world.answers  # reconcile_seconds 0: no branch was read

    # three pushes while the service is down: the branch head moves, no delivery is sent
    pushes = [world.push({"beta/b.py": "2"}), world.push({"beta/b.py": "3"}),
              world.push({"gamma/g.py": "4"})]
    head = pushes[-1][1]
    svc = service(tmp_path, world, "after", 1).start()
    try:
        caught_up = reconcile_id(world.provider, world.repository, world.branch, head)
        done = svc.processed(caught_up)
        assert sorted(done["pipelines_started"]) == ["beta-deploy", "gamma-deploy"]
        assert started(svc) == [("beta-deploy", head), ("gamma-deploy", head)]
        # recorded by the pass at start-up or the next one: within two intervals
        lines = svc.logs()
        recorded = [e for e in lines if e.get("event") == "reconcile.recorded"]
        assert [(e["branch"], e["head"], e["previous"]) for e in recorded] == \
            [(world.branch, head, c1)]
        # recorded by the pass at start-up or the next one (a pass logs when it ends)
        before = lines[:lines.index(recorded[0])]
        assert sum(e.get("event") == "reconcile.pass" for e in before) <= 1
        missed = svc.events("reconcile.missed")
        assert [(e["branch"], e["head"], e["previous"], e["delivery_id"], e["provider"],
                 e["repository"], e["MissedPushes"]) for e in missed] == \
            [(world.branch, head, c1, caught_up, world.provider, world.repository, 1)]

        # the late webhooks of the three pushes: nothing new starts
        late = [f"{{22222222-0000-4000-8000-00000000000{i}}}" for i in range(3)]
        for delivery, (before, after) in zip(late, pushes, strict=True):
            assert world.deliver(svc, before, after, delivery) == 202
        for delivery in late:
            assert svc.processed(delivery)["pipelines_started"] == []
        passes_after(svc, 2, time.time())
        assert started(svc) == [("beta-deploy", head), ("gamma-deploy", head)]
        assert len(svc.events("reconcile.recorded")) == 1
        assert len(svc.events("reconcile.missed")) == 1
        assert svc.events("reconcile.failed") == []

        shown = svc.cli("history", "--delivery", caught_up)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0].split()[1:3] == ["reconciler", caught_up]
    finally:
        svc.stop()


@pytest.mark.parametrize("world", [GitHub], ids=["github"], indirect=True)
def test_an_unchanged_github_head_costs_a_conditional_request_answered_304(
        tmp_path: Path, world: World) -> None:
    svc = service(tmp_path, world, "svc", 1).start()
    try:
        # the pass at start-up adopts the head (unconditional: nothing known yet)
        svc.wait_for(lambda ls: any(e.get("event") == "reconcile.adopted" for e in ls))
        passes_after(svc, 3, time.time())
    finally:
        svc.stop()
    reads = [(rec.headers.get("if-none-match"), status) for rec, status in world.answers]
    assert reads[0] == (None, 200)
    assert len(reads) >= 3
    # every later read sends the ETag the first answered, and is answered 304
    assert set(reads[1:]) == {(f'"{world.root}"', 304)}
    assert svc.events("reconcile.recorded") == []


@pytest.mark.parametrize("world", [GitHub], ids=["github"], indirect=True)
def test_a_github_rate_limit_near_zero_skips_the_rest_of_the_repository(
        tmp_path: Path, world: World) -> None:
    world.heads["release"] = world.root
    reset = int(time.time()) + 1800
    world.rate_headers = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "1",
                          "X-RateLimit-Reset": str(reset)}
    svc = service(tmp_path, world, "svc", 1, branches=["master", "release"]).start()
    try:
        limited = svc.wait_for(lambda ls: any(e.get("event") == "reconcile.rate_limited"
                                              for e in ls))
    finally:
        svc.stop()
    line = next(e for e in limited if e.get("event") == "reconcile.rate_limited")
    assert (line["remaining"], line["limit"], line["reset_at"], line["skipped"]) == \
        (1, 5000, reset, ["release"])
    # branches are read in name order: 'master' was read, 'release' never
    paths = {rec.path.rsplit("/", 1)[1] for rec, _ in world.answers}
    assert paths == {"master"}


def test_branch_reads_send_the_configured_token_and_never_log_it(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    world = GitLab(fake_api)
    svc = service(tmp_path, world, "svc", 1).start()
    try:
        svc.wait_for(lambda ls: any(e.get("event") == "reconcile.adopted" for e in ls))
    finally:
        svc.stop()
    assert world.answers
    assert {rec.headers.get("authorization") for rec, _ in world.answers} == \
        {f"Bearer {TOKEN}"}
    assert TOKEN not in svc.log_path.read_text()

"""A stand-in for the Gitea / Forgejo REST API (``/api/v1``) over a tests.gitmodel history.

It speaks the shapes of Gitea's own ``modules/structs`` and ``routers/api/v1/repo``, its
answers built from recorded samples (tests/fixtures/gitea, see tests/fixtures/README.md):

- ``GET /repos/{o}/{r}``: go-scm's ``repo.json``.
- ``GET /repos/{o}/{r}/git/commits/{sha}``: one commit, 404 for an unknown sha.
- ``GET /repos/{o}/{r}/commits?sha=&not=&files=&page=&limit=``: ``git log sha ^not``,
  newest first, each entry go-scm's ``commits.json`` commit with ``files``
  (``CommitAffectedFiles``: ``filename``, ``status``), the commit's change against its
  first parent. ``limit`` is clamped to ``max_limit`` (Gitea's ``MAX_RESPONSE_ITEMS``,
  default 50); the answer carries ``X-Total-Count``, ``X-HasMore``, ``X-PerPage``,
  ``X-PageCount`` and a ``Link`` header, as ``GetAllCommits`` sets them. An unknown ``sha``
  is 404, an unknown ``not`` a 500 (git rev-list fails), as in Gitea.
- ``GET /repos/{o}/{r}/branches/{b}``: go-scm's ``branch.json`` with ``commit.id``; a
  missing branch 404 ``errors: ["branch does not exist [name: b]"]``.
- ``POST /repos/{o}/{r}/statuses/{sha}``: 201 with go-scm's ``status.json``.
- ``GET /repos/{o}/{r}/raw/{path}?ref=``: the file's bytes, 404 when absent.

Every request must carry ``Authorization: token <token>`` (else 401).
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import unquote

from tests.gitmodel import GitModel
from tests.harness import FakeAPI, Recorded, fixture_bytes
from tests.test_reconcile_e2e import Answer, Routes

NOT_FOUND = {"message": "The target couldn't be found.", "url": "https://gitea.example/api/swagger",
             "errors": None}


class GiteaAPI:
    """The API of one repository ``name`` (``owner/repo``) over ``git``."""

    def __init__(self, api: FakeAPI, name: str, token: str, git: GitModel | None = None,
                 max_limit: int = 50) -> None:
        self.api = api
        self.name = name
        self.token = token
        self.git = git or GitModel()
        self.max_limit = max_limit
        self.heads: dict[str, str] = {}
        self.statuses: list[dict[str, Any]] = []
        self.readable = True  # False: the repository answers 404 (the token cannot see it)
        self.honour_not = True  # False: a Gitea before 1.20, which ignores `not`
        self.template = json.loads(fixture_bytes("gitea/go-scm-api-commits.json"))[0]
        api.routes = Routes(self.route)

    @property
    def root(self) -> str:
        return f"/api/v1/repos/{self.name}"

    def route(self, rec: Recorded) -> Answer | None:
        if rec.headers.get("authorization") != f"token {self.token}":
            return 401, {"message": "token is required", "url": ""}, {}
        if not self.readable or not rec.path.startswith(self.root):
            return 404, NOT_FOUND, {}
        tail = rec.path[len(self.root):]
        q = {k: v[0] for k, v in rec.query.items()}
        if tail == "":
            return 200, json.loads(fixture_bytes("gitea/go-scm-api-repo.json")), {}
        if tail.startswith("/git/commits/"):
            sha = tail.rsplit("/", 1)[1]
            if sha not in self.git.commits:
                return 404, {**NOT_FOUND, "errors": [f"object does not exist [id: {sha}]"]}, {}
            return 200, self.commit_json(sha), {}
        if tail == "/commits":
            return self.commits(q)
        if tail.startswith("/branches/"):
            branch = unquote(tail.removeprefix("/branches/"))
            sha = self.heads.get(branch)
            if sha is None:
                return 404, {**NOT_FOUND,
                             "errors": [f"branch does not exist [name: {branch}]"]}, {}
            body = json.loads(fixture_bytes("gitea/go-scm-api-branch.json"))
            body["name"] = branch
            body["commit"]["id"] = sha
            return 200, body, {}
        if tail.startswith("/statuses/") and rec.method == "POST":
            self.statuses.append({"sha": tail.rsplit("/", 1)[1], **json.loads(rec.body)})
            return 201, json.loads(fixture_bytes("gitea/go-scm-api-status.json")), {}
        if tail.startswith("/raw/"):
            path = unquote(tail.removeprefix("/raw/"))
            commit = self.git.commits.get(q.get("ref", ""))
            if commit is None or path not in commit.tree:
                return 404, NOT_FOUND, {}
            return 200, commit.tree[path].encode(), {}
        return None

    # --- the shapes -----------------------------------------------------------------------

    def files(self, sha: str) -> list[dict[str, str]]:
        """``CommitAffectedFiles`` of ``sha`` against its first parent (all for a root)."""
        commit = self.git.commits[sha]
        parent = self.git.commits[commit.parents[0]].tree if commit.parents else {}
        out = []
        for path in sorted(set(parent) | set(commit.tree)):
            if parent.get(path) == commit.tree.get(path):
                continue
            status = ("added" if path not in parent else
                      "removed" if path not in commit.tree else "modified")
            out.append({"filename": path, "status": status})
        return out

    def commit_json(self, sha: str, files: bool = True) -> dict[str, Any]:
        """go-scm's recorded commit, pointed at ``sha`` and its parents."""
        body = copy.deepcopy(self.template)
        api = f"https://gitea.example/api/v1/repos/{self.name}/git/commits"
        body.update(sha=sha, url=f"{api}/{sha}",
                    html_url=f"https://gitea.example/{self.name}/commits/{sha}",
                    parents=[{"url": f"{api}/{p}", "sha": p}
                             for p in self.git.commits[sha].parents])
        if files:
            body["files"] = self.files(sha)
        return body

    def log(self, include: str, exclude: str) -> list[str]:
        """``git log include ^exclude``, newest first."""
        new = self.git.ancestors(include) - self.git.ancestors(exclude)
        return [c for c in reversed(self.git.commits) if c in new]

    def commits(self, q: dict[str, str]) -> Answer:
        include, exclude = q.get("sha", ""), q.get("not", "")
        if include not in self.git.commits:
            return 404, {**NOT_FOUND, "errors": [f"object does not exist [id: {include}]"]}, {}
        if exclude and exclude not in self.git.commits:
            return 500, {"message": "exit status 128 - fatal: bad revision", "url": ""}, {}
        listed = self.log(include, exclude) if exclude and self.honour_not else \
            [c for c in reversed(self.git.commits) if c in self.git.ancestors(include)]
        page = max(1, int(q.get("page") or 1))
        asked = int(q.get("limit") or 30)
        limit = min(asked if asked > 0 else 30, self.max_limit)
        total = len(listed)
        pages = -(-total // limit)
        chosen = listed[(page - 1) * limit:page * limit]
        files = q.get("files", "true") != "false"
        headers = {"X-Total-Count": str(total), "X-Page": str(page), "X-PerPage": str(limit),
                   "X-Total": str(total), "X-PageCount": str(pages),
                   "X-HasMore": "true" if page < pages else "false"}
        link = f"<{self.api.url}{self.root}/commits?page={{}}&limit={limit}>; rel=\"{{}}\""
        rels = [link.format(page + 1, "next")] if page < pages else []
        rels.append(link.format(pages, "last"))
        headers["Link"] = ", ".join(rels)
        return 200, [self.commit_json(c, files) for c in chosen], headers

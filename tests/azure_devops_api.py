"""A stand-in for the Azure DevOps Git REST API over a tests.gitmodel history.

Answers are shaped like Microsoft's published examples (MicrosoftDocs/vsts-rest-api-specs,
``specification/git/7.1/httpExamples``, copied to tests/fixtures/azure-devops/):

- ``GET {org}/{project}/_apis/git/repositories/{repo}``: ``ms-api-repository.json``.
- ``GET …/diffs/commits?baseVersion=&targetVersion=&diffCommonCommit=&$top=&$skip=``:
  ``GitCommitDiffs`` as in ``ms-api-diffs-commits.json``: ``changes`` sorted by path, every
  changed file with its parent folders as ``isFolder`` tree entries (the example lists
  them), ``changeCounts`` by change type over all of them, ``aheadCount``/``behindCount``,
  ``commonCommit``/``baseCommit``/``targetCommit``. ``$top`` defaults to 100; a page holds
  at most ``max_top`` changes whatever ``$top`` asks. An unknown commit answers 404.
- ``GET …/refs?filter=heads/…&$top=&continuationToken=``: ``ms-api-refs-heads.json``'s
  shape, names starting with ``refs/{filter}`` (in the order they were created), pages
  linked by ``x-ms-continuationtoken``.
- ``POST …/commits/{sha}/statuses``: 201 with ``ms-api-statuses-post.json``'s answer.
- ``GET …/items?path=&versionDescriptor.version=``: the file's bytes, 404 when absent.

Every request must carry the PAT as ``Authorization: Basic base64(":PAT")``; anything else
answers 401, or 203 with an HTML sign-in page when ``sign_in_page`` is set.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from tests.gitmodel import GitModel
from tests.harness import FakeAPI, Recorded, fixture_bytes
from tests.test_reconcile_e2e import Answer, Routes


def example(name: str) -> Any:
    """The 200/201 body of one of Microsoft's recorded examples."""
    doc = json.loads(fixture_bytes(f"azure-devops/{name}"))
    return next(iter(doc["responses"].values()))["body"]


class AzureDevOpsAPI:
    """The API of one repository ``organization/project/repository``."""

    def __init__(self, api: FakeAPI, name: str, token: str, git: GitModel | None = None,
                 max_top: int = 100) -> None:
        self.api = api
        self.name = name
        self.token = token
        self.git = git or GitModel()
        self.max_top = max_top
        self.heads: dict[str, str] = {}
        self.statuses: list[dict[str, Any]] = []
        self.readable = True
        self.sign_in_page = False
        self.counts = True  # False: answers without changeCounts
        org, project, repo = name.split("/")
        self.root = (f"/{quote(org, safe='')}/{quote(project, safe='')}"
                     f"/_apis/git/repositories/{quote(repo, safe='')}")
        api.routes = Routes(self.route)

    def authorization(self) -> str:
        return "Basic " + base64.b64encode(f":{self.token}".encode()).decode()

    def route(self, rec: Recorded) -> Answer | None:
        if rec.headers.get("authorization") != self.authorization():
            if self.sign_in_page:
                return 203, b"<html><title>Azure DevOps Services | Sign In</title></html>", {}
            return 401, {"message": "TF400813: The user is not authorized"}, {}
        if not self.readable or not rec.path.startswith(self.root):
            return 404, {"message": "TF401019: The Git repository does not exist or you do "
                                    "not have permissions"}, {}
        tail = rec.path[len(self.root):]
        q = {k: v[0] for k, v in rec.query.items()}
        if tail == "":
            return 200, example("ms-api-repository.json"), {}
        if tail == "/diffs/commits":
            return self.diffs(q)
        if tail == "/refs":
            return self.refs(q)
        if tail.startswith("/commits/") and tail.endswith("/statuses") and rec.method == "POST":
            self.statuses.append({"sha": tail.split("/")[2], **json.loads(rec.body)})
            return 201, example("ms-api-statuses-post.json"), {}
        if tail == "/items":
            commit = self.git.commits.get(q.get("versionDescriptor.version", ""))
            path = q.get("path", "").lstrip("/")
            if commit is None or path not in commit.tree:
                return 404, {"message": "TF401174: The item could not be found"}, {}
            return 200, commit.tree[path].encode(), {}
        return None

    # --- the shapes -----------------------------------------------------------------------

    def changes(self, base: str, target: str) -> list[dict[str, Any]]:
        """Every change of the tree difference, with the folders above each changed file."""
        old, new = self.git.commits[base].tree, self.git.commits[target].tree
        kinds: dict[str, tuple[str, bool]] = {}
        for path in self.git.tree_diff(base, target):
            kind = "add" if path not in old else "delete" if path not in new else "edit"
            kinds[path] = (kind, False)
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = "/".join(parts[:i])
                existed = any(p.startswith(folder + "/") for p in old)
                kinds.setdefault(folder, ("edit" if existed else "add", True))
        url = f"https://dev.azure.com{self.root}/items"
        out = []
        for path in sorted(kinds):
            kind, folder = kinds[path]
            item: dict[str, Any] = {"gitObjectType": "tree" if folder else "blob",
                                    "commitId": target, "path": "/" + path,
                                    "url": f"{url}/{path}?versionType=Commit&version={target}"}
            if folder:
                item["isFolder"] = True
            out.append({"item": item, "changeType": kind})
        return out

    def diffs(self, q: dict[str, str]) -> Answer:
        base, target = q.get("baseVersion", ""), q.get("targetVersion", "")
        if base not in self.git.commits or target not in self.git.commits:
            return 404, {"message": "TF401175: The version descriptor could not be resolved "
                                    "to a version on the repository"}, {}
        every = self.changes(base, target)
        counts: dict[str, int] = {}
        for change in every:
            kind = change["changeType"].capitalize()
            counts[kind] = counts.get(kind, 0) + 1
        top = min(int(q.get("$top") or 100), self.max_top)
        skip = int(q.get("$skip") or 0)
        body: dict[str, Any] = {
            "allChangesIncluded": True, "changes": every[skip:skip + top],
            "commonCommit": self.git.merge_base(base, target), "baseCommit": base,
            "targetCommit": target,
            "aheadCount": len(self.git.ancestors(target) - self.git.ancestors(base)),
            "behindCount": len(self.git.ancestors(base) - self.git.ancestors(target))}
        if self.counts:
            body["changeCounts"] = counts
        return 200, body, {}

    def refs(self, q: dict[str, str]) -> Answer:
        prefix = "refs/" + q.get("filter", "")
        # in the order the test created them: Microsoft documents no order to rely on
        names = [f"refs/heads/{b}" for b in self.heads]
        matching = [n for n in names if n.startswith(prefix)]
        start = int(q.get("continuationToken") or 0)
        top = int(q.get("$top") or 100)
        template = example("ms-api-refs-heads.json")["value"][0]
        page = [{**template, "name": n, "objectId": self.heads[n.removeprefix("refs/heads/")]}
                for n in matching[start:start + top]]
        more = start + top < len(matching)
        return 200, {"value": page, "count": len(page)}, (
            {"x-ms-continuationtoken": str(start + top)} if more else {})

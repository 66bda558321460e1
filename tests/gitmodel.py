"""A tiny in-memory Git history, for tests that need a provider's compare semantics.

Commits have parents and a full tree (path -> content). ``compare`` answers what a
provider's compare API answers: the status of head relative to base and the exact tree
difference between the two commits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class Commit:
    sha: str
    parents: tuple[str, ...]
    tree: dict[str, str]


@dataclass
class GitModel:
    commits: dict[str, Commit] = field(default_factory=dict)

    def commit(self, parent: str | None, changes: dict[str, str | None], label: str = "") -> str:
        """A new commit on ``parent`` applying ``changes`` (None deletes a path)."""
        tree = dict(self.commits[parent].tree) if parent else {}
        for path, content in changes.items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content
        seed = f"{parent}:{sorted(tree.items())}:{label}:{len(self.commits)}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        self.commits[sha] = Commit(sha, (parent,) if parent else (), tree)
        return sha

    def ancestors(self, sha: str) -> set[str]:
        """``sha`` and every commit reachable from it."""
        seen: set[str] = set()
        stack = [sha]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(self.commits[cur].parents)
        return seen

    def status(self, base: str, head: str) -> str:
        if base == head:
            return "identical"
        if head in self.ancestors(base):
            return "behind"
        if base in self.ancestors(head):
            return "ahead"
        return "diverged"

    def tree_diff(self, base: str, head: str) -> set[str]:
        a, b = self.commits[base].tree, self.commits[head].tree
        return {p for p in set(a) | set(b) if a.get(p) != b.get(p)}

    def merge_base(self, base: str, head: str) -> str:
        common = self.ancestors(base) & self.ancestors(head)
        # the common ancestor that is not an ancestor of another common one
        for sha in common:
            if not any(sha != other and sha in self.ancestors(other) for other in common):
                return sha
        raise ValueError("no merge base")

    def github_compare(self, base: str, head: str) -> dict[str, object]:
        """A GitHub-shaped compare body (three-dot: files from the merge base to head)."""
        status = self.status(base, head)
        mb = self.merge_base(base, head)
        files = sorted(self.tree_diff(mb, head)) if status in ("ahead", "diverged") else []
        commits = sorted(self.ancestors(head) - self.ancestors(base))
        return {
            "status": status,
            "ahead_by": len(commits),
            "behind_by": len(self.ancestors(base) - self.ancestors(head)),
            "total_commits": len(commits),
            "commits": [{"sha": c} for c in commits],
            "files": [{"filename": f, "status": "modified"} for f in files],
        }

"""End to end: ``diff: git`` over gunicorn against a real git server on 127.0.0.1.

The service runs under gunicorn (two workers) with a ``git http-backend`` server that
enforces token authentication (tests/gitserver.py). A push of 5,000 changed files across
400 commits starts exactly the pipelines ``git diff`` selects, while ``diff: api`` against a
GitHub compare stand-in with GitHub's silent 300-file cap must call the difference
incomplete and start everything; a force push that drops commits counts their files; a
wrong token fails the fetch, the delivery is retried and nothing starts, and the token
appears in no log line and no file of the mirror.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.gitserver import GitServer, WorkClone, basic, fast_import_history, git, serving
from tests.harness import FakeAPI, Recorded, Service
from tests.test_github_e2e import REPO, deliver, push_body

TOKEN = "ghp_GitE2eToken0123456789abcdefSECRET"
WRONG = "ghp_WrongE2eToken9876543210zyxwSECRET"
MODULES = [f"mod{i:02d}" for i in range(60)]  # the push touches mod00-mod49 only


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with serving(tmp_path / "server", REPO, TOKEN) as srv:
        yield srv


@pytest.fixture
def work(server: GitServer, tmp_path: Path) -> WorkClone:
    clone = WorkClone(tmp_path / "work", server.url(REPO), basic("x-access-token", TOKEN))
    clone.commit({f"services/{m}/README": "0\n" for m in MODULES}, "first")
    clone.push()
    return clone


def config(tmp_path: Path, server: GitServer, api_url: str, diff: str) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / f"{diff}.db")},
        "launcher": {"backend": "log"},
        "processing": {"max_attempts": 2, "retry_backoff_seconds": 0.2, "poll_seconds": 0.2},
        "git": {"cache_dir": str(tmp_path / "git-cache")},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url, "diff": diff,
            "git_url": server.url(REPO),
            "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master", "other"],
            "pipelines": [{"name": f"{m}-deploy", "paths": [f"services/{m}/**"]}
                          for m in MODULES],
        }],
    }


def start(tmp_path: Path, server: GitServer, api_url: str, diff: str, token: str) -> Service:
    return Service(config(tmp_path, server, api_url, diff), tmp_path, name=f"svc-{diff}",
                   env={"E2E_GH_SECRET": "e2e-webhook-secret-value", "E2E_GH_TOKEN": token},
                   workers=2).start()


def started(svc: Service, head: str) -> list[str]:
    return sorted(e["pipeline"] for e in svc.events("pipeline.started") if e["commit"] == head)


def processed(svc: Service, delivery_id: str) -> list[dict[str, Any]]:
    return svc.wait_for(lambda lines: any(
        e.get("event") == "delivery.processed" and e.get("delivery_id") == delivery_id
        for e in lines), timeout=90)


def test_a_push_of_5000_files_starts_exactly_what_git_diff_selects_where_the_api_cannot(
        tmp_path: Path, server: GitServer, work: WorkClone, fake_api: FakeAPI) -> None:
    base = work.head()
    paths = [f"services/mod{i % 50:02d}/pkg{i % 7}/file{i}.py" for i in range(5000)]
    head = fast_import_history(work, commits=400, paths=paths)
    work.push("master")
    work.push("other")  # the same history on a second branch: two fetches at once below
    expected = sorted(f"mod{i:02d}-deploy" for i in range(50))

    def capped_compare(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        # GitHub's compare: at most 300 files, without saying it cut them
        return 200, {"status": "ahead", "ahead_by": 400, "behind_by": 0, "total_commits": 400,
                     "commits": [{"sha": head}],
                     "files": [{"filename": p, "status": "added"} for p in paths[:300]]}, {}

    fake_api.routes = {f"/repos/{REPO}/compare/{base}...{head}": capped_compare}
    with_git = start(tmp_path, server, fake_api.url, "git", TOKEN)
    with_api = start(tmp_path, server, fake_api.url, "api", TOKEN)
    try:
        # two deliveries at once: both gunicorn workers fetch the one mirror together
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda a: deliver(with_git, push_body(base, head, a[0]),
                                                      a[1]),
                                    [("refs/heads/master", "git-1"), ("refs/heads/other",
                                                                     "git-2")]))
        assert [a.status_code for a in answers] == [202, 202]
        processed(with_git, "git-1")
        processed(with_git, "git-2")
        assert started(with_git, head) == expected  # each once: the start intent dedups
        (summary,) = [e for e in with_git.events("delivery.processed")
                      if e["delivery_id"] == "git-1"]
        assert summary["changed_files"] == 5000
        assert with_git.events("changes.incomplete") == []
        mirror = tmp_path / "git-cache" / "github" / f"{REPO.replace('/', '%2F')}.git"
        git("fsck", "--connectivity-only", "--no-progress", cwd=mirror)

        assert deliver(with_api, push_body(base, head), "api-1").status_code == 202
        processed(with_api, "api-1")
        assert started(with_api, head) == sorted(f"{m}-deploy" for m in MODULES)  # all 60
        (incomplete,) = with_api.events("changes.incomplete")
        assert "max_compare_commits" in incomplete["reason"]
    finally:
        with_git.stop()
        with_api.stop()


def test_a_force_push_that_drops_commits_counts_their_files(
        tmp_path: Path, server: GitServer, work: WorkClone, fake_api: FakeAPI) -> None:
    root = work.head()
    svc = start(tmp_path, server, fake_api.url, "git", TOKEN)
    try:
        dropped = work.commit({"services/mod01/a.py": "dropped\n"}, "to be dropped")
        work.push("master")
        assert deliver(svc, push_body(root, dropped), "d1").status_code == 202
        processed(svc, "d1")
        assert started(svc, dropped) == ["mod01-deploy"]
        work.reset(root)
        rewritten = work.commit({"services/mod02/b.py": "new\n"}, "rewritten")
        work.push("master", force=True)
        server.gc(REPO)
        body = json.loads(push_body(dropped, rewritten))
        body["forced"] = True
        assert deliver(svc, json.dumps(body).encode(), "d2").status_code == 202
        processed(svc, "d2")
        # the tree difference from the deployed commit: mod01's file went away, mod02's came
        assert started(svc, rewritten) == ["mod01-deploy", "mod02-deploy"]
    finally:
        svc.stop()


def test_a_wrong_token_fails_the_fetch_is_retried_and_leaks_nowhere(
        tmp_path: Path, server: GitServer, work: WorkClone, fake_api: FakeAPI) -> None:
    root = work.head()
    head = work.commit({"services/mod03/c.py": "1\n"})
    work.push("master")
    svc = start(tmp_path, server, fake_api.url, "git", WRONG)
    try:
        assert deliver(svc, push_body(root, head), "w1").status_code == 202
        lines = svc.wait_for(lambda ls: any(e.get("event") == "delivery.failed" for e in ls),
                             timeout=60)
        assert [e for e in lines if e.get("event") == "delivery.retry"]
        assert [e for e in lines if e.get("event") == "pipeline.started"] == []
        assert [e for e in lines if e.get("event") == "changes.incomplete"] == []
        errors = [e for e in lines if e.get("event") == "provider.error"]
        assert errors and all(e["diff"] == "git" for e in errors)
        for secret in (WRONG, basic("x-access-token", WRONG).split()[1]):
            assert secret not in svc.log_path.read_text()
            for folder, _dirs, files in os.walk(tmp_path / "git-cache"):
                for name in files:
                    assert secret.encode() not in (Path(folder) / name).read_bytes()
    finally:
        svc.stop()

"""``diff: git`` at its edges, end to end: the service under gunicorn, signed deliveries over
HTTP, a real ``git http-backend`` (tests/gitserver.py).

- Branches with any name ``git check-ref-format`` accepts (``+top``, ``-x``, ``@``, non-ASCII)
  are fetched and their pushes processed.
- Every git process the service runs sees only the allow-listed environment: a ``git`` shim
  first on PATH writes down each environment it was given.
- A Bitbucket Cloud push that carries a branch git refuses processes its other refs.
- A Bitbucket Cloud push of 30,000 branches (``push.changes[]`` built by repeating the
  published fixture's change) is fetched and processed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.gitdiff import ENV_PASSED
from tests.gitserver import GitServer, WorkClone, basic, git
from tests.harness import Service, fixture_bytes
from tests.test_bitbucket_e2e import deliver as bitbucket_deliver
from tests.test_github_e2e import REPO, push_body
from tests.test_github_e2e import deliver as github_deliver

GH_REPO = REPO  # the repository of the GitHub push fixture
GH_TOKEN = "ghp_EdgeE2eToken0123456789abcdefSECRET"
GH_SECRET = "e2e-webhook-secret-value"  # what tests.test_github_e2e.deliver signs with
BB_REPO = "cloudbeers/temp"  # the repository of the Bitbucket Cloud fixtures
BB_TOKEN = "bb-edge-e2e-token-4f1d9c2a-never-logged"
BB_SECRET = "bb-e2e-hook-secret-2b7e91d4-never-logged"  # tests.test_bitbucket_e2e.deliver's
AWS_SECRET = "aws-secret-edge-e2e-value-never-passed"
NAMES = ["+top", "-x", "@", "ünïcode/ブランチ"]


def processed(svc: Service, delivery_id: str, timeout: float = 90) -> dict[str, Any]:
    lines = svc.wait_for(lambda ls: any(
        e.get("event") == "delivery.processed" and e.get("delivery_id") == delivery_id
        for e in ls), timeout=timeout)
    return next(e for e in lines if e.get("event") == "delivery.processed"
                and e.get("delivery_id") == delivery_id)


def started(svc: Service, head: str) -> list[str]:
    return sorted(e["pipeline"] for e in svc.events("pipeline.started") if e["commit"] == head)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    srv = GitServer(tmp_path / "server", {basic("x-access-token", GH_TOKEN),
                                          basic("x-token-auth", BB_TOKEN)})
    srv.create(GH_REPO)
    srv.create(BB_REPO)
    yield srv
    srv.close()


# --- GitHub: any branch name git accepts; what a git child sees ----------------------------


def git_shim(tmp_path: Path) -> tuple[Path, Path]:
    """A directory holding a ``git`` that writes its environment (NUL-separated) into a new
    file of the second directory, then runs the real git."""
    real = shutil.which("git")
    assert real is not None
    folder, seen = tmp_path / "shim", tmp_path / "seen-envs"
    folder.mkdir()
    seen.mkdir()
    shim = folder / "git"
    shim.write_text(f'#!/bin/sh\nenv -0 > "{seen}/$$.env"\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return folder, seen


def test_branches_git_accepts_are_processed_and_git_sees_no_secret_of_the_service(
        tmp_path: Path, server: GitServer) -> None:
    work = WorkClone(tmp_path / "work", server.url(GH_REPO), basic("x-access-token", GH_TOKEN))
    root = work.commit({f"services/m{i}/README": "0\n" for i in range(len(NAMES))}, "first")
    work.push()
    shim, seen = git_shim(tmp_path)
    config = {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"max_attempts": 2, "retry_backoff_seconds": 0.2, "poll_seconds": 0.2},
        "git": {"cache_dir": str(tmp_path / "git-cache")},
        "repositories": [{
            "provider": "github", "name": GH_REPO, "api_url": "http://127.0.0.1:9",
            "diff": "git", "git_url": server.url(GH_REPO),
            "webhook_secrets": ["env:EDGE_GH_SECRET"], "api_token": "env:EDGE_GH_TOKEN",
            "branches": ["**"],
            "pipelines": [{"name": f"m{i}-deploy", "paths": [f"services/m{i}/**"]}
                          for i in range(len(NAMES))],
        }],
    }
    env = {"EDGE_GH_SECRET": GH_SECRET, "EDGE_GH_TOKEN": GH_TOKEN,
           "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "PATH": f"{shim}:{os.environ['PATH']}"}
    svc = Service(config, tmp_path, env=env, workers=1).start()
    try:
        heads = {}
        for i, name in enumerate(NAMES):
            work.reset(root)
            heads[name] = work.commit({f"services/m{i}/app.py": f"{name}\n"})
            work.push(name)
            body = push_body(root, heads[name], ref=f"refs/heads/{name}")
            assert github_deliver(svc, body, f"edge-{i}").status_code == 202
        for i, name in enumerate(NAMES):
            summary = processed(svc, f"edge-{i}")
            assert summary["branch"] == name
            assert started(svc, heads[name]) == [f"m{i}-deploy"], name
        assert svc.events("provider.error") == []
    finally:
        svc.stop()

    envs = [dict(item.split("=", 1) for item in path.read_bytes().decode().split("\0") if item)
            for path in seen.glob("*.env")]
    assert len(envs) > len(NAMES)  # the mirror's creation, its fetches, its diffs
    header = f"Authorization: {basic('x-access-token', GH_TOKEN)}"
    ours = {"LC_ALL", "GIT_TERMINAL_PROMPT", "GIT_ASKPASS", "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL", "GIT_CONFIG_COUNT"}
    for seen_env in envs:
        config_vars = {k for k in seen_env if k.startswith(("GIT_CONFIG_KEY_",
                                                            "GIT_CONFIG_VALUE_"))}
        # the shell running the shim adds its working directory; nothing else is there
        assert set(seen_env) - config_vars - {"PWD"} <= set(ENV_PASSED) | ours
        text = "\0".join(f"{k}={v}" for k, v in seen_env.items())
        for secret in (GH_SECRET, GH_TOKEN, AWS_SECRET):
            assert secret not in text
        # the token travels only as the fetch's http.extraHeader, base64-encoded
        for key in config_vars:
            if header in seen_env[key]:
                assert seen_env[key.replace("VALUE", "KEY")] == "http.extraHeader"
    assert any(header in env.values() for env in envs)


# --- Bitbucket Cloud: a ref git refuses; 30,000 refs ----------------------------------------


def bitbucket_service(tmp_path: Path, server: GitServer, **settings: Any) -> Service:
    config = {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"max_attempts": 2, "retry_backoff_seconds": 0.2, "poll_seconds": 0.2},
        "git": {"cache_dir": str(tmp_path / "git-cache")},
        **settings.pop("top", {}),
        "repositories": [{
            "provider": "bitbucket", "name": BB_REPO, "api_url": "http://127.0.0.1:9",
            "diff": "git", "git_url": server.url(BB_REPO),
            "webhook_secrets": ["env:EDGE_BB_SECRET"], "api_token": "env:EDGE_BB_TOKEN",
            "branches": ["**"],
            "pipelines": [{"name": "main-deploy", "paths": ["main/**"]},
                          {"name": "other-deploy", "paths": ["other/**"]}],
            **settings,
        }],
    }
    return Service(config, tmp_path, env={"EDGE_BB_SECRET": BB_SECRET,
                                          "EDGE_BB_TOKEN": BB_TOKEN}, workers=1).start()


def test_a_bitbucket_push_with_a_branch_git_refuses_processes_its_other_refs(
        tmp_path: Path, server: GitServer) -> None:
    work = WorkClone(tmp_path / "work", server.url(BB_REPO), basic("x-token-auth", BB_TOKEN))
    old = work.commit({"main/a.txt": "1\n", "other/b.txt": "1\n"}, "first")
    work.push()
    new = work.commit({"main/a.txt": "2\n"})
    work.push()
    # multipleChangesPayload: main updated, branch "manchu" created, tag v0.1 created.
    # main and the tag point at the test repository's commits; the branch gets a name git
    # refuses (Bitbucket's payload is the only place such a name can come from)
    doc = json.loads(fixture_bytes("bitbucket-cloud/jenkins-cloud-push-multipleChangesPayload.json"))
    main, branch, tag = doc["push"]["changes"]
    main["old"]["target"]["hash"], main["new"]["target"]["hash"] = old, new
    branch["new"]["name"], branch["new"]["target"]["hash"] = "bad..name", new
    tag["new"]["target"]["hash"] = new
    svc = bitbucket_service(tmp_path, server)
    try:
        answer = bitbucket_deliver(svc, json.dumps(doc).encode(), request_uuid="{bad-ref-1}")
        assert answer.status_code == 202, answer.text
        summary = processed(svc, "{bad-ref-1}")
        assert summary["pipelines_started"] == ["main-deploy"]
        (refused,) = svc.events("push.ref_refused")
        assert (refused["branch"], refused["reason"]) == ("bad..name", 'holds ".."')
        assert svc.events("provider.error") == [] and svc.events("delivery.retry") == []
        shown = svc.cli("history", "--delivery", "{bad-ref-1}")
        assert shown.returncode == 0, shown.stderr
        assert ("  failed: git refuses the branch name: refs/heads/bad..name holds \"..\""
                in shown.stdout)
        assert "  main-deploy: started;" in shown.stdout
    finally:
        svc.stop()


@pytest.mark.timeout(900)  # measured 115-140 s on a shared 2-core machine: 90 s processing
def test_a_bitbucket_push_of_30000_branches_is_fetched_and_processed(
        tmp_path: Path, server: GitServer) -> None:
    work = WorkClone(tmp_path / "work", server.url(BB_REPO), basic("x-token-auth", BB_TOKEN))
    head = work.commit({"main/a.txt": "1\n"}, "first")
    work.push()
    names = [f"feature/x-{n:05d}" for n in range(30_000)]
    git("update-ref", "--stdin", cwd=server.bare(BB_REPO),
        input="".join(f"create refs/heads/{n} {head}\n" for n in names).encode())
    # createPayload's one change (branch "main" created) repeated, each a branch of its own
    # at the test repository's commit
    doc = json.loads(fixture_bytes("bitbucket-cloud/jenkins-cloud-push-createPayload.json"))
    (change,) = doc["push"]["changes"]
    changes = []
    for name in names:
        entry = copy.deepcopy(change)
        entry["new"]["name"], entry["new"]["target"]["hash"] = name, head
        changes.append(entry)
    doc["push"]["changes"] = changes
    body = json.dumps(doc).encode()
    svc = bitbucket_service(tmp_path, server, new_branch="none",
                            top={"server": {"max_body_bytes": 2 * len(body)}})
    try:
        answer = bitbucket_deliver(svc, body, request_uuid="{many-refs-1}")
        assert answer.status_code == 202, answer.text
        processed(svc, "{many-refs-1}", timeout=900)
        assert svc.events("provider.error") == [] and svc.events("delivery.retry") == []
        assert svc.events("delivery.error") == []
        mirror = tmp_path / "git-cache" / "bitbucket" / f"{BB_REPO.replace('/', '%2F')}.git"
        fetched = git("for-each-ref", "--format=%(refname)", "refs/heads/feature/",
                      cwd=mirror).split()
        assert fetched == [f"refs/heads/{n}" for n in names]
    finally:
        svc.stop()

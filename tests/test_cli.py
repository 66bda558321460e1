"""The command line: explain (against a local GitHub API stand-in), state, state init."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitmodel import GitModel
from tests.harness import FakeAPI, Recorded

REPO = "acme/mono"


@pytest.fixture
def git_api(fake_api: FakeAPI) -> tuple[FakeAPI, GitModel]:
    git = GitModel()

    class Routes(dict[str, Any]):
        def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
            if path.startswith(f"/repos/{REPO}/compare/"):
                return compare
            if path == f"/repos/{REPO}":
                return lambda _rec: (200, {"full_name": REPO}, {})
            return default

    def compare(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        base, _, head = rec.path.rsplit("/", 1)[1].partition("...")
        if base not in git.commits or head not in git.commits:
            return 404, {"message": "Not Found"}, {}
        return 200, git.github_compare(base, head), {}

    fake_api.routes = Routes()
    return fake_api, git


def write_config(tmp_path: Path, api_url: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "state": {"path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:CLI_SECRET"], "branches": ["main"],
            "pipelines": [
                {"name": "collections", "paths": ["svc/collections/**", "!**/*.md"]},
                {"name": "utilities", "paths": ["svc/utilities/**"]},
            ],
        }],
    }))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "CLI_SECRET": "x"}, timeout=60)


def test_explain_shows_each_path_its_rule_and_what_would_start(
        tmp_path: Path, git_api: tuple[FakeAPI, GitModel]) -> None:
    api, git = git_api
    a = git.commit(None, {"svc/collections/a.py": "1", "svc/utilities/u.py": "1"})
    b = git.commit(a, {"svc/collections/a.py": "2", "svc/collections/README.md": "2",
                       "docs/x.md": "1"})
    done = cli("explain", "--config", str(write_config(tmp_path, api.url)),
               "--repository", REPO, "--from", a, "--to", b)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "compare: ahead, 3 changed paths, 1 API calls" in out
    assert "  svc/collections/a.py  ->  collections (svc/collections/**)" in out
    assert "  svc/collections/README.md  ->  no pipeline" in out
    assert "  docs/x.md  ->  no pipeline" in out
    assert "would start: collections\n" in out
    assert "unchanged:   utilities\n" in out


def test_explain_json_reports_contained_heads_as_starting_nothing(
        tmp_path: Path, git_api: tuple[FakeAPI, GitModel]) -> None:
    api, git = git_api
    a = git.commit(None, {"svc/collections/a.py": "1"})
    b = git.commit(a, {"svc/collections/a.py": "2"})
    done = cli("explain", "--config", str(write_config(tmp_path, api.url)),
               "--repository", REPO, "--from", b, "--to", a, "--json")
    report = json.loads(done.stdout)
    assert (report["compare"], report["would_start"]) == ("behind", [])


def test_explain_with_a_vanished_commit_says_everything_would_start(
        tmp_path: Path, git_api: tuple[FakeAPI, GitModel]) -> None:
    api, git = git_api
    a = git.commit(None, {"svc/collections/a.py": "1"})
    done = cli("explain", "--config", str(write_config(tmp_path, api.url)),
               "--repository", REPO, "--from", "f" * 40, "--to", a, "--json")
    report = json.loads(done.stdout)
    assert report["complete"] is False and "404" in report["reason"]
    assert report["would_start"] == ["collections", "utilities"]


def test_explain_names_an_unknown_repository(tmp_path: Path, fake_api: FakeAPI) -> None:
    done = cli("explain", "--config", str(write_config(tmp_path, fake_api.url)),
               "--repository", "other/repo", "--from", "a" * 40, "--to", "b" * 40)
    assert done.returncode == 2
    assert "no configured repository named 'other/repo'" in done.stderr


def test_state_init_is_idempotent_and_state_starts_empty(tmp_path: Path, fake_api: FakeAPI) -> None:
    config = str(write_config(tmp_path, fake_api.url))
    for _ in range(2):
        done = cli("state", "init", "--config", config)
        assert (done.returncode, done.stdout) == (0, "ok: state backend sqlite initialised\n")
    done = cli("state", "--config", config)
    assert (done.returncode, done.stdout) == (0, "")

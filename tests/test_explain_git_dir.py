"""``explain --git-dir``: the difference from a local clone, offline, with no secret set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.gitserver import git

REPO = "acme/mono"


def clone_with_history(path: Path) -> list[str]:
    git("init", "--quiet", "--initial-branch=main", str(path))
    commits = []
    for changes in ({"svc/a/x.py": "1", "svc/b/y.py": "1", "README.md": "1"},
                    {"svc/a/x.py": "2"}, {"svc/b/y.py": "3", "README.md": "3"}):
        for rel, content in changes.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(content)
        git("add", "-A", cwd=path)
        git("commit", "--quiet", "-m", "c", cwd=path)
        commits.append(git("rev-parse", "HEAD", cwd=path).strip())
    return commits


PIPELINES = [{"name": "a-deploy", "paths": ["svc/a/**"]},
             {"name": "b-deploy", "paths": ["svc/b/**"]}]
TEMPLATE = [{"name": "svc-{module}-deploy", "paths": ["svc/{module}/**"]}]


def run(tmp_path: Path, *args: str,
        pipelines: list[dict[str, Any]] = PIPELINES) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        # an API no test can reach, and secrets nobody set: neither is needed
        "repositories": [{"provider": "github", "name": REPO, "api_url": "http://127.0.0.1:9",
                          "webhook_secrets": ["env:NOT_SET_SECRET"],
                          "api_token": "env:NOT_SET_TOKEN", "branches": ["main"],
                          "pipelines": pipelines}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOT_SET_")}
    return subprocess.run([sys.executable, "-m", "receiver.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)


def test_explain_reads_the_difference_from_a_local_clone_with_no_secret(tmp_path: Path) -> None:
    c1, c2, c3 = clone_with_history(tmp_path / "clone")
    done = run(tmp_path, "explain", "--repository", REPO, "--from", c1, "--to", c3,
               "--git-dir", str(tmp_path / "clone"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["changed_paths"] == {
        "README.md": [], "svc/a/x.py": [{"pipeline": "a-deploy", "rule": "svc/a/**"}],
        "svc/b/y.py": [{"pipeline": "b-deploy", "rule": "svc/b/**"}]}
    assert (report["would_start"], report["api_calls"]) == (["a-deploy", "b-deploy"], 0)
    text = run(tmp_path, "explain", "--repository", REPO, "--from", c2, "--to", c3,
               "--git-dir", str(tmp_path / "clone"))
    assert text.returncode == 0, text.stderr
    assert "would start: b-deploy" in text.stdout and "svc/b/y.py  ->  b-deploy" in text.stdout


def test_explain_compares_each_pipeline_from_its_stored_baseline_by_default(
        tmp_path: Path) -> None:
    c1, c2, c3 = clone_with_history(tmp_path / "clone")
    for pipeline, commit in (("a-deploy", c2), ("b-deploy", c1)):
        seeded = run(tmp_path, "state", "seed", "--pipeline", pipeline, "--commit", commit)
        assert seeded.returncode == 0, seeded.stderr
    done = run(tmp_path, "explain", "--repository", REPO, "--to", c3,
               "--git-dir", str(tmp_path / "clone"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["from"] == {"a-deploy": c2, "b-deploy": c1}
    assert report["would_start"] == ["b-deploy"] and report["unchanged"] == ["a-deploy"]


def test_explain_plans_a_template_from_its_stored_baselines_without_from(
        tmp_path: Path) -> None:
    c1, c2, c3 = clone_with_history(tmp_path / "clone")
    for pipeline, commit in (("svc-a-deploy", c2), ("svc-b-deploy", c1)):
        seeded = run(tmp_path, "state", "seed", "--pipeline", pipeline, "--commit", commit,
                     pipelines=TEMPLATE)
        assert seeded.returncode == 0, seeded.stderr
    done = run(tmp_path, "explain", "--repository", REPO, "--to", c3,
               "--git-dir", str(tmp_path / "clone"), "--json", pipelines=TEMPLATE)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["from"] == {"svc-a-deploy": c2, "svc-b-deploy": c1}
    assert report["would_start"] == ["svc-b-deploy"]
    assert report["unchanged"] == ["svc-a-deploy"]


def test_explain_without_from_or_stored_baselines_says_what_to_give(tmp_path: Path) -> None:
    _, _, c3 = clone_with_history(tmp_path / "clone")
    done = run(tmp_path, "explain", "--repository", REPO, "--to", c3,
               "--git-dir", str(tmp_path / "clone"))
    assert done.returncode == 2
    assert "no stored baseline on branch 'main'" in done.stderr and "--from" in done.stderr


def test_explain_with_a_commit_the_clone_lacks_says_the_difference_is_incomplete(
        tmp_path: Path) -> None:
    _, _, c3 = clone_with_history(tmp_path / "clone")
    done = run(tmp_path, "explain", "--repository", REPO, "--from", "f" * 40, "--to", c3,
               "--git-dir", str(tmp_path / "clone"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["complete"] is False and report["would_start"] == ["a-deploy", "b-deploy"]

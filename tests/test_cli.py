"""The command line: explain (against a local GitHub API stand-in), state, state init, help
and version; and what ``serve`` writes on stdout."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver import __version__
from receiver.cli import build_parser
from tests.gitmodel import GitModel
from tests.harness import FakeAPI, Recorded, Service

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


def test_explain_of_a_repository_the_token_cannot_read_fails_naming_it(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    # every path answers 404: the compare and the repository itself
    done = cli("explain", "--config", str(write_config(tmp_path, fake_api.url)),
               "--repository", REPO, "--from", "a" * 40, "--to", "b" * 40, "--json")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("error: the token cannot read acme/mono, or it does not exist "
                           "(HTTP 404)\n")
    assert [r.path for r in fake_api.requests] == [
        f"/repos/{REPO}/compare/{'a' * 40}...{'b' * 40}", f"/repos/{REPO}"]


# --- help and version ------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version_prints_the_package_version() -> None:
    done = cli("--version")
    assert (done.returncode, done.stdout) == (0, f"webhook-receiver {__version__}\n")


def test_help_lists_every_command_with_a_one_line_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(sub.choices) and all(helps.values()), helps
    done = cli("--help")
    assert done.returncode == 0
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")
              and line.split()[0] in helps]
    assert listed == list(sub.choices)


@pytest.mark.parametrize("command", ["(top level)", *_commands()])
def test_every_option_and_argument_has_help(command: str) -> None:
    parser = build_parser() if command == "(top level)" else _commands()[command]
    missing = [a.option_strings or a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


# --- what serve writes -------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_until(condition: Any, failure: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def test_serve_writes_one_service_started_line_and_only_json_lines(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path, "https://api.github.com").read_text())
    svc = Service(config, tmp_path, env={"CLI_SECRET": "x"}, workers=2).start()
    try:
        assert svc.proc is not None
        master = svc.proc.pid
        _wait_until(lambda: len(_children(master)) == 2, "the two workers did not start")
        workers = _children(master)
        # gunicorn replaces a killed worker and says so on its error log: a second worker
        # start writes no second service.started, and gunicorn's line is JSON too
        os.kill(workers[0], signal.SIGKILL)
        svc.wait_for(lambda lines: any(e.get("event") == "gunicorn.log" for e in lines))
        _wait_until(lambda: len(set(_children(master)) - {workers[0]}) == 2,
                    "the killed worker was not replaced")
    finally:
        svc.stop()
    raw = svc.log_path.read_text().splitlines()
    lines = [json.loads(line) for line in raw]  # every line is one JSON object
    assert all(isinstance(e, dict) and {"ts", "level", "event"} <= e.keys() for e in lines)
    (started,) = [e for e in lines if e["event"] == "service.started"]
    assert started == {**started, "level": "info", "bind": f"127.0.0.1:{svc.port}",
                       "config": str(svc.config_path), "state": "sqlite", "launcher": "log",
                       "repositories": 1, "pipelines": 2, "version": __version__}
    killed = [e for e in lines if e["event"] == "gunicorn.log" and str(workers[0]) in e["message"]]
    assert [(e["level"], e["message"]) for e in killed] == [
        ("error", f"Worker (pid:{workers[0]}) was sent SIGKILL! Perhaps out of memory?")]


def test_gunicorn_error_log_records_become_json_lines_with_their_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    from gunicorn.config import Config

    from receiver import gunicorn_conf
    from receiver.gunicorn_ext import AccessLogger

    cfg = Config()
    for key in ("errorlog", "loglevel", "accesslog"):
        cfg.set(key, getattr(gunicorn_conf, key))
    logger = AccessLogger(cfg)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("Error handling request %s", "/webhooks/github")
    logger.info("Booting worker with pid: %s", 42)  # below gunicorn's loglevel: no line

    out, err = capsys.readouterr()
    (line,) = [json.loads(raw) for raw in out.splitlines()]
    assert (line["level"], line["event"], line["message"]) == (
        "error", "gunicorn.log", "Error handling request /webhooks/github")
    assert "RuntimeError: boom" in line["exception"]
    assert err == ""

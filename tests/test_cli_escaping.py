"""Repository-derived text reaches an operator's terminal escaped: ``history``, ``explain``
and ``state`` print control characters (C0, C1, DEL), bidirectional and other format
characters, and undecodable bytes of a committed file or branch name as escapes, never as
themselves. Text output goes through one function (``receiver.cli.terminal_safe``); JSON
output is escaped by the json module.

End to end: a commit with hostile file names is pushed to a real ``git http-backend``, the
service (under gunicorn, ``diff: git``) processes the push, and the commands run against
its state store and a clone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.cli import terminal_safe
from tests.gitserver import GitServer, WorkClone, basic, serving
from tests.harness import Service
from tests.test_github_e2e import REPO, deliver, push_body

TOKEN = "ghp_EscapeE2eToken0123456789abcdefSECRET"
# an escape sequence that clears the screen and retitles the terminal, a bidi override that
# shows "evil.py" as "yp.live", an isolate, and a byte that is not UTF-8
HOSTILE = "services/m0/\x1b[2J\x1b]0;pwned\x07\u202eevil\u2066.py"
UNDECODABLE = "services/m0/caf\udce9.py"  # b"caf\xe9.py" on disk and in git
BRANCH = "rtl\u202egnp"  # git takes it: a bidi override is not a control character


@pytest.mark.parametrize(("text", "shown"), [
    ("plain ascii, spaces kept", "plain ascii, spaces kept"),
    ("ünïcode/ブランチ", "ünïcode/ブランチ"),
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("a\x00b", "a\\x00b"),
    ("a\rb", "a\\rb"),
    ("a\nb", "a\\nb"),
    ("a\tb", "a\\tb"),
    ("a\x7fb", "a\\x7fb"),
    ("a\x9bb", "a\\x9bb"),  # C1: CSI
    ("a\u200eb", "a\\u200eb"),
    ("a\u200fb", "a\\u200fb"),
    ("a\u202ab", "a\\u202ab"),
    ("a\u202eb", "a\\u202eb"),
    ("a\u2066b", "a\\u2066b"),
    ("a\u2069b", "a\\u2069b"),
    ("a\u061cb", "a\\u061cb"),  # Arabic letter mark
    ("a\u200bb", "a\\u200bb"),  # zero-width space
    ("a\u2028b", "a\\u2028b"),  # line separator
    ("a\udce9b", "a\\udce9b"),  # an undecodable byte, as os.fsdecode keeps it
])
def test_terminal_safe_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown


def unprintable(text: str) -> list[str]:
    """The characters of ``text`` a terminal would act on (newlines end lines: allowed)."""
    return [ch for ch in text if not ch.isprintable() and ch != "\n"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with serving(tmp_path / "server", REPO, TOKEN) as srv:
        yield srv


def config(tmp_path: Path, server: GitServer) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"poll_seconds": 0.2},
        "git": {"cache_dir": str(tmp_path / "git-cache")},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": "http://127.0.0.1:9",
            "diff": "git", "git_url": server.url(REPO),
            "webhook_secrets": ["env:ESC_GH_SECRET"], "api_token": "env:ESC_GH_TOKEN",
            "branches": ["**"],
            "pipelines": [{"name": "m0-deploy", "paths": ["services/m0/**"]}],
        }],
    }


def test_hostile_names_arrive_escaped_in_history_explain_and_state(
        tmp_path: Path, server: GitServer) -> None:
    work = WorkClone(tmp_path / "work", server.url(REPO), basic("x-access-token", TOKEN))
    root = work.commit({"services/m0/README": "0\n"}, "first")
    work.push()
    head = work.commit({HOSTILE: "1\n", UNDECODABLE: "1\n"})
    work.push(BRANCH)
    svc = Service(config(tmp_path, server), tmp_path, workers=1,
                  env={"ESC_GH_SECRET": "e2e-webhook-secret-value",
                       "ESC_GH_TOKEN": TOKEN}).start()
    try:
        body = push_body(root, head, ref=f"refs/heads/{BRANCH}")
        assert deliver(svc, body, "esc-1").status_code == 202
        svc.wait_for(lambda ls: any(e.get("event") == "delivery.processed" for e in ls))
        outputs = {
            "history": svc.cli("history", "--commit", head),
            "history --json": svc.cli("history", "--commit", head, "--json"),
            "explain": svc.cli("explain", "--repository", REPO, "--from", root, "--to", head,
                               "--git-dir", str(work.path)),
            "explain --json": svc.cli("explain", "--repository", REPO, "--from", root,
                                      "--to", head, "--git-dir", str(work.path), "--json"),
            "state": svc.cli("state"),
        }
    finally:
        svc.stop()
    for command, done in outputs.items():
        assert done.returncode == 0, (command, done.stderr)
        assert unprintable(done.stdout + done.stderr) == [], command

    hostile, undecodable = terminal_safe(HOSTILE), terminal_safe(UNDECODABLE)
    assert hostile == "services/m0/\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\u2066.py"
    history = outputs["history"].stdout
    assert f"branch {terminal_safe(BRANCH)} " in history and "rtl\\u202egnp" in history
    assert hostile in history and undecodable in history
    explain = outputs["explain"].stdout
    assert f"  {hostile}  ->  m0-deploy (services/m0/**)" in explain.splitlines()
    assert f"  {undecodable}  ->  m0-deploy (services/m0/**)" in explain.splitlines()

    # JSON keeps the names exactly, as escapes the json module wrote
    (record,) = [json.loads(line) for line in outputs["history --json"].stdout.splitlines()]
    assert record["ref"] == BRANCH
    assert {tuple(m) for m in record["pipelines"][0]["matched"]} == {
        (HOSTILE, "services/m0/**"), (UNDECODABLE, "services/m0/**")}
    report = json.loads(outputs["explain --json"].stdout)
    assert set(report["changed_paths"]) == {HOSTILE, UNDECODABLE}
    (row,) = [json.loads(line) for line in outputs["state"].stdout.splitlines()]
    assert (row["branch"], row["pipeline"], row["baseline_commit"]) == (BRANCH, "m0-deploy",
                                                                        head)

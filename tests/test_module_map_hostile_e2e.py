"""End to end over HTTP, the service under gunicorn: a hostile repository-side module map
pushed to the repository is answered by the fallback (``module_map.invalid`` with the
kept map's commit, the ``webhook-receiver/config`` status) while the configured pipelines
and the kept map's pipelines start; a valid map whose glob would backtrack for ever in a
regex engine decides a push of a hostile file name at once.

``diff: api`` pushes go through the GitHub API stand-in of tests/test_modules_e2e.py;
``diff: git`` through a ``git http-backend`` server (tests/gitserver.py).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from providers.base import MAX_FILE_BYTES
from receiver.module_map import MAX_WILDCARDS
from tests.gitserver import GitServer, WorkClone, basic
from tests.harness import FIXTURES, FakeAPI, Service
from tests.test_github_e2e import REPO, SECRET, deliver, push_body
from tests.test_modules_e2e import MAP, MAP_PATH, Mono

BOMB = (FIXTURES / "module_map" / "yaml-bomb-cve-2019-11253.yaml").read_text()
TOKEN = "ghs_HostileMapE2eToken0123456789abSECRET"


@pytest.fixture
def mono(tmp_path: Path, fake_api: FakeAPI) -> Iterator[Mono]:
    rig = Mono(tmp_path, fake_api)
    rig.svc.start()
    yield rig
    rig.svc.stop()


HOSTILE: list[tuple[str, str, str]] = [
    ("a YAML alias bomb", BOMB, f"{MAP_PATH}: line 1: anchors (&a) are not allowed"),
    ("a glob that backtracks for ever in a regex engine",
     MAP.replace('"api/**"', '"x/' + "*a" * 12 + '*b"'),
     f"pipelines[0].paths[0]: 13 wildcards; at most {MAX_WILDCARDS} ('*', '?', '[', "
     "{module}; '**' is two)"),
]


@pytest.mark.parametrize(("text", "error"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_map_pushed_keeps_the_last_valid_one_while_configured_pipelines_start(
        mono: Mono, text: str, error: str) -> None:
    first = mono.push({"api/x.py": "1"})
    assert mono.started(first) == ["acme-api"]
    hostile = mono.push({MAP_PATH: text, "docs/r.md": "1", "api/x.py": "2"})
    # the configured pipeline, and the kept map's, start as if the file were not there
    assert mono.started(hostile) == ["acme-api", "docs-deploy"]
    (invalid,) = mono.svc.events("module_map.invalid")
    assert (invalid["commit"], invalid["errors"], invalid["kept"]) == (hostile, [error], first)
    mono.svc.wait_for(lambda _: len(mono.config_statuses(hostile)) == 1)
    (status,) = mono.config_statuses(hostile)
    assert status["state"] == "error"
    assert status["description"].startswith(f"{MAP_PATH}: {error}"[:60])
    assert mono.svc.events("request.error") == []


def test_a_valid_map_with_a_nasty_glob_decides_a_hostile_file_name_at_once(
        mono: Mono) -> None:
    # five '*': a backtracking matcher takes ~n^5 steps on n a's before it says no
    nasty = MAP.replace('"api/**"', '"x/*a*a*a*a*b"')
    first = mono.push({MAP_PATH: nasty})
    assert mono.started(first) == []
    hostile = mono.push({"x/" + "a" * 5000: "1", "docs/r.md": "2"})
    assert mono.started(hostile) == ["docs-deploy"]
    matched = mono.push({"x/" + "a" * 5000 + "b": "1"})
    assert mono.started(matched) == ["acme-api"]
    assert mono.svc.events("module_map.invalid") == []


def test_a_concrete_name_outside_allow_is_refused_and_logged_while_the_rest_starts(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    rig = Mono(tmp_path, fake_api)
    raw = yaml.safe_load(rig.svc.config_path.read_text())
    raw["repositories"][0]["module_map"]["allow"] = ["acme-[!p]*"]
    rig.svc.config_path.write_text(yaml.safe_dump(raw))
    rig.svc.start()
    try:
        # 'acme-{module}-svc' matches acme-[!p]* as written; acme-prod-payments-svc does not
        template = MAP + '  - name: acme-{module}-svc\n    paths: ["services/{module}/**"]\n'
        rig.push({MAP_PATH: template})
        head = rig.push({"services/prod-payments/a.py": "1", "services/billing/a.py": "1"})
        # the configuration's own template is the operator's: allow is not for it
        assert rig.started(head) == ["acme-billing-svc", "svc-billing-deploy",
                                     "svc-prod-payments-deploy"]
        (refused,) = rig.svc.events("module_map.refused")
        assert (refused["pipeline"], refused["commit"]) == ("acme-prod-payments-svc", head)
        assert refused["reason"] == "'acme-prod-payments-svc' is outside module_map.allow " \
            "(acme-[!p]*)"
        assert rig.svc.events("module_map.invalid") == []
        done = rig.svc.cli("history", "--commit", head, "--json")
        (record,) = [json.loads(line) for line in done.stdout.splitlines()]
        verdicts = {p["pipeline"]: p["verdict"] for p in record["pipelines"]}
        assert verdicts["acme-prod-payments-svc"] == "refused"
        state = {json.loads(line)["pipeline"] for line in rig.svc.cli("state").stdout
                 .splitlines()}
        assert "acme-prod-payments-svc" not in state  # no baseline for a refused name
    finally:
        rig.svc.stop()


# --- diff: git: a 20 MB map in the repository ---------------------------------------------------


def git_config(tmp_path: Path, server: GitServer, api_url: str) -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"lease_seconds": 3, "poll_seconds": 0.5, "max_attempts": 2,
                       "retry_backoff_seconds": 0.2},
        "git": {"cache_dir": str(tmp_path / "git-cache")},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url, "diff": "git",
            "git_url": server.url(REPO),
            "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
            "branches": ["master"],
            "module_map": {"path": MAP_PATH, "allow": ["acme-*"]},
            "pipelines": [{"name": "platform-deploy", "paths": ["platform/**"]}],
        }],
    }


def processed(svc: Service, head: str) -> None:
    svc.wait_for(lambda lines: any(e.get("event") == "delivery.processed"
                                   and e.get("head") == head for e in lines), timeout=90)


def started(svc: Service, head: str) -> list[str]:
    return sorted(e["pipeline"] for e in svc.events("pipeline.started") if e["commit"] == head)


def test_a_20_mb_map_with_diff_git_is_never_read_and_the_kept_map_is_used(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    server = GitServer(tmp_path / "server", {basic("x-access-token", TOKEN)})
    server.create(REPO)
    work = WorkClone(tmp_path / "work", server.url(REPO), basic("x-access-token", TOKEN))
    jobs = 'pipelines:\n  - name: acme-jobs\n    paths: ["jobs/**"]\n'
    root = work.commit({"platform/a.py": "0\n", "jobs/j.py": "0\n", MAP_PATH: jobs}, "root")
    valid = work.commit({"jobs/j.py": "1\n"}, "a job")
    rnd = random.Random(3)  # incompressible: 20 MB on the wire too
    huge = work.commit({MAP_PATH: "".join(rnd.choices(string.ascii_letters, k=20 << 20)),
                        "platform/a.py": "1\n", "jobs/j.py": "2\n"}, "a 20 MB map")
    work.push("master")
    svc = Service(git_config(tmp_path, server, fake_api.url), tmp_path,
                  env={"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": TOKEN}).start()
    try:
        assert deliver(svc, push_body(root, valid)).status_code == 202
        processed(svc, valid)
        assert started(svc, valid) == ["acme-jobs"]
        assert deliver(svc, push_body(valid, huge)).status_code == 202
        processed(svc, huge)
        assert started(svc, huge) == ["acme-jobs", "platform-deploy"]
        (invalid,) = svc.events("module_map.invalid")
        assert (invalid["errors"], invalid["kept"]) == (
            [f"{MAP_PATH}: {20 << 20} bytes; at most {MAX_FILE_BYTES}"], valid)
        # one attempt: a file over the cap is invalid, not unreadable (nothing to retry)
        (summary,) = [e for e in svc.events("delivery.processed") if e["head"] == huge]
        assert summary["attempt"] == 1
        assert svc.events("module_map.unreadable") == []
        state = {json.loads(line)["pipeline"] for line in svc.cli("state").stdout.splitlines()}
        assert state == {"acme-jobs", "platform-deploy"}
    finally:
        svc.stop()
        server.close()

"""Pull request validation's rules, each on its own: the summary (a pure function of the
stored state), admission at the route, the namespaces of a validation's start, outcomes
that move no baseline, the summary written only while it is still what the state derives,
the heal pass, the plan of a request, and ``explain --base`` offline."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from providers import build_providers
from providers.base import Diff
from receiver.config import ModuleMapConfig, parse
from receiver.decide import Decision
from receiver.effects import Bus
from receiver.events import PullRequestEvent
from receiver.launcher import StartRequest
from receiver.matcher import PathRules
from receiver.module_map import parse_file
from receiver.modules import ModuleMap, Selector
from receiver.outcomes import OutcomeRecorder
from receiver.planner import plan_pull_request
from receiver.state.base import Baseline, Execution, Validation, ValidationRun
from receiver.state.sqlite import SQLiteStore
from receiver.validation import (
    KIND,
    SUMMARY_STATUS,
    Summaries,
    SummaryHandler,
    admission,
    summarize,
)
from tests.gitserver import git
from tests.harness import FakeAPI

A, B, C = "a" * 40, "b" * 40, "c" * 40
REPO = "acme/mono"


def config(**pull_requests: Any) -> Any:
    return parse({"repositories": [{
        "provider": "github", "name": REPO, "api_url": "http://127.0.0.1:9",
        "webhook_secrets": ["env:V_SECRET"], "api_token": "env:V_TOKEN", "branches": ["main"],
        "commit_status": True,
        **({"pull_requests": {"targets": ["main"], **pull_requests}} if pull_requests
           or pull_requests == {} else {}),
        "pipelines": [{"name": "api-deploy", "paths": ["api/**"], "validate": "api-validate"}],
    }]})


def v(*runs: ValidationRun, state: str = "validating", **changes: Any) -> Validation:
    return Validation(repository=f"github:{REPO}", number=7, head=B, source_branch="x",
                      target_branch="main", state=state, runs=runs, **changes)  # type: ignore[arg-type]


RUN_A = ValidationRun("a-validate", "a-deploy", "xa")
RUN_B = ValidationRun("b-validate", "b-deploy", "xb")


# --- the summary -----------------------------------------------------------------------------

@pytest.mark.parametrize(("validation", "statuses", "state", "says"), [
    (v(), {}, "success", "no module is affected"),
    (v(RUN_A, RUN_B), {"a-validate": "InProgress", "b-validate": None}, "pending",
     "0 of 2 validations finished"),
    (v(RUN_A, RUN_B), {"a-validate": "Succeeded", "b-validate": "InProgress"}, "pending",
     "1 of 2"),
    (v(RUN_A, RUN_B), {"a-validate": "Succeeded", "b-validate": "Succeeded"}, "success",
     "all 2 validations succeeded"),
    (v(RUN_A), {"a-validate": "Succeeded"}, "success", "a-validate succeeded"),
    (v(RUN_A, RUN_B), {"a-validate": "InProgress", "b-validate": "Failed"}, "failure",
     "b-validate failed"),
    (v(RUN_A, RUN_B), {"a-validate": "Superseded", "b-validate": "Succeeded"}, "error",
     "a-validate was superseded"),
    (v(RUN_A, RUN_B), {"a-validate": "Stopped", "b-validate": "Failed"}, "failure",
     "b-validate failed"),
    (v(dataclasses.replace(RUN_A, execution_id=None, error="AccessDenied")), {}, "error",
     "was not started: AccessDenied"),
    (v(state="denied"), {}, "error", "pull requests from forks are not validated"),
    (v(state="waiting"), {}, "pending", "draft"),
    (v(RUN_A, state="failed", error="git fetch refused"), {"a-validate": "Succeeded"}, "error",
     "could not be validated: git fetch refused"),
])
def test_the_summary_follows_the_runs(validation: Validation, statuses: dict[str, str | None],
                                      state: str, says: str) -> None:
    found = summarize(validation, statuses)
    assert found is not None
    assert (found.state, says in found.description) == (state, True)


@pytest.mark.parametrize("ended", ["closed", "merged"])
def test_an_ended_request_gets_no_more_summary(ended: str) -> None:
    assert summarize(v(RUN_A, state=ended), {"a-validate": "InProgress"}) is None


def test_a_run_not_started_yet_is_never_a_success() -> None:
    found = summarize(v(dataclasses.replace(RUN_A, execution_id=None)), {"a-validate": None})
    assert found is not None and found.state == "pending"


# --- admission at the route ------------------------------------------------------------------

EVENT = PullRequestEvent("github", REPO, 7, "opened", "x", "main", B, A, "refs/pull/7/head")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "state.db"))
    s.init()
    yield s


@pytest.mark.parametrize(("cfg", "event", "stored", "reason"), [
    ({}, EVENT, None, None),
    (None, EVENT, None, "pull requests of this repository are not validated"),
    ({}, dataclasses.replace(EVENT, target_branch="dev"), None, "target branch not watched"),
    ({}, dataclasses.replace(EVENT, action="updated"), v(), "head did not change"),
    ({}, dataclasses.replace(EVENT, action="updated", head=C), v(), None),
    ({}, dataclasses.replace(EVENT, action="updated", head=B[:12]), v(),
     "head did not change"),
    ({}, dataclasses.replace(EVENT, action="ready"), v(), None),
    ({}, dataclasses.replace(EVENT, action="updated"), v(state="waiting"), None),
])
def test_a_request_event_is_admitted_unless_there_is_nothing_to_do(
        store: SQLiteStore, cfg: dict[str, Any] | None, event: PullRequestEvent,
        stored: Validation | None, reason: str | None) -> None:
    repo = _repo(cfg)
    if stored is not None:
        store.save_validation(stored)
    found = admission(store, repo, event)
    assert (found is None) if reason is None else (found is not None and reason in found)


def _repo(cfg: dict[str, Any] | None) -> Any:
    if cfg is None:
        return parse({"repositories": [{
            "provider": "github", "name": REPO, "webhook_secrets": ["env:V_SECRET"],
            "branches": ["main"], "pipelines": [{"name": "p", "paths": ["p/**"]}]}]}
        ).repositories[0]
    return config(**cfg).repositories[0]


# --- the namespace of a validation's start, and its outcome -------------------------------

def test_a_validation_and_a_deploy_of_one_commit_have_different_idempotency_tokens() -> None:
    deploy = StartRequest("web-deploy", B, "main", REPO)
    validation = dataclasses.replace(deploy, branch="x", validation=True)
    assert deploy.client_request_token != validation.client_request_token
    # the deploy's token is the one every earlier version derived: (pipeline, commit)
    import hashlib
    assert deploy.client_request_token == hashlib.sha256(f"web-deploy\0{B}".encode()).hexdigest()


@pytest.mark.parametrize(("pull_request", "moves"), [(7, False), (None, True)])
def test_a_validations_outcome_moves_no_baseline_and_no_deployed_commit(
        store: SQLiteStore, pull_request: int | None, moves: bool) -> None:
    cfg = config()
    key = f"github:{REPO}"
    store.advance_baseline(Baseline(key, "main", "web-deploy"), A, 1.0, execution_id="x0")
    row = store.baselines(key, "main")["web-deploy"]
    store.replace_baseline(row, dataclasses.replace(row, deployed_commit=A,
                                                    last_execution_status="Succeeded"))
    x = Execution("web-deploy", "x1", key, "main", C, started_at=5.0, status="Succeeded",
                  pull_request=pull_request)
    store.record_execution(x)
    OutcomeRecorder(store, cfg, Bus()).settle(x, 6.0)
    after = store.baselines(key, "main")["web-deploy"]
    assert (after.deployed_commit == C) is moves


# --- the summary is written only while it is what the state derives ------------------------

@pytest.fixture
def github_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    api.routes = _Statuses()
    yield api
    api.close()


class _Statuses(dict[str, Any]):
    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if "/statuses/" in path:
            return lambda rec: (201, json.loads(rec.body), {})
        return default


def _summaries(store: SQLiteStore, api: FakeAPI) -> tuple[Summaries, Any]:
    os.environ.setdefault("V_SECRET", "s")
    os.environ.setdefault("V_TOKEN", "t")
    cfg = parse({"repositories": [{
        "provider": "github", "name": REPO, "api_url": api.url, "commit_status": True,
        "webhook_secrets": ["env:V_SECRET"], "api_token": "env:V_TOKEN", "branches": ["main"],
        "pull_requests": {"targets": ["main"]},
        "pipelines": [{"name": "a-deploy", "paths": ["a/**"], "validate": "a-validate"}]}]})
    return Summaries(cfg, store, build_providers(), "us-east-1", clock=lambda: 100.0), \
        cfg.repositories[0]


def _writes(api: FakeAPI) -> list[tuple[str, str]]:
    return [(json.loads(r.body)["context"], json.loads(r.body)["state"])
            for r in api.requests if r.method == "POST"]


def _send_all(store: SQLiteStore, handler: SummaryHandler) -> None:
    for task in store.claim_tasks("t", 1e9, 60, 100):
        assert task.kind == KIND
        handler.send(task)
        store.finish_task(task, "t", "done", 1e9)


def test_a_pending_summary_recorded_before_the_outcome_is_not_written_after_it(
        store: SQLiteStore, github_api: FakeAPI) -> None:
    summaries, repo = _summaries(store, github_api)
    store.record_execution(Execution("a-validate", "xa", repo.key, "x", B, 1.0,
                                     pull_request=7))
    store.save_validation(v(RUN_A))
    summaries.refresh(repo, store.validation(repo.key, 7))  # type: ignore[arg-type]
    # the outcome arrives before the sender came to the pending task
    store.update_execution(store.execution("a-validate", "xa"),  # type: ignore[arg-type]
                           Execution("a-validate", "xa", repo.key, "x", B, 1.0,
                                     status="Succeeded", pull_request=7))
    summaries.refresh(repo, store.validation(repo.key, 7))  # type: ignore[arg-type]
    _send_all(store, SummaryHandler(summaries))
    assert _writes(github_api) == [(SUMMARY_STATUS, "success")]


def test_a_summary_of_an_old_head_is_not_written_once_the_request_moved_on(
        store: SQLiteStore, github_api: FakeAPI) -> None:
    summaries, repo = _summaries(store, github_api)
    store.save_validation(v())
    summaries.refresh(repo, store.validation(repo.key, 7))  # type: ignore[arg-type]
    stored = store.validation(repo.key, 7)
    assert stored is not None
    store.save_validation(dataclasses.replace(stored, head=C, generation=2))
    _send_all(store, SummaryHandler(summaries))
    assert _writes(github_api) == []


def test_the_heal_pass_writes_a_summary_an_interrupted_update_left_pending(
        store: SQLiteStore, github_api: FakeAPI) -> None:
    summaries, repo = _summaries(store, github_api)
    store.record_execution(Execution("a-validate", "xa", repo.key, "x", B, 1.0,
                                     status="Succeeded", pull_request=7))
    # stored as pending, and the outcome's own refresh was lost (a store error, a crash)
    store.save_validation(v(RUN_A, summary="pending"))
    assert summaries.heal(200.0) == 1
    _send_all(store, SummaryHandler(summaries))
    assert _writes(github_api) == [(SUMMARY_STATUS, "success")]
    healed = store.validation(repo.key, 7)
    assert healed is not None and healed.summary == "success"
    assert summaries.heal(300.0) == 0  # settled: nothing more to look at


# --- the plan of a request --------------------------------------------------------------------

MODULES = ModuleMap({"api": Selector(PathRules.compile(["api/**"]),
                                     (("common", PathRules.compile(["lib/**"])),)),
                     "web": Selector(PathRules.compile(["web/**"]))})


def test_a_request_is_planned_from_its_merge_base() -> None:
    asked: list[tuple[str, str]] = []

    def diff(base: str, head: str) -> Diff:
        asked.append((base, head))
        return Diff("ahead", frozenset({"lib/x.py"}))

    plan = plan_pull_request(MODULES, (), merge_base=A, head=B, diff=diff)
    assert asked == [(A, B)]
    assert {n: d.verdict for n, d in plan.decisions.items()} == {"api": "changed",
                                                                  "web": "unchanged"}
    assert plan.decisions["api"].via[0][0] == "common"


def test_a_request_with_no_merge_base_counts_every_pipeline_incomplete() -> None:
    plan = plan_pull_request(MODULES, (), merge_base=None, head=B, missing="unrelated",
                             diff=lambda base, head: pytest.fail("no difference is asked"))
    assert {d.verdict for d in plan.decisions.values()} == {"changed"}
    assert all(not d.complete and d.reason == "unrelated" for d in plan.decisions.values())


def test_a_head_contained_in_the_merge_base_changes_nothing() -> None:
    plan = plan_pull_request(MODULES, (), merge_base=B, head=B,
                             diff=lambda base, head: pytest.fail("no difference is asked"))
    assert {d.verdict for d in plan.decisions.values()} == {"contained"}
    assert all(isinstance(d, Decision) for d in plan.decisions.values())


# --- configuration ------------------------------------------------------------------------------

def test_a_template_validates_with_its_module_filled_in() -> None:
    cfg = parse({"repositories": [{
        "provider": "github", "name": REPO, "webhook_secrets": ["env:V_SECRET"],
        "branches": ["main"], "pipelines": [{"name": "svc-{module}-deploy",
                                             "paths": ["svc/{module}/**"],
                                             "validate": "svc-{module}-check"}]}]})
    template = cfg.repositories[0].pipelines[0]
    assert dataclasses.replace(template, name="svc-a-deploy", module="a").validate_name() == \
        "svc-a-check"


def test_a_module_map_file_may_not_name_a_validate_pipeline_outside_allow() -> None:
    text = yaml.safe_dump({"pipelines": [{"name": "acme-x", "paths": ["x/**"],
                                          "validate": "prod-admin"}]})
    found, problems = parse_file(text, ModuleMapConfig(path=".webhook-receiver.yaml",
                                                       allow=("acme-*",)))
    assert found is None
    assert problems == ["pipelines[0].validate: 'prod-admin' is not allowed here; "
                        "allowed: acme-*"]


# --- explain --base, offline ---------------------------------------------------------------------

def test_explain_plans_a_request_from_a_local_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git("init", "--quiet", "--initial-branch=main", str(clone))

    def commit(changes: dict[str, str]) -> str:
        for rel, content in changes.items():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            (clone / rel).write_text(content)
        git("add", "-A", cwd=clone)
        git("commit", "--quiet", "-m", "c", cwd=clone)
        return git("rev-parse", "HEAD", cwd=clone).strip()

    base = commit({"api/a.py": "1", "web/w.py": "1", "lib/l.py": "1"})
    git("checkout", "--quiet", "-b", "feature", cwd=clone)
    head = commit({"lib/l.py": "2"})
    git("checkout", "--quiet", "main", cwd=clone)
    commit({"web/w.py": "2"})  # the target moves on: not the request's change
    git("checkout", "--quiet", "feature", cwd=clone)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "repositories": [{"provider": "github", "name": REPO, "api_url": "http://127.0.0.1:9",
                          "webhook_secrets": ["env:NOT_SET_SECRET"], "branches": ["main"],
                          "pull_requests": {"targets": ["main"]},
                          "modules": {"common": {"paths": ["lib/**"]}},
                          "pipelines": [
                              {"name": "api-deploy", "paths": ["api/**"],
                               "depends_on": ["common"], "validate": "api-validate"},
                              {"name": "web-deploy", "paths": ["web/**"],
                               "validate": "web-validate"}]}]}))
    env = {k: val for k, val in os.environ.items() if not k.startswith("NOT_SET_")}
    done = subprocess.run([sys.executable, "-m", "receiver.cli", "explain", "--config",
                           str(cfg), "--repository", REPO, "--base", "main", "--to", "HEAD",
                           "--git-dir", str(clone), "--json"], capture_output=True, text=True,
                          env=env, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["merge_base"] == base
    assert report["to"] == "HEAD" and report["from"] == base
    assert report["would_validate"] == {"api-deploy": "api-validate"}
    assert report["changed_paths"] == {"lib/l.py": [{"pipeline": "api-deploy", "rule": "lib/**",
                                                     "via": "common"}]}
    assert head != base

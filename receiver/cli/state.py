"""``webhook-receiver state``: baselines; ``init``, ``seed`` and ``leases``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from typing import Any

from receiver import config as config_mod
from receiver import modules as modules_mod
from receiver.cli.base import Command, ExitCode, first_literal_branch, load_config, say
from receiver.errors import StateError
from receiver.state.base import Baseline, StateStore


class State(Command):
    """Print one JSON line per baseline, create the backend's tables (``init``), set
    baselines when adopting the service (``seed``), or list what is held (``leases``)."""

    name = "state"
    help = ("print baselines; 'state init' creates the backend; 'state seed' sets "
            "baselines when adopting the service; 'state leases' lists what is held")
    description = ("One JSON line per (repository, branch, pipeline); 'state init' creates "
                   "what the state backend needs (safe to run again); 'state seed' sets "
                   "baselines and deployed commits from each pipeline's newest Succeeded "
                   "execution or by hand; 'state leases' lists leases, refs being processed "
                   "and pipeline starts in flight with their owners and expiry, and the "
                   "backlog.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", nargs="?", choices=["init", "seed", "leases"],
                            help="init: create the DynamoDB table or the SQLite schema; seed: "
                                 "set baselines (with --from-executions, or --pipeline and "
                                 "--commit); leases: what each replica holds now")
        parser.add_argument("--branch", help="seed: the branch (default: the repository's "
                            "first literal name in branches)")
        parser.add_argument("--from-executions", action="store_true",
                            help="seed: from each pipeline's newest Succeeded execution")
        parser.add_argument("--pipeline", help="seed by hand: the pipeline")
        parser.add_argument("--commit", help="seed by hand: the deployed commit")

    def run(self, args: argparse.Namespace) -> int:
        from datetime import UTC, datetime

        from receiver.state import open_store

        cfg = load_config(args)
        if args.action == "seed":
            return seed(cfg, args)
        store = open_store(cfg.state)
        if args.action == "init":
            store.init()
            say(f"ok: state backend {cfg.state.backend} initialised")
            return ExitCode.SUCCESS
        if args.action == "leases":
            return leases(store)
        for b in store.all_baselines():
            print(json.dumps({
                "repository": b.repository, "branch": b.branch, "pipeline": b.pipeline,
                "baseline_commit": b.commit or None, "last_started_commit": b.last_started_commit,
                "last_execution_id": b.last_execution_id,
                "last_execution_status": b.last_execution_status,
                "deployed_commit": b.deployed_commit,
                "updated_at": datetime.fromtimestamp(b.updated_at, UTC).isoformat(),
            }))
        return ExitCode.SUCCESS


_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def seed(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """``state seed``: set baselines and deployed commits when adopting the service, from
    each pipeline's newest Succeeded execution or, with --pipeline and --commit, by hand."""
    from receiver.launcher import build_launcher
    from receiver.state import open_store

    if args.from_executions == bool(args.pipeline or args.commit) or \
            bool(args.pipeline) != bool(args.commit):
        say("error: give --from-executions, or both --pipeline and --commit", err=True)
        return ExitCode.USAGE
    if args.commit and not _COMMIT.fullmatch(args.commit):
        say("error: --commit must be a full commit id (40 or 64 hex digits)", err=True)
        return ExitCode.USAGE
    store = open_store(cfg.state)
    if cfg.state.backend == "sqlite":
        store.init()  # the embedded default needs no separate 'state init'
    launcher = build_launcher(cfg.launcher)
    seeded = 0
    for repo in cfg.repositories:
        branch = args.branch or first_literal_branch(repo)
        if branch is None:
            say(f"error: {repo.provider} {repo.name}: no literal branch name in branches; "
                "give --branch", err=True)
            return ExitCode.USAGE
        for pipeline in _chosen(repo, args.pipeline):
            line: dict[str, Any] = {"repository": repo.name, "branch": branch,
                                    "pipeline": pipeline.name}
            found = (args.commit, time.time(), None) if not args.from_executions \
                else _newest_success(launcher, pipeline)
            if found is None:
                print(json.dumps({**line, "seeded": False,
                                  "reason": "no Succeeded execution with a commit id"}))
                continue
            commit, started_at, execution_id = found
            _write(store, repo.key, branch, pipeline.name, commit, started_at, execution_id)
            print(json.dumps({**line, "seeded": True, "commit": commit,
                              "execution_id": execution_id}))
            seeded += 1
    if args.pipeline and not seeded:
        say(f"error: no configured pipeline named {args.pipeline!r}", err=True)
        return ExitCode.USAGE
    return ExitCode.SUCCESS


def _chosen(repo: config_mod.RepositoryConfig,
            name: str | None) -> list[config_mod.PipelineConfig]:
    """The pipelines to seed: every configured one, or the one named (a template's concrete
    pipeline included: templates are seeded by hand, by name)."""
    chosen = []
    for pipeline in repo.pipelines:
        if modules_mod.PLACEHOLDER in pipeline.name:
            found = repo.module_selectors().source(name) if name else None
            if found is None or found[0] != pipeline.name:
                continue
            pipeline = dataclasses.replace(pipeline, name=name or "", module=found[1])
        if name is None or pipeline.name == name:
            chosen.append(pipeline)
    return chosen


def _newest_success(launcher: Any, pipeline: config_mod.PipelineConfig
                    ) -> tuple[str, float, str] | None:
    """(commit, started at, execution id) of the pipeline's newest Succeeded execution, the
    commit its ``source_action`` (else any source) ran at; None when there is none."""
    success = launcher.latest_success(pipeline.name)
    if success is None:
        return None
    revisions = dict(success.revisions)
    commit = revisions.get(pipeline.source_action or "") or next(
        (rev for rev in revisions.values() if _COMMIT.fullmatch(rev)), None)
    return None if commit is None else (commit, success.started_at, success.execution_id)


def _write(store: StateStore, repository: str, branch: str, pipeline: str, commit: str,
           started_at: float, execution_id: str | None) -> None:
    """Set the baseline and deployed commit by compare-and-set against a running service."""
    now = time.time()
    for _ in range(10):
        current = store.baselines(repository, branch).get(pipeline) or \
            Baseline(repository, branch, pipeline)
        if current.version == 0:
            store.advance_baseline(current, commit, now)
            continue
        updated = dataclasses.replace(
            current, commit=commit, deployed_commit=commit, deployed_started_at=started_at,
            updated_at=now, last_execution_status="Succeeded" if execution_id
            else current.last_execution_status)
        if store.replace_baseline(current, updated):
            return
    # the service moved it every time: say so rather than claim it
    raise StateError(f"{pipeline} on {branch}: its baseline kept changing while it was "
                     "seeded; run state seed again")


def leases(store: StateStore) -> int:
    """What is held now: leases (one replica's periodic work), refs being processed and
    pipeline starts in flight, with owner and expiry; then the backlog."""
    import time
    from datetime import UTC, datetime

    now = time.time()
    for held in store.holdings(now):
        print(json.dumps({
            "kind": held.kind, "name": held.name, "owner": held.owner,
            "until": None if held.until is None
            else datetime.fromtimestamp(held.until, UTC).isoformat(),
            "expires_in_s": None if held.until is None else round(held.until - now, 1)}))
    waiting = store.backlog(now)
    print(json.dumps({"kind": "backlog", "pending_deliveries": waiting.deliveries,
                      "oldest_pending_seconds": round(now - (waiting.oldest_delivery or now), 1),
                      "pending_tasks": waiting.tasks}))
    return ExitCode.SUCCESS

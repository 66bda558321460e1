"""``webhook-receiver state``: baselines; ``init``, ``seed`` and ``leases``."""

from __future__ import annotations

import argparse
import json

from receiver import config as config_mod
from receiver import modules as modules_mod
from receiver.cli.base import Command, ExitCode, first_literal_branch, load_config, say
from receiver.errors import StateError
from receiver.state.base import StateStore


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


def seed(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """``state seed``: set baselines and deployed commits when adopting the service, from
    each pipeline's newest Succeeded execution or, with --pipeline and --commit, by hand."""
    import dataclasses
    import re
    import time

    from receiver.launcher import build_launcher
    from receiver.state import open_store
    from receiver.state.base import Baseline

    if args.from_executions == bool(args.pipeline or args.commit) or \
            bool(args.pipeline) != bool(args.commit):
        say("error: give --from-executions, or both --pipeline and --commit",
             err=True)
        return ExitCode.USAGE
    if args.commit and not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", args.commit):
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
        for pipeline in repo.pipelines:
            if modules_mod.PLACEHOLDER in pipeline.name:
                # a template stands for concrete pipelines: each is seeded by hand, by name
                found = repo.module_selectors().source(args.pipeline or "")
                if found is None or found[0] != pipeline.name:
                    continue
                pipeline = dataclasses.replace(pipeline, name=args.pipeline, module=found[1])
            if args.pipeline and pipeline.name != args.pipeline:
                continue
            commit, started_at, execution_id = args.commit, time.time(), None
            if args.from_executions:
                success = launcher.latest_success(pipeline.name)
                revisions = dict(success.revisions) if success else {}
                commit = revisions.get(pipeline.source_action or "") or next(
                    (rev for rev in revisions.values()
                     if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", rev)), None)
                if success is None or commit is None:
                    print(json.dumps({"repository": repo.name, "branch": branch,
                                      "pipeline": pipeline.name, "seeded": False,
                                      "reason": "no Succeeded execution with a commit id"}))
                    continue
                started_at, execution_id = success.started_at, success.execution_id
            now = time.time()
            for _ in range(10):  # compare-and-set against a running service
                current = store.baselines(repo.key, branch).get(pipeline.name) or \
                    Baseline(repo.key, branch, pipeline.name)
                if current.version == 0:
                    store.advance_baseline(current, commit, now)
                    continue
                updated = dataclasses.replace(
                    current, commit=commit, deployed_commit=commit,
                    deployed_started_at=started_at, updated_at=now,
                    last_execution_status="Succeeded" if execution_id else
                    current.last_execution_status)
                if store.replace_baseline(current, updated):
                    break
            else:  # the service moved it every time: say so rather than claim it
                raise StateError(f"{pipeline.name} on {branch}: its baseline kept changing "
                                 "while it was seeded; run state seed again")
            print(json.dumps({"repository": repo.name, "branch": branch,
                              "pipeline": pipeline.name, "seeded": True, "commit": commit,
                              "execution_id": execution_id}))
            seeded += 1
    if args.pipeline and not seeded:
        say(f"error: no configured pipeline named {args.pipeline!r}", err=True)
        return ExitCode.USAGE
    return ExitCode.SUCCESS


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

"""The ``webhook-receiver`` command: serve, check-config, explain, state, state init."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from receiver import config as config_mod
from receiver import modules as modules_mod
from receiver.errors import ConfigError, ProviderError, StateError
from receiver.secrets import SecretError

if TYPE_CHECKING:
    from receiver.state.base import DecisionRecord


def _load(path: str | None) -> config_mod.Config:
    return config_mod.load(config_mod.config_path(path))


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal could act on, or that could hide or
    reorder what is shown, written as a Python escape (``\\x1b``, ``\\u202e``).

    Those are the characters ``str.isprintable`` calls unprintable: C0 and C1 controls,
    DEL, the bidirectional controls (U+200E/F, U+202A-202E, U+2066-2069) and every other
    format character (zero-width ones, U+061C), line and paragraph separators, spaces
    other than the ASCII one, and unpaired surrogates (a file name that is not UTF-8).
    Newlines and tabs are escaped too: one call renders one line. Everything else,
    non-ASCII letters included, is kept as it is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _say(line: str = "", *, err: bool = False) -> None:
    """Print one line of text output through :func:`terminal_safe`: file and branch names,
    pipeline names from a module map, delivery ids and error messages all come from
    repositories and providers. (JSON output is printed as the json module writes it:
    ASCII only, every control and non-ASCII character a ``\\u`` escape.)"""
    print(terminal_safe(line), file=sys.stderr if err else sys.stdout)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the service under gunicorn (threaded workers, each with its background worker)."""
    from gunicorn.app.base import BaseApplication

    from receiver.app import create_app

    cfg = _load(args.config)
    # before forking: every worker inherits the values read, and a service that cannot
    # verify a delivery never starts (the other commands read no secret they do not use)
    config_mod.read_secrets(cfg)
    if cfg.state.backend == "sqlite":
        from receiver.state import open_store

        open_store(cfg.state).init()  # before forking, so workers never race on the schema

    from receiver import gunicorn_conf

    options: dict[str, Any] = {**vars(gunicorn_conf), "bind": args.bind,
                               "workers": args.workers, "threads": args.threads}

    class Server(BaseApplication):  # type: ignore[misc]
        receiver_config = cfg  # for gunicorn_conf.when_ready's service.started line

        def load_config(self) -> None:
            # the module's names that are gunicorn settings, as gunicorn's own -c would read
            for key, value in options.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(cfg)

    Server().run()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and report. With ``--online`` also check what it names:
    the state store answers, every pipeline exists, every repository's token can read it;
    every failure is printed (stderr), and any failure exits 2."""
    if args.module_map:
        return _check_module_map(args)
    cfg = _load(args.config)
    pipelines = sum(len(r.pipelines) for r in cfg.repositories)
    _say(f"ok: {cfg.source}: {len(cfg.repositories)} repositories, {pipelines} pipelines, "
         f"state {cfg.state.backend}, launcher {cfg.launcher.backend}")
    if not args.online:
        return 0
    failures = [*_check_state(cfg), *_check_pipelines(cfg), *_check_repositories(cfg)]
    for failure in failures:
        _say(f"error: {failure}", err=True)
    return 2 if failures else 0


def _check_state(cfg: config_mod.Config) -> list[str]:
    """The state store answers (its readiness check)."""
    from receiver.state import open_store

    where = cfg.state.path if cfg.state.backend == "sqlite" else f"table {cfg.state.table}"
    try:
        open_store(cfg.state).ping()
    except StateError as exc:
        return [f"state store {cfg.state.backend} {where}: {exc}"]
    _say(f"ok: state store {cfg.state.backend} {where} answers")
    return []


def _check_pipelines(cfg: config_mod.Config) -> list[str]:
    """``GetPipeline`` for every configured pipeline, through a client made as the launcher
    makes its own (same region, endpoint and credentials)."""
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    from receiver import aws
    from receiver.modules import PLACEHOLDER

    # validate pipelines too: a pull request must not find its validation missing
    every = list(dict.fromkeys(n for r in cfg.repositories for p in r.pipelines
                               for n in (p.name, p.validate) if n))
    # a template stands for pipelines found in pushes: none of them can be named here
    names = [n for n in every if PLACEHOLDER not in n]
    if len(names) < len(every):
        _say(f"skipped: {len(every) - len(names)} templates (their pipelines are found in "
             "pushes; an IAM name prefix covers them)")
    if cfg.launcher.backend != "codepipeline":
        _say(f"skipped: {len(names)} pipelines not looked up: launcher "
             f"{cfg.launcher.backend} starts none")
        return []
    client = aws.client("codepipeline", region_name=cfg.launcher.region,
                        endpoint_url=cfg.launcher.endpoint_url,
                        config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 3},
                                          connect_timeout=5, read_timeout=15))
    failures = []
    for name in names:
        try:
            client.get_pipeline(name=name)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            if code == "PipelineNotFoundException":
                failures.append(f"pipeline {name}: not found (GetPipeline)")
            else:
                message = str(exc.response.get("Error", {}).get("Message", ""))[:300]
                failures.append(f"pipeline {name}: {code} (GetPipeline): {message}")
        except BotoCoreError as exc:
            # no credentials, no region, endpoint unreachable: the same for every pipeline
            failures.append(f"pipelines: GetPipeline cannot be called ({type(exc).__name__}: "
                            f"{str(exc)[:300]})")
            return failures
    if not failures:
        _say(f"ok: {len(names)} pipelines exist")
    return failures


def _check_repositories(cfg: config_mod.Config) -> list[str]:
    """Each repository's token (or GitHub App) can read it: one GET of the repository."""
    from providers import build_providers
    from receiver.errors import ReceiverError, RepositoryUnreadable
    from receiver.secrets import SecretError

    providers = build_providers()
    failures = []
    for repo in cfg.repositories:
        try:
            providers[repo.provider].check_access(repo)
        except RepositoryUnreadable as exc:
            failures.append(f"repository {repo.provider} {repo.name}: {exc.cause}")
        except (ReceiverError, SecretError) as exc:
            failures.append(f"repository {repo.provider} {repo.name}: {exc}")
    if not failures:
        _say(f"ok: {len(cfg.repositories)} repositories readable")
    return failures


def _check_module_map(args: argparse.Namespace) -> int:
    from pathlib import Path

    from receiver.module_map import PipelineSet, parse_file

    try:
        content = Path(args.module_map).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{args.module_map}: cannot read ({exc.strerror})"]) from None
    chosen = args.config or os.environ.get("RECEIVER_CONFIG")
    repos: list[config_mod.RepositoryConfig | None] = \
        [r for r in _load(chosen).repositories if r.module_map] if chosen else []
    problems: list[str] = []
    found = None
    for repo in repos or [None]:
        allow = repo.module_map.allow if repo and repo.module_map else None
        found, errors = parse_file(content, allow, args.module_map,
                                   repo.module_selectors() if repo else None)
        if found is not None and repo is not None:
            _, errors = PipelineSet.of(repo).joined(found)
        where = f" (for {repo.provider} {repo.name})" if repo and len(repos) > 1 else ""
        problems.extend(f"{e}{where}" for e in errors if f"{e}{where}" not in problems)
    if problems or found is None:
        raise ConfigError(problems)
    templates = len(found.modules.templates)
    _say(f"ok: {args.module_map}: {len(found.pipelines)} pipelines ({templates} templates)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Dry run: changed paths between two commits, matching rules, what would start.

    The plan comes from :func:`receiver.planner.plan_push`, the function the service uses.
    The difference comes from the provider's compare API, or with ``--git-dir`` from a
    local clone (no API, no secret). Without ``--from`` each pipeline is compared from its
    stored baseline on ``--branch``, and one holding none (a template's new module) from
    the branch's last known head, as the next push would be.
    """
    from providers import build_providers
    from providers.base import Diff
    from receiver.decide import Base
    from receiver.gitdiff import local_changed_files, local_file_content, local_merge_base
    from receiver.module_map import PipelineSet, RepositoryMaps, Resolved, provider_source
    from receiver.planner import plan_pull_request, plan_push
    from receiver.state import open_store
    from receiver.state.base import Baseline

    cfg = _load(args.config)
    candidates = [r for r in cfg.repositories if r.name.casefold() == args.repository.casefold()
                  and (args.provider is None or r.provider == args.provider)]
    if len(candidates) != 1:
        what = "no" if not candidates else "more than one"
        _say(f"error: {what} configured repository named {args.repository!r}"
             + ("; add --provider" if candidates else ""), err=True)
        return 2
    repo = candidates[0]
    providers = build_providers()
    # the pipelines the service would use for a push of 'to' (a repository-side map included)
    resolved = Resolved(PipelineSet.of(repo))
    if repo.module_map:
        read = provider_source(providers) if not args.git_dir else (
            lambda _repo, path, commit: local_file_content(args.git_dir, path, commit))
        maps = RepositoryMaps(open_store(cfg.state), read, lambda: 0.0)
        try:
            resolved = maps.resolve(repo, args.to_sha, keep=False)
        except ValueError:
            _say("error: --to must be a full commit id to read the repository's module map",
                 err=True)
            return 2
    store = open_store(cfg.state)
    before: str | None = args.from_sha
    baselines: dict[str, Baseline] = {}  # with --from: every pipeline compared from it
    if args.from_sha is None and args.base is None:  # each from its stored baseline
        branch = args.branch or _first_literal_branch(repo)
        baselines = store.baselines(repo.key, branch or "")
        # a pipeline holding none (a template's new module, a new pipeline) is compared as
        # the next push's would be: from the branch's last known head
        head = store.heads(repo.key).get(branch or "")
        before = head.sha if head is not None else None
        missing = [n for n, sel in resolved.pipelines.modules.selectors.items()
                   if n not in baselines and not sel.discovers]
        if branch is None or (missing and before is None) or not (baselines or before):
            _say(f"error: no stored baseline on branch {branch!r} for "
                 f"{', '.join(missing) or 'any pipeline'}, and no known head to compare "
                 "the others from; give --from", err=True)
            return 2

    def difference(base: str, head: str) -> Diff:
        if args.git_dir:
            return local_changed_files(args.git_dir, base, head)
        return providers[repo.provider].changed_files(repo, base, head)

    merge_base: str | None = None
    if args.base is not None:  # a pull request into --base whose head is --to
        found = (local_merge_base(args.git_dir, args.base, args.to_sha) if args.git_dir
                 else providers[repo.provider].merge_base(repo, args.base, args.to_sha))
        merge_base = found[0] if isinstance(found, tuple) else found
        head_sha = found[1] if isinstance(found, tuple) else args.to_sha
        plan = plan_pull_request(resolved.pipelines.modules,
                                 store.baselines(repo.key, args.base), merge_base=merge_base,
                                 head=head_sha, diff=difference,
                                 missing=f"no merge base of {args.base} and {args.to_sha}")
    else:
        plan = plan_push(resolved.pipelines.modules, baselines, before=before,
                         head=args.to_sha, diff=difference, new_branch=repo.new_branch)
    decisions = plan.decisions
    # the differences from the bases (not those of the keep-newer step)
    diffs = {base: d for base, d in plan.diffs.items() if base in plan.groups}
    bases: dict[str, Base] = {n: b for b, group in plan.groups.items() for n in group}
    names = sorted(decisions)
    would_start = [n for n in names if decisions[n].verdict == "changed"]
    per_path: dict[str, list[dict[str, str]]] = {
        path: [] for d in diffs.values() if d.paths is not None for path in sorted(d.paths)}
    for name in would_start:
        for path, glob, via in decisions[name].selected():
            per_path[path].append({"pipeline": name, "rule": glob,
                                   **({"via": via} if via else {})})
    froms = {n: d.base for n, d in decisions.items()}
    single = len(set(bases.values())) == 1
    diff = next(iter(diffs.values()), None) if single else None
    report: dict[str, Any] = {
        "repository": repo.name, "provider": repo.provider,
        "from": next(iter(froms.values())) if single else froms, "to": args.to_sha,
        "compare": (diff.status if diff is not None else "identical") if single
        else {base: d.status for base, d in diffs.items()},
        "api_calls": plan.api_calls,
        "complete": all(d.complete for d in decisions.values()),
        "changed_paths": per_path, "would_start": would_start,
        "unchanged": [n for n in names if n not in would_start],
    }
    if args.base is not None:
        report["merge_base"] = merge_base
        report["would_validate"] = {
            name: target for name in would_start
            if (target := resolved.pipelines.pipeline(name).validate_name()) is not None}
    if resolved.problems:
        report["module_map_errors"] = list(resolved.problems)
    reasons = {d.reason for d in decisions.values() if not d.complete and d.reason}
    if all(d.verdict == "contained" for d in decisions.values()):
        report["note"] = "the 'to' commit is already contained in 'from': nothing starts"
    elif not report["complete"]:
        report.update(reason="; ".join(sorted(reasons)),
                      note="difference incomplete: every pipeline counts as changed")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _say(f"{repo.provider} {repo.name}: "
         + (f"{report['from']}" if single else "each pipeline's baseline")
         + f" -> {args.to_sha}" + (f" (local clone {args.git_dir})" if args.git_dir else ""))
    _say(f"compare: {report['compare']}, {len(per_path)} changed paths, "
         f"{report['api_calls']} API calls")
    if "note" in report:
        _say(f"note: {report['note']}" + (f" ({report['reason']})" if report.get("reason")
                                          else ""))
    for problem in resolved.problems:
        _say(f"module map invalid at 'to' (the last valid one is used): {problem}")
    for path, hits in per_path.items():
        rules = ", ".join(f"{h['pipeline']} ({h['rule']})"
                          + (f" via {h['via']}" if "via" in h else "")
                          for h in hits) or "no pipeline"
        _say(f"  {path}  ->  {rules}")
    if args.base is not None:
        _say(f"pull request into {args.base}: merge base {merge_base or '(none)'}")
        _say("would validate: " + (", ".join(f"{v} (for {n})" for n, v in
                                             report["would_validate"].items()) or "nothing"))
    _say("would start: " + (", ".join(would_start) or "nothing"))
    _say("unchanged:   " + (", ".join(report["unchanged"]) or "none"))
    return 0


def cmd_seed(cfg: config_mod.Config, args: argparse.Namespace) -> int:
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
        _say("error: give --from-executions, or both --pipeline and --commit",
             err=True)
        return 2
    if args.commit and not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", args.commit):
        _say("error: --commit must be a full commit id (40 or 64 hex digits)", err=True)
        return 2
    store = open_store(cfg.state)
    if cfg.state.backend == "sqlite":
        store.init()  # the embedded default needs no separate 'state init'
    launcher = build_launcher(cfg.launcher)
    seeded = 0
    for repo in cfg.repositories:
        branch = args.branch or _first_literal_branch(repo)
        if branch is None:
            _say(f"error: {repo.provider} {repo.name}: no literal branch name in branches; "
                 "give --branch", err=True)
            return 2
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
        _say(f"error: no configured pipeline named {args.pipeline!r}", err=True)
        return 2
    return 0


def _first_literal_branch(repo: config_mod.RepositoryConfig) -> str | None:
    """The repository's first branch rule without wildcards (``main`` of ``[main, release/*]``)."""
    return next((b for b in repo.branches.includes if not set(b) & set("*?[")), None)


def cmd_state(args: argparse.Namespace) -> int:
    """Print one JSON line per baseline, create the backend's tables (``init``), or set
    baselines when adopting the service (``seed``)."""
    from datetime import UTC, datetime

    from receiver.state import open_store

    cfg = _load(args.config)
    if args.action == "seed":
        return cmd_seed(cfg, args)
    store = open_store(cfg.state)
    if args.action == "init":
        store.init()
        _say(f"ok: state backend {cfg.state.backend} initialised")
        return 0
    if args.action == "leases":
        return _leases(store)
    for b in store.all_baselines():
        print(json.dumps({
            "repository": b.repository, "branch": b.branch, "pipeline": b.pipeline,
            "baseline_commit": b.commit or None, "last_started_commit": b.last_started_commit,
            "last_execution_id": b.last_execution_id,
            "last_execution_status": b.last_execution_status,
            "deployed_commit": b.deployed_commit,
            "updated_at": datetime.fromtimestamp(b.updated_at, UTC).isoformat(),
        }))
    return 0


def _leases(store: Any) -> int:
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
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Why did (or didn't) a pipeline run: decision records by pipeline, commit or delivery."""
    from receiver.state import open_store

    cfg = _load(args.config)
    store = open_store(cfg.state)
    pull_request = None
    if args.pull_request is not None:
        repos = [r for r in cfg.repositories if r.pull_requests is not None and (
            args.repository is None or r.name.casefold() == args.repository.casefold())]
        if len(repos) != 1:
            _say("error: --pull-request needs --repository naming one repository with "
                 "pull_requests", err=True)
            return 2
        pull_request = (repos[0].key, args.pull_request)
    records = store.history(delivery_id=args.delivery, commit=args.commit,
                            pipeline=args.pipeline, pull_request=pull_request,
                            limit=args.limit)
    for record in records:
        # how each start ended, as learnt since the record was written
        outcomes = {p.pipeline: x.status for p in record.pipelines if p.execution_id
                    and (x := store.execution(p.pipeline, p.execution_id)) is not None}
        if args.json:
            doc = record.to_dict()
            for entry in doc["pipelines"]:
                entry["outcome"] = outcomes.get(entry["pipeline"])
            print(json.dumps(doc, separators=(",", ":")))
        else:
            for line in _describe(record, outcomes):
                _say(line)
    if not records:
        _say("no decision recorded for that", err=True)
        return 1
    return 0


def _describe(record: DecisionRecord, outcomes: dict[str, str]) -> list[str]:
    """The text lines of one decision record (each printed through ``_say``)."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(record.recorded_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = "reconciler" if record.delivery_id.startswith("reconcile:") else "delivery"
    lines = [f"{when} {source} {record.delivery_id} ({record.provider} "
             f"{record.repository}, attempt {record.attempt}): {record.ref_type} "
             f"{record.ref} {_short(record.before)} -> {_short(record.head)}"]
    for p in record.pipelines:
        why = [f"baseline {_short(p.baseline)}",
               f"diff {p.diff}" + ("" if p.complete else " (incomplete)")]
        if p.reason:
            why.append(p.reason)
        if p.matched:
            # a third element names the dependency whose path brought the pipeline in
            shown = ", ".join(f"via {m[2]}: {m[0]} ({m[1]})" if len(m) > 2
                              else f"{m[0]} ({m[1]})" for m in p.matched[:3])
            more = p.matched_count - min(3, len(p.matched))
            why.append(f"matched {shown}" + (f" +{more} more" if more > 0 else ""))
        if p.execution_id:
            why.append(f"execution {p.execution_id}"
                       + (f" ({outcomes[p.pipeline]})" if p.pipeline in outcomes else ""))
        if p.error:
            why.append(f"error {p.error}")
        lines.append(f"  {p.pipeline}: {p.verdict}; " + "; ".join(why))
    if record.failure:
        lines.append(f"  failed: {record.failure}")
    if record.note:
        lines.append(f"  {record.note}")
    return lines


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs). Every option and command has help."""
    from providers import REGISTRY
    from receiver import __version__

    config_help = "the YAML configuration file (default: $RECEIVER_CONFIG)"
    parser = argparse.ArgumentParser(
        prog="webhook-receiver",
        description="Receive push webhooks and start exactly the AWS CodePipeline pipelines "
                    "whose monorepo modules changed.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="'webhook-receiver COMMAND --help' says more")

    serve = sub.add_parser("serve", help="run the service under gunicorn",
                           description="Run the service under gunicorn.")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--bind", default=os.environ.get("RECEIVER_BIND", "0.0.0.0:8080"),
                       help="HOST:PORT to listen on (default: $RECEIVER_BIND or %(default)s)")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", 2)),
                       help="gunicorn worker processes (default: $WEB_CONCURRENCY or "
                            "%(default)s)")
    serve.add_argument("--threads", type=int, default=int(os.environ.get("RECEIVER_THREADS", 4)),
                       help="request threads per worker (default: $RECEIVER_THREADS or "
                            "%(default)s)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config", help="validate the configuration (--online: and what it names)",
        description="Validate the configuration and print every error (exit 2). With "
                    "--online also check that the state store answers, that every pipeline "
                    "exists and that each repository's token can read it.")
    check.add_argument("--config", help=config_help)
    check.add_argument("--online", action="store_true",
                       help="also call the state store, CodePipeline (GetPipeline) and each "
                            "provider API; exit 2 naming every failure")
    check.add_argument("--module-map", metavar="FILE",
                       help="validate a repository-side module map file (for the monorepo's "
                            "own CI) instead of the configuration")
    check.set_defaults(func=cmd_check_config)

    explain = sub.add_parser(
        "explain", help="what would start between two commits (dry run)",
        description="Dry run: the changed paths between two commits, which rule of which "
                    "pipeline each matched, and what would start.")
    explain.add_argument("--config", help=config_help)
    explain.add_argument("--repository", required=True,
                         help="the repository's configured name, e.g. acme/mono")
    explain.add_argument("--provider", choices=sorted(REGISTRY),
                         help="the provider, when two repositories share the name")
    base = explain.add_mutually_exclusive_group()
    base.add_argument("--from", dest="from_sha",
                      help="the commit to compare from (default: each pipeline's stored "
                           "baseline on --branch)")
    base.add_argument("--base", help="plan a pull request into this target branch whose head "
                      "is --to: the difference from their merge base, and the validate "
                      "pipelines that would start")
    explain.add_argument("--branch", help="with no --from: the branch whose baselines to use "
                         "(default: the repository's first literal name in branches)")
    explain.add_argument("--git-dir", help="compute the difference in this local clone "
                         "instead of through the provider's API (no secret needed)")
    explain.add_argument("--to", dest="to_sha", required=True,
                         help="the commit to compare to (a pushed head)")
    explain.add_argument("--json", action="store_true", help="print the report as JSON")
    explain.set_defaults(func=cmd_explain)

    history = sub.add_parser(
        "history", help="why a pipeline did or did not start",
        description="The decision records of deliveries, by pipeline, commit or delivery.")
    history.add_argument("--config", help=config_help)
    which = history.add_mutually_exclusive_group(required=True)
    which.add_argument("--pipeline", help="the records that decided about this pipeline")
    which.add_argument("--commit", help="the records of pushes whose head is this commit")
    which.add_argument("--delivery", help="the records of this provider delivery id")
    which.add_argument("--pull-request", type=int, metavar="N",
                       help="the records of pull (merge) request N: why each validate "
                            "pipeline ran")
    history.add_argument("--repository", help="with --pull-request: the repository's "
                         "configured name (needed when several validate pull requests)")
    history.add_argument("--limit", type=int, default=20,
                         help="at most this many records, newest first (default: %(default)s)")
    history.add_argument("--json", action="store_true", help="one JSON record per line")
    history.set_defaults(func=cmd_history)

    state = sub.add_parser(
        "state", help="print baselines; 'state init' creates the backend; 'state seed' sets "
                      "baselines when adopting the service; 'state leases' lists what is held",
        description="One JSON line per (repository, branch, pipeline); 'state init' creates "
                    "what the state backend needs (safe to run again); 'state seed' sets "
                    "baselines and deployed commits from each pipeline's newest Succeeded "
                    "execution or by hand; 'state leases' lists leases, refs being processed "
                    "and pipeline starts in flight with their owners and expiry, and the "
                    "backlog.")
    state.add_argument("action", nargs="?", choices=["init", "seed", "leases"],
                       help="init: create the DynamoDB table or the SQLite schema; seed: set "
                            "baselines (with --from-executions, or --pipeline and --commit); "
                            "leases: what each replica holds now")
    state.add_argument("--config", help=config_help)
    state.add_argument("--branch", help="seed: the branch (default: the repository's first "
                       "literal name in branches)")
    state.add_argument("--from-executions", action="store_true",
                       help="seed: from each pipeline's newest Succeeded execution")
    state.add_argument("--pipeline", help="seed by hand: the pipeline")
    state.add_argument("--commit", help="seed by hand: the deployed commit")
    state.set_defaults(func=cmd_state)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _say("configuration error:", err=True)
        for problem in exc.problems:
            _say(f"  {problem}", err=True)
        return 2
    except (ProviderError, StateError, SecretError) as exc:  # SecretError: explain's token
        _say(f"error: {exc}", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

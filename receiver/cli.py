"""The ``webhook-receiver`` command: serve, check-config, explain, state, state init."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from receiver import config as config_mod
from receiver.errors import ConfigError, ProviderError, StateError


def _load(path: str | None) -> config_mod.Config:
    return config_mod.load(config_mod.config_path(path))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the service under gunicorn (threaded workers, each with its background worker)."""
    from gunicorn.app.base import BaseApplication

    from receiver.app import create_app

    cfg = _load(args.config)
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
    cfg = _load(args.config)
    pipelines = sum(len(r.pipelines) for r in cfg.repositories)
    print(f"ok: {cfg.source}: {len(cfg.repositories)} repositories, {pipelines} pipelines, "
          f"state {cfg.state.backend}, launcher {cfg.launcher.backend}")
    if not args.online:
        return 0
    failures = [*_check_state(cfg), *_check_pipelines(cfg), *_check_repositories(cfg)]
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 2 if failures else 0


def _check_state(cfg: config_mod.Config) -> list[str]:
    """The state store answers (its readiness check)."""
    from receiver.state import open_store

    where = cfg.state.path if cfg.state.backend == "sqlite" else f"table {cfg.state.table}"
    try:
        open_store(cfg.state).ping()
    except StateError as exc:
        return [f"state store {cfg.state.backend} {where}: {exc}"]
    print(f"ok: state store {cfg.state.backend} {where} answers")
    return []


def _check_pipelines(cfg: config_mod.Config) -> list[str]:
    """``GetPipeline`` for every configured pipeline, through a client made as the launcher
    makes its own (same region, endpoint and credentials)."""
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    from receiver import aws

    names = list(dict.fromkeys(p.name for r in cfg.repositories for p in r.pipelines))
    if cfg.launcher.backend != "codepipeline":
        print(f"skipped: {len(names)} pipelines not looked up: launcher "
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
        print(f"ok: {len(names)} pipelines exist")
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
        print(f"ok: {len(cfg.repositories)} repositories readable")
    return failures


def cmd_explain(args: argparse.Namespace) -> int:
    """Dry run: changed paths between two commits, matching rules, what would start."""
    from providers import build_providers
    from receiver.matcher import match

    cfg = _load(args.config)
    candidates = [r for r in cfg.repositories if r.name.casefold() == args.repository.casefold()
                  and (args.provider is None or r.provider == args.provider)]
    if len(candidates) != 1:
        what = "no" if not candidates else "more than one"
        print(f"error: {what} configured repository named {args.repository!r}"
              + ("; add --provider" if candidates else ""), file=sys.stderr)
        return 2
    repo = candidates[0]
    provider = build_providers()[repo.provider]
    diff = provider.changed_files(repo, args.from_sha, args.to_sha)
    names = [p.name for p in repo.pipelines]
    report: dict[str, Any] = {"repository": repo.name, "provider": repo.provider,
                              "from": args.from_sha, "to": args.to_sha, "compare": diff.status,
                              "api_calls": diff.api_calls}
    if diff.contained:
        report.update(complete=True, changed_paths={}, would_start=[], unchanged=names,
                      note="the 'to' commit is already contained in 'from': nothing starts")
    elif diff.paths is None:
        report.update(complete=False, reason=diff.reason, changed_paths={}, would_start=names,
                      unchanged=[], note="difference incomplete: every pipeline counts as changed")
    else:
        matched = match(sorted(diff.paths), {p.name: p.paths for p in repo.pipelines})
        per_path: dict[str, list[dict[str, str]]] = {path: [] for path in sorted(diff.paths)}
        for pipeline, hits in matched.items():
            for hit in hits:
                per_path[hit.path].append({"pipeline": pipeline, "rule": hit.glob})
        report.update(complete=True, changed_paths=per_path,
                      would_start=[n for n in names if n in matched],
                      unchanged=[n for n in names if n not in matched])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{repo.provider} {repo.name}: {args.from_sha} -> {args.to_sha}")
    print(f"compare: {diff.status}, {len(report['changed_paths'])} changed paths, "
          f"{diff.api_calls} API calls")
    if "note" in report:
        print(f"note: {report['note']}" + (f" ({diff.reason})" if diff.reason else ""))
    for path, hits in report["changed_paths"].items():
        rules = ", ".join(f"{h['pipeline']} ({h['rule']})" for h in hits) or "no pipeline"
        print(f"  {path}  ->  {rules}")
    print("would start: " + (", ".join(report["would_start"]) or "nothing"))
    print("unchanged:   " + (", ".join(report["unchanged"]) or "none"))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    """Print one JSON line per baseline, or create the backend's tables with ``init``."""
    from datetime import UTC, datetime

    from receiver.state import open_store

    cfg = _load(args.config)
    store = open_store(cfg.state)
    if args.action == "init":
        store.init()
        print(f"ok: state backend {cfg.state.backend} initialised")
        return 0
    for b in store.all_baselines():
        print(json.dumps({
            "repository": b.repository, "branch": b.branch, "pipeline": b.pipeline,
            "baseline_commit": b.commit or None, "last_started_commit": b.last_started_commit,
            "last_execution_id": b.last_execution_id,
            "updated_at": datetime.fromtimestamp(b.updated_at, UTC).isoformat(),
        }))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Why did (or didn't) a pipeline run: decision records by pipeline, commit or delivery."""
    from receiver.state import open_store

    cfg = _load(args.config)
    records = open_store(cfg.state).history(delivery_id=args.delivery, commit=args.commit,
                                            pipeline=args.pipeline, limit=args.limit)
    for record in records:
        if args.pipeline:
            record["pipelines"] = [p for p in record["pipelines"]
                                   if p["pipeline"] == args.pipeline]
        if args.json:
            print(json.dumps(record, separators=(",", ":")))
        else:
            print(_describe(record))
    if not records:
        print("no decision recorded for that", file=sys.stderr)
        return 1
    return 0


def _describe(record: dict[str, Any]) -> str:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(record["recorded_at"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"{when} delivery {record['delivery_id']} ({record['provider']} "
             f"{record['repository']}, attempt {record['attempt']}): {record['ref_type']} "
             f"{record['ref']} {_short(record['before'])} -> {_short(record['head'])}"]
    for p in record["pipelines"]:
        why = [f"baseline {_short(p['baseline'])}", f"diff {p['diff']}"
               + ("" if p["complete"] else " (incomplete)")]
        if p["reason"]:
            why.append(p["reason"])
        if p["matched"]:
            shown = ", ".join(f"{path} ({glob})" for path, glob in p["matched"][:3])
            more = p["matched_count"] - min(3, len(p["matched"]))
            why.append(f"matched {shown}" + (f" +{more} more" if more > 0 else ""))
        if p["execution_id"]:
            why.append(f"execution {p['execution_id']}")
        if p["error"]:
            why.append(f"error {p['error']}")
        lines.append(f"  {p['pipeline']}: {p['verdict']}; " + "; ".join(why))
    return "\n".join(lines)


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs). Every option and command has help."""
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
    check.set_defaults(func=cmd_check_config)

    explain = sub.add_parser(
        "explain", help="what would start between two commits (dry run)",
        description="Dry run: the changed paths between two commits, which rule of which "
                    "pipeline each matched, and what would start.")
    explain.add_argument("--config", help=config_help)
    explain.add_argument("--repository", required=True,
                         help="the repository's configured name, e.g. acme/mono")
    explain.add_argument("--provider", choices=config_mod.PROVIDERS,
                         help="the provider, when two repositories share the name")
    explain.add_argument("--from", dest="from_sha", required=True,
                         help="the commit to compare from (a baseline)")
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
    history.add_argument("--limit", type=int, default=20,
                         help="at most this many records, newest first (default: %(default)s)")
    history.add_argument("--json", action="store_true", help="one JSON record per line")
    history.set_defaults(func=cmd_history)

    state = sub.add_parser(
        "state", help="print baselines; 'state init' creates the backend",
        description="One JSON line per (repository, branch, pipeline); 'state init' creates "
                    "what the state backend needs (safe to run again).")
    state.add_argument("action", nargs="?", choices=["init"],
                       help="init: create the DynamoDB table or the SQLite schema")
    state.add_argument("--config", help=config_help)
    state.set_defaults(func=cmd_state)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except (ProviderError, StateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

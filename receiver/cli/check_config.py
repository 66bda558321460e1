"""``webhook-receiver check-config``: validate the configuration (and, online, what it names)."""

from __future__ import annotations

import argparse
import os

from receiver import config as config_mod
from receiver.cli.base import Command, ExitCode, load_config, say
from receiver.errors import ConfigError, StateError


class CheckConfig(Command):
    """Validate the configuration and report. With ``--online`` also check what it names:
    the state store answers, every pipeline exists, every repository's token can read it;
    every failure is printed (stderr), and any failure exits 2."""

    name = "check-config"
    help = "validate the configuration (--online: and what it names)"
    description = ("Validate the configuration and print every error (exit 2). With "
                   "--online also check that the state store answers, that every pipeline "
                   "exists and that each repository's token can read it.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--online", action="store_true",
                            help="also call the state store, CodePipeline (GetPipeline) and "
                                 "each provider API; exit 2 naming every failure")
        parser.add_argument("--module-map", metavar="FILE",
                            help="validate a repository-side module map file (for the "
                                 "monorepo's own CI) instead of the configuration")

    def run(self, args: argparse.Namespace) -> int:
        if args.module_map:
            return _check_module_map(args)
        cfg = load_config(args)
        pipelines = sum(len(r.pipelines) for r in cfg.repositories)
        say(f"ok: {cfg.source}: {len(cfg.repositories)} repositories, {pipelines} pipelines, "
            f"state {cfg.state.backend}, launcher {cfg.launcher.backend}")
        if not args.online:
            return ExitCode.SUCCESS
        failures = [*_check_state(cfg), *_check_pipelines(cfg), *_check_repositories(cfg)]
        for failure in failures:
            say(f"error: {failure}", err=True)
        return ExitCode.USAGE if failures else ExitCode.SUCCESS


def _check_state(cfg: config_mod.Config) -> list[str]:
    """The state store answers (its readiness check)."""
    from receiver.state import open_store

    where = cfg.state.path if cfg.state.backend == "sqlite" else f"table {cfg.state.table}"
    try:
        open_store(cfg.state).ping()
    except StateError as exc:
        return [f"state store {cfg.state.backend} {where}: {exc}"]
    say(f"ok: state store {cfg.state.backend} {where} answers")
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
        say(f"skipped: {len(every) - len(names)} templates (their pipelines are found in "
             "pushes; an IAM name prefix covers them)")
    if cfg.launcher.backend != "codepipeline":
        say(f"skipped: {len(names)} pipelines not looked up: launcher "
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
        say(f"ok: {len(names)} pipelines exist")
    return failures


def _check_repositories(cfg: config_mod.Config) -> list[str]:
    """Each repository's token (or GitHub App) can read it: one GET of the repository."""
    from providers import build_providers
    from receiver.errors import ReceiverError, RepositoryUnreadable, SecretError

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
        say(f"ok: {len(cfg.repositories)} repositories readable")
    return failures


def _check_module_map(args: argparse.Namespace) -> int:
    from pathlib import Path

    from receiver.module_map import PipelineSet, parse_file

    try:
        content = Path(args.module_map).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{args.module_map}: cannot read ({exc.strerror})"]) from None
    chosen = args.config or os.environ.get("RECEIVER_CONFIG")
    every = config_mod.load(chosen).repositories if chosen else ()
    repos: list[config_mod.RepositoryConfig | None] = [r for r in every if r.module_map]
    problems: list[str] = []
    found = None
    for repo in repos or [None]:
        # the service also refuses names of other repositories' kept maps (in its store)
        reserved = [(f"repository {r.name}'s configuration", r.module_selectors())
                    for r in every if repo is not None and r.key != repo.key]
        found, errors = parse_file(content, repo.module_map if repo else None,
                                   source=args.module_map,
                                   configured=repo.module_selectors() if repo else None,
                                   reserved=reserved)
        if found is not None and repo is not None:
            _, errors = PipelineSet.of(repo).joined(found)
        where = f" (for {repo.provider} {repo.name})" if repo and len(repos) > 1 else ""
        problems.extend(f"{e}{where}" for e in errors if f"{e}{where}" not in problems)
    if problems or found is None:
        raise ConfigError(problems)
    templates = len(found.graph.templates)
    say(f"ok: {args.module_map}: {len(found.pipelines)} pipelines ({templates} templates)")
    return ExitCode.SUCCESS

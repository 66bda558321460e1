"""``webhook-receiver explain``: what a push would start, planned as the service plans it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from providers.base import Diff
from receiver.cli.base import Command, ExitCode, first_literal_branch, load_config, say
from receiver.config import Config, RepositoryConfig
from receiver.gitdiff import local_changed_files, local_file_content, local_merge_base
from receiver.module_map import PipelineSet, RepositoryMaps, Resolved, provider_source
from receiver.planner import PushPlan
from receiver.state import open_store
from receiver.state.base import Baseline


class Explain(Command):
    """Dry run: the changed paths between two commits, the rules they matched, what would
    start (see :func:`explain`)."""

    name = "explain"
    help = "what would start between two commits (dry run)"
    description = ("Dry run: the changed paths between two commits, which rule of which "
                   "pipeline each matched, and what would start.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        from providers import REGISTRY

        parser.add_argument("--repository", required=True,
                            help="the repository's configured name, e.g. acme/mono")
        parser.add_argument("--provider", choices=sorted(REGISTRY),
                            help="the provider, when two repositories share the name")
        base = parser.add_mutually_exclusive_group()
        base.add_argument("--from", dest="from_sha",
                          help="the commit to compare from (default: each pipeline's stored "
                               "baseline on --branch)")
        base.add_argument("--base", help="plan a pull request into this target branch whose "
                          "head is --to: the difference from their merge base, and the "
                          "validate pipelines that would start")
        parser.add_argument("--branch", help="with no --from: the branch whose baselines to "
                            "use (default: the repository's first literal name in branches)")
        parser.add_argument("--git-dir", help="compute the difference in this local clone "
                            "instead of through the provider's API (no secret needed)")
        parser.add_argument("--to", dest="to_sha", required=True,
                            help="the commit to compare to (a pushed head)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        return explain(args)


class _Refused(Exception):
    """What the command line asks cannot be explained (the message says why)."""


def explain(args: argparse.Namespace) -> int:
    """Dry run: changed paths between two commits, matching rules, what would start.

    The plan comes from :func:`receiver.planner.plan_push`, the function the service uses.
    The difference comes from the provider's compare API, or with ``--git-dir`` from a
    local clone (no API, no secret). Without ``--from`` each pipeline is compared from its
    stored baseline on ``--branch``, and one holding none (a template's new module) from
    the branch's last known head, as the next push would be.
    """
    from providers import build_providers
    from receiver.planner import plan_push

    cfg = load_config(args)
    providers = build_providers()
    try:
        repo = _repository(cfg, args)
        resolved = _pipelines(cfg, repo, providers, args)
        baselines, before = _bases(cfg, repo, resolved, args)
    except _Refused as exc:
        say(f"error: {exc}", err=True)
        return ExitCode.USAGE

    def difference(base: str, head: str) -> Diff:
        if args.git_dir:
            return local_changed_files(args.git_dir, base, head)
        return providers[repo.provider].changed_files(repo, base, head)

    if args.base is not None:  # a pull request into --base whose head is --to
        plan, merge_base = _pull_request_plan(cfg, repo, resolved, providers, args, difference)
    else:
        plan = plan_push(resolved.pipelines.modules, baselines, before=before,
                         head=args.to_sha, diff=difference, new_branch=repo.new_branch)
    report = _report(repo, args.to_sha, plan, resolved.problems)
    if args.base is not None:
        report["merge_base"] = merge_base
        report["would_validate"] = {
            name: target for name in report["would_start"]
            if (target := resolved.pipelines.pipeline(name).validate_name()) is not None}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report, repo, args)
    return ExitCode.SUCCESS


def _repository(cfg: Config, args: argparse.Namespace) -> RepositoryConfig:
    """The one configured repository ``--repository`` (and ``--provider``) names."""
    candidates = [r for r in cfg.repositories if r.name.casefold() == args.repository.casefold()
                  and (args.provider is None or r.provider == args.provider)]
    if len(candidates) != 1:
        what = "no" if not candidates else "more than one"
        raise _Refused(f"{what} configured repository named {args.repository!r}"
                       + ("; add --provider" if candidates else ""))
    return candidates[0]


def _pipelines(cfg: Config, repo: RepositoryConfig, providers: Mapping[str, Any],
               args: argparse.Namespace) -> Resolved:
    """The pipelines the service would use for a push of ``--to`` (a repository-side map
    included, read from the clone with ``--git-dir``)."""
    if not repo.module_map:
        return Resolved(PipelineSet.of(repo))
    read = provider_source(providers) if not args.git_dir else (
        lambda _repo, path, commit: local_file_content(args.git_dir, path, commit))
    maps = RepositoryMaps(open_store(cfg.state), read, lambda: 0.0, cfg.repositories)
    try:
        return maps.resolve(repo, args.to_sha, keep=False)
    except ValueError:
        raise _Refused("--to must be a full commit id to read the repository's module "
                       "map") from None


def _bases(cfg: Config, repo: RepositoryConfig, resolved: Resolved,
           args: argparse.Namespace) -> tuple[dict[str, Baseline], str | None]:
    """(the stored baselines, the push's ``before``) to plan from: with ``--from``, none
    and ``--from`` itself; else the branch's baselines and its last known head."""
    if args.from_sha is not None or args.base is not None:  # no stored baselines needed
        return {}, args.from_sha
    store = open_store(cfg.state)
    branch = args.branch or first_literal_branch(repo)
    baselines = store.baselines(repo.key, branch or "")
    # a pipeline holding none (a template's new module, a new pipeline) is compared as
    # the next push's would be: from the branch's last known head
    head = store.heads(repo.key).get(branch or "")
    before = head.sha if head is not None else None
    missing = [n for n, sel in resolved.pipelines.modules.selectors.items()
               if n not in baselines and not sel.discovers]
    if branch is None or (missing and before is None) or not (baselines or before):
        raise _Refused(f"no stored baseline on branch {branch!r} for "
                       f"{', '.join(missing) or 'any pipeline'}, and no known head to "
                       "compare the others from; give --from")
    return baselines, before


def _pull_request_plan(cfg: Config, repo: RepositoryConfig, resolved: Resolved,
                       providers: Mapping[str, Any], args: argparse.Namespace,
                       difference: Callable[[str, str], Diff]) -> tuple[PushPlan, str | None]:
    """The plan of a pull request into ``--base`` whose head is ``--to``: from the merge
    base (the local clone's, or the provider's), as the service would validate it."""
    from receiver.planner import plan_pull_request

    found = (local_merge_base(args.git_dir, args.base, args.to_sha) if args.git_dir
             else providers[repo.provider].merge_base(repo, args.base, args.to_sha))
    merge_base = found[0] if isinstance(found, tuple) else found
    head = found[1] if isinstance(found, tuple) else args.to_sha
    plan = plan_pull_request(resolved.pipelines.modules,
                             open_store(cfg.state).baselines(repo.key, args.base),
                             merge_base=merge_base, head=head, diff=difference,
                             missing=f"no merge base of {args.base} and {args.to_sha}")
    return plan, merge_base


def _report(repo: RepositoryConfig, to: str, plan: PushPlan,
            map_problems: Sequence[str]) -> dict[str, Any]:
    """The report (``--json`` prints it as it is): bases, comparisons, every changed path
    with the pipelines and rules it selected, what would start and what would not."""
    decisions = plan.decisions
    # the differences from the bases (not those of the keep-newer step)
    diffs = {base: d for base, d in plan.diffs.items() if base in plan.groups}
    single = len(plan.groups) == 1
    names = sorted(decisions)
    would_start = [n for n in names if decisions[n].verdict == "changed"]
    froms = {n: d.base for n, d in decisions.items()}
    diff = next(iter(diffs.values()), None)
    report: dict[str, Any] = {
        "repository": repo.name, "provider": repo.provider,
        "from": next(iter(froms.values()), None) if single else froms, "to": to,
        "compare": (diff.status if diff is not None else "identical") if single
        else {base: d.status for base, d in diffs.items()},
        "api_calls": plan.api_calls,
        "complete": all(d.complete for d in decisions.values()),
        "changed_paths": _changed_paths(diffs.values(), plan, would_start),
        "would_start": would_start,
        "unchanged": [n for n in names if decisions[n].verdict in ("unchanged", "contained")],
    }
    refused = [n for n in names if decisions[n].verdict == "refused"]
    if refused:
        report["refused"] = {n: decisions[n].reason for n in refused}
    if map_problems:
        report["module_map_errors"] = list(map_problems)
    reasons = {d.reason for d in decisions.values() if not d.complete and d.reason}
    if all(d.verdict == "contained" for d in decisions.values()):
        report["note"] = "the 'to' commit is already contained in 'from': nothing starts"
    elif not report["complete"]:
        report.update(reason="; ".join(sorted(reasons)),
                      note="difference incomplete: every pipeline counts as changed")
    return report


def _changed_paths(diffs: Iterable[Diff], plan: PushPlan,
                   would_start: list[str]) -> dict[str, list[dict[str, str]]]:
    """Every changed path, sorted, with the pipelines (and rules, and dependencies) it
    selected among those that would start."""
    per_path: dict[str, list[dict[str, str]]] = {
        path: [] for d in diffs if d.paths is not None for path in sorted(d.paths)}
    for name in would_start:
        for path, glob, via in plan.decisions[name].selected():
            per_path[path].append({"pipeline": name, "rule": glob,
                                   **({"via": via} if via else {})})
    return per_path


def _print(report: dict[str, Any], repo: RepositoryConfig, args: argparse.Namespace) -> None:
    """The report as text lines."""
    single = not isinstance(report["from"], dict)
    say(f"{repo.provider} {repo.name}: "
        + (f"{report['from']}" if single else "each pipeline's baseline")
        + f" -> {args.to_sha}" + (f" (local clone {args.git_dir})" if args.git_dir else ""))
    say(f"compare: {report['compare']}, {len(report['changed_paths'])} changed paths, "
        f"{report['api_calls']} API calls")
    if "note" in report:
        say(f"note: {report['note']}" + (f" ({report['reason']})" if report.get("reason")
                                         else ""))
    for problem in report.get("module_map_errors", ()):
        say(f"module map invalid at 'to' (the last valid one is used): {problem}")
    for path, hits in report["changed_paths"].items():
        rules = ", ".join(f"{h['pipeline']} ({h['rule']})"
                          + (f" via {h['via']}" if "via" in h else "")
                          for h in hits) or "no pipeline"
        say(f"  {path}  ->  {rules}")
    if args.base is not None:
        say(f"pull request into {args.base}: merge base {report['merge_base'] or '(none)'}")
        say("would validate: " + (", ".join(f"{v} (for {n})" for n, v in
                                          report["would_validate"].items()) or "nothing"))
    say("would start: " + (", ".join(report["would_start"]) or "nothing"))
    say("unchanged:   " + (", ".join(report["unchanged"]) or "none"))
    for name, reason in report.get("refused", {}).items():
        say(f"refused:     {name} ({reason})")

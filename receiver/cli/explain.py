"""``webhook-receiver explain``: what a push would start, planned as the service plans it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from receiver.cli.base import Command, ExitCode, first_literal_branch, load_config, say


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
        parser.add_argument("--from", dest="from_sha",
                            help="the commit to compare from (default: each pipeline's stored "
                                 "baseline on --branch)")
        parser.add_argument("--branch", help="with no --from: the branch whose baselines to "
                            "use (default: the repository's first literal name in branches)")
        parser.add_argument("--git-dir", help="compute the difference in this local clone "
                            "instead of through the provider's API (no secret needed)")
        parser.add_argument("--to", dest="to_sha", required=True,
                            help="the commit to compare to (a pushed head)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        return explain(args)


def explain(args: argparse.Namespace) -> int:
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
    from receiver.gitdiff import local_changed_files, local_file_content
    from receiver.module_map import PipelineSet, RepositoryMaps, Resolved, provider_source
    from receiver.planner import plan_push
    from receiver.state import open_store
    from receiver.state.base import Baseline

    cfg = load_config(args)
    candidates = [r for r in cfg.repositories if r.name.casefold() == args.repository.casefold()
                  and (args.provider is None or r.provider == args.provider)]
    if len(candidates) != 1:
        what = "no" if not candidates else "more than one"
        say(f"error: {what} configured repository named {args.repository!r}"
             + ("; add --provider" if candidates else ""), err=True)
        return ExitCode.USAGE
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
            say("error: --to must be a full commit id to read the repository's module map",
                 err=True)
            return ExitCode.USAGE
    store = open_store(cfg.state)
    before: str | None = args.from_sha
    baselines: dict[str, Baseline] = {}  # with --from: every pipeline compared from it
    if args.from_sha is None:  # each pipeline from its stored baseline
        branch = args.branch or first_literal_branch(repo)
        baselines = store.baselines(repo.key, branch or "")
        # a pipeline holding none (a template's new module, a new pipeline) is compared as
        # the next push's would be: from the branch's last known head
        head = store.heads(repo.key).get(branch or "")
        before = head.sha if head is not None else None
        missing = [n for n, sel in resolved.pipelines.modules.selectors.items()
                   if n not in baselines and not sel.discovers]
        if branch is None or (missing and before is None) or not (baselines or before):
            say(f"error: no stored baseline on branch {branch!r} for "
                 f"{', '.join(missing) or 'any pipeline'}, and no known head to compare "
                 "the others from; give --from", err=True)
            return ExitCode.USAGE

    def difference(base: str, head: str) -> Diff:
        if args.git_dir:
            return local_changed_files(args.git_dir, base, head)
        return providers[repo.provider].changed_files(repo, base, head)

    plan = plan_push(resolved.pipelines.modules, baselines, before=before, head=args.to_sha,
                     diff=difference, new_branch=repo.new_branch)
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
        return ExitCode.SUCCESS
    say(f"{repo.provider} {repo.name}: "
         + (f"{report['from']}" if single else "each pipeline's baseline")
         + f" -> {args.to_sha}" + (f" (local clone {args.git_dir})" if args.git_dir else ""))
    say(f"compare: {report['compare']}, {len(per_path)} changed paths, "
         f"{report['api_calls']} API calls")
    if "note" in report:
        say(f"note: {report['note']}" + (f" ({report['reason']})" if report.get("reason")
                                          else ""))
    for problem in resolved.problems:
        say(f"module map invalid at 'to' (the last valid one is used): {problem}")
    for path, hits in per_path.items():
        rules = ", ".join(f"{h['pipeline']} ({h['rule']})"
                          + (f" via {h['via']}" if "via" in h else "")
                          for h in hits) or "no pipeline"
        say(f"  {path}  ->  {rules}")
    say("would start: " + (", ".join(would_start) or "nothing"))
    say("unchanged:   " + (", ".join(report["unchanged"]) or "none"))
    return ExitCode.SUCCESS

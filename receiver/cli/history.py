"""``webhook-receiver history``: why a pipeline did or did not start."""

from __future__ import annotations

import argparse
import json

from receiver.cli.base import Command, ExitCode, load_config, say, short
from receiver.state.base import DecisionRecord


class History(Command):
    """Decision records by pipeline, commit or delivery, newest first."""

    name = "history"
    help = "why a pipeline did or did not start"
    description = "The decision records of deliveries, by pipeline, commit or delivery."

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--pipeline", help="the records that decided about this pipeline")
        which.add_argument("--commit", help="the records of pushes whose head is this commit")
        which.add_argument("--delivery", help="the records of this provider delivery id")
        which.add_argument("--pull-request", type=int, metavar="N",
                           help="the records of pull (merge) request N: why each validate "
                                "pipeline ran")
        parser.add_argument("--repository", help="with --pull-request: the repository's "
                            "configured name (needed when several validate pull requests)")
        parser.add_argument("--limit", type=int, default=20,
                            help="at most this many records, newest first (default: "
                                 "%(default)s)")
        parser.add_argument("--json", action="store_true", help="one JSON record per line")

    def run(self, args: argparse.Namespace) -> int:
        from receiver.state import open_store

        cfg = load_config(args)
        store = open_store(cfg.state)
        pull_request = None
        if args.pull_request is not None:
            repos = [r for r in cfg.repositories if r.pull_requests is not None and (
                args.repository is None or r.name.casefold() == args.repository.casefold())]
            if len(repos) != 1:
                say("error: --pull-request needs --repository naming one repository with "
                    "pull_requests", err=True)
                return ExitCode.USAGE
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
                    say(line)
        if not records:
            say("no decision recorded for that", err=True)
            return ExitCode.FAILURE
        return ExitCode.SUCCESS


def _describe(record: DecisionRecord, outcomes: dict[str, str]) -> list[str]:
    """The text lines of one decision record (each printed through ``say``)."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(record.recorded_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = "reconciler" if record.delivery_id.startswith("reconcile:") else "delivery"
    lines = [f"{when} {source} {record.delivery_id} ({record.provider} "
             f"{record.repository}, attempt {record.attempt}): {record.ref_type} "
             f"{record.ref} {short(record.before)} -> {short(record.head)}"]
    for p in record.pipelines:
        why = [f"baseline {short(p.baseline)}",
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

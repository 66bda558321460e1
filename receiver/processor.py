"""Background processing of one recorded delivery: baselines, compare, match, start, advance.

State semantics (DESIGN.md): a pipeline's baseline is the last commit at which it was
started or found unchanged. For a push with head H, pipelines are grouped by baseline and
each distinct baseline costs one compare (usually one for the whole push). A head already
contained in the baseline starts nothing and moves nothing; an incomplete difference treats
every pipeline of the group as changed. Starts go through a start intent keyed by
(pipeline, head) so that no pipeline starts twice for one commit; baselines move by
compare-and-set, and a lost race re-evaluates against the new baseline.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from providers.base import Diff, Provider
from receiver.config import Config, PipelineConfig, RepositoryConfig
from receiver.errors import LaunchError, ProviderError
from receiver.events import Delivery, PushEvent
from receiver.launcher import Launcher, StartRequest, render_variables
from receiver.logging import delivery_context, get_logger
from receiver.matcher import RuleMatch, match
from receiver.state.base import Baseline, DecisionRecord, PipelineDecision, StateStore

# A baseline row whose commit is unknown: the pipeline's first start failed on a new branch,
# so nothing is known to be deployed and everything counts as changed.
NOTHING_DEPLOYED = ""
MAX_ROUNDS = 10  # re-evaluations after lost compare-and-set races, per push
START_PARALLELISM = 32  # starts of one push run at once (one CodePipeline round trip in all)

Verdict = Literal["changed", "unchanged", "contained"]


class RetryLater(Exception):
    """Processing must be retried later (the delivery is released with back-off)."""


MATCHES_KEPT = 20  # matched files kept per pipeline in a decision record


@dataclass
class PushSummary:
    """What processing a delivery did (feeds ``delivery.processed`` and the decision records)."""

    changed_files: int = 0
    api_calls: int = 0
    started: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retry: bool = False
    trace: dict[str, PipelineDecision] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a start attempt ended: ``started`` (now or earlier), ``in_flight`` (another
    delivery owns the start), ``failed`` (final) or ``retry`` (the delivery will be redone)."""

    state: str
    execution_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one pipeline and why."""

    verdict: Verdict
    base: str | None
    matches: tuple[RuleMatch, ...] = ()
    reason: str | None = None
    source: str = "compare"  # where the verdict came from (the "why" record says it)
    complete: bool = True


class Processor:
    """Processes deliveries against the store, the providers and the launcher."""

    def __init__(self, config: Config, store: StateStore, launcher: Launcher,
                 providers: Mapping[str, Provider],
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.providers = providers
        self.clock = clock
        self.log = get_logger()
        # kept for the process's life: its threads keep their store connections
        self._starts = ThreadPoolExecutor(max_workers=START_PARALLELISM,
                                          thread_name_prefix="receiver-start")

    def process(self, delivery: Delivery) -> None:
        """Process every push of ``delivery``. Raises RetryLater if part must be redone later."""
        started_at = time.monotonic()
        final = delivery.attempts >= self.config.processing.max_attempts
        repo = self.config.repository(delivery.provider, delivery.repository)
        with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
            if repo is None:
                self.log.warning("delivery.dropped", reason="repository no longer configured")
                return
            summary = PushSummary()
            for event in delivery.events:
                summary.trace = {}
                if event.ref_type == "tag":
                    self._tag(repo, event, delivery, summary, final)
                else:
                    self._branch(repo, event, delivery, summary, final)
                self.store.record_decision(self._decision_record(delivery, event, summary))
            self.log.info(
                "delivery.processed",
                branch=",".join(e.ref_name for e in delivery.events),
                head=",".join(e.after or "" for e in delivery.events),
                changed_files=summary.changed_files,
                pipelines_started=summary.started,
                pipelines_unchanged=summary.unchanged,
                pipelines_failed=summary.failed,
                compare_api_calls=summary.api_calls,
                attempt=delivery.attempts,
                duration_ms=round((time.monotonic() - started_at) * 1000, 1),
            )
            if summary.retry:
                raise RetryLater("a pipeline start failed with a retryable error")

    def _decision_record(self, delivery: Delivery, event: PushEvent,
                         summary: PushSummary) -> DecisionRecord:
        """The "why" record of one push: what each pipeline was compared from and what happened."""
        return DecisionRecord(
            delivery_id=delivery.delivery_id, provider=delivery.provider,
            repository=delivery.repository, ref_type=event.ref_type, ref=event.ref_name,
            before=event.before, head=event.after, recorded_at=self.clock(),
            attempt=delivery.attempts,
            pipelines=tuple(summary.trace[name] for name in sorted(summary.trace)),
        )

    def _trace(self, summary: PushSummary, name: str, verdict: str, decision: Decision,
               outcome: Outcome | None = None) -> None:
        summary.trace[name] = PipelineDecision(
            pipeline=name, verdict=verdict, baseline=decision.base, diff=decision.source,
            complete=decision.complete, reason=decision.reason,
            matched=tuple((m.path, m.glob) for m in decision.matches[:MATCHES_KEPT]),
            matched_count=len(decision.matches),
            execution_id=outcome.execution_id if outcome else None,
            error=outcome.error if outcome else None,
        )

    # --- tags ----------------------------------------------------------------------------

    def _tag(self, repo: RepositoryConfig, event: PushEvent, delivery: Delivery,
             summary: PushSummary, final: bool) -> None:
        if event.after is None:
            return
        decision = Decision("changed", None, reason="tag rule matched", source="tag")
        for pipeline in repo.tag_pipelines(event.ref_name):
            outcome = self._launch(repo, event, pipeline, (), delivery, final)
            _tally(summary, pipeline.name, outcome)
            self._trace(summary, pipeline.name, outcome.state, decision, outcome)

    # --- branches ------------------------------------------------------------------------

    def _branch(self, repo: RepositoryConfig, event: PushEvent, delivery: Delivery,
                summary: PushSummary, final: bool) -> None:
        head = event.after
        if head is None:
            return
        pending = {p.name: p for p in repo.pipelines}
        for _ in range(MAX_ROUNDS):
            if not pending:
                return
            baselines = self.store.baselines(repo.key, event.ref_name)
            groups: dict[str | None, list[PipelineConfig]] = {}
            for p in pending.values():
                base: str | None
                if p.name in baselines:
                    base = baselines[p.name].commit or NOTHING_DEPLOYED
                else:
                    base = event.before
                groups.setdefault(base, []).append(p)
            decisions: dict[str, Decision] = {}
            for base, group in groups.items():
                decisions.update(self._decide(repo, event, base, head, group, summary, final))
            lost = self._act(repo, event, delivery, pending, baselines, decisions, summary, final)
            pending = {name: pending[name] for name in lost}
        if pending:
            self.log.warning("baseline.contended", pipelines=sorted(pending),
                             reason=f"lost {MAX_ROUNDS} compare-and-set rounds")
            summary.retry = True

    def _decide(self, repo: RepositoryConfig, event: PushEvent, base: str | None, head: str,
                group: list[PipelineConfig], summary: PushSummary,
                final: bool) -> dict[str, Decision]:
        names = [p.name for p in group]
        if base == NOTHING_DEPLOYED or (base is None and repo.new_branch == "all"):
            why = ("new branch with no baseline" if base is None else
                   "no deployed commit is known (an earlier first start failed)")
            self.log.info("changes.all", reason=why, pipelines=names, head=head)
            source = "new-branch" if base is None else "nothing-deployed"
            return {n: Decision("changed", None, reason=why, source=source, complete=False)
                    for n in names}
        if base is None:
            return {n: Decision("unchanged", None, reason="new branch (new_branch: none)",
                                source="new-branch", complete=False) for n in names}
        if base == head:
            return {n: Decision("contained", base, reason="head is the baseline",
                                source="identical") for n in names}
        diff = self._diff(repo, base, head, final)
        summary.api_calls += diff.api_calls
        if diff.contained:
            return {n: Decision("contained", base, reason=f"head is {diff.status} the baseline")
                    for n in names}
        if diff.paths is None:
            self.log.warning("changes.incomplete", reason=diff.reason, base=base, head=head,
                             pipelines=names)
            return {n: Decision("changed", base, reason=diff.reason, complete=False)
                    for n in names}
        summary.changed_files = max(summary.changed_files, len(diff.paths))
        matched = match(sorted(diff.paths), {p.name: p.paths for p in group})
        return {n: Decision("changed", base, matched[n]) if n in matched
                else Decision("unchanged", base) for n in names}

    def _diff(self, repo: RepositoryConfig, base: str, head: str, final: bool) -> Diff:
        provider = self.providers[repo.provider]
        try:
            return provider.changed_files(repo, base, head)
        except ProviderError as exc:
            if not final:
                raise RetryLater(str(exc)) from exc
            # out of attempts: a missed deployment is worse than an extra one
            return Diff("diverged", None, f"provider API failed on the last attempt: {exc}")

    def _act(self, repo: RepositoryConfig, event: PushEvent, delivery: Delivery,
             pending: dict[str, PipelineConfig], baselines: dict[str, Baseline],
             decisions: dict[str, Decision], summary: PushSummary, final: bool) -> list[str]:
        """Start what changed (in parallel), advance baselines; return those that lost a race."""
        assert event.after is not None
        head = event.after
        changed = [name for name, d in decisions.items() if d.verdict == "changed"]
        outcomes: dict[str, Outcome] = {}
        if changed:
            futures = {
                name: self._starts.submit(contextvars.copy_context().run, self._launch, repo,
                                          event, pending[name], decisions[name].matches,
                                          delivery, final)
                for name in changed
            }
            outcomes = {name: fut.result() for name, fut in futures.items()}
        lost: list[str] = []
        now = self.clock()
        for name, decision in decisions.items():
            expected = baselines.get(name) or Baseline(repo.key, event.ref_name, name)
            if decision.verdict == "contained":
                summary.unchanged.append(name)
                self._trace(summary, name, "contained", decision)
                continue
            if decision.verdict == "unchanged":
                if self._advance(expected, head, now, None):
                    summary.unchanged.append(name)
                    self._trace(summary, name, "unchanged", decision)
                else:
                    lost.append(name)
                continue
            outcome = outcomes[name]
            if outcome.state == "started":
                if self._advance(expected, head, now, outcome.execution_id):
                    _tally(summary, name, outcome)
                    self._trace(summary, name, "started", decision, outcome)
                else:
                    lost.append(name)
                continue
            if outcome.state in ("failed", "retry") and expected.version == 0:
                # pin what this push was compared from, or its change would be lost: the
                # next push would otherwise compare from its own 'before'
                self.store.advance_baseline(expected, decision.base or NOTHING_DEPLOYED, now)
            _tally(summary, name, outcome)
            self._trace(summary, name, outcome.state, decision, outcome)
        return lost

    def _advance(self, expected: Baseline, head: str, now: float,
                 execution_id: str | None) -> bool:
        moved = self.store.advance_baseline(expected, head, now, execution_id=execution_id)
        if moved:
            self.log.debug("baseline.advanced", pipeline=expected.pipeline, branch=expected.branch,
                           previous=expected.commit, commit=head, version=expected.version + 1,
                           started=execution_id is not None)
        return moved

    def _launch(self, repo: RepositoryConfig, event: PushEvent, pipeline: PipelineConfig,
                matches: tuple[RuleMatch, ...], delivery: Delivery,
                final: bool) -> Outcome:
        """Start ``pipeline`` at the head, at most once per (pipeline, head)."""
        assert event.after is not None
        head = event.after
        owner, attempt = delivery.delivery_id, delivery.attempts
        record = self.store.begin_start(pipeline.name, head, owner, attempt, self.clock())
        if record.state == "started":
            return Outcome("started", record.execution_id)
        if (record.owner, record.attempt) != (owner, attempt):
            self.log.info("pipeline.in_flight", pipeline=pipeline.name, commit=head,
                          owner=record.owner)
            return Outcome("in_flight")
        changed_paths = [m.path for m in matches]
        request = StartRequest(
            pipeline=pipeline.name, commit=head, branch=event.ref_name,
            repository=repo.name, source_action=pipeline.source_action,
            variables=render_variables(pipeline.variables, commit=head, branch=event.ref_name,
                                       repository=repo.name, changed_paths=changed_paths),
        )
        try:
            execution_id = self.launcher.start(request)
        except LaunchError as exc:
            self.store.finish_start(pipeline.name, head, owner, attempt, self.clock(),
                                    error=str(exc))
            retry = exc.retryable and not final
            self.log.error("pipeline.start_failed", pipeline=pipeline.name, commit=head,
                           error=str(exc), will_retry=retry)
            return Outcome("retry" if retry else "failed", error=str(exc))
        self.store.finish_start(pipeline.name, head, owner, attempt, self.clock(),
                                execution_id=execution_id)
        self.log.info("pipeline.started", pipeline=pipeline.name, commit=head,
                      execution_id=execution_id, branch=event.ref_name,
                      matched_files=len(matches), dry_run=self.launcher.dry_run,
                      **({"matched": [m.path for m in matches[:5]]} if matches else {}))
        return Outcome("started", execution_id)


def _tally(summary: PushSummary, name: str, outcome: Outcome) -> None:
    state = outcome.state
    if state == "started":
        summary.started.append(name)
    elif state in ("failed", "retry"):
        summary.failed.append(name)
        summary.retry = summary.retry or state == "retry"

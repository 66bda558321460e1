"""The executor: background processing of one recorded delivery — plan, act, publish.

State semantics (DESIGN.md): a pipeline's baseline is the last commit at which it was
started or found unchanged. :func:`receiver.planner.plan_push` plans a push (bases, one
difference per distinct base, verdicts); this module acts on the plan: starts go through a
start intent keyed by (pipeline, head) so that no pipeline starts twice for one commit,
baselines move by compare-and-set, and a lost race is planned again against the new
baseline. What happened is then published to the listeners (receiver/effects.py: commit
statuses, head notes, notifications); their failures never fail the delivery.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from providers.base import Diff, Provider
from receiver.config import Config, PipelineConfig, RepositoryConfig
from receiver.decide import Decision
from receiver.effects import (
    Bus,
    DeliveryProcessed,
    HeadSeen,
    MapInvalid,
    PipelineStarted,
    StartFailed,
)
from receiver.errors import ProviderError, RepositoryUnreadable, RetryLater
from receiver.events import Delivery, PushEvent
from receiver.gitdiff import GitMirror, ref_problem
from receiver.launcher import (
    Launcher,
    StartOutcome,
    StartRequest,
    aws_region,
    render_variables,
    start_once,
)
from receiver.logging import delivery_context, get_logger
from receiver.module_map import PipelineSet, RepositoryMaps, Resolved, provider_source
from receiver.outcomes import Observation, OutcomeRecorder
from receiver.planner import PushPlan, decision_entry, plan_push
from receiver.reconcile import RECONCILER, caught_up, note_head
from receiver.state.base import (
    NOTHING_DEPLOYED,
    Baseline,
    DecisionRecord,
    Execution,
    PipelineDecision,
    StateStore,
)
from receiver.validation import Summaries, Validator

MAX_ROUNDS = 10  # re-evaluations after lost compare-and-set races, per push
START_PARALLELISM = 32  # starts of one push run at once (one CodePipeline round trip in all)

Outcome = StartOutcome  # how one start attempt ended (receiver/launcher.py)


@dataclass
class PushSummary:
    """What processing a delivery did (feeds ``delivery.processed``)."""

    changed_files: int = 0
    api_calls: int = 0
    started: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retry: bool = False

    def tally(self, name: str, outcome: Outcome) -> None:
        """Count one start attempt."""
        if outcome.state == "started":
            self.started.append(name)
        elif outcome.state in ("failed", "retry"):
            self.failed.append(name)
            self.retry = self.retry or outcome.state == "retry"


@dataclass
class Push:
    """One ref of one delivery being processed: everything its steps need."""

    repo: RepositoryConfig
    event: PushEvent
    head: str
    delivery: Delivery
    final: bool  # the delivery's last attempt: nothing is retried after it
    summary: PushSummary
    trace: dict[str, PipelineDecision] = field(default_factory=dict)

    def record(self, name: str, verdict: str, decision: Decision,
               outcome: Outcome | None = None) -> None:
        """Keep what happened to pipeline ``name`` for the decision record."""
        self.trace[name] = decision_entry(
            name, verdict, decision, execution_id=outcome.execution_id if outcome else None,
            error=outcome.error if outcome else None)

    @property
    def behind(self) -> bool:
        """Every pipeline found the head contained in a newer commit it already stands on
        (a late, out-of-order delivery): the branch's known head stays the newer one."""
        return bool(self.trace) and all(t.verdict == "contained" and t.diff == "compare"
                                        for t in self.trace.values())

    def decision_record(self, now: float) -> DecisionRecord:
        """The "why" record of this push: what each pipeline was compared from and did."""
        return DecisionRecord(
            delivery_id=self.delivery.delivery_id, provider=self.delivery.provider,
            repository=self.delivery.repository, ref_type=self.event.ref_type,
            ref=self.event.ref_name, before=self.event.before, head=self.head,
            recorded_at=now, attempt=self.delivery.attempts,
            pipelines=tuple(self.trace[name] for name in sorted(self.trace)),
        )


class Processor:
    """Processes deliveries against the store, the providers and the launcher."""

    def __init__(self, config: Config, store: StateStore, launcher: Launcher,
                 providers: Mapping[str, Provider],
                 clock: Callable[[], float] = time.time, bus: Bus | None = None,
                 summaries: Summaries | None = None) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.providers = providers
        self.clock = clock
        self.log = get_logger()
        self.bus = bus if bus is not None else Bus()
        # the reconciler's memory of each branch's head (reconcile.py reads it)
        self.bus.subscribe(HeadSeen, "heads", note_head(store, clock))
        self.outcomes = OutcomeRecorder(store, config, self.bus)
        self._mirrors: dict[str, GitMirror] = {}  # diff: git, one per repository
        self._mirrors_lock = threading.Lock()
        # kept for the process's life: its threads keep their store connections
        self._starts = ThreadPoolExecutor(max_workers=START_PARALLELISM,
                                          thread_name_prefix="receiver-start")
        # a repository-side module map comes through the provider's file API, or from the
        # git mirror with diff: git
        by_api = provider_source(providers)
        self.maps = RepositoryMaps(store, lambda repo, path, commit: (
            self._mirror(repo).file_content(path, commit) if repo.diff == "git"
            else by_api(repo, path, commit)), clock, config.repositories)
        # pull requests: validated with the same mirrors, maps, start pool and listeners
        self.validator = Validator(
            config, store, launcher, providers, self.bus, mirror=self._mirror, maps=self.maps,
            pool=self._starts, outcomes=self.outcomes, clock=clock,
            summaries=summaries or Summaries(config, store, providers,
                                             aws_region(config.launcher.region), clock))

    def process(self, delivery: Delivery) -> None:
        """Process every push of ``delivery``. Raises RetryLater if part must be redone later."""
        if delivery.pull_request is not None:
            self.validator.process(delivery)
            return
        started_at = time.monotonic()
        final = delivery.attempts >= self.config.processing.max_attempts
        repo = self.config.repository(delivery.provider, delivery.repository)
        with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
            if repo is None:
                self.log.warning("delivery.dropped", reason="repository no longer configured")
                return
            # diff: git: a branch whose name git refuses fails alone, not the other refs
            refused = _refused_branches(delivery) if repo.diff == "git" else {}
            if repo.diff == "git":
                self._fetch(repo, delivery, final, refused)
            summary = PushSummary()
            for event in delivery.events:
                if event.after is None:  # a deletion: the route never records one
                    continue
                if event in refused:
                    self._refuse(delivery, event, refused[event])
                    continue
                push = Push(repo, event, event.after, delivery, final, summary)
                if event.ref_type == "tag":
                    self._tag(push)
                elif caught_up(self.store, repo, delivery, event):
                    continue  # reconciled, but a delivery brought the head first
                else:
                    self._branch(push)
                    if not push.behind:
                        self.bus.publish(HeadSeen(repo, event.ref_name, push.head))
                record = push.decision_record(self.clock())
                self.store.record_decision(record)
                self.bus.publish(DeliveryProcessed(repo, delivery, event, record,
                                                   missed=delivery.verified_by == RECONCILER))
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

    def _tag(self, push: Push) -> None:
        """A tag push starts every pipeline whose ``tags`` rule selects the tag."""
        decision = Decision("changed", None, reason="tag rule matched", source="tag")
        pipelines = {p.name: p for p in push.repo.tag_pipelines(push.event.ref_name)}
        outcomes = self._launch_all(push, pipelines, dict.fromkeys(pipelines, decision))
        for name, outcome in outcomes.items():
            push.summary.tally(name, outcome)
            push.record(name, outcome.state, decision, outcome)

    def _branch(self, push: Push) -> None:
        """Plan every pipeline of the branch (:func:`receiver.planner.plan_push`), start
        what changed and move the baselines; pipelines that lost a baseline race are
        planned again against the baselines that won."""
        pipelines = self._pipelines(push)
        pending: set[str] | None = None  # None: every pipeline (the first round)
        for _ in range(MAX_ROUNDS):
            if pending is not None and not pending:
                return
            baselines = self.store.baselines(push.repo.key, push.event.ref_name)
            plan = plan_push(pipelines.modules, baselines, before=push.event.before,
                             head=push.head, new_branch=push.repo.new_branch, only=pending,
                             diff=lambda base, _head: self._diff(push, base))
            push.summary.api_calls += plan.api_calls
            push.summary.changed_files = max(push.summary.changed_files, plan.changed_files)
            self._log_incomplete(push, plan)
            pending = set(self._act(push, pipelines, baselines, plan.decisions))
        if pending:
            self.log.warning("baseline.contended", pipelines=sorted(pending),
                             reason=f"lost {MAX_ROUNDS} compare-and-set rounds")
            push.summary.retry = True

    def _log_incomplete(self, push: Push, plan: PushPlan) -> None:
        """Say in the log, per base, when every pipeline counted as changed, and why."""
        for base, names in plan.groups.items():
            reasons = {d.reason for n in names if (d := plan.decisions.get(n)) is not None
                       and d.verdict == "changed" and not d.complete}
            if not reasons:
                continue
            if not isinstance(base, str) or base == push.head:  # nothing to compare from
                self.log.info("changes.all", reason=reasons.pop(), head=push.head,
                              pipelines=sorted(names))
            else:
                self.log.warning("changes.incomplete", reason=reasons.pop(), base=base,
                                 head=push.head, pipelines=sorted(names))

    def _pipelines(self, push: Push) -> PipelineSet:
        """The configured pipelines and, with ``module_map``, those of the file at the
        head; an invalid file is logged (and shown on the commit) and the last valid
        one used instead."""
        try:
            resolved = self.maps.resolve(push.repo, push.head)
        except ProviderError as exc:
            if not push.final:
                raise RetryLater(str(exc)) from exc
            resolved = self._kept_map(push, str(exc))
        if resolved.problems:
            assert push.repo.module_map is not None
            self.log.warning("module_map.invalid", path=push.repo.module_map.path,
                             commit=push.head, errors=list(resolved.problems),
                             kept=resolved.kept)
            self.bus.publish(MapInvalid(push.repo, push.head, push.repo.module_map.path,
                                        resolved.problems, resolved.kept))
        return resolved.pipelines

    def _kept_map(self, push: Push, error: str) -> Resolved:
        """Out of attempts to read the file: the last valid map (logged)."""
        self.log.warning("module_map.unreadable", commit=push.head, error=error)
        return self.maps.kept(push.repo)

    def _mirror(self, repo: RepositoryConfig) -> GitMirror:
        """This process's mirror of ``repo`` (made on first use)."""
        with self._mirrors_lock:
            mirror = self._mirrors.get(repo.key)
            if mirror is None:
                provider = self.providers[repo.provider]
                assert repo.git_url is not None  # config fills it in for diff: git
                mirror = GitMirror(
                    provider=repo.provider, name=repo.name, url=repo.git_url,
                    cache_dir=self.config.git.cache_dir,
                    authorization=lambda: provider.git_authorization(repo))
                self._mirrors[repo.key] = mirror
            return mirror

    def _fetch(self, repo: RepositoryConfig, delivery: Delivery, final: bool,
               refused: Mapping[PushEvent, str]) -> None:
        """``diff: git``: one fetch for the whole delivery (its branches and heads, but not
        the ``refused`` ones). A fetch the server refuses or that cannot reach it is
        retried, never "everything changed"."""
        events = [e for e in delivery.events if e not in refused]
        # full ref names: a branch named like a commit id or "refs/..." stays a branch
        refs = [f"refs/heads/{e.ref_name}" for e in events if e.ref_type == "branch"]
        refs += [e.after for e in events if e.after]
        try:
            self._mirror(repo).fetch(refs)
        except ProviderError as exc:
            self.log.warning("provider.error", error=str(exc), final=final, diff="git")
            raise RetryLater(str(exc)) from exc

    def _refuse(self, delivery: Delivery, event: PushEvent, problem: str) -> None:
        """A branch git refuses (``diff: git`` cannot fetch it): it fails alone, logged
        and in its decision record; nothing of it is started or moved."""
        self.log.warning("push.ref_refused", branch=event.ref_name, reason=problem)
        self.store.record_decision(DecisionRecord(
            delivery_id=delivery.delivery_id, provider=delivery.provider,
            repository=delivery.repository, ref_type=event.ref_type, ref=event.ref_name,
            before=event.before, head=event.after, recorded_at=self.clock(),
            attempt=delivery.attempts, pipelines=(),
            failure=f"git refuses the branch name: refs/heads/{event.ref_name} {problem}"))

    def _diff(self, push: Push, base: str) -> Diff:
        provider = self.providers[push.repo.provider]
        try:
            if push.repo.diff == "git":
                return self._mirror(push.repo).changed_files(base, push.head)
            return provider.changed_files(push.repo, base, push.head)
        except ProviderError as exc:
            # git: a mirror that cannot fetch is never an incomplete difference either
            unreadable = isinstance(exc, RepositoryUnreadable) or push.repo.diff == "git"
            self.log.warning("provider.error", error=str(exc), base=base, head=push.head,
                             final=push.final, unreadable=unreadable)
            if not push.final or unreadable:
                # a token that cannot read the repository must not deploy everything: on
                # the last attempt the worker fails the delivery, starting nothing
                raise RetryLater(str(exc)) from exc
            # out of attempts: a missed deployment is worse than an extra one
            return Diff("diverged", None, f"provider API failed on the last attempt: {exc}")

    def _act(self, push: Push, pipelines: PipelineSet,
             baselines: Mapping[str, Baseline], decisions: Mapping[str, Decision]) -> list[str]:
        """Start what changed (in parallel), advance baselines; return those that lost a race."""
        changed = {name: pipelines.pipeline(name) for name, d in decisions.items()
                   if d.verdict == "changed"}
        outcomes = self._launch_all(push, changed, decisions)
        lost: list[str] = []
        now = self.clock()
        for name, decision in decisions.items():
            expected = baselines.get(name) or Baseline(push.repo.key, push.event.ref_name, name)
            if decision.verdict == "contained":
                push.summary.unchanged.append(name)
                push.record(name, "contained", decision)
            elif decision.verdict == "refused":  # a map template's name outside allow
                self.log.warning("module_map.refused", pipeline=name, commit=push.head,
                                 reason=decision.reason)
                push.record(name, "refused", decision)
            elif decision.verdict == "unchanged":
                if self._advance(expected, push.head, now, None):
                    push.summary.unchanged.append(name)
                    push.record(name, "unchanged", decision)
                else:
                    lost.append(name)
            else:
                outcome = outcomes[name]
                if outcome.state == "started":
                    assert outcome.execution_id is not None
                    if not self._advance(expected, push.head, now, outcome.execution_id):
                        lost.append(name)
                        continue
                    self._settle_start(name, outcome.execution_id)
                if outcome.state in ("failed", "retry") and expected.version == 0:
                    # pin what this push was compared from, or its change would be lost: the
                    # next push would otherwise compare from its own 'before'
                    self.store.advance_baseline(expected, decision.base or NOTHING_DEPLOYED, now)
                push.summary.tally(name, outcome)
                push.record(name, outcome.state, decision, outcome)
        return lost

    def _advance(self, expected: Baseline, head: str, now: float,
                 execution_id: str | None) -> bool:
        moved = self.store.advance_baseline(expected, head, now, execution_id=execution_id)
        if moved:
            self.log.debug("baseline.advanced", pipeline=expected.pipeline, branch=expected.branch,
                           previous=expected.commit, commit=head, version=expected.version + 1,
                           started=execution_id is not None)
        return moved

    def _settle_start(self, pipeline: str, execution_id: str) -> None:
        """Once the baseline names the execution: a dry-run start counts as Succeeded at
        once, and an outcome that arrived before the baseline moved is applied now."""
        now = self.clock()
        if self.launcher.dry_run:
            self.outcomes.observe(Observation(pipeline, execution_id, "Succeeded", "dry-run"),
                                  now)
            return
        execution = self.store.execution(pipeline, execution_id)
        if execution is not None and execution.final:
            self.outcomes.settle(execution, now)

    def _launch_all(self, push: Push, pipelines: Mapping[str, PipelineConfig],
                    decisions: Mapping[str, Decision]) -> dict[str, Outcome]:
        """Start ``pipelines`` at the head, all at once; their outcomes by name."""
        futures = {
            name: self._starts.submit(contextvars.copy_context().run, self._launch, push,
                                      pipeline, decisions[name])
            for name, pipeline in pipelines.items()
        }
        return {name: future.result() for name, future in futures.items()}

    def _launch(self, push: Push, pipeline: PipelineConfig, decision: Decision) -> Outcome:
        """Start ``pipeline`` at the head, at most once per (pipeline, head)."""
        head, branch, repository = push.head, push.event.ref_name, push.repo.name
        request = StartRequest(
            pipeline=pipeline.name, commit=head, branch=branch, repository=repository,
            source_action=pipeline.source_action,
            variables=render_variables(pipeline.variables, commit=head, branch=branch,
                                       repository=repository,
                                       changed_paths=[path for path, _, _ in
                                                      decision.selected()],
                                       module=pipeline.module),
        )
        outcome = start_once(self.store, self.launcher, pipeline.name, request,
                             owner=push.delivery.delivery_id, attempt=push.delivery.attempts,
                             final=push.final, clock=self.clock, branch=branch,
                             matched_files=decision.match_count, **_matched_fields(decision))
        if outcome.state == "started":
            assert outcome.execution_id is not None
            self._record_execution(push, pipeline.name, outcome.execution_id)
        elif outcome.state == "failed":
            self.bus.publish(StartFailed(push.repo, branch, pipeline.name, head,
                                         outcome.error or ""))
        return outcome

    def _record_execution(self, push: Push, pipeline: str, execution_id: str) -> None:
        """Keep the execution so its outcome can be learnt (idempotent: a retried delivery
        that finds the start already made records it again, harmlessly), and tell the
        listeners (the pending commit status); once they have it, its start is settled."""
        now = self.clock()
        execution = Execution(
            pipeline=pipeline, execution_id=execution_id, repository=push.repo.key,
            branch=push.event.ref_name, commit=push.head, started_at=now, updated_at=now)
        self.store.record_execution(execution)
        if self.bus.publish(PipelineStarted(push.repo, execution)):
            self.store.settle_execution(execution)


def _refused_branches(delivery: Delivery) -> dict[PushEvent, str]:
    """The branch pushes of ``delivery`` whose name git refuses, with why."""
    found = {}
    for event in delivery.events:
        if event.ref_type == "branch" and event.after is not None:
            problem = ref_problem(f"refs/heads/{event.ref_name}")
            if problem is not None:
                found[event] = problem
    return found




def _matched_fields(decision: Decision) -> dict[str, Any]:
    """The first matched paths of a start, and the dependencies that brought it in."""
    fields: dict[str, Any] = {}
    selected = decision.selected(5)
    if selected:
        fields["matched"] = [path for path, _, _ in selected]
    if decision.via:
        fields["via"] = [name for name, _ in decision.via]
    return fields


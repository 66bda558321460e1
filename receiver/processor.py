"""Background processing of one recorded delivery: baselines, compare, decide, start, advance.

State semantics (DESIGN.md): a pipeline's baseline is the last commit at which it was
started or found unchanged. For a push with head H, pipelines are grouped by base and each
distinct base costs one compare (usually one for the whole push); :func:`receiver.decide.decide`
turns the difference into a verdict per pipeline. Starts go through a start intent keyed
by (pipeline, head) so that no pipeline starts twice for one commit; baselines move by
compare-and-set, and a lost race re-evaluates against the new baseline.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from providers.base import CommitStatus, Diff, Provider
from receiver.config import Config, PipelineConfig, RepositoryConfig
from receiver.decide import Base, Decision, NoBase, decide, needs_diff
from receiver.errors import LaunchError, ProviderError, RepositoryUnreadable, StateError
from receiver.events import Delivery, PushEvent
from receiver.gitdiff import GitMirror
from receiver.launcher import Launcher, StartRequest, render_variables
from receiver.logging import delivery_context, get_logger
from receiver.module_map import (
    CONFIG_STATUS,
    PipelineSet,
    RepositoryMaps,
    Resolved,
    provider_source,
)
from receiver.modules import Selector
from receiver.outcomes import Observation, OutcomeRecorder, Source
from receiver.reconcile import caught_up
from receiver.state.base import (
    NOTHING_DEPLOYED,
    Baseline,
    DecisionRecord,
    Execution,
    PipelineDecision,
    StateStore,
)
from receiver.statuses import StatusJob, StatusWriter, console_url, status_for

MAX_ROUNDS = 10  # re-evaluations after lost compare-and-set races, per push
START_PARALLELISM = 32  # starts of one push run at once (one CodePipeline round trip in all)
MATCHES_KEPT = 20  # matched files kept per pipeline in a decision record

# How a start attempt ended: started (now or by an earlier attempt), in_flight (another
# delivery owns the start), failed (final) or retry (the delivery will be redone).
StartState = Literal["started", "in_flight", "failed", "retry"]


class RetryLater(Exception):
    """Processing must be retried later (the delivery is released with back-off)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one start attempt ended (see ``StartState``)."""

    state: StartState
    execution_id: str | None = None
    error: str | None = None


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
        self.trace[name] = PipelineDecision(
            pipeline=name, verdict=verdict, baseline=decision.base, diff=decision.source,
            complete=decision.complete, reason=decision.reason,
            # (path, glob), or (path, glob, dependency) when a dependency's path selected it
            matched=tuple((path, glob) if via is None else (path, glob, via)
                          for path, glob, via in decision.selected(MATCHES_KEPT)),
            matched_count=decision.match_count,
            execution_id=outcome.execution_id if outcome else None,
            error=outcome.error if outcome else None,
        )

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
                 clock: Callable[[], float] = time.time,
                 statuses: StatusWriter | None = None) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.providers = providers
        self.clock = clock
        self.log = get_logger()
        self.statuses = statuses
        self.outcomes = OutcomeRecorder(store, _baseline_policy(config),
                                        on_change=self._status_of_outcome)
        self.region = (config.launcher.region or os.environ.get("AWS_REGION")
                       or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
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

    def process(self, delivery: Delivery) -> None:
        """Process every push of ``delivery``. Raises RetryLater if part must be redone later."""
        started_at = time.monotonic()
        final = delivery.attempts >= self.config.processing.max_attempts
        repo = self.config.repository(delivery.provider, delivery.repository)
        with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
            if repo is None:
                self.log.warning("delivery.dropped", reason="repository no longer configured")
                return
            if repo.diff == "git":
                self._fetch(repo, delivery, final)
            summary = PushSummary()
            for event in delivery.events:
                if event.after is None:  # a deletion: the route never records one
                    continue
                push = Push(repo, event, event.after, delivery, final, summary)
                if event.ref_type == "tag":
                    self._tag(push)
                elif caught_up(self.store, repo, delivery, event):
                    continue  # reconciled, but a delivery brought the head first
                else:
                    self._branch(push)
                    if not push.behind:  # the reconciler's last known head (reconcile.py)
                        self.store.note_head(repo.key, event.ref_name, push.head, None,
                                             self.clock())
                self.store.record_decision(push.decision_record(self.clock()))
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
        """Decide every pipeline of the branch against its base, start what changed, and
        move the baselines; pipelines that lost a baseline race are decided again.

        A template is decided under its own name from the push's own base (finding the
        concrete pipelines with no baseline yet in that difference), and each concrete
        pipeline holding a baseline from that baseline."""
        pipelines = self._pipelines(push)
        pending: set[str] | None = None  # None: every pipeline (the first round)
        for _ in range(MAX_ROUNDS):
            if pending is not None and not pending:
                return
            baselines = self.store.baselines(push.repo.key, push.event.ref_name)
            selectors = pipelines.modules.for_branch(baselines)
            groups: dict[Base, dict[str, Selector]] = {}
            for name, selector in selectors.items():
                if pending is None or name in pending:
                    base = self._base(push, baselines.get(name))
                    groups.setdefault(base, {})[name] = selector
            decisions: dict[str, Decision] = {}
            for base, group in groups.items():
                for name, decision in self._decide(push, base, group).items():
                    # a template found a pipeline that holds a baseline of its own: that
                    # baseline's group decides it
                    if name in group or name not in baselines:
                        decisions[name] = decision
            self._keep_newer_starts(push, baselines, decisions)
            pending = set(self._act(push, pipelines, baselines, decisions))
        if pending:
            self.log.warning("baseline.contended", pipelines=sorted(pending),
                             reason=f"lost {MAX_ROUNDS} compare-and-set rounds")
            push.summary.retry = True

    @staticmethod
    def _base(push: Push, baseline: Baseline | None) -> Base:
        """Where a pipeline is compared from: its baseline, else the push's ``before``."""
        if baseline is not None:
            return baseline.commit or NoBase.NOTHING_DEPLOYED
        return push.event.before or NoBase.NEW_BRANCH

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
            self._config_status(push, resolved)
        return resolved.pipelines

    def _kept_map(self, push: Push, error: str) -> Resolved:
        """Out of attempts to read the file: the last valid map (logged)."""
        self.log.warning("module_map.unreadable", commit=push.head, error=error)
        return self.maps.kept(push.repo)

    def _config_status(self, push: Push, resolved: Resolved) -> None:
        if self.statuses is None or not push.repo.commit_status:
            return
        assert push.repo.module_map is not None
        kept = f"; kept the map of {resolved.kept[:12]}" if resolved.kept else ""
        status = CommitStatus(
            CONFIG_STATUS, "error",
            self.providers[push.repo.provider].file_url(push.repo, push.repo.module_map.path,
                                                         push.head),
            f"{push.repo.module_map.path}: {resolved.problems[0]}" + kept)
        try:
            self.statuses.submit(StatusJob(push.repo, push.head, status))
        except StateError as exc:
            self.log.warning("status.failed", error=str(exc), status=CONFIG_STATUS,
                             commit=push.head)

    def _decide(self, push: Push, base: Base,
                group: Mapping[str, Selector]) -> dict[str, Decision]:
        """:func:`decide` for one group of pipelines sharing ``base``, after the compare it
        needs; says in the log when every pipeline counts as changed, and why."""
        diff: Diff | None = None
        if needs_diff(base, push.head):
            assert isinstance(base, str)
            diff = self._diff(push, base)
            push.summary.api_calls += diff.api_calls
            if diff.paths is not None and not diff.contained:
                push.summary.changed_files = max(push.summary.changed_files, len(diff.paths))
        decisions = decide(group, base, push.head, diff, new_branch=push.repo.new_branch)
        reasons = {d.reason for d in decisions.values()
                   if d.verdict == "changed" and not d.complete}
        if reasons:
            if diff is None:  # nothing to compare from
                self.log.info("changes.all", reason=reasons.pop(), head=push.head,
                              pipelines=sorted(group))
            else:
                self.log.warning("changes.incomplete", reason=reasons.pop(), base=base,
                                 head=push.head, pipelines=sorted(group))
        return decisions

    def _keep_newer_starts(self, push: Push, baselines: Mapping[str, Baseline],
                           decisions: dict[str, Decision]) -> None:
        """A head contained in a pipeline's last started commit is not started again: an
        older commit must not overtake a newer one (CodePipeline's SUPERSEDED mode goes by
        start order). Only pipelines whose baseline fell back below their last start need
        the extra compare; one per distinct last started commit."""
        by_last: dict[str, list[str]] = {}
        for name, decision in decisions.items():
            last = baselines[name].last_started_commit if name in baselines else None
            if decision.verdict == "changed" and last and last not in (decision.base,
                                                                       push.head):
                by_last.setdefault(last, []).append(name)
        for last, names in by_last.items():
            diff = self._diff(push, last)
            push.summary.api_calls += diff.api_calls
            if diff.contained:
                for name in names:
                    decisions[name] = Decision(
                        "contained", decisions[name].base, source="compare",
                        reason=f"head is contained in the last started commit {last[:12]}")

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

    def _fetch(self, repo: RepositoryConfig, delivery: Delivery, final: bool) -> None:
        """``diff: git``: one fetch for the whole delivery (its branches and heads). A fetch
        the server refuses or that cannot reach it is retried, never "everything changed"."""
        refs = [e.ref_name for e in delivery.events if e.ref_type == "branch"]
        refs += [e.after for e in delivery.events if e.after]
        try:
            self._mirror(repo).fetch(refs)
        except ProviderError as exc:
            self.log.warning("provider.error", error=str(exc), final=final, diff="git")
            raise RetryLater(str(exc)) from exc

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
        owner, attempt = push.delivery.delivery_id, push.delivery.attempts
        record = self.store.begin_start(pipeline.name, head, owner, attempt, self.clock())
        if record.state == "started":
            assert record.execution_id is not None
            self._record_execution(push, pipeline.name, record.execution_id)
            return Outcome("started", record.execution_id)
        if (record.owner, record.attempt) != (owner, attempt):
            self.log.info("pipeline.in_flight", pipeline=pipeline.name, commit=head,
                          owner=record.owner)
            return Outcome("in_flight")
        request = StartRequest(
            pipeline=pipeline.name, commit=head, branch=branch, repository=repository,
            source_action=pipeline.source_action,
            variables=render_variables(pipeline.variables, commit=head, branch=branch,
                                       repository=repository,
                                       changed_paths=[path for path, _, _ in
                                                      decision.selected()],
                                       module=pipeline.module),
        )
        try:
            execution_id = self.launcher.start(request)
        except LaunchError as exc:
            self.store.finish_start(pipeline.name, head, owner, attempt, self.clock(),
                                    error=str(exc))
            retry = exc.retryable and not push.final
            self.log.error("pipeline.start_failed", pipeline=pipeline.name, commit=head,
                           error=str(exc), will_retry=retry)
            return Outcome("retry" if retry else "failed", error=str(exc))
        self.store.finish_start(pipeline.name, head, owner, attempt, self.clock(),
                                execution_id=execution_id)
        self._record_execution(push, pipeline.name, execution_id)
        self.log.info("pipeline.started", pipeline=pipeline.name, commit=head,
                      execution_id=execution_id, branch=branch,
                      matched_files=decision.match_count, dry_run=self.launcher.dry_run,
                      **_matched_fields(decision))
        return Outcome("started", execution_id)

    def _record_execution(self, push: Push, pipeline: str, execution_id: str) -> None:
        """Keep the execution so its outcome can be learnt (idempotent: a retried delivery
        that finds the start already made records it again, harmlessly), and put the
        pending status on the commit."""
        now = self.clock()
        execution = Execution(
            pipeline=pipeline, execution_id=execution_id, repository=push.repo.key,
            branch=push.event.ref_name, commit=push.head, started_at=now, updated_at=now)
        self.store.record_execution(execution)
        self._write_status(push.repo, execution, "InProgress")

    def _status_of_outcome(self, execution: Execution, _source: Source) -> None:
        """An execution's status changed: show it on its commit."""
        repo = self.config.repository_by_key(execution.repository)
        if repo is not None:
            self._write_status(repo, execution, execution.status)

    def _write_status(self, repo: RepositoryConfig, execution: Execution, status: str) -> None:
        if self.statuses is None or not repo.commit_status:
            return
        url = console_url(self.region, execution.pipeline, execution.execution_id)

        def still_running() -> bool:  # a pending status is not written over a final one
            found = self.store.execution(execution.pipeline, execution.execution_id)
            return found is None or not found.final

        try:
            self.statuses.submit(StatusJob(
                repo, execution.commit, status_for(execution.pipeline, status, url),
                still_running if status == "InProgress" else None))
        except StateError as exc:  # a status never blocks or undoes a start
            self.log.warning("status.failed", error=str(exc), pipeline=execution.pipeline,
                             commit=execution.commit)


def _baseline_policy(config: Config) -> Callable[[str], str]:
    """Repository state key -> its ``baseline`` setting (``succeeded`` when unknown)."""
    policies = {repo.key: repo.baseline for repo in config.repositories}
    return lambda key: policies.get(key, "succeeded")


def _matched_fields(decision: Decision) -> dict[str, Any]:
    """The first matched paths of a start, and the dependencies that brought it in."""
    fields: dict[str, Any] = {}
    selected = decision.selected(5)
    if selected:
        fields["matched"] = [path for path, _, _ in selected]
    if decision.via:
        fields["via"] = [name for name, _ in decision.via]
    return fields


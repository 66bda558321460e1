"""Pull (merge) request validation: start the ``validate`` pipeline of every module a
request changes, at its head, and show the outcome on the head (docs/pull-requests.md).

A request is planned by :func:`receiver.planner.plan_pull_request` (the planning step
pushes use): the changed set is the tree difference from the merge base of the target
branch and the head to the head, so what the target did meanwhile does not count. Each
pipeline the plan calls changed and that names ``validate`` brings in that pipeline (a
template's ``{module}`` filled in), started with ``sourceRevisions`` = the head.

Invariants:

- **Its own namespace.** A validation's start intent is ``validate:<pipeline>`` at the
  head (a CodePipeline pipeline name holds no ``:``, so it is never a deploy's), and its
  idempotency token is its own (:attr:`StartRequest.validation`): validating a commit never
  makes that commit's deploy start look done, also when ``validate`` names the deploy
  pipeline itself. Its execution record names the request (``Execution.pull_request``),
  so its outcome moves no baseline and no deployed commit (``OutcomeRecorder.settle``).
  A validate pipeline that is also a deploy pipeline of the target branch is not started
  while that deploy runs: CodePipeline's SUPERSEDED mode would let the validation
  supersede the deploy.
- **At most once per (validate pipeline, head)**, across retries, replicas and requests
  sharing a head.
- **Level-based summary.** The summary status ``webhook-receiver/validate`` is derived from
  the stored :class:`~receiver.state.base.Validation` and its executions' statuses
  (:meth:`Summaries.derive`), never kept as a fact of its own: the sender derives it again
  before it writes, every outcome of a validation re-derives it, and the outcome poll's
  heal pass re-derives every validation not settled yet. It is never ``success`` unless
  every validation that was due succeeded, or none was due.
- **Forks are not run** with ``forks: deny`` (the default): nothing of a fork is fetched
  or read, and the summary is an error saying so. Drafts wait for "ready for review"
  unless ``drafts: true``. A closed or merged request records the end; the merge itself
  arrives as a push and deploys as any push does.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from providers.base import CommitStatus, Diff, Provider, StatusState
from receiver.config import Config, PipelineConfig, RepositoryConfig
from receiver.decide import Decision
from receiver.effects import Bus, ExecutionChanged, MapInvalid, PipelineStarted
from receiver.errors import (
    ProviderError,
    RepositoryUnreadable,
    RetryLater,
    StateError,
    TerminalError,
)
from receiver.events import Delivery, PullRequestEvent
from receiver.gitdiff import GitMirror
from receiver.launcher import Launcher, StartOutcome, StartRequest, start_once
from receiver.logging import delivery_context, get_logger
from receiver.module_map import PipelineSet, RepositoryMaps
from receiver.outcomes import Observation, OutcomeRecorder
from receiver.planner import PushPlan, decision_entry, plan_pull_request
from receiver.state.base import (
    DecisionRecord,
    Execution,
    PipelineDecision,
    StateStore,
    Task,
    Validation,
    ValidationRun,
)
from receiver.statuses import console_url

SUMMARY_STATUS = "webhook-receiver/validate"  # the check a branch rule requires
KIND = "validation"  # the tasks of summary statuses (receiver/sender.py)
START_PREFIX = "validate:"  # a validation's start intents: no pipeline name holds a ':'
FORKS_DENIED = "pull requests from forks are not validated"
CAS_ROUNDS = 10  # compare-and-set retries of one validation against concurrent writers
HEAL_BATCH = 100  # validations the outcome poll looks at per pass
_HALTED = {"Stopped": "stopped", "Cancelled": "cancelled", "Superseded": "superseded"}


# --- the summary: a pure function of the stored state ------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """The summary status of a validation: state, description and the run it links to
    (None: the head itself)."""

    state: StatusState
    description: str
    run: ValidationRun | None = None


def summarize(v: Validation, statuses: Mapping[str, str | None]) -> Summary | None:
    """The summary of ``v`` given each run's execution status (by validate pipeline; None
    while it has none); None once the request ended (nothing more is written).

    failure when any validation failed; error when a fork is denied, or a validation was
    halted (stopped, cancelled, superseded) or could not be started; pending while any
    runs (and for a draft waiting to be marked ready); success when all succeeded or none
    was due ("no module is affected").
    """
    if v.state in ("closed", "merged"):
        return None
    if v.state == "denied":
        return Summary("error", f"{FORKS_DENIED} (forks: deny)")
    if v.state == "waiting":
        return Summary("pending", "draft: validated once it is marked ready for review")
    if v.state == "failed":
        return Summary("error", f"could not be validated: {v.error or 'unknown error'}")
    if not v.runs:
        return Summary("success", "no module is affected: nothing to validate")
    total = len(v.runs)
    failed = [r for r in v.runs if statuses.get(r.pipeline) == "Failed"]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return Summary("failure", f"{failed[0].pipeline} failed{more}", failed[0])
    broken = [r for r in v.runs if r.error is not None]
    if broken:
        return Summary("error", f"{broken[0].pipeline} was not started: {broken[0].error}",
                       broken[0])
    halted = [r for r in v.runs if statuses.get(r.pipeline) in _HALTED]
    if halted:
        how = _HALTED[str(statuses[halted[0].pipeline])]
        return Summary("error", f"{halted[0].pipeline} was {how}; push again to validate",
                       halted[0])
    done = sum(1 for r in v.runs if statuses.get(r.pipeline) == "Succeeded")
    if done == total:
        return Summary("success", f"all {total} validations succeeded"
                       if total > 1 else f"{v.runs[0].pipeline} succeeded", v.runs[0])
    running = next(r for r in v.runs if statuses.get(r.pipeline) != "Succeeded")
    return Summary("pending", f"{done} of {total} validations finished", running)


def summary_task(repo: RepositoryConfig, v: Validation, status: CommitStatus, now: float,
                 *, superseded: bool = False) -> Task:
    """The task of writing ``status`` (the summary) on ``v``'s head: one per (repository,
    head, generation, validation state, summary state), so a draft's pending summary and
    the pending one of its validation are two writes. ``superseded``: the head is no
    longer the request's, and this is its last word."""
    key = hashlib.sha256("\0".join((KIND, repo.key, v.head, str(v.number), str(v.generation),
                                    v.state, status.state, str(superseded))).encode()
                         ).hexdigest()
    payload = {"repository": repo.key, "number": v.number, "head": v.head,
               "generation": v.generation, "state": status.state, "url": status.url,
               "description": status.description, "superseded": superseded}
    return Task(key=key, kind=KIND, target=repo.key, payload=json.dumps(payload),
                due_at=now, created_at=now)


class Summaries:
    """Derives validations' summaries from the store and records them as tasks; listens to
    the outcomes of validation executions; heals what an interrupted update left."""

    def __init__(self, config: Config, store: StateStore, providers: Mapping[str, Provider],
                 region: str, clock: Callable[[], float] = time.time,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self.providers = providers
        self.region = region
        self.clock = clock
        self.wake = wake
        self.log = get_logger()

    def subscribe(self, bus: Bus) -> None:
        """Re-derive a validation's summary whenever one of its executions changes."""
        bus.subscribe(ExecutionChanged, "validations", self.changed)

    def changed(self, event: ExecutionChanged) -> None:
        """An execution changed: if it validates a request's current head, refresh it."""
        x = event.execution
        if x.pull_request is None:
            return
        v = self.store.validation(x.repository, x.pull_request)
        if v is not None and v.head == x.commit:
            self.refresh(event.repo, v)

    def derive(self, repo: RepositoryConfig, v: Validation) -> CommitStatus | None:
        """The summary status of ``v`` now (its runs' statuses read from the store)."""
        statuses: dict[str, str | None] = {}
        for run in v.runs:
            x = self.store.execution(run.pipeline, run.execution_id) if run.execution_id \
                else None
            statuses[run.pipeline] = x.status if x is not None else None
        summary = summarize(v, statuses)
        if summary is None:
            return None
        shown = summary.run
        if shown is not None and shown.execution_id is not None:
            url = console_url(self.region, shown.pipeline, shown.execution_id)
        else:
            url = self.providers[repo.provider].file_url(repo, "", v.head)
        return CommitStatus(SUMMARY_STATUS, summary.state, url, summary.description)

    def refresh(self, repo: RepositoryConfig, v: Validation) -> Validation | None:
        """Derive ``v``'s summary, record the task of writing it (with ``commit_status``)
        and the state in the validation; the validation as stored, None once it moved on
        to another head. Raises StateError when the store cannot answer."""
        current: Validation | None = v
        for _ in range(CAS_ROUNDS):
            if current is None or current.generation != v.generation:
                return current
            status = self.derive(repo, current)
            if status is None:
                return current
            if repo.commit_status and self.store.enqueue_task(
                    summary_task(repo, current, status, self.clock())):
                self.wake()
            if current.summary == status.state:
                return current
            updated = dataclasses.replace(current, summary=status.state,
                                          updated_at=self.clock())
            if self.store.save_validation(updated):
                return dataclasses.replace(updated, version=current.version + 1)
            current = self.store.validation(v.repository, v.number)
        raise StateError(f"validation of #{v.number}: lost {CAS_ROUNDS} updates")

    def supersede(self, repo: RepositoryConfig, old: Validation) -> None:
        """``old``'s head is no longer the request's: unless its summary is final, end it
        on that head with an error naming why (a pending status would stay for ever)."""
        if old.settled or not repo.commit_status or old.state not in ("validating",
                                                                      "waiting"):
            return
        status = CommitStatus(SUMMARY_STATUS, "error",
                              self.providers[repo.provider].file_url(repo, "", old.head),
                              "superseded: the pull request has a newer head")
        if self.store.enqueue_task(summary_task(repo, old, status, self.clock(),
                                                superseded=True)):
            self.wake()

    def heal(self, now: float) -> int:
        """Re-derive the summary of every recent validation not settled yet (an update an
        error interrupted, an outcome that reached another request's validation first);
        how many were looked at. Called by the outcome poll, on one replica."""
        healed = 0
        for v in self.store.validations(limit=HEAL_BATCH):
            repo = self.config.repository_by_key(v.repository)
            if repo is None or v.settled:
                continue
            self.refresh(repo, v)
            healed += 1
        return healed


class SummaryHandler:
    """Writes one summary task through its repository's provider, unless the validation
    moved on since it was recorded (another head, or another summary state): the status
    written is always the one the stored state derives now."""

    kind = KIND
    event = "status"
    done = "written"

    def __init__(self, summaries: Summaries) -> None:
        self.summaries = summaries

    def describe(self, task: Task) -> dict[str, Any]:
        """Repository, provider, commit, status name and state, and the request."""
        doc = json.loads(task.payload)
        provider, _, name = str(doc["repository"]).partition(":")
        return {"repository": name, "provider": provider, "commit": doc["head"],
                "status": SUMMARY_STATUS, "state": doc["state"], "number": doc["number"]}

    def pace(self, target: str) -> float:
        """Statuses are not paced (the providers' rate limits are answered by back-off)."""
        return 0.0

    def after(self, task: Task) -> Sequence[str]:
        """A summary comes after nothing: it is written only if still current."""
        return ()

    def send(self, task: Task) -> None:
        """Write the summary if it is still what the stored validation derives."""
        doc = json.loads(task.payload)
        s = self.summaries
        repo = s.config.repository_by_key(doc["repository"])
        if repo is None:
            raise TerminalError(f"{doc['repository']} is no longer configured")
        v = s.store.validation(repo.key, int(doc["number"]))
        if v is None:
            return
        if doc["superseded"]:
            if v.head == doc["head"]:
                return  # the request came back to this head: its own summary stands
        elif v.head != doc["head"] or v.generation != doc["generation"]:
            return
        else:
            current = s.derive(repo, v)
            if current is None or current.state != doc["state"]:
                return  # a newer state is (or was) recorded and written instead
        try:
            s.providers[repo.provider].set_status(repo, doc["head"], CommitStatus(
                SUMMARY_STATUS, doc["state"], doc["url"], doc["description"]))
        except ValueError as exc:  # not a commit id: no retry can write it
            raise TerminalError(str(exc)) from exc


# --- admitting one request event (the webhook route) -------------------------------------------


def admission(store: StateStore, repo: RepositoryConfig, pr: PullRequestEvent) -> str | None:
    """Why a verified request event of ``repo`` is answered ``ignored``, or None when it is
    recorded for validation: the repository validates no requests, the target branch is
    not one of its targets, or an ``updated`` event leaves the head as validated
    (Bitbucket Cloud and Azure DevOps send one for a title, reviewer or vote too). A store
    that cannot answer that last question admits the event (validating a head twice
    starts nothing twice)."""
    if repo.pull_requests is None:
        return "pull requests of this repository are not validated (no pull_requests)"
    if not repo.pull_requests.watches(pr.target_branch):
        return "target branch not watched for pull requests"
    if pr.action == "updated":
        try:
            stored = store.validation(repo.key, pr.number)
        except StateError:
            return None
        if stored is not None and stored.state in ("validating", "denied") \
                and stored.head.startswith(pr.head) and stored.draft == pr.draft:
            return "the pull request's head did not change"
    return None


# --- processing one request event ------------------------------------------------------------

RunState = Literal["started", "failed", "retry", "in_flight", "deferred"]


_Start = StartOutcome  # how one validate start attempt ended (receiver/launcher.py)


@dataclass(frozen=True, slots=True)
class _Due:
    """A validate pipeline the plan calls for: the deploy pipeline it validates, its
    configuration and why."""

    pipeline: str
    validates: PipelineConfig
    decision: Decision


class Validator:
    """Processes the deliveries of pull requests (the worker hands them over from the
    executor). Shares the executor's mirrors, module maps, start pool and outcome
    recorder; publishes starts and map problems to the same listeners."""

    def __init__(self, config: Config, store: StateStore, launcher: Launcher,
                 providers: Mapping[str, Provider], bus: Bus, *,
                 mirror: Callable[[RepositoryConfig], GitMirror], maps: RepositoryMaps,
                 pool: Executor, outcomes: OutcomeRecorder, summaries: Summaries,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.providers = providers
        self.bus = bus
        self.mirror = mirror
        self.maps = maps
        self.pool = pool
        self.outcomes = outcomes
        self.summaries = summaries
        self.clock = clock
        self.log = get_logger()

    def process(self, delivery: Delivery) -> None:
        """Validate (or record the end of) ``delivery``'s pull request. Raises RetryLater
        when part of it must be redone (a fetch or an API refused, a start to retry)."""
        pr = delivery.pull_request
        assert pr is not None
        repo = self.config.repository(delivery.provider, delivery.repository)
        with delivery_context(delivery.delivery_id, delivery.provider, delivery.repository):
            if repo is None or repo.pull_requests is None:
                self.log.warning("pull_request.ignored", number=pr.number,
                                 reason="pull requests of this repository are no longer "
                                        "validated")
                return
            job = _Job(self, repo, pr, delivery)
            try:
                job.run()
            except RetryLater as exc:
                if job.final:  # no attempt is left: say so on the head, never hang
                    job.failed(str(exc))
                raise


class _Job:
    """One pull request event being processed: everything its steps share."""

    def __init__(self, validator: Validator, repo: RepositoryConfig, pr: PullRequestEvent,
                 delivery: Delivery) -> None:
        self.v = validator
        self.repo = repo
        self.pr = pr
        self.delivery = delivery
        self.final = delivery.attempts >= validator.config.processing.max_attempts
        self.started = time.monotonic()
        self.merge_base: str | None = None
        # the full head, once known (Bitbucket Cloud's is resolved first)
        self.head: str | None = pr.head if len(pr.head) in (40, 64) else None
        self.changed_files = 0

    # --- the steps ---------------------------------------------------------------------

    def run(self) -> None:
        pr, options = self.pr, self.repo.pull_requests
        assert options is not None
        current = self.v.store.validation(self.repo.key, pr.number)
        if pr.closing:
            self._end(current)
            return
        if not options.watches(pr.target_branch):
            self._ignored(f"target branch {pr.target_branch!r} is no longer watched")
            return
        if pr.fork and options.forks == "deny":
            # nothing of a fork is fetched or read: only its head is resolved, for the status
            self._hold(current, "denied", "fork (forks: deny)")
            return
        if pr.draft and not options.drafts:
            self._hold(current, "waiting", "draft (drafts: false)")
            return
        self._validate(current)

    def _end(self, current: Validation | None) -> None:
        """A closed or merged request: record the end (no start: a merge is a push)."""
        state = "merged" if self.pr.action == "merged" else "closed"
        if current is not None and current.state != state:
            self._save(current, lambda v: dataclasses.replace(
                v, state=state, delivery_id=self.delivery.delivery_id))
        self._record((), f"{state}: nothing to validate")
        self._ignored(f"{state}: nothing more is validated (a merge deploys as a push)")

    def _hold(self, current: Validation | None, state: Literal["denied", "waiting"],
              why: str) -> None:
        """Not validated (a fork denied, a draft waiting): record it and its summary."""
        head = self.head = self._full_head(fetch=False)
        if head is None:
            self._ignored(f"{why}; its head {self.pr.head} could not be resolved to write "
                          "a status")
            return
        stored = self._new_head(current, head, state=state, runs=(), merge_base=None)
        self.v.summaries.refresh(self.repo, stored)
        self._record((), why)
        self._ignored(why)

    def failed(self, error: str) -> None:
        """The last attempt could not validate the request: an error summary on its head
        (when the head is known), and the worker fails the delivery."""
        if self.head is None:
            return
        current = self.v.store.validation(self.repo.key, self.pr.number)
        stored = self._new_head(current, self.head, state="failed",
                                runs=current.runs if current is not None
                                and current.head == self.head else (),
                                merge_base=self.merge_base, error=error[:300])
        self.v.summaries.refresh(self.repo, stored)

    def _validate(self, current: Validation | None) -> None:
        repo, pr = self.repo, self.pr
        if repo.diff == "git":
            self._fetch()
        head = self.head = self._full_head(fetch=repo.diff == "git")
        if head is None:
            raise RetryLater(f"the head {pr.head} of #{pr.number} could not be resolved")
        pipelines = self._pipelines(head)
        self.merge_base, missing = self._merge_base(head)
        known = self.v.store.baselines(repo.key, pr.target_branch)
        plan = plan_pull_request(pipelines.modules, known, merge_base=self.merge_base,
                                 head=head, missing=missing,
                                 diff=lambda base, _head: self._diff(base, head))
        self.changed_files = plan.changed_files
        due = self._due(plan, pipelines)
        runs = tuple(ValidationRun(d.pipeline, d.validates.name) for d in due.values())
        stored = self._new_head(current, head, state="validating", runs=runs,
                                merge_base=self.merge_base)
        # the summary first (pending while runs are due): it is what a branch rule waits
        # for, and the per-pipeline statuses of the starts queue behind it
        stored = self.v.summaries.refresh(repo, stored) or stored
        if plan.decisions and not self.merge_base:
            self.v.log.warning("changes.incomplete", reason=missing, head=head,
                               number=pr.number, pipelines=sorted(due))
        outcomes = self._launch_all(stored, due)
        stored = self._save(stored, lambda v: dataclasses.replace(v, runs=tuple(
            dataclasses.replace(r, execution_id=outcomes[r.pipeline].execution_id,
                                error=outcomes[r.pipeline].error
                                if outcomes[r.pipeline].state in ("failed", "deferred")
                                else None)
            for r in v.runs)))
        if self.v.launcher.dry_run:  # a dry-run start counts as Succeeded at once
            for run in stored.runs:
                if run.execution_id is not None:
                    self.v.outcomes.observe(Observation(run.pipeline, run.execution_id,
                                                        "Succeeded", "dry-run"),
                                            self.v.clock())
        self.v.summaries.refresh(repo, stored)
        self._trace(plan, pipelines, due, outcomes)
        started = sorted(p for p, o in outcomes.items() if o.state == "started")
        self.v.log.info("pull_request.validated", number=pr.number, head=head,
                        merge_base=self.merge_base, target=pr.target_branch,
                        pipelines_started=started, changed_files=self.changed_files,
                        pipelines_unchanged=sorted(n for n, d in plan.decisions.items()
                                                   if d.verdict != "changed"),
                        duration_ms=round((time.monotonic() - self.started) * 1000, 1))
        if any(o.state in ("retry", "in_flight") for o in outcomes.values()):
            raise RetryLater("a validate start must be tried again")

    # --- git and the provider ------------------------------------------------------------

    def _fetch(self) -> None:
        """``diff: git``: the target branch, the ref that holds the head (a full head
        too, by id): one fetch."""
        pr = self.pr
        refs = [f"refs/heads/{pr.target_branch}"]
        if pr.source_ref is not None:
            refs.append(pr.source_ref)
        if len(pr.head) in (40, 64):
            refs.append(pr.head)
        try:
            self.v.mirror(self.repo).fetch(refs)
        except ProviderError as exc:
            self.v.log.warning("provider.error", error=str(exc), final=self.final, diff="git")
            raise RetryLater(str(exc)) from exc

    def _full_head(self, *, fetch: bool) -> str | None:
        """The head as a full commit id (Bitbucket Cloud sends 12 digits): from the mirror
        when it was fetched, else the provider's API. None when neither knows it."""
        head = self.pr.head
        if len(head) in (40, 64):
            return head
        if fetch:
            found = self.v.mirror(self.repo).resolve(head)
            if found is not None:
                return found
        try:
            return self.v.providers[self.repo.provider].resolve_commit(self.repo, head)
        except ProviderError as exc:
            self.v.log.warning("provider.error", error=str(exc), head=head, final=self.final)
            return None

    def _merge_base(self, head: str) -> tuple[str | None, str]:
        """The merge base of the target branch and ``head``, or None and why not."""
        repo, pr = self.repo, self.pr
        if repo.diff == "git":
            mirror = self.v.mirror(repo)
            target = mirror.resolve(f"refs/heads/{pr.target_branch}")
            if target is None:
                return None, f"the target branch {pr.target_branch} is not in the mirror"
            if mirror.resolve(head) is None:
                self._fetch_by_id(head)
            found = mirror.merge_base(target, head)
            return found, ("" if found else f"no merge base of {pr.target_branch} and "
                           f"{head[:12]} (unrelated histories, or the head is gone)")
        if pr.merge_base is not None:
            return pr.merge_base, ""
        try:
            found = self.v.providers[repo.provider].merge_base(repo, pr.target_branch, head)
        except ProviderError as exc:
            self._provider_failed(exc)
            return None, f"the provider API failed on the last attempt: {exc}"
        return found, ("" if found else f"the {repo.provider} API names no merge base of "
                       f"{pr.target_branch} and {head[:12]} (diff: git computes it)")

    def _fetch_by_id(self, head: str) -> None:
        try:
            self.v.mirror(self.repo).fetch([head])
        except ProviderError as exc:
            self.v.log.warning("provider.error", error=str(exc), final=self.final, diff="git")
            raise RetryLater(str(exc)) from exc

    def _diff(self, base: str, head: str) -> Diff:
        repo = self.repo
        try:
            if repo.diff == "git":
                return self.v.mirror(repo).changed_files(base, head)
            return self.v.providers[repo.provider].changed_files(repo, base, head)
        except ProviderError as exc:
            self._provider_failed(exc)
            return Diff("diverged", None, f"provider API failed on the last attempt: {exc}")

    def _provider_failed(self, exc: ProviderError) -> None:
        """Retry later, unless this is the last attempt and the failure is not a refusal
        (a token that cannot read the repository must not validate everything)."""
        unreadable = isinstance(exc, RepositoryUnreadable) or self.repo.diff == "git"
        self.v.log.warning("provider.error", error=str(exc), final=self.final,
                           unreadable=unreadable)
        if not self.final or unreadable:
            raise RetryLater(str(exc)) from exc

    def _pipelines(self, head: str) -> PipelineSet:
        """The configured pipelines and, with ``module_map``, those of the file at the
        head (not kept as the last valid map: the request is not merged)."""
        try:
            resolved = self.v.maps.resolve(self.repo, head, keep=False)
        except ProviderError as exc:
            if not self.final:
                raise RetryLater(str(exc)) from exc
            self.v.log.warning("module_map.unreadable", commit=head, error=str(exc))
            resolved = self.v.maps.kept(self.repo)
        if resolved.problems:
            assert self.repo.module_map is not None
            self.v.log.warning("module_map.invalid", path=self.repo.module_map.path,
                               commit=head, errors=list(resolved.problems), kept=resolved.kept)
            self.v.bus.publish(MapInvalid(self.repo, head, self.repo.module_map.path,
                                          resolved.problems, resolved.kept))
        return resolved.pipelines

    # --- what is due, and starting it ----------------------------------------------------

    def _due(self, plan: PushPlan, pipelines: PipelineSet) -> dict[str, _Due]:
        """The validate pipelines of the changed pipelines, by name (one start each, also
        when several pipelines name the same one: the first in name order is recorded)."""
        due: dict[str, _Due] = {}
        configured = {p.name for p in self.repo.pipelines}
        allow = self.repo.module_map.names if self.repo.module_map is not None else None
        for name in sorted(plan.decisions):
            decision = plan.decisions[name]
            if decision.verdict != "changed":
                continue
            config = pipelines.pipeline(name)
            target = config.validate_name()
            if target is None:
                continue
            source = pipelines.modules.source(name)
            from_file = source is not None and source[0] not in configured
            # a map file's template makes its names from paths: each concrete name is
            # checked against allow, as the file's own names are
            if from_file and (allow is None or not allow.admits(target)):
                self.v.log.warning("module_map.refused", pipeline=target,
                                   reason="validate pipeline name outside module_map.allow")
                continue
            due.setdefault(target, _Due(target, config, decision))
        return due

    def _launch_all(self, stored: Validation, due: Mapping[str, _Due]) -> dict[str, _Start]:
        futures = {name: self.v.pool.submit(contextvars.copy_context().run, self._launch,
                                            stored, d) for name, d in due.items()}
        return {name: future.result() for name, future in futures.items()}

    def _launch(self, stored: Validation, due: _Due) -> _Start:
        """Start ``due.pipeline`` at the head, at most once per (pipeline, head)."""
        v, pr, head = self.v, self.pr, stored.head
        if self._deploy_running(due.pipeline):
            error = (f"a deploy of {due.pipeline} on {pr.target_branch} was running: not "
                     "started, so as not to supersede it")
            if not self.final:
                v.log.info("validation.deferred", pipeline=due.pipeline, commit=head,
                           number=pr.number)
                return _Start("retry", error=error)
            return _Start("deferred", error=error)
        request = StartRequest(pipeline=due.pipeline, commit=head, branch=pr.source_branch,
                               repository=self.repo.name,
                               source_action=due.validates.source_action, validation=True)
        outcome = start_once(v.store, v.launcher, START_PREFIX + due.pipeline, request,
                             owner=self.delivery.delivery_id, attempt=self.delivery.attempts,
                             final=self.final, clock=v.clock, branch=pr.source_branch,
                             number=pr.number, validates=due.validates.name)
        if outcome.state == "started":
            assert outcome.execution_id is not None
            self._record_execution(stored, due.pipeline, outcome.execution_id)
        return outcome

    def _deploy_running(self, pipeline: str) -> bool:
        """Whether ``pipeline`` deploys the target branch and its last start is running."""
        row = self.v.store.baselines(self.repo.key, self.pr.target_branch).get(pipeline)
        return row is not None and row.in_flight

    def _record_execution(self, stored: Validation, pipeline: str, execution_id: str) -> None:
        """Keep the execution (a validation: it names the request), and tell the listeners
        (its pending status ``codepipeline/<pipeline>`` on the head)."""
        now = self.v.clock()
        execution = Execution(pipeline=pipeline, execution_id=execution_id,
                              repository=self.repo.key, branch=self.pr.source_branch,
                              commit=stored.head, started_at=now, updated_at=now,
                              pull_request=self.pr.number)
        self.v.store.record_execution(execution)
        if self.v.bus.publish(PipelineStarted(self.repo, execution)):
            self.v.store.settle_execution(execution)

    # --- the stored validation -------------------------------------------------------------

    def _new_head(self, current: Validation | None, head: str, *,
                  state: Literal["validating", "waiting", "denied", "failed"],
                  runs: tuple[ValidationRun, ...], merge_base: str | None,
                  error: str | None = None) -> Validation:
        """Store the request at ``head`` in ``state``: a head other than the stored one is
        a new generation (and supersedes the old head's summary); the same head keeps the
        runs an earlier attempt started."""
        pr = self.pr

        def update(v: Validation | None) -> Validation:
            same = v is not None and v.head == head
            kept = {r.pipeline: r for r in v.runs} if v is not None and same else {}
            generation = (v.generation if same else v.generation + 1) if v else 1
            return Validation(
                repository=self.repo.key, number=pr.number, head=head,
                source_branch=pr.source_branch, target_branch=pr.target_branch, state=state,
                generation=generation, merge_base=merge_base, fork=pr.fork, draft=pr.draft,
                runs=tuple(kept.get(r.pipeline, r) for r in runs),
                delivery_id=self.delivery.delivery_id, updated_at=self.v.clock(),
                summary=v.summary if v is not None and same and v.state == state else None,
                error=error, version=v.version if v is not None else 0)

        if current is not None and current.head != head:
            self.v.summaries.supersede(self.repo, current)
        return self._save(current, update)

    def _save(self, current: Validation | None,
              change: Callable[[Any], Validation]) -> Validation:
        """Apply ``change`` to the stored validation by compare-and-set, reading it again
        after a lost race (a listener recording a summary meanwhile)."""
        for _ in range(CAS_ROUNDS):
            updated = change(current)
            updated = dataclasses.replace(updated, updated_at=self.v.clock())
            if self.v.store.save_validation(updated):
                return dataclasses.replace(updated, version=updated.version + 1)
            current = self.v.store.validation(self.repo.key, self.pr.number)
        raise StateError(f"validation of #{self.pr.number}: lost {CAS_ROUNDS} updates")

    # --- what is recorded and logged ---------------------------------------------------------

    def _trace(self, plan: PushPlan, pipelines: PipelineSet, due: Mapping[str, _Due],
               outcomes: Mapping[str, _Start]) -> None:
        """The decision record: each validate pipeline that was due and how its start went,
        and each other pipeline with its verdict."""
        entries: list[PipelineDecision] = []
        brought = {d.validates.name for d in due.values()}
        for name, d in due.items():
            o = outcomes[name]
            entries.append(decision_entry(
                name, o.state, d.decision, execution_id=o.execution_id, error=o.error,
                reason=f"validates {d.validates.name}"
                + (f": {d.decision.reason}" if d.decision.reason else "")))
        for name, decision in sorted(plan.decisions.items()):
            if name in brought:
                continue
            verdict = decision.verdict if decision.verdict != "changed" else "not_validated"
            why = None if decision.verdict != "changed" else "no validate pipeline"
            entries.append(decision_entry(name, verdict, decision, reason=why))
        self._record(tuple(entries), None)

    def _record(self, entries: tuple[PipelineDecision, ...], note: str | None) -> None:
        """The request's decision record (``before`` is the merge base)."""
        pr, d = self.pr, self.delivery
        self.v.store.record_decision(DecisionRecord(
            delivery_id=d.delivery_id, provider=d.provider, repository=d.repository,
            ref_type=pr.ref_type, ref=pr.ref_name, before=self.merge_base,
            head=self.head or pr.head, recorded_at=self.v.clock(), attempt=d.attempts,
            pipelines=tuple(sorted(entries, key=lambda e: e.pipeline)), note=note))

    def _ignored(self, reason: str) -> None:
        self.v.log.info("pull_request.ignored", number=self.pr.number, head=self.pr.head,
                        action=self.pr.action, reason=reason)

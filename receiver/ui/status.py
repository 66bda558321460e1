"""What the status pages show, read from the state store (no HTML here: the templates
render these, autoescaped).

Every read is bounded: the baselines the store holds, at most ``limit`` decision records
per configured repository, and at most ``OUTCOME_LOOKUPS`` execution reads per page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from receiver.config import Config
from receiver.launcher import aws_region
from receiver.modules import PLACEHOLDER
from receiver.state.base import (
    ACTIVE_VERDICTS,
    Backlog,
    Baseline,
    DecisionRecord,
    Execution,
    Holding,
    PipelineDecision,
    StateStore,
    Validation,
    ValidationRun,
)
from receiver.statuses import console_url

OUTCOME_LOOKUPS = 200  # execution reads per page: the rest say "not looked up"
RECORDS_MAX = 200  # the most decision records one page lists (?limit=)
RECORDS_DEFAULT = 50


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one started execution went, as far as the service knows."""

    execution_id: str
    status: str | None  # None: not looked up, or an execution this service does not know
    started_at: float | None = None
    updated_at: float | None = None
    url: str | None = None  # the AWS console's page of it (None for a dry run)


@dataclass(frozen=True, slots=True)
class PipelineRow:
    """One pipeline on one branch: the front page's row."""

    baseline: Baseline
    outcome: Outcome | None
    starting: tuple[Holding, ...]  # start intents of this pipeline in flight

    @property
    def status(self) -> str | None:
        """The last execution's status, as last learnt."""
        return (self.outcome.status if self.outcome else None) or \
            self.baseline.last_execution_status


@dataclass(frozen=True, slots=True)
class BranchGroup:
    """The pipelines of one repository's branch."""

    repository: str  # as configured (acme/mono), or the state key of one no longer configured
    provider: str
    branch: str
    rows: tuple[PipelineRow, ...]


@dataclass(frozen=True, slots=True)
class Overview:
    """The front page: every branch's pipelines, what waits and who holds what."""

    groups: tuple[BranchGroup, ...]
    backlog: Backlog
    holdings: tuple[Holding, ...]
    now: float

    @property
    def oldest_pending_seconds(self) -> float | None:
        """The age of the oldest pending delivery; None when none waits."""
        oldest = self.backlog.oldest_delivery
        return None if oldest is None else max(0.0, self.now - oldest)


@dataclass(frozen=True, slots=True)
class Filters:
    """The deliveries page's filters (empty strings: not filtered)."""

    repository: str = ""  # a configured repository's state key (provider:name)
    branch: str = ""
    commit: str = ""
    pipeline: str = ""
    limit: int = RECORDS_DEFAULT


@dataclass(frozen=True, slots=True)
class RecordView:
    """One decision record and the outcomes of the executions it started."""

    record: DecisionRecord
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by pipeline

    @property
    def source(self) -> str:
        """Who brought the push: a provider's delivery or the reconciler."""
        return "reconciler" if self.record.delivery_id.startswith("reconcile:") else "delivery"


class Outcomes:
    """Execution reads for one page: each execution once, at most ``OUTCOME_LOOKUPS``."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.store = store
        # dry-run execution ids name nothing in the console
        self.region = None if config.launcher.backend == "log" else aws_region(
            config.launcher.region)
        self.seen: dict[tuple[str, str], Outcome] = {}

    def of(self, pipeline: str, execution_id: str) -> Outcome:
        """What the store knows about ``pipeline``'s execution ``execution_id``."""
        key = (pipeline, execution_id)
        if key in self.seen:
            return self.seen[key]
        url = console_url(self.region, pipeline, execution_id) if self.region else None
        found: Execution | None = None
        if len(self.seen) < OUTCOME_LOOKUPS:
            found = self.store.execution(pipeline, execution_id)
        outcome = Outcome(execution_id, found.status if found else None,
                          found.started_at if found else None,
                          found.updated_at if found else None, url)
        self.seen[key] = outcome
        return outcome

    def of_record(self, record: DecisionRecord) -> RecordView:
        """``record`` with the outcome of each execution it started."""
        return RecordView(record, {p.pipeline: self.of(p.pipeline, p.execution_id)
                                   for p in record.pipelines if p.execution_id})


def overview(config: Config, store: StateStore, now: float | None = None) -> Overview:
    """The front page: baselines by repository and branch, each with its last execution,
    the start intents in flight, the backlog and the leases."""
    now = time.time() if now is None else now
    outcomes = Outcomes(config, store)
    holdings = tuple(store.holdings(now))
    starting: dict[str, list[Holding]] = {}
    for held in holdings:
        if held.kind == "start":  # named pipeline@commit
            starting.setdefault(held.name.rpartition("@")[0], []).append(held)
    groups: dict[tuple[str, str], list[PipelineRow]] = {}
    for baseline in store.all_baselines():
        outcome = (outcomes.of(baseline.pipeline, baseline.last_execution_id)
                   if baseline.last_execution_id else None)
        groups.setdefault((baseline.repository, baseline.branch), []).append(
            PipelineRow(baseline, outcome, tuple(starting.get(baseline.pipeline, ()))))
    return Overview(tuple(_group(config, key, branch, rows)
                          for (key, branch), rows in groups.items()),
                    store.backlog(now), holdings, now)


def _group(config: Config, key: str, branch: str, rows: list[PipelineRow]) -> BranchGroup:
    repo = config.repository_by_key(key)
    provider, _, name = key.partition(":")
    return BranchGroup(repo.name if repo else name, provider, branch, tuple(rows))


def records(config: Config, store: StateStore, filters: Filters) -> list[RecordView]:
    """The decision records the filters select, newest first, at most ``filters.limit``.

    A commit is looked up by it (``history``); otherwise each selected repository's latest
    records (``recent_decisions``, a branch's when one is given), and with a pipeline also
    the records that started it or tried to (``history`` by pipeline), which reach further
    back than a busy repository's latest pushes. Every filter then applies to what was read;
    a pipeline filter shows that pipeline's entry only.
    """
    limit = filters.limit
    found: list[DecisionRecord] = []
    if filters.commit:
        found = store.history(commit=filters.commit, limit=limit)
    else:
        keys = [filters.repository] if filters.repository else \
            [r.key for r in config.repositories]
        for key in keys:
            found += store.recent_decisions(key, branch=filters.branch or None, limit=limit)
        if filters.pipeline:
            found += store.history(pipeline=filters.pipeline, limit=limit)
    selected: dict[tuple[str, str], DecisionRecord] = {}
    for record in found:
        if filters.repository and record.repository_key != filters.repository:
            continue
        if filters.branch and (record.ref_type, record.ref) != ("branch", filters.branch):
            continue
        if filters.pipeline:
            record = record.only(filters.pipeline)
            if not record.pipelines:
                continue
        selected.setdefault((record.delivery_id, record.push_key), record)
    newest = sorted(selected.values(), key=lambda r: r.recorded_at, reverse=True)[:limit]
    outcomes = Outcomes(config, store)
    return [outcomes.of_record(r) for r in newest]


@dataclass(frozen=True, slots=True)
class PipelineView:
    """One pipeline: where it stands on each branch, and its starts with their outcomes."""

    name: str
    configured: bool
    rows: tuple[PipelineRow, ...]
    starts: tuple[tuple[DecisionRecord, PipelineDecision, Outcome | None], ...]


def pipeline(config: Config, store: StateStore, name: str,
             limit: int = RECORDS_DEFAULT) -> PipelineView | None:
    """``name``'s baselines and its last ``limit`` starts (or tries), newest first; None
    when the service knows nothing of it (not configured, no baseline, no record)."""
    outcomes = Outcomes(config, store)
    rows = tuple(PipelineRow(b, outcomes.of(b.pipeline, b.last_execution_id)
                             if b.last_execution_id else None, ())
                 for b in store.all_baselines() if b.pipeline == name)
    starts = []
    for record in store.history(pipeline=name, limit=limit):
        for entry in record.pipelines:
            if entry.pipeline == name and entry.verdict in ACTIVE_VERDICTS:
                starts.append((record, entry, outcomes.of(name, entry.execution_id)
                               if entry.execution_id else None))
    configured = any(p.name == name for r in config.repositories for p in r.pipelines
                     if PLACEHOLDER not in p.name)
    if not (configured or rows or starts):
        return None
    return PipelineView(name, configured, rows, tuple(starts))


@dataclass(frozen=True, slots=True)
class ValidationView:
    """One pull request's validation, with each validate run's outcome."""

    validation: Validation
    runs: tuple[tuple[ValidationRun, Outcome | None], ...]

    @property
    def repository(self) -> str:
        """The repository's name as configured (the state key without its provider)."""
        return self.validation.repository.partition(":")[2]


def validations(config: Config, store: StateStore,
                limit: int = RECORDS_DEFAULT) -> list[ValidationView]:
    """The pull requests' validations, most recently updated first, each run with how its
    execution went (at most ``OUTCOME_LOOKUPS`` execution reads, as every page)."""
    outcomes = Outcomes(config, store)
    return [ValidationView(v, tuple((run, outcomes.of(run.pipeline, run.execution_id)
                                     if run.execution_id else None) for run in v.runs))
            for v in store.validations(limit=limit)]

"""The state-store protocol: deliveries (with leases), baselines (with versions), starts.

Every backend gives the same guarantees, so the processor can run in many processes at once:

- ``record_delivery`` is an atomic insert-if-absent on the delivery id.
- ``claim_delivery`` hands a pending delivery to one owner until its lease expires; a
  delivery whose owner died is claimable again after that.
- ``advance_baseline`` is a compare-and-set on the version read by ``baselines``.
- ``begin_start`` is an atomic create-or-get of the start intent for (pipeline, commit).
- ``record_decision`` keeps one ``DecisionRecord`` per push (ref of a delivery), whose
  stored form (``to_json``/``from_json``) is the same in every backend.
- ``enqueue_task`` keeps a pending effect (a commit status, a notification) once per key,
  until its sender finishes it: ``claim_tasks`` leases the due ones to one owner at a time,
  so a restart or a deploy loses none and a replica never sends another's.
- An execution stays *open* (``open_executions``) until its status is final **and**
  settled: ``settle_execution`` records that the follow-ups of that status (baseline,
  statuses, notifications) were applied, so a poll re-applies what an error interrupted.

- ``save_validation`` is a compare-and-set on a pull request's :class:`Validation`
  (``version`` 0: none yet), so the worker validating a new head and a listener applying
  an outcome never overwrite each other.

``ACTIVE_VERDICTS`` are the pipeline verdicts a by-pipeline history lists.

Times are UNIX seconds (float). Every method raises ``receiver.errors.StateError`` when the
backend cannot answer; nothing else escapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

from receiver.events import PULL_REQUEST, Delivery

StartState = Literal["pending", "started", "failed"]
# GetPipelineExecution's statuses of a pipeline execution
ExecutionStatus = Literal["InProgress", "Stopping", "Succeeded", "Failed", "Stopped",
                          "Cancelled", "Superseded"]
FINAL_STATUSES = frozenset({"Succeeded", "Failed", "Stopped", "Cancelled", "Superseded"})
RUNNING_STATUSES = frozenset({"InProgress", "Stopping"})
# The baseline commit stored when nothing is known to be deployed (a first start failed, or
# its execution did): the next push counts the pipeline as changed.
NOTHING_DEPLOYED = ""
ACTIVE_VERDICTS = frozenset({"started", "failed", "retry", "in_flight"})

# How long each kind of record is kept (DynamoDB: TTL; SQLite: purged as it goes).
DELIVERY_RETENTION_SECONDS = 30 * 86400  # the redelivery dedup window
START_RETENTION_SECONDS = 180 * 86400
HISTORY_RETENTION_SECONDS = 90 * 86400


@dataclass(frozen=True, slots=True)
class Baseline:
    """Where one pipeline stands on one branch. ``version`` 0 means no row yet."""

    repository: str
    branch: str
    pipeline: str
    commit: str | None = None
    last_started_commit: str | None = None
    last_execution_id: str | None = None
    updated_at: float = 0.0
    version: int = 0
    deployed_commit: str | None = None  # of the latest-started execution that Succeeded
    deployed_started_at: float = 0.0  # when that execution was started
    last_execution_status: str | None = None  # of last_execution_id, as last learnt

    @property
    def in_flight(self) -> bool:
        """The last start's outcome is not applied to this row yet."""
        return self.last_execution_status in RUNNING_STATUSES


@dataclass(frozen=True, slots=True)
class Execution:
    """A pipeline execution this service started, and its status as last learnt.

    ``repository`` is the repository's state key; ``attempt`` the execution's
    ``pipeline-execution-attempt`` (a console retry keeps the id and counts up). A
    validation's ``branch`` is its pull request's source branch.
    """

    pipeline: str
    execution_id: str
    repository: str
    branch: str
    commit: str
    started_at: float
    status: str = "InProgress"
    attempt: int = 1
    updated_at: float = 0.0
    # the status whose follow-ups (baseline, statuses, notifications) were all applied
    settled: str | None = None
    # the number of the pull request this execution validates (receiver/validation.py):
    # None for a deploy. A validation moves no baseline and no deployed commit.
    pull_request: int | None = None

    @property
    def final(self) -> bool:
        """Whether the execution has ended (a console retry may still start it again)."""
        return self.status in FINAL_STATUSES

    @property
    def open(self) -> bool:
        """Running, or ended with follow-ups still to apply: the poll looks at it."""
        return not self.final or self.settled != self.status


@dataclass(frozen=True, slots=True)
class StartRecord:
    """The start intent of (pipeline, commit), written before the pipeline is started."""

    pipeline: str
    commit: str
    state: StartState
    owner: str
    attempt: int = 1
    execution_id: str | None = None
    error: str | None = None


TaskOutcome = Literal["done", "failed"]


@dataclass(frozen=True, slots=True)
class Task:
    """One pending effect, kept in the store until its sender finishes it.

    ``key`` identifies the effect (the same effect enqueued twice is one task: e.g. one
    commit status per commit, name and state); ``kind`` names the sender that performs it
    (``status``, ``notify``); ``target`` is what sends are paced by (a repository, a chat
    webhook); ``payload`` is the sender's JSON. ``due_at`` is when it may next be tried,
    ``attempts`` how many tries failed so far, ``error`` the last failure.
    """

    key: str
    kind: str
    target: str
    payload: str
    due_at: float
    created_at: float
    attempts: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits: pending deliveries (the oldest's ``received_at``) and pending tasks (the
    earliest ``due_at``); None when there is none."""

    deliveries: int
    oldest_delivery: float | None
    tasks: int
    oldest_task: float | None


@dataclass(frozen=True, slots=True)
class Holding:
    """Something held by an owner until an expiry, as ``state leases`` lists it: a lease
    (``lease``), a ref being processed (``ref``) or a pipeline start in flight (``start``)."""

    kind: Literal["lease", "ref", "start"]
    name: str
    owner: str
    until: float | None


@dataclass(frozen=True, slots=True)
class Head:
    """The last known head of one watched branch: the commit a processed delivery (or the
    reconciler) last saw there, and the provider's ETag for it (GitHub: conditional reads)."""

    sha: str
    etag: str | None = None
    updated_at: float = 0.0


def pull_request_key(repository: str, number: int) -> str:
    """How the records of pull request ``number`` of ``repository`` (its state key,
    ``provider:name``) are found: ``github:acme/mono#42``."""
    return f"{repository}#{number}"


@dataclass(frozen=True, slots=True)
class PipelineDecision:
    """One pipeline's verdict in one push, and why."""

    pipeline: str
    verdict: str            # started | unchanged | contained | failed | retry | in_flight
    baseline: str | None    # the commit it was compared from (None: none known)
    # where the verdict came from: compare, identical, new-branch, nothing-deployed, tag
    diff: str
    complete: bool          # False when every pipeline counted as changed (incomplete difference)
    reason: str | None = None
    # (path, glob), or (path, glob, dependency) when a dependency's path selected the
    # pipeline; at most planner.MATCHES_KEPT
    matched: tuple[tuple[str, ...], ...] = ()
    matched_count: int = 0
    execution_id: str | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineDecision:
        """Read a stored entry: unknown keys are ignored, missing ones take their default."""
        return cls(
            pipeline=str(data["pipeline"]), verdict=str(data["verdict"]),
            baseline=data.get("baseline"), diff=str(data.get("diff", "")),
            complete=bool(data.get("complete", True)), reason=data.get("reason"),
            matched=tuple(tuple(str(part) for part in m) for m in data.get("matched") or ()),
            matched_count=int(data.get("matched_count", 0)),
            execution_id=data.get("execution_id"), error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """The "why" record of one push (one ref of one delivery)."""

    delivery_id: str
    provider: str
    repository: str
    ref_type: str
    ref: str
    before: str | None
    head: str | None
    recorded_at: float
    attempt: int
    pipelines: tuple[PipelineDecision, ...]
    # why the push was not (wholly) processed: its delivery failed (attempts used up, the
    # reason given), or git refuses its ref name; None for a processed push
    failure: str | None = None
    # why nothing was decided although nothing failed (a pull request from a fork, a
    # draft, a closed request)
    note: str | None = None

    @property
    def pull_request_key(self) -> str | None:
        """A pull request's record: :func:`pull_request_key` of it; None for a push."""
        if self.ref_type != PULL_REQUEST:
            return None
        return pull_request_key(f"{self.provider}:{self.repository}", int(self.ref))

    @property
    def repository_key(self) -> str:
        """The state key of the record's repository (``provider:name``, as
        ``RepositoryConfig.key``): what :meth:`StateStore.recent_decisions` selects by."""
        return f"{self.provider}:{self.repository}"

    @property
    def push_key(self) -> str:
        """The record's key within its delivery (``branch:main``): a delivery that moved
        several refs has one record per ref. Not ``Delivery.ref_key``, the queue's key."""
        return f"{self.ref_type}:{self.ref}"

    def only(self, pipeline: str) -> DecisionRecord:
        """This record with only ``pipeline``'s entry (what a by-pipeline history shows)."""
        return replace(self, pipelines=tuple(p for p in self.pipelines
                                             if p.pipeline == pipeline))

    def to_dict(self) -> dict[str, Any]:
        """The record as plain data (``pipelines`` as a tuple of dicts)."""
        return asdict(self)

    def to_json(self) -> str:
        """The stored (and ``history --json``) form: compact JSON, tuples as arrays."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionRecord:
        """Read a stored record, also one written by an earlier or later version: unknown
        keys are ignored, missing ones take their default."""
        return cls(
            delivery_id=str(data["delivery_id"]), provider=str(data.get("provider", "")),
            repository=str(data.get("repository", "")), ref_type=str(data["ref_type"]),
            ref=str(data["ref"]), before=data.get("before"), head=data.get("head"),
            recorded_at=float(data.get("recorded_at", 0.0)),
            attempt=int(data.get("attempt", 1)),
            pipelines=tuple(PipelineDecision.from_dict(p) for p in data.get("pipelines", ())),
            failure=data.get("failure"), note=data.get("note"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DecisionRecord:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


ValidationState = Literal["validating", "waiting", "denied", "failed", "closed", "merged"]


@dataclass(frozen=True, slots=True)
class ValidationRun:
    """One validate pipeline a pull request's head needs: the deploy pipeline whose
    modules brought it in, the execution started (None until it is), or why it could not
    be started for good (``error``)."""

    pipeline: str
    validates: str
    execution_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Validation:
    """Where one pull request's validation stands (receiver/validation.py).

    ``repository`` is the repository's state key; ``head`` the request's head being
    validated, ``generation`` counts the heads seen (a new head supersedes the summary of
    the old one). ``state``: ``validating`` (``runs`` are the validate pipelines its head
    needs: none when no module is affected), ``waiting`` (a draft), ``denied`` (from a fork
    with ``forks: deny``), ``failed`` (its last attempt could not validate it: ``error``
    says why), ``closed`` or ``merged`` (the end). ``summary`` is the state of
    the summary status last recorded for this generation; ``version`` is the store's
    compare-and-set counter (0: not stored yet).
    """

    repository: str
    number: int
    head: str
    source_branch: str
    target_branch: str
    state: ValidationState
    generation: int = 1
    merge_base: str | None = None
    fork: bool = False
    draft: bool = False
    runs: tuple[ValidationRun, ...] = ()
    delivery_id: str = ""
    updated_at: float = 0.0
    summary: str | None = None
    error: str | None = None
    version: int = 0

    @property
    def settled(self) -> bool:
        """Nothing about it can change any more without a new event: it ended, or its
        summary was recorded in a final state."""
        return self.state in ("closed", "merged") or self.summary in ("success", "failure",
                                                                      "error")

    def to_json(self) -> str:
        """The stored form (``version`` is the store's, not part of it)."""
        doc = asdict(self)
        doc.pop("version")
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, version: int) -> Validation:
        """Read a stored validation; unknown keys are ignored, missing ones defaulted."""
        doc = json.loads(text)
        known = {f for f in cls.__dataclass_fields__ if f not in ("runs", "version")}
        return cls(**{k: v for k, v in doc.items() if k in known},
                   runs=tuple(ValidationRun(**{k: v for k, v in run.items()
                                               if k in ValidationRun.__dataclass_fields__})
                              for run in doc.get("runs", ())),
                   version=version)


class StateStore(Protocol):
    """What the service keeps. See the module docstring for the guarantees."""

    def init(self) -> None:
        """Create whatever the backend needs (tables, indexes), or bring what an earlier
        version made up to date. Idempotent, also when several processes run it at once."""

    def ping(self) -> None:
        """Return if the backend answers; raise StateError otherwise (readiness check)."""

    def record_delivery(self, delivery: Delivery, now: float) -> bool:
        """Record a verified delivery as pending. False if its id was already recorded."""

    def claim_delivery(self, owner: str, lease_seconds: float, now: float) -> Delivery | None:
        """Lease the oldest pending delivery that nobody holds (or whose lease expired).

        The returned delivery's ``attempts`` counts this claim. None when there is none.
        """

    def extend_lease(self, delivery: Delivery, owner: str, until: float) -> bool:
        """Push the owner's lease to ``until`` (a heartbeat). False if ``owner`` lost it."""

    def release_delivery(self, delivery: Delivery, owner: str, retry_at: float) -> None:
        """Give a claimed delivery back, claimable again from ``retry_at`` (owner only)."""

    def finish_delivery(self, delivery: Delivery, owner: str, outcome: str, now: float) -> None:
        """Mark a claimed delivery done (owner only; ``outcome``: processed or failed)."""

    def baselines(self, repository: str, branch: str) -> dict[str, Baseline]:
        """Current baselines of one branch, by pipeline name (absent pipelines have none)."""

    def advance_baseline(self, expected: Baseline, commit: str, now: float,
                         execution_id: str | None = None) -> bool:
        """Set the baseline to ``commit`` if its version is still ``expected.version``.

        With ``execution_id`` the pipeline was started at ``commit`` (last started commit
        and execution id are updated too). False when another writer got there first.
        """

    def all_baselines(self) -> Iterator[Baseline]:
        """Every baseline, ordered by repository, branch, pipeline."""

    def begin_start(self, pipeline: str, commit: str, owner: str, attempt: int,
                    now: float) -> StartRecord:
        """Create the start intent for (pipeline, commit) owned by ``owner``, or return it.

        ``owner`` is a delivery id and ``attempt`` its claim count. The intent is taken
        over (state pending, this owner and attempt) when it ``failed``, or when it is still
        pending from an earlier attempt of the same delivery, whose lease has expired since.
        """

    def record_decision(self, record: DecisionRecord) -> None:
        """Keep the "why" record of one push, keyed by (delivery_id, ``record.push_key``):
        a retried delivery replaces its record. Kept HISTORY_RETENTION_SECONDS."""

    def history(self, *, delivery_id: str | None = None, commit: str | None = None,
                pipeline: str | None = None, pull_request: tuple[str, int] | None = None,
                limit: int = 20) -> list[DecisionRecord]:
        """Decision records, newest ``recorded_at`` first, at most ``limit``, selected by
        exactly one of the four keys (none given: ValueError). ``commit`` is a head;
        ``pull_request`` is (repository state key, number): the records of that request.

        By ``pipeline``: the records in which that pipeline was started, failed, retried or
        in flight (ACTIVE_VERDICTS), each narrowed to that pipeline's entry; an unchanged
        pipeline is found through its commit instead. Empty when nothing matches.
        """

    def recent_decisions(self, repository: str, *, branch: str | None = None,
                         limit: int = 20) -> list[DecisionRecord]:
        """The decision records of ``repository`` (its state key, ``provider:name``: the
        record's ``provider`` and ``repository``), newest ``recorded_at`` first, at most
        ``limit``; with ``branch`` only the pushes to that branch (not a tag of that name).
        Whole records, as :meth:`history` by delivery returns them. Empty when none."""

    def replace_baseline(self, expected: Baseline, updated: Baseline) -> bool:
        """Write every field of ``updated`` if the row's version is still ``expected.version``
        (an existing row: version >= 1); the version goes up by one. False on a lost race."""

    def record_execution(self, execution: Execution) -> None:
        """Keep an execution this service started (insert if absent; idempotent)."""

    def execution(self, pipeline: str, execution_id: str) -> Execution | None:
        """The recorded execution, or None for one this service did not start."""

    def update_execution(self, expected: Execution, updated: Execution) -> bool:
        """Set the status, attempt and ``updated_at`` of ``updated`` if the recorded status
        and attempt are still ``expected``'s. False when another writer got there first."""

    def open_executions(self, started_before: float | None = None,
                        limit: int = 100) -> list[Execution]:
        """Open executions (:attr:`Execution.open`: no final status, or one not settled yet),
        started before ``started_before`` (None: whenever), oldest first."""

    def in_flight_baselines(self, limit: int = 100) -> list[Baseline]:
        """Baselines whose last start's outcome is not applied yet (``last_execution_status``
        ``InProgress`` or ``Stopping``), least recently updated first: the poll re-derives
        them from their execution's stored status."""

    def settle_execution(self, execution: Execution) -> bool:
        """Record that the follow-ups of ``execution.status`` were applied (``settled``), if
        the recorded status and attempt are still ``execution``'s; a final one then leaves
        ``open_executions``. False when the execution moved on meanwhile."""

    def acquire_lease(self, name: str, owner: str, until: float, now: float) -> bool:
        """Hold the lease ``name`` until ``until`` if it is free, expired (``until`` <= now)
        or already ``owner``'s; False when another owner holds it. One replica at a time."""

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease ``name`` up if ``owner`` holds it (a graceful stop), so another
        replica takes it at once instead of waiting for it to expire."""

    def enqueue_task(self, task: Task) -> bool:
        """Keep ``task`` pending unless a task with its key exists (pending, done or
        failed: the effect is had once); True when it was added."""

    def task_pending(self, key: str) -> bool:
        """Whether the task ``key`` exists and is not finished (claimed or not)."""

    def claim_tasks(self, owner: str, now: float, lease_seconds: float,
                    limit: int) -> list[Task]:
        """Lease up to ``limit`` pending tasks due by ``now`` (``due_at`` <= now) that no
        one holds (or whose lease expired) to ``owner``, oldest due first."""

    def retry_task(self, task: Task, owner: str, due_at: float, error: str | None,
                   *, failed: bool = True) -> None:
        """Give a claimed task back (owner only), due again at ``due_at``; ``failed``
        counts the try in ``attempts`` and keeps ``error`` (False: it was only paced)."""

    def finish_task(self, task: Task, owner: str, outcome: TaskOutcome, now: float,
                    error: str | None = None) -> None:
        """Mark a claimed task ``done`` or ``failed`` for good (owner only)."""

    def backlog(self, now: float) -> Backlog:
        """How many deliveries and tasks wait, and since when (the backlog metrics)."""

    def holdings(self, now: float) -> list[Holding]:
        """Every lease, ref being processed and start in flight that has not expired,
        with its owner and expiry (``webhook-receiver state leases``)."""

    def finish_start(self, pipeline: str, commit: str, owner: str, attempt: int, now: float,
                     execution_id: str | None = None, error: str | None = None) -> None:
        """Record the outcome: ``started`` with ``execution_id``, else ``failed`` with ``error``.

        Only the holder (same owner and attempt, still pending) can finish an intent.
        """

    def heads(self, repository: str) -> dict[str, Head]:
        """The last known head of every branch of ``repository`` (its state key), by branch
        name; branches never seen (or forgotten) are absent."""

    def note_head(self, repository: str, branch: str, sha: str | None, etag: str | None,
                  now: float) -> None:
        """Remember ``sha`` (with ``etag``, None when unknown) as the head of ``branch``,
        replacing what was known; ``sha`` None forgets the branch (it was deleted)."""

    def validation(self, repository: str, number: int) -> Validation | None:
        """The validation of pull request ``number`` of ``repository`` (its state key), or
        None when none was recorded."""

    def save_validation(self, validation: Validation) -> bool:
        """Write ``validation`` if the stored one's version is still ``validation.version``
        (0: none is stored); the stored version goes up by one. False on a lost race.
        Kept HISTORY_RETENTION_SECONDS after its last update."""

    def validations(self, *, repository: str | None = None,
                    limit: int = 50) -> list[Validation]:
        """The most recently updated validations, newest first, at most ``limit`` (of one
        repository's state key, or of all): the status page's list, and what the outcome
        poll re-derives summaries of."""

    def module_map(self, repository: str) -> tuple[str, str] | None:
        """The last valid repository-side module map of ``repository`` (its state key):
        (commit it was read at, file text), or None when none was kept."""

    def save_module_map(self, repository: str, commit: str, text: str, now: float) -> None:
        """Keep ``text`` (a valid module map file read at ``commit``) as ``repository``'s
        last valid map, replacing the one kept. Text up to ``MAX_FILE_BYTES`` (256 KiB, the
        read's cap): a DynamoDB item holds it compressed or not."""

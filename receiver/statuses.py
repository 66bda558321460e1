"""Commit statuses in provider-neutral terms: the status a pipeline execution shows.

Pure functions, shared by whatever writes statuses (each provider's ``set_status`` maps the
neutral state to its own; see DESIGN.md "Commit statuses"). A status is named
``codepipeline/<pipeline>`` and links to the execution in the AWS console.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from providers.base import CommitStatus, HaltReason, Provider, StatusState
from receiver.config import RepositoryConfig
from receiver.errors import ProviderError
from receiver.logging import get_logger
from receiver.state.base import StateStore

STATUS_PREFIX = "codepipeline/"
# a region becomes part of the console's host name: only a real region's shape may
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}$")

# CodePipeline execution statuses (GetPipelineExecution, ListPipelineExecutions) and
# EventBridge execution states (STARTED, RESUMED, CANCELED, ...), compared lower-cased:
# each gives the neutral state, the detail of a halted run, and the description
_OUTCOMES: dict[str, tuple[StatusState, HaltReason | None, str]] = {
    "started": ("running", None, "CodePipeline execution in progress"),
    "resumed": ("running", None, "CodePipeline execution in progress"),
    "inprogress": ("running", None, "CodePipeline execution in progress"),
    "stopping": ("running", None, "CodePipeline execution is stopping"),
    "succeeded": ("success", None, "CodePipeline execution succeeded"),
    "failed": ("failure", None, "CodePipeline execution failed"),
    "stopped": ("error", "stopped", "CodePipeline execution was stopped"),
    "cancelled": ("error", "cancelled", "CodePipeline execution was cancelled"),
    "canceled": ("error", "cancelled", "CodePipeline execution was cancelled"),
    "superseded": ("error", "superseded",
                   "CodePipeline execution was superseded by a newer execution"),
}


def console_url(region: str, pipeline: str, execution_id: str) -> str:
    """The AWS console page of one pipeline execution (its timeline).

    ``https://<region>.console.aws.amazon.com/codesuite/codepipeline/pipelines/<pipeline>/
    executions/<id>/timeline?region=<region>``, the pipeline and execution id URL-quoted.
    Raises ValueError for a region that is not shaped like one (``eu-west-1``), since it
    names the host.
    """
    if not _REGION.fullmatch(region):
        raise ValueError(f"{region!r} is not an AWS region name")
    return (f"https://{region}.console.aws.amazon.com/codesuite/codepipeline/pipelines/"
            f"{quote(pipeline, safe='')}/executions/{quote(execution_id, safe='')}"
            f"/timeline?region={region}")


def status_for(pipeline: str, execution_status: str, url: str) -> CommitStatus:
    """The commit status ``codepipeline/<pipeline>`` for an execution in ``execution_status``.

    ``execution_status`` is a CodePipeline execution status (``InProgress``, ``Stopping``,
    ``Succeeded``, ``Failed``, ``Stopped``, ``Cancelled``, ``Superseded``) or an EventBridge
    execution state (``STARTED``, ``RESUMED``, ``SUCCEEDED``, ``FAILED``, ``STOPPED``,
    ``CANCELED``, ``SUPERSEDED``, ...), in any case. A started or stopping execution is
    ``running`` (GitHub shows it as pending); stopped, cancelled and superseded are
    ``error`` with that ``detail``, and the description says which. Raises ValueError for
    any other status.
    """
    try:
        state, detail, description = _OUTCOMES[execution_status.lower()]
    except KeyError:
        raise ValueError(f"unknown CodePipeline execution status {execution_status!r}") \
            from None
    return CommitStatus(name=f"{STATUS_PREFIX}{pipeline}", state=state, url=url,
                        description=description, detail=detail)


# --- writing them ------------------------------------------------------------------------

WRITE_DELAYS = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # seconds before each attempt of one write


@dataclass(frozen=True, slots=True)
class StatusJob:
    """One commit status to write. ``current``, when given, says whether it is still worth
    writing (a pending status whose execution has already ended is not)."""

    repo: RepositoryConfig
    commit: str
    status: CommitStatus
    current: Callable[[], bool] | None = None


class StatusWriter:
    """Writes commit statuses in the background, each at most once, retried with back-off.

    ``submit`` never blocks on the provider: it claims the (commit, name, state) write in
    the state store (so across workers and replicas at most one process writes it) and
    queues it for one background thread, which writes the statuses of this process in the
    order they were submitted. A write that fails is logged ``status.failed`` and retried
    after each of ``WRITE_DELAYS``; the last failure gives up.
    """

    def __init__(self, store: StateStore, providers: Mapping[str, Provider],
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.providers = providers
        self.clock = clock
        self.sleep = sleep
        self.log = get_logger()
        self._queue: queue.Queue[StatusJob | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: StatusJob) -> None:
        """Queue ``job`` unless this (repository, commit, name, state) was claimed before.
        Raises StateError when the store cannot answer."""
        key = hashlib.sha256("\0".join((job.repo.key, job.commit, job.status.name,
                                        job.status.state)).encode()).hexdigest()
        if not self.store.claim_status_write(key, self.clock()):
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="receiver-statuses",
                                                daemon=True)
                self._thread.start()
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._write(job)
            except Exception as exc:  # a bug must not end the thread for the process's life
                self.log.exception("status.error", error=type(exc).__name__)
            finally:
                self._queue.task_done()

    def _write(self, job: StatusJob) -> None:
        provider = self.providers[job.repo.provider]
        fields = {"repository": job.repo.name, "provider": job.repo.provider,
                  "commit": job.commit, "status": job.status.name, "state": job.status.state}
        for attempt, delay in enumerate(WRITE_DELAYS, start=1):
            self.sleep(delay)
            if job.current is not None and not job.current():
                return
            try:
                provider.set_status(job.repo, job.commit, job.status)
            except (ProviderError, ValueError) as exc:
                last = attempt == len(WRITE_DELAYS)
                self.log.warning("status.failed", error=str(exc), attempt=attempt,
                                 will_retry=not last, **fields)
                continue
            self.log.info("status.written", attempt=attempt, **fields)
            return

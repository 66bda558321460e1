"""Commit statuses: what each pipeline execution shows on its commit.

The status of an execution state is a pure function (:func:`status_for`; each provider's
``set_status`` maps the neutral state to its own, see DESIGN.md "Commit statuses"). A
status is named ``codepipeline/<pipeline>`` and links to the execution in the AWS console.
:class:`StatusListener` turns started pipelines, changed executions and invalid module
maps into tasks kept in the state store; :class:`StatusHandler` writes them when the
sender (receiver/sender.py) comes to them, each at most once.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from providers.base import CommitStatus, HaltReason, Provider, StatusState
from receiver.config import REGION_PATTERN, Config, RepositoryConfig
from receiver.effects import Bus, ExecutionChanged, MapInvalid, PipelineStarted
from receiver.errors import TerminalError
from receiver.module_map import CONFIG_STATUS
from receiver.state.base import Execution, StateStore, Task

STATUS_PREFIX = "codepipeline/"
# a region becomes part of the console's host name: only a real region's shape may
_REGION = re.compile(REGION_PATTERN)

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

KIND = "status"  # the tasks of commit statuses (receiver/sender.py)


def status_task(repo: RepositoryConfig, commit: str, status: CommitStatus, now: float,
                while_running: tuple[str, str] | None = None) -> Task:
    """The task of writing ``status`` on ``commit``: one per (repository, commit, name,
    state), so a retry, a replay or a second replica enqueues the same task, written once.
    ``while_running`` (pipeline, execution id): write it only while that execution has no
    final status (a pending status must not replace an outcome already written)."""
    key = hashlib.sha256("\0".join((repo.key, commit, status.name,
                                     status.state)).encode()).hexdigest()
    payload = {"repository": repo.key, "commit": commit, "name": status.name,
               "state": status.state, "url": status.url, "description": status.description,
               "detail": status.detail, "while_running": while_running}
    return Task(key=key, kind=KIND, target=repo.key, payload=json.dumps(payload),
                due_at=now, created_at=now)


class StatusListener:
    """Turns what happened into commit-status tasks (with ``commit_status: true``): a
    pending status when a pipeline starts, its outcome when its execution changes, an
    error status ``webhook-receiver/config`` when a module map is invalid."""

    def __init__(self, store: StateStore, region: str, providers: Mapping[str, Provider],
                 clock: Callable[[], float] = time.time,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.region = region
        self.providers = providers
        self.clock = clock
        self.wake = wake  # the sender: look now

    def subscribe(self, bus: Bus) -> None:
        """Listen to the events that show on a commit."""
        bus.subscribe(PipelineStarted, "statuses", self.started)
        bus.subscribe(ExecutionChanged, "statuses", self.changed)
        bus.subscribe(MapInvalid, "statuses", self.map_invalid)

    def started(self, event: PipelineStarted) -> None:
        """The pending status of a start (not written once its execution has ended)."""
        x = event.execution
        self._enqueue(event.repo, x.commit, self._of(x, "InProgress"),
                      (x.pipeline, x.execution_id))

    def changed(self, event: ExecutionChanged) -> None:
        """The status of the execution's new state."""
        x = event.execution
        self._enqueue(event.repo, x.commit, self._of(x, x.status), None)

    def map_invalid(self, event: MapInvalid) -> None:
        """The error status of an invalid module map, naming its first problem."""
        kept = f"; kept the map of {event.kept[:12]}" if event.kept else ""
        url = self.providers[event.repo.provider].file_url(event.repo, event.path, event.commit)
        self._enqueue(event.repo, event.commit, CommitStatus(
            CONFIG_STATUS, "error", url, f"{event.path}: {event.problems[0]}{kept}"), None)

    def _of(self, execution: Execution, status: str) -> CommitStatus:
        url = console_url(self.region, execution.pipeline, execution.execution_id)
        return status_for(execution.pipeline, status, url)

    def _enqueue(self, repo: RepositoryConfig, commit: str, status: CommitStatus,
                 while_running: tuple[str, str] | None) -> None:
        if not repo.commit_status:
            return
        if self.store.enqueue_task(status_task(repo, commit, status, self.clock(),
                                               while_running)):
            self.wake()


class StatusHandler:
    """Writes one commit-status task through its repository's provider (``set_status``,
    whose bounded retries cover a dropped connection; a failed write is tried again by the
    sender after its back-off)."""

    kind = KIND
    event = "status"
    done = "written"

    def __init__(self, config: Config, store: StateStore,
                 providers: Mapping[str, Provider]) -> None:
        self.config = config
        self.store = store
        self.providers = providers

    def describe(self, task: Task) -> dict[str, Any]:
        """Repository, provider, commit, status name and state."""
        doc = json.loads(task.payload)
        provider, _, name = str(doc["repository"]).partition(":")
        return {"repository": name, "provider": provider, "commit": doc["commit"],
                "status": doc["name"], "state": doc["state"]}

    def pace(self, target: str) -> float:
        """Statuses are not paced (the providers' rate limits are answered by back-off)."""
        return 0.0

    def after(self, task: Task) -> Sequence[str]:
        """A status comes after nothing: the newest wins by its own checks."""
        return ()

    def send(self, task: Task) -> None:
        """Write the status, unless it is a pending one whose execution ended since."""
        doc = json.loads(task.payload)
        repo = self.config.repository_by_key(doc["repository"])
        if repo is None:
            raise TerminalError(f"{doc['repository']} is no longer configured")
        if doc["while_running"] is not None:
            found = self.store.execution(*doc["while_running"])
            if found is not None and found.final:
                return
        try:
            self.providers[repo.provider].set_status(repo, doc["commit"], CommitStatus(
                doc["name"], doc["state"], doc["url"], doc["description"], doc["detail"]))
        except ValueError as exc:  # not a commit id: no retry can write it
            raise TerminalError(str(exc)) from exc

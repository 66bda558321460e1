"""Commit statuses in provider-neutral terms: the status a pipeline execution shows.

Pure functions, shared by whatever writes statuses (each provider's ``set_status`` maps the
neutral state to its own; see DESIGN.md "Commit statuses"). A status is named
``codepipeline/<pipeline>`` and links to the execution in the AWS console.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from providers.base import CommitStatus, HaltReason, StatusState

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

"""Launchers: how a pipeline is started. ``codepipeline`` (boto3) or ``log`` (dry run)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from receiver import aws
from receiver.config import LauncherConfig
from receiver.errors import LaunchError
from receiver.logging import get_logger

if TYPE_CHECKING:
    from receiver.state.base import StateStore

_VALUE_LIMIT = 1000  # CodePipeline's cap on one variable value
MAX_EXECUTION_PAGES = 10  # of 100 executions each, searched for the newest success

# Codes a later attempt can succeed on; everything else is final for this push.
# ConflictException is StartPipelineExecution's "pipeline is busy ... try again later".
RETRYABLE = frozenset({
    "ThrottlingException", "ConcurrentPipelineExecutionsLimitExceededException",
    "ConflictException", "ServiceUnavailableException", "InternalFailure", "RequestTimeout",
})


def aws_region(configured: str | None) -> str:
    """The region pipelines run in (console links name it): ``launcher.region``, else the
    SDK's environment (``AWS_REGION``, ``AWS_DEFAULT_REGION``), else us-east-1."""
    return (configured or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1")


@dataclass(frozen=True, slots=True)
class StartRequest:
    """Everything a launcher needs to start one pipeline at one commit."""

    pipeline: str
    commit: str
    branch: str
    repository: str
    variables: tuple[tuple[str, str], ...] = ()
    source_action: str | None = None
    # a pull request's validation (receiver/validation.py): its own idempotency token, so
    # validating a commit never makes that commit's deploy start of the same pipeline look
    # done to CodePipeline
    validation: bool = False

    @property
    def client_request_token(self) -> str:
        """Idempotency token derived from (pipeline, commit), and for a validation from
        ("validate", pipeline, commit): a retry cannot start twice, and a validation and a
        deploy of one commit are two starts."""
        key = f"{self.pipeline}\0{self.commit}"
        return hashlib.sha256((f"validate\0{key}" if self.validation else key).encode()
                              ).hexdigest()


# How a start attempt ended: started (now, or by an earlier attempt), in_flight (another
# delivery owns the start), failed (final), retry (the delivery will be redone), deferred (a
# validation that must not supersede a running deploy)
StartState = Literal["started", "in_flight", "failed", "retry", "deferred"]


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """How one start attempt ended (see ``StartState``)."""

    state: StartState
    execution_id: str | None = None
    error: str | None = None


def start_once(store: StateStore, launcher: Launcher, key: str, request: StartRequest, *,
               owner: str, attempt: int, final: bool, clock: Callable[[], float],
               **fields: Any) -> StartOutcome:
    """Start ``request`` at most once per (``key``, commit), across retries, restarts and
    replicas: the start intent is created (or taken over) in the store first, finished with
    the execution id or the error after. ``owner`` and ``attempt`` are the delivery's id
    and claim count; ``final`` its last attempt (a retryable failure is then final).
    ``fields`` go on the ``pipeline.started`` / ``start_failed`` / ``in_flight`` lines."""
    commit, pipeline = request.commit, request.pipeline
    log = get_logger()
    record = store.begin_start(key, commit, owner, attempt, clock())
    if record.state == "started":
        return StartOutcome("started", record.execution_id)
    if (record.owner, record.attempt) != (owner, attempt):
        log.info("pipeline.in_flight", pipeline=pipeline, commit=commit, owner=record.owner)
        return StartOutcome("in_flight")
    try:
        execution_id = launcher.start(request)
    except LaunchError as exc:
        store.finish_start(key, commit, owner, attempt, clock(), error=str(exc))
        retry = exc.retryable and not final
        log.error("pipeline.start_failed", pipeline=pipeline, commit=commit, error=str(exc),
                  will_retry=retry, **fields)
        return StartOutcome("retry" if retry else "failed", error=str(exc))
    store.finish_start(key, commit, owner, attempt, clock(), execution_id=execution_id)
    log.info("pipeline.started", pipeline=pipeline, commit=commit, execution_id=execution_id,
             dry_run=launcher.dry_run, **fields)
    return StartOutcome("started", execution_id)


def render_variables(templates: tuple[tuple[str, str], ...], *, commit: str, branch: str,
                     repository: str, changed_paths: list[str],
                     module: str | None = None) -> tuple[tuple[str, str], ...]:
    """Fill pipeline-variable templates; each value is cut to CodePipeline's 1000 characters.
    ``module`` is a template's concrete pipeline's module value (``{module}``)."""
    fields = {"commit": commit, "short_commit": commit[:12], "branch": branch,
              "repository": repository, "changed_paths": ",".join(changed_paths),
              "module": module or ""}
    out = []
    for name, template in templates:
        value = template
        for key, val in fields.items():
            value = value.replace("{" + key + "}", val)
        out.append((name, value[:_VALUE_LIMIT]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Success:
    """A pipeline's newest Succeeded execution: its source revisions by action name."""

    execution_id: str
    started_at: float  # UNIX seconds
    revisions: tuple[tuple[str, str], ...]  # (source action name, revision id)


class Launcher(Protocol):
    """Starts pipelines. ``dry_run`` is True when nothing is really started."""

    dry_run: bool

    def start(self, request: StartRequest) -> str:
        """Start the pipeline; return the execution id. Raises LaunchError (``code`` = AWS code)."""
        ...

    def warm(self) -> None:
        """Do now, off the answer path, the set-up the first start would pay for (no
        network). Raises nothing a caller must handle beyond logging it."""
        ...

    def execution_status(self, pipeline: str, execution_id: str) -> str:
        """The execution's status now (``GetPipelineExecution``: InProgress, Stopping,
        Succeeded, Failed, Stopped, Cancelled, Superseded). Raises LaunchError."""
        ...

    def latest_success(self, pipeline: str) -> Success | None:
        """The newest execution of ``pipeline`` that Succeeded (``ListPipelineExecutions``),
        or None. Raises LaunchError."""
        ...


class LogLauncher:
    """Dry run: starts nothing; the caller logs and records as if it had."""

    dry_run = True

    def start(self, request: StartRequest) -> str:
        """A deterministic fake execution id."""
        return f"dry-run-{request.client_request_token[:16]}"

    def warm(self) -> None:
        """Nothing to prepare."""

    def execution_status(self, pipeline: str, execution_id: str) -> str:
        """A dry-run start counts as Succeeded at once."""
        return "Succeeded"

    def latest_success(self, pipeline: str) -> Success | None:
        """Nothing was ever started."""
        return None


class CodePipelineLauncher:
    """``StartPipelineExecution`` through boto3, one client per process, standard retries."""

    dry_run = False

    def __init__(self, config: LauncherConfig) -> None:
        self.config = config
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from botocore.config import Config

                self._client = aws.client(
                    "codepipeline", region_name=self.config.region,
                    endpoint_url=self.config.endpoint_url,
                    config=Config(retries={"mode": "standard", "total_max_attempts": 3},
                                  max_pool_connections=32,  # one per parallel start
                                  connect_timeout=5, read_timeout=15),
                )
            return self._client

    def warm(self) -> None:
        """Import boto3, make the client and load the operation's model: 130-200 ms that
        the first push after a deploy would otherwise wait for before its first start.
        Credentials are resolved at the first start, as before (that may need the network)."""
        self._get_client().meta.service_model.operation_model("StartPipelineExecution")

    def start(self, request: StartRequest) -> str:
        """Start one execution; botocore errors are translated into LaunchError.

        Variables whose rendered value is empty are left out (the pipeline's default applies).
        """
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        params: dict[str, Any] = {
            "name": request.pipeline,
            "clientRequestToken": request.client_request_token,
        }
        # CodePipeline refuses an empty value (min length 1), e.g. {changed_paths} on a tag
        # or new-branch start; failing the deployment over an empty variable is worse
        variables = [{"name": n, "value": v} for n, v in request.variables if v]
        if variables:
            params["variables"] = variables
        if request.source_action:
            params["sourceRevisions"] = [{
                "actionName": request.source_action,
                "revisionType": "COMMIT_ID",
                "revisionValue": request.commit,
            }]
        try:
            answer = self._get_client().start_pipeline_execution(**params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            message = str(exc.response.get("Error", {}).get("Message", ""))[:300]
            raise LaunchError(code, message, retryable=code in RETRYABLE) from None
        except ParamValidationError as exc:
            # the request itself is malformed: no later attempt can succeed
            raise LaunchError("ParamValidationError", str(exc)[:300], retryable=False) from None
        except BotoCoreError as exc:
            raise LaunchError(type(exc).__name__, str(exc)[:300], retryable=True) from None
        return str(answer["pipelineExecutionId"])


    def execution_status(self, pipeline: str, execution_id: str) -> str:
        """``GetPipelineExecution``'s status; botocore errors are translated into LaunchError."""
        answer = self._call("get_pipeline_execution", pipelineName=pipeline,
                            pipelineExecutionId=execution_id)
        return str(answer["pipelineExecution"]["status"])

    def latest_success(self, pipeline: str) -> Success | None:
        """Newest first, page by page, until the first Succeeded execution."""
        params: dict[str, Any] = {"pipelineName": pipeline, "maxResults": 100}
        for _ in range(MAX_EXECUTION_PAGES):
            answer = self._call("list_pipeline_executions", **params)
            for summary in answer.get("pipelineExecutionSummaries", []):
                if summary.get("status") == "Succeeded":
                    started = summary.get("startTime")
                    return Success(
                        execution_id=str(summary["pipelineExecutionId"]),
                        started_at=started.timestamp() if hasattr(started, "timestamp")
                        else float(started or 0),
                        revisions=tuple((str(r.get("actionName", "")), str(r["revisionId"]))
                                        for r in summary.get("sourceRevisions", [])
                                        if r.get("revisionId")))
            if not answer.get("nextToken"):
                return None
            params["nextToken"] = answer["nextToken"]
        return None

    def _call(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._get_client(), operation)(**params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            message = str(exc.response.get("Error", {}).get("Message", ""))[:300]
            raise LaunchError(code, message, retryable=code in RETRYABLE) from exc
        except BotoCoreError as exc:
            raise LaunchError(type(exc).__name__, str(exc)[:300], retryable=True) from exc


def build_launcher(config: LauncherConfig) -> Launcher:
    """The launcher the configuration names."""
    if config.backend == "log":
        return LogLauncher()
    return CodePipelineLauncher(config)

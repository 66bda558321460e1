"""A small local stand-in for the CodePipeline JSON API whose execution states the test sets.

moto marks every execution Succeeded at once, so tests of execution outcomes need this:
it speaks the same wire protocol (``POST /`` with ``X-Amz-Target:
CodePipeline_20150709.<Operation>``, JSON 1.1) for the operations the service uses —
StartPipelineExecution, GetPipelineExecution, ListPipelineExecutions, GetPipeline — and
keeps executions in memory. Listens on 127.0.0.1 only.

Its answers are AWS's published samples (tests/fixtures/codepipeline/, origins in the
fixtures README) with only the ids, the status and the revisions made this execution's:
times are epoch seconds as floats, as the wire carries them.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness import fixture_bytes

# AWS's samples: GetPipelineExecution (User Guide, "View status and source revisions with
# get-pipeline-execution"), ListPipelineExecutions (AWS CLI examples) and
# StartPipelineExecution (API Reference sample response)
_GET = json.loads(fixture_bytes("codepipeline/aws-docs-get-pipeline-execution.json"))
_LIST = json.loads(fixture_bytes("codepipeline/aws-cli-list-pipeline-executions.json"))
_START = json.loads(fixture_bytes("codepipeline/aws-api-start-pipeline-execution.json"))


@dataclass
class FakeExecution:
    pipeline: str
    execution_id: str
    status: str = "InProgress"
    revisions: list[dict[str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.time)


class FakeCodePipeline:
    """The stand-in server: ``url`` for the service's ``endpoint_url``; ``executions`` by id."""

    def __init__(self, pipelines: list[str]) -> None:
        self.pipelines = set(pipelines)
        self.executions: dict[str, FakeExecution] = {}
        self.tokens: dict[str, str] = {}  # clientRequestToken -> execution id
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                params = json.loads(self.rfile.read(length) or b"{}")
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                with fake.lock:
                    fake.calls.append((operation, params))
                    status, body = fake.answer(operation, params)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, operation: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = params.get("name") or params.get("pipelineName")
        if name not in self.pipelines:
            return 400, {"__type": "PipelineNotFoundException",
                         "message": f"Account does not have a pipeline with name {name}"}
        if operation == "StartPipelineExecution":
            # clientRequestToken is idempotent, as CodePipeline documents it: the same token
            # answers the execution it started, never a second one
            token = params.get("clientRequestToken")
            if token and token in self.tokens:
                return 200, {"pipelineExecutionId": self.tokens[token]}
            execution = FakeExecution(str(name), str(uuid.uuid4()), revisions=[
                {"actionName": r["actionName"], "revisionId": r["revisionValue"]}
                for r in params.get("sourceRevisions", [])])
            self.executions[execution.execution_id] = execution
            if token:
                self.tokens[token] = execution.execution_id
            return 200, {**_START, "pipelineExecutionId": execution.execution_id}
        if operation == "GetPipelineExecution":
            found = self.executions.get(params.get("pipelineExecutionId", ""))
            if found is None or found.pipeline != name:
                return 400, {"__type": "PipelineExecutionNotFoundException",
                             "message": "execution not found"}
            answer = copy.deepcopy(_GET)
            sample = answer["pipelineExecution"]
            sample.update(pipelineName=name, pipelineExecutionId=found.execution_id,
                          status=found.status, executionType="STANDARD")
            del sample["rollbackMetadata"]  # not a rollback
            sample["artifactRevisions"] = [
                {**sample["artifactRevisions"][0], "name": r["actionName"],
                 "revisionId": r["revisionId"]} for r in found.revisions]
            return 200, answer
        if operation == "ListPipelineExecutions":
            mine = sorted((x for x in self.executions.values() if x.pipeline == name),
                          key=lambda x: x.started, reverse=True)
            template = _LIST["pipelineExecutionSummaries"][0]
            return 200, {"pipelineExecutionSummaries": [
                {**template, "pipelineExecutionId": x.execution_id, "status": x.status,
                 "startTime": x.started, "lastUpdateTime": x.started,
                 # the shape the User Guide's newer list-pipeline-executions sample shows
                 "sourceRevisions": x.revisions} for x in mine]}
        if operation == "GetPipeline":
            return 200, {"pipeline": {"name": name, "version": 1, "stages": []}}
        return 400, {"__type": "InvalidActionException", "message": operation}

    def started(self, pipeline: str) -> list[FakeExecution]:
        """The executions of ``pipeline``, oldest first."""
        with self.lock:
            return sorted((x for x in self.executions.values() if x.pipeline == pipeline),
                          key=lambda x: x.started)

    def set_status(self, execution_id: str, status: str) -> None:
        """What GetPipelineExecution answers for ``execution_id`` from now on."""
        with self.lock:
            self.executions[execution_id].status = status

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

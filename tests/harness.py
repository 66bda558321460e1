"""Test harness: the real service under gunicorn, a fake provider API, a moto server.

Everything listens on 127.0.0.1 only. Processes are started with the same console script
a user runs, and their JSON log lines are read back from a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_bytes(relpath: str) -> bytes:
    """The exact bytes of a recorded fixture (sign these, never a re-serialization)."""
    return (FIXTURES / relpath).read_bytes()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers anything over HTTP."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- fake provider API -------------------------------------------------------------------


@dataclass
class Recorded:
    """One request the fake API received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Recorded], tuple[int, Any, dict[str, str]]]


@dataclass
class FakeAPI:
    """A small HTTP server standing in for a provider API.

    ``routes`` maps a path (exact, without query) to a handler returning
    (status, json body or raw bytes, headers); unknown paths answer 404. ``delay`` slows every answer.
    """

    routes: dict[str, Handler] = field(default_factory=dict)
    delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        api = self

        class _H(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                rec = Recorded(self.command, parts.path, parse_qs(parts.query),
                               {k.lower(): v for k, v in self.headers.items()},
                               self.rfile.read(length) if length else b"")
                api.requests.append(rec)
                if api.delay:
                    time.sleep(api.delay)
                handler = api.routes.get(parts.path)
                status, body, headers = (handler(rec) if handler else (404, {"message": "Not Found"}, {}))
                # bytes go out as they are (a raw file), anything else as JSON
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream"
                                 if isinstance(body, bytes) else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the service under gunicorn ------------------------------------------------------------


class Service:
    """``webhook-receiver serve`` as a subprocess, with its stdout (JSON logs) in a file."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None,
                 workers: int = 2, name: str = "svc") -> None:
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        # the reconciler (on by default) reads branch heads from the provider stand-ins,
        # whose request logs most suites count: only a suite that sets it runs it
        repos = config.get("repositories")
        if isinstance(repos, list):
            config = {**config, "repositories": [
                {"reconcile_seconds": 0, **r} if isinstance(r, dict) else r for r in repos]}
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--config", str(self.config_path),
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("service did not answer /healthz within 30 s")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (non-JSON lines, e.g. gunicorn's, are skipped)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("event") == name]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll the log until ``predicate(lines)`` holds; return the lines."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.logs()
            if predicate(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last log lines: {lines[-10:]}")
            time.sleep(0.1)

    def processed(self, delivery_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The ``delivery.processed`` line of ``delivery_id``, once it is written."""
        def line(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((e for e in lines if e.get("event") == "delivery.processed"
                         and e.get("delivery_id") == delivery_id), None)
        found = line(self.wait_for(lambda lines: line(lines) is not None, timeout=timeout))
        assert found is not None
        return found

    def started(self, delivery_id: str) -> list[tuple[str, str]]:
        """(pipeline, commit) of each ``pipeline.started`` line of ``delivery_id``, sorted."""
        return sorted((e["pipeline"], e["commit"]) for e in self.events("pipeline.started")
                      if e.get("delivery_id") == delivery_id)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another ``webhook-receiver`` subcommand against this service's config."""
        return subprocess.run(
            [sys.executable, "-m", "receiver.cli", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, env=self.env, cwd=self.workdir, timeout=60,
        )


# --- moto server ---------------------------------------------------------------------------


class MotoServer:
    """``moto_server`` on 127.0.0.1 (real AWS wire protocol, in a separate process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_http(self.url + "/moto-api/")

    def reset(self) -> None:
        requests.post(self.url + "/moto-api/reset", timeout=10)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def create_pipelines(endpoint_url: str, names: list[str]) -> None:
    """Create CodePipeline pipelines (and the IAM role they need) on a moto server."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint_url, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "codepipeline.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    try:
        role_arn = iam.create_role(RoleName="pipeline-role",
                                   AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        role_arn = iam.get_role(RoleName="pipeline-role")["Role"]["Arn"]
    cp = boto3.client("codepipeline", endpoint_url=endpoint_url, region_name="us-east-1")
    for name in names:
        cp.create_pipeline(pipeline={
            "name": name, "roleArn": role_arn,
            "artifactStore": {"type": "S3", "location": "artifacts"},
            "stages": [
                {"name": "Source", "actions": [{
                    "name": "Source", "actionTypeId": {"category": "Source", "owner": "AWS",
                                                       "provider": "S3", "version": "1"},
                    "configuration": {"S3Bucket": "src", "S3ObjectKey": "src.zip"},
                    "outputArtifacts": [{"name": "src"}]}]},
                {"name": "Deploy", "actions": [{
                    "name": "Build", "actionTypeId": {"category": "Build", "owner": "AWS",
                                                      "provider": "CodeBuild", "version": "1"},
                    "configuration": {"ProjectName": "p"},
                    "inputArtifacts": [{"name": "src"}]}]},
            ],
        })


def executions(endpoint_url: str, pipeline: str) -> list[dict[str, Any]]:
    """Every execution moto holds for ``pipeline``."""
    import boto3

    cp = boto3.client("codepipeline", endpoint_url=endpoint_url, region_name="us-east-1")
    return list(cp.list_pipeline_executions(pipelineName=pipeline)["pipelineExecutionSummaries"])

"""Local stand-ins for the outside world: a GitHub compare API and a CodePipeline endpoint.

Both listen on 127.0.0.1 only, speak HTTP/1.1 with keep-alive (as the real services do, so
the service's connection reuse is exercised), answer after a configurable delay, and count
what they were asked.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COMPARE = re.compile(r"^/repos/[^/]+/[^/]+/compare/([0-9a-f]+)\.\.\.([0-9a-f]+)$")
_STATUS = re.compile(r"^/repos/[^/]+/[^/]+/statuses/[0-9a-f]+$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class _Base:
    """A threaded HTTP server on 127.0.0.1 whose handler is ``self.answer``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.calls: list[tuple[float, str]] = []  # (time.time() at arrival, path)
        self.bodies: list[tuple[float, str, bytes]] = []  # the same, with each body
        fake = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle on, a keep-alive client's
            # delayed ACK would add ~40 ms to every answer, which no real API does
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.calls.append((time.time(), self.path))
                    fake.bodies.append((time.time(), self.path, body))
                if fake.delay:
                    time.sleep(fake.delay)
                status, doc = fake.answer(self.command, self.path,
                                          {k.lower(): v for k, v in self.headers.items()}, body)
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", fake.content_type)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), _H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    content_type = "application/json"

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        raise NotImplementedError

    def count(self) -> int:
        """Requests received so far."""
        with self.lock:
            return len(self.calls)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


class FakeGitHub(_Base):
    """``GET /repos/{owner}/{repo}/compare/{base}...{head}`` for any two commit ids, and
    ``POST /repos/{owner}/{repo}/statuses/{sha}`` (a commit status; answered 201).

    Answers ``ahead`` with ``files``, or ``diverged`` (the same files) for a pair of
    commits registered with :meth:`diverge` in either order, as a force push gives.
    Every other path is 404.
    """

    def __init__(self, files: Iterable[str], delay: float = 0.0) -> None:
        self.files = [{"filename": f, "status": "modified"} for f in files]
        self._diverged: set[frozenset[str]] = set()
        super().__init__(delay)

    def diverge(self, a: str, b: str) -> None:
        """Compares between ``a`` and ``b`` answer ``diverged``."""
        self._diverged.add(frozenset((a, b)))

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        if method == "POST" and _STATUS.match(path):
            return 201, {}
        m = _COMPARE.match(path.split("?", 1)[0])
        if method != "GET" or m is None:
            return 404, {"message": "Not Found"}
        base, head = m.groups()
        status = "diverged" if frozenset((base, head)) in self._diverged else "ahead"
        return 200, {"status": status, "ahead_by": 1, "behind_by": int(status == "diverged"),
                     "total_commits": 1, "commits": [{"sha": head}], "files": self.files}


class FakeCodePipeline(_Base):
    """The AWS JSON 1.1 ``StartPipelineExecution`` action, answering after ``delay``."""

    content_type = "application/x-amz-json-1.1"

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        if headers.get("x-amz-target", "").endswith(".StartPipelineExecution"):
            return 200, {"pipelineExecutionId": str(uuid.uuid4())}
        return 400, {"__type": "UnknownOperationException", "message": "not faked"}

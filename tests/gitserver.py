"""A real git server on 127.0.0.1 for tests, and helpers that build test repositories.

``GitServer`` runs ``git http-backend`` (the CGI program git ships for smart HTTP) once per
request behind a ThreadingHTTPServer: the same protocol, filters and errors a hosting
provider's git endpoint gives, with token authentication enforced (a request whose
``Authorization`` header is not one of ``accepted`` answers 401 with ``WWW-Authenticate``).
Served repositories allow partial clone (``uploadpack.allowFilter``) and wants of any
commit id (``uploadpack.allowAnySHA1InWant``), as GitHub and GitLab do. Every request is
recorded, so a test can count the fetches a piece of code made.

``WorkClone`` is a working clone where a test commits, pushes and force-pushes;
``fast_import_history`` writes a long synthetic history in one ``git fast-import`` run.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"

# git for the test's own commands: no user or system configuration, no prompts
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "LC_ALL": "C",
}


def basic(user: str, token: str) -> str:
    """An HTTP Basic ``Authorization`` value."""
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def git(*args: str, cwd: Path | None = None, input: bytes | None = None,
        env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    """Run git for a test (CalledProcessError on failure, with git's stderr); stdout text."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                          env={**base, **GIT_ENV, **(env or {})}, timeout=timeout)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, ["git", *args],
                                            done.stdout, done.stderr)
    return done.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class Request:
    """One request the server received: the repository path, git service and outcome."""

    method: str
    path: str
    service: str
    authorization: str | None
    status: int
    encoding: str  # Content-Encoding and Transfer-Encoding of the request ("gzip", "chunked")
    started: float  # time.monotonic() when the request arrived and when it was answered
    ended: float


@dataclass
class GitServer:
    """``git http-backend`` over HTTP on 127.0.0.1, serving bare repositories under ``root``.

    ``accepted`` are the exact ``Authorization`` header values let in; ``forbidden`` names
    repositories that answer 403 to an authenticated request (a token without access);
    ``delay`` (seconds) holds every answer back (a server that hangs).
    """

    root: Path
    accepted: set[str]
    forbidden: set[str] = field(default_factory=set)
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server._serve(self)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    # --- repositories ---------------------------------------------------------------------

    def url(self, name: str) -> str:
        """The clone URL of repository ``name`` (e.g. ``acme/mono``)."""
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def bare(self, name: str) -> Path:
        """The server-side bare repository of ``name``."""
        return self.root / f"{name}.git"

    def create(self, name: str) -> Path:
        """A new empty served repository (partial clone and any-sha wants allowed)."""
        path = self.bare(name)
        git("init", "--bare", "--initial-branch=main", str(path))
        for key, value in (("uploadpack.allowFilter", "true"),
                           ("uploadpack.allowAnySHA1InWant", "true"),
                           ("http.receivepack", "true"),
                           # no reflogs: a dropped commit becomes unreachable at once
                           ("core.logAllRefUpdates", "false")):
            git("config", key, value, cwd=path)
        return path

    def gc(self, name: str) -> None:
        """Drop every unreachable object of ``name`` now (what a provider's gc does later)."""
        path = self.bare(name)
        git("reflog", "expire", "--expire=now", "--all", cwd=path)
        git("gc", "--prune=now", "--quiet", cwd=path)

    # --- request log ----------------------------------------------------------------------

    def fetches(self, name: str | None = None) -> int:
        """How many fetches (or clones) asked for ``name`` (all repositories when None).

        A fetch starts with one ref advertisement (``GET .../info/refs?service=git-upload-pack``).
        """
        with self._lock:
            return sum(1 for r in self.requests
                       if r.method == "GET" and r.service == "git-upload-pack"
                       and (name is None or r.path.startswith(f"/{name}.git/")))

    def most_at_once(self) -> int:
        """The largest number of requests the server was answering at the same moment."""
        with self._lock:
            edges = sorted([(r.started, 1) for r in self.requests]
                           + [(r.ended, -1) for r in self.requests])
        most = current = 0
        for _, step in edges:
            current += step
            most = max(most, current)
        return most

    # --- HTTP -------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        query = parts.query
        service = ""
        if "service=" in query:
            service = query.split("service=", 1)[1].split("&", 1)[0]
        elif path.endswith(("/git-upload-pack", "/git-receive-pack")):
            service = path.rsplit("/", 1)[1]
        authorization = handler.headers.get("Authorization")
        body = _read_body(handler)
        if self.delay:
            time.sleep(self.delay)
        repo = path.split(".git/", 1)[0].lstrip("/")
        if authorization not in self.accepted:
            status, headers, payload = 401, [("WWW-Authenticate", 'Basic realm="test"')], b""
        elif repo in self.forbidden:
            status, headers, payload = 403, [], b"no access\n"
        else:
            status, headers, payload = self._cgi(handler, path, query, body)
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        with self._lock:
            encoding = " ".join(filter(None, (handler.headers.get("Content-Encoding"),
                                              handler.headers.get("Transfer-Encoding"))))
            self.requests.append(Request(handler.command, path, service, authorization, status,
                                         encoding, started, time.monotonic()))

    def _cgi(self, handler: BaseHTTPRequestHandler, path: str, query: str,
             body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": handler.command,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        # the backend inflates a gzip'd request itself, and speaks protocol v2 when asked
        for header, variable in (("Content-Encoding", "HTTP_CONTENT_ENCODING"),
                                 ("Git-Protocol", "GIT_PROTOCOL")):
            value = handler.headers.get(header)
            if value:
                env[variable] = value
        done = subprocess.run([HTTP_BACKEND], input=body, capture_output=True, env=env,
                              timeout=120)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        return status, headers, payload

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, de-chunked (git streams large POSTs with chunked encoding)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


class WorkClone:
    """A working clone of a served repository, where a test commits and pushes.

    ``authorization`` is an ``Authorization`` header value the server accepts.
    """

    def __init__(self, path: Path, url: str, authorization: str) -> None:
        self.path = path
        self.env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: {authorization}"}
        git("init", "--initial-branch=main", str(path))
        git("remote", "add", "origin", url, cwd=path)

    def git(self, *args: str, input: bytes | None = None) -> str:
        """git in this clone, authenticated to the server."""
        return git(*args, cwd=self.path, input=input, env=self.env)

    def commit(self, changes: Mapping[str, str | None], message: str = "change") -> str:
        """Commit ``changes`` (path -> content; None deletes the path); the new commit id."""
        for rel, content in changes.items():
            target = self.path / rel
            if content is None:
                self.git("rm", "--quiet", "--", rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            self.git("add", "--", rel)
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def rename(self, old: str, new: str, message: str = "rename") -> str:
        """Move ``old`` to ``new`` unchanged (a rename git detects at 100 %)."""
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        self.git("mv", "--", old, new)
        self.git("commit", "--quiet", "-m", message)
        return self.head()

    def head(self) -> str:
        """The checked-out commit id."""
        return self.git("rev-parse", "HEAD").strip()

    def reset(self, commit: str) -> None:
        """Move the branch back to ``commit`` (the next push then needs ``force``)."""
        self.git("reset", "--quiet", "--hard", commit)

    def push(self, branch: str = "main", *, force: bool = False) -> None:
        """Push HEAD to ``branch`` on the server."""
        self.git("push", "--quiet", *(["--force"] if force else []), "origin",
                 f"HEAD:refs/heads/{branch}")


def fast_import_history(clone: WorkClone, *, commits: int, paths: Iterable[str],
                        branch: str = "main") -> str:
    """Append ``commits`` commits to ``branch`` of ``clone``, each adding or changing a share
    of ``paths`` (every path is written at least once); the new head commit id.

    One ``git fast-import`` run writes the whole history in seconds where a loop of commits
    would take minutes.
    """
    paths = list(paths)
    parent = clone.git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").strip()
    lines: list[bytes] = []
    for n in range(commits):
        share = paths[n::commits]
        message = f"synthetic commit {n}\n".encode()
        lines.append(f"commit refs/heads/{branch}\n".encode())
        lines.append(b"committer Test Author <author@example.com> 1700000000 +0000\n")
        lines.append(b"data %d\n%s" % (len(message), message))
        if n == 0 and parent:
            lines.append(f"from {parent}\n".encode())
        for rel in share:
            content = f"{rel} written by commit {n}\n".encode()
            lines.append(f"M 100644 inline {rel}\n".encode())
            lines.append(b"data %d\n%s\n" % (len(content), content))
        lines.append(b"\n")
    clone.git("fast-import", "--quiet", input=b"".join(lines))
    clone.git("reset", "--quiet", "--hard", f"refs/heads/{branch}")
    return clone.head()


@contextmanager
def serving(root: Path, repo: str, token: str) -> Iterator[GitServer]:
    """A GitServer under ``root`` holding the empty repository ``repo`` and letting in
    ``token`` as GitHub sends it (``x-access-token``); closed afterwards."""
    srv = GitServer(root, {basic("x-access-token", token)})
    srv.create(repo)
    try:
        yield srv
    finally:
        srv.close()

"""The gunicorn extensions (receiver/gunicorn_ext.py): connections spread over the workers,
and the access line of a webhook request left to debug level.

Stock gthread accepts whatever it is woken for, so a burst of connects (an ALB opening its
pool) could all land on one worker while the other idles, and the GIL would hold that task
to one core. Driven over real sockets against ``webhook-receiver serve``; which worker holds
(and so serves) which connection is read from /proc, as ``ss -p`` does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness import Service

THREADS = 2  # per worker; two workers


def _config(tmp_path: Path) -> dict[str, object]:
    return {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "github", "name": "acme/mono", "api_url": "http://127.0.0.1:9",
            "webhook_secrets": ["env:GW_SECRET"], "branches": ["main"],
            "pipelines": [{"name": "app", "paths": ["app/**"]}],
        }],
    }


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(_config(tmp_path), tmp_path,
                  env={"GW_SECRET": "s", "RECEIVER_THREADS": str(THREADS)}, workers=2)
    svc.start()
    yield svc
    svc.stop()


def _workers(master: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _server_sockets(port: int) -> dict[str, int]:
    """Socket inode -> client port, of the established TCP connections to ``port``."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # 01 = ESTABLISHED
                    inodes[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return inodes


def _worker_of_each_connection(workers: list[int], port: int) -> dict[int, int]:
    """Client port -> pid of the worker holding that connection's server socket."""
    sockets = _server_sockets(port)
    held = {}
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in sockets:
                    held[sockets[target[8:-1]]] = pid
    return held


def _get_healthz(client: socket.socket) -> bytes:
    """One keep-alive GET /healthz on ``client``; the status line of its answer."""
    client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}\n"):
        chunk = client.recv(4096)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk
    assert b"connection: close" not in answer.lower()
    return answer.split(b"\r\n", 1)[0]


def test_keep_alive_connections_opened_at_once_are_served_by_both_workers(
        service: Service) -> None:
    assert service.proc is not None
    deadline = time.monotonic() + 20
    while len(workers := _workers(service.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # /healthz answers as soon as the first worker is up
    assert len(workers) == 2
    # as a load balancer opening its pool: the connections arrive before their first
    # request, and each holds a thread of the worker that took it until the request comes
    clients = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(2 * THREADS)]
    try:
        deadline = time.monotonic() + 3
        while len(held := _worker_of_each_connection(workers, service.port)) < 2 * THREADS \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        for client in clients:
            client.settimeout(10)
            assert _get_healthz(client) == b"HTTP/1.1 200 OK"
        for client in clients:  # again on each kept-alive connection
            assert _get_healthz(client) == b"HTTP/1.1 200 OK"
        served_by = _worker_of_each_connection(workers, service.port)
        assert served_by == held  # each connection stayed with its worker, kept alive
        # no worker took more connections than it has threads: each serves its share
        assert sorted(Counter(served_by.values()).values()) == [THREADS, THREADS], served_by
        assert {client.getsockname()[1] for client in clients} == set(served_by)
    finally:
        for c in clients:
            c.close()


def test_the_access_line_of_a_webhook_request_is_written_at_debug_level_only(
        tmp_path: Path) -> None:
    svc = Service(_config(tmp_path), tmp_path, env={"GW_SECRET": "s",
                                                    "RECEIVER_LOG_LEVEL": "DEBUG"})
    svc.start()
    try:
        answer = requests.post(svc.url + "/webhooks/github", data=b"{}", timeout=5, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "unsigned-1"})
        assert answer.status_code == 401
        lines = svc.wait_for(lambda logs: any(
            e.get("event") == "http.access" and e.get("path") == "/webhooks/github"
            for e in logs))
    finally:
        svc.stop()
    (rejected,) = [e for e in lines if e.get("event") == "webhook.rejected"]
    (access,) = [e for e in lines if e.get("event") == "http.access"
                 and e.get("path") == "/webhooks/github"]
    assert (rejected["level"], rejected["status"], rejected["delivery_id"]) == \
        ("info", 401, "unsigned-1")
    assert (access["level"], access["status"]) == ("debug", 401)

"""Slow clients against a server on 127.0.0.1: connections that send their request a byte at
a time, and probes that time ordinary requests meanwhile.

Used by tests/test_slow_clients.py and bench/run.py (benchmark 9). Every loop is bounded
by a duration the caller gives; nothing here is sent anywhere but the given loopback port.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# each kind of slow request, as the bytes a slow client sends in full: the request line and
# headers alone (slow headers) or headers followed by a body (slow body, Content-Length or
# chunked). The credential header is present, so a service must wait for the body to
# verify it: these are the requests that cannot be refused early.
_HEAD = (b"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         b"Content-Type: application/json\r\nX-GitHub-Event: push\r\n"
         b"X-GitHub-Delivery: slow-client\r\n"
         b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n")
_BODY = b'{"ref":"refs/heads/main","padding":"' + b"x" * 200 + b'"}'
KINDS: dict[str, bytes] = {
    "slow-headers": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"y" * 400
                    + b"\r\n\r\n",
    "slow-body": _HEAD + b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY,
    "slow-chunked-body": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                         + hex(len(_BODY))[2:].encode() + b"\r\n" + _BODY + b"\r\n0\r\n\r\n",
}


@dataclass
class _Slow:
    kind: str
    sock: socket.socket
    sent: int = 0
    due: float = 0.0


@dataclass
class Attack:
    """``count`` connections to ``port``, each sending one of KINDS one byte every ``pause``
    seconds (the head of a slow-body request at once, then its body a byte at a time), and
    reopened whenever the server closes or answers it; in a thread until ``stop()``.

    ``opened`` counts connections opened, ``closed_by_server`` those the server closed or
    answered, ``answers`` the status lines it answered with (first 12 bytes).
    """

    port: int
    count: int = 64
    pause: float = 0.5
    opened: int = 0
    closed_by_server: int = 0
    answers: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._kinds = list(KINDS)

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _open(self, sel: selectors.BaseSelector, i: int) -> None:
        kind = self._kinds[i % len(self._kinds)]
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        slow = _Slow(kind, sock, due=time.monotonic())
        if kind != "slow-headers":  # the head at once: only the body is slow
            data = KINDS[kind]
            slow.sent = data.index(b"\r\n\r\n") + 4
            sock.send(data[:slow.sent])
        sel.register(sock, selectors.EVENT_READ, (i, slow))
        self.opened += 1

    def _reopen(self, sel: selectors.BaseSelector, i: int, slow: _Slow) -> None:
        sel.unregister(slow.sock)
        slow.sock.close()
        self.closed_by_server += 1
        if not self._stop.is_set():
            self._open(sel, i)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            for i in range(self.count):
                self._open(sel, i)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.05):
                    i, slow = key.data
                    try:
                        answer = slow.sock.recv(4096)
                    except OSError:
                        answer = b""
                    if answer:
                        self.answers.append(answer[:12])
                    self._reopen(sel, i, slow)
                now = time.monotonic()
                for key in list(sel.get_map().values()):
                    i, slow = key.data
                    data = KINDS[slow.kind]
                    if now < slow.due or slow.sent >= len(data):
                        continue
                    try:
                        slow.sock.send(data[slow.sent:slow.sent + 1])
                    except OSError:
                        self._reopen(sel, i, slow)
                        continue
                    slow.sent += 1
                    slow.due = now + self.pause
        finally:
            for key in list(sel.get_map().values()):
                with contextlib.suppress(OSError):
                    key.fileobj.close()  # type: ignore[union-attr]
            sel.close()


def timed(probe: Callable[[], int]) -> tuple[float, int]:
    """(seconds, status) of one call of ``probe``."""
    t0 = time.perf_counter()
    status = probe()
    return time.perf_counter() - t0, status


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> int:
    """Send ``data`` on a new connection; the status code of the answer (0: closed unanswered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

"""gunicorn extensions named in receiver/gunicorn_conf.py.

- ``AccessLogger``: gunicorn's access log as the app's own JSON lines (``event:
  http.access``), so one CloudWatch Logs Insights query reads both. ALB health checks
  (``/healthz``, ``/readyz``) are logged at debug level only: every task is probed often;
  so are webhook requests, whose ``webhook.*`` line already says status, duration and
  client. Requests the app never logged (refused by gunicorn, unknown paths) keep theirs.
  gunicorn's error log ("Worker timeout", "Booting worker", a worker killed) is written as
  the same JSON lines too (``event: gunicorn.log``, its text in ``message``), on stdout, so
  every line there is one JSON object.
- ``ThreadWorker``: gunicorn's gthread worker, except that its event loop receives each
  request whole (within ``server.read_timeout_seconds``, else 408) before a thread runs
  it, so slow or stalled clients hold no thread; that a worker takes new connections only
  while fewer of its connections are busy than it has threads, so connections spread over
  the workers (and the cores) instead of piling on one; and that an unknown
  Transfer-Encoding is answered 400 like every other malformed request (gunicorn says
  501): bad input never yields a 5xx.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import heapq
import logging
import re
import select
import selectors
import socket
import struct
import time
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader, Unreader
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn
from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker

from providers import REGISTRY
from receiver.config import ServerConfig
from receiver.logging import client_address, configure, debug_enabled, get_logger

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def known_path(path: str) -> bool:
    """A route of the service: a health check or ``/webhooks/<registered provider>``."""
    return path in ("/healthz", "/readyz") or (
        path.startswith("/webhooks/") and path[len("/webhooks/"):] in REGISTRY)


class _JsonLines(logging.Handler):
    """A handler for gunicorn's error log: each record becomes one ``gunicorn.log`` line of
    the app's JSON log (level, ``message``, a traceback in ``exception``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            configure()
            log = get_logger()
            method = getattr(log, record.levelname.lower(), log.info)
            method("gunicorn.log", message=record.getMessage(), exc_info=record.exc_info)
        except Exception:  # a log line must never take the server down
            self.handleError(record)


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn logger class whose access and error lines are the app's JSON lines."""

    def _set_handler(self, log: logging.Logger, output: str | None, fmt: logging.Formatter,
                     stream: Any = None) -> None:
        """gunicorn's error log on "-" (ours): JSON lines on stdout, not text on stderr.

        Marked as gunicorn's own handler, so a configuration reload replaces it as it would
        its own; a file or the access log is left to gunicorn."""
        if log is not self.error_log or output != "-":
            super()._set_handler(log, output, fmt, stream)
            return
        for old in [h for h in log.handlers if getattr(h, "_gunicorn", False)]:
            log.removeHandler(old)
        handler = _JsonLines()
        handler._gunicorn = True  # type: ignore[attr-defined]
        log.addHandler(handler)

    def access(self, resp: Any, req: Any, environ: dict[str, Any],
               request_time: timedelta) -> None:
        """One ``http.access`` line: method, path (no query), status, duration, client."""
        configure()
        # the app already wrote this request's line (webhook.*, with status, duration and
        # client): this one is only for RECEIVER_LOG_LEVEL=DEBUG
        quiet = bool(environ.get("receiver.logged"))
        if quiet and not debug_enabled():
            return
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split()[0]
        path = environ.get("PATH_INFO", "")
        fields = {
            "method": method if (method := environ.get("REQUEST_METHOD")) in METHODS
            else "(other)",
            # only the service's own routes by name: a URL may carry anything (even a
            # secret someone pasted into it) and must not reach the log
            "path": path if known_path(path) else "(other)",
            "status": int(status) if str(status).isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "bytes": getattr(resp, "sent", None),
            "remote": client_address(environ),
        }
        log = get_logger()
        if quiet or path in ("/healthz", "/readyz"):
            log.debug("http.access", **fields)
        else:
            log.info("http.access", **fields)


# --- the worker ----------------------------------------------------------------------------

READ_CHUNK = 64 * 1024  # one recv() of the receiving stage
# what any connection may hold without asking the worker's shared budget: enough for the
# health checks and the usual push, so a budget taken up by large bodies never stalls them
OWN_ALLOWANCE = 64 * 1024
# a connection that starts a request counts as about to need a thread for this long (or
# until it gets one): a worker takes new connections while fewer than its threads are in a
# thread or about to be, so a burst of connects spreads over the workers, while a client
# that is still sending after this long does not keep new connections out
YOUNG = 0.2
# a worker that is not taking connections still takes those that waited this long in the
# listen backlog (a sibling had its chance): a burst of slow clients never leaves new
# connections waiting there
OVERFLOW_DELAY = 0.2
OVERFLOW_POLL = 0.05  # how often such a worker looks at the backlog
LINGER = 2.0  # after the last answer: how long the rest of a request is read and dropped
LINGER_BYTES = 64 * 1024
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BodyPending(BaseException):
    """The application asked for request body bytes that have not arrived yet.

    A BaseException, so no ``except Exception`` in the application takes it for an error:
    it unwinds the application to the worker, which answers nothing and runs the request
    again once the whole body is there."""


class _Received(Unreader):  # type: ignore[misc]
    """What the receiving stage has of one request (and anything pipelined behind it), as
    the request parser's source: a thread's parser never reads the socket.

    ``complete``: the stage has the whole request (or has given up on framing it), and
    the end of ``data`` is the end of input. Otherwise asking for more raises BodyPending.
    """

    def __init__(self, data: bytes, complete: bool) -> None:
        super().__init__()
        self._data = data
        self._pos = 0
        self.complete = complete

    def chunk(self, size_hint: int | None = None) -> bytes:
        """The next piece of ``data`` (at most what the caller says it still wants, when
        that is more than READ_CHUNK), as a socket read would give it."""
        if self._pos >= len(self._data):
            if self.complete:
                return b""
            raise BodyPending
        size = max(READ_CHUNK, min(size_hint or 0, SocketUnreader.max_body_chunk))
        piece = self._data[self._pos:self._pos + size]
        self._pos += len(piece)
        return piece

    def rest(self) -> bytes:
        """The bytes the parser did not consume: the start of the next request."""
        return bytes(self.take_buffered()) + self._data[self._pos:]


class _Chunked:
    """Where a chunked body ends, found as its bytes arrive.

    Framing only: the request parser checks every byte again in the thread, so anything
    this does not understand is handed over at once and answered 400 there. ``decoded``
    counts the body bytes received so far.
    """

    def __init__(self, start: int, line_limit: int, trailer_limit: int) -> None:
        self.pos = start  # next byte not yet scanned
        self.state = "size"  # size, data, crlf or trailer
        self.left = 0  # bytes of the current chunk still to come
        self.decoded = 0
        self._line_limit = line_limit
        self._trailer_limit = trailer_limit
        self._searched = start  # where the last search for a line end stopped

    def scan(self, buf: bytearray) -> str:
        """``more`` (wait for bytes), ``done`` (the body ends in ``buf``) or ``bad``."""
        while True:
            if self.state == "size":
                end = buf.find(b"\r\n", max(self.pos, self._searched - 1))
                if end < 0:
                    self._searched = len(buf)
                    return "bad" if len(buf) - self.pos > self._line_limit else "more"
                digits = bytes(buf[self.pos:end]).split(b";", 1)[0].rstrip(b" \t")
                if not digits or len(digits) > 15 or not set(digits) <= _HEX:
                    return "bad"
                self.left, self.pos = int(digits, 16), end + 2
                self._searched = self.pos
                self.state = "data" if self.left else "trailer"
            elif self.state == "data":
                take = min(self.left, len(buf) - self.pos)
                self.pos += take
                self.left -= take
                self.decoded += take
                if self.left:
                    return "more"
                self.state = "crlf"
            elif self.state == "crlf":
                if len(buf) - self.pos < 2:
                    return "more"
                if buf[self.pos:self.pos + 2] != b"\r\n":
                    return "bad"
                self.pos += 2
                self._searched = self.pos
                self.state = "size"
            else:  # the trailer section: an empty line, or header lines and an empty one
                if buf[self.pos:self.pos + 2] == b"\r\n":
                    return "done"
                if buf.find(b"\r\n\r\n", max(self.pos, self._searched - 3)) >= 0:
                    return "done"
                self._searched = len(buf)
                return "bad" if len(buf) - self.pos > self._trailer_limit else "more"


def _recv(sock: socket.socket) -> bytes | None:
    """One non-blocking read: None when nothing is there yet, b"" when the client is gone
    (a reset counts as gone)."""
    try:
        return sock.recv(READ_CHUNK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _framing(head: bytes) -> int | str | None:
    """How the body of the request whose head (request line and header lines, without the
    empty line) is ``head`` ends: its Content-Length, ``"chunked"``, or None when the
    framing is not one of those two plainly (two lengths, other codings, a malformed line):
    the parser is then asked at once, and refuses it or reads to the end of what arrived."""
    length: int | None = None
    coding: bytes | None = None
    # one empty line before the request line is allowed (RFC 9112 section 2.2)
    for line in head.removeprefix(b"\r\n").split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        name = name.lower()
        if not colon or name != name.strip():
            return None
        if name == b"content-length":
            if length is not None or not value.strip().isdigit():
                return None
            length = int(value.strip())
        elif name == b"transfer-encoding":
            if coding is not None:
                return None
            coding = value.strip().lower()
    if coding is not None:
        return "chunked" if coding == b"chunked" and length is None else None
    return length or 0


class _Conn(TConn):  # type: ignore[misc]
    """A client connection and what the receiving stage knows of its current request."""

    def __init__(self, cfg: Any, sock: Any, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.data_ready = True  # gthread's handle() must not wait for data: it is here
        self.state = "reading"  # reading, thread, idle (kept alive) or closing
        self.watched = False  # registered with the worker's poller
        self.inbox = bytearray()  # the current request's bytes received so far
        self.held = 0  # bytes counted against the worker's budget
        self.deadline = 0.0  # of the current request (or, closing, of the linger)
        self.queued = -1.0  # the deadline last queued in the worker's heap
        self.started = False  # the current request's first byte has arrived
        self.head_end = -1  # index after the empty line ending the head, once found
        self.scanned = 0  # how far the search for that empty line went
        self.length: int | None = None  # Content-Length, when that frames the body
        self.chunked: _Chunked | None = None
        self.tried = False  # the application already ran without the whole body
        self.handover: bytes | bytearray = b""  # what a thread is to parse
        self.complete = False  # ... and whether it is the whole request
        self.rest = b""  # what arrived after the request a thread served
        self.young_since: float | None = None  # see YOUNG
        self.drained = 0

    def init(self) -> None:
        """In the thread, before the request is parsed: nothing to set up (no TLS; the
        write timeout is the socket's own, set once)."""
        self.initialized = True

    def next_request(self, rest: bytes) -> None:
        """Forget the request just served; ``rest`` is what arrived after it."""
        self.inbox = bytearray(rest)
        self.started = bool(rest)
        self.head_end = -1
        self.scanned = 0
        self.length = None
        self.chunked = None
        self.tried = False


class ThreadWorker(_GThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, whose threads only ever see whole requests.

    Stock gthread gives a connection to a thread as soon as its first byte arrives, and the
    thread then blocks reading the rest: a handful of clients sending a byte now and then
    hold every thread, and nothing else is answered. Here the worker's own event loop (the
    main thread, which gthread already runs) reads every connection without blocking until
    its request has fully arrived (headers, and a body framed by Content-Length or chunked
    coding), within ``server.read_timeout_seconds`` of its first byte (a new connection's
    first request: of the connection's opening), else it is answered 408 and closed
    (``http.timeout``); a byte now and then does not extend that. Only then does a thread
    parse it, from memory, and run the application. A slow client costs a socket and its
    bytes, never a thread; a client that reads no answer is cut off by the same timeout
    (SO_SNDTIMEO).

    Once the head of a request is in but not yet its body, the application runs once
    without the body: the webhook routes refuse a request without credentials, with an
    unknown path or an oversized Content-Length before they read the body, so such a
    request is answered at once (and its connection closed). A route that asks for the
    body unwinds (BodyPending) before answering anything, and the request runs again once
    its body is in. Routes therefore read the body before they change or answer anything.

    Bounds, per worker: a request's head as gunicorn's limits (``limit_request_line``,
    ``limit_request_fields``, ``limit_request_field_size``); its body at most
    ``server.max_body_bytes`` (a longer one goes to the application as soon as a little
    more has arrived, and is answered 413); at most ``worker_connections`` connections; and
    beyond OWN_ALLOWANCE bytes a connection, ``threads`` x ``server.max_body_bytes`` bytes
    of requests held at once (a connection past both waits, unread, within its deadline).

    Kept from before: a worker takes new connections while fewer of its connections are
    busy than it has threads, so a burst of connects spreads over the workers (and the
    cores) instead of piling on whichever wakes first. Busy is in a thread (or queued for
    one), or started a request less than YOUNG ago: a slow client stops counting after
    that, and idle kept-alive connections never count. A worker held back that way still
    takes connections that waited OVERFLOW_DELAY in the backlog (a burst of slow clients
    never leaves new ones waiting there). An unknown Transfer-Encoding is answered 400
    like every other malformed request (gunicorn says 501): bad input never yields a 5xx.
    TLS and HTTP/2 are not served (``check_config``): they end at the load balancer.

    Relies on these internals of ``gunicorn.workers.gthread.ThreadWorker`` (gunicorn 27.x,
    pinned in pyproject.toml): ``run()`` calls ``set_accept_enabled(enabled)`` on every
    loop whenever ``nr_conns < worker_connections`` differs from ``_accepting``,
    ``wait_for_and_dispatch_events(timeout)``, ``murder_keepalived()`` and
    ``murder_pending()`` (here: the receiving stage's deadlines); ``nr_conns``,
    ``keepalived_conns`` (idle kept-alive connections, each with ``timeout``), ``poller``,
    ``method_queue``, ``tpool``; ``enqueue_req(conn)`` hands a connection to a thread,
    whose ``handle(conn)`` parses ``conn.parser`` and calls ``handle_request(req, conn)``
    and ``_keepalive_after``; ``finish_request(conn, future)`` runs on the main thread
    after it; ``on_client_socket_readable(conn, sock)`` for an idle connection;
    ``handle_error(req, client, addr, exc)`` writes an error answer; and of the parser:
    ``Parser``'s fields (``cfg``, ``unreader``, ``mesg``, ``source_addr``,
    ``req_count``), ``Unreader.chunk``/``take_buffered``, ``Request.force_close`` and
    ``_expected_100_continue``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = 0  # request bytes this worker holds (being received or in a thread)
        self._stalled: list[_Conn] = []  # connections waiting for the budget
        self._deadlines: list[tuple[float, int, _Conn]] = []
        self._seq = 0
        self._in_thread = 0  # connections in a thread or queued for one
        self._young = 0  # connections that started a request less than YOUNG ago
        self._young_queue: collections.deque[tuple[float, float, _Conn]] = collections.deque()
        self._waiting_since: float | None = None
        self._max_body = ServerConfig().max_body_bytes
        self._read_timeout = ServerConfig().read_timeout_seconds
        self._budget = self.cfg.threads * self._max_body
        # the longest head gunicorn's parser would still read (its own limits refuse it)
        self._max_head = (self.cfg.limit_request_line + 4
                          + self.cfg.limit_request_fields * (self.cfg.limit_request_field_size + 2)
                          + 4)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """The receiving stage reads plain HTTP/1.1: TLS ends at the load balancer."""
        super().check_config(cfg, log)
        if cfg.is_ssl or getattr(cfg, "http2_cleartext", "off") != "off":
            raise RuntimeError("receiver.gunicorn_ext.ThreadWorker serves plain HTTP/1.1: "
                               "terminate TLS at the load balancer")

    def run(self) -> None:
        """Take the limits from the application's configuration, then serve."""
        receiver = getattr(self.wsgi, "extensions", {}).get("receiver")
        if receiver is not None:  # the service (the benchmark's floor keeps the defaults)
            server = receiver["config"].server
            self._max_body = server.max_body_bytes
            self._read_timeout = server.read_timeout_seconds
            self._budget = self.cfg.threads * self._max_body
        super().run()

    # --- which worker takes a connection ------------------------------------------------------

    def _busy(self) -> int:
        now = time.monotonic()
        queue = self._young_queue
        while queue and queue[0][0] <= now:
            _, since, conn = queue.popleft()
            if conn.young_since == since:
                self._grown_up(conn)
        return self._in_thread + self._young

    def _starts_request(self, conn: _Conn) -> None:
        now = time.monotonic()
        self._grown_up(conn)
        conn.young_since = now
        self._young += 1
        self._young_queue.append((now + YOUNG, now, conn))

    def _grown_up(self, conn: _Conn) -> None:
        if conn.young_since is not None:
            conn.young_since = None
            self._young -= 1

    def set_accept_enabled(self, enabled: bool) -> None:
        """Accept only while fewer connections are busy than there are threads."""
        super().set_accept_enabled(enabled and self._busy() < self.cfg.threads)

    def _update_accepting(self) -> None:
        if self._accepting and self._busy() >= self.cfg.threads:
            super().set_accept_enabled(False)

    def accept(self, listener: Any) -> None:
        """A new connection joins the receiving stage."""
        self._accept(listener)
        self._update_accepting()

    def _accept(self, listener: Any) -> bool:
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return False
            raise
        self.nr_conns += 1
        conn = _Conn(self.cfg, sock, addr, listener.getsockname())
        # a client that reads no answer must not hold a thread either: the kernel ends a
        # blocked send after this long (a socket option, so blocking sends cost no poll)
        seconds = int(self._read_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack(
            "ll", seconds, int((self._read_timeout - seconds) * 1_000_000)))
        # its first request, idle wait included, must arrive within the read timeout
        conn.deadline = time.monotonic() + self._read_timeout
        self._queue_deadline(conn)
        self._starts_request(conn)
        self._watch(conn, self._on_readable)
        return True

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Wake for the next deadline, and when a connection stops being young; a worker
        held back from accepting looks at the backlog every OVERFLOW_POLL and takes what
        waited there OVERFLOW_DELAY."""
        now = time.monotonic()
        if self._deadlines:
            timeout = min(timeout, max(0.0, self._deadlines[0][0] - now))
        if self._young_queue and not self._accepting:
            timeout = min(timeout, max(0.0, self._young_queue[0][0] - now))
        held_back = (self.alive and not self._accepting
                     and self.nr_conns < self.worker_connections)
        super().wait_for_and_dispatch_events(min(timeout, OVERFLOW_POLL) if held_back
                                             else timeout)
        if held_back and not self._accepting:
            self._overflow()

    def _overflow(self) -> None:
        ready = select.select(self.sockets, [], [], 0)[0]
        now = time.monotonic()
        if not ready:
            self._waiting_since = None
            return
        if self._waiting_since is None:
            self._waiting_since = now
            return
        if now - self._waiting_since < OVERFLOW_DELAY:
            return
        self._waiting_since = None
        for listener in ready:
            while self.nr_conns < self.worker_connections and self._accept(listener):
                pass

    # --- the receiving stage (main thread) --------------------------------------------------

    def _watch(self, conn: _Conn, callback: Any) -> None:
        handler = functools.partial(callback, conn)
        if conn.watched:
            self.poller.modify(conn.sock, selectors.EVENT_READ, handler)
        else:
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, handler)
            conn.watched = True

    def _unwatch(self, conn: _Conn) -> None:
        if conn.watched:
            self.poller.unregister(conn.sock)
            conn.watched = False

    def _queue_deadline(self, conn: _Conn) -> None:
        # queued only for a connection that stays in the stage: most requests arrive in
        # one read and go to a thread at once, and would only leave stale entries
        if conn.queued != conn.deadline:
            conn.queued = conn.deadline
            self._seq += 1
            heapq.heappush(self._deadlines, (conn.deadline, self._seq, conn))

    def _hold(self, conn: _Conn, count: int) -> None:
        conn.held += count
        self._held += count

    def _release(self, conn: _Conn) -> None:
        self._held -= conn.held
        conn.held = 0
        if self._stalled and self._held < self._budget:
            stalled, self._stalled = self._stalled, []
            for other in stalled:
                if other.state == "reading":
                    self._watch(other, self._on_readable)

    def on_client_socket_readable(self, conn: _Conn, client: Any) -> None:
        """An idle kept-alive connection starts its next request."""
        self.keepalived_conns.remove(conn)
        conn.state = "reading"
        conn.deadline = time.monotonic() + self._read_timeout
        self._starts_request(conn)
        self._watch(conn, self._on_readable)
        self._on_readable(conn, client)
        self._update_accepting()

    def _on_readable(self, conn: _Conn, _sock: Any = None) -> None:
        if len(conn.inbox) >= OWN_ALLOWANCE and self._held >= self._budget:
            self._unwatch(conn)  # unread bytes wait in the kernel, the client is slowed
            self._stalled.append(conn)
            return
        data = _recv(conn.sock)
        if data is None:
            return
        if not data:  # the client is gone, or sent all it will (a half-close)
            if conn.inbox:
                self._dispatch(conn, complete=True)  # the parser sees where it ends
            else:
                self._close(conn)
            return
        conn.started = True
        conn.inbox += data
        self._hold(conn, len(data))
        self._advance(conn)
        if conn.state == "reading":
            self._queue_deadline(conn)

    def _advance(self, conn: _Conn) -> None:
        """Hand the request to a thread once it is whole, or its head to the application
        once the head is (see the class docstring)."""
        inbox = conn.inbox
        if conn.head_end < 0:
            end = inbox.find(b"\r\n\r\n", max(0, conn.scanned - 3))
            limit = len(inbox) if end < 0 else end + 4
            if _BARE_LF.search(inbox, max(0, conn.scanned - 1), limit):
                self._dispatch(conn, complete=True)  # refused by the parser
                return
            conn.scanned = limit
            if end < 0:
                if len(inbox) > self._max_head:
                    self._dispatch(conn, complete=True)  # 414 or 431 from the parser
                return
            conn.head_end = end + 4
            framing = _framing(bytes(inbox[:end]))
            if framing is None:
                self._dispatch(conn, complete=True)
                return
            if framing == "chunked":
                conn.chunked = _Chunked(conn.head_end, self.cfg.limit_request_field_size,
                                        self._max_head)
            else:
                conn.length = int(framing)
        if conn.chunked is not None:
            outcome = conn.chunked.scan(inbox)
            received = conn.chunked.decoded
            whole = outcome != "more"
        else:
            assert conn.length is not None
            received = len(inbox) - conn.head_end
            whole = received >= conn.length
        # a body over the limit is not read further: the application answers 413. A little
        # more than the limit is read first, or the parser, reading ahead, would find the
        # end of what arrived before the application finds the body too large
        if whole or received > self._max_body + READ_CHUNK:
            self._dispatch(conn, complete=True)
        elif not conn.tried:
            conn.tried = True
            self._dispatch(conn, complete=False)

    def _dispatch(self, conn: _Conn, complete: bool) -> None:
        self._unwatch(conn)
        self._grown_up(conn)
        self._in_thread += 1
        conn.state = "thread"
        conn.handover, conn.complete = conn.inbox, complete  # the thread makes the parser
        if complete:
            conn.inbox = bytearray()
        self.enqueue_req(conn)

    def murder_pending(self) -> None:
        """Requests past their read deadline are answered 408 and closed; connections
        lingering after their last answer are closed."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self._deadlines)
            if deadline != conn.deadline:
                continue  # stale: the connection moved on since
            if conn.state not in ("reading", "closing"):
                conn.queued = -1.0  # in a thread: queued again if it comes back unanswered
                continue
            if conn.state == "closing":
                self._close(conn)
            else:
                self._time_out(conn)

    def _time_out(self, conn: _Conn) -> None:
        if conn.started:
            inbox = conn.inbox
            fields: dict[str, Any] = {
                "phase": "headers" if conn.head_end < 0 else "body",
                "received": len(inbox), "remote": conn.client[0] if conn.client else None,
                "timeout_s": self._read_timeout}
            if conn.head_end >= 0:
                target = bytes(inbox[:inbox.find(b" HTTP/")]).partition(b" ")[2]
                path = target.partition(b"?")[0].decode("latin-1")
                fields["path"] = path if known_path(path) else "(other)"
            configure()
            get_logger().info("http.timeout", status=408, **fields)
            body = (b'{"error":"request_timeout","message":"the request did not arrive '
                    b'within ' + f"{self._read_timeout:g}".encode() + b' s"}\n')
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                               b"Content-Type: application/json\r\nContent-Length: "
                               + str(len(body)).encode() + b"\r\n\r\n" + body)
            self._close(conn, graceful=True)
        else:
            self._close(conn)  # never said anything: nothing to answer

    def _close(self, conn: _Conn, graceful: bool = False) -> None:
        """Close ``conn``; ``graceful``: after sending FIN, read and drop what the client
        still sends for LINGER (at most LINGER_BYTES), so the answer is not cut off by a
        reset (RFC 9112 section 9.6), without blocking the loop as gunicorn's own does."""
        self._release(conn)
        self._grown_up(conn)
        conn.inbox = bytearray()
        if graceful and conn.state != "closing":
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                graceful = False
            else:
                conn.state = "closing"
                conn.drained = 0
                conn.deadline = time.monotonic() + LINGER
                self._queue_deadline(conn)
                self._watch(conn, self._on_lingering)
                return
        self._unwatch(conn)
        conn.state = "closed"
        self.nr_conns -= 1
        conn.close()

    def _on_lingering(self, conn: _Conn, _sock: Any = None) -> None:
        data = _recv(conn.sock)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self._close(conn)

    # --- in a thread, and back --------------------------------------------------------------

    def handle(self, conn: _Conn) -> Any:
        """Serve the request the stage handed over; ``_PENDING`` when the application
        asked for a body that has not arrived (nothing was answered).

        The parser is made, and dropped, here rather than in the worker's event loop,
        which every request of the worker goes through."""
        received = _Received(bytes(conn.handover), conn.complete)
        conn.handover = b""
        conn.parser = _ReceivedParser(self.cfg, received, conn.client)
        try:
            result = super().handle(conn)
        except BodyPending:
            result = _PENDING
        conn.rest = received.rest() if result is True else b""
        conn.parser = None
        return result

    def handle_request(self, req: Any, conn: _Conn) -> bool:
        """Run the application; a request answered without its whole body closes its
        connection (where the next request would start is unknown)."""
        if conn.complete:
            req._expected_100_continue = False  # the body is here already
        else:
            req.force_close()
        return bool(super().handle_request(req, conn))

    def finish_request(self, conn: _Conn, fs: Any) -> None:
        """On the main thread: keep the connection for its next request, wait for the rest
        of the body the application asked for, or close it."""
        self._in_thread -= 1
        try:
            result = fs.result() if not fs.cancelled() else False
        except BaseException:  # a thread's failure closes only its connection
            result = False
        if result is _PENDING:
            conn.state = "reading"
            self._watch(conn, self._on_readable)
            self._queue_deadline(conn)
            return
        if not result:
            self._close(conn, graceful=True)
            return
        rest, conn.rest = conn.rest, b""
        self._release(conn)
        conn.next_request(rest)
        conn.state = "reading"
        if rest:  # pipelined: the next request is under way already
            self._hold(conn, len(rest))
            conn.deadline = time.monotonic() + self._read_timeout
            self._starts_request(conn)
            self._watch(conn, self._on_readable)
            self._advance(conn)
            if conn.state == "reading":
                self._queue_deadline(conn)
            return
        conn.state = "idle"
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)
        self._watch(conn, self.on_client_socket_readable)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer an unsupported Transfer-Encoding as a malformed header (400): bad input
        never gets a 5xx."""
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding")
        super().handle_error(req, client, addr, exc)


_PENDING = object()


class _ReceivedParser(RequestParser):  # type: ignore[misc]
    """gunicorn's request parser over what the receiving stage received."""

    def __init__(self, cfg: Any, received: _Received, addr: Any) -> None:
        # Parser.__init__'s fields, with our source instead of a socket's
        self.cfg = cfg
        self.unreader = received
        self.mesg = None
        self.source_addr = addr
        self.req_count = 0

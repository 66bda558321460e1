"""gunicorn extensions named in receiver/gunicorn_conf.py.

- ``AccessLogger``: gunicorn's access log as the app's own JSON lines (``event:
  http.access``), so one CloudWatch Logs Insights query reads both. ALB health checks
  (``/healthz``, ``/readyz``) are logged at debug level only: every task is probed often;
  so are webhook requests, whose ``webhook.*`` line already says status, duration and
  client. Requests the app never logged (refused by gunicorn, unknown paths) keep theirs.
  gunicorn's error log ("Worker timeout", "Booting worker", a worker killed) is written as
  the same JSON lines too (``event: gunicorn.log``, its text in ``message``), on stdout, so
  every line there is one JSON object.
- ``ThreadWorker``: gunicorn's gthread worker, except that a worker takes new connections
  only while it has a free thread, so connections spread over the workers (and the cores)
  instead of piling on one; and that an unknown Transfer-Encoding is answered 400 like
  every other malformed request (gunicorn says 501): bad input never yields a 5xx.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker

from providers import REGISTRY
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


class ThreadWorker(_GThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, taking new connections only while one of its threads is
    free, and answering an unknown Transfer-Encoding 400 instead of 501.

    Stock gthread accepts every connection it is woken for, so whichever worker wakes first
    after a burst of connects (a load balancer opening its keep-alive pool) can end up with
    all of them while its sibling idles, and the GIL holds the task to one core. A busy
    worker here leaves new connections in the shared backlog for a sibling (or for itself,
    once a thread frees). Idle kept-alive connections hold no thread and do not count.

    Relies on these internals of ``gunicorn.workers.gthread.ThreadWorker`` (gunicorn 27.x,
    pinned in pyproject.toml): ``nr_conns`` (connections held), ``keepalived_conns`` and
    ``pending_conns`` (those waiting in the poller, not in a thread), ``cfg.threads``;
    ``enqueue_req(conn)`` hands a connection to a thread; ``set_accept_enabled(enabled)``
    (un)registers the listeners and is called by ``run()`` on every loop whenever
    ``nr_conns < worker_connections`` differs from its ``_accepting`` flag, so a worker
    turned away here asks again after each event; ``handle_error(req, client, addr, exc)``
    writes the error answer.
    """

    def _has_free_thread(self) -> bool:
        waiting = len(self.keepalived_conns) + len(self.pending_conns)
        return bool(self.nr_conns - waiting < self.cfg.threads)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Accept only while a thread is free."""
        super().set_accept_enabled(enabled and self._has_free_thread())

    def enqueue_req(self, conn: Any) -> None:
        """Hand ``conn`` to a thread; stop accepting once every thread has one."""
        super().enqueue_req(conn)
        if not self._has_free_thread():
            super().set_accept_enabled(False)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer an unsupported Transfer-Encoding as a malformed header (400): bad input
        never gets a 5xx."""
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding")
        super().handle_error(req, client, addr, exc)

"""gunicorn extensions named in receiver/gunicorn_conf.py.

- ``AccessLogger``: gunicorn's access log as the app's own JSON lines (``event:
  http.access``), so one CloudWatch Logs Insights query reads both. ALB health checks
  (``/healthz``, ``/readyz``) are logged at debug level only: every task is probed often.
- ``ThreadWorker``: gunicorn's gthread worker, except that an unknown Transfer-Encoding is
  answered 400 like every other malformed request (gunicorn says 501): bad input never
  yields a 5xx.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker

from receiver.logging import configure, get_logger

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
KNOWN_PATHS = frozenset({"/healthz", "/readyz"} | {
    f"/webhooks/{name}" for name in ("github", "gitlab", "bitbucket", "bitbucket-server")})


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn logger class whose access lines are structured JSON; errors stay gunicorn's."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any],
               request_time: timedelta) -> None:
        """One ``http.access`` line: method, path (no query), status, duration, client."""
        configure()
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split()[0]
        path = environ.get("PATH_INFO", "")
        fields = {
            "method": method if (method := environ.get("REQUEST_METHOD")) in METHODS
            else "(other)",
            # only the service's own routes by name: a URL may carry anything (even a
            # secret someone pasted into it) and must not reach the log
            "path": path if path in KNOWN_PATHS else "(other)",
            "status": int(status) if str(status).isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "bytes": getattr(resp, "sent", None),
            # the ALB appends the client address last; earlier entries are the client's word
            "remote": (environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR")
                       or "").rsplit(",", 1)[-1].strip()[:45],
        }
        log = get_logger()
        if path in ("/healthz", "/readyz"):
            log.debug("http.access", **fields)
        else:
            log.info("http.access", **fields)


class ThreadWorker(_GThreadWorker):  # type: ignore[misc]
    """The gthread worker with client errors kept in the 4xx range."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer an unsupported Transfer-Encoding as a malformed header (400)."""
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding")
        super().handle_error(req, client, addr, exc)

"""Structured logs: one JSON object per line on stdout with ``ts``, ``level`` and ``event``.

Every line about a delivery carries ``delivery_id``, ``provider`` and ``repository``:
they are bound once with :func:`delivery_context` and added to each line inside it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import orjson
import structlog

from receiver.metrics import EmbeddedMetrics

_configured = False
_level = logging.INFO
_write_lock = threading.Lock()


class _StdoutLogger:
    """Writes each line to the *current* sys.stdout in one write call.

    One write per line keeps lines from several gunicorn workers on one pipe whole, and
    looking sys.stdout up each time follows redirections made after start-up.
    """

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        with _write_lock:
            sys.stdout.write(message + "\n")
            sys.stdout.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure(level: str | None = None) -> None:
    """JSON logging to stdout at ``level``, else RECEIVER_LOG_LEVEL, else INFO. Idempotent."""
    global _configured, _level
    if _configured:
        return
    level = (level or os.environ.get("RECEIVER_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(level)
    _level = numeric if isinstance(numeric, int) else logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _leading_keys,
            EmbeddedMetrics.from_environ(),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=_StdoutLogger,
        cache_logger_on_first_use=True,
    )
    _configured = True


def _leading_keys(_logger: Any, _name: str,
                  event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # ts, level and event first, so a person reading raw lines sees them at once
    ordered: dict[str, Any] = {k: event.pop(k) for k in ("ts", "level", "event") if k in event}
    ordered.update(event)
    return ordered


def _dumps(obj: Any, default: Callable[[Any], Any] | None = None, **_kw: Any) -> str:
    """One log line's JSON, always ASCII: orjson (the project's JSON library, see
    pyproject.toml), or the json module where orjson cannot encode a value or its output
    is not ASCII (orjson has no option to escape non-ASCII)."""
    try:
        line = orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer past 64 bits, say: the json module takes anything
        line = None
    if line is not None and line.isascii():
        return line.decode()
    # non-ASCII escaped as \uXXXX, so that no line reader (str.splitlines splits at
    # U+2028 and U+0085) ever sees a log line broken in two
    return json.dumps(obj, default=default, separators=(",", ":"))


def client_address(environ: Mapping[str, Any]) -> str:
    """The client of a WSGI request, for logs: behind the ALB the last X-Forwarded-For entry
    (the ALB appends the address it saw; earlier entries are the client's word), else the
    peer address; at most 45 characters (an IPv6 address)."""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR") or ""
    return str(forwarded).rsplit(",", 1)[-1].strip()[:45]


def debug_enabled() -> bool:
    """Whether debug lines are written (RECEIVER_LOG_LEVEL=DEBUG)."""
    return _level <= logging.DEBUG


def get_logger() -> Any:
    """The service's logger: ``log.info("event.name", key=value, ...)``."""
    return structlog.get_logger()


@contextmanager
def delivery_context(delivery_id: str, provider: str, repository: str) -> Iterator[None]:
    """Add the delivery fields to every log line written inside the block (this thread only)."""
    with structlog.contextvars.bound_contextvars(
        delivery_id=delivery_id, provider=provider, repository=repository
    ):
        yield

"""The status pages: a Flask blueprint under ``/ui``, server-rendered with Jinja2.

Read-only: GET (and the HEAD Flask derives from it) is the only method, anything else is
405 before any work. Every page is HTML that needs no JavaScript and loads nothing but
itself: its stylesheet is inline, allowed by the Content-Security-Policy through its
SHA-256, and everything else is refused (``default-src 'none'``). Jinja2 autoescapes every
value: branch, file and pipeline names come from repositories.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

from flask import Blueprint, Response, g, render_template, request
from markupsafe import Markup

from receiver.config import Config
from receiver.errors import BadRequest, ServiceUnavailable, StateError, Unauthorized
from receiver.logging import client_address, get_logger
from receiver.state.base import StateStore
from receiver.ui import status
from receiver.ui.auth import Authenticator

STYLE = resources.files("receiver.ui").joinpath("style.css").read_text(encoding="utf-8")
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # what a reader may see is not for a shared cache
}
F = TypeVar("F", bound=Callable[..., Any])
FILTER_MAX_CHARS = 256
# verdicts and execution statuses as the few CSS classes the stylesheet colours
_TONES = {"succeeded": "good", "started": "good", "unchanged": "quiet", "contained": "quiet",
          "failed": "bad", "stopped": "bad", "cancelled": "bad", "retry": "warn",
          "in_flight": "busy", "inprogress": "busy", "stopping": "busy",
          "superseded": "quiet"}


def blueprint(config: Config, store: StateStore, auth: Authenticator) -> Blueprint:
    """The pages, reading ``store``, each request identified by ``auth`` first."""
    log = get_logger()
    ui = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

    def route(rule: str) -> Callable[[F], F]:
        # no automatic OPTIONS: GET and HEAD are all there is
        return ui.route(rule, methods=["GET"], provide_automatic_options=False)

    @ui.before_request
    def identify() -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        g.reader = auth.identify(headers, request.environ)

    @ui.after_request
    def secure(response: Response) -> Response:
        response.headers.update(HEADERS)
        return response

    @ui.errorhandler(Unauthorized)
    def unauthorized(exc: Unauthorized) -> tuple[str, int, dict[str, str]]:
        log.info("ui.denied", reason=exc.message, path=request.path,
                 remote=client_address(request.environ))
        challenge = {"WWW-Authenticate": auth.challenge} if auth.challenge else {}
        return page("error.html", title="Not signed in", status=401, message=exc.message), \
            401, challenge

    @ui.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> tuple[str, int]:
        return page("error.html", title="Bad request", status=400, message=exc.message), 400

    @ui.errorhandler(ServiceUnavailable)
    def unavailable(exc: ServiceUnavailable) -> tuple[str, int]:
        log.warning("ui.unavailable", error=exc.cause, path=request.path)
        return page("error.html", title="Unavailable", status=503, message=exc.message), 503

    @ui.errorhandler(StateError)
    def state_down(exc: StateError) -> tuple[str, int]:
        log.warning("ui.unavailable", error=str(exc), path=request.path)
        return page("error.html", title="Unavailable", status=503,
                    message="the state store does not answer; try again shortly"), 503

    @route("/")
    def index() -> str:
        return page("index.html", title="Status", nav="status",
                    view=status.overview(config, store))

    @route("/deliveries")
    def deliveries() -> str:
        filters = _filters(config)
        return page("deliveries.html", title="Deliveries", nav="deliveries", filters=filters,
                    records=status.records(config, store, filters),
                    repositories=[(r.key, f"{r.name} ({r.provider})")
                                  for r in config.repositories])

    @route("/pipelines/<name>")
    def pipeline(name: str) -> tuple[str, int]:
        view = status.pipeline(config, store, name)
        if view is None:
            return page("error.html", title="Unknown pipeline", status=404,
                        message="no pipeline of that name is configured, holds a baseline "
                                "or was started"), 404
        return page("pipeline.html", title=name, nav="", view=view), 200

    @route("/pull-requests")
    def pull_requests() -> str:
        return page("pull_requests.html", title="Pull requests", nav="pull-requests",
                    validations=status.validations(config, store))

    return ui


def page(template: str, **context: Any) -> str:
    """Render one page with what every page shows (the reader, the stylesheet)."""
    # the stylesheet is this package's own file, so it is marked safe (autoescape would
    # turn its quotes into entities, and its hash would no longer match)
    return render_template(f"ui/{template}", style=Markup(STYLE),
                           reader=g.get("reader", ""), when=when, ago=ago, short=short,
                           tone=tone, **context)


def _filters(config: Config) -> status.Filters:
    """The deliveries page's query: short strings and a bounded limit, else 400."""
    args = request.args
    values = {key: args.get(key, "").strip() for key in ("repository", "branch", "commit",
                                                         "pipeline")}
    too_long = [key for key, value in values.items() if len(value) > FILTER_MAX_CHARS]
    if too_long:
        raise BadRequest(f"{too_long[0]}: at most {FILTER_MAX_CHARS} characters")
    raw_limit = args.get("limit", "") or str(status.RECORDS_DEFAULT)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= status.RECORDS_MAX:
        raise BadRequest(f"limit: a number from 1 to {status.RECORDS_MAX}")
    return status.Filters(**values, limit=int(raw_limit))


def when(ts: float | None) -> str:
    """A time as UTC, to the second (``2026-12-01 09:36:22Z``); empty for None."""
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(seconds: float | None) -> str:
    """A duration in the largest whole unit (``45 s``, ``12 min``, ``3 h``, ``2 d``)."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def short(sha: str | None) -> str:
    """A commit id as its first 12 characters; "none" for no commit."""
    return sha[:12] if sha else "none"


def tone(value: str | None) -> str:
    """The CSS class of a verdict or status (one of a fixed few, never the value itself)."""
    return _TONES.get((value or "").lower(), "quiet")

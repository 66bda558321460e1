"""The Flask app factory: health checks, the webhook route, and the one error-to-HTTP table."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from providers import Provider, build_providers
from providers.base import constant_time_equal, load_json_object, verify_for
from receiver import ui
from receiver.config import Config, read_secrets
from receiver.effects import Bus
from receiver.errors import (
    BadRequest,
    Ignored,
    NotFound,
    PayloadTooLarge,
    RequestError,
    ServiceUnavailable,
    StateError,
    Unauthorized,
    UnsupportedMediaType,
)
from receiver.events import Delivery, PullRequestEvent
from receiver.launcher import Launcher, aws_region, build_launcher
from receiver.leased import LeasedLoop
from receiver.logging import client_address, configure, get_logger
from receiver.notify import KIND as NOTIFY
from receiver.notify import NotifyHandler, NotifyListener
from receiver.outcomes import OutcomeRecorder, parse_event, poll_outcomes
from receiver.processor import Processor
from receiver.reconcile import Reconciler
from receiver.runtime import Runtime
from receiver.secrets import SecretRef
from receiver.sender import Sender
from receiver.state import StateStore, open_store
from receiver.statuses import KIND, StatusHandler, StatusListener
from receiver.validation import KIND as VALIDATION_KIND
from receiver.validation import Summaries, SummaryHandler, admission
from receiver.worker import Worker

BACKLOG_SECONDS = 60.0  # how often one replica measures the backlog (CloudWatch's resolution)
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


def create_app(config: Config, *, store: StateStore | None = None,
               launcher: Launcher | None = None,
               providers: Mapping[str, Provider] | None = None,
               start_worker: bool = True) -> Flask:
    """Build the WSGI app. Starts this process's background worker unless told not to."""
    configure()
    log = get_logger()
    read_secrets(config)  # a service that cannot verify a delivery must not start
    store = store if store is not None else open_store(config.state)
    if config.state.backend == "sqlite":
        store.init()  # the embedded default needs no separate 'state init'
    launcher = launcher if launcher is not None else build_launcher(config.launcher)
    providers = providers if providers is not None else build_providers()
    runtime, worker, recorder = _background(config, store, launcher, providers)
    if start_worker:
        runtime.start()

    app = Flask("receiver")
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.extensions["receiver"] = {"config": config, "store": store, "worker": worker,
                                  "runtime": runtime}
    ui.register(app, config, store)  # the status page under /ui/, when configured

    @app.before_request
    def started() -> None:
        # duration_ms of the canonical line counts from here (routing errors included)
        request.environ["receiver.started"] = time.perf_counter()

    def answer(http_status: int, **body: Any) -> tuple[Response, int]:
        return Response(orjson.dumps(body) + b"\n", mimetype="application/json"), http_status

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return answer(200, status="ok")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            store.ping()
        except StateError as exc:
            log.warning("readyz.failed", check="state", error=str(exc))
            return answer(503, status="unavailable", checks={"config": "ok", "state": "failing"})
        return answer(200, status="ready", checks={"config": "ok", "state": "ok"})

    @app.post("/webhooks/<provider_name>")
    def webhook(provider_name: str) -> tuple[Response, int]:
        provider = providers.get(provider_name)
        environ = request.environ
        # an unknown path is logged as 'unknown': a URL must not mint log or metric values
        environ["receiver.provider"] = provider_name if provider else "unknown"
        repos = config.repositories_for(provider_name)
        if provider is None or not repos:
            raise NotFound("unknown provider path")
        if request.mimetype not in provider.content_types:
            raise UnsupportedMediaType(
                f"content type must be one of {', '.join(provider.content_types)}")
        headers = request_headers()
        # logged (validated, unverified) so a rejected delivery can be traced too; an
        # invalid one is refused below, once the signature has been checked
        with contextlib.suppress(RequestError):
            environ["receiver.delivery_id"] = provider.delivery_id(headers)
        provider.preflight(headers)
        # from the headers alone, before the body is read: a request that cannot verify
        # whatever its body is never waited for (receiver/gunicorn_ext.py)
        if not any(headers.get(name) for name in provider.credential_headers):
            raise Unauthorized(f"missing {' or '.join(provider.credential_headers)}")
        body = environ["receiver.body"] = _read_body(config.server.max_body_bytes)
        matched = verify_for(provider, headers, body, repos)
        # verified: a provider whose id is in the body (Azure DevOps) reads it only now
        delivery_id = environ["receiver.delivery_id"] = provider.delivery_id(headers, body)
        pull_request = provider.pull_request(headers, body)
        if pull_request is not None:
            return pull_request_delivery(provider_name, pull_request, matched, delivery_id)
        events = provider.parse(headers, body)
        repo = config.repository(provider_name, events[0].repository)
        environ["receiver.repository"] = events[0].repository
        if repo is None:
            raise NotFound("repository not configured")
        # the payload names the repository only after verification: its own secrets must be
        # the ones that verified (checked again only when another repository's matched)
        if not any(secret is matched for secret in repo.webhook_secrets):
            matched = verify_for(provider, headers, body, (repo,))
        verified_by = matched.ref
        relevant = tuple(e for e in events if e.after is not None and (
            (e.ref_type == "branch" and repo.watches_branch(e.ref_name))
            or (e.ref_type == "tag" and repo.tag_pipelines(e.ref_name))))
        if not relevant:
            raise Ignored(_ignored_reason(events[0].ref_type, events[0].after is None))
        delivery = Delivery(delivery_id=delivery_id, provider=provider_name,
                            repository=repo.name, events=relevant, verified_by=verified_by)
        environ["receiver.repository"] = repo.name  # the configured spelling, as the worker logs it
        return record(delivery, refs=[f"{e.ref_type}:{e.ref_name}" for e in relevant],
                      head=relevant[0].after)

    def record(delivery: Delivery, **fields: Any) -> tuple[Response, int]:
        """Record a verified delivery and answer: 202 ``accepted`` (the worker is woken),
        200 ``duplicate`` when its id was recorded before, 503 when the store cannot."""
        try:
            recorded = store.record_delivery(delivery, time.time())
        except StateError as exc:
            raise ServiceUnavailable("the delivery could not be recorded; retry later",
                                     cause=str(exc)) from None
        if not recorded:
            canonical(log.info, "webhook.duplicate", 200, **_request_fields())
            return answer(200, status="duplicate", delivery_id=delivery.delivery_id)
        worker.notify()
        canonical(log.info, "webhook.accepted", 202, verified_by=delivery.verified_by,
                  **fields, **_request_fields())
        return answer(202, status="accepted", delivery_id=delivery.delivery_id)

    def pull_request_delivery(provider_name: str, pr: PullRequestEvent, matched: SecretRef,
                              delivery_id: str) -> tuple[Response, int]:
        """A verified pull request event: recorded for validation when its repository has
        ``pull_requests`` and its target branch is one of their targets."""
        environ = request.environ
        environ["receiver.repository"] = pr.repository
        repo = config.repository(provider_name, pr.repository)
        if repo is None:
            raise NotFound("repository not configured")
        if not any(secret is matched for secret in repo.webhook_secrets):
            matched = verify_for(providers[provider_name], request_headers(), request_body(),
                                 (repo,))
        environ["receiver.repository"] = repo.name
        reason = admission(store, repo, pr)
        if reason is not None:
            raise Ignored(reason)
        delivery = Delivery(delivery_id=delivery_id, provider=provider_name,
                            repository=repo.name, events=(),
                            pull_request=dataclasses.replace(pr, repository=repo.name),
                            verified_by=matched.ref)
        return record(delivery, refs=[f"pull_request:{pr.number}"], head=pr.head,
                      action=pr.action)

    @app.post("/events/codepipeline")
    def codepipeline_event() -> tuple[Response, int]:
        """EventBridge's pipeline-execution state changes, through an API destination."""
        keys = config.outcomes.api_keys
        if not keys:
            raise NotFound("execution events are not configured (outcomes.api_keys)")
        if request.mimetype != "application/json":
            raise UnsupportedMediaType("content type must be application/json")
        # the key before the body: a request without the right one is never waited for
        given = request.headers.get("x-api-key", "")
        if not given:
            raise Unauthorized("missing x-api-key")
        # every key compared, so timing does not tell which one is close
        matches = [constant_time_equal(given, value) for ref in keys for value in ref.values()]
        if not any(matches):
            raise Unauthorized("x-api-key does not match")
        body = _read_body(config.server.max_body_bytes)
        seen = parse_event(load_json_object(body))
        try:
            result = recorder.observe(seen, time.time())
        except StateError as exc:
            raise ServiceUnavailable("the outcome could not be recorded; retry later",
                                     cause=str(exc)) from None
        fields = {"pipeline": seen.pipeline, "execution_id": seen.execution_id,
                  "state": seen.status, "attempt": seen.attempt}
        if result != "accepted":
            reason = ("an execution this service did not start" if result == "unknown"
                      else "a replay, or older than what is recorded")
            canonical(log.info, "outcome.ignored", 200, reason=reason, **fields)
            return answer(200, status="ignored", reason=reason)
        canonical(log.info, "outcome.accepted", 202, **fields)
        return answer(202, status="accepted")

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError) -> tuple[Response, int]:
        # a 5xx is ours, not the client's: at error level, with what failed
        cause = {"error": exc.cause} if isinstance(exc, ServiceUnavailable) else {}
        canonical(log.error if exc.status >= 500 else log.info, _event("rejected"),
                  exc.status, reason=exc.code, detail=exc.message, **cause,
                  **_request_fields())
        return answer(exc.status, error=exc.code, message=exc.message)

    @app.errorhandler(Ignored)
    def ignored(exc: Ignored) -> tuple[Response, int]:
        canonical(log.info, _event("ignored"), 200, reason=exc.reason, **_request_fields())
        return answer(200, status="ignored", reason=exc.reason)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "error")
        if request.path.startswith(("/webhooks/", "/events/")):
            canonical(log.info, _event("rejected"), status, reason=code, **_request_fields())
        return answer(status, error=code, message=exc.description or code)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("request.error", error=type(exc).__name__, **_request_fields())
        return answer(500, error="internal", message="internal error")

    return app


def _background(config: Config, store: StateStore, launcher: Launcher,
                providers: Mapping[str, Provider]) -> tuple[Runtime, Worker, OutcomeRecorder]:
    """The process's background work, wired: the executor publishes to the listeners
    (commit statuses as tasks for the sender), and every runnable joins one runtime."""
    log = get_logger()
    bus = Bus()
    # pull requests' summary statuses (receiver/validation.py)
    summaries = Summaries(config, store, providers, aws_region(config.launcher.region))
    processor = Processor(config, store, launcher, providers, bus=bus, summaries=summaries)
    worker = Worker(processor, store, config.processing, warm_up=launcher.warm)
    sender = Sender(store, {KIND: StatusHandler(config, store, providers),
                           NOTIFY: NotifyHandler(config),
                           VALIDATION_KIND: SummaryHandler(summaries)}, worker.owner)
    summaries.wake = sender.notify
    StatusListener(store, aws_region(config.launcher.region), providers,
                   wake=sender.notify).subscribe(bus)
    NotifyListener(config, store, providers, aws_region(config.launcher.region),
                   wake=sender.notify).subscribe(bus)
    summaries.subscribe(bus)
    recorder = processor.outcomes
    runtime = Runtime()
    runtime.add(worker)
    runtime.add(sender)

    def poll(now: float) -> None:
        asked = poll_outcomes(recorder, launcher, config.outcomes.poll_seconds, now)
        summaries.heal(now)
        if asked:
            log.info("outcome.polled", executions=asked, owner=worker.owner)

    if not launcher.dry_run:  # a dry-run start is Succeeded at once: nothing to poll
        runtime.add(LeasedLoop("outcomes-poll", config.outcomes.poll_seconds, store,
                               worker.owner, poll))
    reconciler = Reconciler(config, store, providers, worker.notify, worker.owner)
    if reconciler.interval is not None:
        runtime.add(LeasedLoop("reconcile", reconciler.interval, store, worker.owner,
                               reconciler.run))

    def backlog(now: float) -> None:  # the metrics of a queue that stalls or floods
        waiting = store.backlog(now)
        log.info("backlog.measured", pending_deliveries=waiting.deliveries,
                 oldest_pending_seconds=round(now - (waiting.oldest_delivery or now), 1),
                 pending_tasks=waiting.tasks,
                 overdue_task_seconds=round(max(0.0, now - (waiting.oldest_task or now)), 1))

    runtime.add(LeasedLoop("backlog", BACKLOG_SECONDS, store, worker.owner, backlog))
    return runtime, worker, recorder


def request_headers() -> dict[str, str]:
    """This request's headers, names lower-cased (what providers read)."""
    return {k.lower(): v for k, v in request.headers.items()}


def request_body() -> bytes:
    """This webhook request's body, as read once by the route."""
    body: bytes = request.environ["receiver.body"]
    return body


def canonical(method: Callable[..., Any], event: str, status: int, **fields: Any) -> None:
    """The one line a webhook request gets: its ``webhook.*`` event with the HTTP ``status``,
    the time the app took so far (``duration_ms``) and the client (``remote``).

    The request is marked as logged, so the access logger keeps its own line for it at
    debug level (receiver/gunicorn_ext.py): one line per delivery, not two, saying more.
    """
    env = request.environ
    duration_ms = round((time.perf_counter() - env["receiver.started"]) * 1000, 2)
    method(event, status=status, remote=client_address(env), duration_ms=duration_ms, **fields)
    env["receiver.logged"] = True


def _read_body(limit: int) -> bytes:
    """The request body, read by werkzeug within MAX_CONTENT_LENGTH (``limit`` bytes).

    413 for a body over ``limit`` (before reading it when its Content-Length says so);
    400 for a body shorter than its Content-Length, a client gone mid-body, or malformed
    chunked framing.
    """
    try:
        body = request.get_data(cache=False)
        # werkzeug ends a body without Content-Length at the limit without saying so: one
        # more byte from the server's stream tells a body over the limit from one at it
        if len(body) == limit and request.environ["wsgi.input"].read(1):
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    except (HTTPException, RequestError):
        raise  # ours, and werkzeug's 413 (Content-Length over the limit) and 400 (client gone)
    except Exception:
        # the server's framing errors (bad chunk size, missing terminator) surface here as
        # its own exception types: the client's malformed request
        raise BadRequest("the request body could not be read (malformed framing)") from None
    # under a server that ends the stream itself (gunicorn), werkzeug limits the read to
    # MAX_CONTENT_LENGTH only, not to the Content-Length, and returns a short body as read
    if request.content_length is not None and len(body) != request.content_length:
        raise BadRequest("the request body ended before its Content-Length")
    return body


def _event(outcome: str) -> str:
    """The log event of a request's outcome: ``webhook.*``, or ``outcome.*`` for the
    execution-event route."""
    return f"{'outcome' if request.path.startswith('/events/') else 'webhook'}.{outcome}"


def _request_fields() -> dict[str, Any]:
    """The delivery fields of this request's log lines, as far as they are known."""
    env = request.environ
    return {"delivery_id": env.get("receiver.delivery_id"),
            "provider": env.get("receiver.provider"),
            "repository": env.get("receiver.repository")}


def _ignored_reason(ref_type: str, deleted: bool) -> str:
    if deleted:
        return f"{ref_type} deleted: nothing to start"
    if ref_type == "tag":
        return "tag push and no pipeline has a matching tags rule"
    return "branch not watched"

"""gunicorn settings for ECS Fargate behind an ALB (used by ``serve`` and the container).

Use as ``gunicorn -c python:receiver.gunicorn_conf receiver.wsgi:app``; ``webhook-receiver
serve`` loads the same settings and overrides only ``bind`` and ``workers``.
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("RECEIVER_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread whose event loop receives each request whole (within server.read_timeout_seconds)
# before a thread runs it, so slow clients hold no thread; it spreads connections over the
# workers and keeps bad framing a 4xx (receiver/gunicorn_ext.py, docs/security.md)
worker_class = "receiver.gunicorn_ext.ThreadWorker"
# threads run whole requests only; the background processor has its own thread per worker
threads = int(os.environ.get("RECEIVER_THREADS", "4"))
# connections one worker holds at once (being received, in a thread, or idle between
# requests); more wait in the listen backlog. Each may hold 64 KiB of request bytes, and
# beyond that a worker holds threads x server.max_body_bytes: together they bound the
# memory a worker spends on requests (gunicorn's default, 1000, would allow 4x as much)
worker_connections = 256
# the heartbeat file lives in memory: the root filesystem may be read-only
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn >= 25.1 otherwise creates a gunicornc control socket under $HOME/.gunicorn: on a
# read-only root filesystem that fails with an ERROR line at every start, and nothing here
# uses it (ECS stops the service with SIGTERM); older gunicorn ignores the unknown name
control_socket_disable = True
timeout = 30
# above the ALB's 60 s idle timeout, so the ALB never reuses a connection gunicorn closed
keepalive = 75
# below ECS's stopTimeout (see ecs-task.json): workers finish in-flight requests first
graceful_timeout = 25
# deliberate limits on what a client may send before the app sees it: a longer request
# line is answered 414, more or longer header fields 431 (tests/test_hostile_input.py)
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# no client-supplied SCRIPT_NAME/PATH_INFO headers, even from an address gunicorn trusts as
# a proxy (127.0.0.1 by default): a SCRIPT_NAME not prefixing the path is answered 500
forwarder_headers = ""
# the access log in the app's own JSON line format (event http.access), on stdout
accesslog = "-"
logger_class = "receiver.gunicorn_ext.AccessLogger"
errorlog = "-"
loglevel = "warning"


def worker_exit(server: object, worker: object) -> None:
    """A worker is leaving (SIGTERM, restart): stop its background runtime within what is
    left of graceful_timeout (receiver/runtime.py): no new claims, the delivery and the
    status write in hand finish, pending tasks stay in the store, leases are released; an
    unfinished delivery keeps its lease and is claimed again once it expires."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", None) or {}
    receiver = extensions.get("receiver")
    if receiver is not None:
        receiver["runtime"].stop(timeout=max(1.0, graceful_timeout - 5))


def when_ready(server: Any) -> None:
    """The master is listening: one ``service.started`` line per service start (workers,
    forked after this and again whenever one is replaced, write none).

    ``webhook-receiver serve`` hands its loaded configuration over as the application's
    ``receiver_config``; under a plain ``gunicorn -c`` it is loaded from RECEIVER_CONFIG."""
    from receiver import __version__
    from receiver.config import config_path, load
    from receiver.errors import ConfigError
    from receiver.logging import configure, get_logger

    cfg = getattr(server.app, "receiver_config", None)
    if cfg is None:
        try:
            cfg = load(config_path(None))
        except ConfigError:
            return  # another app under these settings (the benchmark's floor): nothing to say
    configure()
    get_logger().info(
        "service.started", bind=",".join(server.cfg.bind), config=cfg.source,
        state=cfg.state.backend, launcher=cfg.launcher.backend,
        repositories=len(cfg.repositories),
        pipelines=sum(len(r.pipelines) for r in cfg.repositories),
        workers=server.cfg.workers, version=__version__)

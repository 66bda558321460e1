"""gunicorn settings for ECS Fargate behind an ALB (used by ``serve`` and the container).

Use as ``gunicorn -c python:receiver.gunicorn_conf receiver.wsgi:app``; ``webhook-receiver
serve`` loads the same settings and overrides only ``bind`` and ``workers``.
"""

from __future__ import annotations

import os

bind = os.environ.get("RECEIVER_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# threads: a slow client upload does not block the worker; the background processor has
# its own thread per worker
worker_class = "gthread"
threads = int(os.environ.get("RECEIVER_THREADS", "4"))
# the heartbeat file lives in memory: the root filesystem may be read-only
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
timeout = 30
# above the ALB's 60 s idle timeout, so the ALB never reuses a connection gunicorn closed
keepalive = 75
# below ECS's stopTimeout (see ecs-task.json): workers finish in-flight requests first
graceful_timeout = 25
# deliberate limits on what a client may send before the app sees it
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = None  # the app logs every webhook answer as JSON; no second, differently shaped log
errorlog = "-"
loglevel = "warning"

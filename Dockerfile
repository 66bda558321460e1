# syntax=docker/dockerfile:1
# webhook-receiver for ECS Fargate behind an ALB (ecs-task.json is the matching task definition).
#
#   docker build -t webhook-receiver .                                  # bakes config/production.yaml
#   docker build --build-arg CONFIG=path/to/yours.yaml -t webhook-receiver .
#
# The same image runs the one-off commands by overriding CMD (ECS `command`), e.g.
# ["state", "init"], ["check-config"], ["state"], ["history", "--commit", "<sha>"].
#
# The base, pinned by digest so a rebuild gets the same bytes (the tag beside it is for the
# reader; with a digest Docker ignores it). Both stages start from this one stage, because the
# venv's python is a symlink into the base. The digest is the multi-platform index of
# python:3.11-slim-bookworm (Python 3.11.16, Debian bookworm of 18 Sep 2026) as Docker's
# official-images record docker-library/repo-info lists it in
# repos/python/remote/3.11-slim-bookworm.md (commit 40cdaf34215d6a292f2c62798b194d67d4b1ad55).
# To update: `docker buildx imagetools inspect python:3.11-slim-bookworm` prints the tag's
# current digest (or read that file again); replace it below, rebuild and run the tests
# (docs/deploy.md, "Updating the base image and the dependencies").
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS base

FROM base AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# only what the install needs: a change to tests or docs does not rebuild the layers
COPY requirements.lock ./
# every runtime dependency at the version and with the hashes of requirements.lock (pip refuses
# a file whose hash differs, and any dependency the lock does not pin); the lock also pins the
# build backend (setuptools), so nothing unpinned is fetched. Every dependency ships manylinux
# wheels for 3.11; if one ever needs a compiler, install it here (apt-get install
# build-essential): this stage is thrown away.
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY receiver/ receiver/
COPY providers/ providers/
# the project itself, without resolving anything again (--no-deps, --no-index) and built with
# the locked setuptools; `pip check` fails the build if the lock lacks one of its dependencies.
# pip compiles the .pyc files now, since the read-only container never can (and need not try:
# see below)
RUN /opt/venv/bin/pip install --no-deps --no-index --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

FROM base
# where the configuration comes from (a build argument, so one Dockerfile serves any deployment)
ARG CONFIG=config/production.yaml
# git runs at request time for repositories with `diff: git` (receiver/gitdiff.py: HTTPS fetches
# into blobless mirrors under git.cache_dir, which must be on the writable /tmp volume);
# no recommends: no ssh client, no pager, only what HTTPS git needs
RUN apt-get update \
 && apt-get install --yes --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
# numeric ids, so ECS `user` and a Kubernetes runAsUser can state them without a passwd lookup
RUN groupadd --system --gid 10001 receiver \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin receiver \
 && install -d -m 0555 -o root -g root /app \
 && chmod 1777 /tmp
COPY --from=builder /opt/venv /opt/venv
# root-owned and read-only to the service: it cannot change its own configuration
COPY --chmod=0444 ${CONFIG} /etc/webhook-receiver/config.yaml
# nothing is written under the root filesystem (ECS readonlyRootFilesystem): no .pyc files,
# gunicorn's heartbeat files in /dev/shm (receiver/gunicorn_conf.py), no SQLite (the config's
# state backend is DynamoDB); logs go to stdout unbuffered, so awslogs gets each line at once
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECEIVER_CONFIG=/etc/webhook-receiver/config.yaml \
    RECEIVER_BIND=0.0.0.0:8080
WORKDIR /app
# Fargate bind-mounts the task's scratch volume here (ecs-task.json mountPoints); for a path
# declared as VOLUME, ECS copies the image's directory, so the mount keeps /tmp's 1777 mode
# instead of the default root 0755 that the non-root user could not write
VOLUME ["/tmp"]
USER 10001:10001
EXPOSE 8080
# Docker's own check (docker run, compose); ECS runs the same command from ecs-task.json.
# Python's urllib, no curl in the image; the port follows RECEIVER_BIND.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('RECEIVER_BIND', '0.0.0.0:8080').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
# exec form: the gunicorn arbiter is PID 1 and receives ECS's SIGTERM itself.
# `serve` rather than plain `gunicorn -c python:receiver.gunicorn_conf receiver.wsgi:app`:
# it validates the configuration once, in the master, before forking (a missing secret
# exits 2 with every problem listed, instead of each worker failing to boot), it loads the
# same gunicorn settings module, and ENTRYPOINT + CMD lets a one-off task run any subcommand.
ENTRYPOINT ["webhook-receiver"]
CMD ["serve"]

"""The read-only status page under ``/ui/`` (``ui`` in the configuration; docs/ui.md).

:func:`check` is what ``serve`` verifies before it starts (exit 2 otherwise);
:func:`register` adds the pages to the app (nothing when ``ui`` is absent, so ``/ui/``
answers 404).
"""

from __future__ import annotations

import ipaddress

from flask import Flask

from receiver.config import Config
from receiver.errors import ConfigError, SecretError
from receiver.state.base import StateStore
from receiver.ui.auth import AlbOidc, Authenticator, Basic, LoopbackOnly


def check(config: Config, bind: str) -> None:
    """Refuse, at start-up, what would expose the page: ``auth: none`` on a bind that is
    not a loopback address, and a ``ui.basic.users`` value that is not ``user:password``.
    Raises ConfigError naming the key."""
    ui = config.ui
    if ui is None:
        return
    problems = []
    if ui.auth == "none" and not loopback(bind):
        problems.append(f"ui.auth: none is allowed only when the service listens on a loopback "
                        f"address (--bind 127.0.0.1:PORT), not {bind}; use alb-oidc or basic")
    for i, ref in enumerate(ui.basic.users if ui.basic else ()):
        try:
            values = ref.values()
        except SecretError as exc:
            problems.append(f"ui.basic.users[{i}]: {exc}")
            continue
        if any(not user or not password for user, _, password in
               (value.partition(":") for value in values)):
            problems.append(f"ui.basic.users[{i}]: {ref.ref}: must hold user:password (a "
                            "user name, a colon, a password)")
    if problems:
        raise ConfigError(problems)


def loopback(bind: str) -> bool:
    """Whether ``bind`` (gunicorn's ``HOST:PORT``, ``[v6]:PORT``, ``unix:PATH``) listens on a
    loopback address only."""
    if bind.startswith("unix:"):
        return False  # a socket file: a proxy in front may serve it to anyone
    host = bind
    if bind.startswith("["):  # [::1]:8080
        host = bind[1:bind.find("]")]
    elif bind.count(":") == 1:  # 127.0.0.1:8080 (a bare IPv6 address has more colons)
        host = bind.partition(":")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def authenticator(config: Config) -> Authenticator:
    """The ``ui.auth`` mode's authenticator (``ui`` must be configured)."""
    ui = config.ui
    assert ui is not None
    if ui.auth == "alb-oidc":
        assert ui.alb_arn is not None  # the configuration requires it
        return AlbOidc(ui.alb_arn, ui.public_key_url)
    if ui.auth == "basic":
        assert ui.basic is not None
        return Basic(ui.basic.users)
    return LoopbackOnly()


def register(app: Flask, config: Config, store: StateStore) -> None:
    """Serve the pages under ``/ui/`` when ``ui`` is configured."""
    if config.ui is None:
        return
    from receiver.ui.views import blueprint

    app.register_blueprint(blueprint(config, store, authenticator(config)))

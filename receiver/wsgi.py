"""WSGI entry for a plain ``gunicorn receiver.wsgi:app``; the config comes from RECEIVER_CONFIG."""

from __future__ import annotations

from receiver.app import create_app
from receiver.config import config_path, load

app = create_app(load(config_path(None)))

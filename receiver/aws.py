"""boto3 clients for the service, made one at a time.

boto3's default session is not safe to make clients from in two threads at once (its
botocore session loads the credential chain and the endpoint data on first use), and the
launcher's client is made in the background at start-up (``Launcher.warm``) while a request
thread may be making the state store's.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()


def client(service: str, **kwargs: Any) -> Any:
    """``boto3.client(service, **kwargs)``, serialized with every other call here."""
    import boto3  # imported on first use: the log launcher and SQLite state never need it

    with _lock:
        return boto3.client(service, **kwargs)

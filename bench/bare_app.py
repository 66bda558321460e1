"""The floor for this stack: Flask under the same gunicorn settings, HMAC check and JSON parse only.

``gunicorn -c python:receiver.gunicorn_conf --pythonpath bench bare_app:app`` with the secret
in BENCH_WEBHOOK_SECRET. No state, no logging by the app (gunicorn's own access line, as
configured, is written for each request), no background work: whatever the service spends
beyond this is its own. It parses with Python's json module, as a bare app would (the
service uses orjson, 7 µs instead of 18 µs for this push).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from flask import Flask, Response, jsonify, request

SECRET = os.environ["BENCH_WEBHOOK_SECRET"].encode()

app = Flask("bare")


@app.post("/webhooks/github")
def webhook() -> tuple[Response, int]:
    """202 for a body whose X-Hub-Signature-256 verifies and that parses as JSON."""
    body = request.get_data(cache=False)
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-Hub-Signature-256", "")):
        return jsonify(error="unauthorized"), 401
    try:
        doc = json.loads(body)
    except ValueError:
        return jsonify(error="bad_request"), 400
    return jsonify(status="accepted", delivery_id=request.headers.get("X-GitHub-Delivery"),
                   ref=doc.get("ref")), 202

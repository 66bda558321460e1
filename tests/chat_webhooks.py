"""Stand-ins for the chat webhooks notifications go to, and the shape checks they answer by.

The checks hold a body against what each target publishes (tests/fixtures/notifications/,
origins in tests/fixtures/README.md): Slack's Block Kit through Slack's own SDK models,
Microsoft's Adaptive Card webhook envelope and the Adaptive Cards 1.2 JSON Schema, and a
transcription of Amazon Q Developer's custom-notification event schema.

:class:`ChatWebhook` listens on 127.0.0.1 and answers a POST as the real one documents: a
Slack incoming webhook ``200`` ``ok``, or ``400`` ``invalid_payload`` for a body Block Kit
refuses; a Teams Workflows trigger ``202``, or ``400`` for a body that is not an Adaptive
Card message. ``answers`` can script the first answers (a ``500`` to see a retry).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from tests.harness import fixture_bytes

SLACK_SAMPLE = json.loads(fixture_bytes("notifications/zulip-slack_incoming-blocks.json"))
TEAMS_SAMPLE = json.loads(fixture_bytes("notifications/msteams-docs-adaptive-card-webhook.json"))
CARD_SCHEMA = jsonschema.Draft6Validator(
    json.loads(fixture_bytes("notifications/adaptivecards-schema-1.2.0.json")))
Q_SCHEMA = jsonschema.Draft7Validator(
    json.loads(fixture_bytes("notifications/amazon-q-custom-notification.schema.json")))


def slack_problems(payload: Any) -> list[str]:
    """What Slack's SDK models refuse in an incoming-webhook body (empty: none)."""
    if not isinstance(payload, dict):
        return ["not a JSON object"]
    problems = [f"unknown key {k}" for k in payload if k not in ("text", "blocks")]
    for block in payload.get("blocks", []):
        try:  # to_dict() validates too (lengths, counts)
            parsed = Block.parse(block)
            if parsed is None or parsed.to_dict() != block:
                problems.append(f"not a Block Kit block: {block}")
        except SlackObjectFormationError as exc:
            problems.append(str(exc))
    return problems


def teams_problems(payload: Any) -> list[str]:
    """How ``payload`` differs from Microsoft's webhook envelope, or its card from the
    Adaptive Cards 1.2 schema (empty: none)."""
    if not isinstance(payload, dict):
        return ["not a JSON object"]
    problems = [] if payload.keys() == TEAMS_SAMPLE.keys() and payload["type"] == "message" \
        else ["not a message envelope"]
    for attachment in payload.get("attachments", []):
        if {k: v for k, v in attachment.items() if k != "content"} != \
                {k: v for k, v in TEAMS_SAMPLE["attachments"][0].items() if k != "content"}:
            problems.append("not an adaptive card attachment")
        problems += [e.message for e in CARD_SCHEMA.iter_errors(attachment.get("content"))]
        if attachment.get("content", {}).get("version") != "1.2":
            problems.append("not a 1.2 card")
    return problems


def q_problems(message: Any) -> list[str]:
    """How ``message`` breaks Amazon Q Developer's custom-notification schema."""
    return [e.message for e in Q_SCHEMA.iter_errors(message)]


@dataclass(frozen=True)
class Received:
    """One POST a stand-in got: when (monotonic seconds), its path and its JSON body."""

    at: float
    path: str
    body: Any


class ChatWebhook:
    """A Slack incoming webhook (``kind`` slack) or Teams Workflows trigger (teams)."""

    def __init__(self, kind: str, answers: list[tuple[int, bytes]] | None = None,
                 delay: float = 0.0) -> None:
        self.kind = kind
        self.answers = list(answers or [])
        self.delay = delay
        self.received: list[Received] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with hook.lock:
                    hook.received.append(Received(time.monotonic(), self.path, body))
                    scripted = hook.answers.pop(0) if hook.answers else None
                status, text = scripted or hook.answer(body)
                time.sleep(hook.delay)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "https://elsewhere.example/")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # the path shapes the real URLs have; the last part is what makes them secret
        secret = ("B0123456789/SECRET1slackTOKENpart0123456" if kind == "slack"
                  else "SECRET2teamsWORKFLOWsig0123456789abcdef")
        self.secret = secret.rsplit("/", 1)[-1]
        path = (f"/services/T0123456789/{secret}" if kind == "slack" else
                f"/workflows/0123456789abcdef/triggers/manual/paths/invoke?sig={secret}")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: Any) -> tuple[int, bytes]:
        """What the real webhook answers ``body``."""
        if self.kind == "slack":
            return (200, b"ok") if not slack_problems(body) else (400, b"invalid_payload")
        return (202, b"") if not teams_problems(body) else (400, b"BadRequest")

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.body for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

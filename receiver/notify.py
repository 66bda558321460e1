"""Notifications: deployment messages that say why, to SNS, Slack and Microsoft Teams.

What CodePipeline's own notifications cannot say, this service knows: the commit, who
pushed it, and which rule or dependency brought each pipeline in (the decision record).

- :class:`NotifyListener` listens on the bus (receiver/effects.py) and, for every
  configured target whose ``events`` and ``repositories`` want it, keeps a
  :class:`~receiver.state.base.Task` of kind ``notify`` holding the neutral
  :class:`Message`. The task's key is the (target, event) pair, so a retried delivery, a
  replayed execution event, a heal, a restart or a second replica enqueues the same task,
  sent once.
- :class:`NotifyHandler` performs it when the sender (receiver/sender.py) comes to it:
  rendered for the target (:func:`slack_payload`, :func:`teams_payload`,
  :func:`sns_message`), each payload-derived string escaped for the target's markup.

Events: ``push`` (a processed push that started something), ``succeeded`` / ``failed`` /
``stopped`` (an execution's outcome; ``Cancelled`` counts as stopped, ``Superseded`` is not
told: the later start carries the change), ``missed`` (the reconciler caught a push up)
and ``invalid_map`` (the repository-side module map at a commit is invalid).

At most once: a request that may have been delivered (no answer within the read time-out,
a connection lost after sending) is not tried again; one that surely was not (no
connection, a 5xx or 429 answer) is, with the sender's back-off. A target that refuses for
good (4xx, a redirect) ends the task. Secrets: a webhook URL is read when sending and
appears in no task, message or log line (errors name the secret *reference*).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import requests
import urllib3

from providers.base import Provider, printable
from receiver import aws
from receiver.config import Config, NotifyEvent, RepositoryConfig, webhook_url_problem
from receiver.effects import Bus, DeliveryProcessed, ExecutionChanged, MapInvalid
from receiver.errors import NotifyError, TerminalError
from receiver.state.base import DecisionRecord, Execution, PipelineDecision, StateStore, Task
from receiver.statuses import console_url

KIND = "notify"  # the tasks of notifications (receiver/sender.py)
SHORT = 12  # characters of a commit id shown
TEXT_MAX = 120  # characters kept of one payload-derived string (names, paths, problems)
LINES_MAX = 10  # pipelines (or problems) listed in one message; the rest are counted
MATCHES_SHOWN = 2  # matched paths shown per pipeline; the rest are counted
# the least seconds between two sends to one target: Slack allows about one message a
# second per incoming webhook; Microsoft documents 4 a second and 60 in 30 seconds per
# Teams webhook (the 30-second window is the binding one); SNS Publish allows thousands a
# second per account, so it is not paced
PACE = {"slack": 1.0, "teams": 0.5, "sns": 0.0}
TIMEOUT = (5.0, 10.0)  # (connect, read) seconds of one webhook request or SNS call
# CodePipeline's final statuses that are told, and as which event
OUTCOMES: dict[str, NotifyEvent] = {"Succeeded": "succeeded", "Failed": "failed",
                                    "Stopped": "stopped", "Cancelled": "stopped"}
_VERB = {"Succeeded": "succeeded", "Failed": "failed", "Stopped": "was stopped",
         "Cancelled": "was cancelled"}
# throttling error codes of AWS query APIs: a later try may pass
_THROTTLED = frozenset({"Throttling", "ThrottlingException", "ThrottledException",
                        "RequestThrottled", "TooManyRequestsException"})


# --- the neutral message -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Link:
    """A link: ``text`` (may come from a payload) to ``url`` (built by this service)."""

    text: str
    url: str


Part = str | Link  # one piece of a line: text, or a link
Line = tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """What one notification says, before any target's markup.

    Every string in it may come from a payload (branch, path and pusher names, map
    problems): the renderers escape them, and they are already printable and bounded
    (:func:`clean`). ``facts`` are labelled values; ``sections`` headed lists (the started
    pipelines and why); ``links`` the pages to open; ``context`` plain fields for log
    lines and SNS's ``additionalContext`` (repository, commit, pipeline).
    """

    event: NotifyEvent
    title: str
    facts: tuple[tuple[str, Line], ...] = ()
    sections: tuple[tuple[str, tuple[Line, ...]], ...] = ()
    links: tuple[Link, ...] = ()
    context: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The stored form (a task's payload): JSON types only."""
        return {"event": self.event, "title": self.title,
                "facts": [[label, _line_out(line)] for label, line in self.facts],
                "sections": [[head, [_line_out(line) for line in lines]]
                             for head, lines in self.sections],
                "links": [[link.text, link.url] for link in self.links],
                "context": dict(self.context)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Inverse of :meth:`to_dict`."""
        return cls(event=cast(NotifyEvent, data["event"]), title=str(data["title"]),
                   facts=tuple((str(label), _line_in(line)) for label, line in data["facts"]),
                   sections=tuple((str(head), tuple(_line_in(line) for line in lines))
                                  for head, lines in data["sections"]),
                   links=tuple(Link(str(t), str(u)) for t, u in data["links"]),
                   context=tuple((str(k), str(v)) for k, v in data["context"].items()))


def _line_out(line: Line) -> list[Any]:
    return [part if isinstance(part, str) else [part.text, part.url] for part in line]


def _line_in(raw: Sequence[Any]) -> Line:
    return tuple(part if isinstance(part, str) else Link(str(part[0]), str(part[1]))
                 for part in raw)


def clean(text: str, limit: int = TEXT_MAX) -> str:
    """``text`` with every character that is not printable (newlines, tabs, bidi controls)
    as ``?``, cut to ``limit`` characters with ``…``: payload text in a message."""
    return printable(text, limit) + ("…" if len(text) > limit else "")


def duration(seconds: float) -> str:
    """``1h 2m``, ``4m 12s``, ``12s``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _counted(lines: list[Line], total: int, what: str) -> tuple[Line, ...]:
    """The first LINES_MAX of ``lines``, and a line counting the others of ``total``."""
    shown = lines[:LINES_MAX]
    if total > len(shown):
        shown.append((f"… and {total - len(shown)} more {what}",))
    return tuple(shown)


def why(decision: PipelineDecision) -> Line:
    """Why a pipeline was started: the paths that selected it (``via`` the dependency whose
    paths they are), else the planner's reason (a new branch, an incomplete difference)."""
    parts: list[str] = []
    for entry in decision.matched[:MATCHES_SHOWN]:
        path = clean(entry[0])
        parts.append(f"via {clean(entry[2])}: {path}" if len(entry) > 2 else path)
    if parts:
        more = max(decision.matched_count, len(decision.matched)) - len(parts)
        return (", ".join(parts) + (f" (+{more} more)" if more > 0 else ""),)
    return (clean(decision.reason or decision.diff or "changed"),)


# --- building messages ---------------------------------------------------------------------

class Builder:
    """Builds each event's :class:`Message` (the links from the providers and the region)."""

    def __init__(self, providers: Mapping[str, Provider], region: str) -> None:
        self.providers = providers
        self.region = region

    def _commit(self, repo: RepositoryConfig, sha: str) -> Link:
        return Link(sha[:SHORT], self.providers[repo.provider].commit_url(repo, sha))

    def _started(self, record: DecisionRecord) -> tuple[tuple[str, tuple[Line, ...]], ...]:
        started = [p for p in record.pipelines if p.verdict == "started"]
        failed = [p for p in record.pipelines if p.verdict == "failed"]
        sections: list[tuple[str, tuple[Line, ...]]] = []
        if started:
            sections.append(("Started", _counted(
                [(f"{p.pipeline}: ", *why(p)) for p in started[:LINES_MAX]], len(started),
                "pipelines")))
        if failed:
            sections.append(("Failed to start", _counted(
                [(f"{p.pipeline}: {clean(p.error or 'start failed')}",)
                 for p in failed[:LINES_MAX]], len(failed), "pipelines")))
        return tuple(sections)

    def push(self, event: DeliveryProcessed) -> Message:
        """A processed push that started something: where, which commit, who, and each
        started pipeline with why."""
        record, repo = event.record, event.repo
        assert record.head is not None  # a processed push has a head
        started = sum(p.verdict == "started" for p in record.pipelines)
        unchanged = sum(p.verdict in ("unchanged", "contained") for p in record.pipelines)
        ref = clean(record.ref)
        return Message(
            event="push",
            title=f"{repo.name} {ref}: {started} pipeline{'s' * (started != 1)} started",
            facts=(("Repository", (f"{repo.name} ({repo.provider})",)),
                   ("Branch" if record.ref_type == "branch" else "Tag", (ref,)),
                   ("Commit", (self._commit(repo, record.head),)),
                   ("Pushed by", (clean(event.event.pusher or "unknown"),)),
                   ("Unchanged", (f"{unchanged} pipeline{'s' * (unchanged != 1)}",))),
            sections=self._started(record),
            links=(Link("Commit", self.providers[repo.provider].commit_url(repo, record.head)),),
            context=(("repository", repo.name), ("provider", repo.provider),
                     ("commit", record.head)))

    def missed(self, event: DeliveryProcessed) -> Message:
        """A push the reconciler caught up (no webhook brought it)."""
        record, repo = event.record, event.repo
        assert record.head is not None
        ref = clean(record.ref)
        previous: Line = (self._commit(repo, record.before),) if record.before else ("none",)
        return Message(
            event="missed",
            title=f"{repo.name} {ref}: a push no webhook brought was caught up",
            facts=(("Repository", (f"{repo.name} ({repo.provider})",)),
                   ("Branch", (ref,)),
                   ("Head", (self._commit(repo, record.head),)),
                   ("Previous head", previous)),
            sections=self._started(record),
            links=(Link("Commit", self.providers[repo.provider].commit_url(repo, record.head)),),
            context=(("repository", repo.name), ("provider", repo.provider),
                     ("commit", record.head)))

    def outcome(self, repo: RepositoryConfig, execution: Execution) -> Message:
        """An execution's outcome: pipeline, commit, how long, the console."""
        console = console_url(self.region, execution.pipeline, execution.execution_id)
        return Message(
            event=OUTCOMES[execution.status],
            title=f"{execution.pipeline} {_VERB[execution.status]}",
            facts=(("Pipeline", (execution.pipeline,)),
                   ("Status", (execution.status,)),
                   ("Repository", (f"{repo.name} ({repo.provider})",)),
                   ("Branch", (clean(execution.branch),)),
                   ("Commit", (self._commit(repo, execution.commit),)),
                   ("Duration", (duration(execution.updated_at - execution.started_at),)),
                   ("Execution", (Link(execution.execution_id, console),))),
            links=(Link("Execution", console),
                   Link("Commit", self.providers[repo.provider].commit_url(
                       repo, execution.commit))),
            context=(("repository", repo.name), ("provider", repo.provider),
                     ("commit", execution.commit), ("pipeline", execution.pipeline),
                     ("execution_id", execution.execution_id)))

    def map_invalid(self, event: MapInvalid) -> Message:
        """The module map at a commit is invalid: its first problems, and what was kept."""
        repo = event.repo
        provider = self.providers[repo.provider]
        kept: Line = ((self._commit(repo, event.kept),) if event.kept
                      else ("none: the configured pipelines alone",))
        return Message(
            event="invalid_map",
            title=f"{repo.name}: the module map {clean(event.path)} is invalid",
            facts=(("Repository", (f"{repo.name} ({repo.provider})",)),
                   ("Commit", (self._commit(repo, event.commit),)),
                   ("File", (Link(clean(event.path),
                                  provider.file_url(repo, event.path, event.commit)),)),
                   ("Map kept from", kept)),
            sections=(("Problems", _counted([(clean(p),) for p in event.problems[:LINES_MAX]],
                                            len(event.problems), "problems")),),
            links=(Link("File", provider.file_url(repo, event.path, event.commit)),),
            context=(("repository", repo.name), ("provider", repo.provider),
                     ("commit", event.commit)))


# --- rendering: one function per target -----------------------------------------------------

def slack_escape(text: str) -> str:
    """Slack's mrkdwn escaping: ``&``, ``<`` and ``>`` as entities (so a name like
    ``<!channel>`` shows as text and notifies no one)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_line(line: Line) -> str:
    # a link is <url|text>: the URL escaped like text, and '|' (which ends it) encoded
    return "".join(slack_escape(p) if isinstance(p, str) else
                   f"<{slack_escape(p.url).replace('|', '%7C')}|{slack_escape(p.text)}>"
                   for p in line)


SLACK_TEXT_MAX = 3000  # Block Kit: a section's text
SLACK_FIELD_MAX = 2000  # Block Kit: one field of a section
SLACK_FIELDS_MAX = 10  # Block Kit: fields of one section


def _fit(head: str, lines: list[str], limit: int) -> str:
    """``head`` and as many ``lines`` as fit in ``limit`` characters, then how many did
    not."""
    out = head
    for i, line in enumerate(lines):
        left = len(lines) - i - 1
        if len(out) + 1 + len(line) + (len(f"\n… and {left} more") if left else 0) > limit:
            return (out + f"\n… and {left + 1} more")[:limit]
        out += "\n" + line
    return out


def slack_payload(message: Message) -> dict[str, Any]:
    """Slack's incoming-webhook JSON: ``text`` (the notification's fallback) and Block Kit
    ``blocks`` in mrkdwn, every payload string escaped (:func:`slack_escape`)."""
    title = slack_escape(message.title)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"[:SLACK_TEXT_MAX]}}]
    fields = [{"type": "mrkdwn",
               "text": _fit(f"*{slack_escape(label)}*", [_slack_line(value)], SLACK_FIELD_MAX)}
              for label, value in message.facts[:SLACK_FIELDS_MAX]]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    for head, lines in message.sections:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _fit(
            f"*{slack_escape(head)}*", [f"• {_slack_line(line)}" for line in lines],
            SLACK_TEXT_MAX)}})
    return {"text": title, "blocks": blocks}


ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


def _runs(line: Line, **style: Any) -> list[dict[str, Any]]:
    # TextRun: "Markdown is not supported" (Adaptive Card schema): payload text stays text
    return [{"type": "TextRun", "text": p, **style} if isinstance(p, str) else
            {"type": "TextRun", "text": p.text, **style,
             "selectAction": {"type": "Action.OpenUrl", "url": p.url}} for p in line]


def teams_payload(message: Message) -> dict[str, Any]:
    """A Teams Workflows webhook's body: a ``message`` with one Adaptive Card (1.2)
    attachment. Every string is a ``TextRun`` of a ``RichTextBlock``, which renders no
    Markdown, so payload text cannot become a link, a mention or formatting."""
    body: list[dict[str, Any]] = [{"type": "RichTextBlock", "inlines": _runs(
        (message.title,), size="Large", weight="Bolder")}]
    for label, value in message.facts:
        body.append({"type": "RichTextBlock", "spacing": "None", "inlines": [
            *_runs((f"{label}: ",), weight="Bolder"), *_runs(value)]})
    for head, lines in message.sections:
        body.append({"type": "RichTextBlock", "inlines": _runs((head,), weight="Bolder")})
        body.extend({"type": "RichTextBlock", "spacing": "None",
                     "inlines": _runs(("• ", *line))} for line in lines)
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard", "version": "1.2", "body": body,
            "actions": [{"type": "Action.OpenUrl", "title": link.text, "url": link.url}
                        for link in message.links]}
    return {"type": "message", "attachments": [
        {"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}]}


# CommonMark lets any ASCII punctuation be backslash-escaped (it then means itself); these
# are the ones that can start markup inside a line: emphasis, code, links, autolinks, HTML
# and entities, tables. ('#', '-', '+' and digits matter only at a line's start, where
# payload text never stands: every line starts with a label or a bullet.)
_MARKDOWN_SPECIAL = frozenset("\\`*_~[]<>&|!")


def markdown_escape(text: str) -> str:
    """``text`` with CommonMark's inline markup characters backslash-escaped: payload text
    in Amazon Q Developer's ``client-markdown`` cannot form a link, emphasis, code, an
    autolink, HTML, an entity or a mention (``<!channel>``)."""
    return "".join(f"\\{ch}" if ch in _MARKDOWN_SPECIAL else ch for ch in text)


def _markdown_line(line: Line) -> str:
    return "".join(markdown_escape(p) if isinstance(p, str) else
                   f"[{markdown_escape(p.text)}]({p.url})" for p in line)


def _plain_line(line: Line) -> str:
    return "".join(p if isinstance(p, str) else f"{p.text} <{p.url}>" for p in line)


def plain_text(message: Message) -> str:
    """The message as plain text (an SNS topic's email subscribers)."""
    out = [message.title, ""]
    out += [f"{label}: {_plain_line(value)}" for label, value in message.facts]
    for head, lines in message.sections:
        out += ["", f"{head}:", *(f"- {_plain_line(line)}" for line in lines)]
    return "\n".join(out) + "\n"


def sns_message(message: Message, event_id: str) -> dict[str, Any]:
    """Amazon Q Developer's custom-notification JSON (version 1.0, source custom,
    ``client-markdown``): Slack, Teams and Chime channels subscribed to the topic through
    Q Developer render it; payload text is backslash-escaped (:func:`markdown_escape`)."""
    context = dict(message.context)
    keywords = [message.event, context.get("repository", "")]
    if "pipeline" in context:
        keywords.append(context["pipeline"])
    thread = hashlib.sha256(f"{context.get('repository')}\0{context.get('commit')}"
                            .encode()).hexdigest()[:32]
    description = [f"*{markdown_escape(label)}:* {_markdown_line(value)}"
                   for label, value in message.facts]
    for head, lines in message.sections:
        description += ["", f"*{markdown_escape(head)}:*",
                        *(f"• {_markdown_line(line)}" for line in lines)]
    return {
        "version": "1.0", "source": "custom", "id": event_id,
        "content": {"textType": "client-markdown", "title": markdown_escape(message.title),
                    "description": "\n".join(description),
                    "nextSteps": [f"[Open the {markdown_escape(link.text.lower())}]({link.url})"
                                  for link in message.links],
                    "keywords": [k for k in keywords if k]},
        "metadata": {"threadId": f"webhook-receiver-{thread}", "summary": message.title,
                     "eventType": message.event,
                     "relatedResources": [link.url for link in message.links],
                     "additionalContext": context},
    }


# --- listening: what happened becomes tasks --------------------------------------------------

def task_key(target: str, event: str, *identity: str) -> str:
    """The key of the one task of (``target``, the event ``identity`` names)."""
    return hashlib.sha256("\0".join((target, event, *identity)).encode()).hexdigest()


class NotifyListener:
    """Turns processed pushes, execution outcomes and invalid module maps into ``notify``
    tasks, one per configured target that wants them. Quick: one message is built and one
    task per target enqueued; nothing is sent here."""

    def __init__(self, config: Config, store: StateStore, providers: Mapping[str, Provider],
                 region: str, clock: Callable[[], float] = time.time,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self.build = Builder(providers, region)
        self.clock = clock
        self.wake = wake  # the sender: look now

    def subscribe(self, bus: Bus) -> None:
        """Listen to the events a notification may tell of (none without targets)."""
        if not self.config.notifications:
            return
        bus.subscribe(DeliveryProcessed, "notifications", self.processed)
        bus.subscribe(ExecutionChanged, "notifications", self.changed)
        bus.subscribe(MapInvalid, "notifications", self.map_invalid)

    def processed(self, event: DeliveryProcessed) -> None:
        """``missed`` for a push the reconciler found; ``push`` once a push started
        something and no pipeline waits for the delivery's next attempt."""
        record, repo = event.record, event.repo
        if record.failure is not None or record.head is None:
            return
        identity = (repo.key, record.push_key, record.head)
        if event.missed:
            self._enqueue(repo, "missed", identity, lambda: self.build.missed(event))
        final = event.delivery.attempts >= self.config.processing.max_attempts
        verdicts = {p.verdict for p in record.pipelines}
        if "started" in verdicts and (final or "retry" not in verdicts):
            self._enqueue(repo, "push", identity, lambda: self.build.push(event))

    def changed(self, event: ExecutionChanged) -> None:
        """``succeeded``, ``failed`` or ``stopped`` for an execution's final status, once
        per attempt (a console retry that fails again is told again)."""
        x = event.execution
        told = OUTCOMES.get(x.status)
        if told is None:
            return
        # sent after the push message that told of its start, where one waits: the
        # execution keeps its ref's name only, so the branch's and the tag's are named
        announced = [] if x.pull_request is not None else [
            (x.repository, f"{ref_type}:{x.branch}", x.commit) for ref_type in ("branch", "tag")]
        self._enqueue(event.repo, told, (x.pipeline, x.execution_id, str(x.attempt), x.status),
                      lambda: self.build.outcome(event.repo, x), after_push=announced)

    def map_invalid(self, event: MapInvalid) -> None:
        """``invalid_map`` once per (repository, commit, file)."""
        self._enqueue(event.repo, "invalid_map", (event.repo.key, event.commit, event.path),
                      lambda: self.build.map_invalid(event))

    def _enqueue(self, repo: RepositoryConfig, event: NotifyEvent, identity: Sequence[str],
                 message: Callable[[], Message],
                 after_push: Sequence[Sequence[str]] = ()) -> None:
        """One task per target that wants ``event``; ``after_push``: the identities of the
        push messages it is sent after (``NotifyHandler.after``)."""
        targets = [t for t in self.config.notifications
                   if event in t.events and t.covers(repo.name)]
        if not targets:
            return
        payload = message().to_dict()
        now = self.clock()
        added = False
        for target in targets:
            key = task_key(target.target, event, *identity)
            after = [task_key(target.target, "push", *push) for push in after_push
                     if "push" in target.events]
            added |= self.store.enqueue_task(Task(
                key=key, kind=KIND, target=target.target, due_at=now, created_at=now,
                payload=json.dumps({"target": target.target, "message": payload,
                                    "after": after})))
        if added:
            self.wake()


# --- sending ------------------------------------------------------------------------------------

class NotifyHandler:
    """Sends one ``notify`` task to its target (the sender's Handler, receiver/sender.py)."""

    kind = KIND
    event = "notify"
    done = "sent"

    def __init__(self, config: Config, session: requests.Session | None = None,
                 sns_client: Callable[[str], Any] | None = None) -> None:
        self.targets = {t.target: t for t in config.notifications}
        self.session = session if session is not None else requests.Session()
        self._sns_client = sns_client or _sns_client
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def describe(self, task: Task) -> dict[str, Any]:
        """The target (its name: never a URL), the event and what it is about."""
        doc = json.loads(task.payload)
        context = doc["message"]["context"]
        return {"target": task.target, "notification": doc["message"]["event"],
                **{k: context[k] for k in ("repository", "commit", "pipeline") if k in context}}

    def pace(self, target: str) -> float:
        """PACE of the target's kind."""
        return PACE.get(target.partition(":")[0], 0.0)

    def after(self, task: Task) -> Sequence[str]:
        """An outcome's message comes after the push message that told of its start."""
        return [str(key) for key in json.loads(task.payload).get("after", [])]

    def send(self, task: Task) -> None:
        """Render the message for its target and send it. Raises NotifyError when a later
        try may succeed, TerminalError when none can (or when this one may have arrived)."""
        doc = json.loads(task.payload)
        entry = self.targets.get(doc["target"])
        if entry is None:
            raise TerminalError(f"{doc['target']} is no longer configured")
        message = Message.from_dict(doc["message"])
        if entry.sns is not None:
            self._publish(entry.sns, message, task.key)
            return
        secret = entry.slack if entry.slack is not None else entry.teams
        assert secret is not None
        url = secret.value()
        problem = webhook_url_problem(url)
        if problem:
            raise TerminalError(f"{secret.ref}: {problem}")
        body = slack_payload(message) if entry.kind == "slack" else teams_payload(message)
        self._post(url, body, entry.target)

    def _post(self, url: str, body: dict[str, Any], target: str) -> None:
        try:
            resp = self.session.post(url, json=body, timeout=TIMEOUT, allow_redirects=False)
        except requests.RequestException as exc:
            # the exception's text holds the URL: only its type is told
            if _never_sent(exc):
                raise NotifyError(f"{target}: could not connect ({type(exc).__name__})") \
                    from None
            raise TerminalError(f"{target}: no answer ({type(exc).__name__}); not sent "
                                "again, since it may have arrived") from None
        if 200 <= resp.status_code < 300:
            return
        said = printable(resp.text, 80) if resp.text else ""
        error = f"{target}: HTTP {resp.status_code}" + (f" {said}" if said else "")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise NotifyError(error)
        raise TerminalError(error)  # refused (4xx) or sent elsewhere (3xx): no retry helps

    def _publish(self, topic: str, message: Message, key: str) -> None:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        region = topic.split(":")[3]
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = self._sns_client(region)
        # per protocol: Q Developer's subscription (https) reads "default", email the text
        structured = {"default": json.dumps(sns_message(message, key)),
                      "email": plain_text(message)}
        try:
            client.publish(TopicArn=topic, MessageStructure="json",
                           Message=json.dumps(structured), Subject=_subject(message.title))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            error = f"sns:{topic}: {code or 'error'} (HTTP {status})"
            if code in _THROTTLED or status >= 500 or status == 429:
                raise NotifyError(error) from exc
            raise TerminalError(error) from exc
        except ReadTimeoutError as exc:
            raise TerminalError(f"sns:{topic}: no answer; not published again, since it may "
                                "have arrived") from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise NotifyError(f"sns:{topic}: could not connect") from exc
        except BotoCoreError as exc:  # e.g. no credentials yet: a later try may have them
            raise NotifyError(f"sns:{topic}: {type(exc).__name__}") from exc


def _subject(title: str) -> str:
    """An email subject SNS takes: under 100 characters, no line break or control."""
    return clean(title, 97)


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether the request surely did not reach the server: no connection (or no TLS
    session, or no way through the proxy) was made."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError
                  | requests.exceptions.ProxyError):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(
        reason, urllib3.exceptions.NewConnectionError)


def _sns_client(region: str) -> Any:
    """An SNS client for ``region``: boto3's endpoint settings apply
    (``AWS_ENDPOINT_URL_SNS``), one try per call (the sender retries, and only what surely
    did not arrive)."""
    from botocore.config import Config as BotoConfig

    return aws.client("sns", region_name=region, config=BotoConfig(
        connect_timeout=TIMEOUT[0], read_timeout=TIMEOUT[1],
        retries={"mode": "standard", "total_max_attempts": 1}))


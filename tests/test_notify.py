"""Notifications (receiver/notify.py): configuration, messages, shapes, escaping, tasks, sends.

Shapes are checked against what the targets publish (origins in tests/fixtures/README.md):
Slack's incoming-webhook example (Block Kit, checked with Slack's own SDK models), Microsoft's
Adaptive Card webhook example and the Adaptive Cards 1.2 JSON Schema, and Amazon Q
Developer's custom-notification event schema. Each checker is shown to accept the published
sample and to refuse a broken one, so it cannot pass everything.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers import build_providers
from receiver import config
from receiver.config import Config, webhook_url_problem
from receiver.effects import Bus, DeliveryProcessed, ExecutionChanged, MapInvalid
from receiver.errors import ConfigError, NotifyError, TerminalError
from receiver.events import Delivery, PushEvent
from receiver.notify import (
    KIND,
    LINES_MAX,
    Builder,
    Message,
    NotifyHandler,
    NotifyListener,
    duration,
    markdown_escape,
    slack_escape,
    slack_payload,
    sns_message,
    teams_payload,
)
from receiver.reconcile import RECONCILER
from receiver.state.base import DecisionRecord, Execution, PipelineDecision, Task
from receiver.state.sqlite import SQLiteStore
from tests.chat_webhooks import (
    SLACK_SAMPLE,
    TEAMS_SAMPLE,
    ChatWebhook,
    q_problems,
    slack_problems,
    teams_problems,
)
from tests.harness import MotoServer

HEAD = "9f2c4a1b7e3d5c6f8a0b1c2d3e4f5a6b7c8d9e0f"
BEFORE = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
TOPIC = "arn:aws:sns:us-east-1:123456789012:deploys"
SLACK_URL = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
HOSTILE = "feature/<!channel>&<@U024BE7LH>|*bold*_it_`code`[x](https://evil.example)"


def repository(**extra: Any) -> dict[str, Any]:
    return {"provider": "github", "name": "acme/mono", "webhook_secrets": ["env:GH_SECRET"],
            "branches": ["main", "feature/**"], "modules": {"libs-common": {
                "paths": ["libs/common/**"]}},
            "pipelines": [{"name": "a-deploy", "paths": ["svc/a/**"]},
                          {"name": "b-deploy", "paths": ["svc/b/**"],
                           "depends_on": ["libs-common"]},
                          {"name": "c-deploy", "paths": ["svc/c/**"]}], **extra}


def configured(notifications: list[dict[str, Any]], **extra: Any) -> Config:
    return config.parse({"repositories": [repository(**extra)],
                         "notifications": notifications})


ALL = ["push", "succeeded", "failed", "stopped", "missed", "invalid_map"]
TARGETS = [{"sns": TOPIC, "events": ALL}, {"slack": "env:NOTIFY_SLACK_URL", "events": ALL},
           {"teams": "env:NOTIFY_TEAMS_URL", "events": ALL}]


# --- configuration ---------------------------------------------------------------------------

def test_a_notification_target_is_configured_with_its_events_and_repositories() -> None:
    cfg = configured([{"sns": TOPIC, "events": ["push", "failed"]},
                      {"slack": "env:S", "events": "failed", "repositories": ["acme/*", "!acme/old"]}])
    sns, slack = cfg.notifications
    assert (sns.kind, sns.target, sns.events) == ("sns", f"sns:{TOPIC}", ("push", "failed"))
    assert (slack.kind, slack.target, slack.events) == ("slack", "slack:env:S", ("failed",))
    assert slack.covers("acme/mono") and not slack.covers("acme/old") \
        and not slack.covers("other/mono")
    assert sns.covers("other/mono")


@pytest.mark.parametrize(("entry", "problem"), [
    ({"slack": "env:S"}, "notifications[0].events: is required"),
    ({"slack": "env:S", "events": []}, "notifications[0].events: must not be empty"),
    ({"slack": "env:S", "events": ["pushed"]},
     "notifications[0].events[0]: 'pushed' is not allowed; allowed: push, succeeded, failed, "
     "stopped, missed, invalid_map"),
    ({"events": ["push"]}, "notifications[0]: needs exactly one target of sns, slack, teams"),
    ({"slack": "env:S", "teams": "env:T", "events": ["push"]},
     "notifications[0]: needs exactly one target of sns, slack, teams (has slack, teams)"),
    ({"sns": "arn:aws:sns:us-east-1:123:deploys", "events": ["push"]},
     "notifications[0].sns: must be an SNS topic ARN like "
     "arn:aws:sns:us-east-1:123456789012:deploys"),
    ({"slack": SLACK_URL, "events": ["push"]}, "notifications[0].slack: unknown secret scheme"),
    ({"slack": "env:S", "events": ["push"], "repositories": ["!acme/*"]},
     "notifications[0].repositories: needs at least one include pattern"),
    ({"slack": "env:S", "events": ["push"], "channel": "#deploys"},
     "notifications[0].channel: unknown key; allowed: events, sns, slack, teams, repositories"),
    # YAML 1.1 reads `on:` as the boolean true
    ({"slack": "env:S", True: ["push"]},
     "notifications[0]: a key reads as true (YAML 1.1 reads `on` so)"),
])
def test_a_notification_entry_that_breaks_a_rule_is_refused_naming_its_key(
        entry: dict[Any, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        configured([entry])
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_the_same_target_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        configured([{"slack": "env:S", "events": ["push"]},
                    {"slack": "env:S", "events": ["failed"]}])
    assert caught.value.problems == ["notifications[1]: the same target as notifications[0]; "
                                     "list its events once"]


@pytest.mark.parametrize(("url", "problem"), [
    (SLACK_URL, None),
    ("https://prod-12.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke"
     "?api-version=2016-06-01&sig=s3cr3t", None),
    ("http://127.0.0.1:8080/services/T/B/X", None),
    ("http://127.5.6.7/x", None),
    ("http://[::1]:9000/x", None),
    ("http://localhost:9000/x", None),
    ("http://hooks.slack.com/services/T/B/X", "must be an https URL (http only to a loopback "
                                               "address)"),
    ("http://10.0.0.1/x", "must be an https URL (http only to a loopback address)"),
    ("ftp://hooks.slack.com/x", "must be an absolute https URL"),
    ("hooks.slack.com/services/T/B/X", "must be an absolute https URL"),
    ("https://hooks.slack.com:99999/x", "is not a URL"),
])
def test_a_webhook_url_must_be_https_except_on_a_loopback_address(
        url: str, problem: str | None) -> None:
    assert webhook_url_problem(url) == problem


def test_serve_refuses_a_plain_http_webhook_url_without_showing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_SECRET", "s")
    monkeypatch.setenv("NOTIFY_SLACK_URL", "http://hooks.slack.com/services/T/B/SECRETPART")
    cfg = configured([{"slack": "env:NOTIFY_SLACK_URL", "events": ["push"]}])
    with pytest.raises(ConfigError) as caught:
        config.read_secrets(cfg)
    assert caught.value.problems == [
        "notifications[0].slack: env:NOTIFY_SLACK_URL: must be an https URL (http only to a "
        "loopback address)"]
    assert "SECRETPART" not in str(caught.value.problems)


def test_every_notification_key_is_documented() -> None:
    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for field in ("events", "sns", "slack", "teams", "repositories"):
        assert f"`notifications[].{field}`" in text, field


# --- messages ----------------------------------------------------------------------------------

PROVIDERS = build_providers()


def decision(name: str, verdict: str, matched: tuple[tuple[str, ...], ...] = (),
             **extra: Any) -> PipelineDecision:
    return PipelineDecision(pipeline=name, verdict=verdict, baseline=BEFORE, diff="compare",
                            complete=True, matched=matched, matched_count=len(matched),
                            **extra)


def record(ref: str = "main", pipelines: tuple[PipelineDecision, ...] | None = None,
           **extra: Any) -> DecisionRecord:
    if pipelines is None:
        pipelines = (decision("a-deploy", "started", (("svc/a/x.py", "svc/a/**"),)),
                     decision("b-deploy", "started",
                              (("libs/common/y.py", "libs/common/**", "libs-common"),)),
                     decision("c-deploy", "unchanged"))
    return DecisionRecord(delivery_id="d-1", provider="github", repository="acme/mono",
                          ref_type="branch", ref=ref, before=BEFORE, head=HEAD,
                          recorded_at=1.0, attempt=1, pipelines=pipelines, **extra)


def processed(cfg: Config, rec: DecisionRecord | None = None, *, pusher: str | None = "octocat",
              missed: bool = False, attempts: int = 1) -> DeliveryProcessed:
    rec = rec if rec is not None else record()
    event = PushEvent("github", "acme/mono", "branch", rec.ref, BEFORE, HEAD, pusher=pusher)
    delivery = Delivery("d-1", "github", "acme/mono", (event,), attempts=attempts,
                        verified_by=RECONCILER if missed else "env:GH_SECRET")
    return DeliveryProcessed(cfg.repositories[0], delivery, event, rec, missed=missed)


def execution(status: str, attempt: int = 1) -> Execution:
    return Execution(pipeline="a-deploy", execution_id="12345678-1234-5678-abcd-12345678abcd",
                     repository="github:acme/mono", branch="main", commit=HEAD,
                     started_at=1000.0, status=status, attempt=attempt, updated_at=1252.4)


CFG = configured(TARGETS)
BUILD = Builder(PROVIDERS, "us-east-1")


def messages() -> dict[str, Message]:
    return {
        "push": BUILD.push(processed(CFG)),
        "missed": BUILD.missed(processed(CFG, missed=True)),
        "failed": BUILD.outcome(CFG.repositories[0], execution("Failed")),
        "invalid_map": BUILD.map_invalid(MapInvalid(
            CFG.repositories[0], HEAD, ".webhook-receiver.yaml",
            ("pipelines[0].name: 'evil-deploy' is not allowed", "modules: not a mapping"),
            BEFORE)),
    }


def rendered(message: Message) -> str:
    """Everything a target is sent, as one text (what a reader of any target sees)."""
    return json.dumps([slack_payload(message), teams_payload(message),
                       sns_message(message, "k")], ensure_ascii=False)


def test_a_push_message_names_the_commit_the_pusher_and_why_each_pipeline_started() -> None:
    message = messages()["push"]
    assert message.title == "acme/mono main: 2 pipelines started"
    facts = {label: value for label, value in message.facts}
    assert facts["Pushed by"] == ("octocat",)
    (link,) = facts["Commit"]
    assert not isinstance(link, str)
    assert (link.text, link.url) == (HEAD[:12], f"https://github.com/acme/mono/commit/{HEAD}")
    assert facts["Unchanged"] == ("1 pipeline",)
    (head, lines), = message.sections
    assert head == "Started"
    assert lines == (("a-deploy: ", "svc/a/x.py"),
                     ("b-deploy: ", "via libs-common: libs/common/y.py"))


def test_an_outcome_message_names_pipeline_commit_duration_and_console() -> None:
    message = messages()["failed"]
    assert (message.event, message.title) == ("failed", "a-deploy failed")
    facts = {label: value for label, value in message.facts}
    assert facts["Duration"] == ("4m 12s",)
    (link,) = facts["Execution"]
    assert not isinstance(link, str) and link.url == (
        "https://us-east-1.console.aws.amazon.com/codesuite/codepipeline/pipelines/a-deploy/"
        "executions/12345678-1234-5678-abcd-12345678abcd/timeline?region=us-east-1")


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (12.4, "12s"), (252, "4m 12s"),
                                                 (3720, "1h 2m"), (-3, "0s")])
def test_a_duration_reads_as_hours_minutes_and_seconds(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_a_push_without_matched_paths_says_the_planners_reason() -> None:
    rec = record(pipelines=(PipelineDecision("a-deploy", "started", None, "new-branch", False,
                                             reason="new branch with no baseline"),))
    (_, lines), = BUILD.push(processed(CFG, rec)).sections
    assert lines == (("a-deploy: ", "new branch with no baseline"),)


def test_an_unknown_pusher_and_a_failed_start_are_said_so() -> None:
    rec = record(pipelines=(decision("a-deploy", "started", (("svc/a/x.py", "svc/a/**"),)),
                            decision("c-deploy", "failed", error="AccessDenied")))
    message = BUILD.push(processed(CFG, rec, pusher=None))
    assert dict(message.facts)["Pushed by"] == ("unknown",)
    assert message.sections[1] == ("Failed to start", (("c-deploy: AccessDenied",),))


def test_a_message_survives_its_stored_form() -> None:
    for message in messages().values():
        assert Message.from_dict(json.loads(json.dumps(message.to_dict()))) == message


# --- shapes: what each target documents -----------------------------------------------------

def test_the_shape_checkers_accept_the_published_samples_and_refuse_broken_ones() -> None:
    assert slack_problems(SLACK_SAMPLE) == []
    assert slack_problems({**SLACK_SAMPLE, "channel": "#x"}) != []
    broken = json.loads(json.dumps(SLACK_SAMPLE))
    broken["blocks"][0]["text"]["text"] = "x" * 3001  # over Block Kit's section limit
    assert slack_problems(broken) != []
    assert teams_problems(TEAMS_SAMPLE) == []
    broken = json.loads(json.dumps(TEAMS_SAMPLE))
    broken["attachments"][0]["content"]["body"] = [{"type": "TextRun", "text": "x"}]
    assert teams_problems(broken) != []
    assert q_problems({"version": "1.0", "source": "custom",
                       "content": {"description": "x"}}) == []
    assert q_problems({"version": "1.0", "source": "aws.codepipeline",
                       "content": {"description": "x"}}) != []


@pytest.mark.parametrize("event", ["push", "missed", "failed", "invalid_map"])
def test_every_message_has_each_targets_published_shape(event: str) -> None:
    message = messages()[event]
    assert slack_problems(slack_payload(message)) == []
    assert teams_problems(teams_payload(message)) == []
    assert q_problems(sns_message(message, "key")) == []


# --- escaping: payload text stays text ------------------------------------------------------

def test_slack_escaping_turns_its_three_special_characters_into_entities() -> None:
    assert slack_escape("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"


def test_a_hostile_branch_name_reaches_no_target_as_markup() -> None:
    message = BUILD.push(processed(CFG, record(ref=HOSTILE)))
    slack = json.dumps(slack_payload(message))
    assert "<!channel>" not in slack and "<@U024BE7LH>" not in slack
    assert "feature/&lt;!channel&gt;&amp;&lt;@U024BE7LH&gt;" in slack
    # Teams: only TextRuns, which render no Markdown, carry text
    card = teams_payload(message)["attachments"][0]["content"]
    texts = [el for block in card["body"] for el in block["inlines"]]
    assert {el["type"] for el in texts} == {"TextRun"}
    assert any(HOSTILE in el["text"] for el in texts)
    assert not any(el.get("selectAction", {}).get("url") == "https://evil.example"
                   for el in texts)
    # Amazon Q: CommonMark escapes; the link syntax is inert
    description = sns_message(message, "k")["content"]["description"]
    assert markdown_escape(HOSTILE) in description and "[x](https://evil.example)" not in \
        description


def test_payload_text_loses_its_control_characters() -> None:
    rec = record(ref="main", pipelines=(decision(
        "a-deploy", "started", (("svc/a/line\nbreak\u202e.py", "svc/a/**"),)),))
    everything = rendered(BUILD.push(processed(CFG, rec, pusher="evil\r\n")))
    assert "line?break?.py" in everything and "\u202e" not in everything


def test_a_message_about_a_hostile_push_stays_within_every_targets_limits() -> None:
    many = tuple(decision(f"p{i}-deploy", "started", tuple(
        (f"svc/{'&' * 5000}/{j}.py", "svc/**", f"lib{'<' * 300}") for j in range(20)))
        for i in range(10_000))
    rec = record(ref="x" * 100_000, pipelines=many)
    started = time.monotonic()
    message = BUILD.push(processed(CFG, rec, pusher="p" * 100))
    slack, teams, sns = slack_payload(message), teams_payload(message), sns_message(message, "k")
    assert time.monotonic() - started < 5  # linear in what is shown, not in the input
    assert slack_problems(slack) == [] and teams_problems(teams) == []
    assert len(message.sections[0][1]) == LINES_MAX + 1  # and a line counting the rest
    assert message.sections[0][1][-1] == ("… and 9990 more pipelines",)
    assert len(json.dumps(slack)) < 40_000 and len(json.dumps(teams)) < 28_000
    assert len(json.dumps(sns)) < 256 * 1024


# --- listening: tasks, once per (target, event) -------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "s.db"))
    s.init()
    return s


def tasks(store: SQLiteStore) -> list[Task]:
    return store.claim_tasks("test", time.time() + 3600, 60, 1000)


def listener(store: SQLiteStore, cfg: Config = CFG) -> tuple[Bus, list[int]]:
    bus, woken = Bus(), []
    NotifyListener(cfg, store, PROVIDERS, "us-east-1", wake=lambda: woken.append(1)
                   ).subscribe(bus)
    return bus, woken


def told(found: list[Task]) -> list[tuple[str, str]]:
    return sorted((t.target.partition(":")[0], json.loads(t.payload)["message"]["event"])
                  for t in found)


def test_a_push_that_started_something_is_one_task_per_target(store: SQLiteStore) -> None:
    bus, woken = listener(store)
    assert bus.publish(processed(CFG))
    found = tasks(store)
    assert told(found) == [("slack", "push"), ("sns", "push"), ("teams", "push")]
    assert {t.kind for t in found} == {KIND} and woken
    assert all("XXXX" not in t.payload and "http://127" not in t.payload for t in found)


def test_the_same_push_published_again_adds_no_task(store: SQLiteStore) -> None:
    bus, _ = listener(store)
    bus.publish(processed(CFG))
    first = tasks(store)
    for task in first:
        store.finish_task(task, "test", "done", time.time())
    bus.publish(processed(CFG, attempts=2))  # a retried delivery, or another replica
    assert tasks(store) == []


@pytest.mark.parametrize(("case", "event", "expected"), [
    ("a push that started something", lambda: processed(CFG), ["push"]),
    ("a push that started nothing", lambda: processed(CFG, record(pipelines=(
        decision("a-deploy", "unchanged"),))), []),
    ("a push whose delivery failed", lambda: processed(CFG, record(failure="attempts used up")),
     []),
    ("a push with a start left for the next attempt", lambda: processed(CFG, record(pipelines=(
        decision("a-deploy", "started"), decision("b-deploy", "retry")))), []),
    ("the same on the delivery's last attempt", lambda: processed(CFG, record(pipelines=(
        decision("a-deploy", "started"), decision("b-deploy", "retry"))), attempts=6), ["push"]),
    ("a push the reconciler found", lambda: processed(CFG, missed=True), ["missed", "push"]),
    ("a caught-up push that started nothing", lambda: processed(CFG, record(pipelines=(
        decision("a-deploy", "unchanged"),)), missed=True), ["missed"]),
    ("a failed execution", lambda: ExecutionChanged(CFG.repositories[0], execution("Failed"),
                                                    "event"), ["failed"]),
    ("a succeeded execution", lambda: ExecutionChanged(
        CFG.repositories[0], execution("Succeeded"), "poll"), ["succeeded"]),
    ("a stopped execution", lambda: ExecutionChanged(
        CFG.repositories[0], execution("Stopped"), "event"), ["stopped"]),
    ("a cancelled execution", lambda: ExecutionChanged(
        CFG.repositories[0], execution("Cancelled"), "event"), ["stopped"]),
    ("a superseded execution", lambda: ExecutionChanged(
        CFG.repositories[0], execution("Superseded"), "event"), []),
    ("a running execution", lambda: ExecutionChanged(
        CFG.repositories[0], execution("InProgress"), "event"), []),
    ("an invalid module map", lambda: MapInvalid(CFG.repositories[0], HEAD, ".wr.yaml",
                                                 ("bad",), None), ["invalid_map"]),
])
def test_what_happened_becomes_the_events_it_is(store: SQLiteStore, case: str, event: Any,
                                                expected: list[str]) -> None:
    bus, _ = listener(store)
    bus.publish(event())
    assert sorted({e for _, e in told(tasks(store))}) == expected, case


def test_a_console_retry_that_fails_again_is_told_again(store: SQLiteStore) -> None:
    bus, _ = listener(store)
    repo = CFG.repositories[0]
    for attempt in (1, 1, 2):
        bus.publish(ExecutionChanged(repo, execution("Failed", attempt), "event"))
    assert told(tasks(store)).count(("slack", "failed")) == 2


@pytest.mark.parametrize(("entry", "sent"), [
    ({"slack": "env:S", "events": ["failed"]}, False),
    ({"slack": "env:S", "events": ["push"], "repositories": ["other/*"]}, False),
    ({"slack": "env:S", "events": ["push"], "repositories": ["acme/*", "!acme/mono"]}, False),
    ({"slack": "env:S", "events": ["push"], "repositories": ["acme/*"]}, True),
])
def test_a_target_is_told_only_the_events_and_repositories_it_names(
        store: SQLiteStore, entry: dict[str, Any], sent: bool) -> None:
    cfg = configured([entry])
    bus, _ = listener(store, cfg)
    bus.publish(processed(cfg))
    assert bool(tasks(store)) is sent


def event_of(task: Task) -> str:
    return str(json.loads(task.payload)["message"]["event"])


def test_an_outcome_names_the_push_message_of_its_start_at_its_target(
        store: SQLiteStore) -> None:
    cfg = configured([{"slack": "env:S", "events": ["push", "failed"]},
                      {"teams": "env:T", "events": ["failed"]}])
    bus, _ = listener(store, cfg)
    bus.publish(processed(cfg))
    bus.publish(ExecutionChanged(cfg.repositories[0], execution("Failed"), "event"))
    found = {(t.target, event_of(t)): t for t in tasks(store)}
    handler = NotifyHandler(cfg)
    assert found[("slack:env:S", "push")].key in handler.after(found[("slack:env:S", "failed")])
    assert handler.after(found[("teams:env:T", "failed")]) == []  # told no push


def test_a_validations_outcome_comes_after_no_push(store: SQLiteStore) -> None:
    bus, _ = listener(store)
    validation = dataclasses.replace(execution("Failed"), pull_request=7)
    bus.publish(ExecutionChanged(CFG.repositories[0], validation, "event"))
    handler = NotifyHandler(CFG)
    assert [handler.after(t) for t in tasks(store)] == [[], [], []]


def test_no_targets_no_listener() -> None:
    bus = Bus()
    NotifyListener(config.parse({"repositories": [repository()]}), None,  # type: ignore[arg-type]
                   PROVIDERS, "us-east-1").subscribe(bus)
    assert bus._listeners == {}


# --- sending -----------------------------------------------------------------------------------

@pytest.fixture
def handler_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    made: list[ChatWebhook] = []

    def make(answers: list[tuple[int, bytes]], kind: str = "slack",
             delay: float = 0.0) -> tuple[NotifyHandler, ChatWebhook, Task]:
        stand_in = ChatWebhook(kind, answers, delay)
        made.append(stand_in)
        monkeypatch.setenv("NOTIFY_HOOK", stand_in.url)
        cfg = configured([{kind: "env:NOTIFY_HOOK", "events": ALL}])
        message = messages()["push"]
        task = Task("k", KIND, f"{kind}:env:NOTIFY_HOOK", json.dumps(
            {"target": f"{kind}:env:NOTIFY_HOOK", "message": message.to_dict()}), 0.0, 0.0)
        return NotifyHandler(cfg), stand_in, task

    yield make
    for stand_in in made:
        stand_in.close()


@pytest.mark.parametrize("kind", ["slack", "teams"])
def test_a_webhook_gets_its_targets_payload(handler_for: Any, kind: str) -> None:
    handler, stand_in, task = handler_for([(200, b"ok") if kind == "slack" else (202, b"")],
                                          kind)
    handler.send(task)
    (body,) = stand_in.bodies()
    message = Message.from_dict(json.loads(task.payload)["message"])
    assert body == (slack_payload(message) if kind == "slack" else teams_payload(message))


@pytest.mark.parametrize(("status", "body", "error"), [
    (500, b"rollup_error", NotifyError),
    (503, b"", NotifyError),
    (429, b"", NotifyError),
    (400, b"invalid_payload", TerminalError),
    (403, b"action_prohibited", TerminalError),
    (404, b"channel_not_found", TerminalError),
    (410, b"channel_is_archived", TerminalError),
    (302, b"", TerminalError),
])
def test_a_refusal_is_retried_only_when_a_later_try_may_pass(
        handler_for: Any, status: int, body: bytes, error: type[Exception]) -> None:
    handler, stand_in, task = handler_for([(status, body)])
    with pytest.raises(error) as caught:
        handler.send(task)
    assert type(caught.value) is error
    assert str(caught.value).startswith(f"slack:env:NOTIFY_HOOK: HTTP {status}")
    assert stand_in.secret not in str(caught.value) and "127.0.0.1" not in str(caught.value)


def test_no_connection_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NOTIFY_HOOK", f"http://127.0.0.1:{port}/services/T/B/SECRETPART")
    cfg = configured([{"slack": "env:NOTIFY_HOOK", "events": ALL}])
    task = Task("k", KIND, "slack:env:NOTIFY_HOOK", json.dumps(
        {"target": "slack:env:NOTIFY_HOOK", "message": messages()["push"].to_dict()}), 0, 0)
    with pytest.raises(NotifyError) as caught:
        NotifyHandler(cfg).send(task)
    assert "SECRETPART" not in str(caught.value) and str(port) not in str(caught.value)


def test_a_failed_tls_handshake_is_retried(handler_for: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stand_in, task = handler_for([])
    monkeypatch.setenv("NOTIFY_HOOK", stand_in.url.replace("http://", "https://"))
    handler = NotifyHandler(configured([{"slack": "env:NOTIFY_HOOK", "events": ALL}]))
    with pytest.raises(NotifyError, match=r"could not connect \(SSLError\)") as caught:
        handler.send(task)
    assert stand_in.secret not in str(caught.value) and stand_in.bodies() == []


def test_no_answer_in_time_is_not_sent_again_since_it_may_have_arrived(
        handler_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("receiver.notify.TIMEOUT", (1.0, 0.2))
    handler, stand_in, task = handler_for([(200, b"ok")], delay=1.0)
    with pytest.raises(TerminalError) as caught:
        handler.send(task)
    assert "may have arrived" in str(caught.value) and stand_in.secret not in str(caught.value)


def test_a_webhook_url_rotated_to_plain_http_is_refused_at_send(
        handler_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stand_in, task = handler_for([])
    secret = handler.targets["slack:env:NOTIFY_HOOK"].slack
    monkeypatch.setattr(secret, "_values", ("http://hooks.example.com/services/T/B/SECRETPART",))
    with pytest.raises(TerminalError) as caught:
        handler.send(task)
    assert str(caught.value) == ("env:NOTIFY_HOOK: must be an https URL (http only to a "
                                 "loopback address)")
    assert stand_in.bodies() == []


def test_a_target_no_longer_configured_ends_its_task(handler_for: Any) -> None:
    _, _, task = handler_for([])
    with pytest.raises(TerminalError, match="no longer configured"):
        NotifyHandler(configured([])).send(task)


def test_the_log_fields_of_a_task_name_the_target_by_its_reference(handler_for: Any) -> None:
    handler, _, task = handler_for([])
    assert handler.describe(task) == {"target": "slack:env:NOTIFY_HOOK", "notification": "push",
                                      "repository": "acme/mono", "commit": HEAD}
    assert (handler.pace("slack:env:X"), handler.pace("teams:env:X"),
            handler.pace(f"sns:{TOPIC}")) == (1.0, 0.5, 0.0)


def test_an_sns_message_is_published_for_q_developer_and_as_text_for_email(
        moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", moto.url)
    sns = boto3.client("sns", region_name="us-east-1", endpoint_url=moto.url)
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.url)
    topic = sns.create_topic(Name="deploys")["TopicArn"]
    queue = sqs.create_queue(QueueName="reader")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    cfg = configured([{"sns": topic, "events": ALL}])
    message = messages()["failed"]
    task = Task("key-1", KIND, f"sns:{topic}", json.dumps(
        {"target": f"sns:{topic}", "message": message.to_dict()}), 0, 0)
    NotifyHandler(cfg).send(task)
    (received,) = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"]
    envelope = json.loads(received["Body"])
    assert envelope["Subject"] == "a-deploy failed"
    published = json.loads(envelope["Message"])
    assert q_problems(published) == []
    assert published == sns_message(message, "key-1")


def test_an_sns_topic_that_does_not_exist_ends_the_task(
        moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", moto.url)
    cfg = configured([{"sns": TOPIC, "events": ALL}])
    task = Task("k", KIND, f"sns:{TOPIC}", json.dumps(
        {"target": f"sns:{TOPIC}", "message": messages()["push"].to_dict()}), 0, 0)
    with pytest.raises(TerminalError, match=r"sns:arn:aws:sns:us-east-1:123456789012:deploys: "
                                            r"NotFound \(HTTP 404\)"):
        NotifyHandler(cfg).send(task)


def test_an_unreachable_sns_endpoint_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{port}")
    cfg = configured([{"sns": TOPIC, "events": ALL}])
    task = Task("k", KIND, f"sns:{TOPIC}", json.dumps(
        {"target": f"sns:{TOPIC}", "message": messages()["push"].to_dict()}), 0, 0)
    with pytest.raises(NotifyError, match="could not connect"):
        NotifyHandler(cfg).send(task)


def test_a_task_key_differs_per_target_and_per_event() -> None:
    from receiver.notify import task_key

    assert task_key("slack:env:S", "push", "a", "b") != task_key("slack:env:S", "push", "a", "c")
    assert task_key("slack:env:S", "push", "a") != task_key("teams:env:S", "push", "a")

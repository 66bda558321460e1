"""End to end: notifications from the service under gunicorn (docs/notifications.md).

Real signed GitHub pushes go over HTTP to the service (two worker processes); the GitHub
API is a stand-in over a Git model, CodePipeline a local stand-in whose outcomes the test
sends as AWS's published EventBridge events (tests/aws_events.py). Notifications go to an
SNS topic on moto's server (read back through an SQS subscription) and to stand-ins of a
Slack incoming webhook and a Teams Workflows webhook that answer as those document
(tests/chat_webhooks.py), refusing any body that is not their published shape.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import requests

from tests.aws_events import aws_event
from tests.chat_webhooks import ChatWebhook, q_problems
from tests.fake_codepipeline import FakeCodePipeline
from tests.harness import FakeAPI, MotoServer, Service
from tests.test_github_e2e import REPO, GitHubWorld, deliver, push_body

SECRET = "e2e-notify-webhook-secret-value"
TOKEN = "e2e-notify-api-token-value"
EVENTS_KEY = "e2e-notify-events-api-key"
PIPELINES = ["a-deploy", "b-deploy", "c-deploy"]


class SnsReader:
    """The topic on moto, with an SQS queue subscribed to read what was published."""

    def __init__(self, moto: MotoServer) -> None:
        sns = boto3.client("sns", region_name="us-east-1", endpoint_url=moto.url)
        self.sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.url)
        self.topic = sns.create_topic(Name="deploys")["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName="notifications")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=arn)
        self.messages: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Every message published so far (each SNS envelope's ``Message``, parsed)."""
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0).get("Messages", [])
            if not got:
                return self.messages
            for item in got:
                self.messages.append(json.loads(json.loads(item["Body"])["Message"]))
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=item["ReceiptHandle"])


class Rig:
    """The service with its stand-ins: GitHub, CodePipeline, SNS, Slack and Teams."""

    def __init__(self, tmp_path: Path, api: FakeAPI, moto: MotoServer, *,
                 events: list[str], slack_answers: list[tuple[int, bytes]] | None = None,
                 targets: tuple[str, ...] = ("sns", "slack", "teams")) -> None:
        self.world = GitHubWorld(api)
        self.git = self.world.git
        self.c0 = self.git.commit(None, {"svc/a/x.py": "0", "svc/b/y.py": "0",
                                         "svc/c/z.py": "0", "libs/common/u.py": "0"})
        self.cp = FakeCodePipeline(PIPELINES)
        self.sns = SnsReader(moto)
        self.slack = ChatWebhook("slack", slack_answers)
        self.teams = ChatWebhook("teams")
        entries = {"sns": {"sns": self.sns.topic, "events": events},
                   "slack": {"slack": "env:E2E_SLACK_URL", "events": events},
                   "teams": {"teams": "env:E2E_TEAMS_URL", "events": events}}
        self.config = {
            "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
            "launcher": {"backend": "codepipeline", "region": "us-east-1",
                         "endpoint_url": self.cp.url},
            "processing": {"lease_seconds": 3, "poll_seconds": 0.5},
            "outcomes": {"api_keys": ["env:E2E_EVENTS_KEY"]},
            "notifications": [entries[t] for t in targets],
            "repositories": [{
                "provider": "github", "name": REPO, "api_url": api.url,
                "webhook_secrets": ["env:E2E_GH_SECRET"], "api_token": "env:E2E_GH_TOKEN",
                "branches": ["master", "feature/**"],
                "modules": {"libs-common": {"paths": ["libs/common/**"]}},
                "pipelines": [{"name": "a-deploy", "paths": ["svc/a/**"]},
                              {"name": "b-deploy", "paths": ["svc/b/**"],
                               "depends_on": ["libs-common"]},
                              {"name": "c-deploy", "paths": ["svc/c/**"]}],
            }],
        }
        self.env = {"E2E_GH_SECRET": SECRET, "E2E_GH_TOKEN": TOKEN,
                    "E2E_EVENTS_KEY": EVENTS_KEY, "E2E_SLACK_URL": self.slack.url,
                    "E2E_TEAMS_URL": self.teams.url, "AWS_ENDPOINT_URL_SNS": moto.url}
        self.tmp_path = tmp_path
        self.svc = self.service()

    def service(self) -> Service:
        return Service(self.config, self.tmp_path, env=self.env)

    def push(self, before: str, changes: dict[str, str], ref: str = "refs/heads/master") -> str:
        head = self.git.commit(before, changes)
        answer = deliver(self.svc, push_body(before, head, ref), secret=SECRET)
        assert answer.status_code == 202, answer.text
        self.svc.wait_for(lambda lines: any(
            e.get("event") == "delivery.processed" and e.get("head") == head for e in lines))
        return head

    def outcome(self, pipeline: str, state: str) -> requests.Response:
        """AWS's published event: the latest execution of ``pipeline`` is in ``state``."""
        execution = self.cp.started(pipeline)[-1].execution_id
        self.cp.set_status(execution, state.capitalize())
        return requests.post(self.svc.url + "/events/codepipeline", timeout=10,
                             data=aws_event(pipeline, execution, state),
                             headers={"Content-Type": "application/json",
                                      "x-api-key": EVENTS_KEY})

    def sent(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``count`` notify.sent lines were logged; return them."""
        lines = self.svc.wait_for(lambda lines: sum(
            e.get("event") == "notify.sent" for e in lines) >= count, timeout=timeout)
        return [e for e in lines if e.get("event") == "notify.sent"]

    def close(self) -> None:
        self.svc.stop()
        for closing in (self.cp, self.slack, self.teams):
            closing.close()


@contextlib.contextmanager
def running(tmp_path: Path, api: FakeAPI, moto: MotoServer, **kwargs: Any) -> Iterator[Rig]:
    rig = Rig(tmp_path, api, moto, **kwargs)
    rig.svc.start()
    try:
        yield rig
    finally:
        rig.close()


def events(rig: Rig) -> dict[str, list[str]]:
    """Which notification each target got, in order."""
    def slack(body: Any) -> str:
        return str(body["text"])

    def teams(body: Any) -> str:
        return str(body["attachments"][0]["content"]["body"][0]["inlines"][0]["text"])

    return {"slack": [slack(b) for b in rig.slack.bodies()],
            "teams": [teams(b) for b in rig.teams.bodies()],
            "sns": [str(m["metadata"]["summary"]) for m in rig.sns.read()]}


def texts(node: Any) -> Iterator[str]:
    """Every string in a JSON document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from texts(value)
    elif isinstance(node, list):
        for value in node:
            yield from texts(value)


def settle(seconds: float = 3.0) -> None:
    """Give the senders time to send anything still due (more than two idle checks)."""
    time.sleep(seconds)


def test_a_push_and_its_failure_each_give_one_message_per_target_saying_why(
        tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> None:
    with running(tmp_path, fake_api, moto, events=["push", "failed"]) as rig:
        head = rig.push(rig.c0, {"svc/a/x.py": "1", "libs/common/u.py": "1"})
        assert [len(rig.cp.started(p)) for p in PIPELINES] == [1, 1, 0]
        assert rig.outcome("a-deploy", "FAILED").status_code == 202
        rig.sent(6)
        for _ in range(3):  # EventBridge replays
            replay = rig.outcome("a-deploy", "FAILED")
            assert replay.status_code == 200 and replay.json()["status"] == "ignored"
        rig.svc.stop()
        rig.svc = rig.service().start()
        settle()
        title = f"{REPO} master: 2 pipelines started"
        assert events(rig) == {target: [title, "a-deploy failed"]
                               for target in ("slack", "teams", "sns")}

        slack_push, slack_failed = rig.slack.bodies()
        shown = "\n".join(texts(slack_push))
        assert "a-deploy: svc/a/x.py" in shown
        assert "b-deploy: via libs-common: libs/common/u.py" in shown
        assert "*Pushed by*\nbinkkatal" in shown and "*Unchanged*\n1 pipeline" in shown
        assert f"<{fake_api.url}/{REPO}/commit/{head}|{head[:12]}>" in shown
        assert "*Duration*" in "\n".join(texts(slack_failed))
        teams_push = "\n".join(texts(rig.teams.bodies()[0]))
        assert "via libs-common: libs/common/u.py" in teams_push and "binkkatal" in teams_push
        sns_push, sns_failed = rig.sns.messages
        assert q_problems(sns_push) == [] and q_problems(sns_failed) == []
        assert "via libs-common: libs/common/u.py" in sns_push["content"]["description"]
        assert sns_failed["metadata"]["additionalContext"]["pipeline"] == "a-deploy"

        # no secret in any message or log line
        everything = rig.svc.log_path.read_text() + json.dumps(
            [rig.slack.bodies(), rig.teams.bodies(), rig.sns.messages])
        for secret in (SECRET, TOKEN, EVENTS_KEY, rig.slack.secret, rig.teams.secret,
                       rig.slack.url, rig.teams.url):
            assert secret not in everything
        sent = rig.svc.events("notify.sent")
        assert {e["target"] for e in sent} == {f"sns:{rig.sns.topic}", "slack:env:E2E_SLACK_URL",
                                               "teams:env:E2E_TEAMS_URL"}


def test_a_first_answer_of_500_is_retried_once(
        tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> None:
    with running(tmp_path, fake_api, moto, events=["push"], targets=("slack",),
                 slack_answers=[(500, b"rollup_error")]) as rig:
        rig.push(rig.c0, {"svc/a/x.py": "1"})
        (sent,) = rig.sent(1)
        settle()
        first, second = rig.slack.bodies()
        assert first == second
        (failed,) = rig.svc.events("notify.failed")
        assert (failed["attempt"], failed["will_retry"], failed["error"]) == \
            (1, True, "slack:env:E2E_SLACK_URL: HTTP 500 rollup_error")
        assert sent["attempt"] == 2
        assert [r.at for r in rig.slack.received][1] - rig.slack.received[0].at >= 2.0
        assert len(rig.slack.bodies()) == 2


def test_slack_gets_at_most_one_message_a_second_from_both_worker_processes(
        tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> None:
    with running(tmp_path, fake_api, moto, events=["push", "succeeded"],
                 targets=("slack",)) as rig:
        rig.push(rig.c0, {"svc/a/x.py": "1", "svc/b/y.py": "1", "svc/c/z.py": "1"})
        for pipeline in PIPELINES:  # three outcomes at once, on both workers
            assert rig.outcome(pipeline, "SUCCEEDED").status_code == 202
        rig.sent(4)
        at = [r.at for r in rig.slack.received]
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(at)]
        assert len(at) == 4 and min(gaps) >= 0.95, gaps
        assert {e.get("notification") for e in rig.svc.events("notify.sent")} == \
            {"push", "succeeded"}


def test_a_branch_named_to_ping_everyone_arrives_escaped(
        tmp_path: Path, fake_api: FakeAPI, moto: MotoServer) -> None:
    branch = "feature/<!channel>&co"
    with running(tmp_path, fake_api, moto, events=["push"]) as rig:
        rig.push(rig.c0, {"svc/a/x.py": "1"}, ref=f"refs/heads/{branch}")
        rig.sent(3)
        slack = json.dumps(rig.slack.bodies())
        assert "feature/&lt;!channel&gt;&amp;co" in slack and "<!channel>" not in slack
        runs = [run for block in rig.teams.bodies()[0]["attachments"][0]["content"]["body"]
                for run in block["inlines"]]
        assert {run["type"] for run in runs} == {"TextRun"}
        assert any(run["text"] == branch for run in runs)
        (published,) = rig.sns.read()
        assert "feature/\\<\\!channel\\>\\&co" in published["content"]["description"]
        assert "<!channel>" not in published["content"]["description"]

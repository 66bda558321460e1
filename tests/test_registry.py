"""Adding a provider is one module plus one ``providers.REGISTRY`` entry: nothing else lists them.

The throwaway provider ``forgejo`` below is GitHub's implementation under another name,
registered with one entry in the registry (monkeypatched for the test) and no other file
changed. The service runs in-process (``create_app`` with ``start_worker=False``, driven by
Flask's test client) and ``check-config`` through ``receiver.cli.main``: a subprocess, such
as gunicorn, could not see a registry patched in this process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from providers import REGISTRY, build_providers
from providers.github import GitHubOptions, GitHubProvider
from receiver import cli
from receiver.app import create_app
from receiver.config import parse
from receiver.gunicorn_ext import known_path
from tests.harness import fixture_bytes

SECRET = "forgejo-test-webhook-secret"
PUSH = "github/go-playground-push.json"  # Forgejo sends GitHub's push format


class ForgejoProvider(GitHubProvider):
    """GitHub's verification, payloads and compare API; it does not even say its own name."""


@pytest.fixture
def forgejo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "forgejo", ForgejoProvider)
    monkeypatch.setenv("FORGEJO_TEST_SECRET", SECRET)


def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "state": {"path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "forgejo", "name": "binkkatal/sample_app",
            "api_url": "https://forgejo.example.com/api/v1",
            "webhook_secrets": ["env:FORGEJO_TEST_SECRET"], "branches": ["master"],
            "max_compare_commits": 50,  # the options of the class it registered
            "pipelines": [{"name": "app-deploy", "paths": ["**"]}],
        }],
    }


def check_config(tmp_path: Path) -> int:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    return cli.main(["check-config", "--config", str(path)])


def test_check_config_refuses_the_provider_before_it_is_registered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(tmp_path) == 2
    assert "repositories[0].provider: 'forgejo' is not allowed; allowed: azure-devops, " \
        "bitbucket, bitbucket-server, gitea, github, gitlab" in capsys.readouterr().err


def test_check_config_accepts_the_registered_provider_with_its_options(
        forgejo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(tmp_path) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    repo = parse(config(tmp_path)).repositories[0]
    assert repo.options_as(GitHubOptions).max_compare_commits == 50


def test_signed_delivery_is_accepted_and_its_log_line_and_metric_carry_the_name(
        forgejo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = fixture_bytes(PUSH)
    headers = {
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "forgejo-delivery-1",
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body,
                                                    hashlib.sha256).hexdigest(),
    }
    app = create_app(parse(config(tmp_path)), start_worker=False)
    capsys.readouterr()
    answer = app.test_client().post("/webhooks/forgejo", data=body, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    accepted = [line for line in lines if line["event"] == "webhook.accepted"]
    assert [line["provider"] for line in accepted] == ["forgejo"]
    metrics = accepted[0]["_aws"]["CloudWatchMetrics"]
    assert [(m["Metrics"][0]["Name"], m["Dimensions"]) for m in metrics] == \
        [("Deliveries", [["provider", "outcome"]])]
    assert build_providers()["forgejo"].parse(
        {k.lower(): v for k, v in headers.items()}, body)[0].provider == "forgejo"
    assert known_path("/webhooks/forgejo")  # gunicorn's access line names the path


def test_unregistered_provider_path_is_not_named_in_logs_or_metrics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = config(tmp_path)
    raw["repositories"][0].update(provider="github", webhook_secrets=["env:PATH"])  # readable
    app = create_app(parse(raw), start_worker=False)
    capsys.readouterr()
    answer = app.test_client().post("/webhooks/forgejo", data=b"{}",
                                    headers={"Content-Type": "application/json"})
    assert answer.status_code == 404
    rejected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["provider"] for line in rejected if line["event"] == "webhook.rejected"] \
        == ["unknown"]
    assert not known_path("/webhooks/forgejo")

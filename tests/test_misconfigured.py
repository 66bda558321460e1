"""A repository the token cannot read must not deploy everything (issue 16, "safe when
misconfigured"), end to end over gunicorn with a GitHub API stand-in.

A compare answered 404 is told apart from a vanished commit by one GET of the repository:
404 there means the token cannot read it (or the name or api_url is wrong), so the delivery
is retried and finally fails, starting nothing, with a ProviderErrors metric to alarm on; a
readable repository with a missing commit is a real incomplete difference and still fails
open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import FakeAPI, Recorded, Service
from tests.test_github_e2e import REPO, deliver, push_body

SECRET = "e2e-webhook-secret-value"
BASE, HEAD = "a" * 40, "b" * 40


def service(tmp_path: Path, api: FakeAPI) -> Service:
    return Service({
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"},
        "processing": {"max_attempts": 2, "retry_backoff_seconds": 0.2, "poll_seconds": 0.2},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api.url,
            "webhook_secrets": ["env:E2E_GH_SECRET"], "branches": ["master"],
            "pipelines": [{"name": "a-deploy", "paths": ["a/**"]},
                          {"name": "b-deploy", "paths": ["b/**"]}],
        }],
    }, tmp_path, env={"E2E_GH_SECRET": SECRET}).start()


def routes(repository_status: int) -> dict[str, Any]:
    def not_found(_rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        return 404, {"message": "Not Found"}, {}

    def repository(_rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        return repository_status, {"full_name": REPO, "private": True}, {}

    return {f"/repos/{REPO}/compare/{BASE}...{HEAD}": not_found, f"/repos/{REPO}": repository}


def test_a_private_repository_without_a_token_starts_nothing_and_fails_the_delivery(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    fake_api.routes = routes(404)
    svc = service(tmp_path, fake_api)
    try:
        assert deliver(svc, push_body(BASE, HEAD), "private-1").status_code == 202
        lines = svc.wait_for(lambda ls: any(e.get("event") == "delivery.failed" for e in ls))
        assert [e for e in lines if e.get("event") == "pipeline.started"] == []
        assert [e for e in lines if e.get("event") == "changes.incomplete"] == []
        assert len([e for e in lines if e.get("event") == "delivery.retry"]) == 1
        errors = [e for e in lines if e.get("event") == "provider.error"]
        assert len(errors) == 2 and all(e["unreadable"] for e in errors)
        assert "cannot read" in errors[0]["error"] and REPO in errors[0]["error"]
        assert errors[0]["ProviderErrors"] == 1  # the EMF metric to alarm on
        assert errors[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == \
            "ProviderErrors"
        state = svc.cli("state")
        assert state.returncode == 0 and state.stdout == ""  # no baseline moved
    finally:
        svc.stop()


def test_a_vanished_baseline_in_a_readable_repository_still_fails_open(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    fake_api.routes = routes(200)
    svc = service(tmp_path, fake_api)
    try:
        assert deliver(svc, push_body(BASE, HEAD), "vanished-1").status_code == 202
        lines = svc.wait_for(lambda ls: any(e.get("event") == "delivery.processed" for e in ls))
        started = sorted(e["pipeline"] for e in lines if e.get("event") == "pipeline.started")
        assert started == ["a-deploy", "b-deploy"]
        (incomplete,) = [e for e in lines if e.get("event") == "changes.incomplete"]
        assert incomplete["IncompleteDiffs"] == 1
        assert [e for e in lines if e.get("event") in ("provider.error", "delivery.failed")] == []
    finally:
        svc.stop()

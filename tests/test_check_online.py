"""``check-config --online``: the state store, every pipeline and every repository's token,
checked against a moto server (DynamoDB, CodePipeline) and a stand-in provider API, with
the command run as a user runs it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.harness import FakeAPI, MotoServer, Recorded, create_pipelines

TOKEN = "ghp_check0123456789abcdefONLINE"
TABLE = "wr-check-online"
PIPELINES = ["acme-collections-deploy", "acme-utilities-deploy", "acme-private-deploy"]


def repository(provider: str, name: str, api_url: str, pipelines: list[str]) -> dict[str, Any]:
    return {"provider": provider, "name": name, "api_url": api_url,
            "webhook_secrets": ["env:CHECK_WEBHOOK_SECRET"], "api_token": "env:CHECK_TOKEN",
            "branches": ["main"],
            "pipelines": [{"name": p, "paths": [f"{p}/**"]} for p in pipelines]}


def write_config(tmp_path: Path, moto: MotoServer, repositories: list[dict[str, Any]]) -> Path:
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump({
        "state": {"backend": "dynamodb", "table": TABLE, "region": "us-east-1",
                  "endpoint_url": moto.url},
        "launcher": {"backend": "codepipeline", "region": "us-east-1",
                     "endpoint_url": moto.url},
        "repositories": repositories,
    }))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHECK_WEBHOOK_SECRET": "hook-secret", "CHECK_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "receiver.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def readable(rec: Recorded, authorization: str = f"Bearer {TOKEN}") -> tuple[int, Any,
                                                                            dict[str, str]]:
    """A repository the token can read; any other credential is refused."""
    if rec.headers.get("authorization") != authorization:
        return 401, {"message": "Bad credentials"}, {}
    return 200, {"full_name": "readable"}, {}


def readable_as(authorization: str) -> Any:
    """``readable`` for a provider that sends the token as ``authorization``."""
    return lambda rec: readable(rec, authorization)


def test_names_the_missing_pipeline_and_the_unreadable_repository_and_exits_2(
        tmp_path: Path, moto: MotoServer, fake_api: FakeAPI) -> None:
    fake_api.routes = {"/repos/acme/mono": readable}  # acme/private answers 404
    create_pipelines(moto.url, ["acme-collections-deploy", "acme-private-deploy"])
    config = str(write_config(tmp_path, moto, [
        repository("github", "acme/mono", fake_api.url,
                   ["acme-collections-deploy", "acme-x-deploy"]),
        repository("github", "acme/private", fake_api.url, ["acme-private-deploy"]),
    ]))
    assert cli("state", "init", "--config", config).returncode == 0

    done = cli("check-config", "--online", "--config", config)

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: pipeline acme-x-deploy: not found (GetPipeline)",
        "error: repository github acme/private: the token cannot read it, or it does not "
        "exist (HTTP 404)",
    ]
    assert f"ok: state store dynamodb table {TABLE} answers" in done.stdout.splitlines()
    # acme/private: the one GET of the repository itself, with the token, never printed
    assert [r.path for r in fake_api.requests] == ["/repos/acme/mono", "/repos/acme/private"]
    assert {r.headers["authorization"] for r in fake_api.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in done.stdout + done.stderr


def test_passes_when_the_store_answers_every_pipeline_exists_and_each_provider_reads(
        tmp_path: Path, moto: MotoServer, fake_api: FakeAPI) -> None:
    fake_api.routes = {
        "/repos/acme/mono": readable,
        "/api/v4/projects/acme%2Fmono": readable,
        "/2.0/repositories/acme/mono": readable,
        "/rest/api/1.0/projects/ACME/repos/mono": readable,
        "/api/v1/repos/acme/mono": readable_as(f"token {TOKEN}"),
        "/acme/Platform/_apis/git/repositories/mono": readable_as(
            "Basic " + base64.b64encode(f":{TOKEN}".encode()).decode()),
    }
    create_pipelines(moto.url, PIPELINES)
    config = str(write_config(tmp_path, moto, [
        repository("github", "acme/mono", fake_api.url, PIPELINES[:2]),
        repository("gitlab", "acme/mono", fake_api.url, PIPELINES[2:]),
        repository("bitbucket", "acme/mono", fake_api.url, PIPELINES[:1]),
        repository("bitbucket-server", "ACME/mono", fake_api.url, PIPELINES[1:]),
        repository("gitea", "acme/mono", fake_api.url + "/api/v1", PIPELINES[:1]),
        repository("azure-devops", "acme/Platform/mono", fake_api.url, PIPELINES[2:]),
    ]))
    assert cli("state", "init", "--config", config).returncode == 0

    done = cli("check-config", "--online", "--config", config)

    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[1:] == [
        f"ok: state store dynamodb table {TABLE} answers",
        "ok: 3 pipelines exist",
        "ok: 6 repositories readable",
    ]
    assert len(fake_api.requests) == 6
    azure = next(r for r in fake_api.requests if "/_apis/" in r.path)
    assert azure.query == {"api-version": ["6.0"]}


def test_a_state_table_that_does_not_exist_is_named_with_the_other_checks_still_run(
        tmp_path: Path, moto: MotoServer, fake_api: FakeAPI) -> None:
    fake_api.routes = {"/repos/acme/mono": readable}
    config = str(write_config(tmp_path, moto, [
        repository("github", "acme/mono", fake_api.url, ["acme-collections-deploy"])]))

    done = cli("check-config", "--online", "--config", config)

    assert done.returncode == 2
    errors = done.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"error: state store dynamodb table {TABLE}: ")
    assert "ResourceNotFoundException" in errors[0]
    assert errors[1] == "error: pipeline acme-collections-deploy: not found (GetPipeline)"
    assert "ok: 1 repositories readable" in done.stdout


def test_without_online_nothing_is_called(tmp_path: Path, moto: MotoServer,
                                          fake_api: FakeAPI) -> None:
    config = str(write_config(tmp_path, moto, [
        repository("github", "acme/private", fake_api.url, ["acme-x-deploy"])]))

    done = cli("check-config", "--config", config)

    assert (done.returncode, done.stderr) == (0, "")
    assert fake_api.requests == []

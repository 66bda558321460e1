"""Configuration: validated once, every problem named by its key path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.config import Config, load, parse
from receiver.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def valid() -> dict[str, Any]:
    return {
        "state": {"backend": "sqlite", "path": "var/x.db"},
        "launcher": {"backend": "log"},
        "processing": {"lease_seconds": 60},
        "repositories": [{
            "provider": "github",
            "name": "acme/mono",
            "webhook_secrets": ["env:CFG_TEST_SECRET"],
            "branches": ["main", "release/*"],
            "pipelines": [
                {"name": "acme-collections-deploy",
                 "paths": ["cs/Collections/**", "!**/*.md"]},
                {"name": "acme-utilities-deploy", "paths": ["cs/Utilities/**"]},
            ],
        }],
    }


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_TEST_SECRET", "not-a-real-secret")


def test_valid_config_becomes_immutable_objects() -> None:
    cfg = parse(valid())
    assert isinstance(cfg, Config)
    repo = cfg.repositories[0]
    assert repo.key == "github:acme/mono"
    assert repo.api_url == "https://api.github.com"
    assert repo.watches_branch("release/1.2") and not repo.watches_branch("feature/x")
    assert [p.name for p in repo.pipelines] == ["acme-collections-deploy", "acme-utilities-deploy"]
    assert repo.webhook_secrets[0].value() == "not-a-real-secret"
    with pytest.raises(AttributeError):
        repo.name = "other"  # type: ignore[misc]


def test_secret_value_never_shows_in_repr() -> None:
    cfg = parse(valid())
    assert "not-a-real-secret" not in repr(cfg)


def test_file_secret_reference_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    raw = valid()
    raw["repositories"][0]["webhook_secrets"] = [f"file:{secret}"]
    assert parse(raw).repositories[0].webhook_secrets[0].value() == "from-file"


def mutate(path: str, value: Any) -> dict[str, Any]:
    """valid() with one key changed ('a.b[0].c'); value DELETE removes the key."""
    raw = copy.deepcopy(valid())
    node: Any = raw
    parts = path.replace("]", "").replace("[", ".").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    key: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return raw


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("repositories[0].colour", "blue", "repositories[0].colour: unknown key"),
        ("state.backend", "redis", "state.backend: 'redis' is not allowed; allowed: sqlite, dynamodb"),
        ("launcher.backend", "jenkins", "launcher.backend: 'jenkins' is not allowed"),
        ("repositories[0].provider", "gitea", "repositories[0].provider: 'gitea' is not allowed"),
        ("repositories[0].pipelines[0].paths[0]", "cs/**x", "repositories[0].pipelines[0].paths[0]: "
         "'cs/**x': '**' must be a whole path segment"),
        ("repositories[0].pipelines[0].paths", [], "repositories[0].pipelines[0].paths: must not be empty"),
        ("repositories[0].pipelines[0].paths", DELETE, "repositories[0].pipelines[0].paths: is required"),
        ("repositories[0].webhook_secrets[0]", "env:CFG_TEST_UNSET",
         "repositories[0].webhook_secrets[0]: env:CFG_TEST_UNSET: environment variable CFG_TEST_UNSET is not set"),
        ("repositories[0].webhook_secrets[0]", "hunter2",
         "repositories[0].webhook_secrets[0]: must be a secret reference"),
        ("repositories[0].webhook_secrets[0]", "file:/nonexistent/secret",
         "repositories[0].webhook_secrets[0]: file:/nonexistent/secret: cannot read file"),
        ("repositories[0].api_token", "vault:x", "repositories[0].api_token: unknown secret scheme 'vault'"),
        ("repositories[0].webhook_secrets", [], "repositories[0].webhook_secrets: is required"),
        ("repositories[0].branches", DELETE, "repositories[0].branches: is required"),
        ("repositories[0].name", "mono", "repositories[0].name: must be the repository path"),
        ("repositories[0].name", "acme/../../x", "repositories[0].name: must be the repository path"),
        ("repositories[0].name", "acme//mono", "repositories[0].name: must be the repository path"),
        ("repositories[0].pipelines[1].name", "acme-collections-deploy",
         "repositories[0].pipelines[1].name: pipeline 'acme-collections-deploy' is listed twice"),
        ("repositories[0].pipelines[0].name", "bad name!", "repositories[0].pipelines[0].name: must be a "
         "CodePipeline pipeline name"),
        ("repositories[0].pipelines[0].variables", {"COMMIT": "{sha}"},
         "repositories[0].pipelines[0].variables.COMMIT: unknown placeholder {sha}"),
        ("repositories[0].api_url", "ftp://x", "repositories[0].api_url: must be an http(s) URL"),
        ("repositories[0].new_branch", "some", "repositories[0].new_branch: 'some' is not allowed"),
        ("processing.lease_seconds", -1, "processing.lease_seconds: must be a number above 0"),
        ("repositories", [], "repositories: is required"),
    ],
)
def test_bad_config_names_the_key_path(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(mutate(path, value))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_not_only_the_first() -> None:
    raw = mutate("state.backend", "redis")
    raw["repositories"][0]["pipelines"][1]["paths"] = []
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert len(info.value.problems) == 2


def test_bitbucket_server_requires_api_url() -> None:
    raw = mutate("repositories[0].provider", "bitbucket-server")
    with pytest.raises(ConfigError, match=r"repositories\[0\]\.api_url: is required"):
        parse(raw)


def test_gitlab_signing_token_must_be_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_TEST_SECRET", "whsec_not base64!")
    raw = mutate("repositories[0].provider", "gitlab")
    with pytest.raises(ConfigError, match=r"repositories\[0\]\.webhook_secrets\[0\]: env:CFG_TEST_SECRET: "
                       "a whsec_ signing token must be whsec_ followed by base64"):
        parse(raw)


def test_require_signed_is_only_for_gitlab() -> None:
    with pytest.raises(ConfigError, match=r"repositories\[0\]\.require_signed: is only for provider gitlab"):
        parse(mutate("repositories[0].require_signed", True))


def test_repositories_are_found_by_provider_and_by_name_in_any_case() -> None:
    raw = valid()
    for provider, name in (("gitlab", "acme/mono"), ("github", "acme/other")):
        raw["repositories"].append({**copy.deepcopy(raw["repositories"][0]),
                                    "provider": provider, "name": name})
    cfg = parse(raw)
    assert [r.name for r in cfg.repositories_for("github")] == ["acme/mono", "acme/other"]
    assert [r.key for r in cfg.repositories_for("gitlab")] == ["gitlab:acme/mono"]
    assert cfg.repositories_for("bitbucket") == ()
    assert cfg.repository("github", "ACME/Mono") is cfg.repositories[0]
    assert cfg.repository("gitlab", "acme/mono") is cfg.repositories[1]
    assert cfg.repository("github", "acme/missing") is None
    assert cfg.repository("bitbucket", "acme/mono") is None


def test_same_repository_twice_is_refused() -> None:
    raw = valid()
    raw["repositories"].append(copy.deepcopy(raw["repositories"][0]))
    with pytest.raises(ConfigError, match=r"repositories\[1\]\.name: .* configured twice"):
        parse(raw)


def test_load_reports_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("repositories: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(str(bad))


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def test_check_config_accepts_the_sample_config() -> None:
    import os

    done = run_cli("check-config", "--config", "config/example.yaml",
                   env={**os.environ, "GITHUB_WEBHOOK_SECRET": "x"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: config/example.yaml: 1 repositories, 2 pipelines")


def test_check_config_prints_every_error_and_exits_non_zero(tmp_path: Path) -> None:
    import os

    raw = mutate("repositories[0].pipelines[0].paths", [])
    raw["repositories"][0]["bogus"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = run_cli("check-config", "--config", str(path), env=dict(os.environ))
    assert done.returncode == 2
    assert "repositories[0].bogus: unknown key" in done.stderr
    assert "repositories[0].pipelines[0].paths: must not be empty" in done.stderr


def test_serve_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    import os

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mutate("repositories[0].webhook_secrets[0]", "env:CFG_TEST_UNSET")))
    done = run_cli("serve", "--config", str(path), "--bind", "127.0.0.1:0", env=dict(os.environ))
    assert done.returncode == 2
    assert "repositories[0].webhook_secrets[0]: env:CFG_TEST_UNSET" in done.stderr


def test_config_path_falls_back_to_environment(tmp_path: Path) -> None:
    import os

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(valid()))
    done = run_cli("check-config", env={**os.environ, "RECEIVER_CONFIG": str(path),
                                         "CFG_TEST_SECRET": "x"})
    assert done.returncode == 0, done.stderr

"""Configuration: validated once, every problem named by its key path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.config import Config, load, parse, read_secrets
from receiver.errors import ConfigError, SecretError

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
        ("repositories[0].provider", "sourcehut", "repositories[0].provider: 'sourcehut' is not allowed"),
        ("repositories[0].pipelines[0].paths[0]", "cs/**x", "repositories[0].pipelines[0].paths[0]: "
         "'cs/**x': '**' must be a whole path segment"),
        ("repositories[0].pipelines[0].paths", [], "repositories[0].pipelines[0].paths: must not be empty"),
        ("repositories[0].pipelines[0].paths", DELETE, "repositories[0].pipelines[0].paths: is required"),
        ("repositories[0].webhook_secrets[0]", "hunter2",
         "repositories[0].webhook_secrets[0]: must be a secret reference"),
        ("repositories[0].api_token", "vault:x", "repositories[0].api_token: unknown secret scheme 'vault'"),
        ("repositories[0].webhook_secrets", [], "repositories[0].webhook_secrets: must not be empty"),
        ("repositories[0].webhook_secrets", DELETE, "repositories[0].webhook_secrets: is required"),
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
        ("processing.lease_seconds", -1, "processing.lease_seconds: must be greater than 0"),
        ("processing.lease_seconds", "60", "processing.lease_seconds: must be a valid number"),
        ("processing.max_attempts", 0, "processing.max_attempts: must be greater than or equal to 1"),
        ("repositories", [], "repositories: must not be empty"),
        ("repositories", DELETE, "repositories: is required"),
        ("launcher.region", "us-easst-1x", "launcher.region: must be an AWS region name like eu-west-1"),
        ("launcher.region", "eu-west-1.evil.example", "launcher.region: must be an AWS region name"),
        ("state.region", "EU", "state.region: must be an AWS region name like eu-west-1"),
        ("state.table", "ab", "state.table: must be a DynamoDB table name: 3 to 255 letters, digits, '_', '.' or '-'"),
        ("state.table", "x" * 256, "state.table: must be a DynamoDB table name: 3 to 255"),
        ("state.table", "acme receiver", "state.table: must be a DynamoDB table name: 3 to 255"),
        ("state.colour", "blue", "state.colour: unknown key; allowed: backend, path, table, region, endpoint_url"),
        ("state", "sqlite", "state: must be a mapping with keys backend, path, table, region, endpoint_url"),
        ("repositories[0].pipelines[0].tags", ["v1", "/v2"], "repositories[0].pipelines[0].tags[1]: '/v2': "
         "paths are repository-root-relative"),
        ("repositories[0].pipelines[0].paths", ["!**/*.md"], "repositories[0].pipelines[0].paths: needs at least "
         "one include pattern"),
        ("repositories[0].max_compare_commits", 0, "repositories[0].max_compare_commits: must be greater than or "
         "equal to 1"),
        ("repositories[0].github_app", {"app_id": 1, "client_id": "Iv1.x", "private_key": "env:K", "installation_id": 2},
         "repositories[0].github_app: needs exactly one of app_id or client_id"),
        ("repositories[0].github_app", {"app_id": 1, "private_key": "env:K", "installation_id": 2, "key": "x"},
         "repositories[0].github_app.key: unknown key; allowed: private_key, installation_id, app_id, client_id"),
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


def test_every_bad_glob_of_a_list_is_reported() -> None:
    raw = mutate("repositories[0].pipelines[0].paths", ["cs/**x", "ok/**", "/abs", "!a/../b"])
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "repositories[0].pipelines[0].paths[0]", "repositories[0].pipelines[0].paths[2]",
        "repositories[0].pipelines[0].paths[3]"]


def test_unknown_provider_is_one_error_not_a_follow_on_about_its_options() -> None:
    raw = mutate("repositories[0].provider", "sourcehut")
    raw["repositories"][0]["require_signed"] = True  # an option of another provider
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert info.value.problems == [
        "repositories[0].provider: 'sourcehut' is not allowed; allowed: azure-devops, "
        "bitbucket, bitbucket-server, gitea, github, gitlab"]


# provider -> (an option of another provider, the options this one allows)
FOREIGN_OPTIONS = {
    "github": ("require_signed", "github_app, max_compare_commits"),
    "gitlab": ("github_app", "require_signed, signature_tolerance_seconds"),
    "bitbucket": ("max_compare_commits", "api_username"),
    "bitbucket-server": ("api_username", "none"),
    "gitea": ("api_username", "none"),
    "azure-devops": ("require_signed", "none"),
}


@pytest.mark.parametrize(("provider", "key", "allowed"),
                         [(p, k, a) for p, (k, a) in FOREIGN_OPTIONS.items()], ids=list(FOREIGN_OPTIONS))
def test_option_of_another_provider_names_the_options_this_one_allows(provider: str, key: str,
                                                                       allowed: str) -> None:
    raw = mutate("repositories[0].provider", provider)
    raw["repositories"][0].update({"api_url": "https://git.example.com", key: True})
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert len(info.value.problems) == 1, info.value.problems
    problem = info.value.problems[0]
    assert problem.startswith(f"repositories[0].{key}: unknown key; allowed: provider, name, api_url,")
    assert problem.endswith(f"; options of provider {provider}: {allowed}")


def test_provider_options_become_that_providers_options_object() -> None:
    from providers.bitbucket import BitbucketOptions
    from providers.github import GitHubOptions
    from providers.gitlab import GitLabOptions

    raw = valid()
    base = raw["repositories"][0]
    raw["repositories"] = [
        {**base, "max_compare_commits": 40,
         "github_app": {"app_id": 12, "private_key": "env:K", "installation_id": 7}},
        {**base, "provider": "gitlab", "require_signed": True, "signature_tolerance_seconds": 60},
        {**base, "provider": "bitbucket", "api_username": "ci@acme.example"},
        {**base, "provider": "bitbucket-server", "api_url": "https://git.acme.example/"},
    ]
    github, gitlab, bitbucket, server = parse(raw).repositories
    options = github.options_as(GitHubOptions)
    assert options.max_compare_commits == 40 and options.github_app is not None
    assert (options.github_app.issuer, options.github_app.installation_id) == ("12", 7)
    assert github.options_as(GitHubOptions).github_app is options.github_app
    assert gitlab.options_as(GitLabOptions) == GitLabOptions(require_signed=True, signature_tolerance_seconds=60.0)
    assert bitbucket.options_as(BitbucketOptions).api_username == "ci@acme.example"
    assert (gitlab.api_url, bitbucket.api_url, server.api_url) == (
        "https://gitlab.com", "https://api.bitbucket.org", "https://git.acme.example")
    with pytest.raises(TypeError):
        gitlab.options_as(GitHubOptions)


def test_api_token_and_github_app_together_are_refused() -> None:
    raw = mutate("repositories[0].github_app", {"client_id": "Iv1.x", "private_key": "env:K", "installation_id": 2})
    raw["repositories"][0]["api_token"] = "env:T"
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert info.value.problems == ["repositories[0].github_app: give either api_token or github_app, not both"]


def test_bitbucket_server_requires_api_url() -> None:
    raw = mutate("repositories[0].provider", "bitbucket-server")
    with pytest.raises(ConfigError, match=r"repositories\[0\]\.api_url: is required"):
        parse(raw)


def test_secrets_are_not_read_while_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CFG_TEST_SECRET")
    cfg = parse(valid())
    with pytest.raises(SecretError, match="environment variable CFG_TEST_SECRET is not set"):
        cfg.repositories[0].webhook_secrets[0].value()


# key path -> (reference, what read_secrets says about it)
UNREADABLE = {
    "repositories[0].webhook_secrets[0]": (
        "env:CFG_TEST_UNSET", "env:CFG_TEST_UNSET: environment variable CFG_TEST_UNSET is not set"),
    "repositories[0].api_token": ("file:/nonexistent/secret", "file:/nonexistent/secret: cannot read file"),
    "repositories[0].github_app.private_key": (
        "env:CFG_TEST_UNSET", "env:CFG_TEST_UNSET: environment variable CFG_TEST_UNSET is not set"),
}


@pytest.mark.parametrize("key_path", UNREADABLE)
def test_read_secrets_names_the_key_path_of_an_unreadable_secret(key_path: str) -> None:
    ref, expected = UNREADABLE[key_path]
    if key_path.endswith("private_key"):
        raw = mutate("repositories[0].github_app", {"app_id": 1, "private_key": ref, "installation_id": 2})
    else:
        raw = mutate(key_path, ref)
    cfg = parse(raw)
    with pytest.raises(ConfigError) as info:
        read_secrets(cfg)
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(f"{key_path}: {expected}"), info.value.problems


def test_read_secrets_reports_every_unreadable_secret_at_once() -> None:
    raw = mutate("repositories[0].webhook_secrets", ["env:CFG_TEST_SECRET", "env:CFG_TEST_UNSET", "file:/nonexistent/x"])
    raw["repositories"][0]["api_token"] = "env:CFG_TEST_UNSET_TOO"
    with pytest.raises(ConfigError) as info:
        read_secrets(parse(raw))
    assert [p.split(": ")[0] for p in info.value.problems] == [
        "repositories[0].webhook_secrets[1]", "repositories[0].webhook_secrets[2]", "repositories[0].api_token"]


def test_gitlab_signing_token_must_be_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_TEST_SECRET", "whsec_not base64!")
    raw = mutate("repositories[0].provider", "gitlab")
    cfg = parse(raw)  # the value is not read while parsing
    with pytest.raises(ConfigError) as info:
        read_secrets(cfg)
    assert info.value.problems == ["repositories[0].webhook_secrets[0]: env:CFG_TEST_SECRET: "
                                   "a whsec_ signing token must be whsec_ followed by base64"]


def test_gitlab_signing_token_in_base64_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_TEST_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    read_secrets(parse(mutate("repositories[0].provider", "gitlab")))


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


def test_check_config_needs_no_secret() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "GITHUB_WEBHOOK_SECRET"}
    done = run_cli("check-config", "--config", "config/example.yaml", env=env)
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


def test_check_config_refuses_a_malformed_launcher_region(tmp_path: Path) -> None:
    """The region names the console links' host: a typo would fail every status write."""
    import os

    raw = mutate("launcher.region", "us-easst-1x")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = run_cli("check-config", "--config", str(path), env=dict(os.environ))
    assert done.returncode == 2
    assert "launcher.region: must be an AWS region name like eu-west-1" in done.stderr


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


def test_commands_that_need_no_secret_run_without_one_and_serve_refuses_to(tmp_path: Path) -> None:
    import os

    raw = mutate("repositories[0].webhook_secrets", ["env:CFG_TEST_UNSET"])
    raw["repositories"][0]["api_token"] = f"file:{tmp_path / 'no-token'}"
    raw["state"]["path"] = str(tmp_path / "state.db")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CFG_TEST_")}
    for command in (["check-config"], ["state", "init"], ["state"]):
        done = run_cli(*command, "--config", str(path), env=env)
        assert (done.returncode, done.stderr) == (0, ""), command
    done = run_cli("history", "--pipeline", "acme-utilities-deploy", "--config", str(path), env=env)
    assert (done.returncode, done.stderr) == (1, "no decision recorded for that\n")
    done = run_cli("serve", "--config", str(path), "--bind", "127.0.0.1:0", env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        "  repositories[0].webhook_secrets[0]: env:CFG_TEST_UNSET: environment variable CFG_TEST_UNSET "
        "is not set",
        f"  repositories[0].api_token: file:{tmp_path / 'no-token'}: cannot read file (No such file or directory)"]

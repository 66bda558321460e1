"""Configuration: YAML validated once at start-up into immutable objects.

``load(path)`` returns a :class:`Config` or raises :class:`~receiver.errors.ConfigError`
whose ``problems`` list every error, each starting with the key path
(``repositories[0].pipelines[1].paths[2]``) and saying what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from receiver import modules as modules_mod
from receiver.errors import ConfigError
from receiver.matcher import GlobError, PathRules
from receiver.modules import ModuleMap
from receiver.secrets import ALLOWED_FORMS, SecretError, SecretRef, resolve

PROVIDERS = ("github", "gitlab", "bitbucket", "bitbucket-server")
DEFAULT_API_URLS = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com",
    "bitbucket": "https://api.bitbucket.org",
}
VARIABLE_FIELDS = ("commit", "short_commit", "branch", "repository", "changed_paths", "module")
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9.@_-]{1,100}$")
_VARIABLE_NAME = re.compile(r"^[A-Za-z0-9@\-_]{1,128}$")
_ACTION_NAME = re.compile(r"^[A-Za-z0-9.@_-]{1,100}$")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where baselines, deliveries and start records live."""

    backend: str = "sqlite"
    path: str = "var/receiver.db"
    table: str = "webhook-receiver"
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class LauncherConfig:
    """How pipelines are started: ``codepipeline`` (boto3) or ``log`` (dry run)."""

    backend: str = "codepipeline"
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessingConfig:
    """Background processing. Seconds throughout."""

    lease_seconds: float = 120.0
    poll_seconds: float = 5.0
    max_attempts: int = 6
    retry_backoff_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class OutcomesConfig:
    """How execution outcomes are learnt: EventBridge events (with ``api_keys``) and a poll
    every ``poll_seconds`` of executions with no final status."""

    api_keys: tuple[SecretRef, ...] = ()
    poll_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits applied to every webhook request before any work."""

    max_body_bytes: int = 25 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GitHubAppConfig:
    """GitHub App credentials: the JWT issuer (app id or client id), key and installation."""

    issuer: str
    private_key: SecretRef
    installation_id: int


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """One CodePipeline pipeline and the rules that select it."""

    name: str
    paths: PathRules
    tags: PathRules | None = None
    variables: tuple[tuple[str, str], ...] = ()
    source_action: str | None = None
    # a template's concrete pipeline: its module value (the name is then the concrete one)
    module: str | None = None


@dataclass(frozen=True, slots=True)
class ModuleMapConfig:
    """A repository-side module map: the file read at each pushed head, and the glob
    patterns every pipeline name in it must match."""

    path: str
    allow: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """One watched repository. ``key`` (provider/name) identifies it in state and logs."""

    provider: str
    name: str
    api_url: str
    webhook_secrets: tuple[SecretRef, ...]
    api_token: SecretRef | None
    github_app: GitHubAppConfig | None
    branches: PathRules
    pipelines: tuple[PipelineConfig, ...]
    new_branch: str = "all"
    max_compare_commits: int = 250
    request_timeout_seconds: float = 10.0
    max_rate_limit_wait_seconds: float = 60.0
    api_username: str | None = None
    require_signed: bool = False
    signature_tolerance_seconds: float = 300.0
    baseline: str = "succeeded"
    commit_status: bool = False
    # templates, modules and dependencies of ``pipelines`` (None: each pipeline's own paths)
    modules: ModuleMap | None = None
    module_map: ModuleMapConfig | None = None

    @property
    def key(self) -> str:
        """Stable identity used as the state key: ``provider:name``."""
        return f"{self.provider}:{self.name}"

    def watches_branch(self, branch: str) -> bool:
        """Whether pushes to ``branch`` are evaluated."""
        return self.branches.matching_include(branch) is not None

    def module_selectors(self) -> ModuleMap:
        """The selectors of the configured pipelines (see receiver.modules)."""
        return self.modules or ModuleMap.plain({p.name: p.paths for p in self.pipelines})

    def tag_pipelines(self, tag: str) -> tuple[PipelineConfig, ...]:
        """Pipelines whose ``tags`` rule selects ``tag``."""
        return tuple(p for p in self.pipelines if p.tags and p.tags.matching_include(tag))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    repositories: tuple[RepositoryConfig, ...]
    state: StateConfig = field(default_factory=StateConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    outcomes: OutcomesConfig = field(default_factory=OutcomesConfig)
    source: str = ""
    # both looked up on every webhook request: indexed once, not scanned per request
    _by_name: Mapping[tuple[str, str], RepositoryConfig] = field(
        init=False, repr=False, compare=False)
    _by_provider: Mapping[str, tuple[RepositoryConfig, ...]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_provider: dict[str, tuple[RepositoryConfig, ...]] = {}
        for repo in self.repositories:
            by_provider[repo.provider] = (*by_provider.get(repo.provider, ()), repo)
        # the first of two names that fold alike wins, as the scan this replaces did
        # (validation refuses such a pair anyway)
        by_name = {(r.provider, r.name.casefold()): r for r in reversed(self.repositories)}
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_provider", by_provider)

    def repository(self, provider: str, name: str) -> RepositoryConfig | None:
        """The configured repository, or None. GitHub/Bitbucket names compare case-insensitively."""
        return self._by_name.get((provider, name.casefold()))

    def repository_by_key(self, key: str) -> RepositoryConfig | None:
        """The repository whose state ``key`` (provider:name) this is, or None."""
        provider, _, name = key.partition(":")
        return self.repository(provider, name)

    def repositories_for(self, provider: str) -> tuple[RepositoryConfig, ...]:
        """Every repository configured for ``provider``, in configuration order."""
        return self._by_provider.get(provider, ())


class _Checker:
    """Collects problems with their key paths instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping with keys {', '.join(allowed)}")
            return {}
        for key in value:
            if key not in allowed:
                self.error(f"{path}.{key}" if path else str(key),
                           f"unknown key; allowed: {', '.join(allowed)}")
        return value

    def choice(self, raw: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...],
               default: str) -> str:
        value = raw.get(key, default)
        if value not in allowed:
            self.error(f"{path}.{key}", f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
            return default
        return str(value)

    def typed(self, raw: Mapping[str, Any], key: str, path: str, kind: Callable[[Any], T],
              default: T, check: Callable[[T], bool] = lambda _v: True, what: str = "") -> T:
        if key not in raw or raw[key] is None:
            return default
        value = raw[key]
        ok_type = {str: isinstance(value, str),
                   int: isinstance(value, int) and not isinstance(value, bool),
                   float: isinstance(value, int | float) and not isinstance(value, bool)}
        if not ok_type.get(kind, True):  # type: ignore[call-overload]
            self.error(f"{path}.{key}", f"must be {what or kind.__name__}")
            return default
        converted = kind(value)
        if not check(converted):
            self.error(f"{path}.{key}", f"must be {what}")
            return default
        return converted

    def optional_str(self, raw: Mapping[str, Any], key: str, path: str) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.error(f"{path}.{key}", "must be a non-empty string")
            return None
        return value

    def secret(self, value: Any, path: str) -> SecretRef | None:
        try:
            return resolve(value)
        except SecretError as exc:
            self.error(path, str(exc))
            return None

    def str_list(self, value: Any, path: str) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(path, "must be a list of strings")
            return None
        return list(value)

    def rules(self, value: Any, path: str, *, required: bool) -> PathRules | None:
        globs = self.str_list(value, path)
        if globs is None:
            if required:
                self.error(path, "is required: a list of globs ('**' crosses folders, "
                           "'!' excludes)")
            return None
        if not globs:
            self.error(path, "must not be empty: give at least one glob")
            return None
        for i, glob in enumerate(globs):
            body = glob[1:] if glob.startswith("!") else glob
            try:
                PathRules.compile([body])
            except GlobError as exc:
                self.error(f"{path}[{i}]", str(exc))
                return None
        try:
            return PathRules.compile(globs)
        except GlobError as exc:
            self.error(path, str(exc))
            return None


_TOP = ("state", "launcher", "processing", "server", "outcomes", "repositories")
_REPO = ("provider", "name", "api_url", "webhook_secrets", "api_token", "github_app", "branches",
         "pipelines", "new_branch", "max_compare_commits", "request_timeout_seconds",
         "max_rate_limit_wait_seconds", "api_username", "require_signed",
         "signature_tolerance_seconds", "baseline", "commit_status", "modules", "module_map")
_PIPELINE = ("name", "paths", "tags", "variables", "source_action", "depends_on")


def parse(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document. Raises ConfigError listing every problem."""
    c = _Checker()
    top = c.mapping(raw, "", _TOP)
    if raw is None or not isinstance(raw, dict):
        raise ConfigError([f"{source}: must be a YAML mapping with keys {', '.join(_TOP)}"])

    s = c.mapping(top.get("state"), "state", ("backend", "path", "table", "region", "endpoint_url"))
    state = StateConfig(
        backend=c.choice(s, "backend", "state", ("sqlite", "dynamodb"), "sqlite"),
        path=c.typed(s, "path", "state", str, "var/receiver.db", bool, "a non-empty path"),
        table=c.typed(s, "table", "state", str, "webhook-receiver", bool, "a table name"),
        region=c.optional_str(s, "region", "state"),
        endpoint_url=c.optional_str(s, "endpoint_url", "state"),
    )
    lr = c.mapping(top.get("launcher"), "launcher", ("backend", "region", "endpoint_url"))
    launcher = LauncherConfig(
        backend=c.choice(lr, "backend", "launcher", ("codepipeline", "log"), "codepipeline"),
        region=c.optional_str(lr, "region", "launcher"),
        endpoint_url=c.optional_str(lr, "endpoint_url", "launcher"),
    )
    pr = c.mapping(top.get("processing"), "processing",
                   ("lease_seconds", "poll_seconds", "max_attempts", "retry_backoff_seconds"))
    positive = "a number above 0"
    processing = ProcessingConfig(
        lease_seconds=c.typed(pr, "lease_seconds", "processing", float, 120.0, lambda v: v > 0,
                              positive),
        poll_seconds=c.typed(pr, "poll_seconds", "processing", float, 5.0, lambda v: v > 0,
                             positive),
        max_attempts=c.typed(pr, "max_attempts", "processing", int, 6, lambda v: v >= 1,
                             "a whole number of at least 1"),
        retry_backoff_seconds=c.typed(pr, "retry_backoff_seconds", "processing", float, 10.0,
                                      lambda v: v >= 0, "a number of at least 0"),
    )
    sv = c.mapping(top.get("server"), "server", ("max_body_bytes",))
    server = ServerConfig(
        max_body_bytes=c.typed(sv, "max_body_bytes", "server", int, 25 * 1024 * 1024,
                               lambda v: v > 0, "a whole number of bytes above 0"),
    )

    orw = c.mapping(top.get("outcomes"), "outcomes", ("api_keys", "poll_seconds"))
    keys_raw = orw.get("api_keys")
    keys: list[SecretRef] = []
    if keys_raw is not None:
        if not isinstance(keys_raw, list) or not keys_raw:
            c.error("outcomes.api_keys", f"must be a list of secret references ({ALLOWED_FORMS})")
        else:
            keys = [k for j, ref in enumerate(keys_raw)
                    if (k := c.secret(ref, f"outcomes.api_keys[{j}]")) is not None]
    outcomes = OutcomesConfig(
        api_keys=tuple(keys),
        poll_seconds=c.typed(orw, "poll_seconds", "outcomes", float, 60.0,
                             lambda v: 1 <= v <= 3600, "a number of seconds from 1 to 3600"),
    )

    repos_raw = top.get("repositories")
    repos: list[RepositoryConfig] = []
    if not isinstance(repos_raw, list) or not repos_raw:
        c.error("repositories", "is required: a non-empty list of repositories")
        repos_raw = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(repos_raw):
        repo = _repository(c, item, f"repositories[{i}]")
        if repo is None:
            continue
        ident = (repo.provider, repo.name.casefold())
        if ident in seen:
            c.error(f"repositories[{i}].name", f"{repo.provider} repository {repo.name!r} is "
                    "configured twice")
        seen.add(ident)
        repos.append(repo)
    if c.problems:
        raise ConfigError(c.problems)
    return Config(repositories=tuple(repos), state=state, launcher=launcher,
                  processing=processing, server=server, outcomes=outcomes, source=source)


def _repository(c: _Checker, item: Any, path: str) -> RepositoryConfig | None:
    before = len(c.problems)
    r = c.mapping(item, path, _REPO)
    if not r:
        if not c.problems[before:]:
            c.error(path, "must be a mapping with provider, name, webhook_secrets, branches, "
                    "pipelines")
        return None
    provider = r.get("provider")
    if provider not in PROVIDERS:
        c.error(f"{path}.provider", f"{provider!r} is not allowed; allowed: {', '.join(PROVIDERS)}")
        provider = None
    name = r.get("name")
    if not isinstance(name, str) or name.count("/") < 1 or \
            any(part in ("", ".", "..") for part in name.split("/")):
        c.error(f"{path}.name", "must be the repository path, like owner/repo")
    api_url = r.get("api_url", DEFAULT_API_URLS.get(str(provider)))
    if api_url is None:
        c.error(f"{path}.api_url", f"is required for provider {provider}")
    elif not isinstance(api_url, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", api_url):
        c.error(f"{path}.api_url", "must be an http(s) URL like https://api.github.com")
    secrets_raw = r.get("webhook_secrets")
    if isinstance(secrets_raw, str):
        secrets_raw = [secrets_raw]
    secrets: list[SecretRef] = []
    if not isinstance(secrets_raw, list) or not secrets_raw:
        c.error(f"{path}.webhook_secrets", "is required: one or more secret references "
                f"({ALLOWED_FORMS}); any match verifies")
    else:
        for j, ref in enumerate(secrets_raw):
            sec = c.secret(ref, f"{path}.webhook_secrets[{j}]")
            if sec is not None:
                if provider == "gitlab" and sec.value().startswith("whsec_") and \
                        not _is_signing_token(sec.value()):
                    c.error(f"{path}.webhook_secrets[{j}]", f"{sec.ref}: a whsec_ signing token "
                            "must be whsec_ followed by base64")
                secrets.append(sec)
    token = c.secret(r["api_token"], f"{path}.api_token") if r.get("api_token") is not None \
        else None
    app = _github_app(c, r.get("github_app"), f"{path}.github_app", provider)
    if token is not None and app is not None:
        c.error(f"{path}.github_app", "give either api_token or github_app, not both")
    branches = c.rules(r.get("branches"), f"{path}.branches", required=True)
    new_branch = c.choice(r, "new_branch", path, ("all", "none"), "all")
    max_commits = c.typed(r, "max_compare_commits", path, int, 250, lambda v: 1 <= v <= 10000,
                          "a whole number from 1 to 10000")
    timeout = c.typed(r, "request_timeout_seconds", path, float, 10.0, lambda v: 0 < v <= 120,
                      "a number of seconds above 0 and at most 120")
    max_wait = c.typed(r, "max_rate_limit_wait_seconds", path, float, 60.0,
                       lambda v: 0 <= v <= 3600, "a number of seconds from 0 to 3600")
    username = c.optional_str(r, "api_username", path)
    require_signed = r.get("require_signed", False)
    if not isinstance(require_signed, bool):
        c.error(f"{path}.require_signed", "must be true or false")
    elif require_signed and provider != "gitlab":
        c.error(f"{path}.require_signed", "is only for provider gitlab (signed webhooks)")
    tolerance = c.typed(r, "signature_tolerance_seconds", path, float, 300.0,
                        lambda v: 0 < v <= 3600, "a number of seconds above 0 and at most 3600")
    baseline = c.choice(r, "baseline", path, ("succeeded", "started"), "succeeded")
    commit_status = r.get("commit_status", False)
    if not isinstance(commit_status, bool):
        c.error(f"{path}.commit_status", "must be true or false")
    pipelines_raw = r.get("pipelines")
    if not isinstance(pipelines_raw, list) or not pipelines_raw:
        c.error(f"{path}.pipelines", "is required: a non-empty list of {name, paths}")
        pipelines_raw = []
    pipelines = _pipelines(c, pipelines_raw, path)
    module_map, problems = modules_mod.build(pipelines_raw, r.get("modules"), path=path)
    c.problems.extend(problems)
    map_source = _module_map(c, r.get("module_map"), f"{path}.module_map")
    if len(c.problems) > before or branches is None or provider is None:
        return None
    return RepositoryConfig(
        provider=provider, name=str(name), api_url=str(api_url).rstrip("/"),
        webhook_secrets=tuple(secrets), api_token=token, github_app=app, branches=branches,
        pipelines=tuple(pipelines), new_branch=new_branch, max_compare_commits=max_commits,
        request_timeout_seconds=timeout, max_rate_limit_wait_seconds=max_wait,
        api_username=username, require_signed=bool(require_signed),
        signature_tolerance_seconds=tolerance, baseline=baseline,
        commit_status=bool(commit_status), modules=module_map, module_map=map_source,
    )


def _pipelines(c: _Checker, raw: list[Any], path: str) -> list[PipelineConfig]:
    pipelines: list[PipelineConfig] = []
    names: set[str] = set()
    for j, p in enumerate(raw):
        pipe = _pipeline(c, p, _join(path, f"pipelines[{j}]"))
        if pipe is None:
            continue
        if pipe.name in names:
            c.error(_join(path, f"pipelines[{j}].name"), f"pipeline {pipe.name!r} is listed "
                    "twice")
        names.add(pipe.name)
        pipelines.append(pipe)
    return pipelines


def parse_pipelines(raw: list[Any], path: str = "") -> tuple[tuple[PipelineConfig, ...],
                                                               list[str]]:
    """The pipeline entries of a ``pipelines`` list (as in a repository), each problem's
    key path prefixed with ``path``; the entries' templates and dependencies are
    receiver.modules.build's."""
    c = _Checker()
    return tuple(_pipelines(c, raw, path)), c.problems


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _module_map(c: _Checker, raw: Any, path: str) -> ModuleMapConfig | None:
    if raw is None:
        return None
    m = c.mapping(raw, path, ("path", "allow"))
    file = m.get("path")
    if not isinstance(file, str) or not file or file.startswith("/") or \
            any(part in ("", ".", "..") for part in file.split("/")):
        c.error(f"{path}.path", "must be a repository-root-relative file path, like "
                ".webhook-receiver.yaml")
        return None
    allow = c.str_list(m.get("allow"), f"{path}.allow")
    if not allow:
        c.error(f"{path}.allow", "is required: glob patterns every pipeline name in the file "
                "must match, like acme-*")
        return None
    return ModuleMapConfig(path=file, allow=tuple(allow))


def _is_signing_token(value: str) -> bool:
    import base64
    import binascii

    try:
        return bool(base64.b64decode(value[len("whsec_"):], validate=True))
    except (binascii.Error, ValueError):
        return False


def _github_app(c: _Checker, raw: Any, path: str, provider: Any) -> GitHubAppConfig | None:
    if raw is None:
        return None
    a = c.mapping(raw, path, ("app_id", "client_id", "private_key", "installation_id"))
    if provider != "github":
        c.error(path, "is only for provider github")
        return None
    issuer = a.get("client_id", a.get("app_id"))
    if issuer is None or isinstance(issuer, bool) or not isinstance(issuer, str | int) or \
            ("client_id" in a and "app_id" in a):
        c.error(path, "needs exactly one of app_id or client_id")
    key = c.secret(a.get("private_key"), f"{path}.private_key")
    inst = a.get("installation_id")
    if not isinstance(inst, int) or isinstance(inst, bool) or inst <= 0:
        c.error(f"{path}.installation_id", "must be the installation's numeric id")
        return None
    if key is None or issuer is None:
        return None
    return GitHubAppConfig(issuer=str(issuer), private_key=key, installation_id=inst)


def _pipeline(c: _Checker, raw: Any, path: str) -> PipelineConfig | None:
    before = len(c.problems)
    p = c.mapping(raw, path, _PIPELINE)
    name = p.get("name")
    is_template = isinstance(name, str) and modules_mod.PLACEHOLDER in name
    if not isinstance(name, str) or \
            not _PIPELINE_NAME.match(name.replace(modules_mod.PLACEHOLDER, "m")):
        c.error(f"{path}.name", "must be a CodePipeline pipeline name (letters, digits, . @ - _; "
                "at most 100), or a template of one with {module}")
    # a template's paths as rules of every module: what its concrete pipelines may select
    globs = c.str_list(p.get("paths"), f"{path}.paths")
    paths = c.rules([modules_mod.any_module(g) for g in globs] if globs is not None else None,
                    f"{path}.paths", required=True)
    tags = c.rules(p.get("tags"), f"{path}.tags", required=False)
    if is_template and p.get("tags") is not None:
        c.error(f"{path}.tags", "is not for a template: a tag push has no changed paths to "
                "find modules in")
    variables: list[tuple[str, str]] = []
    vraw = p.get("variables")
    if vraw is not None:
        if not isinstance(vraw, dict):
            c.error(f"{path}.variables", "must map a pipeline variable name to a template")
        else:
            for vname, template in vraw.items():
                vpath = f"{path}.variables.{vname}"
                if not isinstance(vname, str) or not _VARIABLE_NAME.match(vname):
                    c.error(vpath, "is not a valid CodePipeline variable name")
                elif not isinstance(template, str):
                    c.error(vpath, "must be a string template")
                else:
                    fields = re.findall(r"{([^{}]*)}", template)
                    bad = [f for f in fields if f not in VARIABLE_FIELDS]
                    if "module" in fields and not is_template:
                        c.error(vpath, "{module} is only for a template pipeline (a name "
                                "with {module})")
                    elif bad:
                        c.error(vpath, f"unknown placeholder {{{bad[0]}}}; allowed: "
                                + ", ".join("{" + f + "}" for f in VARIABLE_FIELDS))
                    else:
                        variables.append((vname, template))
    action = p.get("source_action")
    if action is not None and (not isinstance(action, str) or not _ACTION_NAME.match(action)):
        c.error(f"{path}.source_action", "must be the name of the pipeline's source action")
    if len(c.problems) > before or paths is None:
        return None
    return PipelineConfig(name=str(name), paths=paths, tags=tags, variables=tuple(variables),
                          source_action=action)


def config_path(explicit: str | None) -> str:
    """The config file: ``--config``, else ``RECEIVER_CONFIG``. Raises ConfigError if neither."""
    chosen = explicit or os.environ.get("RECEIVER_CONFIG")
    if not chosen:
        raise ConfigError(["config: give --config FILE or set RECEIVER_CONFIG"])
    return chosen


def load(path: str) -> Config:
    """Read and validate the YAML file at ``path``. Raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML ({exc})"]) from None
    return parse(raw, source=path)

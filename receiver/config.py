"""Configuration: YAML validated once at start-up into immutable objects.

``load(path)`` returns a :class:`Config` or raises :class:`~receiver.errors.ConfigError`
whose ``problems`` list every error, each starting with the key path
(``repositories[0].pipelines[1].paths[2]``) and saying what is allowed.

The dataclasses below are the schema pydantic validates against, and the schema holds every
check: field validators for one value, model validators for what spans several (a
template's ``paths`` against its ``name``, a notification's one target, the graph of a
repository's pipelines and modules: :func:`with_graph`). A check that knows more than a
key path raises :func:`located` problems, so every error names its key. A repository's keys
are those of :class:`RepositoryConfig` plus the fields of its provider's ``Options`` class
(``providers.REGISTRY`` is the only list of providers; :func:`_repository` picks the class).
Secret references are checked for their form only; :func:`read_secrets` reads them, for the
commands that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    Protocol,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, core_schema

from receiver import modules as modules_mod
from receiver.errors import ConfigError, SecretError
from receiver.matcher import GlobError, NameRules, PathRules, check_glob
from receiver.modules import ModuleMap, Template
from receiver.secrets import Secret, SecretRef

VARIABLE_FIELDS = ("commit", "short_commit", "branch", "repository", "changed_paths", "module")
T = TypeVar("T")
# every schema class refuses keys it does not declare
FORBID = ConfigDict(extra="forbid")


def converted(shape: Any, convert: Callable[[Any], Any]) -> GetPydanticSchema:
    """Validate as ``shape`` (each error at its own location), then keep ``convert(value)``."""
    return GetPydanticSchema(lambda _source, handler: core_schema.no_info_after_validator_function(
        convert, handler.generate_schema(shape)))


def matching(regex: str, what: str) -> AfterValidator:
    """A string check: the whole value matches ``regex``, else "must be {what}"."""
    pattern = re.compile(regex)

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value
    return AfterValidator(check)


def _glob(raw: str, placeholder: bool = False) -> str:
    try:
        check_glob(raw, placeholder=placeholder)
    except GlobError as exc:
        raise ValueError(f"{raw!r}: {exc}") from None
    return raw


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # `branches: main` means [main]


# a list of globs ('**' crosses folders, '*' does not, '!' excludes), compiled once
Rules = Annotated[PathRules, converted(
    Annotated[list[Annotated[str, AfterValidator(_glob)]], Field(min_length=1)],
    PathRules.compile), BeforeValidator(_listed)]
# an AWS region's shape (eu-west-1, us-gov-west-1, ap-southeast-7): it names hosts (the
# console links, the endpoints), so nothing else may pass
REGION_PATTERN = r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}"
Region = Annotated[str, matching(REGION_PATTERN, "an AWS region name like eu-west-1")]
PositiveSeconds = Annotated[float, Field(gt=0, strict=True)]
Text = Annotated[str, Field(min_length=1)]
VariableName = Annotated[str, matching(r"[A-Za-z0-9@\-_]{1,128}", "a CodePipeline variable name")]
_Section = BeforeValidator(lambda value: {} if value is None else value)  # `state:` alone


def _template(template: str) -> str:
    bad = [f for f in re.findall(r"{([^{}]*)}", template) if f not in VARIABLE_FIELDS]
    if bad:
        raise ValueError(f"unknown placeholder {{{bad[0]}}}; allowed: "
                         + ", ".join("{" + f + "}" for f in VARIABLE_FIELDS))
    return template


def _reconcile_interval(seconds: float) -> float:
    if seconds != 0 and not 1 <= seconds <= 86400:
        raise ValueError("must be 0 (off) or a number of seconds from 1 to 86400")
    return seconds


def _pipeline_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.@_-]{1,100}", name.replace(modules_mod.PLACEHOLDER, "m")):
        raise ValueError("must be a CodePipeline pipeline name (letters, digits, . @ - _; at "
                         "most 100), or a template of one with {module}")
    return name


def _pipeline_glob(raw: str) -> str:
    return _glob(raw, placeholder=True)


def _module_name(name: str) -> str:
    if not modules_mod.is_name(name):
        raise ValueError("a module name is letters, digits, . @ - _ (at most 100)")
    return name


def _no_placeholder(globs: Any) -> Any:
    globs = _listed(globs)
    if isinstance(globs, list) and any(isinstance(g, str) and modules_mod.PLACEHOLDER in g
                                       for g in globs):
        raise ValueError(f"{modules_mod.PLACEHOLDER} is only for pipeline templates")
    return globs


MORE_PROBLEMS = "more_problems"  # the error type of "... and N more problems"
# a field the schema sets itself (after validation), which no document may give
COMPUTED: Mapping[str, bool] = {"computed": True}


def not_a_key(value: Any) -> Any:
    """A computed field's validator: given in a document, it is an unknown key."""
    if value is not None:
        raise PydanticCustomError("extra_forbidden", "Extra inputs are not permitted")
    return value


def schema_keys(shape: Any) -> tuple[str, ...]:
    """The keys a document may give for schema class ``shape``: its fields but the
    computed ones."""
    return tuple(f.name for f in dataclasses.fields(shape) if not f.metadata.get("computed"))


def located(title: str, problems: modules_mod.Problems,
            errors: Sequence[ErrorDetails] = ()) -> ValidationError:
    """``errors`` (pydantic's, kept as they are) and ``problems`` (each at a key path) as
    one ValidationError, for a model validator to raise: pydantic puts the locations of
    the model's own place in front of each."""
    details = [InitErrorDetails(type=PydanticCustomError(
        e["type"], "{message}", {**e.get("ctx", {}), "message": e["msg"]}),
        loc=e["loc"], input=e["input"]) for e in errors]
    details += [InitErrorDetails(type=PydanticCustomError("invalid", "{message}",
                                                          {"message": message}),
                                 loc=loc or (), input=None) for loc, message in problems.kept]
    if problems.more:  # kept as a count, which validated() adds to its own problems
        details.append(InitErrorDetails(type=PydanticCustomError(
            MORE_PROBLEMS, "{message}", {"message": problems.more_line, "more": problems.more}),
            loc=(), input=None))
    return ValidationError.from_exception_data(title, details)


def _repository_path(path: str) -> str:
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError("must be a repository-root-relative file path, like "
                         ".webhook-receiver.yaml")
    return path


def _repository_name(name: str) -> str:
    if name.count("/") < 1 or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError("must be the repository path, like owner/repo")
    return name


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where baselines, deliveries and start records live."""

    __pydantic_config__ = FORBID
    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    path: Text = "var/receiver.db"
    table: Annotated[str, matching(r"[a-zA-Z0-9_.-]{3,255}", "a DynamoDB table name: 3 to 255 "
                                   "letters, digits, '_', '.' or '-'")] = "webhook-receiver"
    region: Region | None = None
    endpoint_url: Text | None = None


@dataclass(frozen=True, slots=True)
class LauncherConfig:
    """How pipelines are started: ``codepipeline`` (boto3) or ``log`` (dry run)."""

    __pydantic_config__ = FORBID
    backend: Literal["codepipeline", "log"] = "codepipeline"
    region: Region | None = None
    endpoint_url: Text | None = None


@dataclass(frozen=True, slots=True)
class ProcessingConfig:
    """Background processing. Seconds throughout."""

    __pydantic_config__ = FORBID
    lease_seconds: PositiveSeconds = 120.0
    poll_seconds: PositiveSeconds = 5.0
    max_attempts: Annotated[int, Field(ge=1, strict=True)] = 6
    retry_backoff_seconds: Annotated[float, Field(ge=0, strict=True)] = 10.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits applied to every webhook request before any work."""

    __pydantic_config__ = FORBID
    max_body_bytes: Annotated[int, Field(gt=0, strict=True)] = 25 * 1024 * 1024
    # a request's headers and body arrive within this many seconds of its first byte, or it
    # is answered 408 (receiver/gunicorn_ext.py): the providers give up after about 10 s
    read_timeout_seconds: PositiveSeconds = 10.0


@dataclass(frozen=True, slots=True)
class GitConfig:
    """The ``diff: git`` strategy's mirrors: one bare, blobless clone per repository."""

    __pydantic_config__ = FORBID
    cache_dir: Text = "var/git"


@dataclass(frozen=True, slots=True)
class OutcomesConfig:
    """How execution outcomes are learnt: EventBridge events on ``/events/codepipeline``
    (verified by ``api_keys``) and a poll every ``poll_seconds`` of running executions."""

    __pydantic_config__ = FORBID
    api_keys: Annotated[tuple[Secret, ...], BeforeValidator(_listed)] = ()
    poll_seconds: Annotated[float, Field(ge=1, le=3600, strict=True)] = 60.0


# what a notification target can be told (receiver/notify.py builds each message)
NotifyEvent = Literal["push", "succeeded", "failed", "stopped", "missed", "invalid_map"]
NOTIFY_TARGETS = ("sns", "slack", "teams")


@dataclass(frozen=True, slots=True)
class NotificationConfig:
    """One notification target and what it is told.

    Exactly one of ``sns`` (a topic ARN: Amazon Q Developer's custom-notification JSON),
    ``slack`` or ``teams`` (a secret reference to an incoming-webhook / Workflows webhook
    URL). ``events`` picks the messages; ``repositories`` (globs over the configured
    repository names, ``!`` excludes) narrows them; None: every repository.
    """

    __pydantic_config__ = FORBID
    events: Annotated[tuple[NotifyEvent, ...], BeforeValidator(_listed), Field(min_length=1)]
    sns: Annotated[str, matching(
        r"arn:aws[a-z-]*:sns:[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}:[0-9]{12}:[A-Za-z0-9_-]{1,256}",
        "an SNS topic ARN like arn:aws:sns:us-east-1:123456789012:deploys")] | None = None
    slack: Secret | None = None
    teams: Secret | None = None
    repositories: Rules | None = None

    @property
    def kind(self) -> Literal["sns", "slack", "teams"]:
        """Which target this is."""
        return "sns" if self.sns is not None else "slack" if self.slack is not None else "teams"

    @property
    def target(self) -> str:
        """The target's name in tasks, pacing and log lines: ``sns:<topic ARN>``, or
        ``slack:``/``teams:`` and the secret *reference* (never the URL)."""
        if self.sns is not None:
            return f"sns:{self.sns}"
        secret = self.slack if self.slack is not None else self.teams
        assert secret is not None  # parse() requires exactly one target
        return f"{self.kind}:{secret.ref}"

    def covers(self, repository: str) -> bool:
        """Whether messages about ``repository`` (its configured name) go here."""
        return self.repositories is None or self.repositories.matching_include(repository) \
            is not None

    @model_validator(mode="after")
    def _one_target(self) -> NotificationConfig:
        given = [k for k in NOTIFY_TARGETS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one target of {', '.join(NOTIFY_TARGETS)}"
                             + (f" (has {', '.join(given)})" if given else ""))
        return self


def _targets_once(entries: tuple[NotificationConfig, ...]) -> tuple[NotificationConfig, ...]:
    """Each target once: its events are listed in one entry (a second would send twice)."""
    seen: dict[str, int] = {}
    problems = modules_mod.Problems()
    for i, entry in enumerate(entries):
        if entry.target in seen:
            problems.add((i,), f"the same target as notifications[{seen[entry.target]}]; "
                         "list its events once")
        else:
            seen[entry.target] = i
    if problems:
        raise located("notifications", problems)
    return entries


def _no_on_key(item: Any) -> Any:
    if isinstance(item, dict) and True in item:
        raise ValueError("a key reads as true (YAML 1.1 reads `on` so): name the messages "
                         "with `events`")
    return item


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a chat webhook's URL, or None: it must be an absolute ``https``
    URL (``http`` only to a loopback address: test stand-ins). The answer never quotes the
    URL, which is a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a malformed port raises here
    except ValueError:
        return "is not a URL"
    if not host or parts.scheme not in ("http", "https"):
        return "must be an absolute https URL"
    if parts.scheme == "https" or host == "localhost":
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return None if loopback else "must be an https URL (http only to a loopback address)"
ALB_PUBLIC_KEY_URL = "https://public-keys.auth.elb.{region}.amazonaws.com/{kid}"


def _public_key_url(template: str) -> str:
    fields = re.findall(r"{([^{}]*)}", template)
    if "kid" not in fields or set(fields) - {"region", "kid"}:
        raise ValueError("must be a URL template with {kid} (and optionally {region}), "
                         f"like {ALB_PUBLIC_KEY_URL}")
    parts = urlsplit(template.replace("{region}", "r").replace("{kid}", "k"))
    # the key that decides who may read the page: fetched over TLS unless from this host
    if not parts.hostname or (parts.scheme != "https" and not (
            parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"))):
        raise ValueError("must be an https URL (http only on a loopback address)")
    return template


@dataclass(frozen=True, slots=True)
class UiBasicConfig:
    """HTTP Basic users of the status page."""

    __pydantic_config__ = FORBID
    # each value is "user:password"
    users: Annotated[tuple[Secret, ...], BeforeValidator(_listed), Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class UiConfig:
    """The read-only status page under ``/ui/`` (receiver/ui/) and who may read it."""

    __pydantic_config__ = FORBID
    auth: Literal["alb-oidc", "basic", "none"]
    # alb-oidc: the load balancer whose signature (the JWT header's signer) is accepted
    alb_arn: Annotated[str, matching(
        r"arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:loadbalancer/app/[^/\s]+/"
        r"[0-9a-f]+", "an Application Load Balancer ARN like arn:aws:elasticloadbalancing:"
        "us-east-1:123456789012:loadbalancer/app/receiver/50dc6c495c0c9188")] | None = None
    basic: UiBasicConfig | None = None
    public_key_url: Annotated[str, AfterValidator(_public_key_url)] = ALB_PUBLIC_KEY_URL

    @model_validator(mode="after")
    def _auth_keys(self) -> UiConfig:
        """Each ``auth`` needs its own key, and only its own."""
        problems = modules_mod.Problems()
        for key, auth in (("alb_arn", "alb-oidc"), ("basic", "basic")):
            given = getattr(self, key) is not None
            if self.auth == auth and not given:
                problems.add((key,), f"is required with auth: {auth}")
            elif self.auth != auth and given:
                problems.add((key,), f"is only for auth: {auth}")
        if problems:
            raise located("ui", problems)
        return self


def _of_a_template(info: ValidationInfo) -> bool:
    """Whether the pipeline being validated is a ``{module}`` template (its ``name``, which
    is validated first; an invalid name is reported on its own)."""
    return modules_mod.PLACEHOLDER in str(info.data.get("name", ""))


def _template_only(value: Any, info: ValidationInfo) -> Any:
    """``{module}`` in a value (a variable, ``validate``) comes with a template's name."""
    if isinstance(value, str) and modules_mod.PLACEHOLDER in value and \
            not _of_a_template(info):
        raise ValueError("{module} is only for a template pipeline (a name with {module})")
    return value


def _no_template_tags(tags: Any, info: ValidationInfo) -> Any:
    if tags is not None and _of_a_template(info):
        raise ValueError("is not for a template: a tag push has no changed paths to find "
                         "modules in")
    return tags


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """One CodePipeline pipeline and the rules that select it. Every check is the schema's
    own: field validators, then :meth:`_compiled`, which checks ``paths`` against ``name``
    (``{module}`` in both makes a template) and sets ``rules``."""

    __pydantic_config__ = FORBID
    name: Annotated[str, AfterValidator(_pipeline_name)]
    # the globs as written ('!' excludes; a template's includes hold {module}): see `rules`
    paths: Annotated[tuple[Annotated[str, AfterValidator(_pipeline_glob)], ...],
                     BeforeValidator(_listed), Field(min_length=1)]
    tags: Annotated[Rules | None, AfterValidator(_no_template_tags)] = None
    # a mapping in YAML: pipeline variable name -> template
    variables: Annotated[tuple[tuple[str, str], ...], converted(dict[
        VariableName, Annotated[str, AfterValidator(_template),
                                AfterValidator(_template_only)]],
        lambda d: tuple(d.items()))] = ()
    source_action: Annotated[str, matching(r"[A-Za-z0-9.@_-]{1,100}", "the name of the "
                                           "pipeline's source action")] | None = None
    # modules or pipelines whose paths also select this one (receiver/modules.py)
    depends_on: Annotated[tuple[Text, ...], BeforeValidator(_listed)] = ()
    # the pipeline that validates a pull request touching this one's modules (a template
    # may use {module}); receiver/validation.py
    validate: Annotated[str, AfterValidator(_pipeline_name),
                        AfterValidator(_template_only)] | None = None
    # a template's concrete pipeline: its module value, set by receiver/module_map.py
    module: Annotated[str | None, AfterValidator(not_a_key)] = field(
        default=None, metadata=COMPUTED)
    # `paths` compiled: a Template when the name has {module}, set by _compiled
    rules: Annotated[Any, AfterValidator(not_a_key)] = field(
        default=None, repr=False, compare=False, metadata=COMPUTED)

    @model_validator(mode="after")
    def _compiled(self) -> PipelineConfig:
        in_name = modules_mod.PLACEHOLDER in self.name
        in_paths = any(modules_mod.PLACEHOLDER in g for g in self.paths)
        found = modules_mod.Problems()
        rules: modules_mod.Rules | None = None
        if in_name != in_paths:
            where = "name but not in its paths" if in_name else "paths but not in its name"
            found.add(("name" if in_name else "paths",), f"{modules_mod.PLACEHOLDER} is in "
                      f"the {where}; a template needs it in both")
        else:
            try:
                rules = Template.compile(self.name, self.paths) if in_name else \
                    PathRules.compile(self.paths)
            except GlobError as exc:
                found.add(("paths",), str(exc))
        if rules is None:
            raise located("pipeline", found)
        return dataclasses.replace(self, rules=rules)

    def validate_name(self) -> str | None:
        """The validate pipeline of this (concrete) pipeline: ``validate`` with a
        template's ``{module}`` filled in; None when it has none."""
        if self.validate is None or self.module is None:
            return self.validate
        return self.validate.replace(modules_mod.PLACEHOLDER, self.module)


def _name_glob(pattern: str) -> str:
    try:
        NameRules.compile([pattern])
    except GlobError as exc:
        raise ValueError(str(exc)) from None
    return pattern


def _some_allowed(allow: tuple[str, ...]) -> tuple[str, ...]:
    if not allow:
        raise ValueError("is required: glob patterns every pipeline name in the file must "
                         "match, like acme-*")
    return allow


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    """A module (``modules: {NAME: {paths, depends_on}}``): a named group of paths that
    starts nothing; a pipeline depending on it is selected by its paths too."""

    __pydantic_config__ = FORBID
    paths: Annotated[Rules, BeforeValidator(_no_placeholder)]
    # modules or pipelines whose paths also select what depends on this one
    depends_on: Annotated[tuple[Text, ...], BeforeValidator(_listed)] = ()


# the `modules` section, in the service configuration or a module map file
Modules = Annotated[dict[Annotated[str, AfterValidator(_module_name)], ModuleConfig],
                    BeforeValidator(lambda value: {} if value is None else value)]


def _named_once(pipelines: tuple[PipelineConfig, ...]) -> tuple[PipelineConfig, ...]:
    """Each pipeline name once: a second entry would start, and move the baseline of, the
    first's pipeline. Every repeat is an error at its own ``[j].name``."""
    seen: set[str] = set()
    problems = modules_mod.Problems()
    for j, pipeline in enumerate(pipelines):
        if pipeline.name in seen:
            problems.add((j, "name"), f"pipeline {pipeline.name!r} is listed twice")
        seen.add(pipeline.name)
    if problems:
        raise located("pipelines", problems)
    return pipelines


# a pipelines list, in the service configuration or a module map file
Pipelines = Annotated[tuple[PipelineConfig, ...], AfterValidator(_named_once)]


class GraphCheck(Protocol):
    """What a document's pipelines and modules make together (receiver.modules.build,
    and a map file's policy): the graph, or None with ``problems`` added."""

    def __call__(self, pipelines: Sequence[PipelineConfig], modules: Mapping[str, ModuleConfig],
                 unchecked: frozenset[str], problems: modules_mod.Problems
                 ) -> ModuleMap | None: ...


def with_graph(data: Any, handler: Callable[[Any], Any], title: str,
               check: GraphCheck) -> Any:
    """A wrap model validator's body for a document with ``pipelines``, ``modules`` and
    ``graph`` (a repository, a map file): validate its fields (``handler``), then set
    ``graph`` to what ``check`` makes of them. When some entries are invalid, ``check``
    still looks at the others (``unchecked``: the invalid ones' names, which
    ``depends_on`` may name), so every error is reported at once."""
    try:
        value = handler(data)
    except ValidationError as exc:
        errors = exc.errors()
        raise located(title, _graph_of_valid(data, errors, check), errors) from None
    problems = modules_mod.Problems()
    graph = check(value.pipelines, value.modules, frozenset(), problems)
    if graph is None or problems:
        raise located(title, problems)
    return dataclasses.replace(value, graph=graph)


def _graph_of_valid(data: Any, errors: Sequence[ErrorDetails],
                    check: GraphCheck) -> modules_mod.Problems:
    """The problems ``check`` finds among the entries of ``data`` that ``errors`` say
    nothing about, at the entries' own key paths (none when a whole section is wrong:
    then no entry in it can be trusted)."""
    found = modules_mod.Problems()
    bad = _invalid_entries(errors)
    if not isinstance(data, dict) or bad is None:
        return found
    unchecked: set[str] = set()
    pipelines: dict[int, PipelineConfig] = {}  # by the document's index
    for i, raw in enumerate(data.get("pipelines") or ()):
        pipeline = None if ("pipelines", i) in bad else validated(PipelineConfig, raw, "", [])
        if pipeline is not None:
            pipelines[i] = pipeline
        elif isinstance(raw, dict) and isinstance(raw.get("name"), str):
            unchecked.add(raw["name"])
    modules: dict[str, ModuleConfig] = {}
    for name, raw in (data.get("modules") or {}).items():
        module = None if ("modules", name) in bad else validated(ModuleConfig, raw, "", [])
        if module is not None:
            modules[name] = module
        else:
            unchecked.add(str(name))
    at = list(pipelines)  # check numbers the valid pipelines from 0
    check(list(pipelines.values()), modules, frozenset(unchecked), found)
    found.kept = [(("pipelines", at[loc[1]], *loc[2:]) if loc and loc[0] == "pipelines"
                   and len(loc) > 1 and isinstance(loc[1], int) else loc, message)
                  for loc, message in found.kept]
    return found


def _invalid_entries(errors: Sequence[ErrorDetails]) -> set[tuple[Any, ...]] | None:
    """The (section, index or name) of each pipeline and module ``errors`` are about, or
    None when one is about a whole section."""
    bad: set[tuple[Any, ...]] = set()
    for error in errors:
        loc = error["loc"]
        if not loc or loc[0] in ("pipelines", "modules"):
            if len(loc) < 2:
                return None
            bad.add(tuple(loc[:2]))
    return bad


def _configured_graph(pipelines: Sequence[PipelineConfig], modules: Mapping[str, ModuleConfig],
                      unchecked: frozenset[str], problems: modules_mod.Problems
                      ) -> ModuleMap | None:
    return modules_mod.build(pipelines, modules, unchecked=unchecked, problems=problems)[0]


@dataclass(frozen=True, slots=True)
class ModuleMapConfig:
    """A repository-side module map: the file read at each pushed head, the glob patterns
    every pipeline name in it (each concrete name of its templates too) must match, and
    what its pipelines may pass to CodePipeline besides the commit."""

    __pydantic_config__ = FORBID
    path: Annotated[str, AfterValidator(_repository_path)]
    allow: Annotated[tuple[Annotated[str, AfterValidator(_name_glob)], ...],
                     BeforeValidator(_listed), AfterValidator(_some_allowed),
                     Field(validate_default=True)] = ()
    # the pipeline variables a map entry may set (none: a map entry's `variables` is an error)
    allow_variables: Annotated[tuple[VariableName, ...], BeforeValidator(_listed)] = ()
    # whether a map entry may name the source action the commit is given to
    allow_source_action: Annotated[bool, Field(strict=True)] = False

    @property
    def names(self) -> NameRules:
        """``allow`` compiled."""
        return NameRules.compile(self.allow)


@dataclass(frozen=True, slots=True)
class PullRequestsConfig:
    """Pull/merge request validation: the target branches whose requests are validated,
    and whether requests from forks and drafts are (receiver/validation.py)."""

    __pydantic_config__ = FORBID
    targets: Rules
    forks: Literal["deny", "allow"] = "deny"
    drafts: Annotated[bool, Field(strict=True)] = False

    def watches(self, branch: str) -> bool:
        """Whether requests into ``branch`` are validated."""
        return self.targets.matching_include(branch) is not None


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """One watched repository. ``key`` (provider/name) identifies it in state and logs.

    ``options`` is an instance of the provider's ``Options`` class: the keys only that
    provider has (read it with :meth:`options_as`).
    """

    __pydantic_config__ = FORBID
    provider: str
    name: Annotated[str, AfterValidator(_repository_name)]
    api_url: Annotated[str, matching(r"https?://[^/\s]+(/\S*)?", "an http(s) URL like "
                                     "https://api.github.com"), AfterValidator(
                                         lambda url: url.rstrip("/"))]
    webhook_secrets: Annotated[tuple[Secret, ...], BeforeValidator(_listed), Field(min_length=1)]
    branches: Rules
    pipelines: Annotated[Pipelines, Field(min_length=1)]
    api_token: Secret | None = None
    new_branch: Literal["all", "none"] = "all"
    request_timeout_seconds: Annotated[float, Field(gt=0, le=120, strict=True)] = 10.0
    max_rate_limit_wait_seconds: Annotated[float, Field(ge=0, le=3600, strict=True)] = 60.0
    # succeeded: a failed last start falls back to the deployed commit (receiver/outcomes.py)
    baseline: Literal["succeeded", "started"] = "succeeded"
    commit_status: Annotated[bool, Field(strict=True)] = False
    # where the changed paths come from: the provider's compare API, or a git mirror
    diff: Literal["api", "git"] = "api"
    git_url: Annotated[str, matching(r"https?://[^/\s]+/\S+", "an http(s) clone URL like "
                                     "https://github.com/acme/mono.git")] | None = None
    # read each watched branch's head this often, catching up pushes no webhook brought
    reconcile_seconds: Annotated[float, Field(strict=True), AfterValidator(
        _reconcile_interval)] = 300.0
    # a repository-side module map (pipelines and modules read at each pushed head)
    module_map: ModuleMapConfig | None = None
    # validate pull/merge requests into these targets (absent: their events are ignored)
    pull_requests: PullRequestsConfig | None = None
    # named path groups the pipelines' depends_on may name (receiver/modules.py)
    modules: Modules = field(default_factory=dict)
    # the provider's own keys, validated as its Options class by _repository
    options: Annotated[Any, AfterValidator(not_a_key)] = field(default=None,
                                                                metadata=COMPUTED)
    # the pipelines' selectors (templates, modules, dependencies), set by _graph
    graph: Annotated[Any, AfterValidator(not_a_key)] = field(
        default=None, repr=False, compare=False, metadata=COMPUTED)

    @model_validator(mode="wrap")
    @classmethod
    def _graph(cls, data: Any, handler: ModelWrapValidatorHandler[RepositoryConfig]
               ) -> RepositoryConfig:
        return cast(RepositoryConfig, with_graph(data, handler, "repository",
                                                 _configured_graph))

    @property
    def key(self) -> str:
        """Stable identity used as the state key: ``provider:name``."""
        return f"{self.provider}:{self.name}"

    def watches_branch(self, branch: str) -> bool:
        """Whether pushes to ``branch`` are evaluated."""
        return self.branches.matching_include(branch) is not None

    def module_selectors(self) -> ModuleMap:
        """The selectors of the configured pipelines (see receiver.modules); none for a
        repository made without validation."""
        return self.graph if self.graph is not None else ModuleMap({})

    def tag_pipelines(self, tag: str) -> tuple[PipelineConfig, ...]:
        """Pipelines whose ``tags`` rule selects ``tag``."""
        return tuple(p for p in self.pipelines if p.tags and p.tags.matching_include(tag))

    def options_as(self, kind: type[T]) -> T:
        """The provider options as ``kind`` (its defaults when none were given).

        Raises TypeError when they belong to another provider's options class."""
        if self.options is None:
            return kind()
        if not isinstance(self.options, kind):
            raise TypeError(f"{self.key}: options are {type(self.options).__name__}, "
                            f"not {kind.__name__}")
        return self.options


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    repositories: tuple[RepositoryConfig, ...]
    state: StateConfig = field(default_factory=StateConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    outcomes: OutcomesConfig = field(default_factory=OutcomesConfig)
    git: GitConfig = field(default_factory=GitConfig)
    notifications: tuple[NotificationConfig, ...] = ()
    ui: UiConfig | None = None  # None: no status page (/ui/ answers 404)
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
        """The repository whose state ``key`` (``provider:name``) this is, or None."""
        provider, _, name = key.partition(":")
        return self.repository(provider, name)

    def repositories_for(self, provider: str) -> tuple[RepositoryConfig, ...]:
        """Every repository configured for ``provider``, in configuration order."""
        return self._by_provider.get(provider, ())


_REPOSITORY_KEYS = schema_keys(RepositoryConfig)


def _repository(item: Any) -> RepositoryConfig:
    """One ``repositories`` entry (the schema's validator of each): its ``provider`` picks
    the ``Options`` class that provider's own keys are validated as; the other keys are a
    :class:`RepositoryConfig`, whose ``git_url`` the provider may derive."""
    cls = _provider_class(item)
    problems = modules_mod.Problems()
    options = _options(cls, item, problems)
    common = {k: v for k, v in item.items() if k in _REPOSITORY_KEYS}
    if cls.default_api_url is not None:
        common.setdefault("api_url", cls.default_api_url)
    try:
        repo = cast(RepositoryConfig, _adapter(RepositoryConfig).validate_python(common))
    except ValidationError as exc:
        raise located("repository", problems, exc.errors()) from None
    if repo.diff == "git" and repo.git_url is None:
        # the provider knows the clone URLs that follow from api_url and name
        repo = dataclasses.replace(repo, git_url=cls.git_url_for(repo.api_url, repo.name))
        if repo.git_url is None:
            problems.add(("git_url",), f"is required with diff: git for this {repo.provider} "
                         "api_url (its clone URL does not follow from it)")
    if problems:
        raise located("repository", problems)
    return dataclasses.replace(repo, options=options)


def _provider_class(item: Any) -> Any:
    """The provider class (``providers.REGISTRY``) a ``repositories`` entry names. Raises
    the one error there is when it names none: what else is allowed depends on it."""
    from providers import REGISTRY  # here, not at the top: providers import this module

    provider = item.get("provider") if isinstance(item, dict) else None
    cls = REGISTRY.get(provider) if isinstance(provider, str) else None
    if cls is not None:
        return cls
    problems = modules_mod.Problems()
    if not isinstance(item, dict):
        problems.add((), f"must be a mapping with keys {', '.join(_REPOSITORY_KEYS)}")
    else:
        problems.add(("provider",), ("is required" if provider is None else
                                     f"{provider!r} is not allowed")
                     + f"; allowed: {', '.join(sorted(REGISTRY))}")
    raise located("repository", problems)


def _options(cls: Any, item: dict[str, Any], problems: modules_mod.Problems) -> Any:
    """The entry's keys of provider ``cls`` as its ``Options``, or None with the problems
    added (a key neither the repository's nor the provider's among them)."""
    option_keys = schema_keys(cls.Options)
    for key in item:
        if key not in _REPOSITORY_KEYS and key not in option_keys:
            problems.add((key,), f"unknown key; allowed: {', '.join(_REPOSITORY_KEYS)}; "
                         f"options of provider {item['provider']}: "
                         f"{', '.join(option_keys) or 'none'}")
    try:  # options validators may look at the whole repository (api_token, github_app)
        return _adapter(cls.Options).validate_python(
            {k: v for k, v in item.items() if k in option_keys}, context={"repository": item})
    except ValidationError as exc:
        for error in exc.errors():
            message = _message(cls.Options, error)
            if message is not None:
                problems.add(_loc(error), message)
        return None


def _configured_once(repos: tuple[RepositoryConfig, ...]) -> tuple[RepositoryConfig, ...]:
    """Each repository once (GitHub's and Bitbucket's names compare case-insensitively):
    a second entry's pushes would never reach it."""
    seen: set[tuple[str, str]] = set()
    problems = modules_mod.Problems()
    for i, repo in enumerate(repos):
        key = (repo.provider, repo.name.casefold())
        if key in seen:
            problems.add((i, "name"), f"{repo.provider} repository {repo.name!r} is "
                         "configured twice")
        seen.add(key)
    if problems:
        raise located("repositories", problems)
    return repos


@dataclass(frozen=True, slots=True)
class _Document:
    __pydantic_config__ = FORBID
    repositories: Annotated[tuple[Annotated[RepositoryConfig, PlainValidator(_repository)],
                                  ...], Field(min_length=1), AfterValidator(_configured_once)]
    state: Annotated[StateConfig, _Section] = field(default_factory=StateConfig)
    launcher: Annotated[LauncherConfig, _Section] = field(default_factory=LauncherConfig)
    processing: Annotated[ProcessingConfig, _Section] = field(default_factory=ProcessingConfig)
    server: Annotated[ServerConfig, _Section] = field(default_factory=ServerConfig)
    outcomes: Annotated[OutcomesConfig, _Section] = field(default_factory=OutcomesConfig)
    git: Annotated[GitConfig, _Section] = field(default_factory=GitConfig)
    notifications: Annotated[tuple[Annotated[NotificationConfig, BeforeValidator(_no_on_key)],
                                   ...], BeforeValidator(lambda v: () if v is None else v),
                             AfterValidator(_targets_once)] = ()
    ui: UiConfig | None = None




def parse(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document. Raises ConfigError listing every problem."""
    keys = ", ".join(f.name for f in dataclasses.fields(_Document))
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: must be a YAML mapping with keys {keys}"])
    problems: list[str] = []
    doc = validated(_Document, raw, "", problems)
    if doc is None:
        raise ConfigError(problems)
    return Config(repositories=doc.repositories, state=doc.state, launcher=doc.launcher,
                  processing=doc.processing, server=doc.server, outcomes=doc.outcomes,
                  git=doc.git, notifications=doc.notifications, ui=doc.ui, source=source)


@functools.cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def validated(shape: type[T], raw: Any, path: str, problems: list[str] | modules_mod.Problems,
              context: dict[str, Any] | None = None) -> T | None:
    """``raw`` as ``shape``, or None with every error appended to ``problems`` (a
    :class:`~receiver.modules.Problems` also takes over the count of problems a model
    validator only counted)."""
    try:
        return cast(T, _adapter(cast(Any, shape)).validate_python(raw, context=context))
    except ValidationError as exc:
        for error in exc.errors():
            if error["type"] == MORE_PROBLEMS and isinstance(problems, modules_mod.Problems):
                problems.more += error["ctx"]["more"]
                continue
            line = _problem(shape, path, error)
            if line is not None:
                problems.append(line)
        return None


def _problem(shape: type[Any], path: str, error: Any) -> str | None:
    """One pydantic error as ``key.path: what is wrong; what is allowed`` (None: it only
    follows from errors reported inside the list it is about)."""
    message = _message(shape, error)
    if message is None:
        return None
    where = modules_mod.key_path(_loc(error), path)
    return f"{where}: {message}" if where else message


def _loc(error: ErrorDetails) -> modules_mod.Loc:
    """The key path of a pydantic error (a mapping's key is named once, not twice)."""
    return tuple(part for part in error["loc"] if part != "[key]")


def _message(shape: type[Any], error: ErrorDetails) -> str | None:
    """What a pydantic error about a document of ``shape`` says is wrong, and what is
    allowed (None: see :func:`_problem`)."""
    loc = list(_loc(error))
    kind, message = error["type"], str(error["msg"])
    if kind == "missing":
        message = "is required"
    elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
        message = f"unknown key; allowed: {', '.join(_keys(shape, loc[:-1]))}"
    elif kind in ("dataclass_type", "dataclass_exact_type"):
        message = f"must be a mapping with keys {', '.join(_keys(shape, loc))}"
    elif kind == "literal_error":
        expected = str(error["ctx"]["expected"]).replace("'", "").replace(" or ", ", ")
        message = f"{error['input']!r} is not allowed; allowed: {expected}"
    elif kind == "too_short":
        if error["input"]:  # every item is invalid, and each one says why
            return None
        message = "must not be empty"
    return message.removeprefix("Value error, ").replace("Input should be", "must be")


def _keys(shape: Any, loc: list[Any]) -> list[str]:
    """The keys of the schema class found at ``loc`` below ``shape`` (a class, or a type
    that holds one: ``Pipelines``)."""
    hint = shape
    for part in loc:
        hint = _below(hint, part)
    found = _dataclass_in(hint)
    return list(schema_keys(found)) if found is not None else []


def _below(hint: Any, part: str | int) -> Any:
    """The type at ``part`` of ``hint``: a class's field, a mapping's value (``part`` is
    its key), a list's item."""
    for inner in _alternatives(hint):
        if dataclasses.is_dataclass(inner):
            fields = get_type_hints(inner)
            if part in fields:
                return fields[part]
        elif get_origin(inner) is dict:
            return get_args(inner)[1]
        elif get_origin(inner) in (tuple, list):
            return get_args(inner)[0]
    return None


def _alternatives(hint: Any) -> list[Any]:
    """``hint`` without ``Annotated``, each member of a union on its own."""
    origin = get_origin(hint)
    if origin is Annotated:
        return _alternatives(get_args(hint)[0])
    if origin in (Union, UnionType):
        return [alt for arg in get_args(hint) for alt in _alternatives(arg)]
    return [hint]


def _dataclass_in(hint: Any) -> Any:
    return next((h for h in _alternatives(hint) if dataclasses.is_dataclass(h)), None)


def read_secrets(config: Config) -> None:
    """Read every secret reference now; ConfigError naming each unusable one by its key path.

    ``serve`` calls this before it starts: a service that cannot verify a delivery or call
    an API must not start. A provider may refuse a webhook secret's value
    (``webhook_secret_problem``, e.g. a GitLab ``whsec_`` token that is not base64).
    """
    from providers import REGISTRY

    problems: list[str] = []
    for path, secret in [*_secrets_in(config.outcomes, "outcomes"),
                         *_secrets_in(config.ui, "ui")]:
        try:
            secret.values()
        except SecretError as exc:
            problems.append(f"{path}: {exc}")
    for path, secret in _secrets_in(config.notifications, "notifications"):
        try:  # a chat webhook's URL: https, or a loopback address for tests
            refused = next(filter(None, map(webhook_url_problem, secret.values())), None)
        except SecretError as exc:
            problems.append(f"{path}: {exc}")
            continue
        if refused:
            problems.append(f"{path}: {secret.ref}: {refused}")
    for i, repo in enumerate(config.repositories):
        check = REGISTRY[repo.provider].webhook_secret_problem
        for path, secret in _secrets_in(repo, f"repositories[{i}]"):
            try:
                values = secret.values()
            except SecretError as exc:  # its message names the reference
                problems.append(f"{path}: {exc}")
                continue
            if any(s is secret for s in repo.webhook_secrets) and \
                    (refused := next(filter(None, map(check, values)), None)):
                problems.append(f"{path}: {secret.ref}: {refused}")
    if problems:
        raise ConfigError(problems)


def _secrets_in(value: Any, path: str) -> list[tuple[str, SecretRef]]:
    """Every secret reference in a configuration object, with its key path."""
    if isinstance(value, SecretRef):
        return [(path, value)]
    if isinstance(value, tuple):
        return [s for i, item in enumerate(value) for s in _secrets_in(item, f"{path}[{i}]")]
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return []
    # a provider's options are keys of the repository itself
    return [s for f in dataclasses.fields(value) for s in _secrets_in(
        getattr(value, f.name), path if f.name == "options" else f"{path}.{f.name}")]


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

"""The repository-side module map (``module_map: {path, allow, ...}``, DESIGN.md "Module map").

The file holds ``pipelines`` and ``modules`` in the configuration's schema. It is read at
every pushed head, validated (:func:`parse_file`, also behind ``check-config --module-map``)
and joined to the configured pipelines. The last valid file is kept in the state store, so
every worker and replica falls back to the same one when a head's file is invalid.

Whoever can push to the repository writes this file, so it is untrusted input (the trust
boundaries in docs/security.md): it is read only up to ``MAX_FILE_BYTES``, parsed as YAML
without anchors, aliases, merge keys or tags, held to the limits below before anything
else looks at it, and may name no pipeline the service configuration or another
repository's map names, nor set what the operator did not allow (``module_map.allow``,
``allow_variables``, ``allow_source_action``). Breaking any of that makes it invalid: the
last valid map is used, as for any other mistake.

Reading goes through a :class:`FileSource`: the provider's file API (:func:`provider_source`)
or, with ``diff: git``, the mirror (``GitMirror.file_content``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, cast

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from providers.base import MAX_FILE_BYTES, printable
from receiver.config import (
    COMPUTED,
    FORBID,
    ModuleConfig,
    ModuleMapConfig,
    Modules,
    PipelineConfig,
    Pipelines,
    RepositoryConfig,
    located,
    not_a_key,
    schema_keys,
    validated,
    with_graph,
)
from receiver.errors import FileTooLarge
from receiver.matcher import path_keys
from receiver.modules import PLACEHOLDER, Loc, ModuleMap, Problems, Template, build, clashes
from receiver.state.base import StateStore

CONFIG_STATUS = "webhook-receiver/config"  # the commit status an invalid file gets
_CACHED = 16  # parsed files kept per process (one per distinct file content)
_Parsed = tuple["PipelineSet | None", list[str]]

# The limits of one map file (docs/security.md lists them). Each bounds the work one
# push can make a worker do: with all of them at their maximum a file still parses,
# validates and resolves in well under a second and a few tens of MB.
MAX_DEPTH = 8  # YAML nesting (the schema needs 4)
MAX_ENTRIES = 1000  # pipelines and modules together
MAX_PATTERNS_PER_ENTRY = 100  # paths of one pipeline or module
MAX_DEPENDS_PER_ENTRY = 100  # depends_on names of one pipeline or module
MAX_PATTERNS = 5000  # paths in the whole file
MAX_PATTERN_CHARS = 256  # one glob
MAX_WILDCARDS = 8  # '*', '?', '[' and '{module}' in one glob ('**' counts two)
MAX_LINKS = 100_000  # (pipeline, transitive dependency) pairs
MAX_APPLICABLE = 100  # patterns of the file that one changed path may be tested against



class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when PyYAML has it) whose plain scalars are all strings
    but null: a map holds names, globs and templates only, and YAML 1.1's other implicit
    types are work an attacker chooses (a 250,000-digit int, ``1:2:3:...`` base 60, a
    timestamp whose month is 13 raises where no YAML error is expected)."""

    yaml_implicit_resolvers: ClassVar[dict[str, Any]] = {}


_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                              ["~", "n", "N", ""])


class FileSource(Protocol):
    """Reads one file of a repository at one commit."""

    def __call__(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """The bytes of ``path`` (repository-root-relative) at ``commit`` (full hex id), or
        None when the file does not exist there. Raises FileTooLarge when the file is over
        ``MAX_FILE_BYTES`` (without reading it whole), ProviderError when it cannot tell
        (API down, refused, rate limited)."""
        ...


def provider_source(providers: Mapping[str, Any]) -> FileSource:
    """A FileSource over each provider's ``file_content`` (providers by registry key)."""
    def read(repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        content: bytes | None = providers[repo.provider].file_content(repo, path, commit)
        return content
    return read


class _Refused(Exception):
    """A YAML construct a map file may not use (message: what and where)."""


def load_yaml(text: str) -> Any:
    """``text`` parsed as plain YAML data: mappings, sequences and scalars only.

    Refused (``_Refused``): anchors and aliases (an alias bomb expands a few hundred bytes
    into gigabytes), merge keys (``<<``), explicit tags (``!!python/...``, ``!custom``),
    and nesting deeper than ``MAX_DEPTH``. The events are checked before anything is
    composed, so a refused document costs one pass of the parser and no more memory than
    its own size. Raises yaml.YAMLError for what is not YAML at all.
    """
    # each open collection: None for a sequence, for a mapping whether the next child is a key
    open_: list[list[bool] | None] = []
    for event in yaml.parse(text, Loader=_Loader):
        where = f"line {event.start_mark.line + 1}" if event.start_mark else "here"
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"{where}: aliases (*{event.anchor}) are not allowed")
        if isinstance(event, (yaml.CollectionEndEvent)):
            open_.pop()
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        if event.anchor is not None:
            raise _Refused(f"{where}: anchors (&{event.anchor}) are not allowed")
        tag = getattr(event, "tag", None)
        if tag is not None:
            raise _Refused(f"{where}: tags ({tag}) are not allowed")
        parent = open_[-1] if open_ else None
        if parent is not None:
            if parent[0] and isinstance(event, yaml.ScalarEvent) and event.value == "<<" \
                    and event.implicit[0]:
                raise _Refused(f"{where}: merge keys (<<) are not allowed")
            parent[0] = not parent[0]
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_) >= MAX_DEPTH:
                raise _Refused(f"{where}: nested deeper than {MAX_DEPTH} levels")
            open_.append([True] if isinstance(event, yaml.MappingStartEvent) else None)
    return yaml.load(text, Loader=_Loader)  # a safe loader, and the events checked above


def _limits(raw: Mapping[str, Any]) -> Problems:
    """Where the parsed file is over a limit (then nothing else is checked: the limits
    are what keeps the other checks cheap)."""
    problems = Problems()
    pipelines = raw.get("pipelines")
    modules = raw.get("modules")
    entries: list[tuple[Loc, Any]] = []
    if isinstance(pipelines, list):
        entries += [(("pipelines", i), e) for i, e in enumerate(pipelines)]
    if isinstance(modules, dict):
        entries += [(("modules", str(name)), e) for name, e in modules.items()]
    if len(entries) > MAX_ENTRIES:
        problems.append(f"pipelines, modules: {len(entries)} entries; at most {MAX_ENTRIES} "
                        "in a module map (use a template: one entry for many modules)")
        return problems
    total = 0
    for where, entry in entries:
        if not isinstance(entry, dict):
            continue
        paths = entry.get("paths")
        globs = [paths] if isinstance(paths, str) else paths if isinstance(paths, list) else []
        total += len(globs)
        if len(globs) > MAX_PATTERNS_PER_ENTRY:
            problems.add((*where, "paths"), f"{len(globs)} patterns; at most "
                         f"{MAX_PATTERNS_PER_ENTRY}")
            continue
        depends = entry.get("depends_on")
        if isinstance(depends, list) and len(depends) > MAX_DEPENDS_PER_ENTRY:
            problems.add((*where, "depends_on"), f"{len(depends)} names; at most "
                         f"{MAX_DEPENDS_PER_ENTRY}")
        for j, glob in enumerate(globs):
            if not isinstance(glob, str):
                continue
            if len(glob) > MAX_PATTERN_CHARS:
                problems.add((*where, "paths", j), f"{len(glob)} characters; at most "
                             f"{MAX_PATTERN_CHARS}")
            elif (wild := sum(glob.count(c) for c in "*?[") + glob.count(PLACEHOLDER)) \
                    > MAX_WILDCARDS:
                problems.add((*where, "paths", j), f"{wild} wildcards; at most "
                             f"{MAX_WILDCARDS} ('*', '?', '[', {PLACEHOLDER}; '**' is two)")
    if total > MAX_PATTERNS:
        problems.append(f"paths: {total} patterns in the file; at most {MAX_PATTERNS}")
    return problems


def _applicable(modules: ModuleMap) -> str | None:
    """The problem when more than ``MAX_APPLICABLE`` of the file's patterns could be
    tested against one changed path: what bounds the file's cost per changed path.

    The match index tests a pipeline's or module's patterns only on paths under its
    includes' literal leading directories (``services/api/`` for ``services/api/**``),
    and a template's on every path; so each entry counts all its patterns under each of
    those directories ('' for a template or a ``**/...`` include), and a path is tested
    against what is counted under its own folders."""
    weights: dict[str, int] = {}
    for selector in (*modules.selectors.values(), *modules.groups.values()):
        rules = selector.rules
        keys = ("",) if isinstance(rules, Template) else rules.directories
        for key in keys:
            weights[key] = weights.get(key, 0) + len(rules.includes) + len(rules.excludes)
    worst, where = 0, ""
    for key in weights:
        total = sum(weights.get(k, 0) for k in dict.fromkeys(path_keys(key)))
        if total > worst:
            worst, where = total, key
    if worst <= MAX_APPLICABLE:
        return None
    return (f"paths: {worst} patterns could each be tested against one path "
            f"{'under ' + repr(where) if where else 'anywhere'}; at most {MAX_APPLICABLE} "
            "(templates and '**/...' patterns count for every path: give pipelines their "
            "own folders)")


def _policy(pipelines: Sequence[PipelineConfig], rules: ModuleMapConfig | None,
            problems: Problems) -> None:
    """What the file's pipelines set that the operator did not allow them to (``rules``:
    the repository's ``module_map`` settings; None: a file checked on its own)."""
    allow = rules.names if rules is not None else None
    allowed = "" if allow is None else ", ".join(allow.patterns)
    for i, pipeline in enumerate(pipelines):
        if allow is not None and not allow.admits(pipeline.name):
            problems.add(("pipelines", i, "name"), f"{pipeline.name!r} is not allowed here; "
                         f"allowed: {allowed}")
        if allow is not None and pipeline.validate is not None and \
                not allow.admits(pipeline.validate):
            problems.add(("pipelines", i, "validate"), f"{pipeline.validate!r} is not allowed "
                         f"here; allowed: {allowed}")
        if pipeline.tags is not None:
            problems.add(("pipelines", i, "tags"), "is not read from a module map file (a tag "
                         "push starts configured pipelines only)")
        if rules is None:
            continue
        for key, _ in pipeline.variables:
            if key not in rules.allow_variables:
                names = ", ".join(map(str, rules.allow_variables)) or "none"
                problems.add(("pipelines", i, "variables", key), "not allowed in a module map "
                             f"(module_map.allow_variables: {names})")
        if pipeline.source_action is not None and not rules.allow_source_action:
            problems.add(("pipelines", i, "source_action"), "not allowed in a module map "
                         "(module_map.allow_source_action is false)")


@dataclass(frozen=True, slots=True)
class MapFile:
    """A module map file's schema: ``pipelines`` and ``modules`` as in the configuration.

    Validated as :data:`MapFileSchema`, which holds them to the validation context's
    ``rules`` (the repository's ``module_map`` settings, or None) and sets ``graph``, built
    with the configured map (``configured``: what ``depends_on`` may name besides the
    file's own)."""

    __pydantic_config__ = FORBID
    pipelines: Annotated[Pipelines, BeforeValidator(lambda v: () if v is None else v)] = ()
    modules: Modules = field(default_factory=dict)
    graph: Annotated[Any, AfterValidator(not_a_key)] = field(
        default=None, repr=False, compare=False, metadata=COMPUTED)


def _checked(data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> MapFile:
    """The limits first (nothing else is looked at past one), MapFile's fields
    (``handler``), then the graph they make with the configured map (context
    ``configured``), what the repository's settings allow (context ``rules``) and the names
    other repositories hold (context ``reserved``: (whose, map) pairs)."""
    context = info.context or {}
    rules: ModuleMapConfig | None = context.get("rules")
    over = _limits(data) if isinstance(data, dict) else None
    if over:
        raise located("module map", over)

    def check(pipelines: Sequence[PipelineConfig], modules: Mapping[str, ModuleConfig],
              unchecked: frozenset[str], problems: Problems) -> ModuleMap | None:
        graph, _ = build(pipelines, modules, base=context.get("configured"),
                         allow=rules.names if rules is not None else None,
                         max_links=MAX_LINKS, unchecked=unchecked, problems=problems)
        _policy(pipelines, rules, problems)
        if graph is not None and not problems:
            over_applicable = _applicable(graph)
            if over_applicable is not None:
                problems.append(over_applicable)
        if graph is not None and not problems:
            for whose, other in context.get("reserved", ()):
                clashes(other, graph, whose, problems)
        return graph
    return cast(MapFile, with_graph(data, handler, "module map", check))


# what a map file is validated as (context: see _checked)
MapFileSchema = Annotated[MapFile, WrapValidator(_checked)]

_FILE_KEYS = schema_keys(MapFile)


def parse_file(text: str | bytes, rules: ModuleMapConfig | None = None, *,
               source: str = "module map", configured: ModuleMap | None = None,
               reserved: Sequence[tuple[str, ModuleMap]] = ()
               ) -> tuple[MapFile | None, list[str]]:
    """Validate a module map file against its repository's ``module_map`` settings
    (``rules``; None: a file checked on its own, with any name, variable and source
    action). ``configured``: the service configuration's map of the repository, whose
    pipelines and modules ``depends_on`` may name (None: the file's own names only).
    ``reserved``: (whose, map) of every other repository's configuration and kept map,
    whose names the file may not take.

    Returns the map, or None and the problems (``pipelines[2].depends_on: cycle a -> b ->
    a``; ``source`` names the file in problems about the whole document): the first
    ``MAX_PROBLEMS``, then how many more. Time and memory are bounded by the limits
    above whatever the file holds.
    """
    file, problems = _validated(text, rules, source=source, configured=configured,
                                reserved=reserved)
    return file, [_shown(p) for p in problems]


def _validated(text: str | bytes, rules: ModuleMapConfig | None, *, source: str,
               configured: ModuleMap | None, reserved: Sequence[tuple[str, ModuleMap]]
               ) -> tuple[MapFile | None, list[str]]:
    if len(text) > MAX_FILE_BYTES:
        return None, [f"{source}: {len(text)} bytes; at most {MAX_FILE_BYTES}"]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None, [f"{source}: not UTF-8 text"]
    try:
        raw = load_yaml(text)
    except _Refused as exc:
        return None, [f"{source}: {exc}"]
    except yaml.YAMLError as exc:
        return None, [f"{source}: not valid YAML ({' '.join(str(exc).split())})"]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [f"{source}: must be a YAML mapping with keys {', '.join(_FILE_KEYS)}"]
    problems = Problems()
    file = validated(cast(Any, MapFileSchema), raw, "", problems, context={
        "rules": rules, "configured": configured, "reserved": reserved})
    if file is None:
        return None, problems.lines()
    return file, []


def _shown(problem: str) -> str:
    """A problem as logs, statuses and terminals may show it: the file's text in it (a key,
    a YAML error) may hold control characters (``"\\e[2J"`` is one in YAML)."""
    return printable(problem, 2000)


@dataclass(frozen=True, slots=True)
class PipelineSet:
    """The pipelines one push is decided with: configuration by configured name, and the
    selectors (templates, dependencies) over them."""

    configs: Mapping[str, PipelineConfig]
    modules: ModuleMap

    @classmethod
    def of(cls, repo: RepositoryConfig) -> PipelineSet:
        """The repository's configured pipelines."""
        return cls({p.name: p for p in repo.pipelines}, repo.module_selectors())

    def joined(self, file: MapFile) -> tuple[PipelineSet | None, list[str]]:
        """These pipelines and the file's; None and the problems when names clash."""
        problems = clashes(self.modules, file.graph)
        if problems:
            return None, problems
        return PipelineSet({**self.configs, **{p.name: p for p in file.pipelines}},
                           self.modules.merged(file.graph)), []

    def pipeline(self, name: str) -> PipelineConfig:
        """The configuration of pipeline ``name``, a concrete one of a template included
        (its name and module value filled in). KeyError when it is not one of these."""
        found = self.modules.source(name)
        if found is None:
            raise KeyError(name)
        configured, module = found
        config = self.configs[configured]
        return config if module is None else dataclasses.replace(config, name=name,
                                                                 module=module)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The pipelines of one push. ``problems``: the head's file was invalid (then ``kept``
    is the commit of the last valid file used instead, or None when there was none)."""

    pipelines: PipelineSet
    problems: tuple[str, ...] = ()
    kept: str | None = None


class RepositoryMaps:
    """Resolves a repository's pipelines at a pushed head; parses each distinct file once
    per process and keeps the last valid one in the state store.

    ``repositories``: every configured repository, whose configured pipelines (and, read
    from the store, kept maps) a repository's file may not name.
    """

    def __init__(self, store: StateStore, read: FileSource, clock: Callable[[], float],
                 repositories: Sequence[RepositoryConfig] = ()) -> None:
        self.store = store
        self.read = read
        self.clock = clock
        self.repositories = tuple(repositories)
        # the configuration never changes in a process: its maps are made once
        self._configured = {r.key: r.module_selectors() for r in self.repositories}
        self._parsed: dict[tuple[Any, ...], _Parsed] = {}
        self._lock = threading.Lock()

    def resolve(self, repo: RepositoryConfig, commit: str, *, keep: bool = True) -> Resolved:
        """The pipelines for a push of ``commit``: the configured ones joined with the
        file's at ``commit`` (none when the file is absent), or with the last valid file's
        when that one is invalid (over ``MAX_FILE_BYTES`` included); a valid file is kept
        in the store (unless ``keep`` is False: a dry run). Raises ProviderError when the
        file cannot be read."""
        configured = PipelineSet.of(repo)
        if repo.module_map is None:
            return Resolved(configured)
        try:
            content = self.read(repo, repo.module_map.path, commit)
        except FileTooLarge as exc:
            return dataclasses.replace(self.kept(repo), problems=(
                f"{repo.module_map.path}: {exc.size or 'more than ' + str(exc.limit)} bytes; "
                f"at most {MAX_FILE_BYTES}",))
        if content is None:
            return Resolved(configured)
        joined, problems = self._parse(repo, content)
        if joined is not None:
            text = content.decode("utf-8")  # parse_file found it UTF-8
            stored = self.store.module_map(repo.key) if keep else None
            if keep and (stored is None or stored[1] != text):
                self.store.save_module_map(repo.key, commit, text, self.clock())
            return Resolved(joined)
        return dataclasses.replace(self.kept(repo), problems=tuple(problems))

    def kept(self, repo: RepositoryConfig) -> Resolved:
        """The configured pipelines joined with the last valid file's (``kept`` its commit),
        or the configured ones alone when none was kept."""
        stored = self.store.module_map(repo.key) if repo.module_map is not None else None
        if stored is not None:
            previous, _ = self._parse(repo, stored[1].encode())
            if previous is not None:
                return Resolved(previous, kept=stored[0])
        return Resolved(PipelineSet.of(repo))

    def _reserved(self, repo: RepositoryConfig
                  ) -> tuple[tuple[Any, ...], tuple[tuple[str, ModuleMap], ...]]:
        """Every other repository's configured pipelines and kept map, with whose; and
        what identifies the kept maps (their texts' digests) for the parse cache."""
        out: list[tuple[str, ModuleMap]] = []
        kept: list[tuple[str, str]] = []
        for other in self.repositories:
            if other.key == repo.key:
                continue
            out.append((f"repository {other.name}'s configuration",
                        self._configured[other.key]))
            if other.module_map is None:
                continue
            stored = self.store.module_map(other.key)
            if stored is None:
                continue
            text = stored[1].encode()
            digest = _digest(text)
            found = self._cached(("alone", other.key, digest),
                                 functools.partial(_joined, other, text, ()))
            if found[0] is not None:
                kept.append((other.key, digest))
                out.append((f"repository {other.name}'s module map", found[0].modules))
        return tuple(kept), tuple(out)

    def _parse(self, repo: RepositoryConfig,
               content: bytes) -> tuple[PipelineSet | None, list[str]]:
        assert repo.module_map is not None
        # another repository's kept map changes what this file may name
        others, reserved = self._reserved(repo)
        key = ("joined", repo.key, _digest(content), others)
        return self._cached(key, lambda: _joined(repo, content, reserved))

    def _cached(self, key: tuple[Any, ...], parse: Callable[[], _Parsed]) -> _Parsed:
        with self._lock:
            cached = self._parsed.get(key)
        if cached is not None:
            return cached
        result = parse()
        with self._lock:
            if len(self._parsed) >= _CACHED:
                self._parsed.pop(next(iter(self._parsed)))
            self._parsed[key] = result
        return result


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _joined(repo: RepositoryConfig, content: bytes,
            reserved: Sequence[tuple[str, ModuleMap]]) -> tuple[PipelineSet | None, list[str]]:
    """``repo``'s file joined to its configuration (with ``reserved`` empty: what another
    repository's kept map reserves, not looking further)."""
    assert repo.module_map is not None
    configured = PipelineSet.of(repo)
    file, problems = parse_file(content, repo.module_map, source=repo.module_map.path,
                                configured=configured.modules, reserved=reserved)
    return (None, problems) if file is None else configured.joined(file)

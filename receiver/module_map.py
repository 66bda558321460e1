"""The repository-side module map (``module_map: {path, allow}``, DESIGN.md "Module map").

The file holds ``pipelines`` and ``modules`` in the configuration's schema. It is read at
every pushed head, validated (:func:`parse_file`, also behind ``check-config --module-map``)
and joined to the configured pipelines. The last valid file is kept in the state store, so
every worker and replica falls back to the same one when a head's file is invalid.

Reading goes through a :class:`FileSource`: the provider's file API today
(:func:`provider_source`); a local git mirror (``git show <sha>:<path>``) fits the same shape.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from receiver.config import PipelineConfig, RepositoryConfig, parse_pipelines
from receiver.modules import ModuleMap, build, clashes
from receiver.state.base import StateStore

CONFIG_STATUS = "webhook-receiver/config"  # the commit status an invalid file gets
_FILE_KEYS = ("pipelines", "modules")
_CACHED = 16  # parsed files kept per process (one per distinct file content)


class FileSource(Protocol):
    """Reads one file of a repository at one commit."""

    def __call__(self, repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        """The bytes of ``path`` (repository-root-relative) at ``commit`` (full hex id), or
        None when the file does not exist there. Raises ProviderError when it cannot tell
        (API down, refused, rate limited, the file over the size cap)."""
        ...


def provider_source(providers: Mapping[str, Any]) -> FileSource:
    """A FileSource over each provider's ``file_content`` (providers by registry key)."""
    def read(repo: RepositoryConfig, path: str, commit: str) -> bytes | None:
        content: bytes | None = providers[repo.provider].file_content(repo, path, commit)
        return content
    return read


@dataclass(frozen=True, slots=True)
class RepositoryMap:
    """A valid module map file: its pipelines and their selectors."""

    pipelines: tuple[PipelineConfig, ...]
    modules: ModuleMap


def parse_file(text: str | bytes, allow: Sequence[str] | None = None,
               source: str = "module map",
               configured: ModuleMap | None = None) -> tuple[RepositoryMap | None, list[str]]:
    """Validate a module map file. ``allow``: glob patterns (``fnmatch``, case-sensitive)
    every pipeline name must match (None: any name, for a file checked on its own).
    ``configured``: the service configuration's map of the repository, whose pipelines
    and modules ``depends_on`` may name (None: the file's own names only).

    Returns the map, or None and every problem (``pipelines[2].depends_on: cycle a -> b ->
    a``; ``source`` names the file in problems about the whole document).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None, [f"{source}: not UTF-8 text"]
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [f"{source}: not valid YAML ({exc})"]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [f"{source}: must be a YAML mapping with keys {', '.join(_FILE_KEYS)}"]
    problems = [f"{key}: unknown key; allowed: {', '.join(_FILE_KEYS)}"
                for key in raw if key not in _FILE_KEYS]
    entries = raw.get("pipelines") or []
    if not isinstance(entries, list):
        problems.append("pipelines: must be a list of {name, paths}")
        entries = []
    pipelines, found = parse_pipelines(entries)
    problems.extend(found)
    modules, found = build(entries, raw.get("modules"), base=configured)
    problems.extend(found)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if allow is not None and isinstance(name, str) and \
                not any(fnmatch.fnmatchcase(name, pattern) for pattern in allow):
            problems.append(f"pipelines[{i}].name: {name!r} is not allowed here; allowed: "
                            + ", ".join(allow))
        validate = entry.get("validate")
        if allow is not None and isinstance(validate, str) and \
                not any(fnmatch.fnmatchcase(validate, pattern) for pattern in allow):
            problems.append(f"pipelines[{i}].validate: {validate!r} is not allowed here; "
                            "allowed: " + ", ".join(allow))
        if "tags" in entry:
            problems.append(f"pipelines[{i}].tags: is not read from a module map file "
                            "(a tag push starts configured pipelines only)")
    if problems:
        return None, problems
    return RepositoryMap(pipelines, modules), []


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

    def joined(self, file: RepositoryMap) -> tuple[PipelineSet | None, list[str]]:
        """These pipelines and the file's; None and the problems when names clash."""
        problems = clashes(self.modules, file.modules)
        if problems:
            return None, problems
        return PipelineSet({**self.configs, **{p.name: p for p in file.pipelines}},
                           self.modules.merged(file.modules)), []

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
    per process and keeps the last valid one in the state store."""

    def __init__(self, store: StateStore, read: FileSource,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.read = read
        self.clock = clock
        self._parsed: dict[tuple[str, str], tuple[PipelineSet | None, list[str]]] = {}
        self._lock = threading.Lock()

    def resolve(self, repo: RepositoryConfig, commit: str, *, keep: bool = True) -> Resolved:
        """The pipelines for a push of ``commit``: the configured ones joined with the
        file's at ``commit`` (none when the file is absent), or with the last valid file's
        when that one is invalid; a valid file is kept in the store (unless ``keep`` is
        False: a dry run). Raises ProviderError when the file cannot be read."""
        configured = PipelineSet.of(repo)
        if repo.module_map is None:
            return Resolved(configured)
        content = self.read(repo, repo.module_map.path, commit)
        if content is None:
            return Resolved(configured)
        text = content.decode("utf-8", errors="replace")
        joined, problems = self._parse(repo, content)
        if joined is not None:
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

    def _parse(self, repo: RepositoryConfig,
               content: bytes) -> tuple[PipelineSet | None, list[str]]:
        assert repo.module_map is not None
        key = (repo.key, hashlib.sha256(content).hexdigest())
        with self._lock:
            cached = self._parsed.get(key)
        if cached is not None:
            return cached
        configured = PipelineSet.of(repo)
        file, problems = parse_file(content, repo.module_map.allow, repo.module_map.path,
                                    configured.modules)
        result = (None, problems) if file is None else configured.joined(file)
        with self._lock:
            if len(self._parsed) >= _CACHED:
                self._parsed.pop(next(iter(self._parsed)))
            self._parsed[key] = result
        return result

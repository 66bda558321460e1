"""The module map: pipeline templates, named modules and dependencies (DESIGN.md "Module map").

The schema (receiver.config: ``PipelineConfig``, ``ModuleConfig``) checks each entry on its
own; :func:`build` is the graph those entries make, called by the schema's model validators
(the service configuration's repository, a repository-side map file), so both are checked
by the same code and every problem carries its key path (a :data:`Loc`).

- A **template** is a pipeline whose ``name`` and include ``paths`` share ``{module}``: it
  stands for one concrete pipeline per value the changed paths give the placeholder
  (``acme-{module}-deploy`` with ``services/{module}/**`` is ``acme-billing-deploy`` for
  ``services/billing/x.py``). Its globs are compiled once (:class:`receiver.matcher.Glob`,
  the placeholder captured), so a push costs one pass over its paths per template, however
  many modules the repository has.
- A **module** (``modules: {NAME: {paths, depends_on}}``) is a named path group that starts
  nothing itself.
- ``depends_on`` names modules or pipelines without ``{module}``; a pipeline is selected by
  its own paths or those of any dependency, transitively. The graph is flattened here, once,
  into each pipeline's :class:`Selector`, without recursion.

A module value is one path segment of letters, digits, ``.``, ``@``, ``_`` and ``-`` (what a
CodePipeline pipeline name may hold); a folder named otherwise is no module.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from receiver.matcher import (
    MODULE_CHARS,
    PLACEHOLDER,
    Glob,
    GlobError,
    NameRules,
    PathRules,
    RuleMatch,
)

__all__ = ["MAX_PROBLEMS", "PLACEHOLDER", "Loc", "ModuleEntry", "ModuleMap", "PipelineEntry",
           "Problems", "Selector", "Template", "build", "clashes", "is_name",
           "key_path"]

NAME_LIMIT = 100  # CodePipeline's longest pipeline name
MAX_PROBLEMS = 20  # problems listed one by one; the rest are counted
_WILDCARDS = "*?[{"


def is_name(name: str) -> bool:
    """CodePipeline's pipeline-name rule: 1-100 of letters, digits, . @ _ -."""
    return 0 < len(name) <= NAME_LIMIT and not name.strip(MODULE_CHARS)


Loc = tuple[str | int, ...]  # a key path as pydantic's error locations give it


def key_path(loc: Loc, prefix: str = "") -> str:
    """``loc`` as the key path problems start with: ``repositories[0].modules.web``."""
    return (prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            ).lstrip(".")


class Problems:
    """Problem messages: the first ``limit`` kept, the rest only counted, so a file with
    a million mistakes costs no more memory than one with ``limit``. Each is a whole line
    (:meth:`append`) or a message at a key path (:meth:`add`)."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self.limit = limit
        self.kept: list[tuple[Loc | None, str]] = []
        self.more = 0

    def append(self, problem: str) -> None:
        """Add one problem line."""
        self._keep(None, problem)

    def add(self, loc: Loc, message: str) -> None:
        """Add one problem: ``message`` about the key at ``loc``."""
        self._keep(loc, message)

    def extend(self, problems: Iterable[str]) -> None:
        """Add each of ``problems``."""
        for problem in problems:
            self.append(problem)

    def _keep(self, loc: Loc | None, message: str) -> None:
        if len(self.kept) < self.limit:
            self.kept.append((loc, message))
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.kept)

    @property
    def full(self) -> bool:
        """Whether a further problem would only be counted."""
        return len(self.kept) >= self.limit

    @property
    def more_line(self) -> str | None:
        """How many more problems there were than are kept, or None."""
        return f"... and {self.more} more problem{'s' if self.more > 1 else ''}" \
            if self.more else None

    def lines(self) -> list[str]:
        """The kept problems, then how many more there were."""
        kept = [m if loc is None else f"{key_path(loc)}: {m}" for loc, m in self.kept]
        return kept + ([self.more_line] if self.more_line else [])


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template: the include/exclude globs (``{module}`` kept) and its name.

    ``allow`` (a repository-side map's templates): the concrete names it may make; a
    module whose name is outside it is refused (see :meth:`admits`)."""

    name: str
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    _includes: tuple[tuple[str, Glob], ...]  # (literal start, glob) per include
    _excludes: tuple[Glob, ...]
    allow: NameRules | None = None

    @classmethod
    def compile(cls, name: str, globs: Iterable[str],
                allow: NameRules | None = None) -> Template:
        """Compile ``name`` (one ``{module}``) and ``globs`` (``!`` = exclude; every include
        has ``{module}``). Raises GlobError saying what is wrong."""
        if name.count(PLACEHOLDER) != 1:
            raise GlobError(f"the name needs {PLACEHOLDER} exactly once")
        includes: list[Glob] = []
        excludes: list[Glob] = []
        for raw in globs:
            negated = raw.startswith("!")
            try:
                glob = Glob.compile(raw[1:] if negated else raw, placeholder=True)
            except GlobError as exc:
                raise GlobError(f"{raw!r}: {exc}") from None
            (excludes if negated else includes).append(glob)
        if not includes:
            raise GlobError("needs at least one include pattern (a glob without '!')")
        missing = [g.source for g in includes if not g.module]
        if missing:
            raise GlobError(f"every include of a template needs {PLACEHOLDER}; "
                            f"{missing[0]!r} has none (use a module and depends_on for "
                            "shared paths)")
        compiled = []
        for glob in includes:
            literal = len(glob.source)
            for ch in _WILDCARDS:
                if ch in glob.source:
                    literal = min(literal, glob.source.index(ch))
            compiled.append((glob.source[:literal], glob))
        return cls(name=name, includes=tuple(g.source for g in includes),
                   excludes=tuple(g.source for g in excludes),
                   _includes=tuple(compiled), _excludes=tuple(excludes), allow=allow)

    def concrete(self, module: str) -> str:
        """The concrete pipeline name for ``module``."""
        return self.name.replace(PLACEHOLDER, module)

    def module_of(self, name: str) -> str | None:
        """The module value of concrete pipeline ``name``, or None if it is not this one's."""
        before, _, after = self.name.partition(PLACEHOLDER)
        if len(name) <= len(before) + len(after) or not name.startswith(before) \
                or not name.endswith(after):
            return None
        value = name[len(before):len(name) - len(after)]
        return None if value.strip(MODULE_CHARS) else value

    def admits(self, name: str) -> bool:
        """Whether concrete pipeline ``name`` may start (``allow`` admits it)."""
        return self.allow is None or self.allow.admits(name)

    def overlaps(self, other: Template) -> bool:
        """Whether some concrete name could come from both templates."""
        a_pre, _, a_post = self.name.partition(PLACEHOLDER)
        b_pre, _, b_post = other.name.partition(PLACEHOLDER)
        return ((a_pre.startswith(b_pre) or b_pre.startswith(a_pre))
                and (a_post.endswith(b_post) or b_post.endswith(a_post)))

    def modules(self, paths: Iterable[str]) -> dict[str, tuple[RuleMatch, ...]]:
        """Module value -> the (path, include glob) pairs selecting its concrete pipeline,
        paths in input order. An exclude with ``{module}`` applies to the same value."""
        found: dict[str, list[RuleMatch]] = {}
        room = NAME_LIMIT - len(self.name) + len(PLACEHOLDER)  # the longest value a name takes
        excludes = self._excludes
        for path in paths:
            for literal, glob in self._includes:
                if not path.startswith(literal):
                    continue
                value = glob.bind_path(path)
                if value is None:
                    continue
                if len(value) <= room and not (excludes and self._excluded(path, value)):
                    hits = found.get(value)
                    if hits is None:
                        hits = found[value] = []
                    hits.append(RuleMatch(path, glob.source))
                break
        return {value: tuple(hits) for value, hits in found.items()}

    def _excluded(self, path: str, value: str) -> bool:
        for glob in self._excludes:
            if glob.bind_path(path, value) is not None if glob.module else glob.matches(path):
                return True
        return False


Rules = PathRules | Template


@dataclass(frozen=True, slots=True)
class Selector:
    """What selects one pipeline: its own rules and every (transitive) dependency's.

    ``depends`` is the flattened dependency list, (name, rules) in breadth-first order.
    With a :class:`Template`, ``module`` is the concrete pipeline's value; a template
    selector without one stands for the concrete pipelines the changed paths name.
    """

    rules: Rules
    depends: tuple[tuple[str, PathRules], ...] = ()
    module: str | None = None

    @property
    def discovers(self) -> bool:
        """A template selector not bound to a module: its pipelines come from the paths."""
        return isinstance(self.rules, Template) and self.module is None


@dataclass(frozen=True, slots=True)
class ModuleMap:
    """The selectors of one repository's pipelines, by configured name (a template by its
    name with ``{module}``), and of its modules (``groups``, their own rules: they start
    nothing, but a map file's pipelines may depend on them). ``links``: the direct
    ``depends_on`` of every module and pipeline, so a map file's dependencies on these
    are flattened without a copy of every transitive list."""

    selectors: Mapping[str, Selector]
    groups: Mapping[str, Selector] = field(default_factory=dict)
    links: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def templates(self) -> tuple[Template, ...]:
        """Every template, in configuration order."""
        return tuple(s.rules for s in self.selectors.values() if isinstance(s.rules, Template))

    def source(self, name: str) -> tuple[str, str | None] | None:
        """The configured name and module value of pipeline ``name`` (a configured one, or
        a concrete pipeline of a template), or None when it is neither."""
        if name in self.selectors and not self.selectors[name].discovers:
            return name, None
        for template in self.templates:
            module = template.module_of(name)
            if module is not None:
                return template.name, module
        return None

    def for_branch(self, known: Iterable[str]) -> dict[str, Selector]:
        """The selectors a push to a branch is decided with: every configured one by name
        (a template finds new concrete pipelines in the paths) and one bound to its module
        for each ``known`` concrete pipeline name (those holding a baseline there) that
        its template admits."""
        out = dict(self.selectors)
        templates = self.templates
        if templates:
            for name in known:
                if name in out:
                    continue
                for template in templates:
                    module = template.module_of(name)
                    if module is not None:
                        if template.admits(name):
                            parent = self.selectors[template.name]
                            out[name] = Selector(template, parent.depends, module)
                        break
        return out

    def merged(self, other: ModuleMap) -> ModuleMap:
        """Both maps' pipelines (names must not overlap: see :func:`clashes`)."""
        return ModuleMap({**self.selectors, **other.selectors}, {**self.groups, **other.groups},
                         {**self.links, **other.links})


def clashes(a: ModuleMap, b: ModuleMap, where: str | None = None,
            problems: Problems | None = None) -> list[str]:
    """Names in ``b`` that ``a`` has too, or that one of ``a``'s templates could produce
    (and the reverse), each as a message. ``where`` names ``a`` in the messages (None:
    the service configuration of ``b``'s own repository). ``problems``: where to add
    them (and its lines are returned)."""
    of = "" if where is None else f" of {where}"
    out = problems if problems is not None else Problems()
    for name, selector in b.selectors.items():
        if name in a.selectors:
            out.append(f"pipeline {name!r} is also in {where or 'the service configuration'}")
        elif isinstance(selector.rules, Template):
            other = next((t for t in a.templates if t.overlaps(selector.rules)), None)
            if other is not None:
                out.append(f"template {name!r} can make the same names as {other.name!r}{of}")
            else:
                static = next((n for n, s in a.selectors.items()
                               if isinstance(s.rules, PathRules)
                               and selector.rules.module_of(n) is not None), None)
                if static is not None:
                    out.append(f"template {name!r} can make the name {static!r}, also a "
                               f"pipeline{of}")
        else:
            owner = next((t for t in a.templates if t.module_of(name) is not None), None)
            if owner is not None:
                out.append(f"pipeline {name!r} is also a name of template {owner.name!r}{of}")
    return out.lines()


class PipelineEntry(Protocol):
    """A validated pipeline entry (receiver.config.PipelineConfig): its name, its paths
    compiled (a :class:`Template` when the name has ``{module}``) and its dependencies."""

    @property
    def name(self) -> str: ...
    @property
    def rules(self) -> Rules: ...
    @property
    def depends_on(self) -> tuple[str, ...]: ...


class ModuleEntry(Protocol):
    """A validated module (receiver.config.ModuleConfig): its paths and dependencies."""

    @property
    def paths(self) -> PathRules: ...
    @property
    def depends_on(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "module" or "pipeline"
    rules: Rules
    depends_on: tuple[str, ...]
    loc: Loc  # of its depends_on, for problems


def build(pipelines: Sequence[PipelineEntry], modules: Mapping[str, ModuleEntry], *,
          base: ModuleMap | None = None, allow: NameRules | None = None,
          max_links: int | None = None, unchecked: frozenset[str] = frozenset(),
          problems: Problems | None = None) -> tuple[ModuleMap | None, Problems]:
    """The :class:`ModuleMap` of validated ``pipelines`` and ``modules`` (each entry's own
    keys are the schema's, receiver.config), or None and the problems of the graph they
    make, each at its key path below the document holding them (``("pipelines", 2,
    "depends_on")``): a name used twice (a module and a pipeline); templates that can
    make the same names, or a pipeline's; ``depends_on`` naming nothing or a template;
    cycles (``cycle a -> b -> a``). At most :data:`MAX_PROBLEMS` are listed, then a count.

    ``base`` (a map file's: the service configuration's map) holds pipelines and modules
    that ``depends_on`` may name too and that no new name may repeat; the result holds
    only the new ones. ``allow``: the concrete names the templates may make (a map file's
    ``module_map.allow``). ``max_links``: the most (pipeline, transitive dependency) pairs
    the result may hold in all (a map file's limit; None: no limit). ``problems``: where
    to add the problems (with others of the caller's, counted together). ``unchecked``:
    names of entries left out because they are invalid on their own, which ``depends_on``
    may name without a problem (the result is then None: only the problems count).

    Nothing here recurses: a chain of 10,000 modules costs a pass over its links per
    pipeline that depends on it.
    """
    problems = problems if problems is not None else Problems()
    external: dict[str, Selector] = {**base.groups, **base.selectors} if base else {}
    nodes = _nodes(pipelines, modules, base, allow, problems)
    _template_problems(nodes, problems)
    _dependency_problems(nodes, external, unchecked, problems)
    _cycles(nodes, problems)
    if problems or unchecked:
        return None, problems
    links = {**(base.links if base else {}),
             **{name: node.depends_on for name, node in nodes.items()}}

    def rules_of(name: str) -> PathRules:
        rules = nodes[name].rules if name in nodes else external[name].rules
        assert isinstance(rules, PathRules)  # refused above: a template as a dependency
        return rules

    budget = [max_links]
    selectors = {}
    for name, node in nodes.items():
        if node.kind != "pipeline":
            continue
        depends = _flatten(name, links, rules_of, budget)
        if depends is None:
            problems.add(("pipelines",), f"more than {max_links} (pipeline, dependency) "
                         "pairs through depends_on; depend on fewer modules or share them")
            return None, problems
        selectors[name] = Selector(node.rules, depends)
    return ModuleMap(selectors,
                     {name: Selector(node.rules) for name, node in nodes.items()
                      if node.kind == "module"},
                     {name: node.depends_on for name, node in nodes.items()}), problems


def _nodes(pipelines: Sequence[PipelineEntry], modules: Mapping[str, ModuleEntry],
           base: ModuleMap | None, allow: NameRules | None,
           problems: Problems) -> dict[str, _Node]:
    """Every module, then every pipeline, by name; a name already taken is a problem (at
    the later entry) and left out."""
    nodes: dict[str, _Node] = {}
    taken = {**base.groups, **base.selectors} if base else {}
    for name, module in modules.items():
        if name in taken:
            problems.add(("modules", name), f"{name!r} is also in the service configuration")
            continue
        nodes[name] = _Node("module", module.paths, module.depends_on,
                            ("modules", name, "depends_on"))
    for i, pipeline in enumerate(pipelines):
        name, rules = pipeline.name, pipeline.rules
        if name in nodes:
            problems.add(("pipelines", i, "name"), f"{name!r} is also a {nodes[name].kind} "
                         "name")
            continue
        if base is not None and name in base.groups:
            problems.add(("pipelines", i, "name"), f"{name!r} is also a module of the "
                         "service configuration")
            continue
        if isinstance(rules, Template) and allow is not None:
            rules = dataclasses.replace(rules, allow=allow)
        nodes[name] = _Node("pipeline", rules, pipeline.depends_on,
                            ("pipelines", i, "depends_on"))
    return nodes


def _template_problems(nodes: Mapping[str, _Node], problems: Problems) -> None:
    """A template that can make another template's names, or a pipeline's name."""
    pipelines = [(name, node) for name, node in nodes.items() if node.kind == "pipeline"]
    templates = [(name, node.rules, (*node.loc[:-1], "name")) for name, node in pipelines
                 if isinstance(node.rules, Template)]
    statics = [name for name, node in pipelines if isinstance(node.rules, PathRules)]
    for j, (name, template, where) in enumerate(templates):
        assert isinstance(template, Template)
        for other_name, other, _ in templates[:j]:
            assert isinstance(other, Template)
            if template.overlaps(other):
                problems.add(where, f"template {name!r} can make the same names as "
                             f"{other_name!r}")
        for other_name in statics:
            if template.module_of(other_name) is not None:
                problems.add(where, f"template {name!r} can make the name {other_name!r}, "
                             "also a pipeline")


def _dependency_problems(nodes: Mapping[str, _Node], external: Mapping[str, Selector],
                         unchecked: frozenset[str], problems: Problems) -> None:
    """A ``depends_on`` naming nothing, or a template (whose paths select no one module)."""
    for node in nodes.values():
        for dep in node.depends_on:
            target = nodes.get(dep) or external.get(dep)
            if target is None and dep not in unchecked:
                problems.add(node.loc, f"unknown name {dep!r}; depends_on names a module or "
                             "a pipeline")
            elif target is not None and isinstance(target.rules, Template):
                problems.add(node.loc, f"{dep!r} is a template; depend on a module or a "
                             "pipeline without {module}")


_SHOWN = 12  # names of a cycle a message lists before it says how many more


def _cycles(nodes: Mapping[str, _Node], problems: Problems) -> None:
    """One problem per dependency cycle, at the depends_on of its first node in
    configuration order: ``cycle a -> b -> a``. Depth-first without recursion (a chain
    of 10,000 modules is as deep); once the problems are full, it stops looking."""
    state: dict[str, int] = {}  # 1: on the current trail, 2: done
    seen_cycles: set[frozenset[str]] = set()
    for root in nodes:
        if root in state:
            continue
        trail: list[str] = [root]
        at: dict[str, int] = {root: 0}  # name -> its index in trail
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(nodes[root].depends_on))]
        state[root] = 1
        while stack:
            name, deps = stack[-1]
            for dep in deps:
                if dep not in nodes:
                    continue
                seen = state.get(dep)
                if seen == 1:
                    if problems.full:
                        return
                    cycle = [*trail[at[dep]:], dep]
                    members = frozenset(cycle)
                    if members not in seen_cycles:
                        seen_cycles.add(members)
                        shown = " -> ".join(cycle) if len(cycle) <= _SHOWN else (
                            " -> ".join(cycle[:_SHOWN - 1])
                            + f" -> ... ({len(cycle) - _SHOWN} more) -> {dep}")
                        problems.add(nodes[cycle[0]].loc, f"cycle {shown}")
                elif seen is None:
                    state[dep] = 1
                    at[dep] = len(trail)
                    trail.append(dep)
                    stack.append((dep, iter(nodes[dep].depends_on)))
                    break
            else:
                stack.pop()
                trail.pop()
                del at[name]
                state[name] = 2


def _flatten(name: str, links: Mapping[str, tuple[str, ...]],
             rules_of: Callable[[str], PathRules],
             budget: list[int | None]) -> tuple[tuple[str, PathRules], ...] | None:
    """Every transitive dependency of ``name`` with its own rules, breadth-first, once;
    None when that would take ``budget[0]`` (what is left of the links allowed) below 0."""
    out: dict[str, PathRules] = {}
    queue = deque(links.get(name, ()))
    left = budget[0]
    while queue:
        dep = queue.popleft()
        if dep in out or dep == name:
            continue
        if left is not None and len(out) >= left:
            return None
        out[dep] = rules_of(dep)
        queue.extend(links.get(dep, ()))
    if left is not None:
        budget[0] = left - len(out)
    return tuple(out.items())

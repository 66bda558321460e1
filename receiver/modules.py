"""The module map: pipeline templates, named modules and dependencies (DESIGN.md "Module map").

Pure functions over plain parsed YAML (dicts and lists) that return frozen objects and a
list of ``"key.path: message"`` problems, so the service configuration's section and a
repository-side map file (``check-config --module-map``) are validated by the same code.

- A **template** is a pipeline whose ``name`` and include ``paths`` share ``{module}``: it
  stands for one concrete pipeline per value the changed paths give the placeholder
  (``acme-{module}-deploy`` with ``services/{module}/**`` is ``acme-billing-deploy`` for
  ``services/billing/x.py``). It is compiled once into one regex per include glob with the
  placeholder as a named capture, so a push costs one regex pass over its paths per
  template, however many modules the repository has.
- A **module** (``modules: {NAME: {paths, depends_on}}``) is a named path group that starts
  nothing itself.
- ``depends_on`` names modules or pipelines without ``{module}``; a pipeline is selected by
  its own paths or those of any dependency, transitively. The graph is flattened here, once,
  into each pipeline's :class:`Selector`.

A module value is one path segment of letters, digits, ``.``, ``@``, ``_`` and ``-`` (what a
CodePipeline pipeline name may hold); a folder named otherwise is no module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.matcher import GlobError, PathRules, RuleMatch, glob_to_regex

PLACEHOLDER = "{module}"
NAME = re.compile(r"^[A-Za-z0-9.@_-]{1,100}$")  # CodePipeline's pipeline-name rule
_VALUE = r"[A-Za-z0-9.@_-]+"
# stands for {module} while a glob is translated: letters only, so glob_to_regex keeps it
_TOKEN = "Qx7moduleQx7"
_WILDCARDS = "*?[{"


def _placeholder_regex(glob: str) -> str:
    """The regex body of ``glob`` with each ``{module}`` a capture of the same value."""
    body = glob_to_regex(glob.replace(PLACEHOLDER, _TOKEN))
    first, *rest = body.split(_TOKEN)
    return first + "".join(
        ("(?P<module>" + _VALUE + ")" if i == 0 else "(?P=module)") + part
        for i, part in enumerate(rest))


def any_module(glob: str) -> str:
    """``glob`` with ``{module}`` as ``*``: what every concrete pipeline of it may select."""
    return glob.replace(PLACEHOLDER, "*")


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template: the include/exclude globs (``{module}`` kept) and its name."""

    name: str
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    _includes: tuple[tuple[str, re.Pattern[str]], ...]  # (literal start, regex) per include
    _excludes: tuple[re.Pattern[str], ...]
    _name: re.Pattern[str]

    @classmethod
    def compile(cls, name: str, globs: Iterable[str]) -> Template:
        """Compile ``name`` (one ``{module}``) and ``globs`` (``!`` = exclude; every include
        has ``{module}``). Raises GlobError saying what is wrong."""
        if name.count(PLACEHOLDER) != 1:
            raise GlobError(f"the name needs {PLACEHOLDER} exactly once")
        includes: list[str] = []
        excludes: list[str] = []
        for raw in globs:
            negated = raw.startswith("!")
            (excludes if negated else includes).append(raw[1:] if negated else raw)
        if not includes:
            raise GlobError("needs at least one include pattern (a glob without '!')")
        missing = [g for g in includes if PLACEHOLDER not in g]
        if missing:
            raise GlobError(f"every include of a template needs {PLACEHOLDER}; "
                            f"{missing[0]!r} has none (use a module and depends_on for "
                            "shared paths)")
        compiled = []
        for glob in includes:
            literal = len(glob)
            for ch in _WILDCARDS:
                if ch in glob:
                    literal = min(literal, glob.index(ch))
            compiled.append((glob[:literal], re.compile(_placeholder_regex(glob))))
        before, _, after = name.partition(PLACEHOLDER)
        return cls(name=name, includes=tuple(includes), excludes=tuple(excludes),
                   _includes=tuple(compiled),
                   _excludes=tuple(re.compile(_placeholder_regex(g)) for g in excludes),
                   _name=re.compile(re.escape(before) + f"(?P<module>{_VALUE})"
                                    + re.escape(after)))

    def concrete(self, module: str) -> str:
        """The concrete pipeline name for ``module``."""
        return self.name.replace(PLACEHOLDER, module)

    def module_of(self, name: str) -> str | None:
        """The module value of concrete pipeline ``name``, or None if it is not this one's."""
        m = self._name.fullmatch(name)
        return m.group("module") if m else None

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
        room = 100 - len(self.name) + len(PLACEHOLDER)  # the longest value a name can take
        excludes = self._excludes
        for path in paths:
            for (literal, regex), glob in zip(self._includes, self.includes, strict=True):
                if not path.startswith(literal):
                    continue
                m = regex.fullmatch(path)
                if m is None:
                    continue
                value = m.group("module")
                if len(value) <= room and not (excludes and self._excluded(path, value)):
                    hits = found.get(value)
                    if hits is None:
                        hits = found[value] = []
                    hits.append(RuleMatch(path, glob))
                break
        return {value: tuple(hits) for value, hits in found.items()}

    def _excluded(self, path: str, value: str) -> bool:
        for regex in self._excludes:
            m = regex.fullmatch(path)
            if m is not None and ("module" not in regex.groupindex
                                  or m.group("module") == value):
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
    name with ``{module}``), and of its modules (``groups``: they start nothing, but a map
    file's pipelines may depend on them)."""

    selectors: Mapping[str, Selector]
    groups: Mapping[str, Selector] = field(default_factory=dict)

    @classmethod
    def plain(cls, rules: Mapping[str, PathRules]) -> ModuleMap:
        """A map of pipelines with their own paths only (no templates, no dependencies)."""
        return cls({name: Selector(r) for name, r in rules.items()})

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
        for each ``known`` concrete pipeline name (those holding a baseline there)."""
        out = dict(self.selectors)
        templates = self.templates
        if templates:
            for name in known:
                if name in out:
                    continue
                for template in templates:
                    module = template.module_of(name)
                    if module is not None:
                        parent = self.selectors[template.name]
                        out[name] = Selector(template, parent.depends, module)
                        break
        return out

    def merged(self, other: ModuleMap) -> ModuleMap:
        """Both maps' pipelines (names must not overlap: see :func:`clashes`)."""
        return ModuleMap({**self.selectors, **other.selectors}, {**self.groups, **other.groups})


def clashes(a: ModuleMap, b: ModuleMap) -> list[str]:
    """Names in ``b`` that ``a`` has too, or that one of ``a``'s templates could produce
    (and the reverse), each as a message."""
    out = []
    for name, selector in b.selectors.items():
        if name in a.selectors:
            out.append(f"pipeline {name!r} is also in the service configuration")
        elif isinstance(selector.rules, Template):
            other = next((t for t in a.templates if t.overlaps(selector.rules)), None)
            if other is not None:
                out.append(f"template {name!r} can make the same names as {other.name!r}")
            else:
                static = next((n for n, s in a.selectors.items()
                               if isinstance(s.rules, PathRules)
                               and selector.rules.module_of(n) is not None), None)
                if static is not None:
                    out.append(f"template {name!r} can make the name {static!r}, also a "
                               "pipeline")
        else:
            owner = next((t for t in a.templates if t.module_of(name) is not None), None)
            if owner is not None:
                out.append(f"pipeline {name!r} is also a name of template {owner.name!r}")
    return out


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "module" or "pipeline"
    rules: Rules
    depends_on: tuple[str, ...]
    path: str  # key path of its depends_on, for messages


def _key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def build(pipelines: Sequence[Any], modules: Any = None, *, path: str = "",
          base: ModuleMap | None = None) -> tuple[ModuleMap, list[str]]:
    """Validate ``pipelines`` (the parsed list, each a mapping with ``name``, ``paths`` and
    optional ``depends_on``) and ``modules`` (the parsed ``modules`` mapping, or None) into
    a :class:`ModuleMap`; ``path`` prefixes every problem's key path (``repositories[0]``).

    Reported here: the modules section's shape, names and globs; ``{module}`` in a name but
    not in its paths or the reverse; overlapping templates; ``depends_on`` naming nothing,
    a template or itself; cycles (``... depends_on: cycle a -> b -> a``). A pipeline entry
    whose ``name`` or ``paths`` is malformed otherwise (a bad glob, not a string) is left
    to the caller's pipeline schema and skipped here. The map is only meaningful when no
    problem is returned.

    ``base`` (a map file's: the service configuration's map) holds pipelines and modules
    that ``depends_on`` may name too and that no new name may repeat; the result holds
    only the new ones.
    """
    problems: list[str] = []
    nodes: dict[str, _Node] = {}
    external: dict[str, Selector] = {**base.groups, **base.selectors} if base else {}
    external_groups = base.groups if base else {}
    mods_path = _key(path, "modules")
    if modules is not None and not isinstance(modules, dict):
        problems.append(f"{mods_path}: must map a module name to {{paths, depends_on}}")
        modules = {}
    for name, raw in (modules or {}).items():
        mpath = f"{mods_path}.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{mpath}: a module name is letters, digits, . @ - _ (at most 100)")
            continue
        if name in external:
            problems.append(f"{mpath}: {name!r} is also in the service configuration")
            continue
        if not isinstance(raw, dict) or set(raw) - {"paths", "depends_on"}:
            problems.append(f"{mpath}: must be a mapping with keys paths, depends_on")
            continue
        globs = _str_list(raw.get("paths"))
        if not globs:
            problems.append(f"{mpath}.paths: is required: a list of globs ('**' crosses "
                            "folders, '!' excludes)")
            continue
        if any(PLACEHOLDER in g for g in globs):
            problems.append(f"{mpath}.paths: {PLACEHOLDER} is only for pipeline templates")
            continue
        try:
            group = PathRules.compile(globs)
        except GlobError as exc:
            problems.append(f"{mpath}.paths: {exc}")
            continue
        deps = _depends(raw.get("depends_on"), f"{mpath}.depends_on", problems)
        nodes[name] = _Node("module", group, deps, f"{mpath}.depends_on")
    order: list[str] = []
    for i, raw in enumerate(pipelines):
        ppath = _key(path, f"pipelines[{i}]")
        if not isinstance(raw, dict):
            continue
        name, globs = raw.get("name"), _str_list(raw.get("paths"))
        if not isinstance(name, str) or not globs:
            continue
        in_name = PLACEHOLDER in name
        in_paths = any(PLACEHOLDER in g for g in globs)
        if in_name != in_paths:
            where = "name but not in its paths" if in_name else "paths but not in its name"
            problems.append(f"{ppath}.{'name' if in_name else 'paths'}: {PLACEHOLDER} is in "
                            f"the {where}; a template needs it in both")
            continue
        rules: Rules
        try:
            rules = Template.compile(name, globs) if in_name else PathRules.compile(globs)
        except GlobError as exc:
            if in_name:  # a plain glob error is the pipeline schema's to report
                problems.append(f"{ppath}.paths: {exc}")
            continue
        deps = _depends(raw.get("depends_on"), f"{ppath}.depends_on", problems)
        if name in nodes:
            kind = "module" if nodes[name].kind == "module" else "pipeline"
            problems.append(f"{ppath}.name: {name!r} is also a {kind} name")
            continue
        if name in external and name in external_groups:
            problems.append(f"{ppath}.name: {name!r} is also a module of the service "
                            "configuration")
            continue
        nodes[name] = _Node("pipeline", rules, deps, f"{ppath}.depends_on")
        order.append(name)
    templates = [(n, nodes[n].rules) for n in order if isinstance(nodes[n].rules, Template)]
    for j, (name, template) in enumerate(templates):
        assert isinstance(template, Template)
        for other_name, other in templates[:j]:
            assert isinstance(other, Template)
            if template.overlaps(other):
                problems.append(f"{nodes[name].path.rsplit('.', 1)[0]}.name: template "
                                f"{name!r} can make the same names as {other_name!r}")
        for other_name in order:
            if isinstance(nodes[other_name].rules, PathRules) and \
                    template.module_of(other_name) is not None:
                problems.append(f"{nodes[name].path.rsplit('.', 1)[0]}.name: template "
                                f"{name!r} can make the name {other_name!r}, also a pipeline")
    for node in nodes.values():
        for dep in node.depends_on:
            if dep not in nodes and dep not in external:
                problems.append(f"{node.path}: unknown name {dep!r}; depends_on names a "
                                "module or a pipeline")
            elif isinstance((nodes[dep] if dep in nodes else external[dep]).rules, Template):
                problems.append(f"{node.path}: {dep!r} is a template; depend on a module "
                                "or a pipeline without {module}")
    problems.extend(_cycles(nodes))
    if problems:
        return ModuleMap({}), problems
    return ModuleMap({name: Selector(nodes[name].rules, _flatten(name, nodes, external))
                      for name in order},
                     {name: Selector(node.rules, _flatten(name, nodes, external))
                      for name, node in nodes.items() if node.kind == "module"}), []


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _depends(value: Any, path: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    names = _str_list(value)
    if names is None:
        problems.append(f"{path}: must be a list of module or pipeline names")
        return ()
    return tuple(dict.fromkeys(names))


def _cycles(nodes: Mapping[str, _Node]) -> list[str]:
    """One problem per dependency cycle, at the depends_on of its first node in
    configuration order: ``cycle a -> b -> a``."""
    problems: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    seen_cycles: set[frozenset[str]] = set()

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        trail.append(name)
        for dep in nodes[name].depends_on:
            if dep not in nodes:
                continue
            if state.get(dep) == 1:
                cycle = [*trail[trail.index(dep):], dep]
                members = frozenset(cycle)
                if members not in seen_cycles:
                    seen_cycles.add(members)
                    problems.append(f"{nodes[cycle[0]].path}: cycle {' -> '.join(cycle)}")
            elif dep not in state:
                visit(dep, trail)
        trail.pop()
        state[name] = 2

    for name in nodes:
        if name not in state:
            visit(name, [])
    return problems


def _flatten(name: str, nodes: Mapping[str, _Node],
             external: Mapping[str, Selector]) -> tuple[tuple[str, PathRules], ...]:
    """Every transitive dependency of ``name`` with its own rules, breadth-first, once
    (an ``external`` one brings its own flattened list: nothing there depends back)."""
    out: dict[str, PathRules] = {}
    queue = list(nodes[name].depends_on)
    while queue:
        dep = queue.pop(0)
        if dep in out or dep == name:
            continue
        if dep not in nodes:
            selector = external[dep]
            assert isinstance(selector.rules, PathRules)
            out[dep] = selector.rules
            for inner, rules in selector.depends:
                out.setdefault(inner, rules)
            continue
        own = nodes[dep].rules
        assert isinstance(own, PathRules)  # build() refuses a template as a dependency
        out[dep] = own
        queue.extend(nodes[dep].depends_on)
    return tuple(out.items())

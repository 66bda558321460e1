"""Path rules: repository-root-relative globs, compiled once, matched by a pure function.

Glob syntax: ``**`` as a whole segment crosses folders (zero or more), ``*`` matches
within one segment, ``?`` one character, ``[abc]`` / ``[!abc]`` a character class; a
leading ``!`` makes the rule an exclude. A pipeline matches a changed path when at
least one include matches it and no exclude does.

``match`` indexes pipelines by the literal leading directories of their include globs
(``services/svc-12/`` for ``services/svc-12/**``), so each changed path is tested only
against the pipelines that could select it: thousands of pipelines against tens of
thousands of paths cost about one dictionary lookup per directory level of each path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why."""


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            if i + 1 < len(segment) and segment[i + 1] == "*":
                raise GlobError("'**' must be a whole path segment (like 'a/**/b')")
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = segment.find("]", i + 2)
            if end == -1:
                raise GlobError("unclosed '[' character class")
            body = segment[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^/' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def glob_to_regex(pattern: str) -> str:
    """Translate one glob (without its ``!``) into an anchored-free regex body.

    Raises GlobError for an empty pattern, an absolute path, ``.``/``..`` segments or
    a malformed segment.
    """
    if not pattern:
        raise GlobError("empty pattern")
    if pattern.startswith("/"):
        raise GlobError("paths are repository-root-relative: drop the leading '/'")
    segments = pattern.split("/")
    if any(seg in ("", ".", "..") for seg in segments[:-1]) or segments[-1] in (".", ".."):
        raise GlobError("empty, '.' or '..' path segment")
    if segments[-1] == "":
        # 'dir/' means everything below dir, as in .gitignore
        segments[-1] = "**"
    parts: list[str] = []
    last = len(segments) - 1
    for idx, seg in enumerate(segments):
        if seg == "**":
            parts.append(".*" if idx == last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(seg) + ("" if idx == last else "/"))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class PathRules:
    """One pipeline's compiled rules. ``includes``/``excludes`` keep the source globs."""

    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    _include_re: re.Pattern[str]
    _exclude_re: re.Pattern[str] | None
    # per include: the part every path it selects must start with (see _index_key)
    _index_keys: tuple[str, ...]

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> PathRules:
        """Compile globs (``!`` prefix = exclude). Raises GlobError naming the bad glob."""
        includes: list[str] = []
        excludes: list[str] = []
        for raw in patterns:
            negated = raw.startswith("!")
            body = raw[1:] if negated else raw
            try:
                glob_to_regex(body)
            except GlobError as exc:
                raise GlobError(f"{raw!r}: {exc}") from None
            (excludes if negated else includes).append(body)
        if not includes:
            raise GlobError("needs at least one include pattern (a glob without '!')")
        return cls(
            includes=tuple(includes),
            excludes=tuple(excludes),
            _include_re=_alternation(includes),
            _exclude_re=_alternation(excludes) if excludes else None,
            _index_keys=tuple(_index_key(g) for g in includes),
        )

    def matching_include(self, path: str) -> str | None:
        """The first include glob that selects ``path``, or None (also when an exclude hits)."""
        m = self._include_re.fullmatch(path)
        if m is None or m.lastgroup is None:
            return None
        if self._exclude_re is not None and self._exclude_re.fullmatch(path):
            return None
        return self.includes[int(m.lastgroup[1:])]


def _alternation(globs: list[str]) -> re.Pattern[str]:
    # one named group per glob, so a single regex pass also tells which glob matched
    return re.compile("|".join(f"(?P<g{i}>{glob_to_regex(g)})" for i, g in enumerate(globs)))


_WILDCARDS = frozenset("*?[")


def _index_key(glob: str) -> str:
    """What every path ``glob`` selects starts with, as a key of the match index.

    A glob without wildcards selects exactly itself, so the key is the whole path.
    Otherwise the key is its leading whole segments that hold no wildcard, each with
    its '/' (``libs/common-12/`` for ``libs/common-12/**/*.py``; '' for ``**/*.py``):
    such a segment matches only itself, and a ``**`` may match zero segments, so
    nothing after the first wildcard segment is known.
    """
    segments = glob.split("/")
    if not _WILDCARDS.intersection(glob) and segments[-1]:
        return glob
    literal: list[str] = []
    for seg in segments[:-1]:
        if _WILDCARDS.intersection(seg):
            break
        literal.append(seg + "/")
    return "".join(literal)


def _path_keys(path: str) -> list[str]:
    # every key under which a pipeline that can select ``path`` is indexed: '', each
    # leading directory with its '/', and the path itself
    keys = [""]
    slash = path.find("/")
    while slash != -1:
        keys.append(path[: slash + 1])
        slash = path.find("/", slash + 1)
    keys.append(path)
    return keys


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A changed path and the include glob of a pipeline that selected it."""

    path: str
    glob: str


def match(paths: Iterable[str], rules: Mapping[str, PathRules]) -> dict[str, tuple[RuleMatch, ...]]:
    """Which pipelines the changed ``paths`` select.

    Returns pipeline name -> the (path, include glob) pairs that selected it, only for
    pipelines with at least one such pair, paths in input order. Pure: no I/O.

    The result is exactly that of testing every pipeline against every path; an index
    of include keys (see ``_index_key``) only skips the pipelines that cannot match.
    """
    names = list(rules)
    compiled = [rules[name] for name in names]
    index: dict[str, list[int]] = {}
    for pos, rule in enumerate(compiled):
        for key in dict.fromkeys(rule._index_keys):
            index.setdefault(key, []).append(pos)
    hits: dict[int, list[RuleMatch]] = {}
    # paths of one directory share their candidates, except those indexed by the full path
    by_dir: dict[str, list[int]] = {}
    for path in dict.fromkeys(paths):
        keys = _path_keys(path)
        directory = keys[-2]
        candidates = by_dir.get(directory)
        if candidates is None:
            candidates = _candidates(index, keys[:-1])
            by_dir[directory] = candidates
        exact = index.get(path)
        if exact is not None and directory != path:
            candidates = sorted(set(candidates).union(exact))
        for pos in candidates:
            glob = compiled[pos].matching_include(path)
            if glob is not None:
                hits.setdefault(pos, []).append(RuleMatch(path, glob))
    return {names[pos]: tuple(hits[pos]) for pos in range(len(names)) if pos in hits}


def _candidates(index: Mapping[str, list[int]], keys: list[str]) -> list[int]:
    found = [bucket for key in keys if (bucket := index.get(key)) is not None]
    if not found:
        return []
    if len(found) == 1:
        return found[0]
    # a pipeline indexed under two of these keys must be tested once
    return sorted(set[int]().union(*found))

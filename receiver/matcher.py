"""Path rules: repository-root-relative globs, compiled once, matched by a pure function.

Glob syntax: ``**`` as a whole segment crosses folders (zero or more), ``*`` matches
within one segment, ``?`` one character, ``[abc]`` / ``[!abc]`` (ranges like ``[0-9]``) a
character class; a trailing ``/`` means everything below; a leading ``!`` makes the rule
an exclude. A pipeline matches a changed path when at least one include matches it and
no exclude does. A path is any text: only ``/`` separates folders (a newline, say, is one
more character). A template glob (:mod:`receiver.modules`) may hold ``{module}``: one
segment's module value, captured.

This is the only glob matcher: the service, ``explain`` and ``check-config`` match with
it, and so do branch, tag and ``module_map.allow`` rules. Paths and globs come from
repositories, so matching never backtracks: a path is split into its segments once, a
``*`` run inside a segment places each literal part at its leftmost position (the
classic wildcard algorithm, which needs no retry because every part has a fixed length),
and the whole-segment parts between two ``**`` are placed at their leftmost segment the
same way. A glob ``g`` tests a path ``p`` in O(len(p) x len(g)) steps, whatever either
holds (``**/**/**/x``, ``*a*a*a*b``): no regular expression, so nothing to backtrack.

``match`` indexes pipelines by the literal leading directories of their include globs
(``services/svc-12/`` for ``services/svc-12/**``), so each changed path is tested only
against the pipelines that could select it: thousands of pipelines against tens of
thousands of paths cost about one dictionary lookup per directory level of each path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

PLACEHOLDER = "{module}"  # a template glob's module segment part
# what a module value may hold: what a CodePipeline pipeline name may (it becomes one)
MODULE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.@_-"


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why."""


# --- one segment -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Class:
    """``[abc]``, ``[a-z]`` or ``[!abc]``: one character of a set (never '/': paths are
    split at it before a class sees them)."""

    negate: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def __call__(self, ch: str) -> bool:
        hit = ch in self.chars or any(lo <= ch <= hi for lo, hi in self.ranges)
        return hit != self.negate


_ANY = object()  # '?': any one character
_Atom = str | _Class | object


@dataclass(frozen=True, slots=True)
class _Part:
    """A fixed-length run of one-character atoms (the text between two ``*``).
    ``text`` is set when every atom is a literal character (then str methods do the work)."""

    atoms: tuple[_Atom, ...]
    text: str | None
    size: int

    def at(self, s: str, i: int) -> bool:
        """Whether the part matches ``s`` at ``i`` (the caller keeps ``i + size <= len(s)``)."""
        if self.text is not None:
            return s.startswith(self.text, i)
        for k, atom in enumerate(self.atoms):
            ch = s[i + k]
            if atom is _ANY:
                continue
            if isinstance(atom, str):
                if ch != atom:
                    return False
            elif isinstance(atom, _Class) and not atom(ch):
                return False
        return True

    def find(self, s: str, lo: int, hi: int) -> int:
        """The leftmost ``i`` in ``lo .. hi - size`` where the part matches, else -1."""
        if self.text is not None:
            return s.find(self.text, lo, hi)
        for i in range(lo, hi - self.size + 1):
            if self.at(s, i):
                return i
        return -1


def _match_parts(parts: tuple[_Part, ...], s: str) -> bool:
    """Whether segment text ``s`` matches the parts ``P0*P1*...*Pj``."""
    first = parts[0]
    if len(parts) == 1:
        return len(s) == first.size and first.at(s, 0)
    last = parts[-1]
    end = len(s) - last.size
    if first.size > end or not first.at(s, 0) or not last.at(s, end):
        return False
    # each middle part at its leftmost place: any later place leaves less room
    pos = first.size
    for part in parts[1:-1]:
        found = part.find(s, pos, end)
        if found < 0:
            return False
        pos = found + part.size
    return True


def _tester(parts: tuple[_Part, ...]) -> Callable[[str], bool]:
    """``_match_parts`` for these parts; the shapes most globs have (``name``, ``*``,
    ``*.md``, ``svc-*``) as one str method."""
    texts = [p.text for p in parts]
    if None in texts or len(parts) > 2:
        return functools.partial(_match_parts, parts)
    if len(parts) == 1:
        return str(texts[0]).__eq__
    prefix, suffix = str(texts[0]), str(texts[1])
    if not prefix and not suffix:
        return lambda s: True
    if not prefix:
        return lambda s: s.endswith(suffix)
    if not suffix:
        return lambda s: s.startswith(prefix)
    need = len(prefix) + len(suffix)
    return lambda s: len(s) >= need and s.startswith(prefix) and s.endswith(suffix)


@dataclass(frozen=True, slots=True)
class _Segment:
    """One segment pattern (no '/'). ``parts`` are the runs between ``*`` and ``test``
    matches them; with ``module``, ``parts`` is empty and the segment is
    ``prefix{module}suffix`` (literal ``prefix``/``suffix``: ``module`` holds them)."""

    source: str
    parts: tuple[_Part, ...]
    module: tuple[str, str] | None = None
    test: Callable[[str], bool] = bool

    @property
    def literal(self) -> str | None:
        """The segment's text when it holds no wildcard."""
        if self.module is None and len(self.parts) == 1:
            return self.parts[0].text
        return None

    def capture(self, s: str) -> str | None:
        """The module value segment text ``s`` gives a ``{module}`` segment, or None."""
        assert self.module is not None
        prefix, suffix = self.module
        if len(s) <= len(prefix) + len(suffix) or not s.startswith(prefix) \
                or not s.endswith(suffix):
            return None
        value = s[len(prefix):len(s) - len(suffix)]
        return None if value.strip(MODULE_CHARS) else value


def _class(segment: str, i: int) -> tuple[_Class, int]:
    """The class starting at ``segment[i] == '['`` and the index of its ']'."""
    end = segment.find("]", i + 2)  # a ']' right after '[' is a member, as in fnmatch
    if end == -1:
        raise GlobError("unclosed '[' character class")
    body = segment[i + 1:end]
    negate = body.startswith("!")
    if negate:
        body = body[1:]
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    j = 0
    while j < len(body):
        if j + 2 < len(body) and body[j + 1] == "-":
            lo, hi = body[j], body[j + 2]
            if lo > hi:
                raise GlobError(f"bad character range {lo}-{hi} in '[{body}]'")
            ranges.append((lo, hi))
            j += 3
        else:
            chars.add(body[j])
            j += 1
    return _Class(negate, frozenset(chars), tuple(ranges)), end


def _segment(segment: str, *, placeholder: bool = False) -> _Segment:
    """Compile one segment pattern; ``placeholder``: ``{module}`` is the module, not text."""
    if placeholder and PLACEHOLDER in segment:
        prefix, _, suffix = segment.partition(PLACEHOLDER)
        if PLACEHOLDER in suffix:
            raise GlobError(f"{PLACEHOLDER} at most once in one path segment")
        if any(ch in prefix + suffix for ch in "*?["):
            raise GlobError(f"a path segment holding {PLACEHOLDER} holds no other wildcard "
                            f"(like 'services/{PLACEHOLDER}/**' or 'jobs/{PLACEHOLDER}.yaml')")
        return _Segment(segment, (), (prefix, suffix))
    parts: list[_Part] = []
    atoms: list[_Atom] = []

    def close() -> None:
        text = "".join(a for a in atoms if isinstance(a, str)) \
            if all(isinstance(a, str) for a in atoms) else None
        parts.append(_Part(tuple(atoms), text, len(atoms)))
        atoms.clear()

    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            if i + 1 < len(segment) and segment[i + 1] == "*":
                raise GlobError("'**' must be a whole path segment (like 'a/**/b')")
            close()
        elif ch == "?":
            atoms.append(_ANY)
        elif ch == "[":
            cls, i = _class(segment, i)
            atoms.append(cls)
        else:
            atoms.append(ch)
        i += 1
    close()
    return _Segment(segment, tuple(parts), None, _tester(tuple(parts)))


# --- one glob --------------------------------------------------------------------------------

_Chunk = tuple[_Segment, ...]  # whole segments between two '**'
# how Glob.matches (and bind_path) go about it: the shapes most globs have need no split
_LITERAL, _PREFIX, _HEAD_LAST, _HEAD_TAIL, _MODULE_HEAD, _GENERAL = range(6)


@dataclass(frozen=True, slots=True)
class Glob:
    """One compiled glob (without its ``!``).

    ``head`` must match the path's first segments and ``tail`` its last ones; each of
    ``middles`` somewhere between, in order, with ``**`` (any number of non-empty
    segments) around them; ``rest``: the glob ended in ``**`` (anything, after a '/').
    """

    source: str
    head: _Chunk
    middles: tuple[_Chunk, ...]
    tail: _Chunk
    rest: bool
    inner: bool  # a '**' between head and tail (else the path has exactly their segments)
    module: bool  # holds {module} (compiled with placeholder=True)
    _kind: int
    _text: str  # _LITERAL: the path; else what every matching path starts with

    @classmethod
    def compile(cls, pattern: str, *, placeholder: bool = False) -> Glob:
        """Compile ``pattern`` (no leading ``!``). ``placeholder``: ``{module}`` segments
        capture a module value (a template's glob). Raises GlobError saying what is wrong.

        A glob is immutable, so each is compiled once per process (a bounded cache): the
        schema's check, the pipeline's rules and the module map's build share it."""
        return _compiled(pattern, placeholder)

    @classmethod
    def _compile(cls, pattern: str, placeholder: bool) -> Glob:
        if not pattern:
            raise GlobError("empty pattern")
        if pattern.startswith("/"):
            raise GlobError("paths are repository-root-relative: drop the leading '/'")
        raw = pattern.split("/")
        if any(seg in ("", ".", "..") for seg in raw[:-1]) or raw[-1] in (".", ".."):
            raise GlobError("empty, '.' or '..' path segment")
        if raw[-1] == "":
            raw[-1] = "**"  # 'dir/' means everything below dir, as in .gitignore
        rest = raw[-1] == "**"
        while raw and raw[-1] == "**":  # 'a/**/**' is 'a/**'
            raw.pop()
        chunks: list[list[_Segment]] = [[]]
        for seg in raw:
            if seg == "**":
                if chunks[-1] or len(chunks) == 1:  # '**/**' is '**'
                    chunks.append([])
                continue
            chunks[-1].append(_segment(seg, placeholder=placeholder))
        head = tuple(chunks[0])
        inner = len(chunks) > 1
        middles: tuple[_Chunk, ...]
        tail: _Chunk
        if rest or not inner:
            middles, tail = tuple(tuple(c) for c in chunks[1:]), ()
        else:
            middles, tail = tuple(tuple(c) for c in chunks[1:-1]), tuple(chunks[-1])
        module = any(s.module is not None for c in chunks for s in c)
        if module:
            _check_bindings(head, middles, tail)
        literal = [s.literal for s in head]
        plain = not module and None not in literal
        text = "".join(f"{s}/" for s in literal if s is not None)
        kind = _GENERAL
        if plain and not inner and not rest:
            kind, text = _LITERAL, text[:-1]
        elif plain and not inner:  # 'a/b/**': everything below a/b
            kind = _PREFIX
        elif plain and not rest and not middles:  # 'a/**/*.py', '**/*.md'
            kind = _HEAD_LAST if len(tail) == 1 else _HEAD_TAIL
        elif module and rest and not inner and head[-1].module is not None and \
                None not in literal[:-1]:  # 'services/{module}/**'
            kind = _MODULE_HEAD
            text = "".join(f"{s}/" for s in literal[:-1] if s is not None)
        return cls(pattern, head, middles, tail, rest, inner, module, kind, text)

    def matches(self, path: str) -> bool:
        """Whether ``path`` matches (split at '/' only when the glob's shape needs it)."""
        kind = self._kind
        if kind == _LITERAL:
            return path == self._text
        if kind == _PREFIX:
            return path.startswith(self._text)
        if kind == _HEAD_LAST:
            # the last segment, the literal head, and non-empty segments between: without
            # '//' or a leading '/' only the last one (the tail's) can be empty
            if not self.tail[0].test(path[path.rfind("/") + 1:]) or \
                    not path.startswith(self._text):
                return False
            if "//" not in path and path[:1] != "/":
                return True
        segs = path.split("/")
        if kind in (_HEAD_TAIL, _HEAD_LAST):
            # the tail's segments at the end, the literal head, non-empty segments between
            tail = self.tail
            start, end = len(self.head), len(segs) - len(tail)
            if end < start or not (tail[0].test(segs[-1]) if len(tail) == 1 else all(
                    p.test(s) for p, s in zip(tail, segs[end:], strict=True))):
                return False
            if not path.startswith(self._text):
                return False
            # without '//' or a leading '/', only the last segment (in the tail) can be empty
            return all(segs[start:end]) if "//" in path or path[:1] == "/" else True
        return self.bind(segs) is not None

    def bind_path(self, path: str, value: str | None = None) -> str | None:
        """``bind`` of ``path`` (split only where the glob's shape needs it: not for
        ``services/{module}/**``)."""
        if self._kind == _MODULE_HEAD:
            start = len(self._text)
            end = path.find("/", start)  # '**' after it: at least one more segment
            if end < 0 or not path.startswith(self._text):
                return None
            segment = self.head[-1]
            if segment.module == ("", ""):  # the whole segment is the module
                got: str | None = path[start:end]
                if not got or got.strip(MODULE_CHARS):
                    return None
            else:
                got = segment.capture(path[start:end])
            return got if got is not None and (value is None or got == value) else None
        return self.bind(path.split("/"), value)

    def bind(self, segs: Sequence[str], value: str | None = None) -> str | None:
        """Match path segments ``segs``. Returns the module value (with ``{module}``; when
        ``value`` is given, only that one), '' for a match of a glob without it, or None."""
        n = len(segs)
        head, tail = self.head, self.tail
        if not self.inner:
            # 'a/**': at least one more segment, of anything; else exactly the head's
            if (n <= len(head)) if self.rest else (n != len(head)):
                return None
            return _chunk(head, segs, 0, value)
        end = n - 1 if self.rest else n - len(tail)
        if end < len(head):
            return None
        found = _chunk(head, segs, 0, value)
        if found is None:
            return None
        value = found or value
        if tail:
            found = _chunk(tail, segs, end, value)
            if found is None:
                return None
            value = found or value
        pos = len(head)
        for middle in self.middles:
            # leftmost place: every later one leaves less room for what follows
            size = len(middle)
            while True:
                if pos + size > end:
                    return None
                found = _chunk(middle, segs, pos, value)
                if found is not None:
                    value = found or value
                    pos += size
                    break
                if not segs[pos]:  # '**' crosses non-empty segments only
                    return None
                pos += 1
        if not self.rest and not all(segs[pos:end]):
            return None
        return value or ""


@functools.lru_cache(maxsize=1 << 13)
def _compiled(pattern: str, placeholder: bool) -> Glob:
    return Glob._compile(pattern, placeholder)


def _chunk(chunk: _Chunk, segs: Sequence[str], start: int, value: str | None) -> str | None:
    """Match ``chunk`` at ``segs[start:]``: the module value it binds (or ``value``), ''
    when it binds none, None when it does not match."""
    for k, pattern in enumerate(chunk):
        s = segs[start + k]
        if pattern.module is None:
            if not pattern.test(s):
                return None
            continue
        got = pattern.capture(s)
        if got is None or (value is not None and got != value):
            return None
        value = got
    return value or ""


def _check_bindings(head: _Chunk, middles: tuple[_Chunk, ...], tail: _Chunk) -> None:
    """A module value bound in one middle part and checked in another would need a
    retry of the first place; with one in the head or the tail it never does."""
    def has(chunk: _Chunk) -> bool:
        return any(s.module is not None for s in chunk)

    if not has(head) and not has(tail) and sum(map(has, middles)) > 1:
        raise GlobError(f"{PLACEHOLDER} between different '**' needs one {PLACEHOLDER} "
                        "before the first '**' or after the last")


# --- rules of one pipeline -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathRules:
    """One pipeline's compiled rules. ``includes``/``excludes`` keep the source globs."""

    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    _includes: tuple[Glob, ...]
    _excludes: tuple[Glob, ...]
    # per include: the part every path it selects must start with (see _index_key)
    _index_keys: tuple[str, ...]

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> PathRules:
        """Compile globs (``!`` prefix = exclude). Raises GlobError naming the bad glob."""
        includes: list[Glob] = []
        excludes: list[Glob] = []
        for raw in patterns:
            negated = raw.startswith("!")
            try:
                glob = Glob.compile(raw[1:] if negated else raw)
            except GlobError as exc:
                raise GlobError(f"{raw!r}: {exc}") from None
            (excludes if negated else includes).append(glob)
        if not includes:
            raise GlobError("needs at least one include pattern (a glob without '!')")
        return cls(
            includes=tuple(g.source for g in includes),
            excludes=tuple(g.source for g in excludes),
            _includes=tuple(includes),
            _excludes=tuple(excludes),
            _index_keys=tuple(_index_key(g.source) for g in includes),
        )

    @property
    def directories(self) -> tuple[str, ...]:
        """What every path an include selects starts with, each once: its literal leading
        directories (``services/api/`` for ``services/api/**/*.go``, '' for ``**/*.md``),
        or the whole path for a glob without wildcards. The match index tests these rules
        only on paths one of them is a key of (``path_keys``)."""
        return tuple(dict.fromkeys(self._index_keys))

    def matching_include(self, path: str) -> str | None:
        """The first include glob that selects ``path``, or None (also when an exclude hits)."""
        return self._first(path)

    def _first(self, path: str) -> str | None:
        # each glob splits the path only if its shape needs it (most do not)
        for glob in self._includes:
            if glob.matches(path):
                for exclude in self._excludes:
                    if exclude.matches(path):
                        return None
                return glob.source
        return None


def check_glob(pattern: str, *, placeholder: bool = False) -> None:
    """Raise GlobError when ``pattern`` (``!`` prefix allowed) is no valid glob
    (``placeholder``: ``{module}`` segments allowed, as :meth:`Glob.compile` takes them)."""
    Glob.compile(pattern.removeprefix("!"), placeholder=placeholder)


@dataclass(frozen=True, slots=True)
class NameRules:
    """Globs over names that hold no '/' (``module_map.allow`` over pipeline names):
    ``*``, ``?`` and classes, as in a path segment."""

    patterns: tuple[str, ...]
    _segments: tuple[_Segment, ...]

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> NameRules:
        """Compile ``patterns``. Raises GlobError naming the bad one."""
        listed = tuple(patterns)
        segments = []
        for pattern in listed:
            if "/" in pattern or not pattern:
                raise GlobError(f"{pattern!r}: a name pattern holds no '/' and is not empty")
            try:
                segments.append(_segment(pattern))
            except GlobError as exc:
                raise GlobError(f"{pattern!r}: {exc}") from None
        return cls(listed, tuple(segments))

    def admits(self, name: str) -> bool:
        """Whether ``name`` matches one of the patterns."""
        return any(s.test(name) for s in self._segments)


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


def path_keys(path: str) -> list[str]:
    """Every key under which a pipeline that can select ``path`` is indexed: '', each
    leading directory with its '/', and the path itself."""
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
    of include keys (see ``_index_key``, ``path_keys``) only skips the pipelines that cannot match.
    """
    names = list(rules)
    compiled = [rules[name] for name in names]
    index: dict[str, list[int]] = {}
    for pos, rule in enumerate(compiled):
        for key in rule.directories:
            index.setdefault(key, []).append(pos)
    hits: dict[int, list[RuleMatch]] = {}
    # paths of one directory share their candidates, except those indexed by the full path
    by_dir: dict[str, list[int]] = {}
    for path in dict.fromkeys(paths):
        keys = path_keys(path)
        directory = keys[-2]
        candidates = by_dir.get(directory)
        if candidates is None:
            candidates = _candidates(index, keys[:-1])
            by_dir[directory] = candidates
        exact = index.get(path)
        if exact is not None and directory != path:
            candidates = sorted(set(candidates).union(exact))
        if not candidates:
            continue
        for pos in candidates:
            glob = compiled[pos]._first(path)
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

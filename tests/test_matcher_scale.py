"""The indexed ``match`` gives exactly what testing every pipeline against every path gives.

``match`` skips pipelines by the literal leading directories of their include globs; these
tests compare it with the plain every-pipeline-every-path loop, on hand-picked globs where
skipping is easiest to get wrong and on seeded random rule sets over a small alphabet (so
that many paths are selected, excluded, or selected by several includes at once).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from receiver.matcher import GlobError, PathRules, RuleMatch, match


def every_pair(paths: Sequence[str], rules: Mapping[str, PathRules]) -> dict[str, tuple[RuleMatch, ...]]:
    """The reference: every pipeline against every distinct path, in input order."""
    distinct = list(dict.fromkeys(paths))
    result: dict[str, tuple[RuleMatch, ...]] = {}
    for name, rule in rules.items():
        hits = tuple(RuleMatch(p, g) for p in distinct if (g := rule.matching_include(p)) is not None)
        if hits:
            result[name] = hits
    return result


@pytest.mark.parametrize(
    ("globs", "path"),
    [
        (["**/*.py"], "app.py"),                          # '**' matches zero folders: no literal prefix
        (["**/*.py"], "a/b/app.py"),
        (["a/**/b"], "a/b"),                              # prefix 'a/' is the whole directory of the path
        (["a/**"], "a/"),
        (["docs/"], "docs/guide/intro.md"),               # trailing '/' means everything below
        (["Makefile"], "Makefile"),                       # a literal glob is its own key
        (["sub/Makefile"], "sub/Makefile"),
        (["[ab]/x"], "a/x"),                              # a class in the first segment: no prefix
        (["?/x"], "b/x"),
        (["a*/x"], "ab/x"),
        (["svc/*/api/**"], "svc/one/api/v1/x.go"),
        (["svc/**", "svc/api/**"], "svc/api/x.go"),       # indexed under two keys, reported once
        (["svc/api/**", "svc/**"], "svc/api/x.go"),       # ... with the first include that matches
        (["libs/c-1/**/*.py", "!**/test_*.py"], "libs/c-1/x/test_a.py"),
        (["a.b/c+d(e)"], "a.b/c+d(e)"),                   # regex metacharacters stay literal
    ],
)
def test_indexed_match_agrees_with_every_pair_on_tricky_globs(globs: list[str], path: str) -> None:
    rules = {"p": PathRules.compile(globs), "other": PathRules.compile(["zzz/**"])}
    # a path under the glob's literal prefix but not selected, next to the one that is
    near_miss = path.rsplit("/", 1)[0] + "/zz.unmatched" if "/" in path else "zz.unmatched"
    paths = [path, near_miss, path]
    assert match(paths, rules) == every_pair(paths, rules)


def test_indexed_match_finds_the_expected_pipeline_for_a_literal_root_file() -> None:
    rules = {"make": PathRules.compile(["Makefile"]), "svc": PathRules.compile(["svc/**"])}
    assert match(["svc/Makefile", "Makefile"], rules) == {
        "make": (RuleMatch("Makefile", "Makefile"),),
        "svc": (RuleMatch("svc/Makefile", "svc/**"),),
    }


NAMES = ("a", "b", "ab", "svc-1", "svc-2", "x.py", "y.md", "README.md", "test_z.py")
WILD_SEGMENTS = ("*", "**", "?b", "*.py", "*.md", "[ab]", "[!a]*", "svc-*", "a*")


def random_glob(rnd: random.Random) -> str:
    """A valid glob of 1-4 segments, literal and wildcard segments mixed."""
    while True:
        segments = [rnd.choice(WILD_SEGMENTS) if rnd.random() < 0.35 else rnd.choice(NAMES)
                    for _ in range(rnd.randint(1, 4))]
        glob = "/".join(segments) + ("/" if rnd.random() < 0.1 else "")
        try:
            PathRules.compile([glob])
        except GlobError:
            continue
        return glob


def random_rules(rnd: random.Random, n: int) -> dict[str, PathRules]:
    """``n`` pipelines with 1-3 includes and 0-2 excludes each, in shuffled order."""
    rules = {}
    for i in range(n):
        globs = ([random_glob(rnd) for _ in range(rnd.randint(1, 3))]
                 + ["!" + random_glob(rnd) for _ in range(rnd.randint(0, 2))])
        rnd.shuffle(globs)
        rules[f"p{i}"] = PathRules.compile(globs)
    return rules


def random_paths(rnd: random.Random, n: int) -> list[str]:
    return ["/".join(rnd.choice(NAMES) for _ in range(rnd.randint(1, 5))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(25))
def test_indexed_match_agrees_with_every_pair_on_random_rules(seed: int) -> None:
    rnd = random.Random(seed)
    rules = random_rules(rnd, 60)
    paths = random_paths(rnd, 400)
    expected = every_pair(paths, rules)
    # the workload must exercise both outcomes, or agreement would prove little
    assert expected and len(expected) < len(rules)
    assert match(paths, rules) == expected
    assert list(match(paths, rules)) == list(expected)  # pipelines in configuration order

"""Benchmark 4's workload: a monorepo-shaped set of pipelines and changed paths.

Pipelines own one service directory each (``services/svc-1234/**``), most exclude
documentation (``!**/*.md``), and many also build from a shared library
(``libs/common-12/**/*.py``); some are web apps (``apps/team-7/app-1234/**``) that ignore
their tests, and a few watch a single generated file. Changed paths spread over those
directories plus docs, tools and root files that no pipeline owns, so the matcher sees
hits, misses and excludes. Everything is drawn from a seeded generator: the same sizes
give the same workload in every run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

from receiver.matcher import PathRules, RuleMatch

LIBS = 200
TEAMS = 50
EXTS = ("go", "py", "ts", "md", "json", "yaml", "proto")


def pipeline_globs(n_pipelines: int, seed: int = 1) -> dict[str, list[str]]:
    """``n_pipelines`` pipelines with 2-3 globs each, keyed by pipeline name."""
    rnd = random.Random(seed)
    out: dict[str, list[str]] = {}
    for i in range(n_pipelines):
        kind = rnd.random()
        if kind < 0.6:
            globs = [f"services/svc-{i}/**", "!**/*.md"]
            if rnd.random() < 0.5:
                globs.insert(1, f"libs/common-{rnd.randrange(LIBS)}/**/*.py")
        elif kind < 0.9:
            globs = [f"apps/team-{i % TEAMS}/app-{i}/**", "!**/test/**"]
            if rnd.random() < 0.5:
                globs.append("!**/*.md")
        else:
            globs = [f"services/svc-{i}/**", f"proto/svc-{i}/*.proto"]
            if rnd.random() < 0.5:
                globs.append("schemas/openapi.yaml")
        out[f"pipeline-{i:05d}"] = globs
    return out


def changed_paths(n_paths: int, n_pipelines: int, seed: int = 2) -> list[str]:
    """``n_paths`` distinct repository paths, monorepo-shaped, over ``n_pipelines`` modules."""
    rnd = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n_paths:
        kind = rnd.random()
        ext = rnd.choice(EXTS)
        leaf = f"file_{rnd.randrange(100)}.{ext}"
        if kind < 0.55:
            svc = rnd.randrange(n_pipelines)
            depth = "/".join(f"mod_{rnd.randrange(8)}" for _ in range(rnd.randrange(1, 4)))
            path = f"services/svc-{svc}/src/{depth}/{leaf}"
        elif kind < 0.7:
            path = f"libs/common-{rnd.randrange(LIBS)}/pkg/m{rnd.randrange(10)}/{leaf}"
        elif kind < 0.85:
            app = rnd.randrange(n_pipelines)
            sub = rnd.choice(("src", "test", "src/components", "public"))
            path = f"apps/team-{app % TEAMS}/app-{app}/{sub}/{leaf}"
        elif kind < 0.9:
            path = f"proto/svc-{rnd.randrange(n_pipelines)}/api_{rnd.randrange(5)}.proto"
        elif kind < 0.97:
            path = f"docs/{rnd.choice(('guide', 'adr', 'api'))}/page_{rnd.randrange(10**6)}.md"
        else:
            path = rnd.choice(("README.md", "Makefile", "schemas/openapi.yaml", ".gitignore",
                               f"tools/script_{rnd.randrange(10**6)}.sh"))
        seen[path] = None
    return list(seen)


def compile_rules(globs: Mapping[str, Sequence[str]]) -> dict[str, PathRules]:
    """Compile every pipeline's globs, as the configuration loader does at start-up."""
    return {name: PathRules.compile(g) for name, g in globs.items()}


def naive_match(paths: Sequence[str], rules: Mapping[str, PathRules]
                ) -> dict[str, tuple[RuleMatch, ...]]:
    """Every pipeline against every path: the algorithm ``match`` had before indexing."""
    path_list = list(dict.fromkeys(paths))
    result: dict[str, tuple[RuleMatch, ...]] = {}
    for name, rule in rules.items():
        hits = []
        for path in path_list:
            glob = rule.matching_include(path)
            if glob is not None:
                hits.append(RuleMatch(path, glob))
        if hits:
            result[name] = tuple(hits)
    return result


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds (the least disturbed one)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best

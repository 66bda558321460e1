#!/usr/bin/env python3
"""Benchmark 7: the module map at scale (DESIGN.md "Module map").

5,000 concrete pipelines from one template (``svc-{module}-deploy`` over
``services/{module}/**``, each holding a baseline, so each is decided under its own name)
plus 500 team pipelines on a three-level dependency graph (``team-N`` depends on module
``lib-team-N``, which depends on ``lib-domain-K``, which depends on ``lib-common``), decided
by ``receiver.decide.decide`` against 5,000 ... 50,000 changed paths. The reference is what
the template saves: compiling 5,000 pipelines' own path rules (``PathRules.compile``), as a
push would pay if every concrete pipeline compiled its own; measured on 500 and scaled.

Runs alone (``python3 bench/modules.py``) or as benchmark 7 of bench/run.py. Pure CPU, no
network. Seeded: the same workload in every run.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import TypeAdapter

from bench.matching import best_of
from providers.base import Diff
from receiver.config import Modules, Pipelines
from receiver.decide import decide
from receiver.matcher import PathRules
from receiver.modules import ModuleMap, Selector, build

MODULES = 5000
TEAMS = 500
DOMAINS = 50
SIZES = (5000, 10000, 20000, 50000)
BASE, HEAD = "a" * 40, "b" * 40


def module_map() -> tuple[dict[str, Selector], float]:
    """The selectors a push is decided with, and the seconds ``build`` took to make them
    (configuration load: once per process, not per push)."""
    pipelines: list[dict[str, Any]] = [
        {"name": "svc-{module}-deploy", "paths": ["services/{module}/**", "!**/*.md"],
         "depends_on": ["lib-common"]}]
    pipelines += [{"name": f"team-{t}", "paths": [f"teams/team-{t}/**"],
                   "depends_on": [f"lib-team-{t}"]} for t in range(TEAMS)]
    modules: dict[str, Any] = {"lib-common": {"paths": ["libs/common/**"]}}
    modules.update({f"lib-domain-{d}": {"paths": [f"libs/domain-{d}/**"],
                                        "depends_on": ["lib-common"]} for d in range(DOMAINS)})
    modules.update({f"lib-team-{t}": {"paths": [f"libs/team-{t}/**"],
                                      "depends_on": [f"lib-domain-{t % DOMAINS}"]}
                    for t in range(TEAMS)})
    t0 = time.perf_counter()  # the schema's validation and the graph: what loading costs
    built, problems = build(TypeAdapter(Pipelines).validate_python(pipelines),
                            TypeAdapter(Modules).validate_python(modules))
    took = time.perf_counter() - t0
    assert built is not None, problems.lines()
    known = [f"svc-m{i:04d}-deploy" for i in range(MODULES)]  # every one holds a baseline
    return ModuleMap(built.selectors).for_branch(known), took


def changed_paths(n: int, seed: int = 3) -> list[str]:
    """``n`` distinct paths: 80 % under the services, 10 % under the teams, 10 % under the
    libraries (a few of those under libs/common, which selects everything)."""
    rnd = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        kind = rnd.random()
        leaf = f"f{rnd.randrange(1000)}.{rnd.choice(('py', 'go', 'md', 'ts'))}"
        if kind < 0.8:
            path = f"services/m{rnd.randrange(MODULES):04d}/src/p{rnd.randrange(20)}/{leaf}"
        elif kind < 0.9:
            path = f"teams/team-{rnd.randrange(TEAMS)}/src/{leaf}"
        elif kind < 0.9005:
            path = f"libs/common/{leaf}"
        elif kind < 0.91:
            path = f"libs/domain-{rnd.randrange(DOMAINS)}/{leaf}"
        else:
            path = f"libs/team-{rnd.randrange(TEAMS)}/{leaf}"
        seen[path] = None
    return list(seen)


def expected_changed(paths: list[str]) -> set[str]:
    """What must start, worked out directly from the workload's shape (a check of decide)."""
    if any(p.startswith("libs/common/") for p in paths):
        return {f"svc-m{i:04d}-deploy" for i in range(MODULES)} | \
            {f"team-{t}" for t in range(TEAMS)}
    out = {f"svc-{p.split('/')[1]}-deploy" for p in paths
           if p.startswith("services/") and not p.endswith(".md")}
    out |= {f"team-{p.split('/')[1].removeprefix('team-')}" for p in paths
            if p.startswith("teams/")}
    teams = {int(p.split("/")[1].removeprefix("team-")) for p in paths
             if p.startswith("libs/team-")}
    domains = {int(p.split("/")[1].removeprefix("domain-")) for p in paths
               if p.startswith("libs/domain-")}
    out |= {f"team-{t}" for t in range(TEAMS) if t in teams or t % DOMAINS in domains}
    return out


def run() -> dict[str, float | bool]:
    """Print the figures; return them (seconds, growth, agreement)."""
    selectors, build_s = module_map()
    paths = changed_paths(max(SIZES))
    print(f"  {len(selectors)} selectors ({MODULES} concrete pipelines of one template, "
          f"{TEAMS} team pipelines, {TEAMS + DOMAINS + 1} modules in three levels); "
          f"build (at configuration load) {build_s:.3f} s")
    times: dict[int, float] = {}
    agree = True
    for n in SIZES:
        subset = sorted(paths[:n])
        diff = Diff("ahead", frozenset(subset))
        times[n] = best_of(lambda d=diff: decide(selectors, BASE, HEAD, d), 3)  # type: ignore[misc]
        decisions = decide(selectors, BASE, HEAD, diff)
        changed = {name for name, d in decisions.items() if d.verdict == "changed"}
        agree = agree and changed == expected_changed(subset)
        print(f"  {n:6d} paths: {times[n]:.3f} s  ({len(changed)} pipelines changed, "
              f"{times[n] / n * 1e6:.2f} us per path)")
    without_common = sorted(p for p in paths if not p.startswith("libs/common/"))
    diff = Diff("ahead", frozenset(without_common))
    no_common = best_of(lambda: decide(selectors, BASE, HEAD, diff), 3)
    started = sum(d.verdict == "changed" for d in decide(selectors, BASE, HEAD, diff).values())
    print(f"  {len(without_common)} paths without libs/common: {no_common:.3f} s "
          f"({started} pipelines changed)")
    sample = [[f"services/m{i:04d}/**", "!**/*.md", "libs/common/**"] for i in range(500)]
    compile_500 = best_of(lambda: [PathRules.compile(g) for g in sample], 1)
    compile_all = compile_500 * MODULES / len(sample)
    print(f"  reference: compiling {MODULES} pipelines' own rules: {compile_500:.3f} s for "
          f"{len(sample)} -> {compile_all:.2f} s; decide agrees with the workload: {agree}")
    growth = times[max(SIZES)] / times[min(SIZES)]
    return {"decide_s": times[max(SIZES)], "growth": growth,
            "linear": max(SIZES) / min(SIZES), "compile_s": compile_all, "agree": agree}


if __name__ == "__main__":
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    figures = run()
    print(f"decide 50,000 paths: {figures['decide_s']:.3f} s (target < 0.5 s); growth "
          f"5,000 -> 50,000: {figures['growth']:.2f}x (linear {figures['linear']:.0f}x)")

"""Fuzzing repository-side module map files with Hypothesis, in a child process limited to
1 GiB of address space.

Generated files mix what a map may hold (pipelines, templates, modules, dependencies,
variables, globs of every wildcard) with what an attacker writes: names outside ``allow``
or of another repository, chains of ``**`` and ``*a``, long cycles, thousands of entries,
anchors and aliases, tags, merge keys, deep nesting, and bytes cut or flipped anywhere.
Each file is validated as the service does (``parse_file`` against the repository's
``module_map`` settings, its configuration and the other repositories' names) and, when
valid, a push of hostile paths (long runs of one letter, newlines, deep folders) is decided
with it.

Held for every example: no exception; at most ``MAX_PROBLEMS`` problems and a count, each
printable; a valid file starts nothing outside ``allow`` or the configuration and nothing
another repository names; an example takes under ``EXAMPLE_SECONDS`` (a generous bound:
a backtracking matcher or an unbounded file takes hours or gigabytes on these); and the
whole run stays under 1 GiB (the limit is the child's: breaking it is a MemoryError).
``FUZZ_MAP_EXAMPLES`` scales the run.

Also held, in this process: the glob matcher agrees with the plain regular-expression
reading of the documented glob syntax on small inputs (where a regex engine is safe).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("FUZZ_MAP_EXAMPLES", "500"))
EXAMPLE_SECONDS = 5.0
ADDRESS_SPACE = 1 << 30

WORDS = ["services", "libs", "common", "api", "jobs", "docs", "a", "b", "aaaa", "x.py",
         "README.md", "prod", "payments", "billing"]
SEGMENTS = ["*", "**", "?", "[a-c]", "[!p]*", "*.py", "*.md", "a*b", "*a*a*b", "?b*",
            "{module}", "{module}.yaml", "svc-{module}", "*a" * 6 + "*b", "[z-a]", "[",
            "**/**", "{module}*"]
NAMES = ["acme-api", "acme-{module}-svc", "acme-{module}", "{module}-acme", "acme-jobs",
         "other-tool", "acme-payments-prod-deploy", "acme-ledger", "acme-platform-deploy",
         "acme-prod-{module}", "libs-common", "m0", "m1", "acme-" + "x" * 120]
MODULE_NAMES = ["libs-common", "m0", "m1", "m2", "ui-kit", "acme-api", "bad name"]
VARIABLES = ["MODULE", "DEPLOY_ENV", "PATHS"]
PATH_PARTS = ["services", "billing", "prod-payments", "libs", "common", "a" * 3000,
              "line\nbreak", "x.py", "README.md", "jobs", "é", "", "aaaa", "b"]


# --- what a map file holds ----------------------------------------------------------------------

@st.composite
def globs(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.sampled_from(WORDS + SEGMENTS), min_size=1, max_size=6))
    glob = "/".join(segments)
    return ("!" if draw(st.booleans()) and draw(st.booleans()) else "") + glob


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": draw(st.sampled_from(NAMES)),
                             "paths": draw(st.lists(globs(), min_size=1, max_size=4))}
    if draw(st.booleans()):
        entry["depends_on"] = draw(st.lists(st.sampled_from(MODULE_NAMES + NAMES),
                                            max_size=3))
    if draw(st.integers(0, 4)) == 0:
        entry["variables"] = {draw(st.sampled_from(VARIABLES)): draw(st.sampled_from(
            ["{module}", "{changed_paths}", "prod", "{nope}"]))}
    if draw(st.integers(0, 6)) == 0:
        entry["source_action"] = "Source"
    if draw(st.integers(0, 8)) == 0:
        entry["tags"] = ["v*"]
    return entry


@st.composite
def tame_entries(draw: st.DrawFn) -> dict[str, Any]:
    """Entries that are mostly valid: so that valid files, and pushes decided with them,
    are a good share of the run."""
    segments = st.sampled_from([*WORDS, "*", "**", "*.py", "?b*", "[a-c]"])
    path = st.lists(segments, min_size=1, max_size=4).map("/".join)
    template = draw(st.booleans())
    name = draw(st.sampled_from(["acme-{module}-svc", "acme-{module}"] if template
                                else ["acme-api", "acme-jobs", "acme-web"]))
    paths = draw(st.lists(path, min_size=1, max_size=3))
    if template:
        paths = [f"{draw(st.sampled_from(['services', 'jobs']))}/{{module}}/{p}"
                 for p in paths]
    return {"name": name, "paths": paths,
            **({"variables": {"MODULE": "{module}"}} if template else {})}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"pipelines": draw(st.lists(
        entries() if draw(st.booleans()) else tame_entries(), max_size=6))}
    if draw(st.booleans()):
        doc["modules"] = {draw(st.sampled_from(MODULE_NAMES)): {
            "paths": draw(st.lists(globs(), min_size=1, max_size=3)),
            **({"depends_on": draw(st.lists(st.sampled_from(MODULE_NAMES), max_size=2))}
               if draw(st.booleans()) else {})} for _ in range(draw(st.integers(0, 4)))}
    return doc


def chain(n: int, cycle: bool) -> str:
    """A pipeline on a chain of ``n`` modules (the last one back to the first: a cycle)."""
    modules = "".join(f"  m{i}: {{paths: [m/{i}/**], depends_on: [m{i + 1}]}}\n"
                      for i in range(n - 1))
    last = "[m0]" if cycle else "[]"
    return ('pipelines:\n  - {name: acme-top, paths: ["top/**"], depends_on: [m0]}\n'
            f"modules:\n{modules}  m{n - 1}: {{paths: [m/last/**], depends_on: {last}}}\n")


HOSTILE_TEXTS = st.one_of(
    st.builds(lambda n: "pipelines:\n" + "".join(
        f'  - {{name: "acme-{"y" * (i % 30)}{{module}}{"x" * (i % 20)}-d", '
        f'paths: ["s{i}/{{module}}/**"]}}\n' for i in range(n)), st.integers(1, 1200)),
    st.builds(chain, st.integers(2, 1500), st.booleans()),
    st.builds(lambda n: "pipelines:\n  - name: acme-many\n    paths: ["
              + ", ".join(f'"**/*.{i}"' for i in range(n)) + "]\n", st.integers(1, 300)),
    st.builds(lambda k: f'pipelines:\n  - {{name: acme-x, paths: ["{"**/" * k}zz"]}}\n',
              st.integers(1, 30)),
    st.just((ROOT / "tests/fixtures/module_map/yaml-bomb-cve-2019-11253.yaml").read_text()),
    st.builds(lambda n: "pipelines:\n" + "- " * n + "x\n", st.integers(1, 50_000)),
    st.builds(lambda n: "pipelines: " + "[" * n + "]" * n, st.integers(1, 50_000)),
    st.just('pipelines:\n  - <<: {name: acme-x}\n    paths: ["x/**"]\n'),
    st.just('pipelines:\n  - name: !!python/object/apply:os.system ["true"]\n'),
    st.builds(lambda n: "#" * n, st.sampled_from([1 << 18, (1 << 18) + 1, 1 << 20])),
    # scalars YAML 1.1 would make something other than a string of
    st.builds(lambda v: f"pipelines:\n  - name: {v}\n    paths: [x/**]\n", st.sampled_from(
        ["2001-13-45", "2001-12-14 21:59:43.10 -5", "1" * 250_000, "1:" * 100_000 + "1",
         "0x" + "f" * 100_000, "0b" + "1" * 200_000, ".nan", "-.inf", "yes", "~", "1e99999"])),
)


@st.composite
def map_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))  # 0: a hostile text; 3: a document, then bytes changed
    raw = (draw(HOSTILE_TEXTS) if kind == 0
           else yaml.safe_dump(draw(documents()), width=1 << 20)).encode()
    if kind == 3 and raw:  # a few bytes cut, flipped or repeated
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(raw) - 1))
            how = draw(st.integers(0, 2))
            if how == 0:
                raw = raw[:at]
            elif how == 1:
                raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
            else:
                raw = raw[:at] + raw[at:at + 64] * draw(st.integers(2, 50)) + raw[at:]
            if not raw:
                break
    return raw


paths_pushed = st.lists(st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=8)
                        .map("/".join), min_size=1, max_size=40)


# --- the child ------------------------------------------------------------------------------------


def fuzz_in_child() -> dict[str, Any]:
    """Run the fuzz (in the child: after the address-space limit is set)."""
    from providers.base import Diff
    from receiver.config import parse
    from receiver.decide import decide
    from receiver.module_map import PipelineSet, parse_file
    from receiver.modules import MAX_PROBLEMS

    cfg = parse({"launcher": {"backend": "log"}, "repositories": [
        {"provider": "github", "name": "acme/mono", "webhook_secrets": ["env:FUZZ_SECRET"],
         "branches": ["main"], "modules": {"libs-common": {"paths": ["libs/common/**"]}},
         "module_map": {"path": ".webhook-receiver.yaml", "allow": ["acme-[!p]*"],
                        "allow_variables": ["MODULE"]},
         "pipelines": [{"name": "acme-platform-deploy", "paths": ["platform/**"]}]},
        {"provider": "github", "name": "acme/payments", "webhook_secrets": ["env:FUZZ_SECRET"],
         "branches": ["main"],
         "pipelines": [{"name": "acme-payments-prod-deploy", "paths": ["payments/**"]},
                       {"name": "ledger-{module}-deploy", "paths": ["ledger/{module}/**"]}]}]})
    repo, other = cfg.repositories
    assert repo.module_map is not None
    configured = PipelineSet.of(repo)
    reserved = [("repository acme/payments's configuration", other.module_selectors())]
    allow = repo.module_map.names
    tally = {"examples": 0, "valid": 0, "invalid": 0, "decided": 0, "refused": 0,
             "slowest": 0.0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(raw=map_files(), paths=paths_pushed)
    # a template whose module 'prod-payments' makes a name outside allow: refused
    @example(raw=b'pipelines:\n  - {name: "acme-{module}-svc", paths: ["services/{module}/**"]}\n',
             paths=["services/prod-payments/x.py", "services/billing/x.py"])
    def run(raw: bytes, paths: list[str]) -> None:
        started = time.monotonic()
        found, problems = parse_file(raw, repo.module_map, source=".webhook-receiver.yaml",
                                     configured=configured.modules, reserved=reserved)
        assert len(problems) <= MAX_PROBLEMS + 1
        assert all(p.isprintable() for p in problems), problems
        assert (found is None) == bool(problems)
        tally["examples"] += 1
        if found is not None:
            joined, clash = configured.joined(found)
            assert joined is not None, clash
            tally["valid"] += 1
            decisions = decide(joined.modules.for_branch([]), "a" * 40, "b" * 40,
                               Diff("ahead", frozenset(paths)))
            tally["decided"] += 1
            taken = {p.name for p in other.pipelines}
            for name, decision in decisions.items():
                if decision.verdict == "refused":
                    tally["refused"] += 1
                    assert not allow.admits(name)
                if decision.verdict != "changed":
                    continue
                assert name not in taken and not name.startswith("ledger-")
                assert name in configured.configs or allow.admits(name), name
        else:
            tally["invalid"] += 1
        took = time.monotonic() - started
        tally["slowest"] = max(tally["slowest"], took)
        assert took < EXAMPLE_SECONDS, (took, raw[:200])

    run()
    return tally


def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    result = fuzz_in_child()
    print(json.dumps({**result, "peak_kib": _peak_kib()}))


# --- the tests ------------------------------------------------------------------------------------


def test_fuzzed_map_files_are_answered_within_time_and_memory() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tests.test_fuzz_module_map"],
                          capture_output=True, text=True, cwd=ROOT,
                          timeout=EXAMPLES * EXAMPLE_SECONDS,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "FUZZ_SECRET": "s"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    tally = json.loads(done.stdout.splitlines()[-1])
    print(f"\n{tally['examples']} map files in {time.monotonic() - started:.1f}s: "
          f"{tally['valid']} valid ({tally['decided']} pushes decided, {tally['refused']} "
          f"concrete names refused), {tally['invalid']} invalid; slowest "
          f"{tally['slowest']:.2f}s; peak {tally['peak_kib'] // 1024} MiB")
    assert tally["examples"] >= EXAMPLES
    # the run must have seen both answers, or the bounds would hold trivially
    assert tally["valid"] and tally["invalid"] and tally["refused"]


def _reference(glob: str) -> re.Pattern[str]:
    """The documented glob syntax as a regular expression: ``**`` a whole segment
    crossing folders, ``*`` and ``?`` within one, ``[...]`` / ``[!...]`` classes, a
    trailing ``/`` for everything below. Backtracks: for small inputs only."""
    segments = glob.split("/")
    if segments[-1] == "":
        segments[-1] = "**"
    out = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            out.append("(?s:.*)" if last else "(?:[^/]+/)*")
            continue
        body = ""
        j = 0
        while j < len(seg):
            ch = seg[j]
            if ch == "*":
                body += "[^/]*"
            elif ch == "?":
                body += "[^/]"
            elif ch == "[":
                end = seg.index("]", j + 2)
                inner = seg[j + 1:end]
                body += f"[^/{inner[1:]}]" if inner.startswith("!") else f"[{inner}]"
                j = end
            else:
                body += re.escape(ch)
            j += 1
        out.append(body + ("" if last else "/"))
    return re.compile("".join(out))


SMALL_SEGMENTS = ["a", "b", "ab", "*", "**", "?", "[ab]", "[!a]", "a*", "*b", "*a*"]


@settings(max_examples=3000, deadline=None, database=None)
@given(segments=st.lists(st.sampled_from(SMALL_SEGMENTS), min_size=1, max_size=4),
       trailing=st.booleans(),
       path=st.lists(st.sampled_from(["a", "b", "ab", "ba", "", "a\nb", "aab"]), min_size=1,
                     max_size=5).map("/".join))
def test_the_matcher_agrees_with_the_regular_expression_reading_on_small_inputs(
        segments: list[str], trailing: bool, path: str) -> None:
    from receiver.matcher import Glob

    glob = "/".join(segments) + ("/" if trailing else "")
    assert Glob.compile(glob).matches(path) is (_reference(glob).fullmatch(path) is not None)


TEMPLATE_SEGMENTS = ["a", "b", "{module}", "x{module}", "{module}.y", "**", "*", "a*"]
VALUES = ["a", "b", "x", "xa", "a.y", "xa.y", "", "a b", "é", "a\nb", "aa"]


@settings(max_examples=3000, deadline=None, database=None)
@given(segments=st.lists(st.sampled_from(TEMPLATE_SEGMENTS), min_size=1, max_size=4),
       trailing=st.booleans(),
       path=st.lists(st.sampled_from(VALUES), min_size=1, max_size=5).map("/".join),
       value=st.sampled_from([None, "a", "xa"]))
def test_a_template_glob_binds_a_path_as_its_split_segments_do(
        segments: list[str], trailing: bool, path: str, value: str | None) -> None:
    from hypothesis import assume

    from receiver.matcher import Glob, GlobError

    glob = "/".join(segments) + ("/" if trailing else "")
    try:
        compiled = Glob.compile(glob, placeholder=True)
    except GlobError as exc:  # {module} twice across '**' without an anchor: on purpose
        assert "between different '**'" in str(exc), exc
        assume(False)
        return
    # bind_path takes shortcuts for the common shapes ('services/{module}/**'): the same
    # answer as the segment-wise walk
    assert compiled.bind_path(path, value) == compiled.bind(path.split("/"), value)

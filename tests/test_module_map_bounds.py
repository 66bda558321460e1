"""The repository-side module map is untrusted input (docs/security.md): every bomb is
answered by the fallback within bounded time and memory.

Each hostile file is resolved the way the service resolves a push's map: in a child
process (``tests/map_child.py``) whose address space is limited to 1 GiB (an ECS task's
memory) and which is killed after 10 s, through the real reader (the GitHub file API
stand-in, or a ``diff: git`` mirror of a ``git http-backend`` server) and a SQLite store
holding a last valid map. Answered by the fallback means: the problem is reported, the
kept map's pipelines and the configured ones are what the push is decided with. The
matcher's own bounds (hostile globs against hostile paths) are tested in-process.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from providers.base import MAX_FILE_BYTES
from receiver.config import ModuleConfig, Modules, PipelineConfig, Pipelines, parse
from receiver.errors import ConfigError
from receiver.matcher import Glob, GlobError, PathRules, RuleMatch, match
from receiver.module_map import MAX_APPLICABLE, MAX_ENTRIES, MAX_PATTERNS, MAX_WILDCARDS
from receiver.modules import MAX_PROBLEMS, Template, build
from receiver.state.base import StateStore
from tests.gitserver import GitServer, WorkClone, basic, serving
from tests.harness import FIXTURES, FakeAPI, Recorded
from tests.test_state_contract import store  # noqa: F401  (both backends, moto for DynamoDB)

ADDRESS_SPACE = 1 << 30  # the ECS task's 1 GiB
DEADLINE = 10.0  # seconds a child may take
MONO, PAYMENTS = "acme/mono", "acme/payments"
MAP_PATH = ".webhook-receiver.yaml"
HEAD = "2" * 40
KEPT_COMMIT = "1" * 40
KEPT = 'pipelines:\n  - name: acme-jobs\n    paths: ["jobs/**"]\n'
TOKEN = "ghs_BoundsTestToken0123456789abcdefSECRET"
ROOT = Path(__file__).resolve().parent.parent

# a valid map: what each hostile file is measured against
VALID = """\
pipelines:
  - name: acme-{module}-svc
    paths: ["services/{module}/**", "!**/*.md"]
    variables: {MODULE: "{module}"}
  - name: acme-api
    paths: ["api/**"]
    depends_on: [libs-common]
modules:
  libs-common: {paths: ["libs/common/**"]}
"""


def config(tmp_path: Path, api_url: str, *, allow: list[str] | None = None,
           git_url: str | None = None) -> Path:
    """Two repositories: acme/mono (its map under test) and acme/payments, whose
    configured pipeline and kept map no map of acme/mono may name."""
    mono: dict[str, Any] = {
        "provider": "github", "name": MONO, "api_url": api_url,
        "webhook_secrets": ["env:BOUNDS_SECRET"], "api_token": "env:BOUNDS_TOKEN",
        "branches": ["main"],
        "module_map": {"path": MAP_PATH, "allow": allow or ["acme-*"],
                       "allow_variables": ["MODULE"]},
        "pipelines": [{"name": "acme-platform-deploy", "paths": ["platform/**"]}]}
    if git_url is not None:
        mono.update(diff="git", git_url=git_url)
    payments = {
        "provider": "github", "name": PAYMENTS, "api_url": api_url,
        "webhook_secrets": ["env:BOUNDS_SECRET"], "api_token": "env:BOUNDS_TOKEN",
        "branches": ["main"], "module_map": {"path": MAP_PATH, "allow": ["acme-*"]},
        "pipelines": [{"name": "acme-payments-prod-deploy", "paths": ["payments/**"]}]}
    raw = {"state": {"path": str(tmp_path / "state.db")},
           "git": {"cache_dir": str(tmp_path / "git")},
           "launcher": {"backend": "log"}, "repositories": [mono, payments]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def resolve_bounded(cfg: Path, *, kept: dict[str, tuple[str, str]] | None = None,
                    paths: list[str] | None = None, repository: str = MONO,
                    commit: str = HEAD) -> dict[str, Any]:
    """Resolve ``repository``'s map at ``commit`` in a child limited to 1 GiB and 10 s."""
    spec = {"address_space": ADDRESS_SPACE, "config": str(cfg), "repository": repository,
            "commit": commit, "paths": paths,
            "kept": kept if kept is not None else {f"github:{MONO}": (KEPT_COMMIT, KEPT)}}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tests.map_child"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "BOUNDS_TOKEN": TOKEN,
                               "BOUNDS_SECRET": "bounds-webhook-secret"})
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    result["wall"] = time.monotonic() - started
    return result


class MapServer:
    """The GitHub contents API stand-in: serves ``files[repository]`` raw at any commit."""

    def __init__(self, api: FakeAPI) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Routes(dict[str, Any]):
            def get(self, path: str, default: Any = None) -> Any:
                for name in (MONO, PAYMENTS):
                    if path == f"/repos/{name}/contents/{MAP_PATH}":
                        return lambda rec, n=name: answer(rec, n)
                return default

        def answer(rec: Recorded, name: str) -> tuple[int, Any, dict[str, str]]:
            if rec.headers.get("accept") != "application/vnd.github.raw+json" or \
                    name not in files:
                return 404, {"message": "Not Found"}, {}
            return 200, files[name], {}

        api.routes = Routes()


@pytest.fixture
def served(fake_api: FakeAPI) -> MapServer:
    return MapServer(fake_api)


# --- the hostile files -------------------------------------------------------------------------


def overlapping_templates(n: int) -> str:
    """``n`` templates every two of which could make one name: the parts before
    ``{module}`` all start alike (``acme``, ``acmey``, ``acmeyy``...), and so do the parts
    after it end alike (``-d``, ``x-d``, ``xx-d``...)."""
    names = [f"acme-{'y' * (i // 25)}{{module}}{'x' * (i % 25)}-d" for i in range(n)]
    return "pipelines:\n" + "".join(
        f'  - {{name: "{name}", paths: ["s{i}/{{module}}/**"]}}\n'
        for i, name in enumerate(names))


def module_chain(n: int) -> str:
    """A pipeline depending on m0, which depends on m1, ... m(n-1)."""
    return ('pipelines:\n  - {name: acme-top, paths: ["top/**"], depends_on: [m0]}\n'
            "modules:\n" + "".join(
                f"  m{i}: {{paths: [m/{i}/**]"
                + (f", depends_on: [m{i + 1}]}}\n" if i + 1 < n else "}\n")
                for i in range(n)))


def many_patterns(n: int) -> str:
    """``n`` patterns, 100 per pipeline."""
    return "pipelines:\n" + "".join(
        f"  - {{name: acme-p{e}, paths: [" + ", ".join(
            f"q{i}" for i in range(e * 100, min(n, (e + 1) * 100))) + "]}\n"
        for e in range((n + 99) // 100))


def valid_map_of(size: int) -> str:
    """A valid map of about ``size`` bytes (one pipeline per service folder)."""
    lines = ["pipelines:"]
    i = 0
    while sum(map(len, lines)) < size:
        lines.append(f"  - {{name: acme-svc-{i:06d}, paths: [\"services/svc-{i:06d}/**\", "
                     f"\"!services/svc-{i:06d}/docs/**\"]}}")
        i += 1
    return "\n".join(lines) + "\n"


def one_pipeline(**entry: Any) -> str:
    """A map of one pipeline: ``acme-x`` on ``x/**`` with ``entry``'s keys changed."""
    return yaml.safe_dump({"pipelines": [{"name": "acme-x", "paths": ["x/**"], **entry}]})


BOMB = (FIXTURES / "module_map" / "yaml-bomb-cve-2019-11253.yaml").read_bytes()
DOUBLE_STARS = "**/" * 20 + "zz"
STAR_A = "x/" + "*a" * 12 + "*b"

# (what, the file, what its first problem says)
BOMBS: list[tuple[str, bytes, str]] = [
    ("a YAML alias bomb as a pipeline name", BOMB,
     f"{MAP_PATH}: line 1: anchors (&a) are not allowed"),
    ("3,916 overlapping templates", overlapping_templates(3916).encode(),
     f"{MAP_PATH}: {len(overlapping_templates(3916))} bytes; at most {MAX_FILE_BYTES}"),
    ("1,001 overlapping templates", overlapping_templates(1001).encode(),
     f"pipelines, modules: 1001 entries; at most {MAX_ENTRIES}"),
    ("a '**/' x20 chain", one_pipeline(paths=[DOUBLE_STARS]).encode(),
     f"pipelines[0].paths[0]: 40 wildcards; at most {MAX_WILDCARDS}"),
    ("an '*a' x12 chain", one_pipeline(paths=[STAR_A]).encode(),
     f"pipelines[0].paths[0]: 13 wildcards; at most {MAX_WILDCARDS}"),
    ("20,000 patterns", many_patterns(20000).encode(),
     f"paths: 20000 patterns in the file; at most {MAX_PATTERNS}"),
    ("a 1,500-module depends_on chain", module_chain(1500).encode(),
     f"pipelines, modules: 1501 entries; at most {MAX_ENTRIES}"),
    ("a 10,000-module depends_on chain", module_chain(10000).encode(),
     f"{MAP_PATH}: {len(module_chain(10000))} bytes; at most {MAX_FILE_BYTES}"),
    ("a valid map of about 1 MB", valid_map_of(1 << 20).encode(),
     f"{MAP_PATH}: {len(valid_map_of(1 << 20))} bytes; at most {MAX_FILE_BYTES}"),
    ("a 20 MB file", b"#" * (20 << 20),
     f"{MAP_PATH}: {20 << 20} bytes; at most {MAX_FILE_BYTES}"),
    ("another repository's configured pipeline",
     one_pipeline(name="acme-payments-prod-deploy").encode(),
     "pipeline 'acme-payments-prod-deploy' is also in repository acme/payments's "
     "configuration"),
    ("another repository's kept map pipeline", one_pipeline(name="acme-ledger").encode(),
     "pipeline 'acme-ledger' is also in repository acme/payments's module map"),
    ("variables the operator did not allow",
     one_pipeline(variables={"DEPLOY_ENV": "prod"}).encode(),
     "pipelines[0].variables.DEPLOY_ENV: not allowed in a module map "
     "(module_map.allow_variables: MODULE)"),
    ("a source action the operator did not allow",
     one_pipeline(source_action="OtherSource").encode(),
     "pipelines[0].source_action: not allowed in a module map "
     "(module_map.allow_source_action is false)"),
    ("a merge key", b'pipelines:\n  - <<: {name: acme-x}\n    paths: ["x/**"]\n',
     f"{MAP_PATH}: line 2: merge keys (<<) are not allowed"),
    ("a custom tag", b'pipelines:\n  - name: !!python/name:os.system ""\n',
     f"{MAP_PATH}: line 2: tags (tag:yaml.org,2002:python/name:os.system) are not "
     "allowed"),
    ("100,000 nested lists", b"pipelines:\n" + b"- " * 100_000 + b"x\n",
     f"{MAP_PATH}: line 2: nested deeper than 8 levels"),
    ("a timestamp with month 13 as a name", one_pipeline(name="X").replace(
        "name: X", "name: 2001-13-45").encode(),
     "pipelines[0].name: '2001-13-45' is not allowed here; allowed: acme-*"),
    ("a 250,000-digit number as a name", one_pipeline(name="X").replace(
        "name: X", "name: " + "1" * 250_000).encode(),
     "pipelines[0].name: must be a CodePipeline pipeline name"),
    ("more patterns for one path than the limit", yaml.safe_dump({"pipelines": [
        {"name": f"acme-{half}", "paths": [f"**/*.{half}{i}" for i in range(count)]}
        for half, count in (("a", MAX_APPLICABLE // 2 + 1), ("b", MAX_APPLICABLE // 2))]}
    ).encode(),
     f"paths: {MAX_APPLICABLE + 1} patterns could each be tested against one path "
     f"anywhere; at most {MAX_APPLICABLE}"),
]
# the kept map of acme/payments, whose pipeline acme-ledger no other map may name
PAYMENTS_KEPT = 'pipelines:\n  - name: acme-ledger\n    paths: ["ledger/**"]\n'


def test_a_valid_map_resolves_in_the_child_with_its_own_pipelines(
        tmp_path: Path, served: MapServer, fake_api: FakeAPI) -> None:
    served.files[MONO] = VALID.encode()
    got = resolve_bounded(config(tmp_path, fake_api.url))
    assert (got["problems"], got["kept"]) == ([], None)
    assert got["pipelines"] == ["acme-api", "acme-platform-deploy", "acme-{module}-svc"]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BOMBS], ids=[c[0] for c in BOMBS])
def test_each_bomb_is_answered_by_the_fallback_within_time_and_memory(
        tmp_path: Path, served: MapServer, fake_api: FakeAPI, text: bytes,
        expected: str) -> None:
    served.files[MONO] = text
    got = resolve_bounded(config(tmp_path, fake_api.url), kept={
        f"github:{MONO}": (KEPT_COMMIT, KEPT), f"github:{PAYMENTS}": ("3" * 40, PAYMENTS_KEPT)})
    assert got["problems"][0] == expected or got["problems"][0].startswith(expected), got
    assert len(got["problems"]) <= MAX_PROBLEMS + 1
    # the last valid map and the configured pipelines: what the push is decided with
    assert got["kept"] == KEPT_COMMIT
    assert got["pipelines"] == ["acme-jobs", "acme-platform-deploy"]


def test_a_thousand_overlapping_templates_list_twenty_problems_and_count_the_rest(
        tmp_path: Path, served: MapServer, fake_api: FakeAPI) -> None:
    served.files[MONO] = overlapping_templates(MAX_ENTRIES).encode()
    got = resolve_bounded(config(tmp_path, fake_api.url))
    problems = got["problems"]
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == ("pipelines[1].name: template 'acme-{module}x-d' can make the same "
                           "names as 'acme-{module}-d'")
    assert all("can make the same names as" in p for p in problems[:-1])
    # every pair of the 1,000 overlaps: 999 * 1000 / 2 in all
    assert problems[-1] == f"... and {999 * 1000 // 2 - MAX_PROBLEMS} more problems"
    assert got["kept"] == KEPT_COMMIT


def test_a_template_name_outside_allow_is_refused_and_the_rest_of_the_map_starts(
        tmp_path: Path, served: MapServer, fake_api: FakeAPI) -> None:
    # 'acme-{module}-svc' matches 'acme-[!p]*' as written; acme-prod-payments-svc does not
    served.files[MONO] = VALID.encode()
    got = resolve_bounded(config(tmp_path, fake_api.url, allow=["acme-[!p]*"]),
                          paths=["services/prod-payments/x.py", "services/billing/x.py"])
    assert got["problems"] == []
    assert got["verdicts"] == {"acme-api": "unchanged", "acme-billing-svc": "changed",
                               "acme-platform-deploy": "unchanged",
                               "acme-prod-payments-svc": "refused"}


def test_a_10000_module_chain_in_the_configuration_resolves_without_recursion(
        tmp_path: Path, fake_api: FakeAPI) -> None:
    cfg = config(tmp_path, fake_api.url)
    raw = yaml.safe_load(cfg.read_text())
    chain = yaml.safe_load(module_chain(10000))
    raw["repositories"][0].update(modules=chain["modules"], pipelines=chain["pipelines"])
    del raw["repositories"][0]["module_map"]
    as_json = tmp_path / "config.json"
    as_json.write_text(json.dumps(raw))
    got = resolve_bounded(as_json, paths=["m/9999/deepest.py"], kept={})
    assert got["verdicts"] == {"acme-top": "changed"}


# --- diff: git: the mirror asks the blob's size before reading it -----------------------------


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    with serving(tmp_path / "server", MONO, TOKEN) as srv:
        yield srv


def test_a_20_mb_map_in_a_git_mirror_is_never_read_and_the_kept_map_is_used(
        tmp_path: Path, git_server: GitServer, fake_api: FakeAPI) -> None:
    work = WorkClone(tmp_path / "work", git_server.url(MONO), basic("x-access-token", TOKEN))
    small = work.commit({"platform/a.py": "1\n", MAP_PATH: VALID}, "a map")
    # incompressible, so git cannot make it small on the way
    rnd = random.Random(7)
    huge = "".join(rnd.choices(string.ascii_letters, k=20 << 20))
    big = work.commit({"platform/a.py": "2\n", MAP_PATH: huge}, "a 20 MB map")
    work.push()
    cfg = config(tmp_path, fake_api.url, git_url=git_server.url(MONO))
    baseline = resolve_bounded(cfg, commit=small, kept={})
    assert baseline["problems"] == []
    got = resolve_bounded(cfg, commit=big, kept={})
    assert got["problems"] == [f"{MAP_PATH}: {20 << 20} bytes; at most {MAX_FILE_BYTES}"]
    assert got["kept"] == small  # the valid map of the first resolve, kept in the store
    assert "acme-api" in got["pipelines"]
    # the blob never came into the process: reading it would add its 20 MiB at least
    assert got["peak_kib"] < baseline["peak_kib"] + (10 << 10)


def test_a_map_at_the_cap_in_a_git_mirror_is_read(tmp_path: Path, git_server: GitServer,
                                                  fake_api: FakeAPI) -> None:
    work = WorkClone(tmp_path / "work", git_server.url(MONO), basic("x-access-token", TOKEN))
    text = VALID + "#" * (MAX_FILE_BYTES - len(VALID) - 1) + "\n"
    work.commit({MAP_PATH: text}, "a map of exactly the cap")
    work.push()
    got = resolve_bounded(config(tmp_path, fake_api.url, git_url=git_server.url(MONO)),
                          commit=work.head())
    assert (got["problems"], got["kept"]) == ([], None)
    assert "acme-api" in got["pipelines"]


# --- the state store keeps a map at the cap --------------------------------------------------


def test_a_map_at_the_cap_that_zlib_cannot_shrink_fits_the_store(
        store: StateStore) -> None:  # noqa: F811
    rnd = random.Random(11)
    text = "".join(rnd.choices(string.printable, k=MAX_FILE_BYTES))
    store.save_module_map(f"github:{MONO}", HEAD, text, 1.0)
    assert store.module_map(f"github:{MONO}") == (HEAD, text)


# --- the matcher: linear in the path, whatever the glob ---------------------------------------

HOSTILE_GLOBS: list[tuple[str, str, str, bool]] = [
    ("'**/' x20 then zz against 50,000 folders", DOUBLE_STARS, "a/" * 50_000 + "z", False),
    ("'**/' x20 then zz that matches", DOUBLE_STARS, "a/" * 50_000 + "zz", True),
    ("'*a' x12 then '*b' against 100,000 a's", STAR_A, "x/" + "a" * 100_000, False),
    ("'*a' x12 then '*b' with b missing from the middle", STAR_A,
     "x/" + "a" * 50_000 + "c" * 50_000 + "b", True),
    ("'*a' x12 then '*b' with eleven a's", STAR_A, "x/" + "a" * 11 + "c" * 100_000 + "b",
     False),
    ("chunks between '**' against 20,000 near misses", "**/a*a*b/**/a*a*b/**/z",
     "/".join(["aaaa"] * 20_000) + "/z", False),
    ("classes and '?' against a long segment", "x/[a-c]?[!z]*[a-c]?[!z]*q",
     "x/" + "ab" * 50_000, False),
]


@pytest.mark.parametrize(("glob", "path", "expected"), [c[1:] for c in HOSTILE_GLOBS],
                         ids=[c[0] for c in HOSTILE_GLOBS])
def test_a_hostile_glob_answers_a_hostile_path_in_time_linear_in_the_path(
        glob: str, path: str, expected: bool) -> None:
    compiled = Glob.compile(glob)
    started = time.monotonic()
    assert compiled.matches(path) is expected
    # a backtracking matcher takes longer than the age of the universe on these
    assert time.monotonic() - started < 2.0


NEWLINES: list[tuple[str, str, str | None]] = [
    ("core/**", "core/a\nb.py", "core/**"),
    ("core/**", "core/\n/b.py", "core/**"),
    ("**/*.py", "a\nb/c\n.py", "**/*.py"),
    ("core/*", "core/line\nbreak", "core/*"),
    ("core/?", "core/\n", "core/?"),
    ("core/**", "core\n/b.py", None),
]


@pytest.mark.parametrize(("glob", "path", "expected"), NEWLINES,
                         ids=[f"{g} {p!r}" for g, p, _ in NEWLINES])
def test_a_newline_in_a_path_is_just_a_character(glob: str, path: str,
                                                 expected: str | None) -> None:
    assert PathRules.compile([glob]).matching_include(path) == expected
    assert match([path], {"p": PathRules.compile([glob])}) == (
        {"p": (RuleMatch(path, glob),)} if expected else {})


def entries(doc: dict[str, Any], pipelines: list[Any] | None = None
            ) -> tuple[tuple[PipelineConfig, ...], dict[str, ModuleConfig]]:
    """A map's ``pipelines`` (or the ``pipelines`` given) and ``modules`` as the schema gives them
    to ``build``."""
    return (TypeAdapter(Pipelines).validate_python(pipelines or doc["pipelines"]),
            TypeAdapter(Modules).validate_python(doc["modules"]))


def test_build_flattens_a_10000_module_chain_without_recursion() -> None:
    chain: dict[str, Any] = yaml.safe_load(module_chain(10000))
    built, problems = build(*entries(chain))
    assert problems.lines() == []
    assert built is not None
    depends = built.selectors["acme-top"].depends
    assert [name for name, _ in depends[:3]] == ["m0", "m1", "m2"]
    assert len(depends) == 10000


def test_build_reports_a_10000_module_cycle_without_recursion() -> None:
    chain: dict[str, Any] = yaml.safe_load(module_chain(10000))
    chain["modules"]["m9999"]["depends_on"] = ["m0"]
    _, problems = build(*entries(chain))
    assert problems.lines() == ["modules.m0.depends_on: cycle m0 -> m1 -> m2 -> m3 -> m4 -> m5 -> m6 "
                        "-> m7 -> m8 -> m9 -> m10 -> ... (9989 more) -> m0"]


def test_build_refuses_more_dependency_links_than_allowed() -> None:
    chain: dict[str, Any] = yaml.safe_load(module_chain(100))
    pipelines = [{"name": f"acme-{i}", "paths": [f"p/{i}/**"], "depends_on": ["m0"]}
                 for i in range(10)]
    assert build(*entries(chain, pipelines), max_links=1000)[1].lines() == []
    _, problems = build(*entries(chain, pipelines), max_links=999)
    assert problems.lines() == ["pipelines: more than 999 (pipeline, dependency) pairs through "
                        "depends_on; depend on fewer modules or share them"]



# --- {module} in the one matcher ------------------------------------------------------------

TEMPLATE_GLOB_ERRORS: list[tuple[str, str]] = [
    ("svc-{module}-*/**", "a path segment holding {module} holds no other wildcard"),
    ("{module}-{module}/**", "{module} at most once in one path segment"),
    ("**/{module}/**/{module}/x/**", "{module} between different '**' needs one {module} "
                                     "before the first '**' or after the last"),
]


@pytest.mark.parametrize(("glob", "message"), TEMPLATE_GLOB_ERRORS,
                         ids=[g for g, _ in TEMPLATE_GLOB_ERRORS])
def test_a_template_glob_the_linear_matcher_cannot_place_is_refused(glob: str,
                                                                    message: str) -> None:
    with pytest.raises(GlobError, match=re.escape(message)):
        Template.compile("acme-{module}", [glob])


def test_after_a_double_star_the_module_is_the_leftmost_folder_that_fits() -> None:
    template = Template.compile("acme-{module}", ["**/{module}/src/**"])
    assert list(template.modules(["a/b/src/c/src/x"])) == ["b"]


def test_a_module_bound_at_the_end_is_checked_in_the_middle() -> None:
    template = Template.compile("acme-{module}", ["**/{module}/**/{module}.yaml"])
    assert list(template.modules(["x/a/y/b/z/a.yaml", "x/c/y/d.yaml"])) == ["a"]


CONFIG_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("an allow glob with a folder", {"allow": ["acme/*"]},
     "repositories[0].module_map.allow[0]: 'acme/*': a name pattern holds no '/' and is not "
     "empty"),
    ("an allow glob with a bad class", {"allow": ["acme-[z-a]*"]},
     "repositories[0].module_map.allow[0]: 'acme-[z-a]*': bad character range z-a in '[z-a]'"),
    ("an allowed variable that is no variable name", {"allow_variables": ["NOT A NAME"]},
     "repositories[0].module_map.allow_variables[0]: must be a CodePipeline variable name"),
    ("allow_source_action that is no bool", {"allow_source_action": "yes"},
     "repositories[0].module_map.allow_source_action: must be a valid boolean"),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CONFIG_ERRORS],
                         ids=[c[0] for c in CONFIG_ERRORS])
def test_module_map_settings_are_validated_naming_the_key(change: dict[str, Any],
                                                         expected: str) -> None:
    raw = {"launcher": {"backend": "log"}, "repositories": [{
        "provider": "github", "name": MONO, "webhook_secrets": ["env:BOUNDS_SECRET"],
        "branches": ["main"], "pipelines": [{"name": "acme-a", "paths": ["a/**"]}],
        "module_map": {"path": MAP_PATH, "allow": ["acme-*"], **change}}]}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert expected in caught.value.problems

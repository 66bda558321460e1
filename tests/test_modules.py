"""The module map (DESIGN.md "Module map"): templates, modules, dependencies, the
repository-side file; validated by receiver.modules / receiver.module_map, decided by
receiver.decide, processed by the real processor over SQLite with a Git-model provider."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from providers.base import Diff
from receiver.config import ModuleMapConfig, parse
from receiver.decide import NoBase, decide
from receiver.errors import ConfigError
from receiver.events import Delivery, PushEvent
from receiver.matcher import PathRules, RuleMatch
from receiver.module_map import PipelineSet, parse_file
from receiver.modules import ModuleMap, Selector, Template
from receiver.processor import Processor
from receiver.state.base import StateStore
from receiver.state.sqlite import SQLiteStore
from tests.gitmodel import GitModel
from tests.test_processor import ModelProvider, RecordingLauncher
from tests.test_state_contract import store  # noqa: F401  (both backends, moto for DynamoDB)

REPO = "acme/mono"
KEY = f"github:{REPO}"
BASE, HEAD = "a" * 40, "b" * 40

PIPELINES: list[dict[str, Any]] = [
    {"name": "acme-{module}-deploy", "paths": ["services/{module}/**", "!**/*.md"],
     "depends_on": ["libs-common"]},
    {"name": "web", "paths": ["web/**"], "depends_on": ["ui-kit"]},
    {"name": "docs", "paths": ["docs/**"]},
]
MODULES: dict[str, Any] = {
    "libs-common": {"paths": ["libs/common/**"]},
    "ui-kit": {"paths": ["libs/ui/**"], "depends_on": ["libs-common"]},
}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROC_SECRET", "module-map-test-secret")


def raw_config(pipelines: list[dict[str, Any]] | None = None,
               modules: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    repo: dict[str, Any] = {
        "provider": "github", "name": REPO, "webhook_secrets": ["env:PROC_SECRET"],
        "branches": ["main"], "pipelines": copy.deepcopy(pipelines or PIPELINES), **extra}
    repo["modules"] = copy.deepcopy(MODULES if modules is None else modules)
    return {"launcher": {"backend": "log"}, "processing": {"max_attempts": 3},
            "repositories": [repo]}


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    return caught.value.problems


# --- configuration errors: each case changes exactly one thing of a valid configuration ---

def test_the_example_configuration_is_valid() -> None:
    selectors = parse(raw_config()).repositories[0].module_selectors().selectors
    assert sorted(selectors) == ["acme-{module}-deploy", "docs", "web"]
    assert [name for name, _ in selectors["web"].depends] == \
        ["ui-kit", "libs-common"]


def _with_pipeline(i: int, **change: Any) -> dict[str, Any]:
    pipelines = copy.deepcopy(PIPELINES)
    pipelines[i].update(change)
    return raw_config(pipelines)


ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("a cycle names its path",
     raw_config(modules={**MODULES, "libs-common": {"paths": ["libs/common/**"],
                                                    "depends_on": ["ui-kit"]}}),
     "repositories[0].modules.libs-common.depends_on: cycle libs-common -> ui-kit -> "
     "libs-common"),
    ("a cycle through pipelines names its path",
     raw_config([*PIPELINES[:2], {"name": "docs", "paths": ["docs/**"], "depends_on": ["api"]},
                 {"name": "api", "paths": ["api/**"], "depends_on": ["docs"]}]),
     "repositories[0].pipelines[2].depends_on: cycle docs -> api -> docs"),
    ("an unknown dependency",
     _with_pipeline(2, depends_on=["libs-comon"]),
     "repositories[0].pipelines[2].depends_on: unknown name 'libs-comon'; depends_on names a "
     "module or a pipeline"),
    ("{module} in a name but not in its paths",
     _with_pipeline(2, name="docs-{module}"),
     "repositories[0].pipelines[2].name: {module} is in the name but not in its paths; a "
     "template needs it in both"),
    ("{module} in paths but not in the name",
     _with_pipeline(2, paths=["docs/{module}/**"]),
     "repositories[0].pipelines[2].paths: {module} is in the paths but not in its name; a "
     "template needs it in both"),
    ("a dependency on a template",
     _with_pipeline(2, depends_on=["acme-{module}-deploy"]),
     "repositories[0].pipelines[2].depends_on: 'acme-{module}-deploy' is a template; depend "
     "on a module or a pipeline without {module}"),
    ("a module with {module} in its paths",
     raw_config(modules={**MODULES, "ui-kit": {"paths": ["libs/{module}/**"]}}),
     "repositories[0].modules.ui-kit.paths: {module} is only for pipeline templates"),
    ("a template that can make a configured pipeline's name",
     _with_pipeline(2, name="acme-docs-deploy"),
     "repositories[0].pipelines[0].name: template 'acme-{module}-deploy' can make the name "
     "'acme-docs-deploy', also a pipeline"),
    ("a {module} variable on a pipeline that is no template",
     _with_pipeline(2, variables={"MODULE": "{module}"}),
     "repositories[0].pipelines[2].variables.MODULE: {module} is only for a template pipeline "
     "(a name with {module})"),
    ("a module map without allow",
     raw_config(module_map={"path": ".webhook-receiver.yaml"}),
     "repositories[0].module_map.allow: is required: glob patterns every pipeline name in the "
     "file must match, like acme-*"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_configuration_error_names_the_key_path(raw: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(raw)


def test_an_entry_error_and_a_graph_error_are_reported_together() -> None:
    raw = _with_pipeline(1, paths=["web/**x"])
    raw["repositories"][0]["pipelines"][2]["depends_on"] = ["nope"]
    assert problems_of(raw) == [
        "repositories[0].pipelines[1].paths[0]: 'web/**x': '**' must be a whole path segment "
        "(like 'a/**/b')",
        "repositories[0].pipelines[2].depends_on: unknown name 'nope'; depends_on names a "
        "module or a pipeline"]


def test_a_dependency_on_an_invalid_entry_is_not_also_called_unknown() -> None:
    raw = raw_config(modules={**MODULES, "libs-common": {"paths": ["libs/common/**x"]}})
    assert problems_of(raw) == [
        "repositories[0].modules.libs-common.paths[0]: 'libs/common/**x': '**' must be a "
        "whole path segment (like 'a/**/b')"]


FILE = """
pipelines:
  - name: acme-{module}-deploy
    paths: ["services/{module}/**"]
    depends_on: [libs-common]
  - name: acme-web
    paths: ["web/**"]
    variables: {MODULE_PATHS: "{changed_paths}"}
modules:
  libs-common: {paths: ["libs/common/**"]}
"""

FILE_ERRORS: list[tuple[str, str, str]] = [
    ("a name outside allow", FILE.replace("name: acme-web", "name: other-web"),
     "pipelines[1].name: 'other-web' is not allowed here; allowed: acme-*"),
    ("a cycle", FILE.replace('{paths: ["libs/common/**"]}',
                             '{paths: ["libs/common/**"], depends_on: [acme-web]}').replace(
        'paths: ["web/**"]', 'paths: ["web/**"]\n    depends_on: [libs-common]'),
     "modules.libs-common.depends_on: cycle libs-common -> acme-web -> libs-common"),
    ("an unknown dependency", FILE.replace("depends_on: [libs-common]", "depends_on: [nope]"),
     "pipelines[0].depends_on: unknown name 'nope'; depends_on names a module or a pipeline"),
    ("a bad glob", FILE.replace('"web/**"', '"web/**x"'),
     "pipelines[1].paths[0]: 'web/**x': '**' must be a whole path segment (like 'a/**/b')"),
    ("an unknown key", FILE + "extra: 1\n", "extra: unknown key; allowed: pipelines, modules"),
    ("a name listed twice", FILE.replace('name: acme-{module}-deploy\n    paths: ["services/'
                                         '{module}/**"]', 'name: acme-web\n    paths: '
                                         '["services/**"]'),
     "pipelines[1].name: pipeline 'acme-web' is listed twice"),
    ("an unknown key in a pipeline", FILE.replace("    paths: [\"web/**\"]",
                                                   "    paths: [\"web/**\"]\n    colour: red"),
     "pipelines[1].colour: unknown key; allowed: name, paths"),
    ("not YAML", "pipelines: [", "module map: not valid YAML"),
]


# the repository's module_map settings the file is checked against
RULES = ModuleMapConfig(path=".webhook-receiver.yaml", allow=("acme-*",),
                        allow_variables=("MODULE_PATHS",))


def test_a_valid_module_map_file_parses() -> None:
    found, problems = parse_file(FILE, RULES)
    assert problems == []
    assert found is not None
    assert [p.name for p in found.pipelines] == ["acme-{module}-deploy", "acme-web"]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in FILE_ERRORS],
                         ids=[c[0] for c in FILE_ERRORS])
def test_module_map_file_error_names_the_key_path(text: str, expected: str) -> None:
    found, problems = parse_file(text, RULES)
    assert found is None
    assert any(p.startswith(expected) for p in problems), problems


def test_a_file_pipeline_also_in_the_configuration_is_refused() -> None:
    repo = parse(raw_config([{"name": "acme-web", "paths": ["web/**"]}], {})).repositories[0]
    found, _ = parse_file(FILE, RULES)
    assert found is not None
    joined, problems = PipelineSet.of(repo).joined(found)
    assert joined is None
    assert problems == ["pipeline 'acme-web' is also in the service configuration"]


def test_check_config_module_map_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(FILE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(FILE.replace("depends_on: [libs-common]", "depends_on: [nope]")
                   .replace('"web/**"', '"web/**x"'))
    run = [sys.executable, "-m", "receiver.cli", "check-config", "--module-map"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parent.parent)}
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, env=env)
    assert (ok.returncode, ok.stdout) == (0, f"ok: {good}: 2 pipelines (1 templates)\n")
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, env=env)
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        "configuration error:",
        "  pipelines[1].paths[0]: 'web/**x': '**' must be a whole path segment (like 'a/**/b')",
        "  pipelines[0].depends_on: unknown name 'nope'; depends_on names a module or a "
        "pipeline",
    ]


def test_check_config_module_map_applies_the_configured_allow_list(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw_config(
        module_map={"path": ".webhook-receiver.yaml", "allow": ["acme-svc-*"]})))
    file = tmp_path / "map.yaml"
    file.write_text(FILE)
    done = subprocess.run([sys.executable, "-m", "receiver.cli", "check-config", "--module-map",
                           str(file), "--config", str(config)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PROC_SECRET": "s",
                               "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 2
    assert "  pipelines[1].name: 'acme-web' is not allowed here; allowed: acme-svc-*" in \
        done.stderr.splitlines()


# --- templates -----------------------------------------------------------------------------

TEMPLATE = Template.compile("acme-{module}-deploy",
                            ["services/{module}/**", "jobs/{module}.yaml",
                             "!services/{module}/docs/**", "!**/*.md"])


def test_a_template_extracts_the_module_from_each_path() -> None:
    found = TEMPLATE.modules(["services/billing/api.py", "services/billing/db.py",
                              "services/search/x.py", "jobs/cron.yaml", "libs/x.py"])
    assert found == {
        "billing": (RuleMatch("services/billing/api.py", "services/{module}/**"),
                    RuleMatch("services/billing/db.py", "services/{module}/**")),
        "search": (RuleMatch("services/search/x.py", "services/{module}/**"),),
        "cron": (RuleMatch("jobs/cron.yaml", "jobs/{module}.yaml"),),
    }


def test_a_template_exclude_applies_to_the_same_module_and_plain_excludes_to_all() -> None:
    assert TEMPLATE.modules(["services/billing/docs/a.txt", "services/search/README.md"]) == {}


def test_a_module_is_one_path_segment_of_pipeline_name_characters() -> None:
    assert TEMPLATE.modules(["services/x.py", "services/has space/a.py", "services/a+b/x"]) == {}


def test_a_template_names_its_concrete_pipelines_and_reads_them_back() -> None:
    assert TEMPLATE.concrete("billing") == "acme-billing-deploy"
    assert TEMPLATE.module_of("acme-billing-deploy") == "billing"
    assert TEMPLATE.module_of("acme-billing-build") is None


def test_a_placeholder_used_twice_captures_one_value() -> None:
    t = Template.compile("{module}-cfg", ["conf/{module}/{module}.yaml"])
    assert list(t.modules(["conf/a/a.yaml", "conf/a/b.yaml"])) == ["a"]


# --- decide with templates and dependencies ------------------------------------------------

def selectors() -> dict[str, Selector]:
    return dict(parse(raw_config()).repositories[0].module_selectors().selectors)


def test_a_template_starts_one_concrete_pipeline_per_changed_module() -> None:
    decisions = decide(selectors(), BASE, HEAD, Diff("ahead", frozenset(
        {"services/billing/a.py", "services/search/b.py", "services/search/README.md"})))
    assert {n: d.verdict for n, d in decisions.items()} == {
        "acme-billing-deploy": "changed", "acme-search-deploy": "changed",
        "web": "unchanged", "docs": "unchanged"}
    assert decisions["acme-search-deploy"].matches == (
        RuleMatch("services/search/b.py", "services/{module}/**"),)


def test_a_dependency_change_says_which_dependency_brought_the_pipeline_in() -> None:
    decisions = decide(selectors(), BASE, HEAD, Diff("ahead", frozenset({"libs/common/x.py"})))
    assert {n: d.verdict for n, d in decisions.items()} == {"web": "changed", "docs": "unchanged"}
    web = decisions["web"]
    assert web.matches == ()
    assert web.via == (("libs-common", (RuleMatch("libs/common/x.py", "libs/common/**"),)),)
    assert web.selected() == [("libs/common/x.py", "libs/common/**", "libs-common")]


def test_a_template_whose_dependency_changed_starts_its_pipelines_holding_baselines() -> None:
    bound = ModuleMap(selectors()).for_branch(["acme-billing-deploy", "acme-search-deploy",
                                               "someone-else"])
    assert bound["acme-billing-deploy"].module == "billing"
    assert "someone-else" not in bound
    decisions = decide(bound, BASE, HEAD, Diff("ahead", frozenset({"libs/common/x.py"})))
    assert {n: d.verdict for n, d in decisions.items()} == {
        "acme-billing-deploy": "changed", "acme-search-deploy": "changed", "web": "changed",
        "docs": "unchanged"}
    assert [name for name, _ in decisions["acme-billing-deploy"].via] == ["libs-common"]


def test_a_bound_concrete_pipeline_is_unchanged_when_its_module_is_not() -> None:
    bound = ModuleMap(selectors()).for_branch(["acme-billing-deploy"])
    decisions = decide(bound, BASE, HEAD, Diff("ahead", frozenset({"services/search/a.py"})))
    assert decisions["acme-billing-deploy"].verdict == "unchanged"
    assert decisions["acme-search-deploy"].verdict == "changed"


def test_without_a_complete_difference_a_template_finds_no_new_pipeline() -> None:
    bound = ModuleMap(selectors()).for_branch(["acme-billing-deploy"])
    decisions = decide(bound, BASE, HEAD, Diff("diverged", None, "too large"))
    assert sorted(decisions) == ["acme-billing-deploy", "docs", "web"]
    assert {d.verdict for d in decisions.values()} == {"changed"}
    new_branch = decide(bound, NoBase.NEW_BRANCH, HEAD, None)
    assert sorted(new_branch) == ["acme-billing-deploy", "docs", "web"]


def test_plain_path_rules_still_decide_as_before() -> None:
    decisions = decide({"a": PathRules.compile(["a/**"])}, BASE, HEAD,
                       Diff("ahead", frozenset({"a/x"})))
    assert decisions["a"].selected() == [("a/x", "a/**", None)]


def test_build_refuses_overlapping_templates() -> None:
    problems = problems_of(raw_config([{"name": "{module}-deploy", "paths": ["a/{module}/**"]},
                                       {"name": "acme-{module}-deploy",
                                        "paths": ["b/{module}/**"]}], {}))
    assert problems == ["repositories[0].pipelines[1].name: template 'acme-{module}-deploy' "
                        "can make the same names as '{module}-deploy'"]


# --- through the processor: baselines per concrete name ------------------------------------

class World:
    def __init__(self, tmp_path: Path) -> None:
        self.git = GitModel()
        self.root = self.git.commit(None, {"services/billing/a.py": "1",
                                           "services/search/a.py": "1",
                                           "libs/common/c.py": "1", "web/i.html": "1"})
        self.store = SQLiteStore(str(tmp_path / "state.db"))
        self.store.init()
        self.launcher = RecordingLauncher()
        cfg = parse(raw_config([{**PIPELINES[0], "variables": {"MOD": "{module}",
                                                               "PATHS": "{changed_paths}"}},
                                *PIPELINES[1:]]))
        self.processor = Processor(cfg, self.store, self.launcher,  # type: ignore[arg-type]
                                   {"github": ModelProvider(self.git)})  # type: ignore[dict-item]
        self.head = self.root
        self.count = 0

    def push(self, changes: dict[str, str | None]) -> str:
        before, self.head = self.head, self.git.commit(self.head, changes)
        self.count += 1
        event = PushEvent("github", REPO, "branch", "main", before, self.head)
        self.processor.process(Delivery(f"d{self.count}", "github", REPO, (event,)))
        return self.head

    def baselines(self) -> dict[str, str | None]:
        return {n: b.commit for n, b in self.store.baselines(KEY, "main").items()}


def test_concrete_pipelines_get_their_own_baselines_and_variables(tmp_path: Path) -> None:
    w = World(tmp_path)
    c1 = w.push({"services/billing/a.py": "2"})
    assert w.launcher.names() == ["acme-billing-deploy"]
    assert dict(w.launcher.started[0].variables) == {"MOD": "billing",
                                                     "PATHS": "services/billing/a.py"}
    assert w.baselines() == {"acme-billing-deploy": c1, "web": c1, "docs": c1}
    c2 = w.push({"services/search/a.py": "2"})
    assert w.launcher.names() == ["acme-billing-deploy", "acme-search-deploy"]
    assert w.baselines() == {"acme-billing-deploy": c2, "acme-search-deploy": c2, "web": c2,
                             "docs": c2}


def test_a_shared_library_change_starts_every_dependent_holding_a_baseline(
        tmp_path: Path) -> None:
    w = World(tmp_path)
    w.push({"services/billing/a.py": "2", "services/search/a.py": "2"})
    w.launcher.started.clear()
    c2 = w.push({"libs/common/c.py": "2"})
    assert w.launcher.names() == ["acme-billing-deploy", "acme-search-deploy", "web"]
    (record,) = w.store.history(commit=c2)
    web = next(p for p in record.pipelines if p.pipeline == "web")
    assert web.matched == (("libs/common/c.py", "libs/common/**", "libs-common"),)
    assert web.verdict == "started"


def test_a_concrete_pipeline_is_compared_from_its_own_baseline(tmp_path: Path) -> None:
    w = World(tmp_path)
    c1 = w.push({"services/billing/a.py": "2"})
    # billing's baseline stays at c1 while the branch moves on (as when a start is pending)
    stale = w.store.baselines(KEY, "main")["acme-billing-deploy"]
    w.push({"web/i.html": "2"})
    current = w.store.baselines(KEY, "main")["acme-billing-deploy"]
    import dataclasses
    assert w.store.replace_baseline(current, dataclasses.replace(current, commit=c1))
    assert stale.commit == c1
    w.launcher.started.clear()
    c3 = w.push({"services/billing/a.py": "3"})
    assert w.launcher.names() == ["acme-billing-deploy"]
    (record,) = w.store.history(commit=c3)
    billing = next(p for p in record.pipelines if p.pipeline == "acme-billing-deploy")
    assert billing.baseline == c1


def test_the_state_store_keeps_the_last_valid_module_map(store: StateStore) -> None:  # noqa: F811
    assert store.module_map(KEY) is None
    store.save_module_map(KEY, BASE, "pipelines: []\n", 1.0)
    big = FILE + "".join(f"  - name: acme-m{i}\n    paths: [m/{i}/**]\n" for i in range(5000))
    store.save_module_map(KEY, HEAD, big, 2.0)
    assert store.module_map(KEY) == (HEAD, big)
    assert store.module_map("github:other/repo") is None


def test_history_prints_which_dependency_brought_a_pipeline_in() -> None:
    from receiver.cli.history import _describe
    from receiver.state.base import DecisionRecord

    record = {"recorded_at": 0, "delivery_id": "d1", "provider": "github", "repository": REPO,
              "attempt": 1, "ref_type": "branch", "ref": "main", "before": BASE, "head": HEAD,
              "pipelines": [{"pipeline": "web", "verdict": "started", "baseline": BASE,
                             "diff": "compare", "complete": True, "reason": None,
                             "matched": [["libs/common/x.py", "libs/common/**", "libs-common"]],
                             "matched_count": 1, "execution_id": "e1", "error": None}]}
    assert ("  web: started; baseline aaaaaaaaaaaa; diff compare; matched via libs-common: "
            "libs/common/x.py (libs/common/**); execution e1") in _describe(
                DecisionRecord.from_dict(record), {})
    assert DecisionRecord.from_json(json.dumps(record)) == DecisionRecord.from_dict(record)


# --- the command line: explain and state seed with templates --------------------------------

def _cli_config(tmp_path: Path, api_url: str) -> Path:
    import yaml

    raw = raw_config(api_url=api_url)
    raw["state"] = {"path": str(tmp_path / "cli.db")}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "receiver.cli", *args], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PROC_SECRET": "module-map-test-secret",
                               "PYTHONPATH": str(Path(__file__).parent.parent)})


def test_explain_shows_concrete_names_and_the_dependency_that_brought_each_in(
        tmp_path: Path, fake_api: Any) -> None:
    from tests.harness import Recorded

    git = GitModel()
    a = git.commit(None, {"services/billing/a.py": "1", "libs/ui/u.py": "1"})
    b = git.commit(a, {"services/billing/a.py": "2", "libs/ui/u.py": "2"})

    class Routes(dict[str, Any]):
        def get(self, path: str, default: Any = None) -> Any:
            return compare if path.startswith(f"/repos/{REPO}/compare/") else default

    def compare(rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        base, _, head = rec.path.rsplit("/", 1)[1].partition("...")
        return 200, git.github_compare(base, head), {}

    fake_api.routes = Routes()
    config = str(_cli_config(tmp_path, fake_api.url))
    done = _cli("explain", "--config", config, "--repository", REPO, "--from", a, "--to", b)
    assert done.returncode == 0, done.stderr
    assert "  libs/ui/u.py  ->  web (libs/ui/**) via ui-kit" in done.stdout
    assert ("  services/billing/a.py  ->  acme-billing-deploy (services/{module}/**)"
            in done.stdout)
    assert "would start: acme-billing-deploy, web\n" in done.stdout
    assert "unchanged:   docs\n" in done.stdout


def test_state_seed_sets_a_concrete_pipelines_baseline_by_name(tmp_path: Path,
                                                               fake_api: Any) -> None:
    config = str(_cli_config(tmp_path, fake_api.url))
    done = _cli("state", "seed", "--config", config, "--pipeline", "acme-billing-deploy",
                "--commit", BASE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pipeline"] == "acme-billing-deploy"
    rows = [json.loads(line) for line in _cli("state", "--config", config).stdout.splitlines()]
    assert [(r["pipeline"], r["baseline_commit"]) for r in rows] == [
        ("acme-billing-deploy", BASE)]


# --- the repository-side map over the state store ------------------------------------------

def test_repository_maps_keep_the_last_valid_file_for_every_reader(tmp_path: Path) -> None:
    from receiver.module_map import RepositoryMaps

    repo = parse(raw_config([{"name": "docs", "paths": ["docs/**"]}], {},
                            module_map={"path": ".webhook-receiver.yaml",
                                        "allow": ["acme-*"],
                                        "allow_variables": ["MODULE_PATHS"]})).repositories[0]
    files: dict[str, bytes | None] = {BASE: FILE.encode(), HEAD: b"pipelines: [",
                                      "c" * 40: None}
    reads: list[str] = []

    def read(_repo: Any, path: str, commit: str) -> bytes | None:
        reads.append(path)
        return files[commit]

    shared = SQLiteStore(str(tmp_path / "maps.db"))
    shared.init()
    first = RepositoryMaps(shared, read, lambda: 1.0)
    # nothing kept yet: an invalid file leaves the configured pipelines alone
    alone = first.resolve(repo, HEAD)
    assert alone.problems and alone.kept is None
    assert "acme-web" not in alone.pipelines.configs
    valid = first.resolve(repo, BASE)
    assert (valid.problems, sorted(valid.pipelines.configs)) == (
        (), ["acme-web", "acme-{module}-deploy", "docs"])
    assert valid.pipelines.pipeline("acme-x-deploy").name == "acme-x-deploy"
    # another process (a new reader over the same store) falls back to the kept file
    other = RepositoryMaps(shared, read, lambda: 2.0)
    kept = other.resolve(repo, HEAD)
    assert kept.kept == BASE
    assert kept.problems[0].startswith(".webhook-receiver.yaml: not valid YAML")
    assert "acme-web" in kept.pipelines.configs
    # a head without the file has the configured pipelines only
    assert "acme-web" not in other.resolve(repo, "c" * 40).pipelines.configs
    assert reads == [".webhook-receiver.yaml"] * 4

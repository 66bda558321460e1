"""Baseline semantics (DESIGN.md 'State semantics'), through the processor and the SQLite store.

The provider API cannot run here, so a small provider stand-in answers compares from an
in-memory Git history (tests/gitmodel.py); the store, matcher and processor are real.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from providers.base import Diff
from receiver.config import RepositoryConfig, parse
from receiver.effects import Bus
from receiver.errors import LaunchError, ProviderError, RetryLater
from receiver.events import Delivery, PushEvent
from receiver.launcher import StartRequest
from receiver.logging import configure
from receiver.processor import Processor
from receiver.state.base import StateStore
from receiver.state.sqlite import SQLiteStore
from tests.gitmodel import GitModel

REPO = "acme/mono"
KEY = f"github:{REPO}"


class ModelProvider:
    """Answers changed_files from a GitModel; ``fail`` raises ProviderError instead."""

    name = "github"

    def __init__(self, git: GitModel) -> None:
        self.git = git
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        self.calls.append((base, head))
        if self.fail:
            raise ProviderError("GET /compare answered HTTP 502")
        if base not in self.git.commits:
            return Diff("diverged", None, "compare answered 404: the baseline commit is gone", 1)
        return Diff(self.git.status(base, head), frozenset(self.git.tree_diff(base, head)),  # type: ignore[arg-type]
                    None, 1)


class RecordingLauncher:
    dry_run = False

    def __init__(self) -> None:
        self.started: list[StartRequest] = []
        self.failures: dict[str, LaunchError] = {}

    def start(self, request: StartRequest) -> str:
        if request.pipeline in self.failures:
            raise self.failures[request.pipeline]
        self.started.append(request)
        return f"exec-{request.pipeline}-{request.commit[:7]}"

    def names(self) -> list[str]:
        return sorted(r.pipeline for r in self.started)


def config(**repo_extra: Any) -> Any:
    return parse({
        "launcher": {"backend": "log"},
        "processing": {"max_attempts": 3},
        "repositories": [{
            "provider": "github", "name": REPO, "webhook_secrets": ["env:PROC_SECRET"],
            "branches": ["main"],
            "pipelines": [
                {"name": "collections", "paths": ["svc/collections/**", "!**/*.md"],
                 "variables": {"COMMIT_ID": "{commit}", "CHANGED": "{changed_paths}"},
                 "source_action": "Source"},
                {"name": "utilities", "paths": ["svc/utilities/**"]},
                {"name": "web", "paths": ["web/**"], "tags": ["v*"]},
            ],
            **repo_extra,
        }],
    })


class World:
    def __init__(self, tmp_path: Path, store: StateStore | None = None, bus: Bus | None = None,
                 **repo_extra: Any) -> None:
        self.git = GitModel()
        self.root = self.git.commit(None, {"svc/collections/a.py": "1", "svc/utilities/u.py": "1",
                                           "web/index.html": "1", "README.md": "1"})
        self.store = store or SQLiteStore(str(tmp_path / "state.db"))
        self.store.init()
        self.provider = ModelProvider(self.git)
        self.launcher = RecordingLauncher()
        self.processor = Processor(config(**repo_extra), self.store, self.launcher,
                                   {"github": self.provider}, bus=bus)  # type: ignore[dict-item]
        self.count = 0
        self.head = self.root  # the branch's head, for tests that push on from it

    def push(self, before: str | None, after: str | None, ref: str = "main",
             ref_type: str = "branch", attempts: int = 1, delivery_id: str | None = None) -> None:
        self.count += 1
        event = PushEvent("github", REPO, ref_type, ref, before, after)  # type: ignore[arg-type]
        delivery = Delivery(delivery_id or f"d{self.count}", "github", REPO, (event,),
                            attempts=attempts)
        self.processor.process(delivery)

    def baseline(self, pipeline: str, branch: str = "main") -> str | None:
        found = self.store.baselines(KEY, branch).get(pipeline)
        return found.commit if found else None


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROC_SECRET", "x")
    configure()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_two_pushes_touching_different_modules_start_exactly_their_pipelines(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    world.push(world.root, c1)
    assert world.launcher.names() == ["collections"]
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2"})
    world.push(c1, c2)
    assert world.launcher.names() == ["collections", "utilities"]
    assert {p: world.baseline(p) for p in ("collections", "utilities", "web")} == \
        {"collections": c2, "utilities": c2, "web": c2}


def test_excluded_files_alone_start_nothing(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/README.md": "docs"})
    world.push(world.root, c1)
    assert world.launcher.started == []
    assert world.baseline("collections") == c1


def test_one_compare_serves_every_pipeline_sharing_a_baseline(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2", "web/index.html": "2"})
    world.push(world.root, c1)
    assert world.provider.calls == [(world.root, c1)]


def test_first_push_without_baseline_compares_against_before(world: World) -> None:
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2"})
    world.push(c1, c2)
    assert world.provider.calls == [(c1, c2)]
    assert world.launcher.names() == ["utilities"]


def test_changes_missed_between_pushes_are_counted_from_the_baseline(world: World) -> None:
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    world.push(world.root, c1)
    c2 = world.git.commit(c1, {"svc/collections/a.py": "2"})  # this push's delivery was lost
    c3 = world.git.commit(c2, {"svc/utilities/u.py": "2"})
    world.push(c2, c3)
    assert world.launcher.names() == ["collections", "utilities", "web"]


def test_new_branch_starts_every_pipeline(world: World) -> None:
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    world.push(None, c1)
    assert world.launcher.names() == ["collections", "utilities", "web"]
    assert world.provider.calls == []


def test_new_branch_can_be_told_to_start_nothing(tmp_path: Path) -> None:
    world = World(tmp_path, new_branch="none")
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    world.push(None, c1)
    assert world.launcher.started == []
    assert world.baseline("web") == c1


def test_force_push_that_drops_commits_counts_the_files_they_touched(world: World) -> None:
    x = world.git.commit(world.root, {"svc/collections/a.py": "experiment"})
    world.push(world.root, x)
    assert world.launcher.names() == ["collections"]
    y = world.git.commit(world.root, {"svc/utilities/u.py": "2"})  # rewritten history
    world.push(x, y)
    # the deployment at x has collections' experiment; y does not: collections must redeploy
    assert world.launcher.names() == ["collections", "collections", "utilities"]
    assert world.baseline("collections") == y


def test_out_of_order_delivery_of_an_older_head_starts_nothing(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2"})
    world.push(c1, c2)  # arrives first
    started = world.launcher.names()
    world.push(world.root, c1)  # older push arrives late
    assert world.launcher.names() == started
    assert world.baseline("collections") == c2  # never moved backwards


def test_repeated_head_in_a_new_delivery_starts_nothing(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    world.push(world.root, c1)
    world.push(world.root, c1)
    assert world.launcher.names() == ["collections"]


def test_reprocessing_the_same_delivery_starts_nothing_twice(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    world.push(world.root, c1, delivery_id="same")
    world.push(world.root, c1, delivery_id="same")
    assert world.launcher.names() == ["collections"]


def test_vanished_baseline_treats_every_pipeline_as_changed_and_says_why(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    gone = "f" * 40
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    world.push(gone, c1)
    assert world.launcher.names() == ["collections", "utilities", "web"]
    incomplete = [e for e in log_lines(capsys) if e["event"] == "changes.incomplete"]
    assert incomplete and "404" in incomplete[0]["reason"]


def test_failed_start_keeps_the_baseline_so_the_next_push_includes_it(world: World) -> None:
    world.launcher.failures["collections"] = LaunchError("PipelineNotFoundException", "no such")
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2", "web/index.html": "2"})
    world.push(world.root, c1)
    assert world.launcher.names() == ["web"]
    assert world.baseline("collections") == world.root  # pinned where it was compared from
    del world.launcher.failures["collections"]
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2"})
    world.push(c1, c2)
    assert world.launcher.names() == ["collections", "utilities", "web"]


def test_failed_first_start_on_a_new_branch_is_started_by_the_next_push(world: World) -> None:
    world.launcher.failures["collections"] = LaunchError("PipelineNotFoundException", "no such")
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    world.push(None, c1)
    assert world.launcher.names() == ["utilities", "web"]
    del world.launcher.failures["collections"]
    c2 = world.git.commit(c1, {"web/index.html": "3"})
    world.push(c1, c2)
    assert world.launcher.names() == ["collections", "utilities", "web", "web"]
    assert world.baseline("collections") == c2


def test_failed_start_is_logged_and_does_not_stop_the_others(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.launcher.failures["collections"] = LaunchError("PipelineNotFoundException", "no such")
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2", "svc/utilities/u.py": "2"})
    world.push(world.root, c1)
    lines = log_lines(capsys)
    failed = [e for e in lines if e["event"] == "pipeline.start_failed"]
    assert [(e["pipeline"], e["error"].split(":")[0]) for e in failed] == \
        [("collections", "PipelineNotFoundException")]
    assert all(e["delivery_id"] == "d1" and e["provider"] == "github" and
               e["repository"] == REPO for e in lines)
    started = [e["pipeline"] for e in lines if e["event"] == "pipeline.started"]
    assert started == ["utilities"]
    summary = next(e for e in lines if e["event"] == "delivery.processed")
    assert (summary["pipelines_started"], summary["pipelines_failed"], summary["changed_files"]) \
        == (["utilities"], ["collections"], 2)


def test_retryable_start_failure_asks_for_a_retry_and_the_retry_starts_it(world: World) -> None:
    world.launcher.failures["collections"] = LaunchError("ThrottlingException", "slow down",
                                                         retryable=True)
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2", "svc/utilities/u.py": "2"})
    with pytest.raises(RetryLater):
        world.push(world.root, c1, delivery_id="d")
    del world.launcher.failures["collections"]
    world.push(world.root, c1, delivery_id="d", attempts=2)
    assert world.launcher.names() == ["collections", "utilities"]


def test_provider_failure_is_retried_later_and_on_the_last_attempt_starts_everything(
        world: World) -> None:
    c1 = world.git.commit(world.root, {"web/index.html": "2"})
    world.provider.fail = True
    with pytest.raises(RetryLater):
        world.push(world.root, c1, attempts=1)
    assert world.launcher.started == []
    world.push(world.root, c1, attempts=3)  # max_attempts is 3
    assert world.launcher.names() == ["collections", "utilities", "web"]


def test_start_request_carries_variables_source_revision_and_token(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    world.push(world.root, c1)
    request = world.launcher.started[0]
    assert dict(request.variables) == {"COMMIT_ID": c1, "CHANGED": "svc/collections/a.py"}
    assert request.source_action == "Source"
    assert request.client_request_token == StartRequest("collections", c1, "x", "y").client_request_token
    assert request.client_request_token != StartRequest("collections", world.root, "x", "y").client_request_token


def test_tag_push_starts_only_pipelines_whose_tag_rule_matches(world: World) -> None:
    world.push(None, world.root, ref="v1.2.0", ref_type="tag")
    assert world.launcher.names() == ["web"]
    assert world.store.baselines(KEY, "main") == {}


def test_tag_push_starts_its_pipelines_at_once_like_a_branch_push(tmp_path: Path) -> None:
    world = World(tmp_path, pipelines=[
        {"name": "web", "paths": ["web/**"], "tags": ["v*"]},
        {"name": "api", "paths": ["api/**"], "tags": ["v*"]},
    ])
    both_in_flight = threading.Barrier(2, timeout=5)
    real_start = world.launcher.start

    def start(request: StartRequest) -> str:
        both_in_flight.wait()  # one start at a time would break the barrier after 5 s
        return real_start(request)

    world.launcher.start = start  # type: ignore[method-assign]
    world.push(None, world.root, ref="v2.0.0", ref_type="tag")
    assert world.launcher.names() == ["api", "web"]


def test_lost_compare_and_set_is_re_evaluated_against_the_new_baseline(world: World) -> None:
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2"})
    real_advance = world.store.advance_baseline
    raced = {"done": False}

    def racing_advance(expected: Any, commit: str, now: float, execution_id: str | None = None) -> bool:
        if not raced["done"]:
            # another replica processes the newer push c2 first, for every pipeline
            raced["done"] = True
            for name in ("collections", "utilities", "web"):
                real_advance(world.store.baselines(KEY, "main").get(name) or
                             type(expected)(KEY, "main", name), c2, now)
        return real_advance(expected, commit, now, execution_id)

    world.store.advance_baseline = racing_advance  # type: ignore[method-assign]
    world.push(world.root, c1)
    assert world.baseline("collections") == c2  # not moved back to c1
    assert world.baseline("utilities") == c2

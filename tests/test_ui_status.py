"""What the status pages read, over a real SQLite store (receiver/ui/status.py): which
records a filter selects, in what order, and the bounds on what one page reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from receiver.config import Config, parse
from receiver.state.base import Baseline, DecisionRecord, Execution, PipelineDecision
from receiver.state.sqlite import SQLiteStore
from receiver.ui import status

A, B, C = "a" * 40, "b" * 40, "c" * 40


def config(launcher: str = "codepipeline") -> Config:
    repo = {"webhook_secrets": ["env:S"], "branches": ["main"],
            "pipelines": [{"name": "api-deploy", "paths": ["api/**"]},
                          {"name": "{module}-svc", "paths": ["svc/{module}/**"]}]}
    return parse({"launcher": {"backend": launcher, "region": "eu-west-1"}, "repositories": [
        {"provider": "github", "name": "acme/mono", **repo},
        {"provider": "gitlab", "name": "acme/other", **repo}]})


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "s.db"))
    s.init()
    return s


def record(delivery_id: str, at: float, verdicts: dict[str, str], *, provider: str = "github",
           repository: str = "acme/mono", ref: str = "main", head: str = B) -> DecisionRecord:
    return DecisionRecord(
        delivery_id, provider, repository, "branch", ref, A, head, at, 1,
        tuple(PipelineDecision(name, verdict, A, "compare", True,
                               execution_id=f"x-{delivery_id}-{name}"
                               if verdict == "started" else None)
              for name, verdict in sorted(verdicts.items())))


def ids(views: list[status.RecordView]) -> list[str]:
    return [v.record.delivery_id for v in views]


def test_without_filters_every_configured_repositorys_records_are_merged_newest_first(
        store: SQLiteStore) -> None:
    store.record_decision(record("g1", 1.0, {"api-deploy": "started"}))
    store.record_decision(record("l1", 2.0, {"api-deploy": "unchanged"}, provider="gitlab",
                                 repository="acme/other"))
    store.record_decision(record("g2", 3.0, {"api-deploy": "unchanged"}))
    assert ids(status.records(config(), store, status.Filters())) == ["g2", "l1", "g1"]
    assert ids(status.records(config(), store, status.Filters(limit=2))) == ["g2", "l1"]
    assert ids(status.records(config(), store, status.Filters(
        repository="gitlab:acme/other"))) == ["l1"]


def test_a_pipeline_filter_shows_its_entry_only_and_each_push_once(store: SQLiteStore) -> None:
    store.record_decision(record("d1", 1.0, {"api-deploy": "started", "auth-svc": "unchanged"}))
    store.record_decision(record("d2", 2.0, {"api-deploy": "unchanged", "auth-svc": "started"}))
    store.record_decision(record("d3", 3.0, {"auth-svc": "unchanged"}))
    views = status.records(config(), store, status.Filters(pipeline="api-deploy"))
    # d1 is found twice (the repository's latest, and the pipeline's starts): listed once
    assert ids(views) == ["d2", "d1"]
    assert [[p.pipeline for p in v.record.pipelines] for v in views] == [["api-deploy"]] * 2


def test_a_commit_filter_with_another_branch_selects_nothing(store: SQLiteStore) -> None:
    store.record_decision(record("d1", 1.0, {"api-deploy": "started"}, head=C))
    assert ids(status.records(config(), store, status.Filters(commit=C))) == ["d1"]
    assert ids(status.records(config(), store, status.Filters(commit=C, branch="dev"))) == []


class CountingStore(SQLiteStore):
    """The real store, counting execution reads."""

    reads = 0

    def execution(self, pipeline: str, execution_id: str) -> Execution | None:
        self.reads += 1
        return super().execution(pipeline, execution_id)


def test_one_page_reads_at_most_a_bounded_number_of_executions(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "s.db"))
    store.init()
    names = [f"m{i}-svc" for i in range(3)]
    for n in range(status.RECORDS_MAX):
        store.record_decision(record(f"d{n:03}", float(n), dict.fromkeys(names, "started")))
        for name in names:
            store.record_execution(Execution(name, f"x-d{n:03}-{name}", "github:acme/mono",
                                             "main", B, float(n), "Succeeded"))
    views = status.records(config(), store, status.Filters(limit=status.RECORDS_MAX))
    assert len(views) == status.RECORDS_MAX
    assert store.reads == status.OUTCOME_LOOKUPS < 3 * status.RECORDS_MAX
    # the rest are listed with their execution id, their outcome not looked up
    assert sum(o.status is None for v in views for o in v.outcomes.values()) == \
        3 * status.RECORDS_MAX - status.OUTCOME_LOOKUPS


def _deployed(store: SQLiteStore, repository: str, pipeline: str, execution_id: str,
              status_: str) -> None:
    fresh = Baseline(repository, "main", pipeline)
    store.advance_baseline(fresh, B, 10.0, execution_id=execution_id)
    current = store.baselines(repository, "main")[pipeline]
    store.replace_baseline(current, dataclasses.replace(
        current, deployed_commit=A, last_execution_status=status_))
    store.record_execution(Execution(pipeline, execution_id, repository, "main", B, 9.0,
                                     status_))


@pytest.mark.parametrize(("launcher", "url"), [
    ("codepipeline", "https://eu-west-1.console.aws.amazon.com/codesuite/codepipeline/pipelines/"
                     "api-deploy/executions/x-1/timeline?region=eu-west-1"),
    ("log", None),  # a dry run's execution id names nothing in the console
])
def test_the_overview_groups_pipelines_by_repository_and_branch(
        store: SQLiteStore, launcher: str, url: Any) -> None:
    _deployed(store, "github:acme/mono", "api-deploy", "x-1", "Succeeded")
    _deployed(store, "gitlab:acme/other", "api-deploy", "x-2", "Failed")
    store.begin_start("api-deploy", C, "d-9", 1, 20.0)  # a start in flight
    view = status.overview(config(launcher), store, now=30.0)
    assert [(g.provider, g.repository, g.branch) for g in view.groups] == [
        ("github", "acme/mono", "main"), ("gitlab", "acme/other", "main")]
    first = view.groups[0].rows[0]
    assert (first.baseline.deployed_commit, first.status) == (A, "Succeeded")
    assert first.outcome is not None and first.outcome.url == url
    assert first.outcome.started_at == 9.0
    assert [h.name for h in first.starting] == [f"api-deploy@{C}"]
    assert view.backlog.deliveries == 0 and view.oldest_pending_seconds is None


def test_a_pipeline_the_service_knows_nothing_of_has_no_page(store: SQLiteStore) -> None:
    assert status.pipeline(config(), store, "nobody-deploy") is None
    # a template's concrete name is not configured as such: known only from its records
    assert status.pipeline(config(), store, "auth-svc") is None
    configured = status.pipeline(config(), store, "api-deploy")
    assert configured is not None and (configured.rows, configured.starts) == ((), ())
    store.record_decision(record("d1", 1.0, {"auth-svc": "started"}))
    view = status.pipeline(config(), store, "auth-svc")
    assert view is not None and not view.configured
    assert [(r.delivery_id, e.verdict) for r, e, _ in view.starts] == [("d1", "started")]

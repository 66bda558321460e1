"""One contract suite for every state backend (see receiver/state/base.py)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.config import StateConfig
from receiver.events import Delivery, PullRequestEvent, PushEvent
from receiver.state.base import (
    ACTIVE_VERDICTS,
    Backlog,
    Baseline,
    DecisionRecord,
    PipelineDecision,
    StateStore,
    Task,
    Validation,
    ValidationRun,
)
from receiver.state.dynamodb import DynamoDBStore
from receiver.state.sqlite import SQLiteStore
from tests.harness import MotoServer

A, B, C = "a" * 40, "b" * 40, "c" * 40


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s: StateStore
    if request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "state.db"))
    else:
        # DynamoDB over the wire: moto's server mode on 127.0.0.1, a fresh table per test
        moto: MotoServer = request.getfixturevalue("moto_server")
        s = DynamoDBStore(StateConfig(backend="dynamodb", table=f"t-{uuid.uuid4().hex[:12]}",
                                      region="us-east-1", endpoint_url=moto.url))
    s.init()
    yield s


def delivery(delivery_id: str = "d1", head: str = B, branch: str = "main") -> Delivery:
    event = PushEvent("github", "acme/mono", "branch", branch, A, head, False)
    return Delivery(delivery_id, "github", "acme/mono", (event,), verified_by="env:S")


def test_init_is_safe_to_run_again(store: StateStore) -> None:
    store.init()
    store.ping()


def test_delivery_is_recorded_once(store: StateStore) -> None:
    assert store.record_delivery(delivery(), 1.0) is True
    assert store.record_delivery(delivery(), 2.0) is False


def test_claimed_delivery_round_trips_its_events(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    got = store.claim_delivery("w1", 60, 10.0)
    assert got is not None
    assert got.events == delivery().events
    assert (got.delivery_id, got.provider, got.repository, got.verified_by, got.attempts) == \
        ("d1", "github", "acme/mono", "env:S", 1)


def test_claim_takes_the_oldest_pending_first(store: StateStore) -> None:
    store.record_delivery(delivery("late"), 5.0)
    store.record_delivery(delivery("early"), 1.0)
    first = store.claim_delivery("w1", 60, 10.0)
    assert first is not None and first.delivery_id == "early"


def test_leased_delivery_is_not_claimed_again_until_the_lease_expires(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    assert store.claim_delivery("w1", 60, 10.0) is not None
    assert store.claim_delivery("w2", 60, 69.0) is None
    again = store.claim_delivery("w2", 60, 71.0)
    assert again is not None and again.attempts == 2


def test_finished_delivery_is_never_claimed(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    store.claim_delivery("w1", 60, 10.0)
    store.finish_delivery(delivery(), "w1", "processed", 11.0)
    assert store.claim_delivery("w2", 60, 1000.0) is None


def test_finish_by_a_former_owner_does_not_close_anothers_lease(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    store.claim_delivery("w1", 60, 10.0)
    store.claim_delivery("w2", 60, 100.0)  # w1's lease expired, w2 took over
    store.finish_delivery(delivery(), "w1", "processed", 101.0)
    assert store.claim_delivery("w3", 60, 200.0) is not None


def test_released_delivery_waits_until_retry_time(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    store.claim_delivery("w1", 60, 10.0)
    store.release_delivery(delivery(), "w1", 30.0)
    assert store.claim_delivery("w2", 60, 29.0) is None
    assert store.claim_delivery("w2", 60, 31.0) is not None


def test_concurrent_claims_hand_each_delivery_to_one_owner(store: StateStore) -> None:
    for i in range(20):
        store.record_delivery(delivery(f"d{i}", branch=f"b{i}"), float(i))
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(owner: str) -> None:
        while (d := store.claim_delivery(owner, 600, 100.0)) is not None:
            with lock:
                claimed.append(d.delivery_id)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"d{i}" for i in range(20))


def test_concurrent_recordings_accept_each_delivery_once_and_keep_every_one(
        store: StateStore) -> None:
    # 8 threads record the same 30 ids at once: each id is accepted by exactly one caller,
    # and every id is stored
    ids = [f"c{i}" for i in range(30)]
    accepted: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def record(offset: int) -> None:
        barrier.wait()
        for k in range(len(ids)):
            delivery_id = ids[(k + offset) % len(ids)]
            if store.record_delivery(delivery(delivery_id, branch=delivery_id), float(k)):
                with lock:
                    accepted.append(delivery_id)

    threads = [threading.Thread(target=record, args=(i * 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(accepted) == sorted(ids)
    claimed = []
    while (d := store.claim_delivery("w", 600, 100.0)) is not None:
        claimed.append(d.delivery_id)
    assert sorted(claimed) == sorted(ids)


def test_baseline_is_created_then_advanced_by_compare_and_set(store: StateStore) -> None:
    empty = Baseline("github:acme/mono", "main", "p1")
    assert store.baselines("github:acme/mono", "main") == {}
    assert store.advance_baseline(empty, A, 1.0) is True
    current = store.baselines("github:acme/mono", "main")["p1"]
    assert (current.commit, current.last_started_commit, current.version) == (A, None, 1)
    assert store.advance_baseline(current, B, 2.0, execution_id="exec-1") is True
    after = store.baselines("github:acme/mono", "main")["p1"]
    assert (after.commit, after.last_started_commit, after.last_execution_id) == (B, B, "exec-1")


def test_stale_version_loses_the_compare_and_set(store: StateStore) -> None:
    empty = Baseline("github:acme/mono", "main", "p1")
    assert store.advance_baseline(empty, A, 1.0)
    assert store.advance_baseline(empty, B, 2.0) is False  # someone created it first
    current = store.baselines("github:acme/mono", "main")["p1"]
    assert store.advance_baseline(current, B, 3.0)
    assert store.advance_baseline(current, C, 4.0) is False  # read before the last write
    assert store.baselines("github:acme/mono", "main")["p1"].commit == B


def test_unchanged_advance_keeps_last_started_commit(store: StateStore) -> None:
    empty = Baseline("github:acme/mono", "main", "p1")
    store.advance_baseline(empty, A, 1.0, execution_id="exec-a")
    current = store.baselines("github:acme/mono", "main")["p1"]
    store.advance_baseline(current, B, 2.0)
    after = store.baselines("github:acme/mono", "main")["p1"]
    assert (after.commit, after.last_started_commit, after.last_execution_id) == (B, A, "exec-a")


def test_all_baselines_are_listed_in_order(store: StateStore) -> None:
    for pipeline in ("p2", "p1"):
        store.advance_baseline(Baseline("github:acme/mono", "main", pipeline), A, 1.0)
    store.advance_baseline(Baseline("github:acme/mono", "dev", "p1"), A, 1.0)
    assert [(b.branch, b.pipeline) for b in store.all_baselines()] == \
        [("dev", "p1"), ("main", "p1"), ("main", "p2")]


def test_start_intent_is_created_once_and_owned_by_the_first(store: StateStore) -> None:
    first = store.begin_start("p1", B, "d1", 1, 1.0)
    second = store.begin_start("p1", B, "d2", 1, 2.0)
    assert (first.state, first.owner) == ("pending", "d1")
    assert (second.state, second.owner) == ("pending", "d1")


def test_started_intent_reports_its_execution(store: StateStore) -> None:
    store.begin_start("p1", B, "d1", 1, 1.0)
    store.finish_start("p1", B, "d1", 1, 2.0, execution_id="exec-1")
    again = store.begin_start("p1", B, "d2", 1, 3.0)
    assert (again.state, again.execution_id, again.owner) == ("started", "exec-1", "d1")


def test_failed_intent_is_taken_over_by_the_next_delivery(store: StateStore) -> None:
    store.begin_start("p1", B, "d1", 1, 1.0)
    store.finish_start("p1", B, "d1", 1, 2.0, error="ThrottlingException: slow down")
    again = store.begin_start("p1", B, "d2", 1, 3.0)
    assert (again.state, again.owner, again.error) == ("pending", "d2", None)


def test_only_the_owner_can_finish_a_start(store: StateStore) -> None:
    store.begin_start("p1", B, "d1", 1, 1.0)
    store.finish_start("p1", B, "d2", 1, 2.0, execution_id="exec-x")
    assert store.begin_start("p1", B, "d3", 1, 3.0).state == "pending"


def test_a_later_attempt_of_the_same_delivery_takes_over_its_pending_intent(
        store: StateStore) -> None:
    store.begin_start("p1", B, "d1", 1, 1.0)  # attempt 1 died before finishing
    again = store.begin_start("p1", B, "d1", 2, 2.0)
    assert (again.state, again.owner, again.attempt) == ("pending", "d1", 2)
    store.finish_start("p1", B, "d1", 1, 3.0, execution_id="late")  # the dead attempt: refused
    store.finish_start("p1", B, "d1", 2, 4.0, execution_id="exec-2")
    final = store.begin_start("p1", B, "d9", 1, 5.0)
    assert (final.state, final.execution_id) == ("started", "exec-2")


def test_an_earlier_attempt_cannot_take_back_a_pending_intent(store: StateStore) -> None:
    store.begin_start("p1", B, "d1", 3, 1.0)
    again = store.begin_start("p1", B, "d1", 2, 2.0)
    assert again.attempt == 3


def test_another_delivery_does_not_take_over_a_pending_intent(store: StateStore) -> None:
    store.begin_start("p1", B, "d1", 1, 1.0)
    other = store.begin_start("p1", B, "d2", 5, 2.0)
    assert (other.owner, other.attempt) == ("d1", 1)


def test_concurrent_begin_start_has_exactly_one_owner(store: StateStore) -> None:
    owners: list[str] = []
    lock = threading.Lock()

    def begin(i: int) -> None:
        record = store.begin_start("p1", C, f"d{i}", 1, float(i))
        with lock:
            owners.append(record.owner)

    threads = [threading.Thread(target=begin, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(owners)) == 1


def decision(delivery_id: str, head: str, at: float, verdicts: dict[str, str],
             ref: str = "main", attempt: int = 1) -> DecisionRecord:
    return DecisionRecord(
        delivery_id=delivery_id, provider="github", repository="acme/mono",
        ref_type="branch", ref=ref, before=A, head=head, recorded_at=at, attempt=attempt,
        pipelines=tuple(
            PipelineDecision(pipeline=name, verdict=verdict, baseline=A, diff="compare",
                             complete=True, matched=(("svc/x.py", "svc/**"),), matched_count=1,
                             execution_id="e" if verdict == "started" else None)
            for name, verdict in sorted(verdicts.items())),
    )


def test_decision_records_answer_by_delivery_commit_and_pipeline(store: StateStore) -> None:
    first = decision("d1", B, 10.0, {"p1": "started", "p2": "unchanged"})
    second = decision("d2", C, 20.0, {"p1": "unchanged", "p2": "failed"})
    store.record_decision(first)
    store.record_decision(second)
    assert store.history(delivery_id="d1") == [first]
    assert store.history(commit=C) == [second]
    # by pipeline: only the records where it was active, narrowed to its own entry
    assert store.history(pipeline="p1") == [first.only("p1")]
    assert store.history(pipeline="p2") == [second.only("p2")]
    assert [p.pipeline for p in store.history(pipeline="p2")[0].pipelines] == ["p2"]
    assert store.history(delivery_id="nope") == []


def test_a_decision_record_round_trips_every_field(store: StateStore) -> None:
    record = DecisionRecord(
        delivery_id="d-ü", provider="gitlab", repository="group/sub/mono", ref_type="tag",
        ref="v1.2-ünïcode", before=None, head=C, recorded_at=1234.5678, attempt=3,
        pipelines=(
            PipelineDecision("p1", "failed", None, "new-branch", False, reason="why: ✓",
                             matched=(("a/ü.py", "a/**"), ("b/c.py", "**/*.py")),
                             matched_count=57, error="ThrottlingException: slow down"),
            PipelineDecision("p2", "started", B, "tag", True, execution_id="exec-2"),
            PipelineDecision("p3", "contained", B, "identical", True),
        ))
    store.record_decision(record)
    assert store.history(delivery_id="d-ü") == [record]
    assert store.history(commit=C) == [record]
    assert store.history(pipeline="p1") == [record.only("p1")]
    assert store.history(pipeline="p3") == []  # contained: not an active verdict


def test_history_is_newest_first_and_limited(store: StateStore) -> None:
    for i in range(5):
        store.record_decision(decision(f"d{i}", B, float(i), {"p1": "started"}))
    assert [r.delivery_id for r in store.history(commit=B, limit=3)] == ["d4", "d3", "d2"]
    assert [r.delivery_id for r in store.history(pipeline="p1", limit=2)] == ["d4", "d3"]


def test_a_retried_delivery_replaces_its_decision_record(store: StateStore) -> None:
    store.record_decision(decision("d1", B, 10.0, {"p1": "retry"}))
    retried = decision("d1", B, 30.0, {"p1": "started"}, attempt=2)
    store.record_decision(retried)
    assert store.history(delivery_id="d1") == [retried]
    assert store.history(commit=B) == [retried]
    assert store.history(pipeline="p1") == [retried]


def test_each_ref_of_a_multi_ref_delivery_has_its_record(store: StateStore) -> None:
    main = decision("d1", B, 10.0, {"p1": "started"})
    dev = decision("d1", C, 10.0, {"p1": "started"}, ref="dev")
    store.record_decision(main)
    store.record_decision(dev)
    assert sorted(r.ref for r in store.history(delivery_id="d1")) == ["dev", "main"]
    assert {r.push_key for r in store.history(pipeline="p1")} == {"branch:dev", "branch:main"}


def test_recent_decisions_list_one_repository_newest_first_and_limited(
        store: StateStore) -> None:
    for i in range(5):
        store.record_decision(decision(f"d{i}", B, float(i), {"p1": "unchanged"}))
    other = dataclasses.replace(decision("x1", B, 9.0, {"p1": "started"}), repository="acme/other")
    store.record_decision(other)
    assert [r.delivery_id for r in store.recent_decisions("github:acme/mono", limit=3)] == \
        ["d4", "d3", "d2"]
    assert store.recent_decisions("github:acme/other") == [other]
    # the whole record, unchanged verdicts included (history by pipeline has active ones only)
    assert store.recent_decisions("github:acme/mono", limit=1) == \
        [decision("d4", B, 4.0, {"p1": "unchanged"})]


@pytest.mark.parametrize(("repository", "branch", "found"), [
    ("github:acme/mono", "main", ["d3", "d1"]),
    ("github:acme/mono", "dev", ["d2"]),
    ("github:acme/mono", "v1", []),  # a tag of that name is no branch push
    ("github:acme/mono", None, ["d4", "d3", "d2", "d1"]),
    ("gitlab:acme/mono", None, []),  # the same name at another provider
    ("github:acme/mon", None, []),
])
def test_recent_decisions_select_by_repository_key_and_branch(
        store: StateStore, repository: str, branch: str | None, found: list[str]) -> None:
    store.record_decision(decision("d1", B, 1.0, {"p1": "started"}))
    store.record_decision(decision("d2", B, 2.0, {"p1": "started"}, ref="dev"))
    store.record_decision(decision("d3", C, 3.0, {"p1": "unchanged"}))
    store.record_decision(dataclasses.replace(decision("d4", C, 4.0, {"p1": "started"}, ref="v1"),
                                              ref_type="tag"))
    assert [r.delivery_id for r in store.recent_decisions(repository, branch=branch)] == found


def test_a_retried_delivery_is_listed_once_with_its_new_record(store: StateStore) -> None:
    store.record_decision(decision("d1", B, 10.0, {"p1": "retry"}))
    retried = decision("d1", B, 30.0, {"p1": "started"}, attempt=2)
    store.record_decision(retried)
    assert store.recent_decisions("github:acme/mono") == [retried]
    assert store.recent_decisions("github:acme/mono", branch="main") == [retried]


# a decision record as the version before DecisionRecord stored it: a plain dict
PREVIOUS_RECORD: dict[str, Any] = {
    "delivery_id": "old-1", "provider": "github", "repository": "acme/mono",
    "ref_type": "branch", "ref": "main", "before": A, "head": B, "recorded_at": 10.0,
    "attempt": 1,
    "pipelines": [
        {"pipeline": "p1", "verdict": "started", "baseline": A, "diff": "compare",
         "complete": True, "reason": None, "matched": [["svc/x.py", "svc/**"]],
         "matched_count": 1, "execution_id": "exec-1", "error": None},
        {"pipeline": "p2", "verdict": "unchanged", "baseline": A, "diff": "compare",
         "complete": True, "reason": None, "matched": [], "matched_count": 0,
         "execution_id": None, "error": None},
    ],
}


def _store_as_the_previous_version(store: StateStore, record: dict[str, Any]) -> None:
    """Write ``record`` the way the previous version of ``store``'s backend did."""
    ref_key = f"{record['ref_type']}:{record['ref']}"
    active = [p for p in record["pipelines"] if p["verdict"] in ACTIVE_VERDICTS]
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute("INSERT INTO decisions (delivery_id, ref_key, head, recorded_at, body)"
                         " VALUES (?, ?, ?, ?, ?)", (
                record["delivery_id"], ref_key, record["head"], record["recorded_at"],
                json.dumps(record, separators=(",", ":"))))
            conn.executemany("INSERT INTO decision_pipelines VALUES (?, ?, ?, ?)", [
                (p["pipeline"], record["delivery_id"], ref_key, record["recorded_at"])
                for p in active])
        return
    assert isinstance(store, DynamoDBStore)
    sk = f"{record['recorded_at']:020.6f}#{record['delivery_id']}#{ref_key}"
    bodies = [(f"HISTORY#DELIVERY#{record['delivery_id']}", record),
              (f"HISTORY#COMMIT#{record['head']}", record)]
    bodies += [(f"HISTORY#PIPELINE#{p['pipeline']}", {**record, "pipelines": [p]})
               for p in active]
    for pk, body in bodies:
        store._db().put_item(TableName=store.table, Item={
            "pk": {"S": pk}, "sk": {"S": sk},
            "body": {"B": zlib.compress(json.dumps(body, separators=(",", ":")).encode())}})


def test_records_stored_by_the_previous_version_are_read_and_replaced(
        store: StateStore) -> None:
    _store_as_the_previous_version(store, PREVIOUS_RECORD)
    old = DecisionRecord.from_dict(PREVIOUS_RECORD)
    assert old.pipelines[0].matched == (("svc/x.py", "svc/**"),)
    assert store.history(delivery_id="old-1") == [old]
    assert store.history(commit=B) == [old]
    assert store.history(pipeline="p1") == [old.only("p1")]
    retried = decision("old-1", B, 20.0, {"p1": "unchanged", "p2": "started"}, attempt=2)
    store.record_decision(retried)
    assert store.history(delivery_id="old-1") == [retried]
    assert store.history(commit=B) == [retried]
    assert store.history(pipeline="p1") == []
    assert store.history(pipeline="p2") == [retried.only("p2")]


def test_a_stored_record_with_keys_added_later_or_missing_still_reads() -> None:
    later = {**PREVIOUS_RECORD, "trigger": "reconcile", "pipelines": [
        {**PREVIOUS_RECORD["pipelines"][0], "via": "libs-common"}]}
    assert DecisionRecord.from_dict(later) == DecisionRecord.from_dict(
        {**PREVIOUS_RECORD, "pipelines": PREVIOUS_RECORD["pipelines"][:1]})
    sparse = DecisionRecord.from_json(json.dumps({
        "delivery_id": "d", "ref_type": "branch", "ref": "main",
        "pipelines": [{"pipeline": "p", "verdict": "started"}]}))
    assert (sparse.head, sparse.attempt, sparse.push_key) == (None, 1, "branch:main")
    assert sparse.pipelines == (PipelineDecision("p", "started", None, "", True),)
    assert DecisionRecord.from_json(sparse.to_json()) == sparse


def test_extending_a_lease_keeps_others_out_until_the_new_expiry(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    claimed = store.claim_delivery("w1", 60, 10.0)
    assert claimed is not None
    assert store.extend_lease(claimed, "w1", 200.0) is True
    assert store.claim_delivery("w2", 60, 150.0) is None
    assert store.claim_delivery("w2", 60, 201.0) is not None


def test_a_lost_lease_cannot_be_extended(store: StateStore) -> None:
    store.record_delivery(delivery(), 1.0)
    claimed = store.claim_delivery("w1", 60, 10.0)
    assert claimed is not None
    assert store.claim_delivery("w2", 60, 100.0) is not None  # w1's lease lapsed
    assert store.extend_lease(claimed, "w1", 500.0) is False


def test_many_held_deliveries_do_not_starve_a_newer_pending_one(store: StateStore) -> None:
    for i in range(30):  # more than one page of claim candidates, all held
        store.record_delivery(delivery(f"held-{i:02d}", branch=f"b{i}"), float(i))
        assert store.claim_delivery(f"w{i}", 600, 100.0) is not None
    store.record_delivery(delivery("newest", branch="other"), 50.0)
    got = store.claim_delivery("w-new", 600, 101.0)
    assert got is not None and got.delivery_id == "newest"


def test_one_refs_deliveries_are_claimed_one_at_a_time_oldest_first(store: StateStore) -> None:
    store.record_delivery(delivery("second"), 2.0)
    store.record_delivery(delivery("first"), 1.0)
    first = store.claim_delivery("w1", 60, 10.0)
    assert first is not None and first.delivery_id == "first"
    assert store.claim_delivery("w2", 60, 11.0) is None  # same branch: it waits its turn
    store.finish_delivery(first, "w1", "processed", 12.0)
    second = store.claim_delivery("w2", 60, 13.0)
    assert second is not None and second.delivery_id == "second"


def test_another_ref_is_claimed_while_one_is_busy(store: StateStore) -> None:
    store.record_delivery(delivery("main-1"), 1.0)
    store.record_delivery(delivery("main-2"), 2.0)
    store.record_delivery(delivery("dev-1", branch="dev"), 3.0)
    assert store.claim_delivery("w1", 60, 10.0) is not None
    other = store.claim_delivery("w2", 60, 11.0)
    assert other is not None and other.delivery_id == "dev-1"


def test_a_dead_owners_ref_is_free_once_its_lease_expires(store: StateStore) -> None:
    store.record_delivery(delivery("d1"), 1.0)
    store.record_delivery(delivery("d2"), 2.0)
    assert store.claim_delivery("dead", 60, 10.0) is not None
    assert store.claim_delivery("w2", 60, 69.0) is None
    again = store.claim_delivery("w2", 60, 71.0)
    assert again is not None and (again.delivery_id, again.attempts) == ("d1", 2)


def test_every_claim_counts_an_attempt_also_when_its_owner_died(store: StateStore) -> None:
    store.record_delivery(delivery("d1"), 1.0)
    claims = [store.claim_delivery(f"died-{n}", 60, 10.0 + 100 * n) for n in range(4)]
    # nobody released or finished it: each claim came after the lease before it lapsed
    assert [c.attempts if c else None for c in claims] == [1, 2, 3, 4]


def test_a_delivery_finished_failed_after_dead_owners_frees_its_ref_for_good(
        store: StateStore) -> None:
    store.record_delivery(delivery("poison"), 1.0)
    store.record_delivery(delivery("next"), 2.0)
    for n in range(3):  # three owners die holding it
        held = store.claim_delivery(f"died-{n}", 60, 10.0 + 100 * n)
        assert held is not None and held.delivery_id == "poison"
    assert store.claim_delivery("w", 60, 250.0) is None  # the last one's lease still holds
    found = store.claim_delivery("w", 60, 400.0)
    assert found is not None and (found.delivery_id, found.attempts) == ("poison", 4)
    store.finish_delivery(found, "w", "failed", 401.0)
    nxt = store.claim_delivery("w2", 60, 402.0)  # the ref is free at once
    assert nxt is not None and (nxt.delivery_id, nxt.attempts) == ("next", 1)
    store.finish_delivery(nxt, "w2", "processed", 403.0)
    assert store.claim_delivery("w3", 60, 10_000.0) is None  # and the failed one never again


def test_a_failed_pushs_record_keeps_why(store: StateStore) -> None:
    record = decision("d1", B, 10.0, {"p1": "retry"})
    failed = dataclasses.replace(record, recorded_at=20.0, attempt=6,
                                 failure="delivery failed after 6 attempts: killed")
    store.record_decision(record)
    store.record_decision(failed)
    assert store.history(delivery_id="d1") == [failed]
    assert store.history(commit=B) == [failed]
    assert store.history(pipeline="p1") == [failed]


def test_a_released_delivery_frees_its_ref_for_the_next(store: StateStore) -> None:
    store.record_delivery(delivery("d1"), 1.0)
    store.record_delivery(delivery("d2"), 2.0)
    held = store.claim_delivery("w1", 60, 10.0)
    assert held is not None
    store.release_delivery(held, "w1", 100.0)  # d1 retries later; d2 need not wait for it
    nxt = store.claim_delivery("w2", 60, 11.0)
    assert nxt is not None and nxt.delivery_id == "d2"


# --- execution outcomes, leases, status writes -------------------------------------------


def execution(execution_id: str = "x1", started_at: float = 5.0, **changes: Any) -> Any:
    from receiver.state.base import Execution

    fields = {"pipeline": "p", "execution_id": execution_id, "repository": "github:acme/mono",
              "branch": "main", "commit": B, "started_at": started_at, "updated_at": started_at}
    return Execution(**{**fields, **changes})


def test_execution_is_recorded_once_and_read_back(store: StateStore) -> None:
    store.record_execution(execution())
    store.record_execution(execution(commit=C))  # a retried delivery records it again
    assert store.execution("p", "x1") == execution()
    assert store.execution("p", "unknown") is None
    assert store.execution("other", "x1") is None


def test_execution_update_is_compare_and_set_on_status_and_attempt(store: StateStore) -> None:
    first = execution()
    store.record_execution(first)
    failed = execution(status="Failed", updated_at=9.0)
    assert store.update_execution(first, failed) is True
    assert store.update_execution(first, execution(status="Succeeded")) is False  # stale
    assert store.execution("p", "x1") == failed
    retried = execution(status="InProgress", attempt=2, updated_at=10.0)
    assert store.update_execution(failed, retried) is True
    assert store.execution("p", "x1") == retried


def test_open_executions_are_the_unfinished_ones_started_before_a_time(
        store: StateStore) -> None:
    store.record_execution(execution("old", started_at=1.0))
    store.record_execution(execution("new", started_at=50.0))
    store.record_execution(execution("done", started_at=2.0))
    store.update_execution(execution("done", started_at=2.0),
                           execution("done", started_at=2.0, status="Succeeded"))
    store.settle_execution(execution("done", started_at=2.0, status="Succeeded"))
    assert [x.execution_id for x in store.open_executions(started_before=10.0)] == ["old"]
    assert [x.execution_id for x in store.open_executions(started_before=100.0)] == [
        "old", "new"]


def test_a_console_retried_execution_is_open_again_until_its_new_attempt_ends(
        store: StateStore) -> None:
    started = execution(started_at=1.0)
    store.record_execution(started)
    failed = execution(started_at=1.0, status="Failed", updated_at=5.0)
    assert store.update_execution(started, failed) is True
    store.settle_execution(failed)
    assert store.open_executions(started_before=100.0) == []
    # retried from the console: same id, the next attempt, running again
    retried = execution(started_at=1.0, attempt=2, updated_at=6.0)
    assert store.update_execution(failed, retried) is True
    assert store.open_executions(started_before=100.0) == [
        dataclasses.replace(retried, settled="Failed")]
    succeeded = execution(started_at=1.0, attempt=2, status="Succeeded", updated_at=7.0)
    assert store.update_execution(retried, succeeded) is True
    store.settle_execution(succeeded)
    assert store.open_executions(started_before=100.0) == []


def test_an_ended_execution_stays_open_until_its_follow_ups_are_settled(
        store: StateStore) -> None:
    started = execution(started_at=1.0)
    store.record_execution(started)
    assert store.settle_execution(started) is True  # its start's follow-ups are applied
    assert store.open_executions(started_before=100.0) == [
        execution(started_at=1.0, settled="InProgress")]
    failed = execution(started_at=1.0, status="Failed", updated_at=5.0, settled="InProgress")
    store.update_execution(store.open_executions(100.0)[0], failed)
    assert store.open_executions(started_before=100.0) == [failed]  # not settled yet
    assert store.settle_execution(execution(started_at=1.0, status="Succeeded")) is False
    assert store.settle_execution(failed) is True
    assert store.open_executions(started_before=100.0) == []
    assert store.execution("p", "x1") == execution(started_at=1.0, status="Failed",
                                                   updated_at=5.0, settled="Failed")


def test_baselines_in_flight_are_those_whose_last_outcome_is_not_applied(
        store: StateStore) -> None:
    import dataclasses

    repo = "github:acme/mono"
    store.advance_baseline(Baseline(repo, "main", "p1"), A, 1.0, execution_id="x1")
    store.advance_baseline(Baseline(repo, "main", "p2"), A, 2.0)  # unchanged: no start
    store.advance_baseline(Baseline(repo, "dev", "p1"), B, 3.0, execution_id="x2")
    assert [(b.branch, b.pipeline) for b in store.in_flight_baselines()] == [
        ("main", "p1"), ("dev", "p1")]
    row = store.baselines(repo, "main")["p1"]
    store.replace_baseline(row, dataclasses.replace(row, last_execution_status="Failed",
                                                    updated_at=4.0))
    assert [(b.branch, b.pipeline) for b in store.in_flight_baselines()] == [("dev", "p1")]


def test_replace_baseline_writes_every_field_under_compare_and_set(store: StateStore) -> None:
    store.advance_baseline(Baseline("github:acme/mono", "main", "p"), B, 1.0, execution_id="x1")
    current = store.baselines("github:acme/mono", "main")["p"]
    assert (current.last_execution_status, current.deployed_commit) == ("InProgress", None)
    import dataclasses

    updated = dataclasses.replace(current, commit=A, deployed_commit=A, deployed_started_at=3.5,
                                  last_execution_status="Failed", updated_at=4.0)
    assert store.replace_baseline(current, updated) is True
    assert store.replace_baseline(current, updated) is False  # the version moved on
    got = store.baselines("github:acme/mono", "main")["p"]
    assert got == dataclasses.replace(updated, version=current.version + 1)
    assert next(iter(store.all_baselines())) == got


def test_a_lease_is_held_by_one_owner_until_it_expires(store: StateStore) -> None:
    assert store.acquire_lease("poll", "w1", until=100.0, now=1.0) is True
    assert store.acquire_lease("poll", "w2", until=101.0, now=2.0) is False
    assert store.acquire_lease("poll", "w1", until=150.0, now=3.0) is True  # renewed
    assert store.acquire_lease("poll", "w2", until=200.0, now=149.0) is False
    assert store.acquire_lease("poll", "w2", until=300.0, now=150.0) is True  # expired
    assert store.acquire_lease("other", "w1", until=100.0, now=150.0) is True


def task(key: str = "k1", due_at: float = 1.0, **changes: Any) -> Task:
    fields: dict[str, Any] = {"key": key, "kind": "status", "target": "github:acme/mono",
                              "payload": '{"x": 1}', "due_at": due_at, "created_at": 0.5}
    return Task(**{**fields, **changes})


def test_a_task_is_kept_once_per_key(store: StateStore) -> None:
    assert store.enqueue_task(task()) is True
    assert store.enqueue_task(task(payload="{}")) is False  # the same effect: one task
    assert store.enqueue_task(task("k2")) is True
    assert store.claim_tasks("w1", 10.0, 60, 10) == [task(), task("k2")]


def test_only_due_tasks_are_claimed_oldest_due_first(store: StateStore) -> None:
    store.enqueue_task(task("later", due_at=50.0))
    store.enqueue_task(task("soon", due_at=2.0))
    store.enqueue_task(task("first", due_at=1.0))
    assert [t.key for t in store.claim_tasks("w1", 10.0, 60, 10)] == ["first", "soon"]
    assert [t.key for t in store.claim_tasks("w1", 60.0, 60, 10)] == ["later"]


def test_a_claimed_task_is_not_claimed_again_until_its_lease_expires(store: StateStore) -> None:
    store.enqueue_task(task())
    assert [t.key for t in store.claim_tasks("w1", 10.0, 60, 10)] == ["k1"]
    assert store.claim_tasks("w2", 20.0, 60, 10) == []
    assert [t.key for t in store.claim_tasks("w2", 71.0, 60, 10)] == ["k1"]  # w1 died


def test_a_retried_task_comes_due_again_counting_the_failed_try(store: StateStore) -> None:
    store.enqueue_task(task())
    (claimed,) = store.claim_tasks("w1", 10.0, 60, 10)
    store.retry_task(claimed, "w1", 30.0, "HTTP 502")
    assert store.claim_tasks("w1", 20.0, 60, 10) == []
    (again,) = store.claim_tasks("w2", 30.0, 60, 10)
    assert (again.attempts, again.error, again.due_at) == (1, "HTTP 502", 30.0)
    store.retry_task(again, "w2", 40.0, None, failed=False)  # paced: not a failed try
    (paced,) = store.claim_tasks("w2", 40.0, 60, 10)
    assert (paced.attempts, paced.error) == (1, "HTTP 502")


def test_a_task_is_pending_from_its_enqueue_until_it_is_finished(store: StateStore) -> None:
    assert store.task_pending("k1") is False  # never enqueued
    store.enqueue_task(task())
    assert store.task_pending("k1") is True
    (claimed,) = store.claim_tasks("w1", 10.0, 60, 10)
    assert store.task_pending("k1") is True  # claimed, not sent yet
    store.finish_task(claimed, "w1", "failed", 11.0, "HTTP 404")
    assert store.task_pending("k1") is False
    store.enqueue_task(task("k2"))
    (done,) = store.claim_tasks("w1", 12.0, 60, 10)
    store.finish_task(done, "w1", "done", 13.0)
    assert store.task_pending("k2") is False


def test_a_finished_task_is_never_claimed_nor_enqueued_again(store: StateStore) -> None:
    store.enqueue_task(task())
    store.enqueue_task(task("k2"))
    done, failed = store.claim_tasks("w1", 10.0, 60, 10)
    store.finish_task(done, "w1", "done", 11.0)
    store.finish_task(failed, "w1", "failed", 11.0, "HTTP 401")
    assert store.claim_tasks("w1", 1000.0, 60, 10) == []
    assert store.enqueue_task(task()) is False


def test_only_the_task_holder_can_give_it_back_or_finish_it(store: StateStore) -> None:
    store.enqueue_task(task())
    (claimed,) = store.claim_tasks("w1", 10.0, 60, 10)
    store.finish_task(claimed, "w2", "done", 11.0)
    store.retry_task(claimed, "w2", 11.0, "x")
    assert store.claim_tasks("w3", 20.0, 60, 10) == []  # still w1's
    store.finish_task(claimed, "w1", "done", 21.0)
    assert store.claim_tasks("w3", 1000.0, 60, 10) == []


def test_the_backlog_counts_pending_deliveries_and_tasks_and_their_oldest(
        store: StateStore) -> None:
    assert store.backlog(5.0) == Backlog(0, None, 0, None)
    store.record_delivery(delivery("d1"), 2.0)
    store.record_delivery(delivery("d2", branch="dev"), 3.0)
    store.enqueue_task(task("k1", due_at=4.0))
    store.enqueue_task(task("k2", due_at=6.0))
    assert store.backlog(7.0) == Backlog(2, 2.0, 2, 4.0)
    claimed = store.claim_delivery("w1", 60, 8.0)
    assert claimed is not None
    store.finish_delivery(claimed, "w1", "processed", 9.0)
    assert store.backlog(9.0).deliveries == 1


def test_holdings_list_leases_refs_in_process_and_starts_in_flight(store: StateStore) -> None:
    store.acquire_lease("reconcile", "w1", until=100.0, now=1.0)
    store.acquire_lease("expired", "w1", until=2.0, now=1.0)
    store.record_delivery(delivery("d1"), 2.0)
    assert store.claim_delivery("w2", 60, 5.0) is not None
    store.begin_start("p1", B, "d1", 1, 6.0)
    store.begin_start("p2", B, "d1", 1, 6.0)
    store.finish_start("p2", B, "d1", 1, 7.0, execution_id="x")
    found = store.holdings(10.0)
    assert [(h.kind, h.owner, h.until) for h in found] == [
        ("lease", "w1", 100.0), ("ref", "w2", 65.0), ("start", "d1", None)]
    assert found[0].name == "reconcile" and found[2].name == f"p1@{B}"


def test_a_released_lease_is_free_at_once(store: StateStore) -> None:
    assert store.acquire_lease("poll", "w1", until=100.0, now=1.0) is True
    store.release_lease("poll", "w2")  # not its lease: nothing happens
    assert store.acquire_lease("poll", "w2", until=100.0, now=2.0) is False
    store.release_lease("poll", "w1")
    assert store.acquire_lease("poll", "w2", until=100.0, now=3.0) is True


def test_heads_are_noted_per_branch_replaced_and_forgotten(store: StateStore) -> None:
    from receiver.state.base import Head

    assert store.heads("github:acme/mono") == {}
    store.note_head("github:acme/mono", "main", A, '"etag-a"', 10.0)
    store.note_head("github:acme/mono", "release/1.x", B, None, 11.0)
    store.note_head("github:acme/other", "main", C, None, 12.0)
    assert store.heads("github:acme/mono") == {"main": Head(A, '"etag-a"', 10.0),
                                               "release/1.x": Head(B, None, 11.0)}
    # a later note replaces sha and etag together (an ETag belongs to one head)
    store.note_head("github:acme/mono", "main", C, None, 20.0)
    assert store.heads("github:acme/mono")["main"] == Head(C, None, 20.0)
    store.note_head("github:acme/mono", "release/1.x", None, None, 21.0)
    store.note_head("github:acme/mono", "gone-already", None, None, 21.0)  # harmless
    assert store.heads("github:acme/mono") == {"main": Head(C, None, 20.0)}
    assert store.heads("github:acme/other") == {"main": Head(C, None, 12.0)}


# --- pull request validations ---------------------------------------------------------------


def validation(number: int = 7, head: str = B, repository: str = "github:acme/mono",
               **changes: Any) -> Validation:
    fields: dict[str, Any] = {
        "repository": repository, "number": number, "head": head, "source_branch": "feat/x",
        "target_branch": "main", "state": "validating", "merge_base": A,
        "runs": (ValidationRun("api-validate", "api-deploy", "x1"),
                 ValidationRun("web-validate", "web-deploy", None, "ThrottlingException")),
        "delivery_id": "d1", "updated_at": 10.0}
    return Validation(**{**fields, **changes})


def test_a_validation_round_trips_every_field(store: StateStore) -> None:
    assert store.validation("github:acme/mono", 7) is None
    assert store.save_validation(validation(fork=True, draft=True, summary="pending",
                                            generation=3)) is True
    assert store.validation("github:acme/mono", 7) == validation(
        fork=True, draft=True, summary="pending", generation=3, version=1)
    assert store.validation("github:acme/mono", 8) is None
    assert store.validation("github:acme/other", 7) is None


def test_a_validation_is_written_by_compare_and_set(store: StateStore) -> None:
    assert store.save_validation(validation()) is True
    assert store.save_validation(validation()) is False  # version 0: one exists already
    stored = store.validation("github:acme/mono", 7)
    assert stored is not None
    assert store.save_validation(dataclasses.replace(stored, head=C, updated_at=11.0)) is True
    assert store.save_validation(dataclasses.replace(stored, summary="success")) is False
    now = store.validation("github:acme/mono", 7)
    assert now is not None and (now.head, now.version, now.summary) == (C, 2, None)


def test_validations_are_listed_newest_first_per_repository_and_limited(
        store: StateStore) -> None:
    for number, when, repo in [(1, 10.0, "github:acme/mono"), (2, 30.0, "github:acme/mono"),
                               (3, 20.0, "gitlab:acme/mono")]:
        store.save_validation(validation(number, repository=repo, updated_at=when))
    assert [v.number for v in store.validations()] == [2, 3, 1]
    assert [v.number for v in store.validations(limit=2)] == [2, 3]
    assert [v.number for v in store.validations(repository="github:acme/mono")] == [2, 1]
    assert store.validations(repository="bitbucket:nobody/none") == []


def test_a_pull_requests_records_are_found_by_its_repository_and_number(
        store: StateStore) -> None:
    def record(delivery: str, repository: str, number: int, at: float) -> DecisionRecord:
        return DecisionRecord(delivery, "github", repository, "pull_request", str(number), A,
                              B, at, 1, (PipelineDecision("api-validate", "started", A,
                                                          "compare", True),))

    store.record_decision(record("d1", "acme/mono", 7, 1.0))
    store.record_decision(record("d2", "acme/mono", 7, 2.0))
    store.record_decision(record("d3", "acme/mono", 8, 3.0))
    store.record_decision(record("d4", "acme/other", 7, 4.0))
    found = store.history(pull_request=("github:acme/mono", 7))
    assert [r.delivery_id for r in found] == ["d2", "d1"]
    assert store.history(pull_request=("github:acme/mono", 9)) == []
    # a push's record is never a pull request's
    store.record_decision(DecisionRecord("d5", "github", "acme/mono", "branch", "7", A, B,
                                         5.0, 1, ()))
    assert [r.delivery_id for r in store.history(pull_request=("github:acme/mono", 7))] == \
        ["d2", "d1"]


def test_a_validation_execution_names_its_pull_request(store: StateStore) -> None:
    store.record_execution(execution(pull_request=7))
    store.record_execution(execution("x2"))
    found = store.execution("p", "x1")
    assert found is not None and found.pull_request == 7
    other = store.execution("p", "x2")
    assert other is not None and other.pull_request is None


def test_a_pull_request_delivery_round_trips_through_a_claim(store: StateStore) -> None:
    event = PullRequestEvent("github", "acme/mono", 7, "opened", "feat/x", "main", B, A,
                             "refs/pull/7/head", fork=True)
    store.record_delivery(Delivery("pr-1", "github", "acme/mono", (), pull_request=event),
                          1.0)
    got = store.claim_delivery("w1", 60, 10.0)
    assert got is not None and got.pull_request == event and got.events == ()

"""DynamoDB specifics beyond the shared contract: table creation, TTL, unavailability,
keys within DynamoDB's limits whatever a ref's length, and BatchWriteItem's leftovers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import ANY, Stubber

from receiver.config import StateConfig
from receiver.errors import StateError
from receiver.events import Delivery, PushEvent
from receiver.state import dynamodb
from receiver.state.base import Baseline, DecisionRecord, Head, PipelineDecision
from receiver.state.dynamodb import DELIVERY_TTL_SECONDS, DynamoDBStore, table_definition
from tests.harness import MotoServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def make_store(url: str) -> DynamoDBStore:
    return DynamoDBStore(StateConfig(backend="dynamodb", table=f"t-{uuid.uuid4().hex[:12]}",
                                     region="us-east-1", endpoint_url=url))


def test_state_init_creates_the_table_with_its_index_and_ttl(moto_server: MotoServer) -> None:
    store = make_store(moto_server.url)
    store.init()
    store.init()  # safe to run again
    db = boto3.client("dynamodb", endpoint_url=moto_server.url, region_name="us-east-1")
    table = db.describe_table(TableName=store.table)["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["gsi1"]
    ttl = db.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_recorded_delivery_expires_by_ttl(moto_server: MotoServer) -> None:
    store = make_store(moto_server.url)
    store.init()
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)
    store.record_delivery(Delivery("d1", "github", "acme/mono", (event,)), 1000.0)
    db = boto3.client("dynamodb", endpoint_url=moto_server.url, region_name="us-east-1")
    item = db.get_item(TableName=store.table,
                       Key={"pk": {"S": "DELIVERY#github#d1"}, "sk": {"S": "DELIVERY"}})["Item"]
    assert int(item["expires_at"]["N"]) == 1000 + DELIVERY_TTL_SECONDS
    assert item["gsi1pk"] == {"S": "PENDING"}


def test_unreachable_dynamodb_raises_state_error_not_a_botocore_error() -> None:
    store = make_store(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(StateError, match=f"dynamodb get_item on table {store.table}: "
                                          "EndpointConnectionError"):
        store.ping()
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)
    with pytest.raises(StateError):
        store.record_delivery(Delivery("d1", "github", "acme/mono", (event,)), 1.0)


def test_a_missing_table_is_named_and_state_init_suggested(moto_server: MotoServer) -> None:
    store = make_store(moto_server.url)
    with pytest.raises(StateError) as raised:
        store.ping()
    assert str(raised.value) == (
        f"dynamodb get_item on table {store.table}: ResourceNotFoundException;"
        " create it with `webhook-receiver state init`")


def test_cloudformation_snippet_matches_what_state_init_creates() -> None:
    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
        return None  # !Ref / !GetAtt values do not matter here

    Loader.add_multi_constructor("!", tag)
    doc = yaml.load((ROOT / "config/dynamodb-table.yaml").read_text(), Loader=Loader)
    props = doc["Resources"]["StateTable"]["Properties"]
    want = table_definition("x")
    for key in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes"):
        assert props[key] == want[key], key
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


# --- keys within DynamoDB's limits, whatever a ref's length ------------------------------

KEY_LIMITS = {"pk": 2048, "sk": 1024, "gsi1pk": 2048, "gsi1sk": 1024}  # bytes of UTF-8
A, B = "a" * 40, "b" * 40


def _branch(size: int, char: str) -> str:
    """A branch name of ``size`` bytes of UTF-8 (``char`` repeated, then ASCII to fill)."""
    unit = len(char.encode())
    return char * (size // unit) + "x" * (size % unit)


def _every_key_within_the_limits(store: DynamoDBStore, url: str) -> int:
    db = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    items = [item for page in db.get_paginator("scan").paginate(TableName=store.table)
             for item in page["Items"]]
    for item in items:
        for name, limit in KEY_LIMITS.items():
            if name in item:
                size = len(item[name]["S"].encode())
                assert size <= limit, (name, size, item[name]["S"][:80])
    return len(items)


@pytest.mark.parametrize(("size", "char"), [
    (250, "x"), (960, "x"), (980, "x"), (2000, "x"), (2100, "x"), (5000, "x"),
    (980, "ü"), (2000, "日"), (2100, "日"),  # two and three bytes a character
])
def test_a_ref_of_any_length_is_recorded_claimed_and_remembered(
        moto_server: MotoServer, size: int, char: str) -> None:
    store = make_store(moto_server.url)
    store.init()
    branch = _branch(size, char)
    assert len(branch.encode()) == size
    repo = "github:acme/mono"
    event = PushEvent("github", "acme/mono", "branch", branch, A, B)
    # a reconciler's delivery id carries the branch too (DESIGN.md 'Reconciler')
    pushed = Delivery(f"reconcile:github:acme/mono:{branch}:{B}", "github", "acme/mono",
                      (event,))
    assert store.record_delivery(pushed, 1.0) is True
    assert store.record_delivery(pushed, 2.0) is False
    claimed = store.claim_delivery("w1", 60, 10.0)
    assert claimed is not None and claimed.events == (event,)
    assert claimed.delivery_id == pushed.delivery_id
    assert store.claim_delivery("w2", 60, 11.0) is None  # its ref is locked
    assert store.extend_lease(claimed, "w1", 100.0) is True

    assert store.advance_baseline(Baseline(repo, branch, "p1"), A, 12.0) is True
    current = store.baselines(repo, branch)["p1"]
    assert (current.branch, current.commit) == (branch, A)
    assert store.advance_baseline(current, B, 13.0, execution_id="exec-1") is True
    assert [(b.branch, b.commit) for b in store.all_baselines()] == [(branch, B)]

    record = DecisionRecord(
        claimed.delivery_id, "github", "acme/mono", "branch", branch, A, B, 14.0, 1,
        (PipelineDecision("p1", "started", A, "compare", True, execution_id="exec-1"),))
    store.record_decision(record)
    store.record_decision(record)  # a retry replaces it
    assert store.history(delivery_id=claimed.delivery_id) == [record]
    assert store.history(commit=B) == [record]
    assert store.history(pipeline="p1") == [record]
    assert store.recent_decisions(repo, branch=branch) == [record]
    assert store.recent_decisions(repo) == [record]

    # the reconciler's last known head of the branch (the processor notes it per push)
    store.note_head(repo, branch, B, '"etag"', 15.0)
    assert store.heads(repo) == {branch: Head(B, '"etag"', 15.0)}

    # the delivery, its ref lock, the baseline, the head and the record under five keys
    # (delivery, commit, pipeline, repository, ref)
    assert _every_key_within_the_limits(store, moto_server.url) == 9

    store.release_delivery(claimed, "w1", 20.0)  # frees the ref
    again = store.claim_delivery("w2", 60, 21.0)
    assert again is not None and again.attempts == 2
    store.finish_delivery(again, "w2", "processed", 22.0)
    assert store.claim_delivery("w3", 60, 1000.0) is None
    assert _every_key_within_the_limits(store, moto_server.url) == 8  # the lock is gone
    store.note_head(repo, branch, None, None, 23.0)  # the branch was deleted
    assert store.heads(repo) == {}


def test_pushes_to_a_2100_byte_branch_are_processed_on_dynamodb(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_processor import World

    monkeypatch.setenv("PROC_SECRET", "x")
    branch = "release/" + _branch(2092, "x")
    world = World(tmp_path, store=make_store(moto_server.url), branches=["release/*"])
    c1 = world.git.commit(world.root, {"svc/collections/a.py": "2"})
    world.push(world.root, c1, ref=branch)  # no baseline yet: compared with 'before'
    c2 = world.git.commit(c1, {"svc/utilities/u.py": "2"})
    world.push(c1, c2, ref=branch)
    assert [(r.pipeline, r.branch) for r in world.launcher.started] == [
        ("collections", branch), ("utilities", branch)]
    assert world.baseline("utilities", branch) == c2
    assert world.store.heads("github:acme/mono") == {branch: Head(c2, None, ANY)}
    assert _every_key_within_the_limits(world.store, moto_server.url) > 0  # type: ignore[arg-type]


def test_long_refs_that_share_their_first_kilobytes_stay_apart(moto_server: MotoServer) -> None:
    store = make_store(moto_server.url)
    store.init()
    common = "release/" + "x" * 2100
    for name in ("a", "b"):
        event = PushEvent("github", "acme/mono", "branch", common + name, A, B)
        store.record_delivery(Delivery(f"d-{name}", "github", "acme/mono", (event,)), 1.0)
        store.advance_baseline(Baseline("github:acme/mono", common + name, "p1"),
                               A if name == "a" else B, 2.0)
    # two refs: both are claimable at once, neither's lock holds the other
    first, second = store.claim_delivery("w1", 60, 10.0), store.claim_delivery("w2", 60, 10.0)
    assert first is not None and second is not None
    assert {first.delivery_id, second.delivery_id} == {"d-a", "d-b"}
    assert store.baselines("github:acme/mono", common + "a")["p1"].commit == A
    assert store.baselines("github:acme/mono", common + "b")["p1"].commit == B
    _every_key_within_the_limits(store, moto_server.url)


# --- BatchWriteItem leaves items unprocessed under throttling (moto never does) -----------


def _stubbed(monkeypatch: pytest.MonkeyPatch) -> tuple[DynamoDBStore, Stubber, list[float],
                                                        list[tuple[float, float]]]:
    """A store whose client answers from a botocore Stubber, with its pauses recorded."""
    store = make_store(f"http://127.0.0.1:{free_port()}")  # never reached
    stubber = Stubber(store._db())
    pauses: list[float] = []
    bounds: list[tuple[float, float]] = []
    store.sleep = pauses.append

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    monkeypatch.setattr(dynamodb.random, "uniform", uniform)
    return store, stubber, pauses, bounds


RECORD = DecisionRecord("d1", "github", "acme/mono", "branch", "main", A, B, 10.0, 1,
                        (PipelineDecision("p1", "started", A, "compare", True),))
LEFT_1 = {"PutRequest": {"Item": {"pk": {"S": "left-1"}, "sk": {"S": "x"}}}}
LEFT_2 = {"PutRequest": {"Item": {"pk": {"S": "left-2"}, "sk": {"S": "x"}}}}


def test_unprocessed_batch_items_are_written_again_after_growing_random_pauses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, stubber, pauses, bounds = _stubbed(monkeypatch)
    stubber.add_response("query", {"Items": []})  # no earlier attempt's record to replace
    stubber.add_response("batch_write_item", {"UnprocessedItems": {store.table: [LEFT_1, LEFT_2]}},
                         {"RequestItems": {store.table: ANY}})
    stubber.add_response("batch_write_item", {"UnprocessedItems": {store.table: [LEFT_2]}},
                         {"RequestItems": {store.table: [LEFT_1, LEFT_2]}})
    stubber.add_response("batch_write_item", {"UnprocessedItems": {}},
                         {"RequestItems": {store.table: [LEFT_2]}})
    with stubber:
        store.record_decision(RECORD)
    stubber.assert_no_pending_responses()
    first = dynamodb.BATCH_BACKOFF_SECONDS
    assert bounds == [(0, first), (0, 2 * first)]  # full jitter under a doubling bound
    assert pauses == [first / 2, first]


def test_batch_items_left_unprocessed_every_time_fail_with_a_state_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, stubber, pauses, bounds = _stubbed(monkeypatch)
    stubber.add_response("query", {"Items": []})
    for _ in range(dynamodb.BATCH_ATTEMPTS):
        stubber.add_response("batch_write_item",
                             {"UnprocessedItems": {store.table: [LEFT_1]}})
    with stubber, pytest.raises(StateError) as raised:
        store.record_decision(RECORD)
    stubber.assert_no_pending_responses()
    assert str(raised.value) == (
        f"dynamodb batch_write_item on table {store.table}: 1 items still unprocessed"
        f" after {dynamodb.BATCH_ATTEMPTS} calls")
    assert [high for _, high in bounds] == [
        dynamodb.BATCH_BACKOFF_SECONDS * 2 ** n for n in range(dynamodb.BATCH_ATTEMPTS - 1)]
    assert sum(high for _, high in bounds) < 10  # bounded: a delivery is not held for long
    assert len(pauses) == dynamodb.BATCH_ATTEMPTS - 1

"""DynamoDB specifics beyond the shared contract: table creation, TTL, unavailability."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from receiver.config import StateConfig
from receiver.errors import StateError
from receiver.events import Delivery, PushEvent
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
    with pytest.raises(StateError, match="dynamodb get_item"):
        store.ping()
    event = PushEvent("github", "acme/mono", "branch", "main", "a" * 40, "b" * 40)
    with pytest.raises(StateError):
        store.record_delivery(Delivery("d1", "github", "acme/mono", (event,)), 1.0)


def test_missing_table_fails_the_readiness_ping(moto_server: MotoServer) -> None:
    with pytest.raises(StateError, match="ResourceNotFoundException"):
        make_store(moto_server.url).ping()


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

"""DynamoDB state store: the production backend, shared by every replica and worker.

Single-table design (table name from ``state.table``; keys are strings):

- delivery: pk ``DELIVERY#{provider}#{delivery_id}``, sk ``DELIVERY``; inserted with
  ``attribute_not_exists(pk)``; TTL. While pending it also carries ``gsi1pk = PENDING`` and
  ``gsi1sk = received_at``: the sparse GSI ``gsi1`` lists exactly the unfinished deliveries.
- ref lock: pk ``REFLOCK#{ref_key}``, sk ``LOCK``; held (owner, until) while a delivery of
  that ref is processed, so one ref's deliveries run one at a time, oldest first. The GSI
  sort key carries the ref key (``{received_at}#{ref_key}``) so a claim can take the lock
  before the delivery.
- baseline: pk ``BASELINE#{repository}#{branch}``, sk ``PIPELINE#{pipeline}``; ``version``
  for compare-and-set (one Query reads a whole branch).
- execution: pk ``EXECUTION#{pipeline}#{execution_id}``, sk ``EXECUTION``; while it has no
  final status it also carries ``gsi1pk = OPEN_EXECUTION`` and ``gsi1sk = started_at``, so
  the outcome poll reads exactly the running ones from the same sparse GSI (a console retry
  of a finished execution puts it back); TTL.
- lease: pk ``LEASE#{name}``, sk ``LEASE``; (owner, until), taken by a conditional put.
- head: pk ``HEAD#{repository}``, sk ``BRANCH#{branch}``; the last known head of one
  watched branch (``branch``, ``sha``, ``etag`` when the provider gave one, ``updated_at``), written
  after each processed branch push and by the reconciler; one Query reads a repository's
  heads; no TTL (deleted when the reconciler finds the branch gone).
- status write: pk ``STATUS#{key}``, sk ``STATUS``; created once per commit status; TTL.
- start intent: pk ``START#{pipeline}#{commit}``, sk ``START``; created if absent, finished
  only by its owner; TTL.
- decision ("why") record, ``DecisionRecord.to_json()`` zlib-compressed, written under
  several keys so each question is one Query: pk ``HISTORY#DELIVERY#{delivery_id}``,
  ``HISTORY#COMMIT#{head}``, ``HISTORY#REPOSITORY#{repository_key}`` and
  ``HISTORY#REF#{repository_key}#{push_key}`` (the whole record; the last two since the
  status page, so a record written before is found by delivery, commit and pipeline only),
  and ``HISTORY#PIPELINE#{pipeline}`` (that pipeline's entry, only when it was started,
  failed or in flight); sk ``{recorded_at}#{delivery_id}#{push_key}``; TTL.

Every key is built by one function, ``_key`` (through ``_fit``): one longer than DynamoDB
allows (2,048 bytes for a partition key, 1,024 for a sort key, in the table and its index
alike) keeps its first bytes and ends in a digest of the whole, so a ref name of any length
has a key. The names themselves are ordinary attributes (or inside the record), and every
read builds its key the same way.

- validation: pk ``VALIDATION#{repository}#{number}``, sk ``VALIDATION``; one pull
  request's ``Validation`` (``body``, zlib-compressed JSON) with ``version`` for
  compare-and-set; every one carries ``gsi1pk = VALIDATIONS`` and ``gsi1sk =
  {updated_at}#...``, so the newest are one Query of the sparse GSI; TTL. Its decision
  records are also under ``HISTORY#PULL#{repository}#{number}``.
- module map: pk ``MODULEMAP#{repository}``, sk ``MODULEMAP``; the last valid
  repository-side module map file (``body``, zlib-compressed text) and the ``commit`` it
  was read at; replaced by each newer valid one; no TTL.

``expires_at`` (epoch seconds) is the table's TTL attribute. A delivery is claimed by a
conditional update (pending and lease expired), so exactly one owner holds it at a time;
baselines move only if ``version`` is still the one read; a start intent is created once.
Every botocore failure is translated into StateError here, naming the table.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

from receiver import aws
from receiver.config import StateConfig
from receiver.errors import StateError
from receiver.events import Delivery
from receiver.state.base import (
    ACTIVE_VERDICTS,
    DELIVERY_RETENTION_SECONDS,
    HISTORY_RETENTION_SECONDS,
    START_RETENTION_SECONDS,
    Backlog,
    Baseline,
    DecisionRecord,
    Execution,
    Head,
    Holding,
    StartRecord,
    Task,
    TaskOutcome,
    Validation,
    pull_request_key,
)

DELIVERY_TTL_SECONDS = DELIVERY_RETENTION_SECONDS
START_TTL_SECONDS = START_RETENTION_SECONDS
HISTORY_TTL_SECONDS = HISTORY_RETENTION_SECONDS
GSI = "gsi1"
PENDING = "PENDING"
OPEN_EXECUTION = "OPEN_EXECUTION"
IN_FLIGHT = "IN_FLIGHT_BASELINE"
PENDING_TASK = "PENDING_TASK"
VALIDATIONS = "VALIDATIONS"
VALIDATION_PAGES = 20  # index pages read for one repository's validations
CLAIM_CANDIDATES = 25
CLAIM_PAGES = 20
PK_MAX_BYTES = 2048  # DynamoDB's limit on a partition key, in the table and in an index
SK_MAX_BYTES = 1024  # and on a sort key
BATCH_ATTEMPTS = 8  # BatchWriteItem calls per batch before what is left is a StateError
BATCH_BACKOFF_SECONDS = 0.05  # the first pause's bound, doubled before each later call


def table_definition(name: str) -> dict[str, Any]:
    """The CreateTable request (also rendered in config/dynamodb-table.yaml)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "gsi1pk", "AttributeType": "S"},
            {"AttributeName": "gsi1sk", "AttributeType": "S"},
        ],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                      {"AttributeName": "sk", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [{
            "IndexName": GSI,
            "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"},
                          {"AttributeName": "gsi1sk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }],
    }


def _n(value: float) -> dict[str, str]:
    return {"N": repr(float(value)) if not float(value).is_integer() else str(int(value))}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _get_s(item: dict[str, Any], key: str) -> str | None:
    cell = item.get(key)
    return None if cell is None or "NULL" in cell else str(cell["S"])


def _get_n(item: dict[str, Any], key: str, default: float = 0.0) -> float:
    cell = item.get(key)
    return default if cell is None else float(cell["N"])


def _pack(record: DecisionRecord) -> dict[str, bytes]:
    # compressed: a monorepo with thousands of pipelines must fit DynamoDB's 400 KB items
    return {"B": zlib.compress(record.to_json().encode(), 6)}


def _unpack(cell: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord.from_json(zlib.decompress(cell["B"]))


def _sortable(ts: float) -> str:
    # zero-padded so the GSI's string sort key orders by time
    return f"{ts:020.6f}"


_DIGEST = 65  # bytes _fit appends: "~" and a SHA-256 in hex


def _fit(key: str, limit: int) -> str:
    """``key`` if its UTF-8 is at most ``limit`` bytes; else its first bytes (whole
    characters), ``~`` and the SHA-256 of all of it: at most ``limit`` bytes, the same
    for the same key, and distinct keys stay distinct (``~`` cannot occur in a git ref
    name, so a shortened key does not equal a branch's own). A prefix is kept, so a key
    still begins with its kind (``BASELINE#...``) and a sort key still orders by time."""
    raw = key.encode()
    if len(raw) <= limit:
        return key
    head = raw[:limit - _DIGEST].decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha256(raw).hexdigest()}"


def _key(pk: str, sk: str) -> dict[str, Any]:
    """The one key builder: every item's key (``pk``, ``sk``), each fitted to DynamoDB's
    limit by :func:`_fit`, so a name of any length (a 2,100-byte branch) has a key, and
    every read builds the same key as the write."""
    return {"pk": _s(_fit(pk, PK_MAX_BYTES)), "sk": _s(_fit(sk, SK_MAX_BYTES))}


def _ref_id(ref_key: str) -> str:
    """A delivery's ``ref_key`` as its ref lock and the GSI sort key carry it."""
    return _fit(ref_key, SK_MAX_BYTES - len(_sortable(0)) - 1)


def _ref_lock_key(ref_id: str) -> dict[str, Any]:
    return _key(f"REFLOCK#{ref_id}", "LOCK")


class DynamoDBStore:
    """StateStore over one DynamoDB table (see the module docstring for the key design)."""

    def __init__(self, config: StateConfig) -> None:
        self.config = config
        self.table = config.table
        self._client: Any = None
        self._pid = 0
        self._lock = threading.Lock()
        self.sleep = time.sleep  # between BatchWriteItem retries (a test records the pauses)

    def _db(self) -> Any:
        # one client per process: a client created before gunicorn forks is not reused after
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                from botocore.config import Config

                self._client = aws.client(
                    "dynamodb", region_name=self.config.region,
                    endpoint_url=self.config.endpoint_url,
                    # bounded: a webhook answer must not wait long on a failing table
                    config=Config(retries={"mode": "standard", "total_max_attempts": 3},
                                  connect_timeout=2, read_timeout=5),
                )
                self._pid = os.getpid()
            return self._client

    def _call(self, op: str, **kwargs: Any) -> Any:
        """Call ``op``; ConditionalCheckFailed returns None, every other failure is StateError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._db(), op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                return None
            raise self._error(op, code) from exc
        except BotoCoreError as exc:
            raise self._error(op, type(exc).__name__) from exc

    def _error(self, op: str, what: str) -> StateError:
        # the cause is kept by the callers: botocore's messages carry no credentials, and
        # this table holds no secret
        hint = ("; create it with `webhook-receiver state init`"
                if what == "ResourceNotFoundException" else "")
        return StateError(f"dynamodb {op} on table {self.table}: {what}{hint}")

    # --- lifecycle -----------------------------------------------------------------------

    def init(self) -> None:
        """Create the table with its GSI and TTL setting, if missing. Idempotent."""
        from botocore.exceptions import BotoCoreError, ClientError

        db = self._db()
        try:
            db.create_table(**table_definition(self.table))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise self._error("create_table", str(exc)) from exc
        except BotoCoreError as exc:
            raise self._error("create_table", type(exc).__name__) from exc
        try:
            db.get_waiter("table_exists").wait(TableName=self.table,
                                               WaiterConfig={"Delay": 1, "MaxAttempts": 60})
            ttl = db.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
            if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                db.update_time_to_live(TableName=self.table, TimeToLiveSpecification={
                    "Enabled": True, "AttributeName": "expires_at"})
        except (ClientError, BotoCoreError) as exc:
            raise self._error("init", str(exc)) from exc

    def ping(self) -> None:
        """A consistent read of a key that never exists: proves reachability and permissions."""
        self._call("get_item", TableName=self.table, Key=_key("PING", "PING"),
                   ConsistentRead=True)

    # --- deliveries ----------------------------------------------------------------------

    @staticmethod
    def _delivery_key(provider: str, delivery_id: str) -> dict[str, Any]:
        return _key(f"DELIVERY#{provider}#{delivery_id}", "DELIVERY")

    def record_delivery(self, delivery: Delivery, now: float) -> bool:
        item = {
            **self._delivery_key(delivery.provider, delivery.delivery_id),
            "provider": _s(delivery.provider), "delivery_id": _s(delivery.delivery_id),
            "repository": _s(delivery.repository), "events": _s(delivery.events_json()),
            "verified_by": _s(delivery.verified_by or "-"), "received_at": _n(now),
            "status": _s("pending"), "lease_until": _n(0), "attempts": _n(0),
            "gsi1pk": _s(PENDING), "gsi1sk": _s(f"{_sortable(now)}#{_ref_id(delivery.ref_key)}"),
            "expires_at": _n(int(now + DELIVERY_TTL_SECONDS)),
        }
        answer = self._call("put_item", TableName=self.table, Item=item,
                            ConditionExpression="attribute_not_exists(pk)")
        return answer is not None

    def claim_delivery(self, owner: str, lease_seconds: float, now: float) -> Delivery | None:
        kwargs: dict[str, Any] = {
            "TableName": self.table, "IndexName": GSI, "KeyConditionExpression": "gsi1pk = :p",
            "ExpressionAttributeValues": {":p": _s(PENDING)}, "Limit": CLAIM_CANDIDATES,
        }
        # oldest first; past the ones other owners hold (or that wait for a retry time),
        # page on, so busy deliveries at the head of the index cannot starve the rest
        busy: set[str] = set()  # refs found locked by this claim: not asked again
        for _ in range(CLAIM_PAGES):
            page = self._call("query", **kwargs)
            found = self._claim_first(page.get("Items", []), owner, lease_seconds, now, busy)
            if found is not None or "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return None

    def _claim_first(self, candidates: list[dict[str, Any]], owner: str, lease_seconds: float,
                     now: float, busy: set[str]) -> Delivery | None:
        for candidate in candidates:
            ref_id = str(candidate["gsi1sk"]["S"]).partition("#")[2]
            if ref_id in busy:
                continue
            if ref_id and not self._lock_ref(ref_id, owner, now + lease_seconds, now):
                busy.add(ref_id)  # another owner is processing this ref: it waits its turn
                continue
            answer = self._call(
                "update_item", TableName=self.table,
                Key={"pk": candidate["pk"], "sk": candidate["sk"]},
                UpdateExpression="SET lease_owner = :o, lease_until = :u ADD attempts :one",
                ConditionExpression="#st = :pending AND lease_until <= :now",
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues={":o": _s(owner), ":u": _n(now + lease_seconds),
                                           ":one": _n(1), ":pending": _s("pending"),
                                           ":now": _n(now)},
                ReturnValues="ALL_NEW",
            )
            if answer is None:
                if ref_id:
                    self._unlock_ref(ref_id, owner)
                continue  # someone else holds it, or it is waiting for its retry time
            item = answer["Attributes"]
            verified_by = _get_s(item, "verified_by") or ""
            return Delivery(
                delivery_id=str(_get_s(item, "delivery_id")),
                provider=str(_get_s(item, "provider")),
                repository=str(_get_s(item, "repository")),
                **Delivery.stored_fields(str(_get_s(item, "events"))),
                verified_by="" if verified_by == "-" else verified_by,
                received_at=_get_n(item, "received_at"), attempts=int(_get_n(item, "attempts")),
            )
        return None

    def _lock_ref(self, ref_id: str, owner: str, until: float, now: float) -> bool:
        answer = self._call(
            "put_item", TableName=self.table,
            Item={**_ref_lock_key(ref_id), "owner": _s(owner),
                  "until": _n(until), "expires_at": _n(int(until + 86400))},
            ConditionExpression="attribute_not_exists(pk) OR #u <= :now",
            ExpressionAttributeNames={"#u": "until"},
            ExpressionAttributeValues={":now": _n(now)})
        return answer is not None

    def _unlock_ref(self, ref_id: str, owner: str) -> None:
        self._call("delete_item", TableName=self.table, Key=_ref_lock_key(ref_id),
                   ConditionExpression="#o = :o", ExpressionAttributeNames={"#o": "owner"},
                   ExpressionAttributeValues={":o": _s(owner)})

    def extend_lease(self, delivery: Delivery, owner: str, until: float) -> bool:
        held = self._owned_update(delivery, owner, "SET lease_until = :u", {":u": _n(until)})
        if held:
            self._call("update_item", TableName=self.table,
                       Key=_ref_lock_key(_ref_id(delivery.ref_key)),
                       UpdateExpression="SET #u = :u", ConditionExpression="#o = :o",
                       ExpressionAttributeNames={"#u": "until", "#o": "owner"},
                       ExpressionAttributeValues={":u": _n(until), ":o": _s(owner)})
        return held

    def _owned_update(self, delivery: Delivery, owner: str, update: str,
                      values: dict[str, Any]) -> bool:
        # only the lease holder may release or finish: a former owner whose lease expired
        # and was taken over must not close the new owner's work
        answer = self._call(
            "update_item", TableName=self.table,
            Key=self._delivery_key(delivery.provider, delivery.delivery_id),
            UpdateExpression=update,
            ConditionExpression="lease_owner = :o AND #st = :pending",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues={":o": _s(owner), ":pending": _s("pending"), **values})
        return answer is not None

    def release_delivery(self, delivery: Delivery, owner: str, retry_at: float) -> None:
        self._owned_update(delivery, owner, "SET lease_until = :r REMOVE lease_owner",
                           {":r": _n(retry_at)})
        self._unlock_ref(_ref_id(delivery.ref_key), owner)

    def finish_delivery(self, delivery: Delivery, owner: str, outcome: str, now: float) -> None:
        # leaving the sparse index: finished deliveries are never candidates again
        self._owned_update(delivery, owner,
                           "SET #st = :done, outcome = :out, finished_at = :now "
                           "REMOVE lease_owner, gsi1pk, gsi1sk",
                           {":done": _s("done"), ":out": _s(outcome), ":now": _n(now)})
        self._unlock_ref(_ref_id(delivery.ref_key), owner)

    # --- baselines -----------------------------------------------------------------------

    @staticmethod
    def _baseline_key(repository: str, branch: str, pipeline: str = "") -> dict[str, Any]:
        return _key(f"BASELINE#{repository}#{branch}", f"PIPELINE#{pipeline}")

    @staticmethod
    def _baseline(item: dict[str, Any]) -> Baseline:
        return Baseline(
            repository=str(_get_s(item, "repository")), branch=str(_get_s(item, "branch")),
            pipeline=str(_get_s(item, "pipeline")), commit=_get_s(item, "commit"),
            last_started_commit=_get_s(item, "last_started_commit"),
            last_execution_id=_get_s(item, "last_execution_id"),
            updated_at=_get_n(item, "updated_at"), version=int(_get_n(item, "version")),
            deployed_commit=_get_s(item, "deployed_commit"),
            deployed_started_at=_get_n(item, "deployed_started_at"),
            last_execution_status=_get_s(item, "last_execution_status"),
        )

    def baselines(self, repository: str, branch: str) -> dict[str, Baseline]:
        out: dict[str, Baseline] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": self._baseline_key(repository, branch)["pk"]},
        }
        while True:
            page = self._call("query", **kwargs)
            for item in page.get("Items", []):
                b = self._baseline(item)
                out[b.pipeline] = b
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def advance_baseline(self, expected: Baseline, commit: str, now: float,
                         execution_id: str | None = None) -> bool:
        key = self._baseline_key(expected.repository, expected.branch, expected.pipeline)
        sets = ["#c = :c", "updated_at = :now", "version = :next",
                "repository = :r", "branch = :b", "pipeline = :p"]
        values: dict[str, Any] = {":c": _s(commit), ":now": _n(now),
                                  ":next": _n(expected.version + 1),
                                  ":r": _s(expected.repository), ":b": _s(expected.branch),
                                  ":p": _s(expected.pipeline)}
        if execution_id is not None:
            # in flight until the outcome is applied (replace_baseline takes it out)
            sets += ["last_started_commit = :c", "last_execution_id = :x",
                     "last_execution_status = :running", "gsi1pk = :flight",
                     "gsi1sk = :now_key"]
            values[":x"] = _s(execution_id)
            values[":running"] = _s("InProgress")
            values[":flight"] = _s(IN_FLIGHT)
            values[":now_key"] = _s(_sortable(now))
        if expected.version == 0:
            condition = "attribute_not_exists(pk)"
        else:
            condition = "version = :v"
            values[":v"] = _n(expected.version)
        answer = self._call("update_item", TableName=self.table, Key=key,
                            UpdateExpression="SET " + ", ".join(sets),
                            ConditionExpression=condition,
                            ExpressionAttributeNames={"#c": "commit"},
                            ExpressionAttributeValues=values)
        return answer is not None

    def all_baselines(self) -> Iterator[Baseline]:
        found: list[Baseline] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "FilterExpression": "begins_with(pk, :b)",
            "ExpressionAttributeValues": {":b": _s("BASELINE#")},
        }
        while True:
            page = self._call("scan", **kwargs)
            found.extend(self._baseline(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return iter(sorted(found, key=lambda b: (b.repository, b.branch, b.pipeline)))

    # --- decision records ----------------------------------------------------------------

    @staticmethod
    def _history_keys(record: DecisionRecord) -> list[tuple[dict[str, Any], DecisionRecord]]:
        """The key and body of each item that holds ``record``: under its delivery, its
        head, its repository, its ref and each active pipeline (that one narrowed to the
        pipeline's entry)."""
        sk = f"{_sortable(record.recorded_at)}#{record.delivery_id}#{record.push_key}"
        bodies = [(f"DELIVERY#{record.delivery_id}", record),
                  (f"REPOSITORY#{record.repository_key}", record),
                  (f"REF#{record.repository_key}#{record.push_key}", record)]
        if record.head:
            bodies.append((f"COMMIT#{record.head}", record))
        bodies += [(f"PIPELINE#{p.pipeline}", record.only(p.pipeline))
                   for p in record.pipelines if p.verdict in ACTIVE_VERDICTS]
        if record.pull_request_key is not None:
            bodies.append((f"PULL#{record.pull_request_key}", record))
        return [(_key(f"HISTORY#{name}", sk), body)
                for name, body in bodies]

    def record_decision(self, record: DecisionRecord) -> None:
        # a retried delivery replaces its records: drop what an earlier attempt wrote
        for old in self.history(delivery_id=record.delivery_id, limit=100):
            if old.push_key == record.push_key:
                for key, _ in self._history_keys(old):
                    self._call("delete_item", TableName=self.table, Key=key)
        expires = _n(int(record.recorded_at + HISTORY_TTL_SECONDS))
        items = [{**key, "body": _pack(body), "expires_at": expires}
                 for key, body in self._history_keys(record)]
        for start in range(0, len(items), 25):  # BatchWriteItem's limit
            self._batch_write([{"PutRequest": {"Item": item}} for item in items[start:start + 25]])

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        """Write ``requests`` (at most 25), again and again for what DynamoDB leaves
        unprocessed (it does under throttling), pausing a random time up to a bound that
        doubles each call, so throttled writers do not all come back at once."""
        left: dict[str, Any] = {self.table: requests}
        for attempt in range(BATCH_ATTEMPTS):
            if attempt:
                self.sleep(random.uniform(0, BATCH_BACKOFF_SECONDS * 2 ** (attempt - 1)))
            left = (self._call("batch_write_item", RequestItems=left) or {}).get(
                "UnprocessedItems") or {}
            if not left:
                return
        raise self._error("batch_write_item", f"{len(left[self.table])} items still"
                                              f" unprocessed after {BATCH_ATTEMPTS} calls")

    def history(self, *, delivery_id: str | None = None, commit: str | None = None,
                pipeline: str | None = None, pull_request: tuple[str, int] | None = None,
                limit: int = 20) -> list[DecisionRecord]:
        if pull_request is not None:
            key = f"PULL#{pull_request_key(*pull_request)}"
        elif delivery_id is not None:
            key = f"DELIVERY#{delivery_id}"
        elif commit is not None:
            key = f"COMMIT#{commit}"
        elif pipeline is not None:
            key = f"PIPELINE#{pipeline}"
        else:
            raise ValueError("give delivery_id, commit or pipeline")
        return self._newest_records(key, limit)

    def recent_decisions(self, repository: str, *, branch: str | None = None,
                         limit: int = 20) -> list[DecisionRecord]:
        key = (f"REPOSITORY#{repository}" if branch is None
               else f"REF#{repository}#branch:{branch}")
        return self._newest_records(key, limit)

    def _newest_records(self, key: str, limit: int) -> list[DecisionRecord]:
        """The records under ``HISTORY#{key}``, newest first (the sort key starts with the
        time), at most ``limit``: one Query."""
        page = self._call("query", TableName=self.table, ConsistentRead=True,
                          KeyConditionExpression="pk = :pk",
                          ExpressionAttributeValues={":pk": _key(f"HISTORY#{key}", "")["pk"]},
                          ScanIndexForward=False, Limit=limit)
        return [_unpack(item["body"]) for item in page.get("Items", [])]

    # --- start intents -------------------------------------------------------------------

    @staticmethod
    def _start_key(pipeline: str, commit: str) -> dict[str, Any]:
        return _key(f"START#{pipeline}#{commit}", "START")

    def _get_start(self, pipeline: str, commit: str) -> StartRecord:
        item = self._call("get_item", TableName=self.table, ConsistentRead=True,
                          Key=self._start_key(pipeline, commit)).get("Item")
        if item is None:
            raise self._error("get_item", "start intent vanished (TTL?)")
        return StartRecord(pipeline=pipeline, commit=commit,
                           state=str(_get_s(item, "state")),  # type: ignore[arg-type]
                           owner=str(_get_s(item, "owner")),
                           attempt=int(_get_n(item, "attempt", 1)),
                           execution_id=_get_s(item, "execution_id"), error=_get_s(item, "error"))

    def begin_start(self, pipeline: str, commit: str, owner: str, attempt: int,
                    now: float) -> StartRecord:
        key = self._start_key(pipeline, commit)
        created = self._call(
            "put_item", TableName=self.table, ConditionExpression="attribute_not_exists(pk)",
            Item={**key, "state": _s("pending"), "owner": _s(owner), "attempt": _n(attempt),
                  "updated_at": _n(now), "expires_at": _n(int(now + START_TTL_SECONDS))})
        if created is not None:
            return StartRecord(pipeline, commit, "pending", owner, attempt)
        self._call("update_item", TableName=self.table, Key=key,
                   UpdateExpression="SET #st = :pending, #ow = :o, attempt = :a, "
                                    "updated_at = :now REMOVE #err",
                   ConditionExpression="#st = :failed OR "
                                       "(#st = :pending AND #ow = :o AND attempt < :a)",
                   ExpressionAttributeNames={"#st": "state", "#ow": "owner", "#err": "error"},
                   ExpressionAttributeValues={":pending": _s("pending"), ":o": _s(owner),
                                              ":a": _n(attempt), ":now": _n(now),
                                              ":failed": _s("failed")})
        return self._get_start(pipeline, commit)

    def finish_start(self, pipeline: str, commit: str, owner: str, attempt: int, now: float,
                     execution_id: str | None = None, error: str | None = None) -> None:
        if execution_id is not None:
            update, values = "SET #st = :s, execution_id = :x, updated_at = :now", {
                ":s": _s("started"), ":x": _s(execution_id)}
        else:
            update, values = "SET #st = :s, #err = :e, updated_at = :now", {
                ":s": _s("failed"), ":e": _s(error or "unknown")}
        names = {"#st": "state", "#ow": "owner"}
        if execution_id is None:
            names["#err"] = "error"
        self._call("update_item", TableName=self.table, Key=self._start_key(pipeline, commit),
                   UpdateExpression=update,
                   ConditionExpression="#ow = :o AND attempt = :a AND #st = :pending",
                   ExpressionAttributeNames=names,
                   ExpressionAttributeValues={**values, ":o": _s(owner), ":a": _n(attempt),
                                              ":now": _n(now), ":pending": _s("pending")})

    # --- execution outcomes, leases, status writes ---------------------------------------

    def replace_baseline(self, expected: Baseline, updated: Baseline) -> bool:
        key = self._baseline_key(expected.repository, expected.branch, expected.pipeline)
        fields = {"commit": updated.commit, "last_started_commit": updated.last_started_commit,
                  "last_execution_id": updated.last_execution_id,
                  "deployed_commit": updated.deployed_commit,
                  "last_execution_status": updated.last_execution_status}
        names = {f"#f{i}": name for i, name in enumerate(fields)}
        values: dict[str, Any] = {f":f{i}": _s(v) if v is not None else {"NULL": True}
                                  for i, v in enumerate(fields.values())}
        values.update({":now": _n(updated.updated_at), ":d": _n(updated.deployed_started_at),
                       ":v": _n(expected.version), ":next": _n(expected.version + 1)})
        sets = [f"#f{i} = :f{i}" for i in range(len(fields))]
        if updated.in_flight:
            sets += ["gsi1pk = :flight", "gsi1sk = :now_key"]
            values.update({":flight": _s(IN_FLIGHT), ":now_key": _s(_sortable(updated.updated_at))})
            index = ""
        else:
            index = " REMOVE gsi1pk, gsi1sk"
        answer = self._call(
            "update_item", TableName=self.table, Key=key,
            UpdateExpression="SET " + ", ".join([*sets, "updated_at = :now",
                                                 "deployed_started_at = :d",
                                                 "version = :next"]) + index,
            ConditionExpression="version = :v", ExpressionAttributeNames=names,
            ExpressionAttributeValues=values)
        return answer is not None

    @staticmethod
    def _execution_key(pipeline: str, execution_id: str) -> dict[str, Any]:
        return _key(f"EXECUTION#{pipeline}#{execution_id}", "EXECUTION")

    def record_execution(self, execution: Execution) -> None:
        x = execution
        item = {**self._execution_key(x.pipeline, x.execution_id),
                "pipeline": _s(x.pipeline), "execution_id": _s(x.execution_id),
                "repository": _s(x.repository), "branch": _s(x.branch), "commit": _s(x.commit),
                "started_at": _n(x.started_at), "status": _s(x.status), "attempt": _n(x.attempt),
                "updated_at": _n(x.updated_at),
                "expires_at": _n(int(x.started_at + START_TTL_SECONDS))}
        if x.settled is not None:
            item["settled"] = _s(x.settled)
        if x.pull_request is not None:
            item["pull_request"] = _n(x.pull_request)
        if x.open:
            item.update(gsi1pk=_s(OPEN_EXECUTION), gsi1sk=_s(_sortable(x.started_at)))
        self._call("put_item", TableName=self.table, Item=item,
                   ConditionExpression="attribute_not_exists(pk)")

    @staticmethod
    def _execution(item: dict[str, Any]) -> Execution:
        return Execution(
            pipeline=str(_get_s(item, "pipeline")), execution_id=str(_get_s(item, "execution_id")),
            repository=str(_get_s(item, "repository")), branch=str(_get_s(item, "branch")),
            commit=str(_get_s(item, "commit")), started_at=_get_n(item, "started_at"),
            status=str(_get_s(item, "status")), attempt=int(_get_n(item, "attempt", 1)),
            updated_at=_get_n(item, "updated_at"),
            # an item written before follow-ups were settled: settled when it left the index
            settled=_get_s(item, "settled") or (None if "gsi1pk" in item
                                                else _get_s(item, "status")),
            pull_request=int(_get_n(item, "pull_request")) if "pull_request" in item else None)

    def execution(self, pipeline: str, execution_id: str) -> Execution | None:
        item = self._call("get_item", TableName=self.table, ConsistentRead=True,
                          Key=self._execution_key(pipeline, execution_id)).get("Item")
        return None if item is None else self._execution(item)

    def update_execution(self, expected: Execution, updated: Execution) -> bool:
        # a new status has follow-ups to apply: the execution is open (in the sparse index)
        # until settle_execution says they were applied; a console retry of a finished
        # execution comes back into it the same way
        answer = self._call(
            "update_item", TableName=self.table,
            Key=self._execution_key(expected.pipeline, expected.execution_id),
            UpdateExpression="SET #st = :s, attempt = :a, updated_at = :now,"
                             " gsi1pk = :open, gsi1sk = :started",
            ConditionExpression="#st = :old AND attempt = :olda",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues={
                ":s": _s(updated.status), ":a": _n(updated.attempt),
                ":now": _n(updated.updated_at), ":old": _s(expected.status),
                ":olda": _n(expected.attempt), ":open": _s(OPEN_EXECUTION),
                ":started": _s(_sortable(updated.started_at))})
        return answer is not None

    def settle_execution(self, execution: Execution) -> bool:
        # a final status whose follow-ups are applied leaves the index: never polled again
        index = " REMOVE gsi1pk, gsi1sk" if execution.final else ""
        answer = self._call(
            "update_item", TableName=self.table,
            Key=self._execution_key(execution.pipeline, execution.execution_id),
            UpdateExpression="SET settled = :s" + index,
            ConditionExpression="#st = :s AND attempt = :a",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues={":s": _s(execution.status),
                                       ":a": _n(execution.attempt)})
        return answer is not None

    def _index_items(self, partition: str, *, before: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
        """The whole items of the sparse index's ``partition``, oldest first (the index
        holds keys only): at most ``limit``, with a sort key below ``before``."""
        condition, values = "gsi1pk = :p", {":p": _s(partition)}
        if before is not None:
            condition += " AND gsi1sk < :t"
            values[":t"] = _s(before)
        page = self._call("query", TableName=self.table, IndexName=GSI,
                          KeyConditionExpression=condition,
                          ExpressionAttributeValues=values, Limit=limit)
        found = []
        for key in page.get("Items", []):
            item = self._call("get_item", TableName=self.table, ConsistentRead=True,
                              Key={"pk": key["pk"], "sk": key["sk"]}).get("Item")
            if item is not None:
                found.append(item)
        return found

    def in_flight_baselines(self, limit: int = 100) -> list[Baseline]:
        rows = map(self._baseline, self._index_items(IN_FLIGHT, limit=limit))
        return [b for b in rows if b.in_flight]

    def open_executions(self, started_before: float | None = None,
                        limit: int = 100) -> list[Execution]:
        before = None if started_before is None else _sortable(started_before)
        items = self._index_items(OPEN_EXECUTION, before=before, limit=limit)
        return [x for x in map(self._execution, items) if x.open]

    def acquire_lease(self, name: str, owner: str, until: float, now: float) -> bool:
        answer = self._call(
            "put_item", TableName=self.table,
            Item={**_key(f"LEASE#{name}", "LEASE"), "owner": _s(owner),
                  "until": _n(until), "expires_at": _n(int(until + 86400))},
            ConditionExpression="attribute_not_exists(pk) OR #o = :o OR #u <= :now",
            ExpressionAttributeNames={"#o": "owner", "#u": "until"},
            ExpressionAttributeValues={":o": _s(owner), ":now": _n(now)})
        return answer is not None

    def release_lease(self, name: str, owner: str) -> None:
        self._call("delete_item", TableName=self.table, Key=_key(f"LEASE#{name}", "LEASE"),
                   ConditionExpression="#o = :o", ExpressionAttributeNames={"#o": "owner"},
                   ExpressionAttributeValues={":o": _s(owner)})

    # --- tasks (pending effects) -------------------------------------------------------

    @staticmethod
    def _task_key(key: str) -> dict[str, Any]:
        return _key(f"TASK#{key}", "TASK")

    @staticmethod
    def _task(item: dict[str, Any]) -> Task:
        return Task(key=str(_get_s(item, "key")), kind=str(_get_s(item, "kind")),
                    target=str(_get_s(item, "target")), payload=str(_get_s(item, "payload")),
                    due_at=_get_n(item, "due_at"), created_at=_get_n(item, "created_at"),
                    attempts=int(_get_n(item, "attempts")), error=_get_s(item, "error"))

    def enqueue_task(self, task: Task) -> bool:
        t = task
        item = {**self._task_key(t.key), "key": _s(t.key), "kind": _s(t.kind),
                "target": _s(t.target), "payload": _s(t.payload), "due_at": _n(t.due_at),
                "created_at": _n(t.created_at), "attempts": _n(t.attempts),
                "status": _s("pending"), "lease_until": _n(0),
                "gsi1pk": _s(PENDING_TASK), "gsi1sk": _s(self._due_key(t.due_at, t.key)),
                "expires_at": _n(int(t.created_at + START_TTL_SECONDS))}
        if t.error is not None:
            item["error"] = _s(t.error)
        answer = self._call("put_item", TableName=self.table, Item=item,
                            ConditionExpression="attribute_not_exists(pk)")
        return answer is not None

    @staticmethod
    def _due_key(due_at: float, key: str) -> str:
        return _fit(f"{_sortable(due_at)}#{key}", SK_MAX_BYTES)

    def task_pending(self, key: str) -> bool:
        item = self._call("get_item", TableName=self.table, Key=self._task_key(key),
                          ConsistentRead=True, ProjectionExpression="#st",
                          ExpressionAttributeNames={"#st": "status"}).get("Item")
        return item is not None and _get_s(item, "status") == "pending"

    def claim_tasks(self, owner: str, now: float, lease_seconds: float,
                    limit: int) -> list[Task]:
        # the index orders by due time: every key below "now~" is due (digits sort before ~)
        page = self._call("query", TableName=self.table, IndexName=GSI,
                          KeyConditionExpression="gsi1pk = :p AND gsi1sk < :t",
                          ExpressionAttributeValues={":p": _s(PENDING_TASK),
                                                     ":t": _s(_sortable(now) + "~")},
                          Limit=limit)
        claimed = []
        for key in page.get("Items", []):
            answer = self._call(
                "update_item", TableName=self.table, Key={"pk": key["pk"], "sk": key["sk"]},
                UpdateExpression="SET lease_owner = :o, lease_until = :u",
                ConditionExpression="#st = :pending AND lease_until <= :now AND due_at <= :now",
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues={":o": _s(owner), ":u": _n(now + lease_seconds),
                                           ":pending": _s("pending"), ":now": _n(now)},
                ReturnValues="ALL_NEW")
            if answer is not None:
                claimed.append(self._task(answer["Attributes"]))
        return claimed

    def retry_task(self, task: Task, owner: str, due_at: float, error: str | None,
                   *, failed: bool = True) -> None:
        sets = "SET due_at = :d, lease_until = :zero, gsi1sk = :due"
        values: dict[str, Any] = {":d": _n(due_at), ":zero": _n(0),
                                  ":due": _s(self._due_key(due_at, task.key)),
                                  ":o": _s(owner), ":pending": _s("pending")}
        if failed:
            sets += ", attempts = attempts + :one" + (", #err = :e" if error else "")
            values[":one"] = _n(1)
            if error:
                values[":e"] = _s(error)
        self._call("update_item", TableName=self.table, Key=self._task_key(task.key),
                   UpdateExpression=sets + " REMOVE lease_owner",
                   ConditionExpression="lease_owner = :o AND #st = :pending",
                   ExpressionAttributeNames={"#st": "status",
                                             **({"#err": "error"} if failed and error else {})},
                   ExpressionAttributeValues=values)

    def finish_task(self, task: Task, owner: str, outcome: TaskOutcome, now: float,
                    error: str | None = None) -> None:
        sets = "SET #st = :out, finished_at = :now" + (", #err = :e" if error else "")
        values: dict[str, Any] = {":out": _s(outcome), ":now": _n(now), ":o": _s(owner),
                                  ":pending": _s("pending")}
        if error:
            values[":e"] = _s(error)
        self._call("update_item", TableName=self.table, Key=self._task_key(task.key),
                   UpdateExpression=sets + " REMOVE lease_owner, gsi1pk, gsi1sk",
                   ConditionExpression="lease_owner = :o AND #st = :pending",
                   ExpressionAttributeNames={"#st": "status",
                                             **({"#err": "error"} if error else {})},
                   ExpressionAttributeValues=values)

    # --- what operators look at ----------------------------------------------------------

    def _count_and_first(self, partition: str) -> tuple[int, str | None]:
        """How many keys the sparse index's ``partition`` holds, and its first sort key."""
        count, first = 0, None
        kwargs: dict[str, Any] = {"TableName": self.table, "IndexName": GSI,
                                  "KeyConditionExpression": "gsi1pk = :p",
                                  "ExpressionAttributeValues": {":p": _s(partition)}}
        while True:
            page = self._call("query", **kwargs)
            items = page.get("Items", [])
            if first is None and items:
                first = str(items[0]["gsi1sk"]["S"])
            count += len(items)
            if "LastEvaluatedKey" not in page:
                return count, first
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def backlog(self, now: float) -> Backlog:
        deliveries, first = self._count_and_first(PENDING)
        tasks, first_task = self._count_and_first(PENDING_TASK)
        return Backlog(deliveries, float(first.partition("#")[0]) if first else None,
                       tasks, float(first_task.partition("#")[0]) if first_task else None)

    def holdings(self, now: float) -> list[Holding]:
        found: list[Holding] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "FilterExpression": "begins_with(pk, :lease) OR begins_with(pk, :ref)"
                                " OR (begins_with(pk, :start) AND #st = :pending)",
            "ExpressionAttributeNames": {"#st": "state"},
            "ExpressionAttributeValues": {":lease": _s("LEASE#"), ":ref": _s("REFLOCK#"),
                                          ":start": _s("START#"), ":pending": _s("pending")}}
        while True:
            page = self._call("scan", **kwargs)
            for item in page.get("Items", []):
                kind, _, name = str(item["pk"]["S"]).partition("#")
                owner = str(_get_s(item, "owner"))
                if kind == "START":
                    found.append(Holding("start", name.replace("#", "@", 1), owner, None))
                elif _get_n(item, "until") > now:
                    found.append(Holding("lease" if kind == "LEASE" else "ref", name, owner,
                                         _get_n(item, "until")))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(found, key=lambda h: (h.kind, h.name))

    def heads(self, repository: str) -> dict[str, Head]:
        found: dict[str, Head] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _key(f"HEAD#{repository}", "")["pk"]},
        }
        while True:
            page = self._call("query", **kwargs)
            for item in page.get("Items", []):
                # the name itself is an attribute (a long one's key is shortened); rows
                # written before it was kept hold it only in the key
                branch = _get_s(item, "branch") or str(item["sk"]["S"]).removeprefix("BRANCH#")
                found[branch] = Head(str(_get_s(item, "sha")), _get_s(item, "etag"),
                                     _get_n(item, "updated_at"))
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def note_head(self, repository: str, branch: str, sha: str | None, etag: str | None,
                  now: float) -> None:
        key = _key(f"HEAD#{repository}", f"BRANCH#{branch}")
        if sha is None:
            self._call("delete_item", TableName=self.table, Key=key)
            return
        item: dict[str, Any] = {**key, "branch": _s(branch), "sha": _s(sha),
                                "updated_at": _n(now)}
        if etag is not None:
            item["etag"] = _s(etag)
        self._call("put_item", TableName=self.table, Item=item)

    # --- pull request validations --------------------------------------------------------

    @staticmethod
    def _validation_key(repository: str, number: int) -> dict[str, Any]:
        return _key(f"VALIDATION#{repository}#{number}", "VALIDATION")

    @staticmethod
    def _validation(item: dict[str, Any]) -> Validation:
        return Validation.from_json(zlib.decompress(item["body"]["B"]),
                                    int(_get_n(item, "version")))

    def validation(self, repository: str, number: int) -> Validation | None:
        item = self._call("get_item", TableName=self.table, ConsistentRead=True,
                          Key=self._validation_key(repository, number)).get("Item")
        return None if item is None else self._validation(item)

    def save_validation(self, validation: Validation) -> bool:
        v = validation
        # compressed: a request touching hundreds of modules must fit a 400 KB item
        item = {**self._validation_key(v.repository, v.number),
                "repository": _s(v.repository), "version": _n(v.version + 1),
                "updated_at": _n(v.updated_at), "body": {"B": zlib.compress(
                    v.to_json().encode(), 6)},
                # every validation in one partition of the sparse index, newest last
                "gsi1pk": _s(VALIDATIONS),
                "gsi1sk": _s(_fit(f"{_sortable(v.updated_at)}#{v.repository}#{v.number}",
                                  SK_MAX_BYTES)),
                "expires_at": _n(int(v.updated_at + HISTORY_TTL_SECONDS))}
        if v.version == 0:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {"ConditionExpression": "version = :v",
                         "ExpressionAttributeValues": {":v": _n(v.version)}}
        return self._call("put_item", TableName=self.table, Item=item, **condition) is not None

    def validations(self, *, repository: str | None = None,
                    limit: int = 50) -> list[Validation]:
        found: list[Validation] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "IndexName": GSI,
                                  "KeyConditionExpression": "gsi1pk = :p",
                                  "ExpressionAttributeValues": {":p": _s(VALIDATIONS)},
                                  "ScanIndexForward": False, "Limit": max(limit, 1)}
        for _ in range(VALIDATION_PAGES):  # one repository's among many: page on, bounded
            page = self._call("query", **kwargs)
            for key in page.get("Items", []):
                item = self._call("get_item", TableName=self.table, ConsistentRead=True,
                                  Key={"pk": key["pk"], "sk": key["sk"]}).get("Item")
                if item is not None and (repository is None
                                         or _get_s(item, "repository") == repository):
                    found.append(self._validation(item))
                    if len(found) >= limit:
                        return found
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return found

    def module_map(self, repository: str) -> tuple[str, str] | None:
        item = self._call("get_item", TableName=self.table, ConsistentRead=True,
                          Key=_key(f"MODULEMAP#{repository}", "MODULEMAP")).get("Item")
        if item is None:
            return None
        return str(item["commit"]["S"]), zlib.decompress(item["body"]["B"]).decode("utf-8")

    def save_module_map(self, repository: str, commit: str, text: str, now: float) -> None:
        # compressed: a map of thousands of modules must fit DynamoDB's 400 KB items
        self._call("put_item", TableName=self.table, Item={
            **_key(f"MODULEMAP#{repository}", "MODULEMAP"), "commit": _s(commit),
            "body": {"B": zlib.compress(text.encode("utf-8"), 6)}, "updated_at": _n(now)})

"""Exactly-once across replicas, retries and crashes (DynamoDB state, issue 2).

Two ``webhook-receiver serve`` processes (separate gunicorn masters, 2 workers each) share
one DynamoDB table and one CodePipeline on a moto server, and one local stand-in for the
GitHub API. Deliveries are fired at both at once; afterwards the executions recorded by
moto and the baseline moves logged by the processors are checked against the Git history.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml

from tests.gitmodel import GitModel
from tests.harness import FakeAPI, MotoServer, Recorded, Service, create_pipelines, fixture_bytes

SECRET = "replica-webhook-secret"
REPO = "binkkatal/sample_app"
MODULES = [f"m{i}" for i in range(6)]
# Branches beside master, one push each: while one replica's two processes hold two refs,
# the other always has a ref it can claim (see World.hold_until_all_asked).
SIDE_BRANCHES = [f"side-{i}" for i in range(3)]


def pipeline_of(module: str) -> str:
    return f"{module}-deploy"


class World:
    """Linear history where each commit touches one module, and the fake GitHub API over it."""

    def __init__(self, api: FakeAPI) -> None:
        self.api = api
        self.git = GitModel()
        self.root = self.git.commit(None, {f"{m}/src.py": "0" for m in MODULES})
        self.touched: dict[str, str] = {}
        self.asked: set[str] = set()  # the API tokens compares were asked with
        self._askers: frozenset[str] = frozenset()
        self._gate = threading.Condition()
        world = self

        class Routes(dict[str, Any]):
            def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
                return world.compare if path.startswith(f"/repos/{REPO}/compare/") else default

        api.routes = Routes()

    def hold_until_all_asked(self, tokens: set[str]) -> None:
        """Hold each compare until every one of ``tokens`` (one a replica) has asked one.

        So every replica takes part by construction, not by luck: a replica whose
        processes wait here hold at most one ref each, and the refs left are claimable by
        the others. Without it one replica can take every claim of a busy single ref."""
        self._askers = frozenset(tokens)

    def compare(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        token = rec.headers.get("authorization", "").removeprefix("Bearer ")
        with self._gate:
            self.asked.add(token)
            self._gate.notify_all()
            self._gate.wait_for(lambda: self._askers <= self.asked, timeout=60)
        base, _, head = rec.path.rsplit("/", 1)[1].partition("...")
        if base not in self.git.commits or head not in self.git.commits:
            return 404, {"message": "Not Found"}, {}
        return 200, self.git.github_compare(base, head), {}

    def chain(self, count: int, rng: random.Random, start: str) -> list[tuple[str, str]]:
        """``count`` commits after ``start``, each touching one module: (before, after) pairs."""
        pairs = []
        parent = start
        for i in range(count):
            module = rng.choice(MODULES)
            child = self.git.commit(parent, {f"{module}/src.py": f"{i}-{uuid.uuid4().hex}"})
            self.touched[child] = module
            pairs.append((parent, child))
            parent = child
        return pairs


def body(before: str, after: str, branch: str = "master") -> bytes:
    doc = json.loads(fixture_bytes("github/go-playground-push.json"))
    doc.update(before=before, after=after, ref=f"refs/heads/{branch}")
    return json.dumps(doc).encode()


def post(svc: Service, payload: bytes, delivery_id: str) -> int:
    sig = "sha256=" + hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
    return requests.post(svc.url + "/webhooks/github", data=payload, timeout=30, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256": sig,
    }).status_code


def config(tmp_path: Path, api_url: str, moto_url: str, table: str,
           lease: float) -> dict[str, Any]:
    return {
        "state": {"backend": "dynamodb", "table": table, "region": "us-east-1",
                  "endpoint_url": moto_url},
        "launcher": {"backend": "codepipeline", "region": "us-east-1", "endpoint_url": moto_url},
        "processing": {"lease_seconds": lease, "poll_seconds": 0.3, "retry_backoff_seconds": 0.5},
        "repositories": [{
            "provider": "github", "name": REPO, "api_url": api_url,
            "webhook_secrets": ["env:REPLICA_SECRET"], "api_token": "env:REPLICA_API_TOKEN",
            "branches": ["master", "side-*"],
            "pipelines": [{"name": pipeline_of(m), "paths": [f"{m}/**"],
                           "variables": {"COMMIT_ID": "{commit}"}} for m in MODULES],
        }],
    }


def api_token(replica: str) -> str:
    """Each replica reads the provider API with its own token, so the stand-in tells them
    apart (in production they would share one)."""
    return f"token-of-replica-{replica}"


def start_services(tmp_path: Path, cfg: dict[str, Any], names: list[str],
                   seed: str | None = None) -> list[Service]:
    """Run ``state init`` (with ``seed``: ``state seed`` of every pipeline on master at that
    commit), then start one service per name."""
    cfg_path = tmp_path / "init.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {"REPLICA_SECRET": SECRET, "RECEIVER_LOG_LEVEL": "DEBUG"}
    seeds = [["seed", "--pipeline", pipeline_of(m), "--commit", seed]
             for m in MODULES] if seed else []
    for action in [["init"], *seeds]:
        done = subprocess.run([sys.executable, "-m", "receiver.cli", "state", *action,
                               "--config", str(cfg_path)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env,
                                                "REPLICA_API_TOKEN": api_token("init")})
        assert done.returncode == 0, done.stderr
    return [Service(cfg, tmp_path, env={**env, "REPLICA_API_TOKEN": api_token(n)}, workers=2,
                    name=n).start() for n in names]


def executions_by_commit(moto_url: str) -> dict[str, list[str]]:
    """pipeline -> the COMMIT_ID variable of each of its executions, as moto recorded them."""
    cp = boto3.client("codepipeline", endpoint_url=moto_url, region_name="us-east-1")
    out: dict[str, list[str]] = {}
    for m in MODULES:
        name = pipeline_of(m)
        commits = []
        for summary in cp.list_pipeline_executions(pipelineName=name)[
                "pipelineExecutionSummaries"]:
            execution = cp.get_pipeline_execution(
                pipelineName=name, pipelineExecutionId=summary["pipelineExecutionId"])
            variables = {v["name"]: v["resolvedValue"]
                         for v in execution["pipelineExecution"].get("variables", [])}
            commits.append(variables["COMMIT_ID"])
        out[name] = commits
    return out


def wait_processed(services: list[Service], delivery_ids: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = {e["delivery_id"] for s in services for e in s.events("delivery.processed")}
        if delivery_ids <= done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"unprocessed: {sorted(delivery_ids - done)[:10]}")
        time.sleep(0.3)


def check_history(world: World, services: list[Service], moto_url: str,
                  pushed: list[tuple[str, str]], seeded: str | None = None) -> None:
    """Against the Git history: no double start, no missed change, no lost baseline update.
    ``seeded``: the commit every master baseline was seeded at (else none was)."""
    by_pipeline = executions_by_commit(moto_url)
    # (1) each (pipeline, head) has at most one execution
    for name, commits in by_pipeline.items():
        assert len(commits) == len(set(commits)), f"{name} started twice for one commit"
    # (2) every module changed by a pushed commit is covered at or after that commit
    for _, after in pushed:
        module = world.touched.get(after)
        if module is None:
            continue
        covering = [c for c in by_pipeline[pipeline_of(module)]
                    if after in world.git.ancestors(c)]
        assert covering, f"change to {module} at {after[:8]} never deployed"
    # (3) no baseline moved to a commit older than the one it replaced: per pipeline, the
    # versions written form one unbroken chain (no lost update), each a strict descendant
    moves = [e for s in services for e in s.events("baseline.advanced")]
    assert moves
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for move in moves:
        chains.setdefault((move["branch"], move["pipeline"]), []).append(move)
    for (branch, name), chain in chains.items():
        chain.sort(key=lambda m: m["version"])
        first = chain[0]["version"]
        assert [m["version"] for m in chain] == list(range(first, first + len(chain))), name
        assert chain[0]["previous"] == (seeded if branch == "master" else None), chain[0]
        for older, newer in itertools.pairwise(chain):
            assert newer["previous"] == older["commit"], (name, older, newer)
            assert older["commit"] in world.git.ancestors(newer["commit"]), (name, newer)
            assert older["commit"] != newer["commit"], (name, newer)


@pytest.fixture
def world(fake_api: FakeAPI) -> World:
    return World(fake_api)


@pytest.fixture
def cluster(tmp_path: Path, world: World, moto: MotoServer) -> Iterator[list[Service]]:
    create_pipelines(moto.url, [pipeline_of(m) for m in MODULES])
    world.api.delay = 0.02  # a little latency widens every race window
    cfg = config(tmp_path, world.api.url, moto.url, f"replicas-{uuid.uuid4().hex[:8]}", 10)
    names = ["a", "b"]
    world.hold_until_all_asked({api_token(n) for n in names})
    # adopted at the root: a first push processed out of order is compared from there, not
    # from its own parent (which would take the commits before it as deployed)
    services = start_services(tmp_path, cfg, names, seed=world.root)
    yield services
    for svc in services:
        svc.stop()


def test_two_replicas_start_each_pipeline_once_per_commit_and_miss_no_change(
        cluster: list[Service], world: World, moto: MotoServer) -> None:
    rng = random.Random(7)
    first = world.chain(1, rng, world.root)  # (a): one push, delivered 20 times under one id
    second = world.chain(1, rng, first[-1][1])  # (b): one push under 10 delivery ids
    rest = world.chain(30, rng, second[-1][1])  # (c): 30 pushes, partly out of order
    side = {b: world.chain(1, rng, world.root) for b in SIDE_BRANCHES}  # (d): one push each
    jobs: list[tuple[bytes, str]] = []
    jobs += [(body(*first[0]), "dup-a")] * 20
    jobs += [(body(*second[0]), f"same-push-{i}") for i in range(10)]
    shuffled = list(enumerate(rest))
    for i in range(0, len(shuffled), 5):  # reverse every block of five pushes
        shuffled[i:i + 5] = shuffled[i:i + 5][::-1]
    jobs += [(body(*pair), f"push-{i}") for i, pair in shuffled]
    jobs += [(body(*pushes[0], branch), f"side-{branch}") for branch, pushes in side.items()]
    rng.shuffle(jobs)

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda ij: (ij[1][1], post(cluster[ij[0] % 2], *ij[1])),
                                 enumerate(jobs)))

    dup = [code for did, code in statuses if did == "dup-a"]
    assert sorted(dup) == [200] * 19 + [202]
    assert all(code == 202 for did, code in statuses if did != "dup-a")
    accepted = {did for did, _ in statuses}
    wait_processed(cluster, accepted)
    # the processors of both replicas took part
    assert all(svc.events("delivery.processed") for svc in cluster)
    check_history(world, cluster, moto.url,
                  first + second + rest + [pushes[0] for pushes in side.values()], world.root)
    # the final baseline of every pipeline on master is the last pushed commit
    rows = [json.loads(line) for line in cluster[0].cli("state").stdout.splitlines()]
    assert {r["pipeline"]: r["baseline_commit"] for r in rows if r["branch"] == "master"} \
        == {pipeline_of(m): rest[-1][1] for m in MODULES}


def test_deliveries_of_a_killed_replica_are_finished_by_the_other_without_double_starts(
        tmp_path: Path, world: World, moto: MotoServer) -> None:
    create_pipelines(moto.url, [pipeline_of(m) for m in MODULES])
    cfg = config(tmp_path, world.api.url, moto.url, f"crash-{uuid.uuid4().hex[:8]}", 4)
    victim, survivor = start_services(tmp_path, cfg, ["victim", "survivor"])
    try:
        rng = random.Random(11)
        pushes = world.chain(6, rng, world.root)
        world.api.delay = 1.5  # a slow provider API: the victim dies mid-processing
        ids = [f"crash-{i}" for i in range(len(pushes))]
        for did, pair in zip(ids, pushes, strict=True):
            assert post(victim, body(*pair), did) == 202
        victim.wait_for(lambda _: len(world.api.requests) >= 2, timeout=30)
        victim.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        finished_by_victim = {e["delivery_id"] for e in victim.events("delivery.processed")}
        assert set(ids) - finished_by_victim, "the kill came too late to test anything"
        world.api.delay = 0.05
        wait_processed([victim, survivor], set(ids), timeout=60)
        recovered = {e["delivery_id"] for e in survivor.events("delivery.processed")}
        assert set(ids) - finished_by_victim <= recovered
        # within the lease (4 s) plus the time to process them
        assert time.monotonic() - killed_at < 30
        check_history(world, [victim, survivor], moto.url, pushes)
    finally:
        victim.stop()
        survivor.stop()

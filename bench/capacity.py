"""Benchmark 9: sustained end-to-end capacity of one task, and latency at 80 % of it.

Pushes per second *acknowledged and processed* — the rate at which deliveries leave the
queue while more keep coming — with ``REPOSITORIES`` repositories of ``PIPELINES``
pipelines each (one module changed per push, as the provider stand-in's compare answer
says; every other pipeline's baseline moves), the compare API at 20 ms a call and the
``log`` launcher. Then, on a fresh state, pushes are sent at 80 % of that rate for a while
and each push's time from its 202 to its ``pipeline.started`` line is measured (p50, p99).

Two deployments: SQLite with one service (``WORKERS`` gunicorn workers), and a
DynamoDB-protocol server (moto's, on 127.0.0.1) with two replicas sharing the table (the
pushes alternate between them). moto is much slower than DynamoDB, so its figure is a floor
for the replicated deployment, not DynamoDB's.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import fakes

REPOSITORIES = 4
PIPELINES = 50
COMPARE_DELAY = 0.020
SATURATE_SECONDS = 20.0
LATENCY_SECONDS = 20.0
SENDERS = 8


class ModuleGitHub(fakes.FakeGitHub):
    """The compare stand-in, answering for each head one changed file: that of module
    ``int(head[:8], 16) % PIPELINES`` (so each push starts one pipeline)."""

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        status, doc = super().answer(method, path, headers, body)
        if status == 200:
            head = path.split("?", 1)[0].rsplit("...", 1)[1]
            module = int(head[:8], 16) % PIPELINES
            doc["files"] = [{"filename": f"services/m{module}/main.go", "status": "modified"}]
        return status, doc


@dataclass
class Chain:
    """One repository's branch: the recorded push, re-pointed at each next head."""

    name: str
    body: bytes
    before: str
    after: str
    head: str
    lock: threading.Lock

    def next_body(self) -> tuple[bytes, str]:
        with self.lock:
            new = uuid.uuid4().hex + uuid.uuid4().hex[:8]
            body = self.body.replace(self.after.encode(), new.encode()).replace(
                self.before.encode(), self.head.encode())
            self.head = new
            return body, new


def repositories(api_url: str) -> list[dict[str, Any]]:
    """The configured repositories: ``REPOSITORIES`` x ``PIPELINES`` pipelines."""
    from bench.run import repo_entry

    return [repo_entry(f"bench/repo-{r}", api_url,
                       [{"name": f"r{r}-m{i}", "paths": [f"services/m{i}/**"]}
                        for i in range(PIPELINES)]) for r in range(REPOSITORIES)]


def chains(push: bytes) -> list[Chain]:
    doc = json.loads(push)
    out = []
    for r in range(REPOSITORIES):
        body = push.replace(doc["repository"]["full_name"].encode(), f"bench/repo-{r}".encode())
        out.append(Chain(f"bench/repo-{r}", body, doc["before"], doc["after"], doc["before"],
                         threading.Lock()))
    return out


@dataclass
class Sent:
    delivery_id: str
    answered: float


def send(urls: list[str], chain: Chain, i: int, post: Callable[..., Any]) -> Sent:
    body, _ = chain.next_body()
    delivery_id = f"cap-{uuid.uuid4().hex[:12]}"
    resp = post(urls[i % len(urls)] + "/webhooks/github", body, delivery_id)
    if resp.status_code != 202:
        raise RuntimeError(f"push {delivery_id}: HTTP {resp.status_code} {resp.text}")
    return Sent(delivery_id, time.time())


def processed_times(logs: list[Path], ts: Callable[[dict[str, Any]], float],
                    event: str) -> dict[str, float]:
    """delivery id -> the time of its ``event`` line, over every service's log."""
    out: dict[str, float] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("event") == event and "delivery_id" in doc:
                    out.setdefault(doc["delivery_id"], ts(doc))
    return out


def saturate(urls: list[str], logs: list[Path], push: bytes, post: Callable[..., Any],
             ts: Callable[[dict[str, Any]], float]) -> tuple[float, float, int]:
    """Send as fast as ``SENDERS`` threads can for ``SATURATE_SECONDS``: (processed per
    second in that window, acknowledged per second, pushes sent)."""
    all_chains = chains(push)
    sent: list[Sent] = []
    stop = time.monotonic() + SATURATE_SECONDS
    start = time.time()
    errors: list[BaseException] = []

    def sender(k: int) -> None:
        i = k
        while time.monotonic() < stop and not errors:
            try:
                sent.append(send(urls, all_chains[i % REPOSITORIES], i, post))
            except BaseException as exc:
                errors.append(exc)
            i += SENDERS

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.time()
    if errors:
        raise RuntimeError(f"a push was refused: {errors[0]}")
    done = processed_times(logs, ts, "delivery.processed")
    in_window = sum(1 for d in sent if start <= done.get(d.delivery_id, end + 1) <= end)
    return in_window / (end - start), len(sent) / (end - start), len(sent)


def at_rate(rate: float, urls: list[str], logs: list[Path], push: bytes,
            post: Callable[..., Any], ts: Callable[[dict[str, Any]], float]) -> list[float]:
    """Send at ``rate`` pushes a second (open loop) for ``LATENCY_SECONDS``; each push's
    seconds from its 202 to its ``pipeline.started`` line."""
    all_chains = chains(push)
    count = max(1, int(rate * LATENCY_SECONDS))
    sent: list[Sent] = []
    t0 = time.monotonic()
    pool: list[threading.Thread] = []
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=lambda i=i: sent.append(
            send(urls, all_chains[i % REPOSITORIES], i, post)))
        t.start()
        pool.append(t)
    for t in pool:
        t.join()
    deadline = time.monotonic() + 120
    while True:
        started = processed_times(logs, ts, "pipeline.started")
        if all(d.delivery_id in started for d in sent) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [started[d.delivery_id] - d.answered for d in sent if d.delivery_id in started]


@contextlib.contextmanager
def deployment(kind: str, tmp: Path, api_url: str, moto_url: str | None,
               start: Callable[..., Any], env: dict[str, str]) -> Iterator[list[Any]]:
    """The services of one deployment: SQLite (one service) or DynamoDB (two replicas)."""
    from tests.harness import Service

    workdir = tmp / f"cap-{kind}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    if kind == "sqlite":
        svc = start(workdir, "svc", repositories(api_url))
        try:
            yield [svc]
        finally:
            svc.stop()
        return
    assert moto_url is not None
    config = {"state": {"backend": "dynamodb", "table": f"cap-{uuid.uuid4().hex[:8]}",
                        "region": "us-east-1", "endpoint_url": moto_url},
              "launcher": {"backend": "log"}, "repositories": repositories(api_url)}
    (workdir / "init.yaml").write_text(json.dumps(config))
    subprocess.run([sys.executable, "-m", "receiver.cli", "state", "init", "--config",
                    str(workdir / "init.yaml")], check=True, env=env, capture_output=True)
    services = [Service(config, workdir, env=env, name=n).start() for n in ("a", "b")]
    try:
        yield services
    finally:
        for s in services:
            s.stop()


def p(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(tmp: Path, push: bytes, post: Callable[..., Any], ts: Callable[[dict[str, Any]], float],
        start: Callable[..., Any], env: dict[str, str], moto_url: str) -> list[dict[str, Any]]:
    """Both deployments' figures: capacity, acknowledgements, p50/p99 at 80 %."""
    api = ModuleGitHub([], delay=COMPARE_DELAY)
    results = []
    try:
        for kind in ("sqlite", "dynamodb"):
            with deployment(kind, tmp, api.url, moto_url, start, env) as services:
                urls = [s.url for s in services]
                logs = [s.log_path for s in services]
                capacity, acked, sent = saturate(urls, logs, push, post, ts)
            with deployment(kind, tmp, api.url, moto_url, start, env) as services:
                urls = [s.url for s in services]
                logs = [s.log_path for s in services]
                latencies = at_rate(0.8 * capacity, urls, logs, push, post, ts)
            results.append({"deployment": kind, "capacity": capacity, "acknowledged": acked,
                            "sent": sent, "pushes_at_80": len(latencies),
                            "p50": statistics.median(latencies) if latencies else float("nan"),
                            "p99": p(latencies, 0.99) if latencies else float("nan")})
            print(f"  {kind:9s}: {capacity:.1f} pushes/s processed while {acked:.1f}/s were "
                  f"acknowledged ({sent} sent in {SATURATE_SECONDS:.0f} s); at 80 % "
                  f"({0.8 * capacity:.1f}/s, {len(latencies)} pushes): 202 -> pipeline.started "
                  f"p50 {results[-1]['p50'] * 1000:.0f} ms, p99 {results[-1]['p99'] * 1000:.0f} ms")
    finally:
        api.close()
    return results

#!/usr/bin/env python3
"""Run the benchmarks of issue 6 on this machine; print each figure, its reference, the ratio.

1. Acknowledgement throughput and latency (wrk, fixed time, same load for all): the service
   as ``webhook-receiver serve`` runs it in production (gunicorn settings of
   receiver/gunicorn_conf.py, SQLite state, log launcher) against (a) a bare Flask app under
   the same gunicorn settings that only checks the HMAC and parses the JSON, and (b)
   adnanh/webhook with a payload-hmac-sha256 rule running /bin/true.
2. Answer latency while the provider API takes 3 s per compare, against a fast provider.
3. Push to pipelines started: compare API at 100 ms per call, 20 pipelines that all change;
   time from the 202 to the last ``pipeline.started`` line, and compare calls per push
   (normal and force push); again with CodePipeline itself at 100 ms per start.
4. Matching at scale: 5,000 pipelines against 5,000 to 50,000 changed paths.
5. Resident memory of each gunicorn worker after 5,000 and 10,000 deliveries.
6. An execution outcome event to its commit status request.
7. The module map at scale: 5,000 concrete pipelines of a template and a three-level
   dependency graph decided against 5,000 to 50,000 changed paths (bench/modules.py).
8. ``diff: git`` against ``diff: api`` on a 10,000-file push.
9. Sustained end-to-end capacity of one task (pushes acknowledged and processed per second,
   50 pipelines per repository, compare at 20 ms), on SQLite and on a DynamoDB-protocol
   server with two replicas, and the p99 of push -> start at 80 % of it (bench/capacity.py).
10. A pull request event to its validate starts and to its summary status, provider at
   100 ms a call.
11. Slow and many clients: /healthz and signed push latency while 64 connections send their
   requests a byte at a time (tests/slowloris.py), against the same probes alone.

Everything listens on and talks to 127.0.0.1 only. Needs ``wrk`` and ``webhook`` on PATH
(see bench/README.md); installs nothing. ``--only 1,3`` runs a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this checkout's code, whatever an editable install elsewhere points at
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench import (  # noqa: E402
    capacity,
    fakes,
    matching,
    wrk,
)
from bench import modules as module_bench  # noqa: E402
from receiver import gunicorn_conf  # noqa: E402
from receiver.matcher import match  # noqa: E402
from tests.harness import AWS_ENV, Service, fixture_bytes, free_port, wait_http  # noqa: E402
from tests.slowloris import Attack  # noqa: E402

SECRET = "bench-" + uuid.uuid4().hex
ENV = {
    **AWS_ENV,
    "BENCH_WEBHOOK_SECRET": SECRET,
    # the service and the floor import this checkout, as this process does
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}
WORKERS = int(gunicorn_conf.workers)
THREADS = int(gunicorn_conf.threads)

DRAIN_SECONDS = 15.0  # benchmark 1: how long the backlog's processing is watched after wrk
PUSH_FIXTURE = "github/go-playground-push.json"  # a real push, 1 commit, ~8 KB
FORCED_FIXTURE = "github/packit-push-forced-existing-branch.json"  # a real force push
APP_FILES = ["app/models/user.rb", "config/routes.rb", "public/index.html", "README.md"]
APP_PIPELINES = [
    {"name": "sample-app", "paths": ["app/**", "!**/*.md"]},
    {"name": "sample-config", "paths": ["config/**"]},
    {"name": "sample-web", "paths": ["public/**", "app/assets/**"]},
]


# --- results -------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table."""

    what: str
    figure: float
    unit: str
    reference: float | None
    ref_label: str
    target: str
    ok: bool | None  # None: information, no target

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0):
            return None
        assert self.reference is not None
        return self.figure / self.reference


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("req/s", "ms", "MB"):
        return f"{value:,.1f} {unit}"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "calls":
        return f"{value:.3g} call" + ("" if value == 1 else "s")
    return f"{value:.2f}{unit}"


def print_table(rows: Sequence[Row]) -> None:
    head = ("benchmark", "figure", "reference (same run)", "ratio", "target", "verdict")
    cells = [head] + [
        (r.what, fmt(r.figure, r.unit), f"{fmt(r.reference, r.unit)} {r.ref_label}".strip(),
         "-" if r.ratio is None else f"{r.ratio:.3g}x", r.target,
         {True: "PASS", False: "MISS", None: "info"}[r.ok])
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for n, line in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --- processes -----------------------------------------------------------------------------


class Proc:
    """A server subprocess in its own session; stopped through its own process group."""

    def __init__(self, cmd: list[str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **ENV}, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def start_floor(tmp: Path) -> tuple[Proc, str]:
    """The bare Flask app under gunicorn with the production settings module."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "gunicorn", "-c", "python:receiver.gunicorn_conf",
                 "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
                 "--threads", str(THREADS), "bench.bare_app:app"], tmp / "floor.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/")
    return proc, url + "/webhooks/github"


def start_adnanh(tmp: Path) -> tuple[Proc, str]:
    """adnanh/webhook: one hook, HMAC-SHA256 of the payload, runs /bin/true."""
    hooks = tmp / "hooks.json"
    hooks.write_text(json.dumps([{
        "id": "bench",
        "execute-command": "/bin/true",
        "response-message": "accepted",
        "trigger-rule-mismatch-http-response-code": 401,
        "trigger-rule": {"match": {
            "type": "payload-hmac-sha256", "secret": SECRET,
            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
        }},
    }]))
    port = free_port()
    proc = Proc(["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
                tmp / "adnanh.log")
    url = f"http://127.0.0.1:{port}/hooks/bench"
    wait_http(url)
    return proc, url


def repo_entry(name: str, api_url: str, pipelines: list[dict[str, Any]]) -> dict[str, Any]:
    return {"provider": "github", "name": name, "api_url": api_url,
            "webhook_secrets": ["env:BENCH_WEBHOOK_SECRET"], "branches": ["**"],
            "pipelines": pipelines}


def start_service(tmp: Path, name: str, repos: list[dict[str, Any]],
                  launcher: dict[str, Any] | None = None) -> Service:
    """``webhook-receiver serve`` with SQLite state on disk and the given launcher."""
    workdir = tmp / name
    workdir.mkdir()
    config = {"state": {"backend": "sqlite", "path": str(workdir / "state.db")},
              "launcher": launcher or {"backend": "log"}, "repositories": repos}
    return Service(config, workdir, env=ENV, workers=WORKERS, name=name).start()


def post(url: str, body: bytes, delivery_id: str,
         signed: bytes | None = None, event: str = "push") -> requests.Response:
    """POST a GitHub ``event`` (a push) signed over ``signed`` (default: ``body`` itself)."""
    signature = wrk.sign(SECRET, body if signed is None else signed)
    return requests.post(url, data=body, timeout=10, headers={
        "Content-Type": "application/json", "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256": signature})


def log_count(path: Path, offset: int, event: str) -> int:
    """How many log lines of ``event`` were written after byte ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    # lines are compact JSON; a space after the colon is accepted too
    return len(re.findall(rb'"event": ?"' + re.escape(event.encode()) + rb'"', data))


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers: the children of the master process."""
    pids: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return sorted(pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pending(db: Path) -> int:
    """Deliveries recorded and not yet processed."""
    return _count(db, "SELECT COUNT(*) FROM deliveries WHERE status != 'done'")


def recorded(db: Path) -> int:
    """Deliveries recorded."""
    return _count(db, "SELECT COUNT(*) FROM deliveries")


def _count(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
        return int(c.execute(sql).fetchone()[0])


def all_workers(master: int, expected: int) -> list[int]:
    """The worker pids once all ``expected`` workers are forked."""
    deadline = time.monotonic() + 30
    while len(pids := worker_pids(master)) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(pids)} of {expected} gunicorn workers after 30 s")
        time.sleep(0.1)
    return pids


def head_sha(n: int) -> str:
    return hashlib.sha1(f"bench-head-{n}".encode()).hexdigest()


def with_commits(body: bytes, old_after: str, new_after: str,
                 old_before: str | None = None, new_before: str | None = None) -> bytes:
    """The recorded push with other commit ids, every other byte unchanged."""
    out = body.replace(old_after.encode(), new_after.encode())
    if old_before is not None and new_before is not None:
        out = out.replace(old_before.encode(), new_before.encode())
    return out


def push_heads(n: int) -> list[bytes]:
    """``n`` copies of the recorded push, each with its own head commit."""
    push = fixture_bytes(PUSH_FIXTURE)
    after = json.loads(push)["after"]
    return [with_commits(push, after, head_sha(i)) for i in range(n)]


def ts(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00")).timestamp()


@dataclass
class Ctx:
    tmp: Path
    seconds: float
    warmup: float
    connections: int
    memory_deliveries: int
    rounds: int = 3


def drive(url: str, script: Path, ctx: Ctx) -> wrk.WrkResult:
    """Warm up, then measure, at the same concurrency for every target."""
    wrk.run(url, script, seconds=ctx.warmup, connections=ctx.connections)
    return wrk.run(url, script, seconds=ctx.seconds, connections=ctx.connections)


def check(resp: requests.Response, status: int, what: str) -> None:
    if resp.status_code != status:
        raise RuntimeError(f"{what}: expected HTTP {status}, got {resp.status_code} {resp.text}")


# --- 1. acknowledgement --------------------------------------------------------------------


def bench_ack(ctx: Ctx, floor_rss: list[float]) -> list[Row]:
    push = fixture_bytes(PUSH_FIXTURE)
    repo = json.loads(push)["repository"]["full_name"]
    print(f"  payload: {PUSH_FIXTURE} ({len(push)} bytes), wrk -t1 -c{ctx.connections}, "
          f"{ctx.warmup:g} s warm-up + {ctx.seconds:g} s per run, gunicorn {WORKERS} workers x "
          f"{THREADS} threads ({gunicorn_conf.worker_class}); {ctx.rounds} rounds of floor, "
          f"service, service with a new head each, so a change in the machine's speed "
          f"during the run touches all three alike")
    script = wrk.write_script(ctx.tmp / "ack.lua", url_path="/webhooks/github",
                              bodies=[push], secret=SECRET)
    hook_script = wrk.write_script(ctx.tmp / "adnanh.lua", url_path="/hooks/bench",
                                   bodies=[push], secret=SECRET)
    heads_script = wrk.write_script(ctx.tmp / "heads.lua", url_path="/webhooks/github",
                                    bodies=push_heads(256), secret=SECRET)
    runs: dict[str, list[wrk.WrkResult]] = {"floor": [], "svc": [], "heads": []}

    def run_floor(label: str) -> wrk.WrkResult:
        floor, url = start_floor(ctx.tmp)
        try:
            check(post(url, push, "probe-1"), 202, "bare floor")
            check(post(url, push + b" ", "probe-2", signed=push), 401, "bare floor, bad HMAC")
            res = drive(url, script, ctx)
            floor_rss[:] = [rss_mb(p) for p in all_workers(floor.proc.pid, WORKERS)]
        finally:
            floor.stop()
        print(f"  {label} bare Flask floor      {res.summary()}")
        return res

    def run_service(label: str, title: str, name: str, lua: Path,
                    api: fakes.FakeGitHub) -> wrk.WrkResult:
        svc = start_service(ctx.tmp, name, [repo_entry(repo, api.url, APP_PIPELINES)])
        try:
            check(post(svc.url + "/webhooks/github", push, f"probe-{name}"), 202, "service")
            wrk.run(svc.url + "/webhooks/github", lua, seconds=ctx.warmup,
                    connections=ctx.connections)
            offset = svc.log_path.stat().st_size
            calls0 = api.count()
            res = wrk.run(svc.url + "/webhooks/github", lua, seconds=ctx.seconds,
                          connections=ctx.connections)
            accepted = log_count(svc.log_path, offset, "webhook.accepted")
            backlog = pending(svc.workdir / "state.db")
            # the answers came first; the work they recorded goes on at full speed now
            t0 = time.monotonic()
            while pending(svc.workdir / "state.db") and time.monotonic() - t0 < DRAIN_SECONDS:
                time.sleep(0.2)
            drained = time.monotonic() - t0
            done = backlog - pending(svc.workdir / "state.db")
        finally:
            svc.stop()
        print(f"  {label} {title:<22}{res.summary()}")
        print(f"  {' ' * len(label)} {'':<22}{accepted} webhook.accepted in the window, "
              f"{backlog} not yet processed when wrk stopped; {done} processed in the "
              f"{drained:.1f} s after ({done / max(drained, 1e-9):,.0f}/s); "
              f"{api.count() - calls0} compare calls")
        return res

    api = fakes.FakeGitHub(APP_FILES)
    try:
        for r in range(1, ctx.rounds + 1):
            label = f"[{r}/{ctx.rounds}]"
            runs["floor"].append(run_floor(label))
            runs["svc"].append(run_service(label, "service", f"ack-{r}", script, api))
            runs["heads"].append(run_service(label, "service, new head each", f"heads-{r}",
                                             heads_script, api))
            floor_rps = runs["floor"][-1].rps
            print(f"  {' ' * len(label)} this round: service "
                  f"{runs['svc'][-1].rps / floor_rps:.3f}x the floor, new head each "
                  f"{runs['heads'][-1].rps / floor_rps:.3f}x")
    finally:
        api.close()

    hook, url = start_adnanh(ctx.tmp)
    try:
        check(post(url, push, "probe-1"), 200, "adnanh/webhook")
        refused = post(url, push + b" ", "probe-2", signed=push)
        if refused.status_code < 400:  # webhook 2.8 answers a bad signature 500, not 401
            raise RuntimeError(f"adnanh/webhook accepted a changed body: {refused.text}")
        adnanh = drive(url, hook_script, ctx)
    finally:
        hook.stop()
    print(f"  (b) adnanh/webhook        {adnanh.summary()}")

    results = {name: _mean(res) for name, res in runs.items()}
    results["adnanh"] = adnanh
    rates = [f.rps for f in runs["floor"]]
    spread = (max(rates) - min(rates)) / max(rates)
    print(f"  means over the rounds: floor {results['floor'].rps:.1f} req/s, "
          f"service {results['svc'].rps:.1f}, new head each {results['heads'].rps:.1f}"
          + (f"  (the floor runs differ by {spread:.0%}: the machine's speed changed)"
             if spread > 0.15 else ""))
    for name, res in results.items():
        if res.non_2xx or res.socket_errors:
            print(f"  WARNING: {name}: {res.non_2xx} non-2xx answers, "
                  f"{res.socket_errors} socket errors")
    s, f, h, n = results["svc"], results["floor"], results["adnanh"], results["heads"]
    return [
        Row("1 ack throughput: service vs bare floor", s.rps, "req/s", f.rps, "floor",
            ">= 0.70x", s.rps >= 0.7 * f.rps),
        Row("1 ack p99: service vs bare floor", s.p99, "ms", f.p99, "floor", "<= 2.00x",
            s.p99 <= 2 * f.p99),
        Row("1 ack p50: service vs bare floor", s.p50, "ms", f.p50, "floor", "", None),
        Row("1 ack throughput: service vs adnanh/webhook", s.rps, "req/s", h.rps, "webhook",
            "", None),
        Row("1 ack p99: service vs adnanh/webhook", s.p99, "ms", h.p99, "webhook", "", None),
        Row("1 ack throughput, new head each: vs floor", n.rps, "req/s", f.rps, "floor",
            ">= 0.70x", n.rps >= 0.7 * f.rps),
        Row("1 ack p99, new head each: vs floor", n.p99, "ms", f.p99, "floor", "<= 2.00x",
            n.p99 <= 2 * f.p99),
    ]


def _mean(runs: Sequence[wrk.WrkResult]) -> wrk.WrkResult:
    """The runs' mean rate and mean percentiles (the worst max), their totals."""
    n = len(runs)
    return wrk.WrkResult(
        requests=sum(r.requests for r in runs), seconds=sum(r.seconds for r in runs),
        rps=sum(r.rps for r in runs) / n, p50=sum(r.p50 for r in runs) / n,
        p75=sum(r.p75 for r in runs) / n, p90=sum(r.p90 for r in runs) / n,
        p99=sum(r.p99 for r in runs) / n, max=max(r.max for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs), raw="".join(r.raw for r in runs))


# --- 2. slow provider ----------------------------------------------------------------------


def bench_slow_provider(ctx: Ctx) -> list[Row]:
    push = fixture_bytes(PUSH_FIXTURE)
    repo = json.loads(push)["repository"]["full_name"]
    script = wrk.write_script(ctx.tmp / "slow.lua", url_path="/webhooks/github",
                              bodies=push_heads(256), secret=SECRET)
    print(f"  every delivery a new head (so every one needs a compare), wrk -t1 "
          f"-c{ctx.connections}, {ctx.warmup:g} s warm-up + {ctx.seconds:g} s; {ctx.rounds} "
          f"rounds of a fast and a slow provider, back to back")
    runs: dict[float, list[wrk.WrkResult]] = {0.0: [], 3.0: []}
    for r in range(1, ctx.rounds + 1):
        for delay in (0.0, 3.0):
            api = fakes.FakeGitHub(APP_FILES, delay=delay)
            try:
                svc = start_service(ctx.tmp, f"slow-{delay:g}-{r}",
                                    [repo_entry(repo, api.url, APP_PIPELINES)])
                try:
                    res = drive(svc.url + "/webhooks/github", script, ctx)
                    backlog = pending(svc.workdir / "state.db")
                finally:
                    svc.stop()
            finally:
                api.close()
            runs[delay].append(res)
            label = "fast provider " if delay == 0 else "compare takes 3 s"
            print(f"  [{r}/{ctx.rounds}] {label:18s} {res.summary()}")
            print(f"  {'':24s} {api.count()} compare calls made, {backlog} deliveries "
                  f"queued at the end")
    fast, slow = _mean(runs[0.0]), _mean(runs[3.0])
    return [
        Row("2 answer p99: provider 3 s vs fast", slow.p99, "ms", fast.p99, "fast", "<= 1.20x",
            slow.p99 <= 1.2 * fast.p99),
        Row("2 answer p50: provider 3 s vs fast", slow.p50, "ms", fast.p50, "fast", "", None),
        Row("2 throughput: provider 3 s vs fast", slow.rps, "req/s", fast.rps, "fast", "",
            None),
    ]


# --- 3. push to pipelines started ------------------------------------------------------------


@dataclass
class PushOutcome:
    to_last_start: float
    to_processed: float
    started: int
    api_calls: int


def push_and_wait(svc: Service, body: bytes, delivery_id: str,
                  api: fakes.FakeGitHub) -> PushOutcome:
    calls0 = api.count()
    resp = post(svc.url + "/webhooks/github", body, delivery_id)
    answered = time.time()
    check(resp, 202, f"push {delivery_id}")

    def done(lines: list[dict[str, Any]]) -> bool:
        return any(line.get("event") == "delivery.processed"
                   and line.get("delivery_id") == delivery_id for line in lines)

    lines = [line for line in svc.wait_for(done, timeout=60)
             if line.get("delivery_id") == delivery_id]
    started = [ts(line) for line in lines if line.get("event") == "pipeline.started"]
    processed = next(ts(line) for line in lines if line.get("event") == "delivery.processed")
    return PushOutcome(max(started, default=math.nan) - answered, processed - answered,
                       len(started), api.count() - calls0)


def bench_push_to_start(ctx: Ctx) -> list[Row]:
    push = fixture_bytes(PUSH_FIXTURE)
    forced = fixture_bytes(FORCED_FIXTURE)
    p_doc, f_doc = json.loads(push), json.loads(forced)
    n_pipes = 20
    files = [f"services/svc-{i:02d}/{leaf}" for i in range(n_pipes)
             for leaf in ("main.go", "README.md")]

    def pipelines(prefix: str) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}-svc-{i:02d}", "paths": [f"services/svc-{i:02d}/**",
                                                             "!**/*.md"]}
                for i in range(n_pipes)]

    rows: list[Row] = []
    api = fakes.FakeGitHub(files, delay=0.1)
    cp = fakes.FakeCodePipeline(delay=0.1)
    try:
        sample = f"{api.url}/repos/a/b/compare/{'a' * 40}...{'b' * 40}"
        one_call = statistics.median(_timed(lambda: requests.get(sample, timeout=5))
                                     for _ in range(3))
        one_start = statistics.median(_timed(lambda: requests.post(
            cp.url, data=b"{}", timeout=5,
            headers={"X-Amz-Target": "CodePipeline_20150709.StartPipelineExecution"}))
            for _ in range(3))
        print(f"  compare API and CodePipeline answer after 100 ms (one call each measured "
              f"from here: {one_call * 1000:.0f} ms, {one_start * 1000:.0f} ms); {n_pipes} "
              f"pipelines, every one changed by each push")
        for launcher in ("log", "codepipeline"):
            conf: dict[str, Any] = {"backend": "log"} if launcher == "log" else {
                "backend": "codepipeline", "region": "us-east-1", "endpoint_url": cp.url}
            svc = start_service(ctx.tmp, f"push-{launcher}", [
                repo_entry(p_doc["repository"]["full_name"], api.url, pipelines("app")),
                repo_entry(f_doc["repository"]["full_name"], api.url, pipelines("fc")),
            ], launcher=conf)
            try:
                normal = _normal_pushes(svc, api, push, p_doc, 5 if launcher == "log" else 3)
                forced_out = _forced_pushes(svc, api, forced, f_doc,
                                            3 if launcher == "log" else 1)
            finally:
                svc.stop()
            _report_pushes(launcher, normal, forced_out, n_pipes)
            median_normal = statistics.median(o.to_last_start for o in normal)
            median_forced = statistics.median(o.to_last_start for o in forced_out)
            if launcher == "log":
                rows += [
                    Row("3 202 -> last pipeline.started (normal)", median_normal, "s",
                        one_call, "1 compare", "< 0.5 s", median_normal < 0.5),
                    Row("3 202 -> last pipeline.started (force)", median_forced, "s",
                        2 * one_call, "2 compares", "< 0.5 s", median_forced < 0.5),
                    Row("3 compare calls per push (normal)",
                        float(max(o.api_calls for o in normal)), "calls", 1.0, "", "1",
                        all(o.api_calls == 1 for o in normal)),
                    Row("3 compare calls per push (force)",
                        float(max(o.api_calls for o in forced_out)), "calls", 2.0, "", "2",
                        all(o.api_calls == 2 for o in forced_out)),
                ]
            else:
                rows.append(Row("3 ... with CodePipeline at 100 ms/start (normal)",
                                median_normal, "s", one_call + one_start,
                                "compare+1 start", "< 0.5 s", median_normal < 0.5))
    finally:
        api.close()
        cp.close()
    return rows


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _normal_pushes(svc: Service, api: fakes.FakeGitHub, push: bytes, doc: dict[str, Any],
                   count: int) -> list[PushOutcome]:
    """The recorded push (first on its branch), then pushes on top of it."""
    out = [push_and_wait(svc, push, f"normal-{uuid.uuid4().hex[:8]}-0", api)]
    prev = doc["after"]
    for i in range(1, count):
        head = head_sha(10_000 + i)
        body = with_commits(push, doc["after"], head, doc["before"], prev)
        out.append(push_and_wait(svc, body, f"normal-{uuid.uuid4().hex[:8]}-{i}", api))
        prev = head
    return out


def _forced_pushes(svc: Service, api: fakes.FakeGitHub, forced: bytes, doc: dict[str, Any],
                   count: int) -> list[PushOutcome]:
    """The recorded force push, then force pushes that each rewrite the previous head."""
    api.diverge(doc["before"], doc["after"])
    out = [push_and_wait(svc, forced, f"forced-{uuid.uuid4().hex[:8]}-0", api)]
    prev = doc["after"]
    for i in range(1, count):
        head = head_sha(20_000 + i)
        api.diverge(prev, head)
        body = with_commits(forced, doc["after"], head, doc["before"], prev)
        out.append(push_and_wait(svc, body, f"forced-{uuid.uuid4().hex[:8]}-{i}", api))
        prev = head
    return out


def _report_pushes(launcher: str, normal: list[PushOutcome], forced: list[PushOutcome],
                   n_pipes: int) -> None:
    for kind, outs in (("normal", normal), ("force", forced)):
        for o in outs:
            if o.started != n_pipes:
                print(f"  WARNING: a {kind} push started {o.started} of {n_pipes} pipelines")
        print(f"  launcher {launcher:12s} {kind:6s} pushes: 202 -> last pipeline.started "
              + ", ".join(f"{o.to_last_start * 1000:.0f}" for o in outs) + " ms; "
              + "-> delivery.processed "
              + ", ".join(f"{o.to_processed * 1000:.0f}" for o in outs) + " ms; compare calls "
              + ", ".join(str(o.api_calls) for o in outs))


# --- 4. matching ---------------------------------------------------------------------------


def bench_matching(ctx: Ctx) -> list[Row]:
    n_pipes, sizes = 5000, (5000, 10000, 20000, 50000)
    globs = matching.pipeline_globs(n_pipes)
    rules = matching.compile_rules(globs)
    paths = matching.changed_paths(max(sizes), n_pipes)
    n_globs = sum(len(g) for g in globs.values())
    print(f"  {n_pipes} pipelines, {n_globs} globs ({n_globs / n_pipes:.2f} each), e.g. "
          f"{globs['pipeline-00000']}; paths e.g. {paths[1]}")
    times: dict[int, float] = {}
    for n in sizes:
        subset = sorted(paths[:n])  # the processor passes sorted paths
        times[n] = matching.best_of(lambda s=subset: match(s, rules), 3)  # type: ignore[misc]
        result = match(subset, rules)
        print(f"  {n:6d} paths: {times[n]:.3f} s  ({len(result)} pipelines selected, "
              f"{sum(len(v) for v in result.values())} path matches)")
    sample = sorted(paths[:500])
    naive_t = matching.best_of(lambda: matching.naive_match(sample, rules), 1)
    agree = matching.naive_match(sample, rules) == match(sample, rules)
    naive_50k = naive_t * max(sizes) / len(sample)
    print(f"  reference: every pipeline against every path (the matcher before indexing) on "
          f"{len(sample)} paths: {naive_t:.2f} s -> {naive_50k:.1f} s for {max(sizes)} "
          f"(it is exactly linear in paths); agrees with the index on them: {agree}")
    growth = times[max(sizes)] / times[min(sizes)]
    linear = max(sizes) / min(sizes)
    return [
        Row("4 match 5,000 pipelines x 50,000 paths", times[max(sizes)], "s", naive_50k,
            "every pair", "< 0.5 s", times[max(sizes)] < 0.5 and agree),
        Row("4 growth 5,000 -> 50,000 paths", growth, "x", linear, "linear",
            "<= 1.20x linear", growth <= 1.2 * linear),
    ]


# --- 7. module map -------------------------------------------------------------------------


def bench_modules(ctx: Ctx) -> list[Row]:
    f = module_bench.run()
    return [
        Row("7 decide 5,000 template modules + deps x 50,000 paths", float(f["decide_s"]), "s",
            float(f["compile_s"]), "compiling 5,000 rules", "< 0.5 s",
            float(f["decide_s"]) < 0.5 and bool(f["agree"])),
        Row("7 growth 5,000 -> 50,000 paths", float(f["growth"]), "x", float(f["linear"]),
            "linear", "<= 1.20x linear", float(f["growth"]) <= 1.2 * float(f["linear"])),
    ]


# --- 5. memory -----------------------------------------------------------------------------


def bench_memory(ctx: Ctx, floor_rss: list[float]) -> list[Row]:
    push = fixture_bytes(PUSH_FIXTURE)
    repo = json.loads(push)["repository"]["full_name"]
    half = ctx.memory_deliveries // 2
    script = wrk.write_script(ctx.tmp / "mem.lua", url_path="/webhooks/github",
                              bodies=push_heads(256), secret=SECRET, limit=half)
    print(f"  3 x {half} deliveries (wrk -t1 -c{ctx.connections}, every one a new head: compare "
          f"and starts in the background), each batch processed to the end before measuring; "
          f"the third batch only shows where growth is heading")
    api = fakes.FakeGitHub(APP_FILES)
    rss: dict[int, dict[int, float]] = {}
    try:
        svc = start_service(ctx.tmp, "memory", [repo_entry(repo, api.url, APP_PIPELINES)])
        assert svc.proc is not None
        try:
            db = svc.workdir / "state.db"
            workers = all_workers(svc.proc.pid, WORKERS)
            rss[0] = {p: rss_mb(p) for p in workers}
            for _batch in range(3):
                target = recorded(db) + half
                t0 = time.monotonic()
                res = wrk.run_until(svc.url + "/webhooks/github", script,
                                    lambda target=target: recorded(db) >= target,  # type: ignore[misc]
                                    max_seconds=240, connections=ctx.connections)
                sent = time.monotonic() - t0
                backlog_at_end = pending(db)
                deadline = time.monotonic() + 240
                while pending(db) and time.monotonic() < deadline:
                    time.sleep(0.5)
                drained = time.monotonic() - t0 - sent
                now = worker_pids(svc.proc.pid)
                if now != workers:
                    raise RuntimeError(f"gunicorn workers changed from {workers} to {now}: "
                                       f"{_tail(svc.log_path)}")
                total = recorded(db)
                rss[total] = {p: rss_mb(p) for p in workers}
                print(f"  after {total:6d} deliveries ({res.requests} answered in {sent:.0f} s, "
                      f"{res.rps:.0f}/s, {backlog_at_end} queued then, processed "
                      f"{drained:.0f} s later, {pending(db)} left): RSS "
                      + ", ".join(f"worker {p} {v:.1f} MB" for p, v in rss[total].items())
                      + f"; master {rss_mb(svc.proc.pid):.1f} MB")
            events = {e: log_count(svc.log_path, 0, e) for e in (
                "webhook.accepted", "delivery.processed", "pipeline.started", "delivery.retry",
                "baseline.contended")}
            burst_calls = api.count() / max(1, events["webhook.accepted"])
            print(f"  log: {events}; {api.count()} compare calls "
                  f"({burst_calls:.2f} per delivery); RSS at start: "
                  + ", ".join(f"{v:.1f} MB" for v in rss[0].values()))
        finally:
            svc.stop()
    finally:
        api.close()
    marks = sorted(rss)
    mid, end, extra = rss[marks[1]], rss[marks[2]], rss[marks[3]]
    peak = max(end.values())
    growth = max(end[p] - mid[p] for p in end)
    later = max(extra[p] - end[p] for p in end)
    floor_peak = max(floor_rss) if floor_rss else None
    return [
        Row(f"5 RSS per worker after {marks[2]:,} deliveries", peak, "MB", floor_peak,
            "floor worker" if floor_rss else "", "< 100 MB", peak < 100),
        Row(f"5 RSS growth, {marks[1]:,} -> {marks[2]:,}", growth, "MB",
            max(mid.values()), f"RSS at {marks[1]:,}", "< 1 MB", growth < 1.0),
        Row(f"5 RSS growth, {marks[2]:,} -> {marks[3]:,}", later, "MB",
            max(end.values()), f"RSS at {marks[2]:,}", "", None),
        Row("5 compare calls per delivery in these bursts", burst_calls, "calls", 1.0,
            "(3: one push)", "", None),
    ]


def bench_outcome_to_status(ctx: Ctx) -> list[Row]:
    """An execution's SUCCEEDED event -> its commit status request, provider at 100 ms; the
    event is sent once the start's pending status is written."""
    push = fixture_bytes(PUSH_FIXTURE)
    doc = json.loads(push)
    api = fakes.FakeGitHub([f"svc/m{i}/x.py" for i in range(3)], delay=0.1)
    cp = fakes.FakeCodePipeline()
    repo = {**repo_entry(doc["repository"]["full_name"], api.url,
                         [{"name": "m0-deploy", "paths": ["svc/m0/**"]}]),
            "commit_status": True}
    workdir = ctx.tmp / "outcomes"
    workdir.mkdir()
    config = {"state": {"backend": "sqlite", "path": str(workdir / "state.db")},
              "launcher": {"backend": "codepipeline", "region": "us-east-1",
                           "endpoint_url": cp.url},
              "outcomes": {"api_keys": ["env:BENCH_EVENTS_KEY"], "poll_seconds": 3600},
              "repositories": [repo]}
    svc = Service(config, workdir, env={**ENV, "BENCH_EVENTS_KEY": "bench-key",
                                        "AWS_ACCESS_KEY_ID": "bench",
                                        "AWS_SECRET_ACCESS_KEY": "bench"},
                  workers=WORKERS, name="outcomes").start()
    waits: list[float] = []
    try:
        for i in range(ctx.rounds * 4):
            before, after = head_sha(10_000 + 2 * i), head_sha(10_001 + 2 * i)
            body = with_commits(push, doc["after"], after, doc["before"], before)
            check(post(svc.url + "/webhooks/github", body, f"outcome-{i}"), 202, "push")
            started = _wait_log(svc, "pipeline.started", lambda e, c=after: e.get("commit") == c)
            path = f"/statuses/{after}"
            # the pending status written (as it is long before a real execution ends)
            _wait_log(svc, "status.written", lambda e, c=after: e.get("commit") == c)
            event = {"source": "aws.codepipeline",
                     "detail-type": "CodePipeline Pipeline Execution State Change",
                     "detail": {"pipeline": "m0-deploy", "execution-id":
                                started["execution_id"], "state": "SUCCEEDED",
                                "pipeline-execution-attempt": 1}}
            answer = requests.post(svc.url + "/events/codepipeline", json=event, timeout=10,
                                   headers={"x-api-key": "bench-key"})
            answered = time.time()
            check(answer, 202, "event")
            _wait(lambda p=path: _arrivals(api, p) == 2)  # the success status
            # when the request arrived, before the stand-in's 100 ms
            arrived = [t for t, called in api.calls if called.endswith(path)][1]
            waits.append(arrived - answered)
    finally:
        svc.stop()
        api.close()
        cp.close()
    waits.sort()
    median = waits[len(waits) // 2]
    print(f"  event 202 -> status request: median {median * 1000:.0f} ms, "
          f"max {waits[-1] * 1000:.0f} ms over {len(waits)} events")
    return [Row("6 event 202 -> commit status request", median, "s", 0.1,
                "one status write", "< 0.5 s", median < 0.5)]


def bench_diff_strategies(ctx: Ctx) -> list[Row]:
    """A repository of 50,000 files, a push of 10,000 changed files across 100 commits:
    the time from the 202 to ``delivery.processed`` and the provider API calls, with
    ``diff: git`` (a git http-backend server on 127.0.0.1) and with ``diff: api`` (a
    GitHub stand-in with GitHub's 300-file cap and 20 ms a call), in one run."""
    import base64

    from tests.gitserver import GitServer, WorkClone, fast_import_history

    push = fixture_bytes(PUSH_FIXTURE)
    doc = json.loads(push)
    name = doc["repository"]["full_name"]
    auth = "Basic " + base64.b64encode(b"x-access-token:bench-token").decode()
    server = GitServer(ctx.tmp / "git-server", {auth})
    server.create(name)
    work = WorkClone(ctx.tmp / "git-work", server.url(name), auth)
    modules = [f"m{i:03d}" for i in range(200)]
    work.commit({"README.md": "bench\n"}, "root")
    base = fast_import_history(work, commits=1, paths=[
        f"services/{modules[i % 200]}/f{i}.py" for i in range(50_000)])
    changed = [f"services/{modules[i % 100]}/new{i}.py" for i in range(10_000)]  # 100 modules
    head = fast_import_history(work, commits=100, paths=changed)
    work.push("master")
    commits = work.git("rev-list", f"{base}..{head}").split()
    by_commit = {sha: changed[n::100] for n, sha in enumerate(reversed(commits))}
    api = _DiffAPI(base, head, commits, by_commit, delay=0.02)
    pipelines = [{"name": f"{m}-deploy", "paths": [f"services/{m}/**"]} for m in modules]
    print(f"  {len(commits)} commits, {len(changed)} changed files of 50,000; 200 pipelines")
    rows: list[Row] = []
    took: dict[str, float] = {}
    calls: dict[str, int] = {}
    try:
        for strategy in ("api", "git"):
            repo = {**repo_entry(name, api.url, pipelines), "diff": strategy,
                    "git_url": server.url(name), "api_token": "env:BENCH_GIT_TOKEN"}
            workdir = ctx.tmp / f"diff-{strategy}"
            workdir.mkdir()
            config = {"state": {"backend": "sqlite", "path": str(workdir / "state.db")},
                      "launcher": {"backend": "log"},
                      "git": {"cache_dir": str(workdir / "git")}, "repositories": [repo]}
            svc = Service(config, workdir, env={**ENV, "BENCH_GIT_TOKEN": "bench-token"},
                          workers=WORKERS, name=f"diff-{strategy}").start()
            try:
                before = api.count()
                body = with_commits(push, doc["after"], head, doc["before"], base)
                check(post(svc.url + "/webhooks/github", body, f"diff-{strategy}"), 202, "push")
                answered = time.time()
                line = _wait_log(svc, "delivery.processed", lambda e: True)
                took[strategy] = ts(line) - answered
                calls[strategy] = api.count() - before
                started = len(svc.events("pipeline.started"))
                print(f"  diff: {strategy}: {took[strategy]:.2f} s to the decision, "
                      f"{calls[strategy]} API calls, {started} pipelines started "
                      f"(100 changed), {line['changed_files']} changed files")
            finally:
                svc.stop()
    finally:
        api.close()
        server.close()
    rows.append(Row("8 push of 10,000 files: decision time, git", took["git"], "s",
                    took["api"], "api, 20 ms a call", "info", None))
    rows.append(Row("8 push of 10,000 files: API calls, git", calls["git"], "calls",
                    calls["api"], "api", "0", calls["git"] == 0))
    return rows


class _DiffAPI(fakes.FakeGitHub):
    """GitHub's compare (300 files at most, silently) and single-commit API over a history."""

    def __init__(self, base: str, head: str, commits: list[str],
                 files: dict[str, list[str]], delay: float) -> None:
        self.base, self.head, self.commits, self.by_commit = base, head, commits, files
        super().__init__([], delay)

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        if path.endswith(f"/compare/{self.base}...{self.head}"):
            every = [f for c in self.commits for f in self.by_commit[c]]
            return 200, {"status": "ahead", "ahead_by": len(self.commits), "behind_by": 0,
                         "total_commits": len(self.commits),
                         "commits": [{"sha": c} for c in reversed(self.commits)],
                         "files": [{"filename": f, "status": "modified"} for f in every[:300]]}
        sha = path.rsplit("/", 1)[1]
        if "/commits/" in path and sha in self.by_commit:
            return 200, {"sha": sha, "files": [{"filename": f, "status": "modified"}
                                               for f in self.by_commit[sha]]}
        return 404, {"message": "Not Found"}


def bench_pull_request(ctx: Ctx) -> list[Row]:
    """GitHub's published ``pull_request`` ``opened`` event (octokit) for a request touching
    20 modules (each with its own validate pipeline), ``diff: git`` against a git
    http-backend server, CodePipeline and the statuses stand-in at 100 ms a call: the time
    from the 202 to the last validate ``pipeline.started`` line and to the arrival of the
    summary status request (pending); and for a head touching no module, to its success
    summary."""
    import base64

    from tests.gitserver import GitServer, WorkClone

    opened = json.loads(fixture_bytes("github/pull-requests/octokit-pull_request-opened.json"))
    name, target = opened["repository"]["full_name"], opened["pull_request"]["base"]["ref"]
    auth = "Basic " + base64.b64encode(b"x-access-token:bench-token").decode()
    server = GitServer(ctx.tmp / "pr-server", {auth})
    server.create(name)
    work = WorkClone(ctx.tmp / "pr-work", server.url(name), auth)
    modules = [f"m{i:02d}" for i in range(20)]
    base = work.commit({f"services/{m}/main.go": "0\n" for m in modules} | {"README.md": "0\n"})
    work.push(target)
    api = fakes.FakeGitHub([], delay=0.1)
    cp = fakes.FakeCodePipeline(delay=0.1)
    repo = {**repo_entry(name, api.url, [
        {"name": f"{m}-deploy", "paths": [f"services/{m}/**"], "validate": f"{m}-validate",
         "source_action": "Source"} for m in modules]),
        "diff": "git", "git_url": server.url(name), "api_token": "env:BENCH_GIT_TOKEN",
        "commit_status": True, "pull_requests": {"targets": [target]}}
    workdir = ctx.tmp / "pull-requests"
    workdir.mkdir()
    config = {"state": {"backend": "sqlite", "path": str(workdir / "state.db")},
              "launcher": {"backend": "codepipeline", "region": "us-east-1",
                           "endpoint_url": cp.url},
              "git": {"cache_dir": str(workdir / "git")}, "repositories": [repo]}
    svc = Service(config, workdir, env={**ENV, "BENCH_GIT_TOKEN": "bench-token",
                                        "AWS_ACCESS_KEY_ID": "bench",
                                        "AWS_SECRET_ACCESS_KEY": "bench"},
                  workers=WORKERS, name="pull-requests").start()
    to_start: list[float] = []
    to_summary: list[float] = []
    to_quiet: list[float] = []

    def deliver(number: int, head: str) -> float:
        work.git("push", "--quiet", "--force", "origin", f"{head}:refs/pull/{number}/head")
        doc = json.loads(json.dumps(opened))
        doc["number"] = doc["pull_request"]["number"] = number
        doc["pull_request"]["head"]["sha"] = head
        body = json.dumps(doc).encode()
        check(post(svc.url + "/webhooks/github", body, f"pr-{number}", event="pull_request"),
              202, "pull request")
        return time.time()

    try:
        for i in range(ctx.rounds * 2):
            work.git("checkout", "--quiet", "--detach", base)
            head = work.commit({f"services/{m}/main.go": f"{i + 1}\n" for m in modules})
            answered = deliver(100 + 2 * i, head)
            line = _wait_log(svc, "pull_request.validated", lambda e, h=head: e.get("head") == h)
            assert len(line["pipelines_started"]) == len(modules), line
            starts = [ts(e) for e in svc.events("pipeline.started") if e.get("commit") == head]
            to_start.append(max(starts) - answered)
            _wait(lambda h=head: _arrivals(api, f"/statuses/{h}") >= len(modules) + 1)
            summary = _summary_arrival(api, head)
            to_summary.append(summary - answered)
            work.git("checkout", "--quiet", "--detach", base)
            quiet = work.commit({"README.md": f"{i + 1}\n"})
            answered = deliver(101 + 2 * i, quiet)
            _wait(lambda h=quiet: _arrivals(api, f"/statuses/{h}") == 1)
            to_quiet.append(_summary_arrival(api, quiet) - answered)
    finally:
        svc.stop()
        api.close()
        cp.close()
        server.close()
    start, summary, quiet = (statistics.median(x) for x in (to_start, to_summary, to_quiet))
    print(f"  {len(modules)} modules changed, CodePipeline and statuses at 100 ms a call: "
          f"202 -> last validate start median {start * 1000:.0f} ms (max "
          f"{max(to_start) * 1000:.0f}), -> summary status request {summary * 1000:.0f} ms "
          f"(max {max(to_summary) * 1000:.0f}); no module: -> success summary "
          f"{quiet * 1000:.0f} ms (max {max(to_quiet) * 1000:.0f}), {len(to_start)} requests")
    return [Row("10 PR 202 -> last validate start (20)", start, "s", 0.1, "one start",
                "< 1 s", start < 1.0),
            Row("10 PR 202 -> summary status request", summary, "s", 0.1, "one status write",
                "< 3 s", summary < 3.0),
            Row("10 PR (no module) 202 -> success summary", quiet, "s", 0.1,
                "one status write", "< 1 s", quiet < 1.0)]


def _summary_arrival(api: fakes.FakeGitHub, head: str) -> float:
    """When the first summary status request for ``head`` arrived at the stand-in."""
    with api.lock:
        bodies = list(api.bodies)
    return min(t for t, path, body in bodies if path.endswith(f"/statuses/{head}")
               and json.loads(body).get("context") == "webhook-receiver/validate")


def _arrivals(api: fakes.FakeGitHub, path_end: str) -> int:
    with api.lock:
        return sum(called.endswith(path_end) for _t, called in api.calls)


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.002)


def _wait_log(svc: Service, event: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: list[dict[str, Any]] = []
    _wait(lambda: bool(found.extend(e for e in svc.events(event) if match(e)) or found))
    return found[0]


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- 9. capacity ---------------------------------------------------------------------------


def bench_capacity(ctx: Ctx) -> list[Row]:
    from tests.harness import MotoServer

    moto = MotoServer()
    try:
        results = capacity.run(ctx.tmp, fixture_bytes(PUSH_FIXTURE), post, ts,
                               lambda tmp, name, repos: start_service(tmp, name, repos),
                               {**os.environ, **ENV}, moto.url)
    finally:
        moto.close()
    rows = []
    for r in results:
        rows += [Row(f"9 pushes processed per second ({r['deployment']})", r["capacity"],
                     "req/s", r["acknowledged"], "acknowledged/s", "info", None),
                 Row(f"9 p99 202 -> start at 80 % ({r['deployment']})", r["p99"], "s",
                     r["p50"], "p50", "info", None)]
    return rows


# --- 11. slow clients ---------------------------------------------------------------------------

SLOW_CLIENTS = 64
PROBE_SECONDS = 15.0  # under attack: past the 10 s read timeout, so the attackers come back


def bench_slow_clients(ctx: Ctx) -> list[Row]:
    """/healthz and a signed push, each on a new connection every 0.1 s, while 64
    connections send their requests a byte every 0.5 s (reopened when the service closes
    them), against the same probes with no attack."""
    push = fixture_bytes(PUSH_FIXTURE)
    api = fakes.FakeGitHub(APP_FILES)
    svc = start_service(ctx.tmp, "slow", [repo_entry(json.loads(push)["repository"]["full_name"],
                                                     api.url, APP_PIPELINES)])

    def healthz() -> requests.Response:
        return requests.get(svc.url + "/healthz", timeout=10)

    def signed_push() -> requests.Response:
        return post(svc.url + "/webhooks/github", push, f"slow-{uuid.uuid4()}")

    def probe(seconds: float) -> dict[str, list[float]]:
        """Latency of each probe; an answer that is not 200/202, or none within 10 s,
        counts as 10 s."""
        times: dict[str, list[float]] = {"healthz": [], "push": []}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, call, status in (("healthz", healthz, 200), ("push", signed_push, 202)):
                t0 = time.perf_counter()
                try:
                    ok = call().status_code == status
                except requests.RequestException:
                    ok = False
                times[name].append(time.perf_counter() - t0 if ok else 10.0)
            time.sleep(0.1)
        return times

    try:
        quiet = probe(5.0)
        with Attack(svc.port, count=SLOW_CLIENTS, pause=0.5) as attack:
            time.sleep(1.0)
            attacked = probe(PROBE_SECONDS)
        timeouts = len(svc.events("http.timeout"))
    finally:
        svc.stop()
        api.close()
    rows = []
    for name in ("healthz", "push"):
        under, alone = sorted(attacked[name]), sorted(quiet[name])
        p50, top = under[len(under) // 2] * 1000, under[-1] * 1000
        print(f"  {name:8s} under attack: {len(under)} probes, p50 {p50:.1f} ms, max {top:.1f} "
              f"ms; alone: p50 {alone[len(alone) // 2] * 1000:.1f} ms, max "
              f"{alone[-1] * 1000:.1f} ms")
        rows.append(Row(f"11 {name} max under {SLOW_CLIENTS} slow clients", top, "ms",
                        alone[-1] * 1000, "alone", "< 1000 ms", top < 1000))
    print(f"  slow connections opened {attack.opened}, closed by the service "
          f"{attack.closed_by_server} (answers {sorted(set(attack.answers))}), "
          f"http.timeout lines {timeouts}")
    return rows


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11",
                        help="benchmarks to run, e.g. 1,3")
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk measurement time")
    parser.add_argument("--rounds", type=int, default=3,
                        help="benchmarks 1 and 2: interleaved rounds of each variant")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk warm-up time")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--memory-deliveries", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    only = {int(x) for x in args.only.split(",")}
    missing = [tool for tool in ("wrk", "webhook") if not _which(tool)]
    if missing and only & {1, 2, 5}:
        print(f"missing {', '.join(missing)}: apt-get install -y wrk webhook", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    ctx = Ctx(tmp, args.seconds, args.warmup, args.connections, args.memory_deliveries,
              args.rounds)
    print(f"webhook-receiver benchmarks: {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {_version(['wrk', '-v'])}, "
          f"{_version(['webhook', '-version'])}; scratch {tmp} ({_fstype(tmp)}); "
          f"load average {_loadavg()}")
    started = time.monotonic()
    rows: list[Row] = []
    floor_rss: list[float] = []
    benches: list[tuple[int, str, Callable[[], list[Row]]]] = [
        (1, "acknowledgement throughput and latency", lambda: bench_ack(ctx, floor_rss)),
        (2, "answer latency under a slow provider", lambda: bench_slow_provider(ctx)),
        (3, "push to pipelines started", lambda: bench_push_to_start(ctx)),
        (4, "matching at scale", lambda: bench_matching(ctx)),
        (5, "memory per worker", lambda: bench_memory(ctx, floor_rss)),
        (6, "execution outcome to commit status", lambda: bench_outcome_to_status(ctx)),
        (7, "module map at scale", lambda: bench_modules(ctx)),
        (8, "diff strategies on a 10,000-file push", lambda: bench_diff_strategies(ctx)),
        (9, "sustained capacity of one task", lambda: bench_capacity(ctx)),
        (10, "pull request to validate starts and summary", lambda: bench_pull_request(ctx)),
        (11, "slow and many clients", lambda: bench_slow_clients(ctx)),
    ]
    failed = False
    for number, title, fn in benches:
        if number not in only:
            continue
        t0 = time.monotonic()
        print(f"\n[{number}] {title}")
        try:
            rows += fn()
        except Exception:  # one broken benchmark must not hide the others' figures
            failed = True
            traceback.print_exc()
        print(f"  ({time.monotonic() - t0:.0f} s)")
    print(f"\nResults ({time.monotonic() - started:.0f} s in all; load average at the end "
          f"{_loadavg()})\n")
    print_table(rows)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 1 if failed else 0


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _which(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return f"{cmd[0]} missing"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].split(" [")[0] if text else cmd[0]


def _fstype(path: Path) -> str:
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, fstype = line.split()[:3]
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return f"{kind} at {best}"


if __name__ == "__main__":
    sys.exit(main())

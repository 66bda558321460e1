"""The ``codepipeline`` launcher against moto's server mode, alone and behind the processor.

moto speaks the real CodePipeline wire protocol from a separate process, so these tests
exercise boto3's serialization, botocore's error parsing and the launcher's translation
into LaunchError. What botocore sends is captured with a ``before-call`` event hook on
the default boto3 session the launcher builds its client from. moto ignores
``clientRequestToken``, so any second execution it records is a real double start.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import boto3
import pytest

from providers.base import Diff, Provider
from receiver.config import Config, LauncherConfig, RepositoryConfig, parse
from receiver.errors import LaunchError
from receiver.events import Delivery, PushEvent
from receiver.launcher import CodePipelineLauncher, StartRequest
from receiver.logging import configure
from receiver.processor import Processor
from receiver.state.base import Baseline
from receiver.state.sqlite import SQLiteStore
from tests.harness import FakeAPI, MotoServer, Recorded, create_pipelines, executions

# Once, at import (outside any capsys test), so structlog writes to whatever sys.stdout is
# when a line is logged and capsys sees every line.
configure()

BASE = hashlib.sha1(b"base").hexdigest()
HEAD = hashlib.sha1(b"head").hexdigest()
OTHER = hashlib.sha1(b"other").hexdigest()
REPO = "acme/mono"
BRANCH = "main"
WORKER = "test-worker"

API, WEB, JOBS = "api-deploy", "web-deploy", "jobs-deploy"
EXISTING = [API, WEB]  # JOBS is configured but never created in moto
# What moto reports for the variables each existing pipeline is started with (see config()).
EXPECTED_VARIABLES: dict[str, list[dict[str, str]]] = {
    API: [{"name": "DEPLOY_REF", "resolvedValue": f"{HEAD[:12]}@{BRANCH}"}],
    WEB: [],
}


def token(pipeline: str, commit: str) -> str:
    """The idempotency token the design fixes: sha256 of ``pipeline\\0commit``, hex."""
    return hashlib.sha256(f"{pipeline}\0{commit}".encode()).hexdigest()


def execution_ids(moto: MotoServer, pipeline: str) -> list[str]:
    """Ids of every execution moto holds for ``pipeline``."""
    return [e["pipelineExecutionId"] for e in executions(moto.url, pipeline)]


def launcher_for(moto: MotoServer) -> CodePipelineLauncher:
    """A launcher pointed at the moto server, as the brief's LauncherConfig spells it."""
    return CodePipelineLauncher(LauncherConfig(backend="codepipeline", region="us-east-1",
                                               endpoint_url=moto.url))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The StartPipelineExecution request bodies botocore serialized, in order.

    A fresh default session (restored by monkeypatch) keeps the hook out of other tests;
    clients copy the session's event emitter when created, so the hook must be in place
    before the launcher's first start.
    """
    session = boto3.session.Session()
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    bodies: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        bodies.append(json.loads(params["body"]))

    session.events.register("before-call.codepipeline.StartPipelineExecution", capture)
    return bodies


# --- the launcher alone ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "source_action", "sent_variables", "sent_revisions"),
    [
        pytest.param((), None, None, None, id="bare"),
        pytest.param(
            (("COMMIT", HEAD), ("BRANCH", BRANCH)), None,
            [{"name": "COMMIT", "value": HEAD}, {"name": "BRANCH", "value": BRANCH}], None,
            id="variables"),
        pytest.param(
            (), "Source", None,
            [{"actionName": "Source", "revisionType": "COMMIT_ID", "revisionValue": HEAD}],
            id="source-revision"),
        pytest.param(
            (("COMMIT", HEAD), ("CHANGED", "")), None,
            [{"name": "COMMIT", "value": HEAD}], None,
            id="empty-variable-left-out"),
    ],
)
def test_starts_one_execution_and_returns_its_id(
        moto: MotoServer, sent: list[dict[str, Any]],
        variables: tuple[tuple[str, str], ...], source_action: str | None,
        sent_variables: list[dict[str, str]] | None,
        sent_revisions: list[dict[str, str]] | None) -> None:
    create_pipelines(moto.url, [API])
    request = StartRequest(pipeline=API, commit=HEAD, branch=BRANCH, repository=REPO,
                           variables=variables, source_action=source_action)

    execution_id = launcher_for(moto).start(request)

    assert execution_ids(moto, API) == [execution_id]
    assert len(sent) == 1
    body = sent[0]
    assert body["name"] == API
    assert body["clientRequestToken"] == token(API, HEAD) == request.client_request_token
    assert body.get("variables") == sent_variables
    assert body.get("sourceRevisions") == sent_revisions
    cp = boto3.client("codepipeline", endpoint_url=moto.url, region_name="us-east-1")
    stored = cp.get_pipeline_execution(pipelineName=API, pipelineExecutionId=execution_id)
    assert stored["pipelineExecution"]["variables"] == [
        {"name": v["name"], "resolvedValue": v["value"]} for v in sent_variables or []]


def test_warm_makes_the_client_without_the_network_and_the_first_start_uses_it(
        moto: MotoServer, sent: list[dict[str, Any]]) -> None:
    # nothing listens on port 9: a warm-up that called AWS would fail here
    offline = CodePipelineLauncher(LauncherConfig(backend="codepipeline", region="us-east-1",
                                                  endpoint_url="http://127.0.0.1:9"))
    offline.warm()
    assert offline._client is not None
    create_pipelines(moto.url, [API])
    launcher = launcher_for(moto)
    launcher.warm()
    warmed = launcher._client
    launcher.start(StartRequest(API, HEAD, BRANCH, REPO))
    assert launcher._client is warmed
    assert len(sent) == 1


def test_client_request_token_is_stable_for_a_commit_and_differs_for_another(
        moto: MotoServer, sent: list[dict[str, Any]]) -> None:
    create_pipelines(moto.url, [API])
    launcher = launcher_for(moto)
    # the token must not depend on anything but (pipeline, commit): a retry from another
    # delivery may carry other variables
    first = StartRequest(API, HEAD, BRANCH, REPO, variables=(("RUN", "1"),))
    again = StartRequest(API, HEAD, BRANCH, REPO, variables=(("RUN", "2"),))
    other = StartRequest(API, OTHER, BRANCH, REPO, variables=(("RUN", "1"),))

    for request in (first, again, other):
        launcher.start(request)

    tokens = [body["clientRequestToken"] for body in sent]
    assert tokens == [token(API, HEAD), token(API, HEAD), token(API, OTHER)]
    assert tokens[0] != tokens[2]


@pytest.mark.parametrize(
    ("pipeline", "variables", "code"),
    [
        pytest.param(JOBS, (), "PipelineNotFoundException", id="pipeline-missing"),
        pytest.param(API, (("", "x"),), "ParamValidationError", id="variable-name-empty"),
    ],
)
def test_refused_start_raises_a_final_launch_error(
        moto: MotoServer, pipeline: str, variables: tuple[tuple[str, str], ...],
        code: str) -> None:
    create_pipelines(moto.url, [API])
    request = StartRequest(pipeline, HEAD, BRANCH, REPO, variables=variables)

    with pytest.raises(LaunchError) as caught:
        launcher_for(moto).start(request)

    assert caught.value.code == code
    assert caught.value.retryable is False
    assert execution_ids(moto, API) == []


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        pytest.param("ConflictException", True, id="pipeline-busy"),
        pytest.param("ConcurrentPipelineExecutionsLimitExceededException", True,
                     id="too-many-concurrent-executions"),
        pytest.param("ValidationException", False, id="request-invalid"),
    ],
)
def test_service_error_code_decides_whether_a_retry_can_succeed(
        fake_api: FakeAPI, code: str, retryable: bool) -> None:
    # moto cannot answer these, so a local server plays CodePipeline's JSON error reply
    def refuse(_: Recorded) -> tuple[int, Any, dict[str, str]]:
        return 400, {"__type": code, "message": "refused"}, {}

    fake_api.routes["/"] = refuse
    launcher = CodePipelineLauncher(LauncherConfig(region="us-east-1",
                                                   endpoint_url=fake_api.url))

    with pytest.raises(LaunchError) as caught:
        launcher.start(StartRequest(API, HEAD, BRANCH, REPO))

    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    assert [r.headers.get("x-amz-target") for r in fake_api.requests] == [
        "CodePipeline_20150709.StartPipelineExecution"]


# --- the processor with the real launcher ------------------------------------------------


@dataclass
class StubProvider:
    """Stands in for the GitHub compare API, which cannot be reached here.

    Only ``changed_files`` is implemented: the processor calls nothing else (see
    :func:`as_providers`).
    """

    paths: frozenset[str]
    calls: list[tuple[str, str]] = field(default_factory=list)
    name: str = "github"
    content_types: tuple[str, ...] = ("application/json",)

    def changed_files(self, repo: RepositoryConfig, base: str, head: str) -> Diff:
        """The fixed difference, recording which range was asked for."""
        self.calls.append((base, head))
        return Diff("ahead", self.paths)


def as_providers(stub: StubProvider) -> dict[str, Provider]:
    """The processor's provider registry (the cast covers webhook methods it never calls)."""
    return {"github": cast(Provider, stub)}


def config(moto: MotoServer) -> Config:
    """Three pipelines with different rules; only API and WEB exist in moto."""
    return parse({
        "launcher": {"backend": "codepipeline", "region": "us-east-1",
                     "endpoint_url": moto.url},
        "repositories": [{
            "provider": "github", "name": REPO,
            "webhook_secrets": ["env:LAUNCHER_TEST_WEBHOOK_SECRET"],
            "branches": [BRANCH],
            "pipelines": [
                {"name": API, "paths": ["services/api/**", "!**/*.md"],
                 "variables": {"DEPLOY_REF": "{short_commit}@{branch}"},
                 "source_action": "Source"},
                {"name": WEB, "paths": ["services/web/**"]},
                {"name": JOBS, "paths": ["services/jobs/**"]},
            ],
        }],
    })


@dataclass
class Rig:
    """A processor over a real SQLite file and the real launcher, and its parts."""

    config: Config
    store: SQLiteStore
    provider: StubProvider
    processor: Processor

    @property
    def repo(self) -> RepositoryConfig:
        repo = self.config.repository("github", REPO)
        assert repo is not None
        return repo

    def baselines(self) -> dict[str, Baseline]:
        return self.store.baselines(self.repo.key, BRANCH)

    def deliver(self, delivery_id: str) -> Delivery:
        """Record a delivery of the BASE..HEAD push and claim it as the worker would."""
        event = PushEvent(provider="github", repository=REPO, ref_type="branch",
                          ref_name=BRANCH, before=BASE, after=HEAD)
        now = time.time()
        assert self.store.record_delivery(
            Delivery(delivery_id, "github", REPO, (event,)), now)
        claimed = self.store.claim_delivery(WORKER, 60.0, now)
        assert claimed is not None and claimed.delivery_id == delivery_id
        return claimed

    def finish(self, delivery: Delivery) -> None:
        self.store.finish_delivery(delivery, WORKER, "processed", time.time())


def make_rig(moto: MotoServer, db: Path, paths: frozenset[str], *, seeded: bool = True) -> Rig:
    """A processor as the service builds it; ``seeded``: every baseline already at BASE.

    Unseeded, the push is the first one seen and BASE is only its ``before``.
    """
    cfg = config(moto)
    store = SQLiteStore(str(db))
    store.init()
    provider = StubProvider(paths)
    rig = Rig(cfg, store, provider,
              Processor(cfg, store, CodePipelineLauncher(cfg.launcher),
                        providers=as_providers(provider)))
    if seeded:
        for pipeline in rig.repo.pipelines:
            assert store.advance_baseline(Baseline(rig.repo.key, BRANCH, pipeline.name), BASE,
                                          time.time())
    return rig


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook secret the configuration references (resolved at parse time)."""
    monkeypatch.setenv("LAUNCHER_TEST_WEBHOOK_SECRET", "not-used-by-these-tests")


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Every stdout line written since the last call, each parsed as one JSON object."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


PROCESS_CASES = [
    pytest.param(frozenset({"services/api/handler.py", "services/jobs/cron.py"}),
                 [API], [WEB], [JOBS], id="api-and-missing-jobs-changed"),
    pytest.param(frozenset({"services/web/app.ts", "services/jobs/cron.py"}),
                 [WEB], [API], [JOBS], id="web-and-missing-jobs-changed"),
    pytest.param(frozenset({"services/api/README.md", "services/web/app.ts",
                            "services/jobs/cron.py"}),
                 [WEB], [API], [JOBS], id="api-change-only-excluded-markdown"),
    pytest.param(frozenset({"services/api/handler.py", "services/web/app.ts"}),
                 [API, WEB], [JOBS], [], id="missing-pipeline-unchanged-is-not-contacted"),
]


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize("seeded", [
    pytest.param(True, id="baselines-at-base"),
    pytest.param(False, id="first-push-seen"),
])
@pytest.mark.parametrize(("paths", "started", "unchanged", "failed"), PROCESS_CASES)
def test_processor_starts_exactly_the_matched_pipelines_in_codepipeline(
        moto: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        paths: frozenset[str], started: list[str], unchanged: list[str],
        failed: list[str], seeded: bool) -> None:
    create_pipelines(moto.url, EXISTING)
    rig = make_rig(moto, tmp_path / "s.db", paths, seeded=seeded)
    before = rig.baselines()
    delivery = rig.deliver("delivery-1")
    log_lines(capsys)  # only the processing is under test

    rig.processor.process(delivery)

    lines = log_lines(capsys)
    ids = {name: execution_ids(moto, name) for name in EXISTING}
    assert {name: len(found) for name, found in ids.items()} == {
        name: int(name in started) for name in EXISTING}
    assert rig.provider.calls == [(BASE, HEAD)]

    assert lines, "processing wrote no log line"
    for line in lines:
        assert {"ts", "level", "event"} <= line.keys()
        assert (line["delivery_id"], line["provider"], line["repository"]) == (
            "delivery-1", "github", REPO)
    started_lines = [line for line in lines if line["event"] == "pipeline.started"]
    assert {line["pipeline"]: line["execution_id"] for line in started_lines} == {
        name: ids[name][0] for name in started}
    assert all(line["commit"] == HEAD for line in started_lines)
    failed_lines = [line for line in lines if line["event"] == "pipeline.start_failed"]
    assert sorted(line["pipeline"] for line in failed_lines) == failed
    assert all(line["level"] == "error" and "PipelineNotFoundException" in line["error"]
               for line in failed_lines)
    (summary,) = [line for line in lines if line["event"] == "delivery.processed"]
    assert sorted(summary["pipelines_started"]) == started
    assert sorted(summary["pipelines_unchanged"]) == unchanged
    assert sorted(summary["pipelines_failed"]) == failed
    assert summary["changed_files"] == len(paths)

    after = rig.baselines()
    for name in started:
        assert (after[name].commit, after[name].last_started_commit,
                after[name].last_execution_id) == (HEAD, HEAD, ids[name][0])
    for name in unchanged:
        assert (after[name].commit, after[name].last_execution_id) == (HEAD, None)
    for name in failed:
        # the failed start keeps its pipeline at what this push was compared from
        assert (after[name].commit, after[name].last_started_commit,
                after[name].last_execution_id) == (BASE, None, None)
        if seeded:
            assert after[name] == before[name]

    cp = boto3.client("codepipeline", endpoint_url=moto.url, region_name="us-east-1")
    for name in started:
        stored = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=ids[name][0])
        assert stored["pipelineExecution"]["variables"] == EXPECTED_VARIABLES[name]


Again = Callable[[Rig, Delivery, Path], None]


def _new_delivery_id(rig: Rig, delivery: Delivery, db: Path) -> None:
    rig.finish(delivery)
    rig.processor.process(rig.deliver("delivery-2"))


def _same_delivery_again(rig: Rig, delivery: Delivery, db: Path) -> None:
    rig.processor.process(delivery)


def _after_restart(rig: Rig, delivery: Delivery, db: Path) -> None:
    # a new process: its own store connection, launcher and boto3 client; same state file
    store = SQLiteStore(str(db))
    Processor(rig.config, store, CodePipelineLauncher(rig.config.launcher),
              providers=as_providers(rig.provider)).process(delivery)


def _baseline_rewound(rig: Rig, delivery: Delivery, db: Path) -> None:
    # as if the process died between StartPipelineExecution and moving the baseline: only
    # the start intent stands between this re-run and a second execution
    for name in EXISTING:
        assert rig.store.advance_baseline(rig.baselines()[name], BASE, time.time())
    rig.processor.process(delivery)


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize("again", [
    pytest.param(_new_delivery_id, id="redelivered-under-a-new-delivery-id"),
    pytest.param(_same_delivery_again, id="same-delivery-processed-again"),
    pytest.param(_after_restart, id="same-delivery-after-a-restart"),
    pytest.param(_baseline_rewound, id="baseline-not-advanced-after-the-start"),
])
def test_processing_the_same_push_again_adds_no_execution(
        moto: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        again: Again) -> None:
    create_pipelines(moto.url, EXISTING)
    paths = frozenset({"services/api/handler.py", "services/web/app.ts",
                       "services/jobs/cron.py"})
    rig = make_rig(moto, tmp_path / "s.db", paths)
    delivery = rig.deliver("delivery-1")
    rig.processor.process(delivery)
    first = {name: execution_ids(moto, name) for name in EXISTING}
    assert all(len(found) == 1 for found in first.values())
    log_lines(capsys)

    again(rig, delivery, tmp_path / "s.db")

    assert {name: execution_ids(moto, name) for name in EXISTING} == first
    assert [line for line in log_lines(capsys) if line["event"] == "pipeline.started"] == []
    after = rig.baselines()
    for name in EXISTING:
        assert (after[name].commit, after[name].last_execution_id) == (HEAD, first[name][0])


def test_moto_records_a_second_execution_for_a_repeated_token(moto: MotoServer) -> None:
    """The premise of the no-double-start tests: moto does not deduplicate by token."""
    create_pipelines(moto.url, [API])
    launcher = launcher_for(moto)
    request = StartRequest(API, HEAD, BRANCH, REPO)

    ids = [launcher.start(request), launcher.start(request)]

    assert sorted(execution_ids(moto, API)) == sorted(ids)
    assert ids[0] != ids[1]

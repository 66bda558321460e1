"""End to end: the status page under gunicorn (docs/ui.md).

One service with history (tests/ui_scene.py: three pushes, their outcomes, a committed
file named ``<script>alert(1)</script>.py``) behind HTTP Basic; one behind ALB OIDC, its
tokens signed with the test's own key and served by a key-endpoint stand-in; one with
``auth: none`` on 127.0.0.1; one without ``ui``.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from receiver.ui.views import CONTENT_SECURITY_POLICY
from tests.alb_tokens import ARN, EMAIL, KID, OTHER_ARN, Signer, key_endpoint
from tests.harness import FakeAPI, Service, free_port
from tests.test_github_e2e import REPO
from tests.ui_scene import ALICE, ENV, MARKUP_FILE, USERS, Scene, basic, scene, service_config

PAGES = ["/ui/", "/ui/deliveries", "/ui/pipelines/web-deploy", "/ui/pull-requests"]


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    users = [f"env:{name}" for name in USERS]
    with scene(tmp_path_factory.mktemp("ui"), {"auth": "basic", "basic": {"users": users}}) \
            as running:
        yield running


def row(page: str, pipeline: str) -> str:
    """The front page's table row of ``pipeline`` (its HTML)."""
    found = re.search(rf'<tr class="pipeline" data-pipeline="{re.escape(pipeline)}">(.*?)</tr>',
                      page, re.S)
    assert found, page
    return found.group(1)


def cells(row_html: str) -> list[str]:
    """The text of each cell of a row as a reader sees it: a line break or list item is a
    space, other tags are dropped, entities decoded, spaces collapsed."""
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", re.sub(
        r"<(br|li)\b[^>]*>", " ", cell))).split())
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.S)]


def test_the_page_lists_each_pipeline_with_its_deployed_commit_and_last_execution(
        shown: Scene) -> None:
    page = shown.get("/ui/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    # pipeline: deployed commit, last execution's status, baseline (an unchanged pipeline's
    # moves with each push)
    expected = {
        "collections-deploy": (shown.c1, "Succeeded", shown.c2),
        "utilities-deploy": (shown.root, "Succeeded", shown.c2),
        "web-deploy": (shown.root, "InProgress", shown.c2),
    }
    for pipeline, (deployed, status, baseline) in expected.items():
        name, deployed_cell, execution, baseline_cell, *_ = cells(row(page.text, pipeline))
        assert name == pipeline
        assert deployed_cell == deployed[:12]
        assert execution.startswith(status)
        assert shown.execution(pipeline) in execution
        assert baseline_cell == baseline[:12]
    # the execution links to its page in the AWS console, in the launcher's region
    execution_id = shown.execution("web-deploy")
    assert (f'href="https://eu-west-1.console.aws.amazon.com/codesuite/codepipeline/pipelines/'
            f'web-deploy/executions/{execution_id}/timeline?region=eu-west-1"') in page.text
    assert f"{REPO} <span class=\"muted\">(github)</span> · branch <code>master</code>" \
        in page.text
    backlog = re.search(r'<ul class="facts" id="backlog">(.*?)</ul>', page.text, re.S)
    assert backlog and "pending deliveries<b>0</b>" in backlog.group(1)


def test_a_committed_file_name_with_markup_arrives_escaped(shown: Scene) -> None:
    for path in (f"/ui/deliveries?commit={shown.c1}", "/ui/deliveries",
                 "/ui/deliveries?pipeline=collections-deploy"):
        page = shown.get(path)
        assert page.status_code == 200
        assert "<script>" not in page.text.lower()
        assert html.escape(MARKUP_FILE, quote=False) in page.text, path


@pytest.mark.parametrize(("query", "deliveries"), [
    ("", ["web", "markup", "new-branch"]),
    (f"repository=github:{REPO}", ["web", "markup", "new-branch"]),
    ("repository=github:acme/other", []),
    ("branch=master", ["web", "markup", "new-branch"]),
    ("branch=main", []),
    ("commit={c1}", ["markup"]),
    ("commit={c1}&branch=main", []),
    ("pipeline=web-deploy", ["web", "markup", "new-branch"]),
    ("pipeline=nobody", []),
    ("limit=1", ["web"]),
])
def test_deliveries_are_filtered_by_repository_branch_commit_and_pipeline(
        shown: Scene, query: str, deliveries: list[str]) -> None:
    page = shown.get("/ui/deliveries?" + query.format(c1=shown.c1))
    assert page.status_code == 200
    assert re.findall(r'<article class="record" data-delivery="([^"]+)">', page.text) == \
        deliveries


def test_a_delivery_says_why_each_pipeline_started_or_not(shown: Scene) -> None:
    page = shown.get(f"/ui/deliveries?commit={shown.c1}").text
    decisions = {name: cells(tr) for name, tr in re.findall(
        r'<tr class="decision" data-pipeline="([^"]+)">(.*?)</tr>', page, re.S)}
    _, verdict, why, execution = decisions["collections-deploy"]
    assert verdict == "started"
    assert f"baseline {shown.root[:12]}, diff compare" in why
    assert f"{MARKUP_FILE} (svc/collections/**)" in why
    assert execution == f"{shown.execution('collections-deploy')} Succeeded"
    assert decisions["web-deploy"][1:] == ["unchanged", f"baseline {shown.root[:12]}, diff "
                                           "compare", "none"]
    # the first push: a new branch counts every pipeline as changed, incomplete
    first = shown.get(f"/ui/deliveries?commit={shown.root}").text
    assert "(incomplete: every pipeline counted as changed)" in first
    assert "new branch with no baseline" in first


def test_a_pipeline_page_lists_its_starts_and_outcomes(shown: Scene) -> None:
    page = shown.get("/ui/pipelines/web-deploy")
    assert page.status_code == 200
    starts = [cells(tr) for tr in re.findall(r'<tr class="start">(.*?)</tr>', page.text, re.S)]
    assert [(s[2], s[3], s[4].split(" ")[0]) for s in starts] == [
        ("started", shown.execution("web-deploy", 1), "InProgress"),
        ("started", shown.execution("web-deploy", 0), "Succeeded")]
    assert shown.get("/ui/pipelines/nobody-deploy").status_code == 404


def test_the_pull_request_page_says_honestly_that_none_are_recorded(shown: Scene) -> None:
    page = shown.get("/ui/pull-requests")
    assert page.status_code == 200
    assert "No pull request validations recorded." in page.text


@pytest.mark.parametrize("query", [
    "limit=0", "limit=201", "limit=ten", "branch=" + "x" * 257, "pipeline=" + "p" * 257,
])
def test_a_query_beyond_the_pages_bounds_is_refused(shown: Scene, query: str) -> None:
    assert shown.get("/ui/deliveries?" + query).status_code == 400


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_a_strict_content_security_policy(shown: Scene, path: str) -> None:
    page = shown.get(path)
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert "script-src" not in policy and "unsafe" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    # no script, no external asset: the only style is inline, and the policy's hash is its
    assert "<script" not in page.text and "<link" not in page.text and "src=" not in page.text


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_anything_but_get_and_head_is_refused(shown: Scene, method: str) -> None:
    for path in PAGES:
        assert shown.get(path, method=method).status_code == 405, (method, path)


def test_head_answers_like_get_without_a_body(shown: Scene) -> None:
    answer = shown.get("/ui/", method="HEAD")
    assert (answer.status_code, answer.content) == (200, b"")


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    (basic("alice:wrong"), 401),
    (basic("mallory:correct horse battery"), 401),
    ({"Authorization": "Basic not-base64"}, 401),
    ({"Authorization": "Bearer " + ALICE["Authorization"].split()[1]}, 401),
    (ALICE, 200),
    (basic(USERS["UI_USER_2"]), 200),  # a second user (and a colon in its password)
], ids=["none", "wrong password", "unknown user", "malformed", "bearer", "alice", "bob"])
def test_basic_auth_lets_in_only_configured_users(
        shown: Scene, headers: dict[str, str], status: int) -> None:
    for path in PAGES:
        answer = shown.get(path, headers=headers)
        assert answer.status_code == status, path
        if status == 401:
            assert answer.headers["WWW-Authenticate"].startswith('Basic realm="')
            assert "Succeeded" not in answer.text and shown.c1 not in answer.text


def test_a_refused_reader_is_logged_with_why_and_no_secret(shown: Scene) -> None:
    shown.get("/ui/", headers=basic("alice:wrong-password-logged?"))
    lines = shown.svc.wait_for(lambda lines: any(e.get("event") == "ui.denied" for e in lines))
    denied = [e for e in lines if e.get("event") == "ui.denied"]
    assert denied[-1]["reason"] == "wrong user name or password"
    assert "wrong-password-logged" not in shown.svc.log_path.read_text()


# --- ALB OIDC -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def alb_service(tmp_path_factory: pytest.TempPathFactory,
                signer: Signer) -> Iterator[tuple[Service, FakeAPI]]:
    keys = key_endpoint(signer)
    workdir = tmp_path_factory.mktemp("alb")
    ui = {"auth": "alb-oidc", "alb_arn": ARN, "public_key_url": keys.url + "/{region}/{kid}"}
    svc = Service(service_config(workdir / "s.db", "https://api.github.com",
                                 "http://127.0.0.1:9", ui), workdir, env=ENV, workers=1)
    try:
        yield svc.start(), keys
    finally:
        svc.stop()
        keys.close()


@pytest.mark.parametrize(("make", "status"), [
    (lambda s: s.token(), 200),
    (lambda s: s.token(padded=False), 200),
    (lambda s: None, 401),
    (lambda s: s.token(key=Signer().key), 401),  # another key signed it
    (lambda s: s.token(signer=OTHER_ARN), 401),
    (lambda s: s.token(exp=1.0), 401),  # expired
    (lambda s: s.token(kid="00000000-0000-0000-0000-000000000000"), 401),  # no such key
], ids=["as alb sends it", "unpadded", "no header", "wrong key", "wrong signer", "expired",
        "unknown key id"])
def test_alb_oidc_lets_in_only_what_the_load_balancer_signed(
        alb_service: tuple[Service, FakeAPI], signer: Signer, make: Any, status: int) -> None:
    svc, _ = alb_service
    token = make(signer)
    headers = {} if token is None else {"x-amzn-oidc-data": token}
    for path in PAGES[:2]:
        answer = requests.get(svc.url + path, headers=headers, timeout=10)
        assert answer.status_code == status, (path, answer.text[-300:])
        assert "WWW-Authenticate" not in answer.headers  # nothing a browser could answer
        if status == 200:
            assert f"signed in as {EMAIL}" in answer.text


def test_the_load_balancers_key_is_fetched_once_per_worker(
        alb_service: tuple[Service, FakeAPI], signer: Signer) -> None:
    svc, keys = alb_service
    for _ in range(5):
        assert requests.get(svc.url + "/ui/", timeout=10,
                            headers={"x-amzn-oidc-data": signer.token()}).status_code == 200
    known = [r for r in keys.requests if r.path == f"/us-east-1/{KID}"]
    assert len(known) == 1  # one worker: fetched by the first request of any test, then kept


# --- none, and no ui --------------------------------------------------------------------


def test_none_serves_the_page_without_credentials_on_127_0_0_1(tmp_path: Path) -> None:
    svc = Service(service_config(tmp_path / "s.db", "https://api.github.com",
                                 "http://127.0.0.1:9", {"auth": "none"}), tmp_path, env=ENV,
                  workers=1)
    try:
        svc.start()
        answer = requests.get(svc.url + "/ui/", timeout=10)
        assert answer.status_code == 200
        assert "No baselines yet" in answer.text
    finally:
        svc.stop()


def test_none_on_a_bind_that_is_not_loopback_refuses_to_start(tmp_path: Path) -> None:
    svc = Service(service_config(tmp_path / "s.db", "https://api.github.com",
                                 "http://127.0.0.1:9", {"auth": "none"}), tmp_path, env=ENV)
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "serve", "--config", str(svc.config_path),
         "--bind", f"0.0.0.0:{free_port()}"], capture_output=True, text=True, env=svc.env,
        cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "ui.auth: none is allowed only when the service listens on a loopback address" \
        in done.stderr


def test_without_ui_the_pages_answer_404(tmp_path: Path) -> None:
    svc = Service(service_config(tmp_path / "s.db", "https://api.github.com",
                                 "http://127.0.0.1:9", None), tmp_path, env=ENV, workers=1)
    try:
        svc.start()
        for path in PAGES:
            assert requests.get(svc.url + path, headers=ALICE, timeout=10).status_code == 404
    finally:
        svc.stop()

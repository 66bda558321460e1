"""End to end: pull/merge requests are validated exactly, for every provider.

The service runs under gunicorn with ``diff: git`` against ``git http-backend``, the
CodePipeline stand-in and a provider API stand-in that records status writes
(tests/pr_rig.py). Each provider's published request payload is sent, signed as it signs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.gitserver import fast_import_history
from tests.pr_rig import KITS, PR, Rig, running

SUMMARY = "webhook-receiver/validate"
FILES = {"services/api/a.py": "1\n", "services/web/w.html": "1\n", "services/db/s.sql": "1\n",
         "libs/common/c.py": "1\n", "docs/d.md": "1\n", "README.md": "1\n"}


@pytest.fixture(params=sorted(KITS))
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with running(KITS[request.param], tmp_path) as r:
        yield r


def _base(rig: Rig) -> tuple[str, str]:
    """The target at C0, then moved on to C1 by a change of its own (the db module)."""
    c0 = rig.commit(FILES, "first")
    rig.work.push(rig.kit.target)
    rig.svc.start()
    rig.work.git("checkout", "--quiet", "-b", "target-line")
    c1 = rig.commit({"services/db/s.sql": "2\n"}, "the target moves on")
    rig.work.push(rig.kit.target)
    rig.work.git("checkout", "--quiet", "--detach", c0)
    return c0, c1


def test_a_request_starts_exactly_its_modules_validations_and_its_statuses_follow_them(
        rig: Rig) -> None:
    kit = rig.kit
    _, c1 = _base(rig)
    head = rig.commit({"services/web/w.html": "2\n", "libs/common/c.py": "2\n"}, "the change")
    rig.publish_request(kit.number, head)

    answer, delivery = rig.open(PR(head, c1, kit.number))
    assert answer.status_code == 202, answer.text
    line = rig.wait_line("pull_request.validated", number=kit.number)
    # web's own path and api's dependency; db changed on the target only and does not count
    assert line["pipelines_started"] == ["api-validate", "web-deploy"]
    assert line["merge_base"] != c1
    assert rig.started_at(head) == ["api-validate", "web-deploy"]
    assert len(rig.starts()) == 2
    assert {r["actionName"] for _, _, revisions in rig.starts() for r in revisions} == {"Source"}
    rig.wait_statuses(head, {"codepipeline/api-validate": ["pending"],
                             "codepipeline/web-deploy": ["pending"], SUMMARY: ["pending"]})

    rig.finish("api-validate", head, "Succeeded")
    rig.wait_statuses(head, {"codepipeline/api-validate": ["pending", "success"]})
    assert rig.statuses(head)[SUMMARY] == ["pending"]  # one still runs
    rig.finish("web-deploy", head, "Succeeded")
    rig.wait_statuses(head, {"codepipeline/web-deploy": ["pending", "success"],
                             SUMMARY: ["pending", "success"]})

    # a replay of the same delivery starts nothing
    replay = rig.deliver(kit.body(PR(head, c1, kit.number, event_id=delivery)), delivery)
    assert replay.json()["status"] == "duplicate"

    # a head that touches no module: success, so a required check does not hang
    rig.work.git("checkout", "--quiet", "--detach", c1)
    quiet = rig.commit({"README.md": "2\n"}, "words only")
    rig.publish_request(kit.number + 1, quiet)
    answer, _ = rig.open(PR(quiet, c1, kit.number + 1))
    assert answer.status_code == 202, answer.text
    rig.wait_line("pull_request.validated", number=kit.number + 1)
    rig.wait_statuses(quiet, {SUMMARY: ["success"]})
    assert "no module is affected" in rig.descriptions(quiet, SUMMARY)[-1]

    # a fork with forks: deny starts nothing and says why
    rig.work.git("checkout", "--quiet", "--detach", c1)
    forked = rig.commit({"services/api/a.py": "fork\n"}, "from a fork")
    rig.publish_request(kit.number + 2, forked)
    answer, _ = rig.open(PR(forked, c1, kit.number + 2, fork=True))
    assert answer.status_code == 202, answer.text
    rig.wait_line("pull_request.ignored", number=kit.number + 2)
    deadline_states = rig.kit.denied_states
    rig.wait_statuses(forked, {SUMMARY: [next(iter(deadline_states))]})
    assert "forks are not validated" in rig.descriptions(forked, SUMMARY)[-1]
    assert rig.started_at(forked) == []
    assert len(rig.starts()) == 2

    # why each validate pipeline ran
    shown = rig.svc.cli("history", "--pull-request", str(kit.number), "--repository",
                        kit.repository)
    assert shown.returncode == 0, shown.stderr
    assert "api-validate: started; " in shown.stdout and "validates api-deploy" in shown.stdout
    assert "via common: libs/common/c.py" in shown.stdout


GITHUB = KITS["github"]


def test_a_failed_validation_fails_the_summary(tmp_path: Path) -> None:
    with running(GITHUB, tmp_path) as rig:
        _, c1 = _base(rig)
        head = rig.commit({"services/web/w.html": "2\n", "services/api/a.py": "2\n"})
        rig.publish_request(2, head)
        rig.open(PR(head, c1, 2))
        rig.wait_line("pull_request.validated", number=2)
        rig.finish("api-validate", head, "Succeeded")
        rig.finish("web-deploy", head, "Failed")
        rig.wait_statuses(head, {"codepipeline/web-deploy": ["pending", "failure"],
                                 SUMMARY: ["pending", "failure"]})
        assert "web-deploy failed" in rig.descriptions(head, SUMMARY)[-1]
        # the status page lists the request, its summary and each validate run's outcome
        page = requests.get(rig.svc.url + "/ui/pull-requests", timeout=10)
        assert page.status_code == 200
        row = page.text[page.text.index('data-number="2"'):]
        row = row[:row.index("</tr>")]
        assert head[:12] in row and ">failure<" in row
        assert ">api-validate</a>" in row and ">Succeeded</" in row
        assert ">web-deploy</a>" in row and ">Failed</" in row


def test_a_draft_waits_until_it_is_ready_for_review(tmp_path: Path) -> None:
    with running(GITHUB, tmp_path) as rig:
        _, c1 = _base(rig)
        head = rig.commit({"services/api/a.py": "2\n"})
        rig.publish_request(2, head)
        rig.open(PR(head, c1, 2, draft=True))
        rig.wait_line("pull_request.ignored", number=2)
        rig.wait_statuses(head, {SUMMARY: ["pending"]})
        assert rig.starts() == []
        ready = json.loads(GITHUB.body(PR(head, c1, 2)).replace(b'"opened"',
                                                                  b'"ready_for_review"'))
        body = json.dumps(ready).encode()
        assert rig.deliver(body, "ready-1").status_code == 202
        rig.wait_line("pull_request.validated", number=2)
        assert rig.started_at(head) == ["api-validate"]
        # the validation's own pending summary replaces the draft's, then the outcome
        rig.wait_statuses(head, {SUMMARY: ["pending", "pending"]})
        assert rig.descriptions(head, SUMMARY)[-1] == "0 of 1 validations finished"
        rig.finish("api-validate", head, "Succeeded")
        rig.wait_statuses(head, {SUMMARY: ["pending", "pending", "success"]})


def test_a_new_head_supersedes_and_the_fast_forward_merge_still_deploys(
        tmp_path: Path) -> None:
    with running(GITHUB, tmp_path) as rig:
        c0, c1 = _base(rig)
        # the target's own push establishes the deploy baselines (db changed)
        push = {"ref": f"refs/heads/{GITHUB.target}", "before": c0, "after": c1,
                "repository": {"full_name": GITHUB.repository}}
        assert rig.deliver(json.dumps(push).encode(), "push-1", {
            **GITHUB.headers(json.dumps(push).encode(), "push-1"),
            "X-GitHub-Event": "push"}).status_code == 202
        rig.wait_line("delivery.processed", delivery_id="push-1")
        first = rig.commit({"services/web/w.html": "2\n"})
        rig.publish_request(2, first)
        rig.open(PR(first, c1, 2))
        rig.wait_line("pull_request.validated", number=2, head=first)
        # rebased onto the target: the new head supersedes the first one's summary
        rig.work.git("checkout", "--quiet", "--detach", c1)
        second = rig.commit({"services/web/w.html": "3\n"})
        rig.publish_request(2, second)
        synced = GITHUB.body(PR(second, c1, 2)).replace(b'"opened"', b'"synchronize"')
        assert rig.deliver(synced, "sync-1").status_code == 202
        rig.wait_line("pull_request.validated", number=2, head=second)
        rig.wait_statuses(first, {SUMMARY: ["pending", "error"]})
        assert "newer head" in rig.descriptions(first, SUMMARY)[-1]
        assert rig.started_at(second) == ["web-deploy"]
        rig.finish("web-deploy", second, "Succeeded")
        rig.wait_statuses(second, {SUMMARY: ["pending", "success"]})
        validation_runs = [x for name, x, _ in rig.starts() if name == "web-deploy"]

        # the fast-forward merge: the target's push of that very head deploys web
        rig.work.push(GITHUB.target)
        merged = {**push, "before": c1, "after": second}
        body = json.dumps(merged).encode()
        assert rig.deliver(body, "push-2", {**GITHUB.headers(body, "push-2"),
                                            "X-GitHub-Event": "push"}).status_code == 202
        processed = rig.wait_line("delivery.processed", delivery_id="push-2")
        assert processed["pipelines_started"] == ["web-deploy"]
        deploys = [x for name, x, _ in rig.starts() if name == "web-deploy"]
        # a deploy execution of its own: the validation of that commit did not count
        assert len(deploys) == len(validation_runs) + 1
        assert set(deploys[-1:]).isdisjoint(validation_runs)
        state = {row["pipeline"]: row for row in map(json.loads, rig.svc.cli(
            "state").stdout.splitlines())}
        assert state["web-deploy"]["last_started_commit"] == second
        assert state["db-deploy"]["baseline_commit"] == second  # unchanged: moved on

        closed = GITHUB.body(PR(second, c1, 2)).replace(b'"opened"', b'"closed"')
        assert rig.deliver(closed, "close-1").status_code == 202
        rig.wait_line("pull_request.ignored", number=2, action="closed")


def test_a_5000_file_request_across_400_commits_is_exact_with_git(tmp_path: Path) -> None:
    modules = [f"m{i:02d}" for i in range(60)]
    with running(GITHUB, tmp_path, extra={"pipelines": [
            {"name": f"{m}-deploy", "paths": [f"services/{m}/**"], "validate": f"{m}-check"}
            for m in modules], "modules": {}}) as rig:
        rig.cp.pipelines |= {f"{m}-check" for m in modules}
        c0 = rig.commit({f"services/{m}/README": "0\n" for m in modules}, "first")
        rig.work.push(GITHUB.target)
        rig.svc.start()
        paths = [f"services/m{i % 50:02d}/pkg{i % 7}/file{i}.py" for i in range(5000)]
        rig.work.git("branch", "feature")
        head = fast_import_history(rig.work, commits=400, paths=paths, branch="feature")
        rig.publish_request(2, head)
        assert rig.open(PR(head, c0, 2))[0].status_code == 202
        line = rig.wait_line("pull_request.validated", number=2, timeout=120)
        assert line["changed_files"] == 5000
        assert line["pipelines_started"] == sorted(f"m{i:02d}-check" for i in range(50))


@pytest.mark.parametrize("what", ["a head that is not hex", "no signature"])
def test_bad_input_is_refused_and_nothing_is_recorded(tmp_path: Path, what: str) -> None:
    with running(GITHUB, tmp_path) as rig:
        _, c1 = _base(rig)
        head = rig.commit({"services/api/a.py": "2\n"})
        body = GITHUB.body(PR(head, c1, 2))
        if what == "no signature":
            headers = GITHUB.headers(body, "bad-1")
            del headers["X-Hub-Signature-256"]
            answer = rig.deliver(body, "bad-1", headers)
            assert answer.status_code == 401
        else:
            body = body.replace(head.encode(), b"z" * 40)
            answer = rig.deliver(body, "bad-1")
            assert answer.status_code == 400
            assert "head is not a commit id" in answer.json()["message"]
        shown = rig.svc.cli("history", "--pull-request", "2", "--repository",
                            GITHUB.repository)
        assert shown.returncode == 1
        assert rig.starts() == []
        assert rig.statuses(head) == {}


def test_a_request_that_cannot_be_validated_gets_an_error_summary_not_a_hang(
        tmp_path: Path) -> None:
    with running(GITHUB, tmp_path) as rig:
        _, c1 = _base(rig)
        head = rig.commit({"services/api/a.py": "2\n"})
        rig.publish_request(2, head)
        rig.server.accepted.clear()  # the token is refused from now on: every fetch fails
        answer, delivery = rig.open(PR(head, c1, 2))
        assert answer.status_code == 202
        rig.wait_line("delivery.failed", delivery_id=delivery)
        rig.wait_statuses(head, {SUMMARY: ["error"]})
        assert "could not be validated" in rig.descriptions(head, SUMMARY)[-1]
        assert rig.starts() == []

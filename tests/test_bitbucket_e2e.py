"""Bitbucket Cloud end to end: the service under gunicorn, real deliveries over HTTP.

The provider API is a FakeAPI holding a small commit graph: ``commits?include=&exclude=``
walks it like ``git log include ^exclude``, and ``diffstat/{head}..{base}`` answers the tree
difference, registered only in Bitbucket's head..base order (a base..head request would get
404 and make every pipeline start). Pipelines are started by the ``log`` launcher; what
started is read from the ``pipeline.started`` log lines and ``webhook-receiver state``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import FakeAPI, Recorded, Service, fixture_bytes

SECRET = "bb-e2e-hook-secret-2b7e91d4-never-logged"
TOKEN = "bb-e2e-api-token-c5a0f3e8-never-logged"
REPO = "cloudbeers/temp"  # the repository of the update, create and multi-change fixtures
REPO_PATH = f"/2.0/repositories/{REPO}"
UPDATE = "bitbucket-cloud/jenkins-cloud-push-updatePayload.json"
MULTI = "bitbucket-cloud/jenkins-cloud-push-multipleChangesPayload.json"

COLLECTIONS = "cs/Support/CSLiveSupportSrv/Collections"
UTILITIES = "cs/Support/CSLiveSupportSrv/Utilities"
PIPELINES = [
    {"name": "collections-deploy", "paths": [f"{COLLECTIONS}/**", "!**/*.md"]},
    {"name": "utilities-deploy", "paths": [f"{UTILITIES}/**"]},
    {"name": "release-deploy", "paths": ["release/**"], "tags": ["v*"]},
]

# commits named by the fixtures, and one made up for the second push
UPDATE_OLD = "501bf5b99365d1d870882254b9360c17172bda0e"
UPDATE_NEW = "e42fac24456e4a56f1b7f9358afc3070e3b7ddec"
SECOND_NEW = hashlib.sha1(b"second push to main").hexdigest()
MULTI_MAIN_OLD = "fc4d1ce2853b6f1ac0d0dbad643d17ef4a6e0be7"
MULTI_MAIN_NEW = "325d37697849f4b1fe42cb19c20134af08e03a82"
MULTI_MANCHU = "e22fcb49645b4586a845938afac5eb3ac1950586"
MULTI_TAG = "1986c228494671574242f99b62d1a00a4bfb69a5"

ROOT_TREE = {
    f"{COLLECTIONS}/CollectionsService.cs": "v1",
    f"{COLLECTIONS}/README.md": "v1",
    f"{UTILITIES}/Strings.cs": "v1",
    "release/notes.txt": "v1",
}


def sign(body: bytes, secret: str = SECRET) -> str:
    """The ``X-Hub-Signature`` value Bitbucket Cloud sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- a fake Bitbucket repository -----------------------------------------------------------


@dataclass
class FakeRepo:
    """Commits (oldest first) with their parents and trees, served as Bitbucket serves them."""

    api: FakeAPI
    commits: dict[str, tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=dict)

    def commit(self, sha: str, parents: tuple[str, ...], changes: dict[str, str | None]) -> None:
        """Add ``sha`` whose tree is its first parent's with ``changes`` (None deletes)."""
        tree = dict(self.commits[parents[0]][1]) if parents else dict(ROOT_TREE)
        for path, content in changes.items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content
        self.commits[sha] = (parents, tree)
        self.api.routes[f"{REPO_PATH}/commits"] = self._commits
        for older in self.commits:
            if older != sha:
                # Bitbucket's spec is NEW..OLD; only that order is served
                self.api.routes[f"{REPO_PATH}/diffstat/{sha}..{older}"] = self._diffstat

    def _ancestry(self, sha: str) -> set[str]:
        seen: set[str] = set()
        stack = [sha]
        while stack:
            c = stack.pop()
            if c not in seen:
                seen.add(c)
                stack.extend(self.commits[c][0])
        return seen

    def _commits(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        include, exclude = rec.query["include"][0], rec.query["exclude"][0]
        if include not in self.commits or exclude not in self.commits:
            return 404, {"type": "error", "error": {"message": "Commit not found"}}, {}
        new = self._ancestry(include) - self._ancestry(exclude)
        values = [{"hash": c, "parents": [{"hash": p} for p in self.commits[c][0]]}
                  for c in reversed(self.commits) if c in new]
        return 200, {"values": values, "pagelen": int(rec.query["pagelen"][0])}, {}

    def _diffstat(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        head, base = rec.path.rsplit("/", 1)[1].split("..")
        old_tree, new_tree = self.commits[base][1], self.commits[head][1]
        values = []
        for path in sorted(set(old_tree) | set(new_tree)):
            if old_tree.get(path) != new_tree.get(path):
                values.append({
                    "type": "diffstat", "status": "modified",
                    "old": {"path": path} if path in old_tree else None,
                    "new": {"path": path} if path in new_tree else None,
                })
        return 200, {"values": values, "pagelen": 500, "size": len(values), "page": 1}, {}


def _service(workdir: Path, api: FakeAPI, branches: list[str]) -> Service:
    config = {
        "state": {"backend": "sqlite", "path": str(workdir / "state.db")},
        "launcher": {"backend": "log"},
        "repositories": [{
            "provider": "bitbucket", "name": REPO, "api_url": api.url,
            "webhook_secrets": ["env:BB_SECRET"], "api_token": "env:BB_TOKEN",
            "branches": branches, "pipelines": PIPELINES,
        }],
    }
    return Service(config, workdir, env={"BB_SECRET": SECRET, "BB_TOKEN": TOKEN}).start()


def deliver(service: Service, body: bytes, *, request_uuid: str | None = None,
            secret: str = SECRET) -> requests.Response:
    """POST ``body`` as Bitbucket Cloud does, signed over exactly those bytes."""
    headers = {
        "Content-Type": "application/json",
        "X-Event-Key": "repo:push",
        "X-Request-UUID": request_uuid or "{" + str(uuid.uuid4()) + "}",
        "X-Hook-UUID": "{7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d}",
        "X-Attempt-Number": "1",
        "X-Hub-Signature": sign(body, secret),
    }
    return requests.post(service.url + "/webhooks/bitbucket", data=body, headers=headers,
                         timeout=10)


def processed(service: Service, delivery_id: str) -> dict[str, Any]:
    """Wait for the delivery's ``delivery.processed`` line and return it."""
    def done(lines: list[dict[str, Any]]) -> bool:
        return any(e.get("event") == "delivery.processed" and e.get("delivery_id") == delivery_id
                   for e in lines)
    lines = service.wait_for(done, timeout=30)
    return next(e for e in lines if e.get("event") == "delivery.processed"
                and e.get("delivery_id") == delivery_id)


def started(service: Service) -> list[tuple[str, str]]:
    """(pipeline, commit) of every ``pipeline.started`` line, in log order."""
    return [(e["pipeline"], e["commit"]) for e in service.events("pipeline.started")]


def state_rows(service: Service) -> dict[tuple[str, str], dict[str, Any]]:
    """``webhook-receiver state`` keyed by (branch, pipeline)."""
    out = service.cli("state")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert {r["repository"] for r in rows} <= {f"bitbucket:{REPO}"}
    return {(r["branch"], r["pipeline"]): r for r in rows}


def second_push() -> bytes:
    """updatePayload re-serialized as the next push to main: UPDATE_NEW -> SECOND_NEW."""
    doc = json.loads(fixture_bytes(UPDATE))
    change = doc["push"]["changes"][0]
    change["old"]["target"]["hash"] = UPDATE_NEW
    change["new"]["target"]["hash"] = SECOND_NEW
    return json.dumps(doc).encode()


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    fake = FakeAPI()
    yield fake
    fake.close()


# --- two pushes, redelivery, bad signature --------------------------------------------------


@pytest.fixture
def two_push_service(tmp_path: Path, api: FakeAPI) -> Iterator[tuple[Service, FakeAPI]]:
    repo = FakeRepo(api)
    repo.commit(UPDATE_OLD, (), {})
    # first push: Collections code and its README change
    repo.commit(UPDATE_NEW, (UPDATE_OLD,), {f"{COLLECTIONS}/CollectionsService.cs": "v2",
                                            f"{COLLECTIONS}/README.md": "v2"})
    # second push: only Utilities changes
    repo.commit(SECOND_NEW, (UPDATE_NEW,), {f"{UTILITIES}/Strings.cs": "v2"})
    svc = _service(tmp_path, api, ["main"])
    yield svc, api
    svc.stop()


def test_two_pushes_start_exactly_the_pipelines_of_the_modules_they_touch(
        two_push_service: tuple[Service, FakeAPI]) -> None:
    service, api = two_push_service
    first_id = "{" + str(uuid.uuid4()) + "}"
    resp = deliver(service, fixture_bytes(UPDATE), request_uuid=first_id)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"status": "accepted", "delivery_id": first_id}
    summary = processed(service, first_id)
    assert started(service) == [("collections-deploy", UPDATE_NEW)]
    assert summary["changed_files"] == 2

    second_id = "{" + str(uuid.uuid4()) + "}"
    resp = deliver(service, second_push(), request_uuid=second_id)
    assert resp.status_code == 202, resp.text
    processed(service, second_id)
    assert started(service) == [("collections-deploy", UPDATE_NEW),
                                ("utilities-deploy", SECOND_NEW)]

    rows = state_rows(service)
    assert {k: (r["baseline_commit"], r["last_started_commit"]) for k, r in rows.items()} == {
        ("main", "collections-deploy"): (SECOND_NEW, UPDATE_NEW),
        ("main", "utilities-deploy"): (SECOND_NEW, SECOND_NEW),
        ("main", "release-deploy"): (SECOND_NEW, None),
    }
    # each push cost one containment call and one diffstat page, all with the token
    paths = [r.path for r in api.requests]
    assert paths == [f"{REPO_PATH}/commits", f"{REPO_PATH}/diffstat/{UPDATE_NEW}..{UPDATE_OLD}",
                     f"{REPO_PATH}/commits", f"{REPO_PATH}/diffstat/{SECOND_NEW}..{UPDATE_NEW}"]
    assert {r.headers.get("authorization") for r in api.requests} == {f"Bearer {TOKEN}"}
    assert [r.query.get("topic") for r in api.requests if "/diffstat/" in r.path] == \
        [["false"], ["false"]]
    log_text = service.log_path.read_text(errors="replace")
    assert SECRET not in log_text and TOKEN not in log_text


def test_redelivery_answers_duplicate_and_starts_nothing(
        two_push_service: tuple[Service, FakeAPI]) -> None:
    service, api = two_push_service
    delivery_id = "{" + str(uuid.uuid4()) + "}"
    body = fixture_bytes(UPDATE)
    assert deliver(service, body, request_uuid=delivery_id).status_code == 202
    processed(service, delivery_id)
    calls = len(api.requests)

    resp = deliver(service, body, request_uuid=delivery_id)

    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "duplicate", "delivery_id": delivery_id}
    service.wait_for(lambda lines: any(e.get("event") == "webhook.duplicate"
                                       and e.get("delivery_id") == delivery_id for e in lines))
    assert started(service) == [("collections-deploy", UPDATE_NEW)]
    assert [e["delivery_id"] for e in service.events("webhook.accepted")] == [delivery_id]
    assert [e["delivery_id"] for e in service.events("delivery.processed")] == [delivery_id]
    assert len(api.requests) == calls


def test_bad_signature_is_unauthorized_and_records_nothing(
        two_push_service: tuple[Service, FakeAPI]) -> None:
    service, api = two_push_service
    delivery_id = "{" + str(uuid.uuid4()) + "}"

    resp = deliver(service, fixture_bytes(UPDATE), request_uuid=delivery_id,
                   secret="not-the-configured-secret")

    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "unauthorized"
    service.wait_for(lambda lines: any(e.get("event") == "webhook.rejected" for e in lines))
    assert service.events("webhook.accepted") == []
    assert state_rows(service) == {}
    assert api.requests == []
    # the same delivery id, correctly signed, is still new: the 401 recorded nothing
    assert deliver(service, fixture_bytes(UPDATE), request_uuid=delivery_id).status_code == 202


# --- one push moving three refs -------------------------------------------------------------


def test_multi_ref_push_evaluates_every_branch_and_tag_it_moved(tmp_path: Path,
                                                                api: FakeAPI) -> None:
    repo = FakeRepo(api)
    repo.commit(MULTI_MAIN_OLD, (), {})
    repo.commit(MULTI_MAIN_NEW, (MULTI_MAIN_OLD,), {f"{UTILITIES}/Strings.cs": "v2"})
    service = _service(tmp_path, api, ["main", "manchu"])
    try:
        delivery_id = "{" + str(uuid.uuid4()) + "}"
        resp = deliver(service, fixture_bytes(MULTI), request_uuid=delivery_id)
        assert resp.status_code == 202, resp.text
        processed(service, delivery_id)

        # main: only Utilities changed; manchu is new: every pipeline; v0.1: the tag rule
        assert sorted(started(service)) == sorted([
            ("utilities-deploy", MULTI_MAIN_NEW),
            ("collections-deploy", MULTI_MANCHU),
            ("utilities-deploy", MULTI_MANCHU),
            ("release-deploy", MULTI_MANCHU),
            ("release-deploy", MULTI_TAG),
        ])
        rows = state_rows(service)
        assert {k: (r["baseline_commit"], r["last_started_commit"])
                for k, r in rows.items()} == {
            ("main", "collections-deploy"): (MULTI_MAIN_NEW, None),
            ("main", "utilities-deploy"): (MULTI_MAIN_NEW, MULTI_MAIN_NEW),
            ("main", "release-deploy"): (MULTI_MAIN_NEW, None),
            ("manchu", "collections-deploy"): (MULTI_MANCHU, MULTI_MANCHU),
            ("manchu", "utilities-deploy"): (MULTI_MANCHU, MULTI_MANCHU),
            ("manchu", "release-deploy"): (MULTI_MANCHU, MULTI_MANCHU),
        }
        # only main needed the API: the new branch has no baseline to compare against
        assert [r.path for r in api.requests] == [
            f"{REPO_PATH}/commits", f"{REPO_PATH}/diffstat/{MULTI_MAIN_NEW}..{MULTI_MAIN_OLD}"]
    finally:
        service.stop()

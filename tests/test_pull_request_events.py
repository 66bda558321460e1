"""Every provider's published pull/merge request payloads normalize into one event.

Each fixture is a real published payload (origins in tests/fixtures/README.md); the
expected values are read from the file and written here literally. The negative cases
start from one valid payload and change exactly one thing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers import build_providers
from receiver.errors import BadRequest, Ignored
from receiver.events import Delivery, PullRequestEvent, PushEvent
from tests.harness import fixture_bytes

PROVIDERS = build_providers()


def pr(provider: str, repository: str, number: int, action: str, source: str, target: str,
       head: str, target_commit: str | None, source_ref: str | None, *, fork: bool = False,
       draft: bool = False, merge_base: str | None = None) -> PullRequestEvent:
    return PullRequestEvent(provider, repository, number, action, source, target,  # type: ignore[arg-type]
                            head, target_commit, source_ref, fork, draft, merge_base)


GH_HEAD, GH_BASE = "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
DC_WIP = "50a8ee1fae3abf75738a85f9039b4b2de4947174"
DC_MASTER = "038e7b67735e54f6de8f1c5d533c6751df524f6c"
DC_WIP5, DC_MASTER5 = ("32a0b8a740c2963c6f56bd8baf3dc05683d299e0",
                       "cde6c45a4210afe81638aa1f3aa960d633c66a90")
GT_HEAD, GT_BASE = "2eba238e33607c1fa49253182e9fff42baafa1eb", "39af58f1eff02aa308e16913e887c8d50362b474"
AZ_HEAD, AZ_BASE = "53d54ac915144006c2c9e90d2c7d3880920db49c", "a511f535b1ea495ee0c903badb68fbc83772c882"


def github(action: str, normalized: str) -> tuple[str, str, dict[str, str], PullRequestEvent]:
    return ("github", f"github/pull-requests/octokit-pull_request-{action}.json",
            {"x-github-event": "pull_request", "content-type": "application/json"},
            pr("github", "Codertocat/Hello-World", 2, normalized, "changes", "master", GH_HEAD,
               GH_BASE, "refs/pull/2/head"))


def gitea(name: str, action: str, target: str = GT_BASE) -> tuple[str, str, dict[str, str],
                                                                  PullRequestEvent]:
    return ("gitea", name, {"x-gitea-event": "pull_request"},
            pr("gitea", "jcitizen/my-repo", 1, action, "feature", "master", GT_HEAD, target,
               "refs/pull/1/head", merge_base=GT_BASE))


def azure(name: str, action: str) -> tuple[str, str, dict[str, str], PullRequestEvent]:
    return ("azure-devops", name, {},
            pr("azure-devops", "fabrikam/Fabrikam/Fabrikam", 1, action, "mytopic", "master",
               AZ_HEAD, AZ_BASE, "refs/heads/mytopic"))


BB_TEMP = "cloudbeers/temp"
NORMALIZED: list[tuple[str, str, dict[str, str], PullRequestEvent]] = [
    github("opened", "opened"), github("reopened", "opened"),
    github("synchronize", "updated"), github("ready_for_review", "ready"),
    github("closed", "closed"),
    ("gitlab", "gitlab/pull-requests/go-gitlab-webhooks-merge_request.json",
     {"x-gitlab-event": "Merge Request Hook"},
     pr("gitlab", "gitlabhq/gitlab-test", 1, "opened", "ms-viewport", "master",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", None, "refs/merge-requests/1/head")),
    ("bitbucket", "bitbucket-cloud/pull-requests/jenkins-cloud-pr-createPayloadOrigin.json",
     {"x-event-key": "pullrequest:created"},
     pr("bitbucket", BB_TEMP, 1, "opened", "foo", "main", "a72355f35fde", "f612156eff2c",
        "refs/heads/foo")),
    ("bitbucket", "bitbucket-cloud/pull-requests/jenkins-cloud-pr-createPayloadFork.json",
     {"x-event-key": "pullrequest:created"},
     pr("bitbucket", BB_TEMP, 3, "opened", "main", "main", "1c48041a96db", "1986c2284946",
        None, fork=True)),
    ("bitbucket", "bitbucket-cloud/pull-requests/jenkins-cloud-pr-updatePayload_newCommit.json",
     {"x-event-key": "pullrequest:updated"},
     pr("bitbucket", BB_TEMP, 3, "updated", "main", "main", "63e3d18dca4c", "1986c2284946",
        None, fork=True)),
    ("bitbucket", "bitbucket-cloud/pull-requests/jenkins-cloud-pr-fulfilledPayload.json",
     {"x-event-key": "pullrequest:fulfilled"},
     pr("bitbucket", BB_TEMP, 2, "merged", "foo", "main", "a72355f35fde", "f612156eff2c",
        "refs/heads/foo")),
    ("bitbucket", "bitbucket-cloud/pull-requests/jenkins-cloud-pr-rejectedPayload.json",
     {"x-event-key": "pullrequest:rejected"},
     pr("bitbucket", BB_TEMP, 3, "closed", "main", "main", "63e3d18dca4c", "5449b752db4f",
        None, fork=True)),
    ("bitbucket", "bitbucket-cloud/pull-requests/go-playground-pull-request-created.json",
     {"x-event-key": "pullrequest:created"},
     pr("bitbucket", "team_name/repo_name", 1, "opened", "branch2", "master", "d3022fc0ca3d",
        "ce5965ddd289", "refs/heads/branch2")),
    ("bitbucket-server", "bitbucket-server/pull-requests/jenkins-server-pr-newPRPayload.json",
     {"x-event-key": "pr:opened"},
     pr("bitbucket-server", "AMUNIZ/test-repos", 1, "opened", "feature/diffstat", "master",
        "251fce291f086cdde68ae2a896148abb5b58033e", "174561d625c9623b60d8aba09b7f08ddc9df45cd",
        "refs/pull-requests/1/from")),
    ("bitbucket-server", "bitbucket-server/pull-requests/go-playground-pr-opened.json",
     {"x-event-key": "pr:opened"},
     pr("bitbucket-server", "~gopher/webhook-test", 5, "opened", "feature/wip", "master",
        DC_WIP5, DC_MASTER5, "refs/pull-requests/5/from")),
    ("bitbucket-server", "bitbucket-server/pull-requests/go-playground-pr-merged.json",
     {"x-event-key": "pr:merged"},
     pr("bitbucket-server", "~gopher/webhook-test", 5, "merged", "feature/wip", "master",
        DC_WIP5, DC_MASTER5, "refs/pull-requests/5/from")),
    ("bitbucket-server", "bitbucket-server/pull-requests/go-playground-pr-declined.json",
     {"x-event-key": "pr:declined"},
     pr("bitbucket-server", "~gopher/webhook-test", 2, "closed", "feature/wip", "master",
        DC_WIP, DC_MASTER, "refs/pull-requests/2/from")),
    ("bitbucket-server", "bitbucket-server/pull-requests/go-playground-pr-deleted.json",
     {"x-event-key": "pr:deleted"},
     pr("bitbucket-server", "~gopher/webhook-test", 2, "closed", "feature/wip", "master",
        DC_WIP, DC_MASTER, "refs/pull-requests/2/from")),
    gitea("gitea/go-scm-pull_request_opened.json", "opened"),
    gitea("gitea/pull-requests/go-scm-pull_request_reopened.json", "opened"),
    gitea("gitea/pull-requests/go-scm-pull_request_synchronized.json", "updated"),
    gitea("gitea/pull-requests/go-scm-pull_request_closed.json", "closed"),
    gitea("gitea/pull-requests/go-scm-pull_request_merged.json", "merged",
          "a148a755b627ac79f86bf3447e41927e1f4ad259"),
    ("gitea", "gitea/pull-requests/go-playground-pull-request-event.json",
     {"x-gitea-event": "pull_request"},
     pr("gitea", "example/example", 2, "opened", "master", "master",
        "48e773f892a831faa47c0a160d1b7f0cd369ae2a", "67b56589a45103f891bdee7c0546e5d40bc02001",
        "refs/pull/2/head", fork=True, merge_base="67b56589a45103f891bdee7c0546e5d40bc02001")),
    azure("azure-devops/go-playground-git.pullrequest.created.json", "opened"),
    azure("azure-devops/go-scm-pr_created.json", "opened"),
    # both published "updated" samples show a completed request: a merge
    azure("azure-devops/pull-requests/go-playground-git.pullrequest.updated.json", "merged"),
    azure("azure-devops/pull-requests/go-scm-pr_updated.json", "merged"),
    azure("azure-devops/pull-requests/go-playground-git.pullrequest.merged.json", "merged"),
    azure("azure-devops/pull-requests/go-scm-pr_merged.json", "merged"),
]

IGNORED = [
    ("github", "github/pull-requests/octokit-pull_request-converted_to_draft.json",
     {"x-github-event": "pull_request", "content-type": "application/json"},
     "pull_request action 'converted_to_draft' moves no head"),
    ("bitbucket-server", "bitbucket-server/pull-requests/go-playground-pr-modified.json",
     {"x-event-key": "pr:modified"}, "event 'pr:modified' moves no pull request head"),
    ("bitbucket", "bitbucket-cloud/pull-requests/jenkins-cloud-pr-createPayloadOrigin.json",
     {"x-event-key": "pullrequest:approved"},
     "event 'pullrequest:approved' moves no pull request head"),
]


@pytest.mark.parametrize(("provider", "fixture", "headers", "expected"), NORMALIZED,
                         ids=[f"{n[0]}:{n[1].rsplit('/', 1)[1]}" for n in NORMALIZED])
def test_a_published_payload_normalizes_into_the_expected_event(
        provider: str, fixture: str, headers: dict[str, str],
        expected: PullRequestEvent) -> None:
    assert PROVIDERS[provider].pull_request(headers, fixture_bytes(fixture)) == expected


@pytest.mark.parametrize(("provider", "fixture", "headers", "reason"), IGNORED,
                         ids=[i[1].rsplit("/", 1)[1] for i in IGNORED])
def test_an_event_that_moves_no_head_is_ignored(provider: str, fixture: str,
                                                headers: dict[str, str], reason: str) -> None:
    with pytest.raises(Ignored) as caught:
        PROVIDERS[provider].pull_request(headers, fixture_bytes(fixture))
    assert caught.value.reason == reason


def test_every_pull_request_fixture_is_in_a_table() -> None:
    from tests.harness import FIXTURES

    on_disk = {str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/pull-requests/*.json")}
    listed = {row[1] for row in NORMALIZED + IGNORED} | {
        "bitbucket-cloud/pull-requests/go-playground-pull-request-merged.json",
        "bitbucket-cloud/pull-requests/jenkins-cloud-pr-updatePayload_newDestination.json",
        "bitbucket-server/pull-requests/jenkins-server-pr-deletePRPayload.json",
        "bitbucket-cloud/pull-requests/jenkins-api-commit-174561d625c9.json"}
    assert on_disk <= listed


@pytest.mark.parametrize(("provider", "fixture", "headers"), [
    ("github", "github/push", {"x-github-event": "push"}),
    ("gitlab", "gitlab/push", {"x-gitlab-event": "Push Hook"}),
    ("bitbucket", "bitbucket-cloud/push", {"x-event-key": "repo:push"}),
    ("bitbucket-server", "bitbucket-server/push", {"x-event-key": "repo:refs_changed"}),
    ("gitea", "gitea/push", {"x-gitea-event": "push"}),
    ("azure-devops", "azure-devops/push", {}),
])
def test_a_push_is_not_a_pull_request(provider: str, fixture: str,
                                      headers: dict[str, str]) -> None:
    bodies = {"github/push": "github/go-playground-push.json",
              "gitlab/push": "gitlab/go-gitlab-webhooks-push.json",
              "bitbucket-cloud/push": "bitbucket-cloud/go-playground-repo-push.json",
              "bitbucket-server/push": "bitbucket-server/jenkins-server-pushPayload.json",
              "gitea/push": "gitea/woodpecker-gitea-HookPush.json",
              "azure-devops/push": "azure-devops/go-playground-git.push.json"}
    assert PROVIDERS[provider].pull_request(headers, fixture_bytes(bodies[fixture])) is None


# --- malformed payloads: each changes one thing of a valid one ---------------------------------

OPENED = "github/pull-requests/octokit-pull_request-opened.json"
GH_HEADERS = {"x-github-event": "pull_request", "content-type": "application/json"}


def _edit(path: list[str | int], value: Any) -> bytes:
    doc = json.loads(fixture_bytes(OPENED))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("path", "value", "message"), [
    (["pull_request", "head", "sha"], "not-a-commit-id-at-all-zzzzzzzzzzzzzzzzzz",
     "head is not a commit id"),
    (["pull_request", "head", "sha"], GH_HEAD.upper(), "head is not a commit id"),
    (["pull_request", "head", "sha"], None, "needs its head commit"),
    (["number"], -2, "positive whole number"),
    (["number"], "2", "positive whole number"),
    (["pull_request", "base", "ref"], "bad..name", "target branch is not a name git accepts"),
    (["pull_request", "head", "ref"], "", "needs its source branch"),
    (["repository", "full_name"], "no-slash", "full name"),
])
def test_a_malformed_payload_is_refused(path: list[str | int], value: Any,
                                        message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        PROVIDERS["github"].pull_request(GH_HEADERS, _edit(path, value))


def test_a_head_in_another_repository_is_a_fork() -> None:
    body = _edit(["pull_request", "head", "repo", "full_name"], "someone/Hello-World")
    event = PROVIDERS["github"].pull_request(GH_HEADERS, body)
    assert event is not None and event.fork


def test_a_bitbucket_cloud_head_must_have_at_least_12_hex_digits() -> None:
    doc = json.loads(fixture_bytes(
        "bitbucket-cloud/pull-requests/jenkins-cloud-pr-createPayloadOrigin.json"))
    doc["pullrequest"]["source"]["commit"]["hash"] = "a72355f"
    with pytest.raises(BadRequest, match="head is not a commit id"):
        PROVIDERS["bitbucket"].pull_request({"x-event-key": "pullrequest:created"},
                                            json.dumps(doc).encode())


def test_a_data_center_event_key_must_match_the_signed_body() -> None:
    body = fixture_bytes("bitbucket-server/pull-requests/go-playground-pr-opened.json")
    with pytest.raises(BadRequest, match="does not match"):
        PROVIDERS["bitbucket-server"].pull_request({"x-event-key": "pr:from_ref_updated"},
                                                   body)


def test_a_gitlab_update_without_new_commits_moves_no_head() -> None:
    doc = json.loads(fixture_bytes("gitlab/pull-requests/go-gitlab-webhooks-merge_request.json"))
    doc["object_attributes"]["action"] = "update"
    with pytest.raises(Ignored, match="moves no head"):
        PROVIDERS["gitlab"].pull_request({"x-gitlab-event": "Merge Request Hook"},
                                         json.dumps(doc).encode())


@pytest.mark.parametrize(("change", "expected"), [
    ({"oldrev": "0" * 39 + "1"}, "updated"),
    ({"changes": {"draft": {"previous": True, "current": False}}}, "ready"),
])
def test_a_gitlab_update_with_new_commits_or_out_of_draft_is_read(change: dict[str, Any],
                                                                  expected: str) -> None:
    doc = json.loads(fixture_bytes("gitlab/pull-requests/go-gitlab-webhooks-merge_request.json"))
    doc["object_attributes"]["action"] = "update"
    if "oldrev" in change:
        doc["object_attributes"]["oldrev"] = change["oldrev"]
    else:
        doc["changes"] = change["changes"]
    event = PROVIDERS["gitlab"].pull_request({"x-gitlab-event": "Merge Request Hook"},
                                             json.dumps(doc).encode())
    assert event is not None and event.action == expected


# --- the stored form ------------------------------------------------------------------------


def test_a_pull_request_delivery_round_trips_through_its_stored_form() -> None:
    event = NORMALIZED[0][3]
    delivery = Delivery("d1", "github", "Codertocat/Hello-World", (), pull_request=event)
    assert Delivery.stored_fields(delivery.events_json()) == {"events": (),
                                                               "pull_request": event}
    assert delivery.ref_key == "github:Codertocat/Hello-World#pull_request:2"


def test_a_push_delivery_stored_before_pull_requests_still_reads() -> None:
    push = PushEvent("github", "a/b", "branch", "main", "a" * 40, "b" * 40)
    text = Delivery("d1", "github", "a/b", (push,)).events_json()
    assert Delivery.stored_fields(text) == {"events": (push,), "pull_request": None}


def test_a_data_center_source_branch_update_is_an_update() -> None:
    # no published pr:from_ref_updated body: Atlassian documents it as the pr:opened shape
    # plus previousFromHash, so it is built from the published pr:opened one
    doc = json.loads(fixture_bytes("bitbucket-server/pull-requests/go-playground-pr-opened.json"))
    doc.update(eventKey="pr:from_ref_updated", previousFromHash=DC_WIP)
    event = PROVIDERS["bitbucket-server"].pull_request({"x-event-key": "pr:from_ref_updated"},
                                                       json.dumps(doc).encode())
    assert event == pr("bitbucket-server", "~gopher/webhook-test", 5, "updated", "feature/wip",
                       "master", DC_WIP5, DC_MASTER5, "refs/pull-requests/5/from")

"""The Azure DevOps provider: Basic credentials, delivery ids, normalization, the Git API.

Webhook tests run ``AzureDevOpsProvider`` over the recorded ``git.push`` events in
tests/fixtures/azure-devops/ (go-scm's and go-playground's copies of Microsoft's sample,
the Jenkins TFS plugin's visualstudio.com one, Microsoft's older sample without a
repository). The API is tests.azure_devops_api.AzureDevOpsAPI on 127.0.0.1 over a
tests.gitmodel history, and Microsoft's own recorded diff answers are served page by page.
Repositories are built through ``receiver.config.parse``; ``sleep`` is injected.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest

from providers.azure_devops import DIFF_TOP, MAX_DIFF_PAGES, AzureDevOpsProvider
from providers.base import BranchHead
from receiver import config
from receiver.config import RepositoryConfig, read_secrets
from receiver.errors import (
    BadRequest,
    ConfigError,
    Ignored,
    ProviderError,
    RepositoryUnreadable,
    Unauthorized,
)
from receiver.events import PushEvent
from receiver.secrets import SecretRef
from tests.azure_devops_api import AzureDevOpsAPI, example
from tests.harness import FakeAPI, Recorded, fixture_bytes

HOOK = "receiver-hook:7c1e0b9a4f2d4e6b8a3c"
ROTATED = "receiver-hook:0d5f3a2b9c8e4d71b6a0"
PAT = "azdo-pat-52cha0123456789abcdefghijklmnopqrstuvwxyz01"
NAME = "fabrikam/Fabrikam Fiber/mono repo"  # spaces are allowed in project and repository
PUSH = "azure-devops/go-scm-push.json"


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def secrets(*values: str) -> list[SecretRef]:
    return [SecretRef(f"env:S{i}", (v,)) for i, v in enumerate(values)]


# --- verification --------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyCase:
    authorization: str | None = basic(HOOK)
    configured: tuple[str, ...] = (HOOK,)
    matches: str | None = HOOK  # the configured secret that authenticates; None: refused


VERIFY_CASES = {
    "the configured user and password are accepted": VerifyCase(),
    "the rotated second secret is accepted": VerifyCase(basic(ROTATED), (HOOK, ROTATED),
                                                        ROTATED),
    "the scheme is case-insensitive": VerifyCase("basic " + basic(HOOK).split()[1]),
    "a wrong password is refused": VerifyCase(basic("receiver-hook:guess"), matches=None),
    "a wrong user name is refused": VerifyCase(basic("someone:7c1e0b9a4f2d4e6b8a3c"),
                                               matches=None),
    "a missing Authorization is refused": VerifyCase(None, matches=None),
    "a Bearer token is refused": VerifyCase("Bearer " + HOOK, matches=None),
    "credentials that are not base64 are refused": VerifyCase("Basic ***not-base64***",
                                                              matches=None),
    "credentials without a colon are refused": VerifyCase(basic("receiver-hook"), matches=None),
    "an empty Basic value is refused": VerifyCase("Basic ", matches=None),
}


@pytest.mark.parametrize("case", VERIFY_CASES.values(), ids=VERIFY_CASES.keys())
def test_verification(case: VerifyCase) -> None:
    sent = {} if case.authorization is None else {"authorization": case.authorization}
    body = fixture_bytes(PUSH)
    if case.matches is not None:
        found = AzureDevOpsProvider().verify(sent, body, secrets(*case.configured))
        assert found.values() == (case.matches,)
    else:
        with pytest.raises(Unauthorized):
            AzureDevOpsProvider().verify(sent, body, secrets(*case.configured))


def test_the_credential_header_is_authorization() -> None:
    assert AzureDevOpsProvider.credential_headers == ("authorization",)


@pytest.mark.parametrize(("value", "problem"), [
    ("user:password", None),
    (":password-without-user", None),
    ("user:pass:with:colons", None),
    ("no-colon-at-all", "must be user:password"),
    ("user:", "must be user:password"),
])
def test_a_webhook_secret_must_be_user_colon_password(value: str, problem: str | None) -> None:
    got = AzureDevOpsProvider.webhook_secret_problem(value)
    assert got is None if problem is None else (got is not None and problem in got)


def test_start_up_names_a_webhook_secret_without_a_password(monkeypatch: Any) -> None:
    monkeypatch.setenv("AZ_HOOK", "only-a-user-name")
    cfg = config.parse({"repositories": [{
        "provider": "azure-devops", "name": NAME, "webhook_secrets": ["env:AZ_HOOK"],
        "branches": ["main"], "pipelines": [{"name": "p", "paths": ["**"]}]}]})
    with pytest.raises(ConfigError) as raised:
        read_secrets(cfg)
    assert raised.value.problems == [
        "repositories[0].webhook_secrets[0]: env:AZ_HOOK: must be user:password, the service "
        "hook's Basic authentication user name and password"]


# --- delivery ids ----------------------------------------------------------------------------


def test_the_delivery_id_is_the_events_id_from_the_verified_body() -> None:
    assert AzureDevOpsProvider().delivery_id({}, fixture_bytes(PUSH)) == \
        "03c164c2-8912-4d5e-8009-3707d5f83734"


def test_without_the_body_there_is_no_delivery_id() -> None:
    with pytest.raises(BadRequest, match="in the body"):
        AzureDevOpsProvider().delivery_id({})


@pytest.mark.parametrize(("change", "message"), [
    ({"id": None}, "missing header id"),
    ({"id": "03c164c2 8912"}, "malformed id"),
    ({"id": 42}, "missing header id"),
])
def test_a_missing_or_malformed_event_id_is_a_bad_request(change: dict[str, Any],
                                                          message: str) -> None:
    doc = json.loads(fixture_bytes(PUSH))
    doc.update(change)
    with pytest.raises(BadRequest, match=message):
        AzureDevOpsProvider().delivery_id({}, json.dumps(doc).encode())


# --- normalization ---------------------------------------------------------------------------

OLD, NEW = "aad331d8d3b131fa9ae03cf5e53965b51942618a", "33b55f7cb7e7e245323987634f960cf4a6e6bc74"
FABRIKAM = "fabrikam-fiber-inc/Fabrikam-Fiber-Git/Fabrikam-Fiber-Git"
PARSED = {
    "dev.azure.com sample (go-scm)": ("azure-devops/go-scm-push.json",
                                      PushEvent("azure-devops", FABRIKAM, "branch", "master",
                                                OLD, NEW)),
    "dev.azure.com sample (go-playground)": ("azure-devops/go-playground-git.push.json",
                                             PushEvent("azure-devops", FABRIKAM, "branch",
                                                       "main", OLD, NEW)),
    "visualstudio.com organization": ("azure-devops/jenkins-tfs-git.push-sample.json",
                                      PushEvent("azure-devops", FABRIKAM, "branch", "master",
                                                OLD, NEW)),
}


@pytest.mark.parametrize(("fixture", "expected"), PARSED.values(), ids=PARSED.keys())
def test_each_recorded_push_is_normalized(fixture: str, expected: PushEvent) -> None:
    provider = AzureDevOpsProvider()
    assert provider.parse({}, fixture_bytes(fixture)) == (expected,)


def rewritten(remote_url: str, project: str = "Fabrikam-Fiber-Git") -> bytes:
    """The go-scm sample pointed at another clone URL and project (what must point at the
    test repository)."""
    doc = json.loads(fixture_bytes(PUSH))
    repo = doc["resource"]["repository"]
    repo["remoteUrl"] = remote_url
    repo["project"]["name"] = project
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("remote_url", "project", "expected"), [
    ("https://tphoney@dev.azure.com/tphoney/test_project/_git/Fabrikam-Fiber-Git",
     "test_project", "tphoney/test_project/Fabrikam-Fiber-Git"),
    ("https://fabrikam.visualstudio.com/DefaultCollection/Fabrikam%20Fiber/_git/Fabrikam-Fiber-Git",
     "Fabrikam Fiber", "fabrikam/Fabrikam Fiber/Fabrikam-Fiber-Git"),
    ("https://tfs.example.com/tfs/DefaultCollection/My%20First%20Project/_git/Fabrikam-Fiber-Git",
     "My First Project", "DefaultCollection/My First Project/Fabrikam-Fiber-Git"),
    # Azure DevOps Server leaves the project out when the repository has its name
    ("https://tfs.example.com/tfs/Apps/_git/Fabrikam-Fiber-Git", "Fabrikam-Fiber-Git",
     "Apps/Fabrikam-Fiber-Git/Fabrikam-Fiber-Git"),
])
def test_the_organization_comes_from_the_clone_url(remote_url: str, project: str,
                                                   expected: str) -> None:
    (event,) = AzureDevOpsProvider().parse({}, rewritten(remote_url, project))
    assert event.repository == expected


def test_a_push_without_its_repository_is_a_bad_request() -> None:
    # Microsoft's older sample (and "Resource details to send: Minimal") carries none
    with pytest.raises(BadRequest, match=r"resource\.repository"):
        AzureDevOpsProvider().parse({}, fixture_bytes(
            "azure-devops/msdocs-git.push-no-repository.json"))


@pytest.mark.parametrize("fixture", ["azure-devops/go-playground-git.pullrequest.created.json",
                                     "azure-devops/go-scm-pr_created.json"])
def test_pull_request_events_are_not_pushes(fixture: str) -> None:
    with pytest.raises(Ignored, match=r"unsupported event type 'git\.pullrequest\.created'"):
        AzureDevOpsProvider().parse({}, fixture_bytes(fixture))


def test_one_event_per_branch_or_tag_and_other_refs_are_skipped() -> None:
    doc = json.loads(fixture_bytes(PUSH))
    doc["resource"]["refUpdates"] += [
        {"name": "refs/tags/v1", "oldObjectId": "0" * 40, "newObjectId": NEW},
        {"name": "refs/notes/commits", "oldObjectId": OLD, "newObjectId": NEW}]
    events = AzureDevOpsProvider().parse({}, json.dumps(doc).encode())
    assert [(e.ref_type, e.ref_name, e.before) for e in events] == [
        ("branch", "master", OLD), ("tag", "v1", None)]


@pytest.mark.parametrize(("change", "message"), [
    ({"resource": None}, "Resource details to send: All"),
    ({"resource": {"repository": {}}}, "resource.repository"),
    ({"remoteUrl": "https://example.com/no-git-segment"}, "organization"),
    ({"refUpdates": []}, "refUpdates"),
    ({"refUpdates": [{"name": "refs/heads/x", "oldObjectId": "0" * 40,
                      "newObjectId": "0" * 40}]}, "cannot both be empty"),
    ({"refUpdates": [{"name": "refs/heads/x", "oldObjectId": "xyz",
                      "newObjectId": NEW}]}, "not a commit id"),
])
def test_a_malformed_push_is_a_bad_request(change: dict[str, Any], message: str) -> None:
    doc = json.loads(fixture_bytes(PUSH))
    if "remoteUrl" in change:
        doc["resource"]["repository"]["remoteUrl"] = change["remoteUrl"]
    elif "refUpdates" in change:
        doc["resource"]["refUpdates"] = change["refUpdates"]
    else:
        doc.update(change)
    with pytest.raises(BadRequest, match=message):
        AzureDevOpsProvider().parse({}, json.dumps(doc).encode())


# --- the diffs API ---------------------------------------------------------------------------


def repository(api_url: str, name: str = NAME, **extra: Any) -> RepositoryConfig:
    os.environ["TEST_AZ_HOOK"] = HOOK
    os.environ["TEST_AZ_PAT"] = PAT
    raw = {"provider": "azure-devops", "name": name, "api_url": api_url,
           "webhook_secrets": ["env:TEST_AZ_HOOK"], "api_token": "env:TEST_AZ_PAT",
           "branches": ["main"], "pipelines": [{"name": "p", "paths": ["**"]}], **extra}
    return config.parse({"repositories": [raw]}).repositories[0]


class World:
    def __init__(self, api: FakeAPI, max_top: int = 100) -> None:
        self.api = api
        self.azure = AzureDevOpsAPI(api, NAME, PAT, max_top=max_top)
        self.git = self.azure.git
        self.root = self.git.commit(None, {"alpha/a.py": "0", "beta/b.py": "0"})
        self.sleeps: list[float] = []

    def provider(self) -> AzureDevOpsProvider:
        return AzureDevOpsProvider(sleep=self.sleeps.append)

    def repo(self) -> RepositoryConfig:
        return repository(self.api.url)

    def skips(self) -> list[str]:
        return [r.query["$skip"][0] for r in self.api.requests if r.path.endswith("/commits")]


@pytest.fixture
def world(fake_api: FakeAPI) -> World:
    return World(fake_api)


def test_an_ordinary_push_is_one_call_with_the_tree_diff_asked_for(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1", "gamma/new/g.py": "1"})

    diff = world.provider().changed_files(world.repo(), world.root, head)

    assert (diff.status, diff.paths, diff.api_calls) == (
        "ahead", frozenset({"alpha/a.py", "gamma/new/g.py"}), 1)
    (sent,) = world.api.requests
    assert sent.path == ("/fabrikam/Fabrikam%20Fiber/_apis/git/repositories/mono%20repo"
                         "/diffs/commits")
    assert {k: v[0] for k, v in sent.query.items()} == {
        "baseVersion": world.root, "baseVersionType": "commit", "targetVersion": head,
        "targetVersionType": "commit", "diffCommonCommit": "false", "$top": str(DIFF_TOP),
        "$skip": "0", "api-version": "6.0"}
    assert sent.headers["authorization"] == basic(f":{PAT}")


def test_a_file_on_page_3_of_100_change_pages_is_counted(world: World) -> None:
    # 240 changed files under docs/ come first; services/zeta/z.py sorts onto page 3
    head = world.git.commit(world.root, {**{f"docs/page{i:03d}.md": "1" for i in range(240)},
                                         "services/zeta/z.py": "1"})

    diff = world.provider().changed_files(world.repo(), world.root, head)

    assert diff.paths is not None and "services/zeta/z.py" in diff.paths
    assert len(diff.paths) == 241
    # 241 files and their 3 folders: pages of 100 at skips 0, 100, 200
    assert world.skips() == ["0", "100", "200"]
    assert diff.api_calls == 3


def test_where_top_is_honoured_one_call_lists_a_thousand_changes(fake_api: FakeAPI) -> None:
    world = World(fake_api, max_top=10_000)
    head = world.git.commit(world.root, {f"docs/{i:04d}.md": "1" for i in range(2500)})
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is not None and len(diff.paths) == 2500
    assert world.skips() == ["0", "1000", "2000"]


def test_without_change_counts_the_pages_are_read_to_an_empty_one(world: World) -> None:
    world.azure.counts = False
    head = world.git.commit(world.root, {f"docs/{i:03d}.md": "1" for i in range(150)})
    diff = world.provider().changed_files(world.repo(), world.root, head)
    assert diff.paths is not None and len(diff.paths) == 150
    assert world.skips() == ["0", "100", "151"]


def serve_recorded(world: World, fixture: str, top: int) -> None:
    """Microsoft's recorded diff answer, served ``top`` changes at a time by $skip."""
    body = example(fixture)

    def route(rec: Recorded) -> Any:
        if not rec.path.endswith("/diffs/commits"):
            return world.azure.route(rec)
        skip = int(rec.query["$skip"][0])
        return 200, {**body, "changes": body["changes"][skip:skip + top]}, {}

    world.api.routes = type(world.api.routes)(route)


@pytest.mark.parametrize("top", [2, 7, 100])
def test_microsofts_recorded_diff_gives_its_files_and_no_folders_at_any_page_size(
        world: World, top: int) -> None:
    serve_recorded(world, "ms-api-diffs-commits.json", top)
    diff = world.provider().changed_files(world.repo(), "c" * 40, "d" * 40)
    assert diff.status == "ahead"
    assert diff.paths == frozenset({
        "CustomerAddressModule/CustomerAddressModule/Form1.cs",
        "CustomerAddressModule/CustomerAddressModule/Program.cs",
        "HelloWorld/src/HelloWorld.java", "MyWebSite/MyWebSite/Project_Readme.html",
        "MyWebSite/MyWebSite/Startup.cs", "MyWebSite/MyWebSite/Views/Home/_Register.cshtml",
        "MyWebSite/MyWebSite/Web.config", "readme.md"})
    assert len(world.skips()) == -(-16 // top)  # its changeCounts say 16 changes


def test_microsofts_diverged_branches_example_is_diverged(world: World) -> None:
    serve_recorded(world, "ms-api-diffs-branches.json", 100)  # aheadCount 17, behindCount 1
    diff = world.provider().changed_files(world.repo(), "c" * 40, "d" * 40)
    assert diff.status == "diverged"
    assert diff.paths is not None and len(diff.paths) == 19  # 30 changes, 11 of them folders


def test_go_scms_recorded_compare_answer_is_one_edited_file_ahead(world: World) -> None:
    body = json.loads(fixture_bytes("azure-devops/go-scm-api-compare.json"))
    world.api.routes = type(world.api.routes)(lambda rec: (200, body, {}))
    diff = world.provider().changed_files(world.repo(), body["baseCommit"], body["targetCommit"])
    assert (diff.status, diff.paths, diff.api_calls) == ("ahead", frozenset({"testfile"}), 1)


def test_a_list_that_ends_before_its_change_count_is_incomplete(world: World) -> None:
    body = example("ms-api-diffs-commits.json")

    def short(rec: Recorded) -> Any:
        skip = int(rec.query["$skip"][0])
        return 200, {**body, "changes": body["changes"][:5] if skip == 0 else []}, {}

    world.api.routes = type(world.api.routes)(short)
    diff = world.provider().changed_files(world.repo(), "c" * 40, "d" * 40)
    assert diff.paths is None
    assert diff.reason == "diffs listed 5 of the 16 changes it counted"


def test_a_server_that_ignores_skip_is_incomplete_not_counted_twice(world: World) -> None:
    body = example("ms-api-diffs-commits.json")  # changeCounts: 16
    first_two = {**body, "changes": body["changes"][:2]}
    world.api.routes = type(world.api.routes)(lambda rec: (200, first_two, {}))
    diff = world.provider().changed_files(world.repo(), "c" * 40, "d" * 40)
    assert diff.paths is None
    assert diff.reason == "diffs answered the same page for another $skip"
    assert world.skips() == ["0", "2"]


def test_refs_sharing_the_prefix_are_read_at_most_five_pages(world: World) -> None:
    world.azure.heads.update({f"main-{i:03d}": "b" * 40 for i in range(600)})
    with pytest.raises(ProviderError, match="more than 5 pages"):
        world.provider().branch_head(world.repo(), "main", None)
    assert len(world.api.requests) == 5


def test_a_server_that_never_ends_is_read_only_to_the_page_cap(world: World) -> None:
    body = example("ms-api-diffs-commits.json")
    del body["changeCounts"]  # hostile: no count, and a page is never empty

    def endless(rec: Recorded) -> Any:
        skip = rec.query["$skip"][0]
        return 200, {**body, "changes": [{**c, "item": {**c["item"], "path": f"/{skip}/{i}"}}
                                         for i, c in enumerate(body["changes"])]}, {}

    world.api.routes = type(world.api.routes)(endless)
    started = time.monotonic()
    diff = world.provider().changed_files(world.repo(), "c" * 40, "d" * 40)
    assert diff.paths is None
    assert diff.reason == f"diffs needed more than {MAX_DIFF_PAGES} pages"
    assert len(world.api.requests) == MAX_DIFF_PAGES
    assert time.monotonic() - started < 60  # orders of magnitude above the ~1 s it takes


def test_a_head_already_in_the_base_is_behind_from_the_first_page(world: World) -> None:
    newer = world.git.commit(world.root, {"alpha/a.py": "1"})
    diff = world.provider().changed_files(world.repo(), newer, world.root)
    assert (diff.status, diff.paths, diff.api_calls) == ("behind", frozenset(), 1)


def test_a_force_push_is_the_tree_difference_both_ways(world: World) -> None:
    dropped = world.git.commit(world.root, {"alpha/a.py": "dropped"})
    rewritten = world.git.commit(world.root, {"beta/b.py": "rewritten"})
    diff = world.provider().changed_files(world.repo(), dropped, rewritten)
    assert (diff.status, diff.paths) == ("diverged", frozenset({"alpha/a.py", "beta/b.py"}))


def test_a_baseline_that_is_gone_is_incomplete_after_one_check(world: World) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    diff = world.provider().changed_files(world.repo(), "f" * 40, head)
    assert (diff.status, diff.paths) == ("diverged", None)
    assert world.api.requests[-1].path.endswith("/_apis/git/repositories/mono%20repo")


@pytest.mark.parametrize(("change", "status"), [
    ({"readable": False}, 404), ({"token": "wrong"}, 401), ({"sign_in": True}, 203)])
def test_a_repository_that_cannot_be_read_is_unreadable(world: World, change: dict[str, Any],
                                                        status: int) -> None:
    head = world.git.commit(world.root, {"alpha/a.py": "1"})
    world.azure.readable = change.get("readable", True)
    world.azure.sign_in_page = change.get("sign_in", False)
    repo = world.repo()
    if "token" in change:
        repo = dataclasses.replace(repo, api_token=SecretRef("env:X", (change["token"],)))
    else:
        world.azure.token = "another-pat" if change.get("sign_in") else PAT
    with pytest.raises(RepositoryUnreadable, match=f"HTTP {status}"):
        world.provider().changed_files(repo, world.root, head)


def test_a_name_that_is_not_organization_project_repository_says_so(world: World) -> None:
    with pytest.raises(ProviderError, match="organization/project/repository"):
        world.provider().changed_files(repository(world.api.url, "fabrikam/mono"), "a" * 40,
                                       "b" * 40)


# --- branch heads, statuses, files, links ------------------------------------------------------


def test_the_branch_is_the_exact_ref_among_those_the_prefix_filter_lists(world: World) -> None:
    world.azure.heads.update({"main": "a" * 40, "main-patch": "b" * 40, "mainline": "c" * 40})
    assert world.provider().branch_head(world.repo(), "main", None) == BranchHead("a" * 40)
    sent = world.api.requests[0]
    assert sent.query["filter"] == ["heads/main"]


def test_a_branch_on_a_later_refs_page_is_found_by_continuation(world: World) -> None:
    world.azure.heads.update({f"main-{i:03d}": "b" * 40 for i in range(150)})
    world.azure.heads["main"] = "c" * 40  # listed after the 150 others
    assert world.provider().branch_head(world.repo(), "main", None).sha == "c" * 40
    assert [r.query.get("continuationToken") for r in world.api.requests] == [None, ["100"]]


def test_a_missing_branch_has_no_head_but_a_hidden_repository_is_an_error(world: World) -> None:
    world.azure.heads["main-patch"] = "b" * 40
    assert world.provider().branch_head(world.repo(), "main", None).sha is None
    world.azure.readable = False
    with pytest.raises(ProviderError, match="not found"):
        world.provider().branch_head(world.repo(), "main", None)


def test_microsofts_recorded_refs_answer_gives_the_exact_branch(world: World) -> None:
    body = example("ms-api-refs-heads.json")
    world.api.routes = type(world.api.routes)(lambda rec: (200, body, {}))
    head = world.provider().branch_head(world.repo(), "master", None)
    assert head.sha == "ffe9cba521f00d7f60e322845072238635edb451"
    assert world.provider().branch_head(world.repo(), "feature", None).sha is None


def test_go_scms_recorded_filter_answer_gives_main_not_main_patch(world: World) -> None:
    body = json.loads(fixture_bytes("azure-devops/go-scm-api-branches_filter.json"))
    world.api.routes = type(world.api.routes)(lambda rec: (200, body, {}))
    assert world.provider().branch_head(world.repo(), "main", None).sha == \
        "e0aee6aa543294d62520fb906689da6710af149c"


def test_the_module_map_file_is_read_as_bytes_at_the_commit(world: World) -> None:
    head = world.git.commit(world.root, {"ci/.webhook-receiver.yaml": "pipelines: []\n"})
    provider, repo = world.provider(), world.repo()
    assert provider.file_content(repo, "ci/.webhook-receiver.yaml", head) == b"pipelines: []\n"
    sent = world.api.requests[0]
    assert sent.headers["accept"] == "application/octet-stream"
    assert (sent.query["path"], sent.query["versionDescriptor.versionType"]) == (
        ["/ci/.webhook-receiver.yaml"], ["commit"])
    assert provider.file_content(repo, "ci/.webhook-receiver.yaml", world.root) is None


def test_git_takes_the_pat_as_the_basic_password_of_an_empty_user() -> None:
    repo = repository("https://dev.azure.com")
    assert AzureDevOpsProvider().git_authorization(repo) == basic(f":{PAT}")

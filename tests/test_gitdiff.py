"""The git diff strategy against a real ``git http-backend`` on 127.0.0.1 (tests/gitserver.py).

Nothing is mocked: every test commits and pushes with git to the served repository and reads
the answer from a real blobless mirror.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers import REGISTRY
from receiver.config import parse
from receiver.errors import ConfigError, ProviderError
from receiver.gitdiff import (
    ENV_PASSED,
    FETCH_CHUNK,
    GitMirror,
    _env,
    local_changed_files,
    ref_problem,
)
from receiver.logging import configure
from tests.gitserver import GitServer, WorkClone, basic, fast_import_history, git, serving
from tests.harness import free_port

REPO = "acme/mono"
TOKEN = "ghs_TestToken0123456789abcdefSECRET"
WRONG_TOKEN = "ghs_WrongToken9876543210zyxwvSECRET"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with serving(tmp_path / "server", REPO, TOKEN) as srv:
        yield srv


@pytest.fixture
def work(server: GitServer, tmp_path: Path) -> WorkClone:
    clone = WorkClone(tmp_path / "work", server.url(REPO), basic("x-access-token", TOKEN))
    clone.commit({"README.md": "hello\n", "services/billing/app.py": "v1\n"}, "first")
    clone.push()
    return clone


def github_auth(token: str = TOKEN) -> Callable[[], str]:
    """What GitHubProvider.git_authorization sends for ``token``."""
    return lambda: basic("x-access-token", token)


def mirror_for(server: GitServer, cache: Path, token: str = TOKEN,
               fetch_timeout: float = 120.0) -> GitMirror:
    return GitMirror(provider="github", name=REPO, url=server.url(REPO), cache_dir=cache,
                     authorization=github_auth(token), fetch_timeout=fetch_timeout)


@pytest.fixture
def mirror(server: GitServer, tmp_path: Path) -> GitMirror:
    return mirror_for(server, tmp_path / "cache")


def objects(path: Path) -> list[str]:
    """The type of every object in a repository."""
    out = git("cat-file", "--batch-all-objects", "--batch-check=%(objecttype)", cwd=path)
    return out.split()


# --- authentication and URLs ------------------------------------------------------------------


def repository(provider: str, username: str | None = None, token: str = "T0K") -> Any:
    """A repository of ``provider`` as the configuration validates it, token in the env."""
    os.environ["TEST_GIT_AUTH_TOKEN"] = token
    name = "acme/platform/mono" if provider == "azure-devops" else "acme/mono"
    raw: dict[str, Any] = {"provider": provider, "name": name,
                           "api_url": REGISTRY[provider].default_api_url or "https://scm.example",
                           "webhook_secrets": ["env:X"], "api_token": "env:TEST_GIT_AUTH_TOKEN",
                           "branches": ["main"], "pipelines": [{"name": "p", "paths": ["**"]}]}
    if username:
        raw["api_username"] = username
    return parse({"repositories": [raw]}).repositories[0]


@pytest.mark.parametrize(("provider", "username", "expected"), [
    ("github", None, basic("x-access-token", "T0K")),
    ("gitlab", None, basic("oauth2", "T0K")),
    ("bitbucket", None, basic("x-token-auth", "T0K")),
    ("bitbucket", "dev@example.com", basic("x-bitbucket-api-token-auth", "T0K")),
    ("bitbucket-server", None, "Bearer T0K"),
    ("gitea", None, basic("T0K", "")),  # the token as the user name, no password
    ("azure-devops", None, basic("", "T0K")),  # the PAT as the password of no user
])
def test_each_provider_authenticates_git_with_its_documented_scheme(
        provider: str, username: str | None, expected: str) -> None:
    repo = repository(provider, username)
    assert REGISTRY[provider]().git_authorization(repo) == expected


@pytest.mark.parametrize(("provider", "username"), [
    ("github", None), ("gitlab", None), ("bitbucket", None), ("bitbucket", "dev@example.com"),
    ("bitbucket-server", None), ("gitea", None), ("azure-devops", None),
])
def test_each_providers_header_is_what_the_fetch_sends(tmp_path: Path, provider: str,
                                                       username: str | None) -> None:
    implementation = REGISTRY[provider]()
    repo = repository(provider, username, token=TOKEN)
    expected = implementation.git_authorization(repo)
    assert expected is not None
    srv = GitServer(tmp_path / "server", {expected})
    try:
        srv.create(REPO)
        mirror = GitMirror(provider=provider, name=REPO, url=srv.url(REPO),
                           cache_dir=tmp_path / "cache",
                           authorization=lambda: implementation.git_authorization(repo))
        # let in (a 401 would raise): the empty repository then lacks the branch
        assert mirror.fetch(["main"]) is False
        assert srv.requests
        assert {r.authorization for r in srv.requests} == {expected}
    finally:
        srv.close()


def test_a_repository_without_a_token_sends_no_git_authorization() -> None:
    repo = repository("github")
    assert REGISTRY["github"]().git_authorization(
        dataclasses.replace(repo, api_token=None)) is None


@pytest.mark.parametrize(("provider", "api_url", "name", "expected"), [
    ("github", None, "acme/mono", "https://github.com/acme/mono.git"),
    ("gitlab", None, "acme/mono", "https://gitlab.com/acme/mono.git"),
    ("bitbucket", None, "acme/mono", "https://bitbucket.org/acme/mono.git"),
    ("github", "https://ghe.example/api/v3", "acme/mono", None),  # self-managed: unknown
    ("bitbucket-server", "https://scm.example", "ACME/mono", None),
    ("gitea", "https://git.example/api/v1", "acme/mono", "https://git.example/acme/mono.git"),
    ("azure-devops", None, "acme/Mono Project/mono",
     "https://dev.azure.com/acme/Mono%20Project/_git/mono"),
    ("azure-devops", None, "acme/mono", None),  # not organization/project/repository
])
def test_default_git_url_per_provider(provider: str, api_url: str | None, name: str,
                                      expected: str | None) -> None:
    raw = {"provider": provider, "name": name, "diff": "git",
           "webhook_secrets": ["env:X"], "branches": ["main"],
           "pipelines": [{"name": "p", "paths": ["**"]}]}
    if api_url is not None:
        raw["api_url"] = api_url
    if expected is None:
        with pytest.raises(ConfigError, match="git_url: is required"):
            parse({"repositories": [raw]})
        return
    assert parse({"repositories": [raw]}).repositories[0].git_url == expected


def test_mirror_lives_under_the_cache_dir_by_provider_and_quoted_name(tmp_path: Path) -> None:
    mirror = GitMirror(provider="gitlab", name="group/sub/proj", url="https://x/y.git",
                       cache_dir=tmp_path)
    assert mirror.path == tmp_path / "gitlab" / "group%2Fsub%2Fproj.git"


# --- changed files ------------------------------------------------------------------------------


def test_first_fetch_makes_a_blobless_mirror(server: GitServer, work: WorkClone,
                                            mirror: GitMirror) -> None:
    assert mirror.fetch(["main"]) is True
    assert git("config", "remote.origin.promisor", cwd=mirror.path).strip() == "true"
    assert git("config", "remote.origin.partialclonefilter", cwd=mirror.path).strip() == "blob:none"
    kinds = objects(mirror.path)
    assert "commit" in kinds and "tree" in kinds
    assert "blob" not in kinds
    assert git("rev-parse", "refs/heads/main", cwd=mirror.path).strip() == work.head()


def test_changed_files_of_an_ordinary_push(work: WorkClone, mirror: GitMirror) -> None:
    base = work.head()
    mirror.fetch(["main"])
    work.commit({"services/billing/app.py": "v2\n", "docs/é.md": "new\n"})
    head = work.commit({"services/search/index.py": "new\n"})
    work.push()
    assert mirror.fetch(["main", head]) is True
    diff = mirror.changed_files(base, head)
    assert diff.status == "ahead"
    assert diff.paths == {"services/billing/app.py", "docs/é.md", "services/search/index.py"}
    assert diff.reason is None


def test_a_rename_counts_its_old_and_new_path(work: WorkClone, mirror: GitMirror) -> None:
    base = work.head()
    head = work.rename("services/billing/app.py", "services/payments/app.py")
    work.push()
    mirror.fetch(["main"])
    assert mirror.changed_files(base, head).paths == {"services/billing/app.py",
                                                      "services/payments/app.py"}


def test_a_delete_counts(work: WorkClone, mirror: GitMirror) -> None:
    base = work.head()
    head = work.commit({"services/billing/app.py": None})
    work.push()
    mirror.fetch(["main"])
    assert mirror.changed_files(base, head).paths == {"services/billing/app.py"}


def test_a_force_push_that_drops_commits_counts_their_files(work: WorkClone,
                                                            mirror: GitMirror) -> None:
    start = work.head()
    work.commit({"services/billing/app.py": "v2\n"})
    baseline = work.commit({"services/legacy/old.py": "x\n"})
    work.push()
    mirror.fetch(["main"])  # the pipeline ran at ``baseline``
    work.reset(start)
    head = work.commit({"services/search/index.py": "new\n"})
    work.push(force=True)
    mirror.fetch(["main"])
    diff = mirror.changed_files(baseline, head)
    assert diff.status == "diverged"
    # what a deployment at the baseline has that the new head lacks, and the reverse
    assert diff.paths == {"services/billing/app.py", "services/legacy/old.py",
                          "services/search/index.py"}


def test_a_head_contained_in_the_base_is_behind_with_no_paths(work: WorkClone,
                                                              mirror: GitMirror) -> None:
    old = work.head()
    new = work.commit({"services/billing/app.py": "v2\n"})
    work.push()
    mirror.fetch(["main"])
    assert mirror.changed_files(new, old).status == "behind"
    assert mirror.changed_files(new, old).paths == frozenset()
    same = mirror.changed_files(new, new)
    assert (same.status, same.paths) == ("identical", frozenset())


def test_a_base_the_mirror_lacks_is_fetched_by_id(server: GitServer, work: WorkClone,
                                                  mirror: GitMirror) -> None:
    start = work.head()
    head = work.commit({"services/billing/app.py": "v2\n"})
    work.push()
    other = WorkClone(work.path.parent / "other", server.url(REPO),
                      basic("x-access-token", TOKEN))
    other.git("fetch", "--quiet", "origin", "main")
    other.git("checkout", "--quiet", "-b", "feature", start)
    side = other.commit({"services/side/x.py": "x\n"})
    other.push("feature")
    mirror.fetch(["main"])  # the mirror never saw branch feature
    before = server.fetches(REPO)
    diff = mirror.changed_files(side, head)
    assert server.fetches(REPO) == before + 1
    assert diff.status == "diverged"
    assert diff.paths == {"services/side/x.py", "services/billing/app.py"}


def test_a_base_force_pushed_away_and_collected_is_incomplete_after_one_fetch_of_it(
        server: GitServer, work: WorkClone, mirror: GitMirror) -> None:
    start = work.head()
    mirror.fetch(["main"])
    gone = work.commit({"services/billing/app.py": "v2\n"})
    work.push()  # delivered, but this mirror never fetched it
    work.reset(start)
    head = work.commit({"services/search/index.py": "new\n"})
    work.push(force=True)
    server.gc(REPO)
    mirror.fetch(["main"])
    before = server.fetches(REPO)
    diff = mirror.changed_files(gone, head)
    assert diff.paths is None
    assert diff.reason is not None and "base commit" in diff.reason
    assert gone[:12] in diff.reason and "not in the repository" in diff.reason
    assert server.fetches(REPO) == before + 1


def test_a_bursts_refs_come_in_one_fetch(server: GitServer, work: WorkClone,
                                         mirror: GitMirror) -> None:
    branches = [f"release/2026.{n:02d}" for n in range(40)]
    work.git("push", "--quiet", "origin", *(f"HEAD:refs/heads/{b}" for b in branches))
    heads = [work.commit({f"services/s{n}.py": "x\n"}) for n in range(3)]
    work.push(branches[0])
    before = server.fetches(REPO)
    assert mirror.fetch(["main", *branches, *heads]) is True
    assert server.fetches(REPO) == before + 1
    # 40-odd wants make a request body git compresses: the server inflated it
    assert any("gzip" in r.encoding for r in server.requests)
    assert git("for-each-ref", "--count=100", "--format=%(refname)", "refs/heads/",
               cwd=mirror.path).split() == sorted(
        ["refs/heads/main", *(f"refs/heads/{b}" for b in branches)])


def test_a_deleted_branch_makes_fetch_report_false_not_fail(server: GitServer, work: WorkClone,
                                                            mirror: GitMirror) -> None:
    assert mirror.fetch(["main", "gone-branch"]) is False
    assert mirror.fetch(["main"]) is True


# --- refusals and failures ----------------------------------------------------------------------


def _texts(exc: BaseException) -> str:
    """Every text an exception chain carries (str, repr, args of each link)."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), *map(str, seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(out)


def _tree_contains(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n!r}" for n in needles if n in data]
    return found


def test_a_wrong_token_is_a_provider_error_that_leaks_the_token_nowhere(
        server: GitServer, work: WorkClone, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    capsys.readouterr()
    cache = tmp_path / "cache"
    mirror = mirror_for(server, cache, token=WRONG_TOKEN)
    with pytest.raises(ProviderError) as caught:
        mirror.fetch(["main"])
    header = basic("x-access-token", WRONG_TOKEN)
    secrets = [WRONG_TOKEN, header, header.split()[1]]
    text = _texts(caught.value)
    assert REPO in text and "401" in text
    assert not [s for s in secrets if s in text]
    logged = capsys.readouterr()
    assert not [s for s in secrets if s in logged.out + logged.err]
    assert not _tree_contains(cache, [s.encode() for s in secrets])
    # the refused request did carry the header: the server saw it and said no
    assert any(r.status == 401 and r.authorization == header for r in server.requests)


def test_a_good_token_is_written_into_no_file_of_the_mirror(server: GitServer, work: WorkClone,
                                                            mirror: GitMirror,
                                                            tmp_path: Path) -> None:
    assert mirror.fetch(["main"])
    header = basic("x-access-token", TOKEN)
    assert not _tree_contains(tmp_path / "cache",
                              [s.encode() for s in (TOKEN, header, header.split()[1])])


def test_a_repository_the_token_cannot_access_is_a_provider_error(
        server: GitServer, work: WorkClone, mirror: GitMirror) -> None:
    server.forbidden.add(REPO)
    with pytest.raises(ProviderError, match="403"):
        mirror.fetch(["main"])


def test_a_repository_not_found_is_a_provider_error(server: GitServer, tmp_path: Path) -> None:
    mirror = GitMirror(provider="github", name="acme/missing", url=server.url("acme/missing"),
                       cache_dir=tmp_path / "cache", authorization=github_auth())
    with pytest.raises(ProviderError, match=r"acme/missing.*not found"):
        mirror.fetch(["main"])


def test_an_unreachable_server_is_a_provider_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/acme/mono.git"
    mirror = GitMirror(provider="github", name=REPO, url=url, cache_dir=tmp_path / "cache",
                       authorization=github_auth())
    with pytest.raises(ProviderError, match="acme/mono") as caught:
        mirror.fetch(["main"])
    assert TOKEN not in _texts(caught.value)


def test_a_fetch_that_hangs_is_stopped_by_its_time_out(server: GitServer, work: WorkClone,
                                                       tmp_path: Path) -> None:
    server.delay = 30.0
    mirror = mirror_for(server, tmp_path / "cache", fetch_timeout=1.0)
    answered = len(server.requests)
    with pytest.raises(ProviderError, match="timed out after 1 s"):
        mirror.fetch(["main"])
    # it gave up while the server still held the request (requests are logged once
    # answered): git's children, which hold the connection, were killed with it, not awaited
    assert len(server.requests) == answered
    assert _processes_mentioning(server.url(REPO)) == []


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (after a short settling wait)."""
    deadline = time.monotonic() + 10
    while True:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in argv:
                found.append(argv)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_cache_dir_that_cannot_be_written_is_a_provider_error(server: GitServer,
                                                               tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(ProviderError, match="cannot lock the mirror of github:acme/mono"):
        mirror_for(server, blocker / "cache").fetch(["main"])


def test_a_changed_files_base_that_is_not_a_commit_id_is_refused(mirror: GitMirror) -> None:
    with pytest.raises(ValueError):
        mirror.changed_files("main", "a" * 40)


# --- repair ---------------------------------------------------------------------------------------


def _delete(path: Path) -> None:
    shutil.rmtree(path)


def _garble_head(path: Path) -> None:
    (path / "HEAD").write_bytes(b"\x00garbage")


def _remove_objects(path: Path) -> None:
    shutil.rmtree(path / "objects")


@pytest.mark.parametrize("damage", [
    pytest.param(_delete, id="deleted mirror directory"),
    pytest.param(_garble_head, id="garbled HEAD"),
    pytest.param(_remove_objects, id="objects directory removed"),
])
def test_a_deleted_or_corrupt_mirror_is_cloned_again(work: WorkClone, mirror: GitMirror,
                                                     damage: Callable[[Path], None]) -> None:
    base = work.head()
    mirror.fetch(["main"])
    damage(mirror.path)
    head = work.commit({"services/billing/app.py": "v2\n"})
    work.push()
    assert mirror.fetch(["main"]) is True
    assert mirror.changed_files(base, head).paths == {"services/billing/app.py"}
    git("fsck", "--connectivity-only", "--no-progress", cwd=mirror.path)


# --- concurrency ------------------------------------------------------------------------------------

_CHILD = """
import base64, json, os, sys, time
from receiver.gitdiff import GitMirror
cache, url, go, base, head = sys.argv[1:]
while not os.path.exists(go):
    time.sleep(0.005)
auth = "Basic " + base64.b64encode(
    ("x-access-token:" + os.environ["TEST_GIT_TOKEN"]).encode()).decode()
m = GitMirror(provider="github", name="acme/mono", url=url, cache_dir=cache,
              authorization=lambda: auth)
ok = m.fetch(["main"])
print(json.dumps({"ok": ok, "paths": sorted(m.changed_files(base, head).paths)}))
"""


def test_two_threads_and_two_processes_fetching_one_mirror_at_once_do_not_corrupt_it(
        server: GitServer, work: WorkClone, tmp_path: Path) -> None:
    base = work.head()
    head = work.commit({"services/billing/app.py": "v2\n", "libs/common/x.py": "x\n"})
    work.push()
    cache, go = tmp_path / "cache", tmp_path / "go"
    server.delay = 0.2  # widen every request, so unserialized fetches would overlap
    env = {**os.environ, "TEST_GIT_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(cache), server.url(REPO),
                               str(go), base, head], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results: list[object] = []

    def thread_fetch() -> None:
        while not go.exists():
            time.sleep(0.005)
        mirror = mirror_for(server, cache)
        ok = mirror.fetch(["main"])
        results.append({"ok": ok, "paths": sorted(mirror.changed_files(base, head).paths or ())})

    threads = [threading.Thread(target=thread_fetch) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let the interpreters start and wait at the line
    go.touch()
    for t in threads:
        t.join(timeout=120)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    expected = {"ok": True, "paths": ["libs/common/x.py", "services/billing/app.py"]}
    assert results == [expected] * 4
    # the lock let one fetch talk to the server at a time, and the mirror is whole
    assert server.most_at_once() == 1
    assert server.fetches(REPO) == 4
    mirror = mirror_for(server, cache)
    git("fsck", "--connectivity-only", "--no-progress", cwd=mirror.path)
    assert not list(cache.glob("github/*.new"))


# --- scale -------------------------------------------------------------------------------------------


def test_a_push_of_5000_files_across_400_commits_gives_exactly_those_paths(
        work: WorkClone, mirror: GitMirror) -> None:
    base = work.head()
    mirror.fetch(["main"])
    paths = [f"services/mod{i % 50:02d}/pkg{i % 7}/file{i}.py" for i in range(5000)]
    head = fast_import_history(work, commits=400, paths=paths)
    assert int(work.git("rev-list", "--count", f"{base}..{head}")) == 400
    work.push()
    assert mirror.fetch(["main"]) is True
    diff = mirror.changed_files(base, head)
    assert diff.status == "ahead"
    assert diff.paths == set(paths)


# --- a local clone (explain --git-dir) --------------------------------------------------------------


def test_local_changed_files_needs_no_token_and_no_network(server: GitServer,
                                                           work: WorkClone) -> None:
    base = work.head()
    head = work.commit({"services/billing/app.py": "v2\n"})
    server.close()
    diff = local_changed_files(work.path, base, head)
    assert (diff.status, diff.paths) == ("ahead", {"services/billing/app.py"})
    assert local_changed_files(work.path, "HEAD~1", "HEAD") == diff
    assert local_changed_files(work.path, head, base).status == "behind"


def test_local_changed_files_of_a_missing_commit_is_incomplete(work: WorkClone) -> None:
    diff = local_changed_files(work.path, "0" * 39 + "1", work.head())
    assert diff.paths is None
    assert diff.reason is not None and "base commit" in diff.reason


def test_local_changed_files_in_a_partial_clone_never_fetches(server: GitServer,
                                                              work: WorkClone,
                                                              mirror: GitMirror) -> None:
    mirror.fetch(["main"])
    head = work.head()
    elsewhere = work.commit({"services/billing/app.py": "v2\n"})
    work.push()  # the server has it, the mirror does not
    before = server.fetches()
    diff = local_changed_files(mirror.path, elsewhere, head)
    assert diff.paths is None
    assert server.fetches() == before


def test_local_changed_files_outside_a_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="not a git repository"):
        local_changed_files(tmp_path, "HEAD~1", "HEAD")


# --- one file at a commit (a repository-side module map with diff: git) ---------------------


def test_file_content_fetches_the_one_blob_of_a_blobless_mirror(server: GitServer,
                                                                 work: WorkClone,
                                                                 mirror: GitMirror) -> None:
    head = work.commit({".webhook-receiver.yaml": "pipelines: []\n"}, "map")
    work.push()
    assert mirror.fetch(["main"]) is True
    assert "blob" not in objects(mirror.path)  # the mirror keeps no file contents
    assert mirror.file_content(".webhook-receiver.yaml", head) == b"pipelines: []\n"
    assert mirror.file_content("no/such/file.yaml", head) is None
    assert objects(mirror.path).count("blob") == 1  # that one blob, nothing else


def test_file_content_with_a_wrong_token_is_a_provider_error_without_the_token(
        server: GitServer, work: WorkClone, tmp_path: Path) -> None:
    head = work.commit({"m.yaml": "x\n"}, "map")
    work.push()
    good = mirror_for(server, tmp_path / "cache")
    good.fetch(["main"])
    bad = mirror_for(server, tmp_path / "cache", token=WRONG_TOKEN)
    with pytest.raises(ProviderError) as caught:
        bad.file_content("m.yaml", head)
    assert WRONG_TOKEN not in str(caught.value)


# --- ref names, many refs, running git ----------------------------------------------------------


def _git_accepts(ref: str) -> bool:
    """``git check-ref-format``'s own answer (the oracle ``ref_problem`` follows)."""
    return subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode == 0


@pytest.mark.parametrize(("branch", "accepted"), [
    ("main", True),
    ("+top", True),
    ("-x", True),
    ("@", True),
    ("ünïcode/ブランチ", True),
    ("rtl\u202eevil", True),  # git takes any non-ASCII character, bidi controls too
    ("a" * 40, True),  # named like a commit id
    ("refs/x", True),
    ("a..b", False),
    ("a.lock", False),
    ("a/.b", False),
    ("a.", False),
    ("a/", False),
    ("a//b", False),
    ("a@{b", False),
    ("a:b", False),
    ("a b", False),
    ("a\x1bb", False),
    ("a\x7fb", False),
    ("a~b", False),
    ("a^b", False),
    ("a?b", False),
    ("a*b", False),
    ("a[b", False),
    ("a\\b", False),
])
def test_ref_problem_says_what_git_check_ref_format_says(branch: str, accepted: bool) -> None:
    ref = f"refs/heads/{branch}"
    assert _git_accepts(ref) is accepted
    assert (ref_problem(ref) is None) is accepted


def test_ref_problem_agrees_with_git_on_generated_names() -> None:
    import random

    rng = random.Random(21)
    alphabet = [*"ab./@{}-+:~^?*[\\ ", ".lock", "\x01", "\x7f", "é", "\u202e"]
    for _ in range(300):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        ref = f"refs/heads/{name}"
        assert (ref_problem(ref) is None) is _git_accepts(ref), repr(name)


def test_a_ref_name_that_is_not_unicode_text_is_refused() -> None:
    assert ref_problem("refs/heads/a\udc80b") == "is not valid UTF-8"


def test_ref_problem_is_linear_in_a_hostile_names_length() -> None:
    for name in ("a/" * 500_000 + "b", "." * 1_000_000, "@{" * 500_000, "a" * 1_000_000):
        started = time.monotonic()
        ref_problem(f"refs/heads/{name}")
        assert time.monotonic() - started < 2.0  # a million characters: milliseconds


@pytest.mark.parametrize("branch", ["+top", "-x", "@", "ünïcode/ブランチ", "a" * 40, "refs/x"])
def test_a_branch_with_any_name_git_accepts_is_fetched(server: GitServer, work: WorkClone,
                                                       mirror: GitMirror, branch: str) -> None:
    head = work.commit({"services/billing/app.py": "v2\n"})
    work.push(branch)
    assert mirror.fetch([f"refs/heads/{branch}"]) is True
    assert git("rev-parse", "--verify", "--end-of-options", f"refs/heads/{branch}",
               cwd=mirror.path).strip() == head


def test_a_ref_name_git_refuses_is_a_value_error_before_any_fetch(
        server: GitServer, mirror: GitMirror) -> None:
    with pytest.raises(ValueError, match=r"'refs/heads/a\.\.b' holds"):
        mirror.fetch(["refs/heads/main", "refs/heads/a..b"])
    assert server.fetches(REPO) == 0


def test_refs_beyond_one_chunk_are_fetched_in_chunks_and_a_missing_one_costs_its_chunk(
        server: GitServer, work: WorkClone, mirror: GitMirror) -> None:
    head = work.head()
    names = [f"feature/x-{n:04d}" for n in range(2 * FETCH_CHUNK + 1)]
    git("update-ref", "--stdin", cwd=server.bare(REPO),
        input="".join(f"create refs/heads/{n} {head}\n" for n in names).encode())
    refs = [f"refs/heads/{n}" for n in names]
    assert mirror.fetch(["refs/heads/gone", *refs]) is False  # the first chunk lacks one
    assert server.fetches(REPO) == 3
    fetched = git("for-each-ref", "--format=%(refname)", "refs/heads/feature/",
                  cwd=mirror.path).split()
    # the first chunk (gone and FETCH_CHUNK - 1 others) kept nothing, the two after it all
    assert fetched == refs[FETCH_CHUNK - 1:]
    assert mirror.fetch(refs) is True
    assert git("for-each-ref", "--format=%(refname)", "refs/heads/feature/",
               cwd=mirror.path).split() == refs


def _git_on_path(tmp_path: Path, content: bytes, mode: int) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "git").write_bytes(content)
    (folder / "git").chmod(mode)
    return folder


@pytest.mark.parametrize(("content", "mode", "cause"), [
    pytest.param(None, 0, FileNotFoundError, id="no git on PATH"),
    pytest.param(b"#!/bin/sh\nexit 0\n", 0o644, PermissionError, id="git not executable"),
    pytest.param(b"\x7fELF garbage", 0o755, OSError, id="git not a program"),
])
def test_git_that_cannot_be_run_is_a_provider_error_keeping_the_os_error(
        mirror: GitMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        content: bytes | None, mode: int, cause: type[OSError]) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    if content is not None:
        folder = _git_on_path(tmp_path, content, mode)
    monkeypatch.setenv("PATH", str(folder))
    with pytest.raises(ProviderError) as caught:
        mirror.fetch(["refs/heads/main"])
    assert type(caught.value.__cause__) is cause


def test_a_git_process_inherits_none_of_the_services_other_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "hook-secret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    done = subprocess.run(["env", "-0"], env=_env(extra_header="Authorization: Basic abc"),
                          capture_output=True, check=True)
    seen = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)
    ours = {"LC_ALL", "GIT_TERMINAL_PROMPT", "GIT_ASKPASS", "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0",
            "GIT_CONFIG_KEY_1", "GIT_CONFIG_VALUE_1"}
    assert set(seen) <= set(ENV_PASSED) | ours
    assert seen["https_proxy"] == "http://proxy.example:3128"
    assert seen["PATH"] == os.environ["PATH"]
    assert "hook-secret-value" not in done.stdout.decode()
    assert "aws-secret-value" not in done.stdout.decode()

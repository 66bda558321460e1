"""The ``diff: git`` strategy: changed paths from git itself, with no file or commit cap.

``GitMirror`` keeps one bare, blobless mirror per repository under the cache directory
(``<cache_dir>/<provider>/<quoted name>.git``): commits and trees only, since
``git diff --name-only --no-renames`` never reads a blob. A delivery fetches the refs of its
burst with ``git fetch --stdin`` (one fetch per FETCH_CHUNK refs); ``changed_files`` then
answers locally, fetching a missing commit by id once. ``local_changed_files`` answers the
same question from an existing clone (``explain --git-dir``), offline and without a token.

Invariants:

- The token travels only as an ``http.extraHeader`` set through the environment of the
  ``git fetch`` process (``GIT_CONFIG_COUNT``): never in a URL, an argument, the mirror's
  config or any file; git's stderr is scrubbed before it reaches an exception.
- Every other git command runs with ``protocol.allow=never``: a partial clone would
  otherwise fetch a missing object on its own (with whatever credentials it finds),
  outside the lock and the time-out.
- One writer per mirror across threads and processes: ``fcntl.flock`` on ``<mirror>.lock``,
  exclusive to create, fetch or re-clone, shared to read. Each acquisition opens the lock
  file anew, so threads of one process exclude each other as processes do.
- No user or system git configuration, credential helper or prompt takes part, and a git
  process inherits only ``ENV_PASSED`` from the service's environment (which holds its
  secrets).
- Every failure to run git (not installed, fork or exec refused, a broken pipe) is a
  ProviderError with the OSError as its cause.
- Commit ids given to GitMirror are full lower-case hex (40 or 64 digits): ValueError else.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

from providers.base import MAX_FILE_BYTES, CompareStatus, Diff
from receiver.errors import FileTooLarge, ProviderError
from receiver.logging import get_logger

FETCH_TIMEOUT_SECONDS = 120.0
LOCAL_TIMEOUT_SECONDS = 60.0
# refspecs per ``git fetch --stdin``: git matches each refspec against every advertised ref,
# so one fetch's time grows with the square of its refs (30,000 branches in one fetch:
# 672 s; 3,000: 7.7 s, in chunks of 500: 3.7 s, measured against git http-backend)
FETCH_CHUNK = 500
# the service's environment variables a git process inherits: where programs and its
# temporary files are, and the proxy settings to reach the server. Nothing else: the
# service's environment holds its secrets (webhook secrets, tokens, AWS credentials).
ENV_PASSED = ("PATH", "HOME", "TMPDIR", "http_proxy", "https_proxy", "HTTP_PROXY",
              "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY")

_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_ABBREVIATED = re.compile(r"^[0-9a-f]{7,64}$")

# stderr of a fetch whose want the server does not have: a commit force-pushed away and
# garbage-collected ("not our ref"), or a branch deleted since the push
_MISSING = ("not our ref", "couldn't find remote ref", "no such remote ref")
# stderr that comes from the remote side or the network, never from the local repository
_REMOTE = ("unable to access", "could not read username", "could not read password",
           "authentication failed", "not found", "remote error", "remote:",
           "returned error", "rpc failed", "the remote end hung up", "could not resolve")


class GitMirror:
    """The bare, blobless mirror of one repository, shared by every thread and process.

    ``provider`` and ``name`` are as configured (they name the mirror and every error);
    ``url`` is the HTTPS clone URL; ``authorization`` is called at each fetch for the
    ``Authorization`` header value to send (each provider says its scheme:
    ``Provider.git_authorization``), so a rotated secret or a fresh GitHub App installation
    token is used; None (or no callable) for a public repository. Time-outs are in seconds,
    per git process.
    """

    def __init__(self, *, provider: str, name: str, url: str, cache_dir: str | Path,
                 authorization: Callable[[], str | None] | None = None,
                 fetch_timeout: float = FETCH_TIMEOUT_SECONDS,
                 local_timeout: float = LOCAL_TIMEOUT_SECONDS) -> None:
        self.provider = provider
        self.name = name
        self.url = url
        self.path = Path(cache_dir) / provider / f"{quote(name, safe='')}.git"
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._authorization = authorization
        self.fetch_timeout = fetch_timeout
        self.local_timeout = local_timeout
        self._log = get_logger()

    def __repr__(self) -> str:
        return f"GitMirror({self})"

    def __str__(self) -> str:
        return f"{self.provider}:{self.name}"

    # --- the contract ---------------------------------------------------------------------

    def fetch(self, refs: Iterable[str]) -> bool:
        """Bring ``refs`` into the mirror, creating the mirror if needed.

        Each ref is a full ref (``refs/heads/main``, ``refs/tags/v1``), a commit id, or a
        branch name (``main``; a branch whose name is a commit id or begins with ``refs/``
        must be given in full). A ref name ``ref_problem`` refuses is a ValueError. The
        refspecs go to ``git fetch --stdin``, FETCH_CHUNK to a fetch. Returns False when the
        server lacks one of them (a branch deleted since, a commit gone): then nothing of
        that fetch's chunk is kept, and ``changed_files`` fetches what it still misses by
        id. A mirror that is missing or corrupt is created again (once per call). Raises
        ProviderError when the server refuses (HTTP 401/403, repository not found), cannot
        be reached, or a fetch exceeds ``fetch_timeout``; the message names the repository,
        never the token.
        """
        specs = list(dict.fromkeys(_refspec(ref) for ref in refs))
        if not specs:
            return True
        with self._locked(exclusive=True):
            return self._fetch_locked(specs)

    def changed_files(self, base: str, head: str) -> Diff:
        """The tree difference from commit ``base`` to commit ``head``, from the mirror.

        ``head`` contained in ``base`` gives ``behind`` (``identical`` when equal) with no
        paths. A commit the mirror lacks is fetched by id, once; if the server no longer has
        it (force-pushed away and garbage-collected) the Diff is incomplete (``paths`` None,
        ``reason`` says which commit). Raises ProviderError as ``fetch`` does, or when a
        local git command fails or exceeds ``local_timeout``.
        """
        _check_sha(base)
        _check_sha(head)
        if base == head:
            return Diff("identical", frozenset())
        with self._locked(exclusive=False):
            missing = _missing(self._local_git, (base, head))
        if missing:
            self.fetch(missing)
            with self._locked(exclusive=False):
                missing = _missing(self._local_git, missing)
            if missing:
                return _incomplete(base, head, missing)
        with self._locked(exclusive=False):
            return _compare(self._local_git, base, head)

    def file_content(self, path: str, commit: str) -> bytes | None:
        """The bytes of ``path`` (repository-root-relative) at ``commit``, or None when the
        file is not there (a repository-side module map).

        The mirror keeps no blobs, so this one is fetched on demand (git's partial-clone
        fetch of a missing object, with the credentials of a fetch) by ``git cat-file -s``,
        which answers its size: one over ``MAX_FILE_BYTES`` raises FileTooLarge and is
        never read (git streams it to the object store, not to this process). Raises
        ProviderError as ``fetch`` does, and ValueError when ``commit`` is not a full
        commit id.
        """
        _check_sha(commit)
        with self._locked(exclusive=False):
            missing = _missing(self._local_git, (commit,))
        if missing:
            self.fetch(missing)
        with self._locked(exclusive=False):
            # the blob's id comes from the trees, which the mirror has
            found = self._local_git("rev-parse", "--verify", "--quiet", "--end-of-options",
                                    f"{commit}:{path}")
        if found.returncode != 0:
            return None
        blob = found.stdout.decode().strip()
        header, secrets = self._credentials()
        env = _env(extra_header=f"Authorization: {header}" if header else None)
        with self._locked(exclusive=True):
            run = _Git(self.path, env, self.fetch_timeout, str(self))
            try:
                sized = run("cat-file", "-s", blob)
                size = int(sized.stdout) if sized.returncode == 0 else None
                if size is not None and size > MAX_FILE_BYTES:
                    raise FileTooLarge(path, MAX_FILE_BYTES, size)
                done = run("cat-file", "blob", blob) if size is not None else sized
            except _Timeout:
                raise ProviderError(f"reading {path} from {self} timed out after "
                                    f"{self.fetch_timeout:g} s") from None
        if done.returncode != 0:
            err = _scrub(done.stderr.decode("utf-8", "replace"), secrets)
            raise ProviderError(f"reading {path} from {self} failed: {_last_line(err)}")
        return bytes(done.stdout)

    def resolve(self, rev: str) -> str | None:
        """The commit a full ref (``refs/heads/main``) or an abbreviated commit id (7 to 64
        hex digits: Bitbucket Cloud's pull request payloads name 12) names in the mirror,
        as a full id; None when it names none, or more than one. Nothing is fetched.
        Raises ProviderError when git fails or times out; ValueError for anything else."""
        if not (rev.startswith("refs/") and ref_problem(rev) is None) and \
                not _ABBREVIATED.fullmatch(rev):
            raise ValueError(f"not a full ref or a commit id: {rev!r}")
        with self._locked(exclusive=False):
            done = self._local_git("rev-parse", "--verify", "--quiet", "--end-of-options",
                                   f"{rev}^{{commit}}")
        found = done.stdout.decode().strip()
        return found if done.returncode == 0 and _SHA.fullmatch(found) else None

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of commits ``a`` and ``b`` (full ids) in the mirror
        (``git merge-base``), the base a pull request's difference is taken from; None when
        they share no history or one of them is not in the mirror (nothing is fetched).
        Raises ProviderError when git fails or times out."""
        _check_sha(a)
        _check_sha(b)
        with self._locked(exclusive=False):
            return _merge_base(self._local_git, a, b)

    # --- fetching ---------------------------------------------------------------------------

    def _fetch_locked(self, specs: Sequence[str]) -> bool:
        if not self.path.exists():
            self._create("no mirror yet")
        elif not self._usable():
            self._create("the mirror is unreadable or points at another URL")
        try:
            return self._run_fetch(specs)
        except _LocalFailure as exc:
            self._create(f"fetch failed locally: {exc}")
            try:
                return self._run_fetch(specs)
            except _LocalFailure as again:
                raise ProviderError(f"git fetch of {self} failed: {again}") from None

    def _usable(self) -> bool:
        """A cheap health check: git opens the mirror and it points at ``url``.

        A garbled HEAD, a missing objects or refs directory or a changed ``git_url`` fail it.
        """
        try:
            done = self._local_git("config", "--get", "remote.origin.url")
        except ProviderError:
            return False
        return done.returncode == 0 and done.stdout.decode(errors="replace").strip() == self.url

    def _create(self, reason: str) -> None:
        """(Re)create an empty blobless mirror: built aside, then renamed into place."""
        self._log.info("git.mirror_created", repository=self.name, provider=self.provider,
                       reason=reason)
        fresh = self.path.with_name(self.path.name + ".new")
        run = _Git(fresh, _env(protocol_allow="never"), self.local_timeout, str(self))
        try:
            for stale in (fresh, self.path):
                _remove(stale)
            run.check("init", "--quiet", "--bare", str(fresh), git_dir=False)
            for key, value in (("core.repositoryformatversion", "1"),
                               ("extensions.partialClone", "origin"),
                               ("remote.origin.url", self.url),
                               ("remote.origin.promisor", "true"),
                               ("remote.origin.partialclonefilter", "blob:none"),
                               # gc after a fetch runs inside the lock, not detached past it
                               ("gc.autoDetach", "false")):
                run.check("config", key, value)
            os.rename(fresh, self.path)
        except OSError as exc:
            raise ProviderError(f"cannot create the mirror of {self} at {self.path}: "
                                f"{exc.strerror}") from exc

    def _run_fetch(self, specs: Sequence[str]) -> bool:
        complete = True
        for start in range(0, len(specs), FETCH_CHUNK):
            # every chunk, also after one the server lacked a ref of: the others still count
            complete = self._fetch_chunk(specs[start:start + FETCH_CHUNK]) and complete
        return complete

    def _fetch_chunk(self, specs: Sequence[str]) -> bool:
        header, secrets = self._credentials()
        env = _env(extra_header=f"Authorization: {header}" if header else None)
        run = _Git(self.path, env, self.fetch_timeout, str(self))
        try:
            # on stdin, not as arguments: any number of refs of any length (an argument
            # list has a size limit, E2BIG)
            done = run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                       "--filter=blob:none", "--stdin", "--end-of-options", "origin",
                       input="".join(f"{spec}\n" for spec in specs).encode())
        except _Timeout:
            raise ProviderError(f"git fetch of {self} timed out after "
                                f"{self.fetch_timeout:g} s") from None
        if done.returncode == 0:
            return True
        err = _scrub(done.stderr.decode("utf-8", "replace"), secrets)
        low = err.lower()
        if any(m in low for m in _MISSING):
            return False
        if not any(m in low for m in _REMOTE):
            raise _LocalFailure(_last_line(err))
        raise ProviderError(f"git fetch of {self} failed: {_explain(low)} ({_last_line(err)})")

    def _credentials(self) -> tuple[str | None, list[str]]:
        """The header value to send, and every form of it that must never be shown: the
        value, its credentials part, and (Basic) the decoded ``user:token`` and token."""
        header = self._authorization() if self._authorization is not None else None
        if not header:
            return None, []
        secrets = [header, header.partition(" ")[2]]
        if header.startswith("Basic "):
            with contextlib.suppress(ValueError):
                pair = base64.b64decode(header[len("Basic "):]).decode()
                secrets += [pair, pair.partition(":")[2]]
        return header, [s for s in secrets if s]

    # --- local commands -----------------------------------------------------------------

    def _local_git(self, *args: str,
                   input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        run = _Git(self.path, _env(protocol_allow="never"), self.local_timeout, str(self))
        try:
            return run(*args, input=input)
        except _Timeout:
            raise ProviderError(f"git {args[0]} in the mirror of {self} timed out after "
                                f"{self.local_timeout:g} s") from None

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        # every git command under the lock has a time-out, so a holder releases it in bounded
        # time, and a killed holder's lock goes with its file descriptor
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self._lock_path, "a+b")  # noqa: SIM115 - closed below, after yield
        except OSError as exc:
            raise ProviderError(f"cannot lock the mirror of {self} at {self._lock_path}: "
                                f"{exc.strerror}") from exc
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            except OSError as exc:  # ENOLCK: a file system without locks
                raise ProviderError(f"cannot lock the mirror of {self} at {self._lock_path}: "
                                    f"{exc.strerror}") from exc
            yield


def local_changed_files(git_dir: str | Path, base: str, head: str,
                        timeout: float = LOCAL_TIMEOUT_SECONDS) -> Diff:
    """The tree difference from ``base`` to ``head`` in an existing clone at ``git_dir``.

    ``base`` and ``head`` are commit ids or any revision git resolves there (``HEAD``, a
    branch, a tag). No fetch, no token, no network (even in a partial clone). A revision
    the clone does not have gives an incomplete Diff. Raises ProviderError when
    ``git_dir`` is not a git repository, a git command fails or exceeds ``timeout`` seconds.
    """
    where = str(git_dir)
    run = _Git(Path(git_dir), _env(protocol_allow="never"), timeout, where, work_tree=True)

    def local(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        try:
            return run(*args, input=input)
        except _Timeout:
            raise ProviderError(f"git {args[0]} in {where} timed out after "
                                f"{timeout:g} s") from None

    if local("rev-parse", "--git-dir").returncode != 0:
        raise ProviderError(f"{where} is not a git repository")
    resolved: list[str] = []
    for rev in (base, head):
        if not rev or rev.startswith("-"):
            raise ProviderError(f"{rev!r} is not a revision")
        done = local("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
        if done.returncode != 0:
            return _incomplete(base, head, [rev], where=where)
        resolved.append(done.stdout.decode().strip())
    return _compare(local, resolved[0], resolved[1])


def local_merge_base(git_dir: str | Path, base: str, head: str,
                     timeout: float = LOCAL_TIMEOUT_SECONDS) -> tuple[str, str] | None:
    """(merge base, head) as full commit ids in an existing clone at ``git_dir``:
    ``base`` and ``head`` are any revisions git resolves there (``main``, ``HEAD``), as a
    pull request's target and head (``explain --base``). None when either is not there or
    they share no history. No network. Raises ProviderError when ``git_dir`` is not a git
    repository, or git fails or exceeds ``timeout`` seconds."""
    where = str(git_dir)
    run = _Git(Path(git_dir), _env(protocol_allow="never"), timeout, where, work_tree=True)
    try:
        if run("rev-parse", "--git-dir").returncode != 0:
            raise ProviderError(f"{where} is not a git repository")
        resolved: list[str] = []
        for rev in (base, head):
            if not rev or rev.startswith("-"):
                raise ProviderError(f"{rev!r} is not a revision")
            done = run("rev-parse", "--verify", "--quiet", "--end-of-options",
                       f"{rev}^{{commit}}")
            if done.returncode != 0:
                return None
            resolved.append(done.stdout.decode().strip())
        found = _merge_base(run, resolved[0], resolved[1])
    except _Timeout:
        raise ProviderError(f"git merge-base in {where} timed out after {timeout:g} s") \
            from None
    return None if found is None else (found, resolved[1])


def local_file_content(git_dir: str | Path, path: str, commit: str,
                       timeout: float = LOCAL_TIMEOUT_SECONDS) -> bytes | None:
    """The bytes of ``path`` at ``commit`` in an existing clone at ``git_dir`` (``explain
    --git-dir`` reading a repository-side module map), or None when the file is not there.

    No network. Raises ProviderError when ``git_dir`` is not a git repository, ``commit``
    is not in it, or git fails or exceeds ``timeout`` seconds.
    """
    where = str(git_dir)
    run = _Git(Path(git_dir), _env(protocol_allow="never"), timeout, where, work_tree=True)
    try:
        if run("rev-parse", "--verify", "--quiet", "--end-of-options",
               f"{commit}^{{commit}}").returncode != 0:
            raise ProviderError(f"{commit[:12]} is not a commit in {where}")
        if run("cat-file", "-e", f"{commit}:{path}").returncode != 0:
            return None
        done = run("cat-file", "blob", f"{commit}:{path}")
    except _Timeout:
        raise ProviderError(f"git cat-file in {where} timed out after {timeout:g} s") from None
    if done.returncode != 0:
        raise ProviderError(f"git cat-file {commit[:12]}:{path} failed in {where}")
    return bytes(done.stdout)


# --- shared logic ------------------------------------------------------------------------------

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def _missing(run: Runner, shas: Sequence[str]) -> list[str]:
    """Which of ``shas`` are not commits in the repository (all of them if it is unusable)."""
    done = run("cat-file", "--batch-check=%(objectname) %(objecttype)",
               input="".join(f"{s}\n" for s in shas).encode())
    if done.returncode != 0:
        return list(shas)
    present = {line.split()[0] for line in done.stdout.decode().splitlines()
               if line.endswith(" commit")}
    return [s for s in shas if s not in present]


def _compare(run: Runner, base: str, head: str) -> Diff:
    if base == head:
        return Diff("identical", frozenset())
    if _is_ancestor(run, head, base):
        return Diff("behind", frozenset())
    status: CompareStatus = "ahead" if _is_ancestor(run, base, head) else "diverged"
    done = run("diff", "--name-only", "--no-renames", "--no-ext-diff", "-z", base, head)
    if done.returncode != 0:
        raise ProviderError(f"git diff failed: {_last_line(done.stderr.decode(errors='replace'))}")
    names = done.stdout.split(b"\0")
    # paths are bytes in git; undecodable ones keep their bytes as surrogates (never merged)
    return Diff(status, frozenset(n.decode("utf-8", "surrogateescape") for n in names if n))


def _merge_base(run: Runner, a: str, b: str) -> str | None:
    """``git merge-base a b``: the best common ancestor, None when there is none (exit 1)
    or a commit is missing."""
    done = run("merge-base", "--end-of-options", a, b)
    found = done.stdout.decode().strip()
    if done.returncode == 0 and _SHA.fullmatch(found):
        return found
    if done.returncode == 1 or b"not a valid" in done.stderr.lower():
        return None
    raise ProviderError("git merge-base failed: "
                        f"{_last_line(done.stderr.decode(errors='replace'))}")


def _is_ancestor(run: Runner, ancestor: str, descendant: str) -> bool:
    done = run("merge-base", "--is-ancestor", ancestor, descendant)
    if done.returncode not in (0, 1):
        raise ProviderError("git merge-base failed: "
                            f"{_last_line(done.stderr.decode(errors='replace'))}")
    return done.returncode == 0


def _incomplete(base: str, head: str, missing: Sequence[str], where: str = "") -> Diff:
    which = "base" if base in missing else "head"
    place = f" {where}" if where else ""
    return Diff("diverged", None,
                f"the {which} commit {missing[0][:12]} is not in the repository{place} "
                "(force-pushed away and garbage-collected?)")


# --- running git ---------------------------------------------------------------------------------


class _Timeout(Exception):
    pass


class _LocalFailure(Exception):
    """A fetch failed for a reason on this side (a corrupt mirror): worth one re-clone."""


class _Git:
    """Runs git against one repository with a fixed environment and time-out."""

    def __init__(self, path: Path, env: dict[str, str], timeout: float, label: str,
                 *, work_tree: bool = False) -> None:
        self.path = path
        self.env = env
        self.timeout = timeout
        self.label = label
        self.work_tree = work_tree

    def __call__(self, *args: str, input: bytes | None = None,
                 git_dir: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run ``git ARGS``; the finished process (any exit status). Raises _Timeout."""
        where = (["-C", str(self.path)] if self.work_tree else [f"--git-dir={self.path}"]
                 ) if git_dir else []
        argv = ["git", *where, *args]
        try:
            # its own session: a time-out kills git's children too (remote helper, index-pack)
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=self.env,
                                    start_new_session=True)
        except FileNotFoundError as exc:
            raise ProviderError("git is not installed (no git on PATH)") from exc
        except OSError as exc:  # E2BIG, EAGAIN, ENOMEM, EACCES: git could not be started
            raise ProviderError(f"git {args[0] if args else ''} for {self.label} could not be "
                                f"started: {exc.strerror or type(exc).__name__}") from exc
        try:
            out, err = proc.communicate(input, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise _Timeout() from None
        except OSError as exc:  # talking to git failed (a pipe): it is of no use any more
            _kill(proc)
            raise ProviderError(f"git {args[0] if args else ''} for {self.label} failed: "
                                f"{exc.strerror or type(exc).__name__}") from exc
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def check(self, *args: str, git_dir: bool = True) -> None:
        """Run ``git ARGS`` and raise ProviderError unless it succeeds."""
        try:
            done = self(*args, git_dir=git_dir)
        except _Timeout:
            raise ProviderError(f"git {args[0]} for {self.label} timed out") from None
        if done.returncode != 0:
            raise ProviderError(f"git {args[0]} for {self.label} failed: "
                                f"{_last_line(done.stderr.decode(errors='replace'))}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc``'s session and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.communicate()


def _env(*, extra_header: str | None = None, protocol_allow: str | None = None) -> dict[str, str]:
    """The environment of a git process: only ``ENV_PASSED`` of this one's, with no
    prompts, no system or global config, no credential helper, the C locale (git's
    messages are matched in English), and the given settings passed as configuration
    through the environment (never a file)."""
    env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
    settings = [("credential.helper", "")]
    if extra_header is not None:
        settings.append(("http.extraHeader", extra_header))
    if protocol_allow is not None:
        settings.append(("protocol.allow", protocol_allow))
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C",
                "GIT_CONFIG_COUNT": str(len(settings))})
    for i, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _refspec(ref: str) -> str:
    """A fetch refspec: a commit id as is; a branch or full ref force-updated in place."""
    if _SHA.fullmatch(ref):
        return ref
    full = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
    problem = ref_problem(full)
    if problem is not None:
        raise ValueError(f"not a ref name git accepts: {full!r} {problem}")
    # the leading + is the refspec's force flag, never part of the name: a branch named
    # "+x" is "+refs/heads/+x:refs/heads/+x"
    return f"+{full}:{full}"


# characters no ref name may hold (git-check-ref-format(1) rules 4, 5 and 10): ASCII
# controls, space, DEL, ~ ^ : ? * [ and backslash
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def ref_problem(ref: str) -> str | None:
    """Why ``git check-ref-format`` refuses ``ref``, a full ref name (``refs/heads/main``),
    or None when it accepts it: its documented rules, as git's refs.c applies them.

    Any other name works, ``refs/heads/+top``, ``refs/heads/-x``, ``refs/heads/@`` and
    non-ASCII ones included. A name that is not valid Unicode text (an unpaired
    surrogate) is refused. Linear in the name's length.
    """
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if ref == "@":
        return "is the single character @"
    if _REF_FORBIDDEN.search(ref):
        return "holds a control character, a space or one of ~ ^ : ? * [ \\"
    if ".." in ref:
        return 'holds ".."'
    if "@{" in ref:
        return 'holds "@{"'
    if ref.endswith("."):
        return "ends with a dot"
    components = ref.split("/")
    if len(components) < 2:
        return "has a single component"
    for component in components:
        if not component:
            return "has an empty component (a leading, trailing or double slash)"
        if component.startswith("."):
            return "has a component that begins with a dot"
        if component.endswith(".lock"):
            return 'has a component that ends with ".lock"'
    return None


def _check_sha(value: str) -> None:
    if not _SHA.fullmatch(value):
        raise ValueError(f"not a full commit id: {value!r}")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


def _explain(stderr: str) -> str:
    """What a refused or failed fetch means, from git's (lower-cased) stderr."""
    if ("error: 401" in stderr or "could not read username" in stderr
            or "authentication failed" in stderr):
        return "the server refused the credentials (HTTP 401)"
    if "error: 403" in stderr:
        return "the server refused access (HTTP 403)"
    if "not found" in stderr or "error: 404" in stderr:
        return "the repository was not found, or the token cannot see it"
    return "the server could not be reached or answered an error"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()

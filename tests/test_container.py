"""The container image without a container engine: the Dockerfile read statically, and its
start command run here the way the image would run it.

No engine is available, so the image is emulated with what the Dockerfile itself says: its
ENTRYPOINT + CMD, its ENV lines, its USER (numeric uid and gid), its working directory and
the configuration file it copies. The process runs in a private mount namespace where the
root filesystem is read-only (ECS ``readonlyRootFilesystem``) and only ``/tmp`` (the task's
scratch volume) and ``/dev/shm`` stay writable; the working directory and the code are
read-only bind mounts. Because the tests run as root and root ignores file modes, a chmod
would prove nothing; a read-only mount refuses root as well, and the process additionally
runs as the image's uid via ``setpriv``. ``test_sandbox_*`` shows the sandbox really refuses
those writes, so a service that needed one would fail to start or log the error.

Two stand-ins, both named where they are made: the code comes from a copy of exactly what the
builder stage COPYs (a wheel cannot be built offline here) on PYTHONPATH, and the image's venv
``bin`` is this interpreter's ``bin``. AWS is the session's moto server; the production config
(config/production.yaml, which the image bakes in) runs against it with the secrets the task
definition injects.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness import AWS_ENV, MotoServer, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ECS_TASK = ROOT / "ecs-task.json"
PYPROJECT = ROOT / "pyproject.toml"
# the runtime dependencies with their hashes, which the builder stage installs (pip-compile;
# docs/deploy.md says how to regenerate it)
LOCK_FILE = ROOT / "requirements.lock"
# the venv the builder creates and the final stage copies; locally, this interpreter's prefix
IMAGE_VENV = "/opt/venv"
# python:3.11-slim's own ENV PATH, which the Dockerfile's ENV PATH extends
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# the home the Dockerfile's useradd gives the service user (docker sets HOME from passwd)
IMAGE_HOME = "/nonexistent"


# --- a small Dockerfile reader ----------------------------------------------------------------


@dataclass
class Instruction:
    """One logical instruction (continuation lines joined)."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """One FROM stage: its base image, optional name, own ARG defaults and instructions."""

    base: str  # an image; a FROM naming an earlier stage inherits that stage's base
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction of this kind, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        """The instruction of this kind that takes effect (Docker: the last one wins)."""
        found = self.all(keyword)
        return found[-1] if found else None

    def args(self, global_args: dict[str, str]) -> dict[str, str]:
        """ARG values in scope at the end of the stage (a bare ARG inherits the global one)."""
        out: dict[str, str] = {}
        for ins in self.all("ARG"):
            name, eq, default = ins.args.partition("=")
            if eq:
                out[name.strip()] = default.strip().strip('"')
            elif name.strip() in global_args:
                out[name.strip()] = global_args[name.strip()]
        return out

    def env(self, base: dict[str, str], global_args: dict[str, str]) -> dict[str, str]:
        """The image environment after every ENV line, ``$VAR`` expanded as Docker does."""
        env = dict(base)
        for ins in self.all("ENV"):
            scope = {**global_args, **self.args(global_args), **env}
            tokens = shlex.split(ins.args)
            if tokens and "=" not in tokens[0]:  # legacy form: ENV NAME value with spaces
                pairs = [(tokens[0], " ".join(tokens[1:]))]
            else:
                pairs = [(t.partition("=")[0], t.partition("=")[2]) for t in tokens]
            for name, value in pairs:
                env[name] = substitute(value, scope)
        return env


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARGs (before the first FROM) and the stages."""

    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The stage the image is made of."""
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        """The stage ``FROM ... AS name``."""
        (found,) = [s for s in self.stages if s.name == name]
        return found


def substitute(value: str, scope: dict[str, str]) -> str:
    """Docker's ``$NAME`` / ``${NAME}`` substitution (unknown names are an error here)."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in scope:
            raise KeyError(f"${name} is not defined at this point of the Dockerfile")
        return scope[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def parse_dockerfile(text: str) -> Dockerfile:
    """Split into logical instructions and stages (comments and blank lines dropped)."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments inside a continued instruction are dropped too, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    if pending:
        logical.append((start, pending.strip()))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text_line in logical:
        keyword, _, rest = text_line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            base = substitute(words[0], global_args)
            base = next((s.base for s in stages if s.name == base), base)
            stages.append(Stage(base, name, number))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {number}: only ARG may come before the first FROM")
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return Dockerfile(global_args, stages)


def exec_form(instruction: Instruction | None) -> list[str] | None:
    """The JSON array of an exec-form CMD/ENTRYPOINT, or None for shell form (or none)."""
    if instruction is None:
        return None
    try:
        value = json.loads(instruction.args)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def seconds(duration: str) -> float:
    """A Docker duration (``30s``, ``1m30s``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str] | None] | None:
    """(options, exec-form command) of the stage's HEALTHCHECK; None if it has none."""
    ins = stage.last("HEALTHCHECK")
    if ins is None or ins.args.upper() == "NONE":
        return None
    match = re.match(r"^((?:--[\w-]+=\S+\s+)*)CMD\s+(.*)$", ins.args, re.S)
    if match is None:
        return {}, None
    options = dict(o[2:].split("=", 1) for o in match.group(1).split())
    return options, exec_form(Instruction("CMD", match.group(2), ins.line))


def copy_sources(stage: Stage, scope: dict[str, str]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not ``--from``)."""
    out = []
    for ins in stage.all("COPY"):
        words = shlex.split(ins.args)
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [substitute(w, scope) for w in words if not w.startswith("--")]
        out.append((paths[:-1], paths[-1]))
    return out


def image_user(stage: Stage) -> tuple[int, int] | None:
    """The numeric (uid, gid) of the stage's USER; None if absent or not numeric."""
    ins = stage.last("USER")
    if ins is None:
        return None
    match = re.fullmatch(r"(\d+)(?::(\d+))?", ins.args.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or match.group(1))


def exposed_ports(stage: Stage) -> set[int]:
    """The TCP ports the stage EXPOSEs."""
    ports: set[int] = set()
    for ins in stage.all("EXPOSE"):
        for word in ins.args.split():
            port, _, proto = word.partition("/")
            if proto in ("", "tcp"):
                ports.add(int(port))
    return ports


def volumes(stage: Stage) -> set[str]:
    """Every path the stage declares as VOLUME."""
    found: set[str] = set()
    for ins in stage.all("VOLUME"):
        value = exec_form(ins)
        found.update(value if value is not None else ins.args.split())
    return found


def start_command(stage: Stage) -> list[str]:
    """ENTRYPOINT + CMD, both exec form (the container's argv)."""
    entry, cmd = exec_form(stage.last("ENTRYPOINT")), exec_form(stage.last("CMD"))
    return (entry or []) + (cmd or [])


def load_dockerfile() -> Dockerfile:
    """The repository's Dockerfile, parsed."""
    return parse_dockerfile(DOCKERFILE.read_text())


# --- what the Dockerfile must say ------------------------------------------------------------

# git is not among them: `diff: git` runs it at request time (receiver/gitdiff.py)
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cargo", "rustc")


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments after ``pip install`` of every command the stage's RUN lines chain."""
    found = []
    for ins in stage.all("RUN"):
        for command in re.split(r"&&|;", ins.args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2:])
    return found


def installs_from_the_lock(stage: Stage) -> bool:
    """Whether the stage installs requirements.lock in pip's hash-checking mode."""
    lock = LOCK_FILE.name
    return any("--require-hashes" in args
               and any(args[i:i + 2] == ["-r", lock] for i in range(len(args)))
               for args in pip_installs(stage))


def installs_git(stage: Stage) -> bool:
    """Whether a RUN of the stage installs the git package (apt-get install ... git)."""
    for ins in stage.all("RUN"):
        words = re.split(r"[\s;&|]+", ins.args)
        if "install" in words and "git" in words:
            return True
    return False


def dockerfile_problems(df: Dockerfile) -> list[str]:
    """Everything wrong with the image definition for ECS Fargate (empty when fine)."""
    problems: list[str] = []
    if len(df.stages) < 2:
        problems.append("not multi-stage: the image must not carry the build stage")
    final = df.final
    if not re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", final.base):
        problems.append(f"final stage base {final.base!r} is not a slim Python 3.11 image")
    if not re.search(r"@sha256:[0-9a-f]{64}$", final.base):
        problems.append(f"final stage base {final.base!r} is not pinned by digest: a rebuild "
                        "could get other bytes")
    bases = sorted({s.base for s in df.stages})
    if len(bases) > 1:
        problems.append(f"stages use different bases {bases}: the venv's python is a symlink "
                        "into the builder's base")
    builders = df.stages[:-1]
    if not any(installs_from_the_lock(s) for s in builders):
        problems.append(f"no stage installs {LOCK_FILE.name} with --require-hashes: the "
                        "dependencies would be whatever the index serves that day")
    projects = [args for s in builders for args in pip_installs(s) if "." in args]
    if not projects or not all("--no-deps" in args for args in projects):
        problems.append("the project is not installed with --no-deps: pip would resolve its "
                        "dependencies again, past the lock")
    for ins in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", ins.args))
        tools = sorted(words.intersection(BUILD_TOOLS))
        if tools:
            problems.append(f"final stage line {ins.line} installs build tools {tools}")
    if not installs_git(final):
        problems.append("final stage does not install git: repositories with `diff: git` "
                        "fetch and diff with it")
    if not any("--from=" in i.args for i in final.all("COPY")):
        problems.append("final stage copies nothing from the builder stage")
    user = image_user(final)
    if user is None:
        problems.append("final stage has no numeric USER uid[:gid]: it would run as root "
                        "or need a passwd lookup")
    elif 0 in user:
        problems.append(f"final stage USER {user} is root")
    check = healthcheck(final)
    if check is None:
        problems.append("no HEALTHCHECK in the final stage")
    else:
        options, command = check
        if command is None:
            problems.append("HEALTHCHECK is not in exec form (the image has no shell tools "
                            "worth relying on)")
        elif not any("/healthz" in part for part in command):
            problems.append("HEALTHCHECK does not probe /healthz (the check that touches no "
                            "dependency)")
        for name in ("interval", "timeout"):
            if name not in options:
                problems.append(f"HEALTHCHECK has no --{name}")
    for keyword in ("ENTRYPOINT", "CMD"):
        form = final.last(keyword)
        if form is not None and exec_form(form) is None:
            problems.append(f"{keyword} is in shell form: /bin/sh would be PID 1 and keep "
                            "SIGTERM from gunicorn")
    if not start_command(final):
        problems.append("no ENTRYPOINT/CMD")
    env = final.env({"PATH": BASE_IMAGE_PATH}, df.global_args)
    if env.get("PYTHONDONTWRITEBYTECODE") != "1":
        problems.append("PYTHONDONTWRITEBYTECODE=1 missing: Python would try to write .pyc "
                        "files to the read-only root filesystem")
    if not env.get("PATH", "").startswith(f"{IMAGE_VENV}/bin:"):
        problems.append(f"{IMAGE_VENV}/bin is not first on PATH")
    bind = env.get("RECEIVER_BIND", "")
    ports = exposed_ports(final)
    if not bind.rpartition(":")[2].isdigit() or ports != {int(bind.rpartition(":")[2])}:
        problems.append(f"EXPOSE {sorted(ports)} does not match RECEIVER_BIND {bind!r}")
    config = env.get("RECEIVER_CONFIG")
    scope = {**df.global_args, **final.args(df.global_args)}
    if not config or not any(dest == config for _, dest in copy_sources(final, scope)):
        problems.append("RECEIVER_CONFIG does not name a file the image copies in")
    if "/tmp" not in volumes(final):
        problems.append("no VOLUME /tmp: Fargate would bind-mount the task's /tmp volume as "
                        "root 0755, unwritable for the service user")
    return problems


# --- static tests ----------------------------------------------------------------------------


def test_dockerfile_meets_every_requirement() -> None:
    assert dockerfile_problems(load_dockerfile()) == []


def _drop(keyword: str) -> Callable[[Dockerfile], None]:
    def mutate(df: Dockerfile) -> None:
        df.final.instructions = [i for i in df.final.instructions if i.keyword != keyword]
    return mutate


def _replace(keyword: str, args: str) -> Callable[[Dockerfile], None]:
    def mutate(df: Dockerfile) -> None:
        ins = df.final.last(keyword)
        assert ins is not None, f"the Dockerfile has no {keyword} to break"
        ins.args = args
    return mutate


def _single_stage(df: Dockerfile) -> None:
    df.stages = df.stages[-1:]


def _full_base(df: Dockerfile) -> None:
    df.final.base = "python:3.11"


def _add_compiler(df: Dockerfile) -> None:
    df.final.instructions.insert(0, Instruction(
        "RUN", "apt-get update && apt-get install -y --no-install-recommends gcc", 0))


def _without_git(df: Dockerfile) -> None:
    df.final.instructions = [i for i in df.final.instructions
                             if not (i.keyword == "RUN" and "git" in i.args.split())]


def _unpinned_base(df: Dockerfile) -> None:
    for stage in df.stages:
        stage.base = stage.base.partition("@")[0]


def _builder_on_another_base(df: Dockerfile) -> None:
    df.stage("builder").base = "python:3.11-slim-bullseye@sha256:" + "0" * 64


def _builder_without(option: str) -> Callable[[Dockerfile], None]:
    def mutate(df: Dockerfile) -> None:
        for ins in df.stage("builder").all("RUN"):
            ins.args = ins.args.replace(f" {option}", "")
    return mutate


def _without_env(name: str) -> Callable[[Dockerfile], None]:
    def mutate(df: Dockerfile) -> None:
        for ins in df.final.all("ENV"):
            ins.args = " ".join(t for t in shlex.split(ins.args) if not t.startswith(name + "="))
    return mutate


@pytest.mark.parametrize(("mutate", "caught_as"), [
    pytest.param(_single_stage, "not multi-stage", id="a single stage"),
    pytest.param(_full_base, "not a slim Python 3.11", id="the full python image as base"),
    pytest.param(_add_compiler, "build tools", id="a compiler in the final stage"),
    pytest.param(_without_git, "does not install git", id="no git in the final stage"),
    pytest.param(_drop("USER"), "no numeric USER", id="no USER"),
    pytest.param(_replace("USER", "0:0"), "is root", id="USER 0"),
    pytest.param(_replace("USER", "root"), "no numeric USER", id="USER root by name"),
    pytest.param(_drop("HEALTHCHECK"), "no HEALTHCHECK", id="no HEALTHCHECK"),
    pytest.param(_replace("HEALTHCHECK", '--interval=15s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:8080/readyz\')"]'),
                 "does not probe /healthz", id="HEALTHCHECK on /readyz"),
    pytest.param(_replace("CMD", "serve"), "shell form", id="CMD in shell form"),
    pytest.param(_replace("ENTRYPOINT", "webhook-receiver"), "shell form", id="ENTRYPOINT in shell form"),
    pytest.param(_replace("EXPOSE", "9090"), "does not match RECEIVER_BIND", id="EXPOSE another port"),
    pytest.param(_without_env("PYTHONDONTWRITEBYTECODE"), "PYTHONDONTWRITEBYTECODE", id="bytecode writing left on"),
    pytest.param(_without_env("RECEIVER_CONFIG"), "RECEIVER_CONFIG", id="no RECEIVER_CONFIG"),
    pytest.param(_drop("VOLUME"), "no VOLUME /tmp", id="no VOLUME for /tmp"),
    pytest.param(_unpinned_base, "not pinned by digest", id="a base by tag alone"),
    pytest.param(_builder_on_another_base, "different bases", id="a builder on another base"),
    pytest.param(_builder_without("--require-hashes"), "--require-hashes", id="the lock without hash checking"),
    pytest.param(_builder_without("--no-deps"), "--no-deps", id="the project with its dependencies resolved again"),
])
def test_dockerfile_check_catches_a_broken_copy(mutate: Callable[[Dockerfile], None],
                                                 caught_as: str) -> None:
    df = copy.deepcopy(load_dockerfile())
    mutate(df)
    problems = dockerfile_problems(df)
    assert any(caught_as in p for p in problems), problems


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent of it) decides."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if body.startswith("**/"):
            candidates += ["/".join(parts[i:j]) for i in range(len(parts))
                           for j in range(i + 1, len(parts) + 1)]
            body = body[3:]
        if any(fnmatch.fnmatchcase(c, body) for c in candidates):
            excluded = not negate
    return excluded


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _context_files(source: str) -> list[str]:
    base = ROOT / source
    if base.is_file():
        return [source]
    return [str(p.relative_to(ROOT)) for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]


def test_dockerignore_keeps_every_file_the_dockerfile_copies() -> None:
    df = load_dockerfile()
    patterns = _dockerignore()
    copied = [src for stage in df.stages
              for sources, _ in copy_sources(stage, {**df.global_args,
                                                     **stage.args(df.global_args)})
              for src in sources]
    assert copied
    dropped = [f for src in copied for f in _context_files(src.rstrip("/"))
               if _dockerignore_excludes(patterns, f)]
    assert dropped == []


@pytest.mark.parametrize("path", [
    ".git/config", "var/receiver.db", ".env", "tests/test_container.py",
    "receiver/__pycache__/app.cpython-311.pyc", "bench/run.py", "docs/operations.md",
])
def test_dockerignore_keeps_local_files_out_of_the_build_context(path: str) -> None:
    assert _dockerignore_excludes(_dockerignore(), path)


# --- the lock file -----------------------------------------------------------------------------


def locked(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version specifier, hashes) of each requirement of a pip-compile lock file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0].startswith("-"):
            continue  # a comment, or an option line (an index) that pins nothing
        requirement = Requirement(words[0])
        hashes = [w.removeprefix("--hash=") for w in words[1:] if w.startswith("--hash=")]
        entries[canonicalize_name(requirement.name)] = (str(requirement.specifier), hashes)
    return entries


def image_requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    """What the builder stage needs installed: the project's dependencies, what the extras they
    ask for add (as the installed distribution declares them), and the build backend (the
    project is built without isolation, from the locked setuptools)."""
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    wanted += [Requirement(r) for r in pyproject["build-system"]["requires"]]
    for requirement in list(wanted):
        for extra in sorted(requirement.extras):
            for declared in metadata.requires(requirement.name) or []:
                dependency = Requirement(declared)
                marker = dependency.marker
                if (marker is not None and marker.evaluate({"extra": extra})
                        and not marker.evaluate({"extra": ""})):
                    dependency.marker = None
                    wanted.append(dependency)
    return wanted


def lock_problems(pyproject: dict[str, Any], lock_text: str) -> list[str]:
    """How the lock file fails the image's requirements (empty when it covers them all)."""
    lock = locked(lock_text)
    problems = []
    for name, (specifier, hashes) in lock.items():
        if not re.fullmatch(r"==[^,]+", specifier):
            problems.append(f"{name}{specifier} is not pinned with ==")
        if not hashes:
            problems.append(f"{name} has no --hash: pip's hash-checking mode refuses it")
    for requirement in image_requirements(pyproject):
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement} is not in {LOCK_FILE.name}")
            continue
        specifier = lock[name][0]
        version = specifier.removeprefix("==")
        if specifier.startswith("==") and not requirement.specifier.contains(version,
                                                                             prereleases=True):
            problems.append(f"{name}=={version} does not satisfy {requirement}")
    return problems


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def test_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    assert lock_problems(_pyproject(), LOCK_FILE.read_text()) == []


def test_lock_file_pins_the_extras_dependencies_and_the_build_backend() -> None:
    # the cases below would prove nothing if these were not in image_requirements
    names = {canonicalize_name(r.name) for r in image_requirements(_pyproject())}
    assert {"cryptography", "setuptools", "gunicorn"} <= names


def _drop_entry(name: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        return re.sub(rf"^{name}==\S+ \\\n(?:\s+--hash=\S+(?: \\)?\n)+", "", text, flags=re.M)
    return change


def _drop_hashes(name: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        return re.sub(rf"^({name}==\S+) \\\n(?:\s+--hash=\S+(?: \\)?\n)+", r"\1\n", text,
                      flags=re.M)
    return change


def _add_dependency(pyproject: dict[str, Any]) -> None:
    pyproject["project"]["dependencies"].append("rich>=13")


@pytest.mark.parametrize(("change_pyproject", "change_lock", "caught_as"), [
    pytest.param(_add_dependency, None, "rich>=13 is not in", id="a new dependency not locked"),
    pytest.param(None, _drop_entry("structlog"), "structlog>=24 is not in", id="a dependency dropped from the lock"),
    pytest.param(None, _drop_entry("cryptography"), "cryptography", id="the crypto extra's dependency dropped"),
    pytest.param(None, _drop_entry("setuptools"), "setuptools>=68 is not in", id="the build backend dropped"),
    pytest.param(None, lambda t: re.sub(r"^gunicorn==\S+", "gunicorn==28.0.0", t, flags=re.M), "does not satisfy gunicorn", id="a version outside the range"),
    pytest.param(None, lambda t: re.sub(r"^orjson==", "orjson>=", t, flags=re.M), "not pinned with ==", id="a range instead of a pin"),
    pytest.param(None, _drop_hashes("flask"), "flask has no --hash", id="an entry without hashes"),
])
def test_lock_check_catches_a_drift(change_pyproject: Callable[[dict[str, Any]], None] | None,
                                    change_lock: Callable[[str], str] | None,
                                    caught_as: str) -> None:
    pyproject, lock_text = _pyproject(), LOCK_FILE.read_text()
    if change_pyproject is not None:
        change_pyproject(pyproject)
    if change_lock is not None:
        changed = change_lock(lock_text)
        assert changed != lock_text
        lock_text = changed
    problems = lock_problems(pyproject, lock_text)
    assert any(caught_as in p for p in problems), problems


# --- the start command, run as the image would run it ------------------------------------


def sandbox(argv: list[str], *, workdir: Path, readonly: list[Path],
            user: tuple[int, int] | None) -> list[str]:
    """``argv`` in a private mount namespace with the image's writable set: /tmp and /dev/shm.

    ``mount --bind /tmp /tmp`` first gives /tmp its own mount, which stays writable (the ECS
    task's /tmp volume) when / is remounted read-only; ``readonly`` directories under /tmp are
    then bound read-only on top. ``user`` drops to the image's uid:gid; it keeps only
    CAP_DAC_READ_SEARCH, because this interpreter lives under /root (mode 0700), whereas the
    image's /opt/venv is world-readable: reading is granted, writing is not.
    """
    q = shlex.quote
    script = " && ".join([
        "mount --bind /tmp /tmp",
        "mount -o remount,bind,ro /",
        *[f"mount --bind -o ro {q(str(d))} {q(str(d))}" for d in readonly],
        f"cd {q(str(workdir))}",
        'exec "$@"',
    ])
    drop: list[str] = []
    if user is not None:
        drop = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sandbox", *drop, *argv]


@dataclass
class Image:
    """The Dockerfile's final stage turned into what a local run needs."""

    command: list[str]
    user: tuple[int, int]
    env: dict[str, str]
    workdir: Path
    site: Path
    port: int

    def argv(self, argv: list[str], *, as_user: bool = True) -> list[str]:
        """``argv`` inside the read-only sandbox, as the image's user unless told otherwise."""
        # the checkout and the interpreter too: either may live under /tmp (a fresh clone, a
        # CI venv), which the sandbox otherwise leaves writable
        readonly = [self.workdir, self.site, ROOT, Path(sys.prefix)]
        return sandbox(argv, workdir=self.workdir, readonly=readonly,
                       user=self.user if as_user else None)

    def run(self, argv: list[str], *, as_user: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a one-off command in the sandbox and wait for it."""
        return subprocess.run(self.argv(argv, as_user=as_user), env=env or self.env,
                              capture_output=True, text=True, timeout=60)


def _task_container() -> dict[str, Any]:
    task = json.loads(ECS_TASK.read_text())
    return next(c for c in task["containerDefinitions"] if c["name"] == task["family"])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer) -> Image:
    """The final stage's command, user and environment, with the local stand-ins applied."""
    df = load_dockerfile()
    final = df.final
    scratch = tmp_path_factory.mktemp("image")
    # the build context's COPY sources in the builder stage: the code the venv is built from
    site = scratch / "site"
    builder = df.stage("builder")
    for sources, _ in copy_sources(builder, {**df.global_args, **builder.args(df.global_args)}):
        for src in sources:
            origin = ROOT / src.rstrip("/")
            target = site / src.rstrip("/")
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    workdir = scratch / "workdir"  # the image's WORKDIR: empty, and read-only to the service
    workdir.mkdir()

    env = {"PATH": BASE_IMAGE_PATH, "HOME": IMAGE_HOME, "LANG": "C.UTF-8"}
    env = final.env(env, df.global_args)
    env["PATH"] = env["PATH"].replace(f"{IMAGE_VENV}/bin", str(Path(sys.prefix) / "bin"))
    container = _task_container()
    # what ECS adds: the task definition's environment and the secrets it injects
    env.update({e["name"]: e["value"] for e in container.get("environment", [])})
    env.update({s["name"]: f"test-value-of-{s['name'].lower()}"
                for s in container.get("secrets", [])})
    # the task role's credentials and AWS itself are moto's
    env.update(AWS_ENV)
    env["AWS_ENDPOINT_URL"] = moto_server.url
    # the config the image copies to RECEIVER_CONFIG, from the build context
    scope = {**df.global_args, **final.args(df.global_args)}
    copied = {dest: sources[0] for sources, dest in copy_sources(final, scope)}
    env["RECEIVER_CONFIG"] = str(ROOT / copied[env["RECEIVER_CONFIG"]])
    env["PYTHONPATH"] = str(site)
    # the listen address, overridden the way the task would: the RECEIVER_BIND variable
    port = free_port()
    env["RECEIVER_BIND"] = f"127.0.0.1:{port}"

    user = image_user(final)
    assert user is not None
    return Image(start_command(final), user, env, workdir, site, port)


@dataclass
class Running:
    """The started container process and what it printed."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def output(self) -> str:
        """Everything the container printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def running(image: Image, tmp_path_factory: pytest.TempPathFactory,
            moto_server: MotoServer) -> Iterator[Running]:
    """`state init` as a one-off task would run it, then the container's start command."""
    moto_server.reset()
    entrypoint = exec_form(load_dockerfile().final.last("ENTRYPOINT")) or []
    init = image.run([*entrypoint, "state", "init"])
    assert init.returncode == 0, init.stderr
    log = tmp_path_factory.mktemp("container") / "output.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(image.argv(image.command), env=image.env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{image.port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"container exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no /healthz within 30 s: {log.read_text()}")
            time.sleep(0.1)
        yield Running(proc, log, url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_start_command_is_the_documented_serve_entry_point() -> None:
    command = start_command(load_dockerfile().final)
    assert command[0] == "webhook-receiver"
    assert command[1:] == ["serve"]


def test_container_answers_healthz_with_a_read_only_working_directory(running: Running) -> None:
    answer = requests.get(running.url + "/healthz", timeout=5)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_container_reaches_its_state_table_with_the_production_config(running: Running) -> None:
    answer = requests.get(running.url + "/readyz", timeout=10)
    assert answer.status_code == 200, answer.text


def test_container_runs_as_the_image_user(running: Running, image: Image) -> None:
    status = Path(f"/proc/{running.proc.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
    gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)", status, re.M)
    assert uids is not None and gids is not None
    assert (int(uids.group(2)), int(gids.group(2))) == image.user


def test_container_needs_no_write_outside_tmp_and_shm(running: Running) -> None:
    # every other path is a read-only mount (test_sandbox_* below): a write there fails with
    # EROFS, so the proof is that the service works and nothing reports a failed write.
    # Let the workers heartbeat and the background worker poll the table meanwhile.
    requests.get(running.url + "/readyz", timeout=10)
    time.sleep(2)
    assert running.proc.poll() is None
    output = running.output()
    for sign in ("Read-only file system", "Permission denied", "[ERROR]", "Traceback"):
        assert sign not in output, output


def _health_commands() -> list[Any]:
    final = load_dockerfile().final
    check = healthcheck(final)
    docker = check[1] if check is not None and check[1] is not None else []
    ecs = _task_container()["healthCheck"]["command"]
    assert ecs[0] == "CMD", "the ECS health check must run without a shell"
    return [pytest.param(docker, id="Dockerfile HEALTHCHECK"),
            pytest.param(ecs[1:], id="ECS healthCheck")]


@pytest.mark.parametrize("command", _health_commands())
def test_health_check_command_passes_against_the_running_container(
        running: Running, image: Image, command: list[str]) -> None:
    result = image.run(command)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", _health_commands())
def test_health_check_command_fails_when_nothing_listens(image: Image,
                                                         command: list[str]) -> None:
    env = {**image.env, "RECEIVER_BIND": f"127.0.0.1:{free_port()}"}
    result = image.run(command, env=env)
    assert result.returncode != 0


@pytest.mark.parametrize(("where", "writable"), [
    pytest.param(lambda img: img.workdir, False, id="the working directory"),
    pytest.param(lambda img: img.site, False, id="the installed code"),
    pytest.param(lambda img: Path("/"), False, id="the root filesystem"),
    pytest.param(lambda img: ROOT, False, id="the source checkout"),
    pytest.param(lambda img: Path(sys.prefix), False, id="the interpreter"),
    pytest.param(lambda img: Path("/tmp"), True, id="the tmp volume"),
    pytest.param(lambda img: Path("/dev/shm"), True, id="shared memory"),
])
def test_sandbox_allows_writes_only_to_tmp_and_shm(
        image: Image, where: Callable[[Image], Path], writable: bool) -> None:
    probe = where(image) / f"probe-{os.getpid()}-{time.monotonic_ns()}"
    # root for the refused places: a read-only mount refuses even root, mode bits do not
    result = image.run(["sh", "-c", 'touch "$0" && rm "$0"', str(probe)], as_user=writable)
    assert (result.returncode == 0) is writable, result.stderr
    assert not probe.exists()
    if not writable:
        assert "Read-only file system" in result.stderr

"""Resolve (and decide) a repository's module map in a child process with bounded memory.

``python -m tests.map_child`` reads a JSON spec on stdin, sets the address-space limit it
names (resource.setrlimit RLIMIT_AS, as an ECS task's memory would stop the worker), and
does what the service does for a push: load the configuration (YAML, or a ``.json``
file holding the parsed document), read the map file at the
commit through the provider's file API (or a ``diff: git`` mirror) with
``RepositoryMaps.resolve``, over a SQLite store in which ``kept`` (optional) was saved as
the last valid map, then decide the changed ``paths`` (optional) with the resolved
pipelines. It prints one JSON line: the problems, the kept commit, the pipeline names, the
verdicts, the seconds it took and its peak resident memory.

A breach of the limit shows as a MemoryError and a non-zero exit; the parent kills the
child at its deadline.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    """Run the spec on stdin; print the result."""
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    limit = int(spec["address_space"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.monotonic()

    from providers import build_providers
    from providers.base import Diff
    from receiver.config import load, parse
    from receiver.decide import decide
    from receiver.module_map import FileSource, RepositoryMaps, provider_source
    from receiver.state.sqlite import SQLiteStore

    # a JSON configuration is parsed without YAML (a 10,000-module one in pure-Python
    # YAML takes seconds that are not the map's)
    config = load(spec["config"]) if not spec["config"].endswith(".json") else \
        parse(json.loads(Path(spec["config"]).read_text()), source=spec["config"])
    store = SQLiteStore(config.state.path)
    store.init()
    for key, (commit, text) in spec.get("kept", {}).items():
        store.save_module_map(key, commit, text, 1.0)
    repo = config.repository("github", spec["repository"])
    assert repo is not None
    providers = build_providers()
    read: FileSource = provider_source(providers)
    if repo.diff == "git":  # the service's reader with diff: git
        from receiver.gitdiff import GitMirror

        assert repo.git_url is not None
        provider, configured = providers[repo.provider], repo
        mirror = GitMirror(provider=repo.provider, name=repo.name, url=repo.git_url,
                           cache_dir=config.git.cache_dir,
                           authorization=lambda: provider.git_authorization(configured))
        read = lambda _repo, path, commit: mirror.file_content(path, commit)  # noqa: E731

    maps = RepositoryMaps(store, read, time.time, config.repositories)
    resolved = maps.resolve(repo, spec["commit"])
    verdicts: dict[str, str] = {}
    if spec.get("paths") is not None:
        selectors = resolved.pipelines.modules.for_branch([])
        diff = Diff("ahead", frozenset(spec["paths"]))
        verdicts = {name: d.verdict for name, d in
                    decide(selectors, "a" * 40, spec["commit"], diff).items()}
    print(json.dumps({
        "problems": list(resolved.problems), "kept": resolved.kept,
        "pipelines": sorted(resolved.pipelines.configs), "verdicts": verdicts,
        "seconds": time.monotonic() - started,
        "peak_kib": _peak_kib(),
    }))
    return 0


def _peak_kib() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it starts afresh at
    exec, so the forking parent's size is not in it)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


if __name__ == "__main__":
    sys.exit(main())

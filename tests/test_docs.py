"""README.md and docs/: every link and repository path resolves, and the docs cover the code.

Rules, strict but not brittle:

- a markdown link ``[text](target)`` that is not a URL must name an existing file or
  directory, relative to the page; a ``#fragment`` must be the GitHub anchor of a heading
  of the page it points to;
- an inline code span outside fenced blocks that looks like a repository path (no spaces,
  and its first segment is a top-level directory of the repository, like
  ``config/example.yaml`` or ``receiver/gunicorn_conf.py``) must exist; single file names
  (``base.py``) and paths outside the repository (``var/receiver.db``, ``/etc/...``) are
  not checked;
- nothing points outside the repository (the shared design notes are not shipped);
- the README's test command is the command ``.ci/run`` runs, and every configuration key,
  environment variable, CLI option and log event of the code is named in the docs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from receiver import config, metrics
from receiver.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`\n]+)`")


def _prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return _FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, all but word characters, hyphens and spaces
    dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _prose(page.read_text()),
                                                    re.M)}


def _top_level_directories() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.split("/", 1)[0] for line in listed.splitlines() if "/" in line}


TOP = _top_level_directories()


def broken_references(page: Path, text: str | None = None) -> Iterator[str]:
    """Every link or repository path in ``page`` (or ``text`` as if it were) that does not
    resolve, as ``what: why``."""
    text = page.read_text() if text is None else text
    prose = _prose(text)
    for target in _LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            yield f"link {target}: {path_part} does not exist"
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            yield f"link {target}: no heading #{fragment} in {resolved.name}"
    for span in _CODE.findall(prose):
        span = span.strip()
        if " " in span or "/" not in span or "*" in span or "<" in span:
            continue
        if span.split("/", 1)[0] not in TOP:
            continue
        if not (ROOT / span).exists():
            yield f"path `{span}` does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_repository_path_resolves(page: Path) -> None:
    assert list(broken_references(page)) == []


@pytest.mark.parametrize(("markdown", "problem"), [
    ("see [the guide](docs/nope.md)", "docs/nope.md does not exist"),
    ("see [state](docs/state.md#no-such-heading)", "no heading #no-such-heading"),
    ("edit `config/nope.yaml`", "`config/nope.yaml` does not exist"),
    ("see [below](#nowhere)", "no heading #nowhere"),
])
def test_reference_check_catches_a_broken_reference(markdown: str, problem: str) -> None:
    found = list(broken_references(ROOT / "README.md", markdown))
    assert len(found) == 1 and problem in found[0]


def test_reference_check_accepts_urls_outside_paths_and_fenced_blocks() -> None:
    markdown = ("[site](https://example.com/x) `var/receiver.db` `/etc/x` `base.py`\n"
                "```sh\ncat config/nope.yaml\n```\n")
    assert list(broken_references(ROOT / "README.md", markdown)) == []


def test_the_docs_point_nowhere_outside_the_repository() -> None:
    for page in PAGES:
        text = page.read_text()
        assert "DESIGN.md" not in text, page.name
        assert "../shared" not in text and "shared/" not in text, page.name


def _sh_lines(page: Path) -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.M | re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    (command,) = [line for line in _sh_lines(ROOT / "README.md") if "pytest" in line]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert command in ci
    assert ci[-1] == command  # the last thing CI does, so its status is CI's status


def test_readme_first_commands_use_a_virtual_environment() -> None:
    # PEP 668: a stock Debian/Ubuntu python3 refuses `pip install` outside a venv
    commands = [line for line in _sh_lines(ROOT / "README.md")
                if "pip install" in line]
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")
    assert "Python ≥ 3.11" in (ROOT / "README.md").read_text()


# --- the docs cover what the code has ------------------------------------------------------


def _spans(page: str) -> set[str]:
    return {s.strip() for s in _CODE.findall((ROOT / "docs" / page).read_text())}


def test_every_configuration_key_is_documented() -> None:
    spans = _spans("configuration.md")
    sections = {"state": config.StateConfig, "launcher": config.LauncherConfig,
                "processing": config.ProcessingConfig, "server": config.ServerConfig,
                "outcomes": config.OutcomesConfig, "module_map": config.ModuleMapConfig,
                "ui": config.UiConfig, "ui.basic": config.UiBasicConfig}
    missing = [f"{name}.{f.name}" for name, cls in sections.items() for f in fields(cls)
               if f"{name}.{f.name}" not in spans]
    from providers import REGISTRY

    keys = [*config.schema_keys(config.RepositoryConfig),
            *config.schema_keys(config.PipelineConfig),
            *(f.name for cls in REGISTRY.values() for f in fields(cls.Options))]
    missing += [key for key in keys if key not in spans]
    missing += [f"{{{f}}}" for f in config.VARIABLE_FIELDS if f"{{{f}}}" not in spans]
    assert missing == []


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    sources = [p.read_text() for d in ("receiver", "providers") for p in (ROOT / d).rglob("*.py")]
    names = {m for s in sources for m in re.findall(
        r'(?:os\.environ\.get|os\.getenv)\(\s*"([A-Z0-9_]+)"', s)}
    names |= {m for s in sources for m in re.findall(r'^\w+_ENV = "([A-Z0-9_]+)"', s, re.M)}
    assert {"RECEIVER_CONFIG", "RECEIVER_BIND"} <= names  # the patterns still find them
    spans = _spans("configuration.md")
    assert sorted(n for n in names if n not in spans and not any(
        n in s for s in spans)) == []


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, name
                for option, _ in _options(sub):
                    yield name, option
        else:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    yield "", option


def test_every_command_and_option_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = [f"{command} {option}".strip() for command, option in _options(build_parser())
               if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)]
    assert missing == []


def test_every_log_event_and_metric_is_documented() -> None:
    sources = [p.read_text() for d in ("receiver", "providers") for p in (ROOT / d).rglob("*.py")]
    events = {m for s in sources for m in re.findall(
        r'(?:log|_log\(\))\.(?:debug|info|warning|error|exception)\(\s*"([a-z_]+\.[a-z_.]+)"', s)}
    events |= {m for s in sources for m in re.findall(r'canonical\([^,]+, "([a-z_.]+)"', s)}
    events -= {"event.name"}  # the logger's docstring example
    assert {"pipeline.started", "webhook.accepted"} <= events
    spans = _spans("operations.md")
    assert sorted(events - spans) == []
    names = {name for table in metrics._METRICS.values() for name, *_ in table}
    assert sorted(names - spans) == []

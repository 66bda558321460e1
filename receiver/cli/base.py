"""What every command shares: the Command base, the shared options, exit codes, output.

A command is one module under ``receiver/cli/`` holding one :class:`Command` subclass
(pip's layout): its ``name``, ``help`` and ``description``, the options only it takes
(:meth:`Command.add_options`) and :meth:`Command.run`, which returns an :class:`ExitCode`.
The options every command takes (``--config``) are added once, here; the errors every
command may meet (an invalid configuration, a dependency that fails) are translated into
messages and exit codes once, in :func:`receiver.cli.main`.
"""

from __future__ import annotations

import argparse
import enum
import sys

from receiver import config as config_mod


class ExitCode(enum.IntEnum):
    """The command's exit status (docs/cli.md)."""

    SUCCESS = 0
    # a dependency failed (the state store, a provider API), or nothing was found
    FAILURE = 1
    # the configuration or the command line is invalid, or a check found a problem
    USAGE = 2


CONFIG_HELP = "the YAML configuration file (default: $RECEIVER_CONFIG)"


class Command:
    """One ``webhook-receiver`` command. Subclasses set the class attributes and implement
    :meth:`run`; :meth:`add_options` adds the options only that command takes."""

    name: str
    help: str
    description: str

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's own options (the shared ``--config`` is added already)."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the command; its :class:`ExitCode`. May raise ConfigError, ProviderError,
        StateError or SecretError, which :func:`receiver.cli.main` reports."""
        raise NotImplementedError


def load_config(args: argparse.Namespace) -> config_mod.Config:
    """The validated configuration named by ``--config`` (or ``$RECEIVER_CONFIG``)."""
    return config_mod.load(config_mod.config_path(args.config))


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal could act on, or that could hide or
    reorder what is shown, written as a Python escape (``\\x1b``, ``\\u202e``).

    Those are the characters ``str.isprintable`` calls unprintable: C0 and C1 controls,
    DEL, the bidirectional controls (U+200E/F, U+202A-202E, U+2066-2069) and every other
    format character (zero-width ones, U+061C), line and paragraph separators, spaces
    other than the ASCII one, and unpaired surrogates (a file name that is not UTF-8).
    Newlines and tabs are escaped too: one call renders one line. Everything else,
    non-ASCII letters included, is kept as it is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def say(line: str = "", *, err: bool = False) -> None:
    """Print one line of text output through :func:`terminal_safe`: file and branch names,
    pipeline names from a module map, delivery ids and error messages all come from
    repositories and providers. (JSON output is printed as the json module writes it:
    ASCII only, every control and non-ASCII character a ``\\u`` escape.)"""
    print(terminal_safe(line), file=sys.stderr if err else sys.stdout)


def short(sha: str | None) -> str:
    """A commit id as people read it: its first 12 digits, ``(none)`` for none."""
    return sha[:12] if sha else "(none)"


def first_literal_branch(repo: config_mod.RepositoryConfig) -> str | None:
    """The repository's first branch rule without wildcards (``main`` of ``[main, release/*]``)."""
    return next((b for b in repo.branches.includes if not set(b) & set("*?[")), None)

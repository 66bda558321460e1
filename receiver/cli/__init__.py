"""The ``webhook-receiver`` command line (docs/cli.md).

One module per command, each a :class:`~receiver.cli.base.Command` (pip's layout):
``serve``, ``check-config``, ``explain``, ``history`` and ``state`` (with ``init``, ``seed``
and ``leases``). :data:`COMMANDS` is the only list of them; :func:`build_parser` adds the
options every command shares once, and :func:`main` turns the errors every command may meet
into messages and :class:`~receiver.cli.base.ExitCode`\\ s in one place.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from receiver.cli.base import CONFIG_HELP, Command, ExitCode, say, terminal_safe
from receiver.cli.check_config import CheckConfig
from receiver.cli.explain import Explain
from receiver.cli.history import History
from receiver.cli.serve import Serve
from receiver.cli.state import State
from receiver.errors import ConfigError, ProviderError, SecretError, StateError

COMMANDS: tuple[Command, ...] = (Serve(), CheckConfig(), Explain(), History(), State())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs). Every option and command has help."""
    from receiver import __version__

    parser = argparse.ArgumentParser(
        prog="webhook-receiver",
        description="Receive push webhooks and start exactly the AWS CodePipeline pipelines "
                    "whose monorepo modules changed.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="'webhook-receiver COMMAND --help' says more")
    for command in COMMANDS:
        each = sub.add_parser(command.name, help=command.help, description=command.description)
        each.add_argument("--config", help=CONFIG_HELP)
        command.add_options(each)
        each.set_defaults(command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: run the command, report its errors."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.command.run(args))
    except ConfigError as exc:
        say("configuration error:", err=True)
        for problem in exc.problems:
            say(f"  {problem}", err=True)
        return ExitCode.USAGE
    except (ProviderError, StateError, SecretError) as exc:  # SecretError: explain's token
        say(f"error: {exc}", err=True)
        return ExitCode.FAILURE


__all__ = ["COMMANDS", "ExitCode", "build_parser", "main", "terminal_safe"]

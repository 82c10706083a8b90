"""The ``diffeval`` command: argument parsing and exit codes only.

Subcommands are :class:`Command` entries of :data:`COMMANDS`: the built-in ones are one table in
:mod:`diffeval.cli.commands`, plugins add theirs (e.g. the bundled demo's ``diffeval demo``). One
exit-code mapping for every subcommand (:class:`diffeval.core.errors.ExitCode`): 0 pass, 1 regression or
failed check, 2 error (including any unexpected exception — never 1), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from diffeval.core import signals
from diffeval.core.errors import DiffevalError, ExitCode, exit_code_for
from diffeval.core.log import cli_handler
from diffeval.core.registry import Registry, require_plugins

__all__ = ["main", "build_parser", "COMMANDS", "Command", "positive_int", "non_negative_int"]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message that says what was given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, ``configure(parser, positive_int, non_negative_int)`` adding its options, and
    ``handler(args) -> exit code``.
    """

    help: str
    configure: Callable[[argparse.ArgumentParser, Any, Any], None]
    handler: Callable[[argparse.Namespace], int]


COMMANDS: Registry[Command] = Registry("command", builtins="diffeval.cli.commands")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not when the help text already says it, nor for flags and unset (None) options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    from diffeval.version import __version__

    parser = argparse.ArgumentParser(
        prog="diffeval", description="Evaluation and diagnostics for diffusion models.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"diffeval {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.help,
            description=command.help,
            allow_abbrev=False,
            formatter_class=_HelpFormatter,
        )
        command.configure(sub, positive_int, non_negative_int)
        sub.set_defaults(handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns its exit code (0 pass, 1 regression / failed check, 2 error, 130 interrupted)."""
    cli_handler()  # library notes (conversions, caveats, retries) as one `diffeval: ...` line each on stderr
    try:
        require_plugins()  # a module $DIFFEVAL_PLUGINS names must load: never run without what was asked for
    except DiffevalError as error:
        print(f"diffeval: error: {error}", file=sys.stderr)
        return int(ExitCode.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    signals.install()  # SIGTERM: stop at the next batch boundary, like Ctrl-C
    try:
        return int(args.handler(args))
    except DiffevalError as error:
        interrupted = bool(getattr(error, "interrupted", False))
        print(f"diffeval {args.command}: error: {error}", file=sys.stderr)
        return int(ExitCode.INTERRUPTED if interrupted else ExitCode.ERROR)
    except KeyboardInterrupt as error:
        print(f"diffeval {args.command}: interrupted", file=sys.stderr)
        return int(exit_code_for(error))
    except Exception as error:  # an unexpected error is exit 2 (an error), never 1 (a regression)
        print(f"diffeval {args.command}: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        if os.environ.get("DIFFEVAL_DEBUG"):
            traceback.print_exc()
        else:
            print("(set DIFFEVAL_DEBUG=1 for the traceback)", file=sys.stderr)
        return int(exit_code_for(error))


if __name__ == "__main__":
    raise SystemExit(main())

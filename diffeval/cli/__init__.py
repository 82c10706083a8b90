"""The ``diffeval`` command line: argument parsing, the command table and exit codes — nothing else.

:mod:`~diffeval.cli.main` builds the parser from :data:`~diffeval.cli.main.COMMANDS` and maps every outcome to
one exit code; :mod:`~diffeval.cli.commands` is the table of built-in commands. Handlers call the layers below
(``api``, ``run``, ``gate``); nothing imports the CLI except plugins that add a command.
"""

from diffeval.cli.main import COMMANDS, Command, build_parser, main

__all__ = ["main", "build_parser", "COMMANDS", "Command"]

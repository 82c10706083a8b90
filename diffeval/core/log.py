"""Library notes through :mod:`logging` (the ``diffeval`` logger) and failed checks as :class:`DiffevalWarning`.

Python users see notes as they configure logging (warnings reach stderr by default); the command line installs
:func:`cli_handler` so every note is one ``diffeval: ...`` line on stderr. A failed check in a Python entry point
(``evaluate``, ``Evaluator.compute``) is a :class:`~diffeval.core.errors.DiffevalWarning`, or with ``strict=True``
a :class:`~diffeval.core.errors.CheckFailed` error.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from diffeval.core.errors import CheckFailed, DiffevalWarning

__all__ = ["logger", "note", "check_failed", "cli_handler", "stderr_is_terminal"]

logger = logging.getLogger("diffeval")


def note(message: str, *args: Any) -> None:
    """A note a user should read (a conversion, a caveat, a retry): a WARNING of the ``diffeval`` logger."""
    logger.warning(message, *args)


def check_failed(name: str, message: str, strict: bool | None, stacklevel: int = 3) -> None:
    """A failed check in a Python entry point: a :class:`DiffevalWarning` naming it (``strict=True``: an error;
    ``strict=None``: nothing — the caller reports the check itself, as the CLI's runs do)."""
    if strict is None:
        return
    text = f"check {name} failed: {message}"
    if strict:
        raise CheckFailed(text)
    warnings.warn(DiffevalWarning(text), stacklevel=stacklevel)


class _StderrHandler(logging.Handler):
    """Writes ``diffeval: <message>`` to the *current* ``sys.stderr`` (so captured streams see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"diffeval: {record.getMessage()}\n")
        except Exception:  # a closed stream must not turn a note into a crash
            self.handleError(record)


def cli_handler() -> logging.Handler:
    """Route the ``diffeval`` logger to stderr, one line per note, for the command line (idempotent)."""
    for handler in logger.handlers:
        if isinstance(handler, _StderrHandler):
            return handler
    handler = _StderrHandler(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def stderr_is_terminal() -> bool:
    """Progress bars default to on when stderr is a terminal (off in pipes, CI logs and captured tests)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False

"""Exception types of diffeval, and the process exit codes they map to.

Every error message says four things: what went wrong, what was expected, what was
seen, and how to fix it. :func:`explain` builds such a message so every module
words its errors the same way.

Exit codes (one mapping for every command, :func:`exit_code_for`):

- ``0`` pass / success;
- ``1`` a regression (gate) or a failed check (run, diagnose, demo);
- ``2`` an error: bad input, bad option, unreadable file, unexpected exception;
- ``130`` interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "DiffevalError",
    "ScheduleError",
    "SamplerError",
    "WeightsError",
    "InputError",
    "ConfigError",
    "OutputError",
    "CheckFailed",
    "DiffevalWarning",
    "ExitCode",
    "exit_code_for",
    "explain",
]


def explain(what: str, *, expected: str, got: str, fix: str) -> str:
    """Format an error message: ``what; expected ...; got ...; fix: ...``."""
    return f"{what}: expected {expected}; got {got}. Fix: {fix}"


class ExitCode(IntEnum):
    """What a diffeval command's exit status means."""

    OK = 0
    FAILED = 1  # a regression (gate) or a failed check
    ERROR = 2  # bad input or anything unexpected: never read as a pass or a regression
    INTERRUPTED = 130


class DiffevalError(ValueError):
    """Base class of every error diffeval raises on bad input."""


class ScheduleError(DiffevalError):
    """A noise schedule is invalid (NaN, non-monotone log-SNR, betas out of range)."""


class SamplerError(DiffevalError):
    """A sampler is misconfigured or its model returned something unusable."""


class WeightsError(DiffevalError):
    """A weight file is missing, has the wrong hash, or does not load safely."""


class InputError(DiffevalError):
    """Images, features, statistics or data given to a metric or check are not usable as given."""


class ConfigError(DiffevalError):
    """A configuration names an unknown option or value."""


class OutputError(DiffevalError):
    """An output (report, statistics, figure, checkpoint, lock) could not be written, or its folder is taken; the
    message says which file, why (a full disk names the folder and the bytes needed) and what was left as it was."""


class CheckFailed(DiffevalError):
    """A check failed where the caller asked for ``strict=True`` (the check's message says what and the fix)."""


class DiffevalWarning(UserWarning):
    """A check failed (or an input looks wrong) and the caller did not ask for ``strict=True``: the number was
    computed, but read it knowing this. Turn it into an error with ``warnings.simplefilter("error", DiffevalWarning)``
    or ``strict=True``."""


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of a command that stopped with ``error``: 130 for interrupts, 2 for everything else."""
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.ERROR

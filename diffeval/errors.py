"""Exception types of diffeval.

Every error message says four things: what went wrong, what was expected, what was
seen, and how to fix it. :func:`explain` builds such a message so every module
words its errors the same way.
"""

from __future__ import annotations

__all__ = [
    "DiffevalError",
    "ScheduleError",
    "SamplerError",
    "WeightsError",
    "InputError",
    "ConfigError",
    "explain",
]


def explain(what: str, *, expected: str, got: str, fix: str) -> str:
    """Format an error message: ``what; expected ...; got ...; fix: ...``."""
    return f"{what}: expected {expected}; got {got}. Fix: {fix}"


class DiffevalError(ValueError):
    """Base class of every error diffeval raises on bad input."""


class ScheduleError(DiffevalError):
    """A noise schedule is invalid (NaN, non-monotone log-SNR, betas out of range)."""


class SamplerError(DiffevalError):
    """A sampler is misconfigured or its model returned something unusable."""


class WeightsError(DiffevalError):
    """A weight file is missing, has the wrong hash, or does not load safely."""


class InputError(DiffevalError):
    """Images, features or data given to a metric or check are not usable as given."""


class ConfigError(DiffevalError):
    """A configuration names an unknown option or value."""

"""Checks: named verdicts with a value, a threshold and the fix (the contract is :mod:`diffeval.checks.base`).

One module per check family: SNR endpoints, x_T normality, training diagnostics, the output range of every
evaluation; :mod:`~diffeval.checks.figures` draws their plots. Importing this package registers the built-in checks
in :data:`CHECKS`. May import ``core``, ``diffusion``, ``data``, ``stats``, ``features`` and ``samplers``; never a
metric, the engine or anything above.
"""

from diffeval.checks.base import (
    CHECKS,
    NEEDS,
    STATUSES,
    Check,
    CheckContext,
    CheckOutcome,
    CheckResult,
    Figure,
    register_check,
    run_check,
    worst,
)
from diffeval.checks.snr_endpoints import SnrEndpoints, check_snr_endpoints, terminal_kl_bits
from diffeval.checks.training import (
    Saturation,
    TerminalEpsVariance,
    check_terminal_eps_variance,
    loss_profile,
    saturation_by_guidance,
)
from diffeval.checks.xt_normality import XtNormality, check_xt_batch, check_xt_normality, preprocessing

__all__ = [
    "CHECKS",
    "NEEDS",
    "STATUSES",
    "Check",
    "CheckContext",
    "CheckOutcome",
    "CheckResult",
    "Figure",
    "Saturation",
    "SnrEndpoints",
    "TerminalEpsVariance",
    "XtNormality",
    "check_snr_endpoints",
    "check_terminal_eps_variance",
    "check_xt_batch",
    "check_xt_normality",
    "loss_profile",
    "preprocessing",
    "register_check",
    "run_check",
    "saturation_by_guidance",
    "terminal_kl_bits",
    "worst",
]

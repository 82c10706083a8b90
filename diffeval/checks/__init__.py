"""Checks: named verdicts with a value, a threshold and the fix."""

from diffeval.checks.base import STATUSES, CheckResult, worst
from diffeval.checks.snr_endpoints import check_snr_endpoints, terminal_kl_bits
from diffeval.checks.training import check_terminal_eps_variance, loss_profile, saturation_by_guidance
from diffeval.checks.xt_normality import check_xt_batch, check_xt_normality, preprocessing

__all__ = [
    "STATUSES",
    "CheckResult",
    "check_snr_endpoints",
    "check_terminal_eps_variance",
    "check_xt_batch",
    "check_xt_normality",
    "loss_profile",
    "preprocessing",
    "saturation_by_guidance",
    "terminal_kl_bits",
    "worst",
]

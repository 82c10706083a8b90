"""``output_range``: is the sampler's output on the [-1, 1] scale? Recorded on every evaluation.

The classic silent failure on the sampling side: a sampler that returns [0, 1] or
0–255 images. Clamped and quantized, they still give a number (FID 611.5 and 885.9 on
the bundled demo), so the range itself is checked, from statistics the evaluation loop
keeps on the device (no per-batch host sync): the count of values outside
``[-1 - 1e-3, 1 + 1e-3]``, the count of negative values, the minimum and the maximum.

Verdicts, in order:

- ``fail``, signature **0-255**: the maximum exceeds 2 and nothing is negative;
- ``fail``, signature **[0, 1]**: nothing is negative and nothing exceeds 1 (over at least
  :data:`MIN_VALUES` values — a real [-1, 1] image set always has dark pixels);
- ``fail``: more than :data:`FAIL_FRACTION` of the values, or any value beyond ±2, is outside [-1, 1];
- ``warn``: some values are outside [-1, 1] (clamped before quantization: common for samplers
  that do not clip their last step);
- ``pass`` otherwise.

Example::

    >>> import torch
    >>> stats = RangeStats.of(torch.rand(8, 3, 8, 8))
    >>> check_output_range(stats).message.split(":")[0]
    'these look like [0, 1] images'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffeval.checks.base import CheckResult
from diffeval.core.quantize import RANGE_TOLERANCE

__all__ = ["RangeStats", "check_output_range", "FAIL_FRACTION", "MIN_VALUES", "NAME"]

NAME = "output_range"
FAIL_FRACTION = 0.10
MIN_VALUES = 1000


@dataclass
class RangeStats:
    """Counts and extremes of sampler outputs; tensors on the device until :meth:`finalize`, then plain numbers."""

    n_values: int = 0
    outside: int | torch.Tensor = 0
    negative: int | torch.Tensor = 0
    lo: float | torch.Tensor = float("inf")
    hi: float | torch.Tensor = float("-inf")

    def update(self, images: torch.Tensor) -> None:
        """Add a batch (no host sync: the sums stay on the device)."""
        x = images.detach()
        if x.numel() == 0:
            return
        lo, hi = x.amin().double(), x.amax().double()
        first = self.n_values == 0
        self.n_values += x.numel()
        self.outside = self.outside + (x.abs() > 1 + RANGE_TOLERANCE).sum()
        self.negative = self.negative + (x < 0).sum()
        self.lo = lo if first else torch.minimum(torch.as_tensor(self.lo, device=lo.device, dtype=lo.dtype), lo)
        self.hi = hi if first else torch.maximum(torch.as_tensor(self.hi, device=hi.device, dtype=hi.dtype), hi)

    def finalize(self) -> RangeStats:
        """Plain Python numbers (one host sync)."""
        return RangeStats(self.n_values, int(self.outside), int(self.negative), float(self.lo), float(self.hi))

    def merge(self, other: RangeStats) -> RangeStats:
        a, b = self.finalize(), other.finalize()
        return RangeStats(
            a.n_values + b.n_values, a.outside + b.outside, a.negative + b.negative, min(a.lo, b.lo), max(a.hi, b.hi)
        )  # type: ignore[operator]

    @property
    def fraction_outside(self) -> float:
        stats = self.finalize()
        return stats.outside / stats.n_values if stats.n_values else 0.0  # type: ignore[operator]

    @classmethod
    def of(cls, images: torch.Tensor) -> RangeStats:
        stats = cls()
        stats.update(images)
        return stats.finalize()


def check_output_range(stats: RangeStats) -> CheckResult:
    """The ``output_range`` verdict for a run's sampler outputs (see the module docstring)."""
    s = stats.finalize()
    threshold = (
        f"values within [-1, 1] (tolerance {RANGE_TOLERANCE:g}); fail above {FAIL_FRACTION:.0%} outside or beyond ±2"
    )
    if s.n_values == 0:
        return CheckResult(NAME, "skip", float("nan"), threshold, "skipped: no samples were drawn")
    frac = s.outside / s.n_values  # type: ignore[operator]
    span = f"outputs span [{s.lo:.4g}, {s.hi:.4g}], {frac:.2%} of {s.n_values} values outside [-1, 1]"
    if s.negative == 0 and s.hi > 2:
        return CheckResult(
            NAME,
            "fail",
            frac,
            threshold,
            f"these look like 0-255 pixels: {span}, none negative. They were clamped to [-1, 1], so every metric is"
            " computed on saturated images. Fix: return images on [-1, 1] (x / 127.5 - 1 for 0-255 values).",
        )
    if s.negative == 0 and s.hi <= 1 + RANGE_TOLERANCE and s.n_values >= MIN_VALUES:
        return CheckResult(
            NAME,
            "fail",
            frac,
            threshold,
            f"these look like [0, 1] images: {span}, none negative (a [-1, 1] image set has dark pixels below 0). Every"
            " metric sees them as washed-out grey. Fix: return images on [-1, 1] (x * 2 - 1 for [0, 1] values).",
        )
    if frac > FAIL_FRACTION or s.hi > 2 or s.lo < -2:
        return CheckResult(
            NAME,
            "fail",
            frac,
            threshold,
            f"{span}: the output is not on the [-1, 1] scale, and clamping changes the images. Fix: check the sampler's"
            " output scale (and clip its last step).",
        )
    if s.outside:
        return CheckResult(
            NAME,
            "warn",
            frac,
            threshold,
            f"{span}: clamped before quantization (small overshoots are common for samplers that do not clip their last"
            " step). Fix: clip the sampler's output if the overshoot is not intended.",
        )
    return CheckResult(NAME, "pass", frac, threshold, f"{span}.")

"""The checks' own figures as PNG (matplotlib, Agg backend): the log-SNR curve with its bands, the x_T histogram
and QQ plot.

Figures draw what they are given: thresholds come from the checks that own them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.core.files import save_figure
from diffeval.diffusion.schedules import Schedule

__all__ = ["pyplot", "LogSnrBands", "plot_log_snr", "plot_xt_histogram", "plot_qq"]


@dataclass(frozen=True)
class LogSnrBands:
    """The log-SNR thresholds the SNR-endpoint checks hold a schedule to."""

    terminal_pass: float  # log-SNR_T at or below which the terminal check passes
    terminal_warn: float  # ... warns; above it fails
    start_min: float  # first step's log-SNR for 8-bit likelihood
    start_max: float  # float32 resolution limit


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_log_snr(
    schedule: Schedule, path: str | Path, bands: LogSnrBands, first_sampling_step: int | None = None
) -> Path:
    """log-SNR against t with the terminal (B2) and start (B3) thresholds shaded."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    t = np.arange(1, schedule.T + 1)
    lam = schedule.log_snr.numpy().copy()
    finite = np.isfinite(lam)
    ax.plot(t[finite], lam[finite], color="black", lw=1.6, label=f"{schedule.name} (T={schedule.T})")
    if not finite[-1]:
        ax.annotate(
            "log-SNR = -inf at T", (t[-1], lam[finite][-1]), textcoords="offset points", xytext=(-110, -14), fontsize=8
        )
    ax.axhspan(bands.terminal_warn, bands.terminal_pass, color="orange", alpha=0.15, label="terminal: warn band")
    ax.axhspan(
        bands.terminal_warn,
        max(np.nanmax(lam[finite]), bands.start_max) + 2,
        xmin=0.9,
        color="red",
        alpha=0.12,
        label="terminal: fail (end keeps signal)",
    )
    ax.axhline(
        bands.terminal_pass,
        color="green",
        ls="--",
        lw=1,
        label=f"terminal pass: log-SNR_T <= {bands.terminal_pass:.2f}",
    )
    ax.axhline(
        bands.start_min, color="blue", ls=":", lw=1, label=f"start for 8-bit likelihood: >= {bands.start_min:.2f}"
    )
    ax.axhline(bands.start_max, color="purple", ls=":", lw=1, label=f"float32 limit: <= {bands.start_max}")
    if first_sampling_step is not None:
        ax.axvline(
            first_sampling_step, color="gray", ls="-.", lw=1, label=f"first sampling step t={first_sampling_step}"
        )
    ax.set_xlabel("training step t")
    ax.set_ylabel("log-SNR  λ = log(α²/σ²)")
    ax.set_title("Noise schedule and SNR-endpoint thresholds")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_xt_histogram(x_T: torch.Tensor, path: str | Path, title: str = "x_T against N(0, 1)") -> Path:  # noqa: N803
    """Histogram of x_T values with the N(0, 1) density."""
    plt = pyplot()
    values = x_T.flatten().double().numpy()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    lo, hi = min(-4.5, np.percentile(values, 0.1)), max(4.5, np.percentile(values, 99.9))
    ax.hist(
        values,
        bins=120,
        range=(lo, hi),
        density=True,
        color="steelblue",
        alpha=0.7,
        label=f"x_T (mean {values.mean():.3f}, var {values.var():.3f})",
    )
    grid = np.linspace(lo, hi, 400)
    ax.plot(grid, np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), color="black", lw=1.5, label="N(0, 1)")
    ax.set_title(title)
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_qq(x_T: torch.Tensor, path: str | Path) -> Path:  # noqa: N803
    """Quantiles of x_T against those of N(0, 1); the identity line is the target."""
    from scipy import stats

    plt = pyplot()
    values = np.sort(x_T.flatten().double().numpy())
    if values.size > 5000:
        values = values[np.linspace(0, values.size - 1, 5000).astype(int)]
    probs = (np.arange(values.size) + 0.5) / values.size
    theory = stats.norm.ppf(probs)
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=110)
    ax.plot(theory, values, ".", ms=2, color="steelblue", label="x_T")
    lim = max(abs(theory).max(), 4)
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=1, label="identity (N(0, 1))")
    ax.set_xlabel("N(0, 1) quantile")
    ax.set_ylabel("x_T quantile")
    ax.set_title("QQ plot of x_T")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)

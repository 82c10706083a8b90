"""``TrainingMonitor``: diffeval's diagnostics while a model trains, a few lines in a plain PyTorch loop.

The classic failures are visible long before a checkpoint is evaluated:

- the **data** fed to the forward process: 0-255 pixels (or [0, 1] data) where the model expects [-1, 1] leave
  x_T far from N(0, I) — the "SNR collapse trap" — and show on the *first* training batch
  (:meth:`TrainingMonitor.observe_batch` runs the x_T-normality checks on it);
- the **schedule and prediction**: a zero-terminal-SNR schedule with eps-prediction cannot be trained at
  t = T (checked once, from the declaration);
- the **loss by log-SNR band** (:meth:`TrainingMonitor.observe_loss`): per-sample losses binned by the log-SNR
  of their timestep, averaged per window of steps; a band whose loss never falls, or that climbs back up
  (diverges), is named with its log-SNR range.

Example (a plain loop; the monitor keeps its sums on the loss's device and syncs once per window)::

    >>> import torch
    >>> from diffeval import schedules
    >>> from diffeval.run.monitor import TrainingMonitor
    >>> schedule = schedules.cosine()
    >>> monitor = TrainingMonitor(schedule, "eps", window=5)
    >>> x0 = torch.rand(64, 1, 8, 8) * 2 - 1                        # a training batch, in [-1, 1]
    >>> [r.status for r in monitor.observe_batch(x0) if r.name == "x0_range"]
    ['pass']
    >>> for step in range(20):
    ...     t = torch.randint(0, schedule.T, (64,))
    ...     monitor.observe_loss(t, torch.rand(64) / (step + 1))   # per-sample losses
    >>> frame = monitor.report().to_frame()
    >>> bool((frame["name"] == "loss_bands").any())
    True

``report()`` returns a :class:`~diffeval.report.report.Report` (rows like any run's; ``write(folder)`` adds the
loss-by-log-SNR plot), so ``diffeval gate`` can compare two training runs. :func:`lightning_callback` wraps the
monitor for PyTorch Lightning; under Accelerate, call it on the main process with gathered tensors
(``accelerator.gather_for_metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.checks.base import CheckResult, Figure
from diffeval.checks.figures import pyplot
from diffeval.checks.snr_endpoints import check_snr_endpoints
from diffeval.checks.xt_normality import check_xt_normality
from diffeval.core.errors import InputError, explain
from diffeval.core.files import save_figure
from diffeval.core.log import check_failed
from diffeval.diffusion.denoiser import check_prediction
from diffeval.diffusion.schedules import Schedule
from diffeval.report.report import Report, check_row, make_row, provenance

__all__ = ["TrainingMonitor", "lightning_callback", "LossWindow"]


@dataclass(frozen=True)
class LossWindow:
    """One window of steps: the mean loss per band (NaN where a band saw no sample) and its sample counts."""

    first_step: int
    mean: np.ndarray
    count: np.ndarray


class TrainingMonitor:
    """Watch a training run; see the module docstring.

    Args:
        schedule: the training schedule (its log-SNR bins the losses).
        prediction: what the model predicts (``eps``, ``x0``, ``v``).
        bands: log-SNR bands, equal in timestep count (quantiles of the schedule's log-SNR).
        window: steps per window of the loss curves (one host sync per window).
        batches: how many first training batches :meth:`observe_batch` checks (later calls return at once).
        strict: True raises on a failed check instead of a :class:`~diffeval.core.errors.DiffevalWarning`.
        tolerance: the relative change below which a band counts as flat (not improving).
    """

    def __init__(
        self,
        schedule: Schedule,
        prediction: str,
        *,
        bands: int = 8,
        window: int = 100,
        batches: int = 1,
        strict: bool = False,
        tolerance: float = 0.02,
        seed: int = 0,
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise InputError(
                explain(
                    "TrainingMonitor needs the training schedule",
                    expected="a diffeval Schedule (schedules.cosine(), schedules.from_betas(...), ...)",
                    got=type(schedule).__name__,
                    fix="convert it with diffeval.schedules.from_betas / from_alphas_cumprod / from_diffusers_config",
                )
            )
        for name, value, low in (("bands", bands, 2), ("window", window, 1), ("batches", batches, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(
                    explain(f"bad {name}", expected=f"an integer >= {low}", got=repr(value), fix=f"{name} = {low}")
                )
        self.schedule, self.prediction = schedule, check_prediction(prediction)
        self.window, self.batches, self.strict, self.tolerance, self.seed = window, batches, strict, tolerance, seed
        lam = schedule.log_snr.to(torch.float64)
        finite = lam[torch.isfinite(lam)]
        qs = torch.linspace(0, 1, bands + 1, dtype=torch.float64)[1:-1]
        self.edges = torch.quantile(finite, qs).flip(0)  # descending log-SNR: band 0 is the cleanest
        self.log_snr = lam
        self.static = check_snr_endpoints(schedule, prediction)  # the declaration: once
        self.batch_checks: list[CheckResult] = []
        self._batches_seen = 0
        self.windows: list[LossWindow] = []
        self._sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._steps = 0
        self._window_start = 0
        for result in self.static:
            if result.failed:
                check_failed(result.name, result.message, strict)

    @property
    def n_bands(self) -> int:
        return int(self.edges.numel()) + 1

    def band_ranges(self) -> list[tuple[float, float]]:
        """(high, low) log-SNR of each band, cleanest first."""
        lam = self.log_snr
        top, bottom = float(lam[torch.isfinite(lam)].max()), float(lam.min())
        edges = [top, *self.edges.tolist(), bottom]
        return [(edges[b], edges[b + 1]) for b in range(self.n_bands)]

    # -- the data ------------------------------------------------------------------------------------------------
    def observe_batch(self, x0: torch.Tensor) -> list[CheckResult]:
        """The data-range and forward-process (x_T normality) checks on a real training batch, exactly as the model
        receives it; runs on the first ``batches`` batches only (then returns [] at once)."""
        if self._batches_seen >= self.batches:
            return []
        self._batches_seen += 1
        results = check_xt_normality(x0.detach().to("cpu", torch.float64), self.schedule, None, self.seed)
        if self._batches_seen == 1:
            self.batch_checks = results
        for result in results:
            if result.failed:
                check_failed(result.name, result.message, self.strict)
        return results

    # -- the loss ------------------------------------------------------------------------------------------------
    def observe_loss(self, t_or_log_snr: torch.Tensor, per_sample_loss: torch.Tensor) -> None:
        """Add one step's per-sample losses: ``t_or_log_snr`` holds each sample's integer timestep (0-based, as the
        training loop drew it) or, as floats, its log-SNR."""
        loss = per_sample_loss.detach().reshape(-1)
        key = t_or_log_snr.detach().reshape(-1)
        if key.numel() != loss.numel():
            raise InputError(
                explain(
                    "observe_loss needs one timestep (or log-SNR) per sample loss",
                    expected=f"{loss.numel()} values",
                    got=f"{key.numel()}",
                    fix="pass the batch's t and the loss per sample (e.g. mse.mean(dim=(1, 2, 3)))",
                )
            )
        if key.is_floating_point():
            lam = key.to(torch.float64)
        else:
            lam = self.log_snr.to(key.device)[key.long()]
        band = torch.bucketize(-lam, -self.edges.to(lam.device))  # edges descend: bucketize on -lambda
        if self._sum is None or self._sum.device != loss.device:
            self._sum = torch.zeros(self.n_bands, dtype=torch.float64, device=loss.device)
            self._count = torch.zeros(self.n_bands, dtype=torch.float64, device=loss.device)
        self._sum.index_add_(0, band, loss.to(torch.float64))
        self._count.index_add_(0, band, torch.ones_like(loss, dtype=torch.float64))
        self._steps += 1
        if self._steps - self._window_start >= self.window:
            self._close_window()

    def _close_window(self) -> None:
        if self._sum is None or self._steps == self._window_start:
            return
        total, count = self._sum.cpu().numpy().copy(), self._count.cpu().numpy().copy()  # one sync per window
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        self.windows.append(LossWindow(self._window_start, mean, count))
        self._sum.zero_()
        self._count.zero_()
        self._window_start = self._steps

    def loss_checks(self) -> list[CheckResult]:
        """Verdicts on the loss curves: every band must improve, none may diverge (needs 3 windows)."""
        self._close_window()
        curves = np.array([w.mean for w in self.windows]) if self.windows else np.empty((0, self.n_bands))
        if curves.shape[0] < 3:
            return [
                CheckResult(
                    "loss_bands",
                    "skip",
                    float(curves.shape[0]),
                    ">= 3 windows",
                    f"{curves.shape[0]} window(s) of {self.window} steps: too few to judge the loss curves yet.",
                )
            ]
        ranges = self.band_ranges()
        flat, rising = [], []
        for b in range(self.n_bands):
            curve = curves[:, b][np.isfinite(curves[:, b])]
            if curve.size < 3:
                continue
            start, end, best = float(np.mean(curve[:1])), float(np.mean(curve[-1:])), float(np.min(curve))
            where = f"band {b} (log-SNR {ranges[b][0]:.3g} to {ranges[b][1]:.3g})"
            if end > best * (1 + 4 * self.tolerance) and end > start * (1 - self.tolerance) and best < start:
                rising.append(f"{where}: fell to {best:.4g}, back up to {end:.4g}")
            elif end >= start * (1 - self.tolerance):
                flat.append(f"{where}: {start:.4g} -> {end:.4g}")
        results = []
        if rising:
            results.append(
                CheckResult(
                    "loss_band_diverging",
                    "fail",
                    float(len(rising)),
                    "no band climbing back up",
                    "the loss climbs back up in "
                    + "; ".join(rising)
                    + ". Fix: lower the learning rate (or clip gradients); check that the band's timesteps are not"
                    " degenerate (zero terminal SNR with eps-prediction diverges at t = T).",
                )
            )
        results.append(
            CheckResult(
                "loss_bands",
                "warn" if flat else "pass",
                float(len(flat)),
                f"every band falls by > {100 * self.tolerance:g} %",
                (
                    "no improvement in "
                    + "; ".join(flat)
                    + ". A band that never learns: at high noise, data that does not reach N(0, I) (check x_T"
                    " normality) or a schedule that never destroys it; at low noise, an 8-bit step too coarse."
                )
                if flat
                else f"the loss falls in every band over {len(curves)} windows of {self.window} steps.",
            )
        )
        for result in results:
            if result.failed:
                check_failed(result.name, result.message, self.strict)
        return results

    # -- the report ----------------------------------------------------------------------------------------------
    def report(self, name: str = "training-monitor") -> Report:
        """Rows: the declaration and first-batch checks, the loss verdicts, and the last window's loss per band."""
        checks = [*self.static, *self.batch_checks, *self.loss_checks()]
        rows = [check_row(c) for c in checks]
        if self.windows:
            last = self.windows[-1]
            for b, (high, low) in enumerate(self.band_ranges()):
                rows.append(
                    make_row(
                        f"loss[log-SNR {high:.3g} to {low:.3g}]",
                        "metric",
                        float(last.mean[b]),
                        n_gen=int(last.count[b]),
                        direction="lower",
                        details={"band": b, "window_from_step": last.first_step, "windows": len(self.windows)},
                    )
                )
        config = {"schedule": self.schedule.name, "prediction": self.prediction, "window": self.window}
        return _MonitorReport(rows, provenance(config, "n/a", name=name), monitor=self)

    def plot(self, path: str | Path) -> Path:
        """The loss of each log-SNR band over the windows (log scale), cleanest band first."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        if self.windows:
            steps = [w.first_step for w in self.windows]
            curves = np.array([w.mean for w in self.windows])
            for b, (high, low) in enumerate(self.band_ranges()):
                ax.plot(steps, curves[:, b], marker=".", label=f"log-SNR {high:.2g} to {low:.2g}")
            ax.set_yscale("log")
            ax.legend(fontsize=7, ncol=2)
        ax.set_xlabel("training step (window start)")
        ax.set_ylabel("mean per-sample loss")
        ax.set_title(f"loss by log-SNR band ({self.schedule.name}, {self.prediction})")
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)
        return Path(path)


class _MonitorReport(Report):
    """A Report whose files include the loss-by-log-SNR plot."""

    def __init__(self, rows: Sequence[Any], prov: Any, monitor: TrainingMonitor) -> None:
        super().__init__(rows, prov)
        self._monitor = monitor

    def write(self, folder: str | Path, *, samples: Any = None, figures: Sequence[Any] = ()) -> dict[str, Path]:
        plot = Figure("loss_by_log_snr", self._monitor.plot)
        return super().write(folder, samples=samples, figures=[*figures, plot])


def lightning_callback(monitor: TrainingMonitor) -> Any:
    """A PyTorch Lightning ``Callback`` feeding ``monitor``: the LightningModule's ``training_step`` returns a dict
    with ``loss`` and ``diffeval = {"x0": batch, "t": timesteps, "loss": per-sample losses}``."""
    try:
        from lightning.pytorch import Callback  # type: ignore[import-not-found]
    except ImportError:
        try:
            from pytorch_lightning import Callback  # type: ignore[import-not-found]
        except ImportError:
            raise InputError(
                explain(
                    "PyTorch Lightning is not installed",
                    expected="lightning (or pytorch_lightning)",
                    got="neither importable",
                    fix="pip install lightning, or call monitor.observe_batch / observe_loss in your own loop",
                )
            ) from None

    class DiffevalMonitor(Callback):  # type: ignore[misc, valid-type]
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen = outputs.get("diffeval") if isinstance(outputs, dict) else None
            if seen is None:
                return
            if "x0" in seen:
                monitor.observe_batch(seen["x0"])
            monitor.observe_loss(seen["t"], seen["loss"])

    return DiffevalMonitor()

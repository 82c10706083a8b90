"""``diffeval diagnose``: SNR-endpoint checks of a schedule and, on data, the x_T-normality checks.

The schedule comes from a preset name, an ``alphas_cumprod`` file (.npy, .txt, .csv)
or a diffusers scheduler config (.json); the data from the bundled digits, an image
folder or an .npz batch, mapped to model space by a named preprocessing (``signed``
= x/127.5 - 1, ``unit`` = x/255, ``raw`` = 0–255). Writes the report and three PNG
plots (log-SNR curve with thresholds, x_T histogram against N(0, 1), QQ plot).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffeval import schedules
from diffeval.checks import CheckResult, check_snr_endpoints, check_xt_normality, preprocessing, worst
from diffeval.checks.xt_normality import forward_samples
from diffeval.errors import ConfigError, InputError, explain
from diffeval.plots import plot_log_snr, plot_qq, plot_xt_histogram
from diffeval.report import Report, provenance
from diffeval.sources import TensorSource, iter_batches, open_input

__all__ = ["DiagnoseConfig", "load_schedule", "load_data", "run_diagnose"]


@dataclass(frozen=True)
class DiagnoseConfig:
    schedule: str | None = None
    alphas: Path | None = None
    config: Path | None = None
    rescale_zero_snr: bool = False
    prediction: str | None = None
    steps: int | None = None
    spacing: str | None = None
    data: str | None = None
    preprocess: str = "signed"
    seed: int = 0
    out: Path = Path("diffeval-diagnose")


def load_schedule(name: str | None = None, alphas: Path | None = None, config: Path | None = None) -> schedules.Schedule:
    """Exactly one of a preset name, an alphas_cumprod file, or a diffusers config file."""
    given = [x is not None for x in (name, alphas, config)]
    if sum(given) != 1:
        raise ConfigError(explain("diagnose needs exactly one schedule source", expected="--schedule NAME, --alphas FILE or --config FILE", got=f"{sum(given)} given", fix="pass one of them"))
    if name is not None:
        return schedules.get(name)
    if alphas is not None:
        path = Path(alphas)
        if not path.is_file():
            raise InputError(explain(f"alphas file {path} not found", expected="an existing .npy/.txt/.csv file", got="nothing", fix="check the path"))
        try:
            array = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
        except ValueError as error:
            raise InputError(explain(f"cannot read {path}", expected="numbers, one alpha_bar per step", got=str(error), fix="save with numpy.save or one value per line")) from None
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 1:
            raise InputError(explain(f"alphas file {path} has the wrong shape", expected="a 1-D array (T,)", got=f"shape {array.shape}", fix="save one alpha_bar value per training step"))
        return schedules.from_alphas_cumprod(array, name=path.name)
    path = Path(config)  # type: ignore[arg-type]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(explain(f"cannot read diffusers config {path}", expected="a scheduler_config.json", got=f"{type(error).__name__}: {error}", fix="pass the scheduler's config file")) from None
    return schedules.from_diffusers_config(data)


def load_data(spec: str, limit: int = 4096) -> torch.Tensor:
    """uint8 NCHW images: ``digits`` (bundled), an image folder or an .npz batch (first ``limit`` images)."""
    if spec == "digits":
        from diffeval.demo.data import load_digits

        return load_digits("all").images
    source = open_input(spec)
    if not isinstance(source, TensorSource) and not hasattr(source, "load"):
        raise InputError(explain(f"{spec} holds statistics, not images", expected="images", got="mu/sigma", fix="pass the training images"))
    n = min(limit, len(source))  # type: ignore[arg-type]
    return torch.cat([images for _, images in iter_batches(source, 256, range(n))])  # type: ignore[arg-type]


def run_diagnose(cfg: DiagnoseConfig) -> tuple[list[CheckResult], Report, dict[str, Path]]:
    """Run the checks, write report + plots under ``cfg.out``; returns (results, report, paths)."""
    schedule = load_schedule(cfg.schedule, cfg.alphas, cfg.config)
    if cfg.rescale_zero_snr:
        schedule = schedules.rescale_zero_terminal_snr(schedule)
    results = check_snr_endpoints(schedule, prediction=cfg.prediction, steps=cfg.steps, spacing=cfg.spacing)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    first = int(schedules.sampling_indices(schedule.T, cfg.steps, cfg.spacing)[0]) + 1 if cfg.steps is not None and cfg.spacing is not None else None
    paths = {"log_snr_png": plot_log_snr(schedule, out / "log_snr.png", first)}
    if cfg.data is not None:
        images = load_data(cfg.data)
        prep = preprocessing(cfg.preprocess)
        results += check_xt_normality(images, schedule, prep, seed=cfg.seed)
        fs = forward_samples(prep(images).double(), schedule, cfg.seed)
        paths["xt_hist_png"] = plot_xt_histogram(fs.x_T, out / "xt_histogram.png", title=f"x_T of {cfg.data} ({cfg.preprocess}) under {schedule.name}")
        paths["qq_png"] = plot_qq(fs.x_T, out / "xt_qq.png")
    config = {"command": "diagnose", **{k: str(v) for k, v in cfg.__dict__.items()}, "schedule_name": schedule.name, "verdict": worst(results)}
    report = Report([r.to_row() for r in results], provenance(config, "cpu"))
    paths.update(report.write(out))
    return results, report, paths

"""``diffeval run``: execute a :class:`~diffeval.config.RunConfig` into a report.

Stages, in order (cheap first): build the subject (sampler or bare schedule) → build
every metric from its registered class (references resolved now, before any sampling)
→ checks (:func:`diffeval.checks.base.run_check` reads what each check needs) → data
metrics (bits/dim on data) → for each sweep value, sampling with every sample metric and
the latency rows. Rows are kept as they complete; if a step fails or the run is
interrupted, the rows so far are written with a ``run_error``/``run_interrupted`` row
saying where it stopped, and the error is raised again (exit 2, or 130 for Ctrl-C).

``diffeval diagnose`` is a checks-only run of the same runner (a ``[schedule]`` config).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffeval.checks.base import CHECKS, CheckContext, CheckResult, Figure, run_check
from diffeval.config import RunConfig
from diffeval.distributed import RankFailed, evaluate_sharded, world
from diffeval.errors import ConfigError, DiffevalError, explain
from diffeval.evaluate import EvaluationResult, check_labels, measure, resolve_device
from diffeval.features import get_extractor
from diffeval.metrics.base import BuildContext, Metric, metric_class
from diffeval.report import Report, check_row, make_row, metric_row, provenance
from diffeval.sources import open_images, open_source
from diffeval.subjects import Subject, build_subject, cond_fn

__all__ = [
    "run_config",
    "RunOutcome",
    "RunFailed",
    "build_metrics",
    "latency_rows",
    "check_writable",
    "data_metric_rows",
    "bpd_of_config",
]


class RunFailed(DiffevalError):
    """A run stopped part-way; the partial report was written to ``paths``."""

    def __init__(self, message: str, paths: dict[str, Path], interrupted: bool = False) -> None:
        super().__init__(message)
        self.paths = paths
        self.interrupted = interrupted


@dataclass
class RunOutcome:
    report: Report
    paths: dict[str, Path]
    samples: torch.Tensor | None = None
    checks: list[CheckResult] = field(default_factory=list)


class _Extractors:
    """Extractors built once per distinct (name, options) and shared by every metric that reads them."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.by_spec: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}

    def __call__(self, name: str, **options: Any) -> Any:
        options = {k: v for k, v in options.items() if v is not None}
        if "weights" in options:
            options["weights"] = str(self.cfg.resolve_path(options["weights"]))
        spec = (name, tuple(sorted(options.items())))
        if spec not in self.by_spec:
            self.by_spec[spec] = get_extractor(name, device=str(resolve_device(self.cfg.device)), **options)
        return self.by_spec[spec]

    def table(self) -> dict[str, Any]:
        from diffeval.features import extractor_key

        return {extractor_key(e): e for e in self.by_spec.values()}


def build_metrics(cfg: RunConfig, info: Any, progress: bool = False) -> tuple[list[Metric], dict[str, Any]]:
    """Every ``[[metrics]]`` entry built from its registered class; returns the metrics and the shared extractors by
    key.
    """
    extractors = _Extractors(cfg)
    ctx = BuildContext(
        n=cfg.n,
        seed=cfg.seed,
        device=str(resolve_device(cfg.device)),
        batch_size=cfg.batch_size,
        extractor=extractors,
        open_source=lambda spec: open_source(spec, cfg.base_dir),
        info=info,
        base_dir=cfg.base_dir,
        progress=progress,
    )
    metrics = [metric_class(spec.name).from_config(spec.options, ctx) for spec in cfg.metrics]
    check_labels(metrics)
    return metrics, extractors.table()


def latency_rows(latency: Any, sampler: str, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """NFE, per-step latency (median, IQR) and throughput of an evaluation, with their directions."""
    return [
        make_row("nfe", "latency", latency.nfe, unit="evals/sample", sampler=sampler, direction="lower", **extra),
        make_row(
            "step_latency_ms",
            "latency",
            latency.step_ms_median,
            unit="ms",
            sampler=sampler,
            details={"iqr_ms": latency.step_ms_iqr, "batch_size": latency.batch_size, "statistic": "median"},
            direction="lower",
            **extra,
        ),
        make_row(
            "throughput",
            "latency",
            latency.images_per_s,
            unit="images/s",
            sampler=sampler,
            details={"sampling_wall_s": latency.sampling_wall_s},
            direction="higher",
            **extra,
        ),
    ]


def _sample_rows(
    result: EvaluationResult, metrics: list[Metric], sampler_label: str, extra: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = [metric_row(m, result.metrics[m.label], sampler=sampler_label, **extra) for m in metrics]
    return rows + latency_rows(result.latency, sampler_label, extra)


def data_metric_rows(
    metrics: list[Metric], cfg: RunConfig, sampler_label: str, progress: bool = False
) -> list[dict[str, Any]]:
    """Data metrics (bits/dim): each measured on its own data source."""
    rows = []
    for metric in metrics:
        out = measure(
            metric.source, metrics=[metric], batch_size=cfg.batch_size, indices=metric.indices, progress=progress
        )[metric.label]
        rows.append(metric_row(metric, out, sampler=sampler_label))
    return rows


def bpd_of_config(
    cfg: RunConfig, overrides: dict[str, Any], *, device: str | None = None, batch_size: int | None = None
) -> Any:
    """Bits/dim of data under ``cfg``'s sampler's declared model: the config's ``bpd`` metric options, with
    ``overrides``.

    Changing the estimator keeps only the data, count and seed of the config's options.
    """
    from dataclasses import replace

    from diffeval.metrics.bpd import BitsPerDim
    from diffeval.options import validate_options

    cfg = replace(cfg, device=device or cfg.device, batch_size=batch_size or cfg.batch_size)
    base = next((dict(m.options) for m in cfg.metrics if m.name == "bpd"), {})
    if "estimator" in overrides and overrides["estimator"] != base.get("estimator"):
        base = {k: base[k] for k in ("data", "n", "seed") if k in base}
    if "all_terms" in overrides:
        base.pop("strata", None)
    options = {k: v for k, v in {**base, **overrides}.items() if v is not None}
    if "data" not in options:
        raise ConfigError(
            explain(
                "bits/dim needs data",
                expected="--data SPEC, or a [[metrics]] bpd entry with data in the config",
                got=f"neither in {cfg.source}",
                fix="pass --data (an image folder, an .npz batch or a data set)",
            )
        )
    options = validate_options(options, BitsPerDim.options, "bpd")
    subject = build_subject(cfg)
    ctx = BuildContext(
        n=cfg.n,
        seed=cfg.seed,
        device=str(resolve_device(cfg.device)),
        batch_size=cfg.batch_size,
        open_source=lambda spec: open_source(spec, cfg.base_dir),
        info=subject.info,
        base_dir=cfg.base_dir,
    )
    metric = BitsPerDim.from_config(options, ctx)
    return measure(metric.source, metrics=[metric], batch_size=cfg.batch_size, indices=metric.indices)[metric.label]


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".diffeval-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            explain(
                f"output folder {out} is not writable",
                expected="a folder diffeval can create files in",
                got=f"{type(error).__name__}: {error}",
                fix="pass --out with a writable folder",
            )
        ) from None


def _checks(cfg: RunConfig, subject: Subject) -> tuple[list[CheckResult], list[Figure]]:
    ctx = CheckContext(
        info=subject.info,
        seed=cfg.seed,
        device=str(resolve_device(cfg.device)),
        open_data=lambda spec: open_images(spec, cfg.base_dir, "a check"),
        make_sampler=subject.make,
        image_shape=cfg.image_shape or subject.info.image_shape,
        cond_fn=cond_fn(cfg) if cfg.sampler is not None else None,
    )
    results: list[CheckResult] = []
    figures: list[Figure] = []
    for spec in cfg.checks:
        outcome = run_check(CHECKS.get(spec.name)(**spec.options), ctx)
        results += outcome.results
        figures += outcome.figures
    return results, figures


def _image_shape(cfg: RunConfig, subject: Subject) -> tuple[int, ...]:
    shape = cfg.image_shape or subject.info.image_shape
    if shape is None:
        raise ConfigError(
            explain(
                "image shape unknown",
                expected="[run] image_shape = [C, H, W] or a sampler that declares image_shape",
                got="neither",
                fix="add image_shape to [run]",
            )
        )
    return tuple(shape)


def run_config(
    cfg: RunConfig,
    out: str | Path,
    progress: bool = False,
    extra_rows: Callable[[Any], list[dict[str, Any]]] | None = None,
) -> RunOutcome:
    """Run every check, data metric and sample metric of ``cfg`` (per sweep value); write the report into ``out``."""
    out = Path(out)
    check_writable(out)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    stage = "building the sampler"
    samples: torch.Tensor | None = None
    checks: list[CheckResult] = []
    figures: list[Figure] = []
    config_dict = cfg.to_dict() | {"device": str(device)}
    seeds_label = f"{cfg.seed}..{cfg.seed + cfg.n - 1}" if cfg.n else ""
    current = {"batch": -1, "seeds": ""}

    def on_batch(index: int, seeds: list[int]) -> None:
        current["batch"], current["seeds"] = index, f"{seeds[0]}..{seeds[-1]}"

    w = world()
    config_dict["world_size"] = w.size
    code = cfg.sampler.factory if cfg.sampler is not None else None
    try:
        subject = build_subject(cfg)
        sampler_label = subject.info.label()
        stage = "reference statistics"
        metrics, extractors = build_metrics(cfg, subject.info, progress and w.rank == 0)
        sample_metrics = [m for m in metrics if m.inputs == "samples"]
        data_metrics = [m for m in metrics if m.inputs == "data"]
        shape = _image_shape(cfg, subject) if cfg.sampler is not None else None
        if w.rank == 0:  # cheap, data-side work: once
            stage = "checks"
            checks, figures = _checks(cfg, subject)
            rows += [check_row(c) for c in checks]
            stage = "data metrics"
            rows += data_metric_rows(data_metrics, cfg, sampler_label, progress)
        if cfg.sampler is not None:
            conditions = cond_fn(cfg)
            sweep_values = cfg.sweep.values if cfg.sweep else [None]
            for value in sweep_values:
                knob = {} if value is None else {cfg.sweep.knob: value}
                stage = "sampling" + (f" at {cfg.sweep.knob} = {value}" if value is not None else "")
                run_sampler = subject.sampler if value is None else subject.make(knob)
                for metric in sample_metrics:
                    metric.reset()
                result = evaluate_sharded(
                    run_sampler,
                    seeds=range(cfg.seed, cfg.seed + cfg.n),
                    image_shape=shape,
                    extractors=extractors,
                    metrics=sample_metrics,
                    batch_size=cfg.batch_size,
                    device=device,
                    cond_fn=conditions,
                    progress=progress and w.rank == 0,
                    on_batch=on_batch,
                )
                if result is None:  # not rank 0: rank 0 merges and reports
                    continue
                extra = {"knob": cfg.sweep.knob, "knob_value": float(value)} if value is not None else {}
                rows += _sample_rows(
                    result, sample_metrics, result.sampler.label() if result.sampler else sampler_label, extra
                )
                if samples is None:
                    samples = result.samples
        if extra_rows is not None and w.rank == 0:
            stage = "extra rows"
            rows += extra_rows(subject)
    except (Exception, KeyboardInterrupt) as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        if isinstance(error, RankFailed) and w.rank != 0:
            raise RunFailed(str(error), {}) from None
        where = f"{stage}" + (
            f", batch {current['batch']} (seeds {current['seeds']})"
            if stage.startswith("sampling") and current["batch"] >= 0
            else ""
        )
        rows.append(
            make_row(
                "run_interrupted" if interrupted else "run_error",
                "check",
                float("nan"),
                status="fail",
                details={"stage": where, "error": f"{type(error).__name__}: {error}"},
            )
        )
        report = Report(
            rows, provenance(config_dict, str(device), wall_s=time.perf_counter() - t0, seeds=seeds_label, code=code)
        )
        paths = report.write(out) if w.rank == 0 else {}
        message = (
            f"run {'interrupted' if interrupted else 'failed'} during {where}: {type(error).__name__}: {error}."
            + (f" The {len(rows) - 1} rows computed before are in {paths['json']}" if paths else "")
        )
        raise RunFailed(message, paths, interrupted) from (None if interrupted else error)
    report = Report(
        rows, provenance(config_dict, str(device), wall_s=time.perf_counter() - t0, seeds=seeds_label, code=code)
    )
    if w.rank != 0:
        return RunOutcome(report, {}, None, [])
    paths = report.write(out, samples=samples, figures=figures)
    return RunOutcome(report, paths, samples, checks)

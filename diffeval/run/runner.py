"""``diffeval run``: execute a :class:`~diffeval.run.config.RunConfig` into a report.

Stages, in order (cheap first): build the subject (sampler or bare schedule) → build
every metric from its registered class (references resolved now, before any sampling)
→ checks (:func:`diffeval.checks.base.run_check` reads what each check needs) → data
metrics (bits/dim on data) → for each sweep value, sampling with every sample metric and
the latency rows. Rows are kept as they complete; if a step fails or the run is
interrupted (Ctrl-C, SIGTERM), the rows so far are written with a
``run_error``/``run_interrupted`` row saying where it stopped, and the error is raised
again (exit 2, or 130). A checkpoint in the output folder lets ``diffeval run --resume``
continue from the last completed batch (:mod:`diffeval.engine.checkpoint`).

The output folder is the run's: a lock (:class:`diffeval.core.files.FolderLock`) refuses a second run into
it, and everything the checkpoint refers to is stored relative to it (a moved folder resumes; a path that
leads outside it is refused). Every file is written atomically (:mod:`diffeval.core.files`).

``diffeval diagnose`` is a checks-only run of the same runner (a ``[schedule]`` config).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffeval.checks.base import CHECKS, CheckContext, CheckResult, Figure, run_check
from diffeval.core.errors import ConfigError, DiffevalError, InputError, OutputError, explain
from diffeval.core.files import FolderLock, clean_stale_temporaries
from diffeval.core.log import note
from diffeval.core.points import point_text
from diffeval.data.sources import open_images, open_source
from diffeval.engine import checkpoint
from diffeval.engine.distributed import RankFailed, evaluate_sharded, world
from diffeval.engine.loop import EvaluationResult, LoopState, check_labels, measure, resolve_device
from diffeval.engine.references import ReferencePool
from diffeval.features import get_extractor
from diffeval.metrics.base import BuildContext, Deferred, Metric, metric_class
from diffeval.report.report import Report, check_row, make_row, metric_rows, provenance, writable_folder
from diffeval.run.config import RunConfig
from diffeval.run.subjects import Subject, build_subject, cond_fn
from diffeval.run.sweeps import check_points
from diffeval.stats.uncertainty import SeedBlocks

__all__ = [
    "run_config",
    "RunOutcome",
    "RunFailed",
    "build_metrics",
    "latency_rows",
    "data_metric_rows",
    "bpd_of_config",
    "default_out",
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


def _cached_opener(base_dir: Path) -> Callable[..., Any]:
    """``open_source`` with one source object per (spec, count) in a run, so metrics naming one reference share it."""
    opened: dict[tuple[str, Any], Any] = {}

    def open_once(spec: str, **kw: Any) -> Any:
        key = (str(spec), tuple(sorted((k, v) for k, v in kw.items() if v is not None)))
        if key not in opened:
            opened[key] = open_source(spec, base_dir, **kw)
        return opened[key]

    return open_once


def build_metrics(
    cfg: RunConfig, info: Any, progress: bool | None = None, pool: ReferencePool | None = None
) -> tuple[list[Metric], dict[str, Any]]:
    """Every ``[[metrics]]`` entry built from its registered class; returns the metrics and the shared extractors by
    key.

    Every metric asks the run's :class:`~diffeval.engine.references.ReferencePool` for its reference; when all have
    asked, the pool extracts each (source, extractor) once, and the metrics are completed from it.
    """
    extractors = _Extractors(cfg)
    pool = pool if pool is not None else ReferencePool(batch_size=cfg.batch_size, progress=progress)
    ctx = BuildContext(
        n=cfg.n,
        seed=cfg.seed,
        device=str(resolve_device(cfg.device)),
        batch_size=cfg.batch_size,
        extractor=extractors,
        open_source=_cached_opener(cfg.base_dir),
        info=info,
        base_dir=cfg.base_dir,
        progress=progress,
        reference=pool.request,
    )
    asked = [metric_class(spec.name).from_config(spec.options, ctx) for spec in cfg.metrics]
    pool.resolve()
    metrics = [Deferred.complete(item) for item in asked]
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
    rows = [check_row(result.range_check, **extra)]
    rows += [row for m in metrics for row in metric_rows(m, result.metrics[m.label], sampler=sampler_label, **extra)]
    return rows + latency_rows(result.latency, sampler_label, extra)


def data_metric_rows(
    metrics: list[Metric], cfg: RunConfig, sampler_label: str, progress: bool | None = None
) -> list[dict[str, Any]]:
    """Data metrics (bits/dim): each measured on its own data source."""
    rows = []
    for metric in metrics:
        out = measure(
            metric.source,
            metrics=[metric],
            batch_size=cfg.batch_size,
            indices=metric.indices,
            progress=progress,
            stage=f"{metric.label} on {metric.source.name}",
        )[metric.label]
        rows += metric_rows(metric, out, sampler=sampler_label)
    return rows


def bpd_of_config(
    cfg: RunConfig, overrides: dict[str, Any], *, device: str | None = None, batch_size: int | None = None
) -> Any:
    """Bits/dim of data under ``cfg``'s sampler's declared model: the config's ``bpd`` metric options, with
    ``overrides``.

    Changing the estimator keeps only the data, count and seed of the config's options.
    """
    from dataclasses import replace

    from diffeval.core.options import validate_options
    from diffeval.metrics.bpd import BitsPerDim

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
        open_source=lambda spec, **kw: open_source(spec, cfg.base_dir, **kw),
        info=subject.info,
        base_dir=cfg.base_dir,
    )
    metric = Deferred.complete(BitsPerDim.from_config(options, ctx))
    return measure(
        metric.source,
        metrics=[metric],
        batch_size=cfg.batch_size,
        indices=metric.indices,
        stage=f"bits/dim of {metric.source.name}",
    )[metric.label]


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


CHECKPOINT_ENV = "DIFFEVAL_CHECKPOINT_S"


def _checkpoint_every_s() -> float:
    text = os.environ.get(CHECKPOINT_ENV, "120")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:  # nan would silently turn checkpoints off; inf means "never"
        raise ConfigError(
            explain(
                f"${CHECKPOINT_ENV} is not a number of seconds",
                expected="seconds between checkpoints (>= 0; inf: only at stage ends and on SIGTERM)",
                got=repr(text),
                fix="e.g. 120",
            )
        )
    return seconds


def _drawn(name: str, path: Path) -> Figure:
    return Figure(name, lambda _target, path=path: Path(path))


RUNS_FOLDER = Path("runs")
_PAYLOAD = ("config", "rows", "checks", "figures", "samples", "sweep_done", "data_done", "loop")  # a checkpoint's


def default_out(name: str) -> Path:
    """``runs/<name>``: the output folder of a run given no ``--out``; a name that would lead elsewhere (``..``, an
    absolute path, a path separator) is refused."""
    bad = (
        not name
        or name in (".", "..")
        or any(c in name for c in ("/", "\\", "\0"))
        or Path(name).is_absolute()
        or Path(name).drive
    )
    if bad:
        raise ConfigError(
            explain(
                f"the run name {name!r} cannot be the name of a folder in {RUNS_FOLDER}/",
                expected=f"a plain folder name under {RUNS_FOLDER}/ (no '..', no path separator, not an absolute path)",
                got=repr(name),
                fix="pass --out DIR to choose the output folder, or give [run] name a plain name",
            )
        )
    return RUNS_FOLDER / name


def _refuse_resume(out: Path, what: str, expected: str, got: str) -> InputError:
    return InputError(
        explain(
            f"cannot resume the run in {out}: {what}",
            expected=expected,
            got=got,
            fix=f"delete {out / checkpoint.FILENAME} and run again without --resume (the run starts over)",
        )
    )


class _Run:
    """One ``diffeval run``: its stages, the rows they produce, checkpoints, and the partial report on failure."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool | None, extra_rows: Any, resume: bool) -> None:
        self.cfg, self.out, self.progress, self.extra_rows = cfg, out, progress, extra_rows
        self.device = resolve_device(cfg.device)
        self.world = world()
        content = {k: v for k, v in cfg.to_dict().items() if k != "source"}  # where the file lies is not the config
        self.fingerprint = json.dumps(content | {"device": str(self.device)}, sort_keys=True, default=str)
        self.rows: list[dict[str, Any]] = []
        self.checks: list[CheckResult] = []
        self.figures: list[tuple[str, str]] = []
        self.samples: torch.Tensor | None = None
        self.sweep_done = 0
        self.data_done = False
        self.loop: LoopState | None = None
        self.stage = "building the sampler"
        self.current = {"batch": -1, "seeds": ""}
        self.t0 = time.perf_counter()
        self.resumed = False
        if resume:
            self._restore()

    # -- checkpoints ----------------------------------------------------------------------------------
    def _restore(self) -> None:
        if self.world.distributed:
            raise ConfigError(
                explain(
                    "--resume is single-process only",
                    expected="a run without torchrun",
                    got=f"world size {self.world.size}",
                    fix="resume on one process, or re-run the distributed evaluation from the start",
                )
            )
        state = checkpoint.load(self.out, fields=_PAYLOAD)
        if state["config"] != self.fingerprint:
            before, now = json.loads(state["config"]), json.loads(self.fingerprint)
            differing = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ConfigError(
                explain(
                    f"the config differs from the one the interrupted run in {self.out} used",
                    expected="the same config (and device)",
                    got="; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in differing)[:600],
                    fix="resume with the original config, or run into a new --out folder",
                )
            )
        points = len(self.cfg.sweep.points) if self.cfg.sweep is not None else 1
        sweep_done = state["sweep_done"]
        if isinstance(sweep_done, bool) or not isinstance(sweep_done, int) or not 0 <= sweep_done <= points:
            raise _refuse_resume(
                self.out, "its count of sweep points done does not fit the config", f"0 to {points}", repr(sweep_done)
            )
        self.rows, self.checks, self.figures = state["rows"], state["checks"], self._figures(state["figures"])
        self.samples, self.sweep_done, self.data_done, self.loop = (
            state["samples"],
            sweep_done,
            bool(state["data_done"]),
            self._loop_state(state["loop"]),
        )
        self.resumed = True

    def _figures(self, stored: Any) -> list[tuple[str, str]]:
        """The checkpoint's figures: paths relative to the run folder that stay inside it (a moved folder resumes;
        nothing outside it, e.g. ``/etc/passwd``, can be embedded in the report)."""
        root = self.out.resolve()
        figures = []
        for item in stored if isinstance(stored, list) else [stored]:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise _refuse_resume(
                    self.out, "a figure entry is malformed", "[name, path in the run folder]", repr(item)
                )
            name, rel = item
            path = self.out / rel
            inside = not Path(rel).is_absolute() and ".." not in Path(rel).parts and path.resolve().is_relative_to(root)
            if not inside:
                raise _refuse_resume(
                    self.out,
                    f"figure {name!r} points outside the run folder",
                    f"a path inside {self.out} (figures are stored relative to the run folder)",
                    repr(rel),
                )
            if not path.is_file():
                raise _refuse_resume(
                    self.out,
                    f"figure {name!r} is missing from the run folder",
                    f"{path} (drawn by the interrupted run; a run folder is moved whole)",
                    "no such file",
                )
            figures.append((name, rel))
        return figures

    def _loop_state(self, loop: Any) -> LoopState | None:
        """The sampling loop's saved state, checked against the config: batch size, seed count, batches done, and
        every metric's seed blocks holding exactly the seeds of the batches done."""
        if loop is None:
            return None
        cfg = self.cfg
        batches = -(-cfg.n // cfg.batch_size)
        if not isinstance(loop, LoopState):
            raise _refuse_resume(self.out, "its sampling state is malformed", "a LoopState", type(loop).__name__)
        if loop.batch_size != cfg.batch_size or loop.n_seeds != cfg.n or not 0 <= loop.batches_done <= batches:
            raise _refuse_resume(
                self.out,
                "its sampling state does not fit the config",
                f"batch size {cfg.batch_size}, {cfg.n} seeds, 0 to {batches} batches done",
                f"batch size {loop.batch_size}, {loop.n_seeds} seeds, {loop.batches_done} batches done",
            )
        done = min(loop.batches_done * cfg.batch_size, cfg.n)
        expected: dict[int, SeedBlocks] = {}
        for label, state in loop.metric_states.items():
            blocks = state.get("seed_blocks") if isinstance(state, dict) else None
            if not isinstance(blocks, SeedBlocks):
                continue
            if blocks.k not in expected:
                expected[blocks.k] = SeedBlocks(blocks.k)
                for start in range(0, done, 1 << 20):  # in chunks: a large run's seeds are never all listed here
                    chunk = list(range(cfg.seed + start, cfg.seed + min(done, start + (1 << 20))))
                    expected[blocks.k].assign(chunk, len(chunk))
            want = expected[blocks.k]
            fields = ("n", "counts", "seed_sum", "seed_sumsq", "seed_hash", "unseeded")
            if any(getattr(blocks, f) != getattr(want, f) for f in fields):
                raise _refuse_resume(
                    self.out,
                    f"the state of {label} does not hold the samples of the batches done",
                    f"{done} samples (seeds {cfg.seed}..{cfg.seed + done - 1}) in blocks {want.counts}",
                    f"{blocks.n} samples in blocks {blocks.counts}",
                )
        return loop

    def _save(self, loop: LoopState | None = None) -> None:
        if self.world.distributed:
            return
        payload = {
            "config": self.fingerprint,
            "rows": self.rows,
            "checks": self.checks,
            "figures": self.figures,
            "samples": self.samples,
        }
        payload |= {"sweep_done": self.sweep_done, "data_done": self.data_done, "loop": loop}
        checkpoint.save(self.out, payload)

    # -- stages ---------------------------------------------------------------------------------------
    def _checks_and_data(self, subject: Subject, data_metrics: list[Metric]) -> None:
        self.stage = "checks"
        self.checks, figures = _checks(self.cfg, subject)
        self.rows += [check_row(c) for c in self.checks]
        root = self.out.resolve()
        for figure in figures:  # drawn now, so a resumed run has them without re-running the checks
            drawn = Path(figure.draw(self.out / f"{figure.name}.png")).resolve()
            if drawn.is_relative_to(root):  # stored relative to the run folder: a moved folder still resumes
                self.figures.append((figure.name, drawn.relative_to(root).as_posix()))
            else:
                note(
                    "figure %s was drawn outside the run folder (%s): a resumed report leaves it out",
                    figure.name,
                    drawn,
                )
        self.stage = "data metrics"
        self.rows += data_metric_rows(data_metrics, self.cfg, subject.info.label(), self.progress)
        self.data_done = True
        self._save()

    def _on_batch(self, index: int, seeds: list[int]) -> None:
        self.current["batch"], self.current["seeds"] = index, f"{seeds[0]}..{seeds[-1]}"

    def _sampling(self, subject: Subject, metrics: list[Metric], extractors: dict[str, Any]) -> None:
        cfg = self.cfg
        shape = _image_shape(cfg, subject)
        conditions = cond_fn(cfg)
        points = list(cfg.sweep.points) if cfg.sweep else [None]
        every_s = _checkpoint_every_s()
        for index, point in enumerate(points):
            if index < self.sweep_done:  # a resumed grid keeps the points already done
                continue
            self.stage = "sampling" + (f" at {point_text(point)} ({index + 1}/{len(points)})" if point else "")
            run_sampler = subject.sampler if point is None else subject.make(point)
            for metric in metrics:
                metric.reset()
            resume, self.loop = self.loop, None
            result = evaluate_sharded(
                run_sampler,
                seeds=range(cfg.seed, cfg.seed + cfg.n),
                image_shape=shape,
                extractors=extractors,
                metrics=metrics,
                batch_size=cfg.batch_size,
                device=self.device,
                cond_fn=conditions,
                progress=self.progress if self.world.rank == 0 else False,
                on_batch=self._on_batch,
                strict=None,  # the output_range check is a row of the report (and the exit code)
                **(
                    {}
                    if self.world.distributed
                    else {"resume": resume, "checkpoint": self._save, "checkpoint_every_s": every_s}
                ),
            )
            if result is None:  # not rank 0: rank 0 merges and reports
                continue
            extra = {"point": point} if point else {}
            label = result.sampler.label() if result.sampler else subject.info.label()
            self.rows += _sample_rows(result, metrics, label, extra)
            if self.samples is None:
                self.samples = result.samples
            self.sweep_done = index + 1
            self._save()

    def _report(self) -> Report:
        config = json.loads(self.fingerprint) | {
            "source": self.cfg.source,
            "world_size": self.world.size,
            "resumed": self.resumed,
        }
        seeds = f"{self.cfg.seed}..{self.cfg.seed + self.cfg.n - 1}" if self.cfg.n else ""
        code = self.cfg.sampler.factory if self.cfg.sampler is not None else None
        wall_s = time.perf_counter() - self.t0
        return Report(self.rows, provenance(config, str(self.device), wall_s=wall_s, seeds=seeds, code=code))

    def _failed(self, error: BaseException) -> RunFailed:
        interrupted = isinstance(error, KeyboardInterrupt)
        batch = self.current["batch"]
        where = self.stage + (
            f", batch {batch} (seeds {self.current['seeds']})"
            if self.stage.startswith("sampling") and batch >= 0
            else ""
        )
        name = "run_interrupted" if interrupted else "run_error"
        details = {"stage": where, "error": f"{type(error).__name__}: {error}"}
        resumable = (self.out / checkpoint.FILENAME).is_file() and not self.world.distributed
        if resumable:
            details["resume"] = f"diffeval run {self.cfg.source} --resume {self.out}"
        self.rows.append(make_row(name, "check", float("nan"), status="fail", details=details))
        paths: dict[str, Path] = {}
        unwritten = ""
        if self.world.rank == 0:
            try:
                paths = self._report().write(self.out, figures=self._drawn_figures())
            except OutputError as write_error:  # e.g. the disk that stopped the run is still full
                unwritten = f" The partial report could not be written either: {write_error}"
        message = f"run {'interrupted' if interrupted else 'failed'} during {where}: {type(error).__name__}: {error}"
        message += "" if message.endswith(".") else "."
        if paths:
            message += f" The {len(self.rows) - 1} rows computed before are in {paths['json']}"
        message += unwritten
        if resumable:
            message += f"; continue it with: {details['resume']}"
        return RunFailed(message, paths, interrupted)

    def _drawn_figures(self) -> list[Figure]:
        return [_drawn(name, self.out / rel) for name, rel in self.figures]

    def _announce_sweep(self, subject: Subject) -> None:
        """The sweep's size and cost, before any sampling (a note on stderr)."""
        cfg = self.cfg
        points = list(cfg.sweep.points)
        todo = points[self.sweep_done :]
        batches = -(-cfg.n // cfg.batch_size)
        steps = [p.get("steps", subject.info.steps) for p in todo]
        evals = (
            f", about {sum(int(s) for s in steps) * cfg.n:,} sampler steps (steps x samples)"
            if steps and all(isinstance(s, (int, float)) for s in steps)
            else ""
        )
        note(
            "sweep of %d point(s) over %s%s: %s samples in %s batches of up to %d%s (max_points = %d)",
            len(points),
            ", ".join(cfg.sweep.knobs),
            f", {len(todo)} still to run" if len(todo) != len(points) else "",
            f"{len(todo) * cfg.n:,}",
            f"{len(todo) * batches:,}",
            cfg.batch_size,
            evals,
            cfg.sweep.max_points,
        )

    def execute(self) -> RunOutcome:
        w = self.world
        try:
            subject = build_subject(self.cfg)
            if self.cfg.sweep is not None and self.cfg.sampler is not None:
                replace = getattr(subject.sampler, "replace", None)
                check_points(self.cfg.sweep, subject.info.knobs, (lambda p: replace(**p)) if replace else None)
                if w.rank == 0:
                    self._announce_sweep(subject)
            self.stage = "reference statistics"
            metrics, extractors = build_metrics(self.cfg, subject.info, self.progress if w.rank == 0 else False)
            sample_metrics = [m for m in metrics if m.inputs == "samples"]
            if self.cfg.sampler is not None:
                _image_shape(self.cfg, subject)
                for metric in sample_metrics:
                    metric.check_count(self.cfg.n)  # before any work: counts are known now
            if w.rank == 0 and not self.data_done:  # cheap, data-side work: once
                self._checks_and_data(subject, [m for m in metrics if m.inputs == "data"])
            if self.cfg.sampler is not None:
                self._sampling(subject, sample_metrics, extractors)
            if self.extra_rows is not None and w.rank == 0:
                self.stage = "extra rows"
                self.rows += self.extra_rows(subject, metrics)
        except (Exception, KeyboardInterrupt) as error:
            if isinstance(error, RankFailed) and w.rank != 0:
                raise RunFailed(str(error), {}) from None
            raise self._failed(error) from (None if isinstance(error, KeyboardInterrupt) else error)
        report = self._report()
        if w.rank != 0:
            return RunOutcome(report, {}, None, [])
        try:
            paths = report.write(self.out, samples=self.samples, figures=self._drawn_figures())
        except OutputError as error:
            if self.world.distributed or not (self.out / checkpoint.FILENAME).is_file():
                raise
            raise OutputError(
                f"{error}. Nothing computed is lost: the results are in {self.out / checkpoint.FILENAME}; once there"
                f" is room, `diffeval run {self.cfg.source} --resume {self.out}` writes the report without sampling"
                " again."
            ) from None
        (self.out / checkpoint.FILENAME).unlink(missing_ok=True)  # complete: nothing left to resume
        return RunOutcome(report, paths, self.samples, self.checks)


def run_config(
    cfg: RunConfig,
    out: str | Path,
    progress: bool | None = None,
    extra_rows: Callable[[Any, list[Metric]], list[dict[str, Any]]] | None = None,
    resume: bool = False,
) -> RunOutcome:
    """Run every check, data metric and sample metric of ``cfg`` (per sweep value); write the report into ``out``.

    A checkpoint is kept in ``out`` (every ``$DIFFEVAL_CHECKPOINT_S`` seconds of sampling, default 120, and after
    each stage); ``extra_rows(subject, metrics)`` adds rows at the end (the run's built metrics: their
    references are the run's own); ``resume=True`` continues an interrupted run from it, with the same values
    as an uninterrupted run.
    """
    _checkpoint_every_s()  # a bad $DIFFEVAL_CHECKPOINT_S is refused before any work
    out = writable_folder(Path(out))
    if world().rank != 0:  # rank 0 holds the folder's lock and writes its files
        return _run_locked(cfg, out, progress, extra_rows, resume)
    with FolderLock(out, "--out"):
        clean_stale_temporaries(out)  # left by a run killed mid-write
        (out / f"{checkpoint.FILENAME}.tmp").unlink(missing_ok=True)  # the same, by checkpoint format 1's writer
        return _run_locked(cfg, out, progress, extra_rows, resume)


def _run_locked(
    cfg: RunConfig,
    out: Path,
    progress: bool | None,
    extra_rows: Callable[[Any, list[Metric]], list[dict[str, Any]]] | None,
    resume: bool,
) -> RunOutcome:
    if not resume and (out / checkpoint.FILENAME).exists():
        raise ConfigError(
            explain(
                f"{out} holds the checkpoint of an interrupted run",
                expected="a folder without checkpoint.pt (a fresh run would overwrite that work)",
                got=str(out / checkpoint.FILENAME),
                fix=(
                    f"continue it with `diffeval run CONFIG --resume {out}`, choose another --out,"
                    f" or delete {out / checkpoint.FILENAME} to start over"
                ),
            )
        )
    return _Run(cfg, out, progress, extra_rows, resume).execute()

"""The batch loop: images (sampled or stored) → uint8 → features once per batch → every metric.

One loop (:func:`consume`) feeds every metric, whatever the images come from:
:func:`evaluate` samples them (seeds → per-seed noise → sampler), :func:`measure`
loads them (folders, ``.npz`` batches, data sets — also how references are built).
Each extractor runs once per batch, with a CUDA out-of-memory retry in halves
(:func:`extract_with_retry`), and its features are fanned out to every metric. Only
metric statistics are kept, plus the first ``keep`` samples for a picture.

Sampler outputs are checked for finiteness by the sampler; their range (values outside
[-1, 1], negatives, min, max) is tracked on the device (no per-batch host sync) and
judged by the ``output_range`` check (:mod:`diffeval.checks.output_range`: it names the
[0, 1] and 0-255 signatures), then the images are clamped and quantized on the 8-bit grid.

Example::

    >>> import torch
    >>> result = evaluate(lambda noise, cond: noise.clamp(-1, 1), seeds=range(8), image_shape=(1, 8, 8), batch_size=4)
    >>> result.n, result.latency.batches
    (8, 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffeval.checks.base import CheckResult
from diffeval.checks.output_range import RangeStats, check_output_range
from diffeval.core import signals
from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.log import check_failed, note, stderr_is_terminal
from diffeval.core.quantize import quantize
from diffeval.core.seeds import SeedRNG
from diffeval.data.sources import ImageSource, iter_batches
from diffeval.features import FeatureExtractor, extractor_key
from diffeval.metrics.base import Batch, MetricResult
from diffeval.samplers.base import SamplerInfo, StepTimer, describe
from diffeval.samplers.callable import as_sampler

__all__ = [
    "LoopState",
    "evaluate",
    "measure",
    "consume",
    "feed",
    "extract_with_retry",
    "EvaluationResult",
    "LatencySummary",
    "resolve_device",
    "extractor_table",
    "check_labels",
]


@dataclass(frozen=True)
class LatencySummary:
    """Sampling cost over a run: NFE per sample, per-step latency and throughput."""

    nfe: int
    step_ms_median: float
    step_ms_iqr: float
    images_per_s: float
    sampling_wall_s: float
    batches: int
    batch_size: int


@dataclass
class EvaluationResult:
    """Metric results by label, latency, the first samples and the output range of one evaluation."""

    n: int
    metrics: dict[str, MetricResult]
    latency: LatencySummary
    samples: torch.Tensor  # uint8, the first `keep` samples
    output_range: RangeStats  # range of the raw sampler outputs (before clamping)
    wall_s: float
    sampler: SamplerInfo | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def saturation(self) -> float:
        """Fraction of output values outside [-1, 1] before clamping."""
        return self.output_range.fraction_outside

    @property
    def range_check(self) -> CheckResult:
        """The ``output_range`` verdict of this evaluation."""
        return check_output_range(self.output_range)

    def __getitem__(self, key: str) -> MetricResult:
        """The result of the metric with this label, or of the only metric with this name (``result["fid"]``)."""
        if key in self.metrics:
            return self.metrics[key]
        named = [label for label, r in self.metrics.items() if label.split("@")[0].split("[")[0] == key]
        if len(named) == 1:
            return self.metrics[named[0]]
        raise KeyError(
            f"{key!r}: "
            + (
                f"several metrics are named so, use a label: {named}"
                if named
                else f"no such metric; labels: {sorted(self.metrics)}"
            )
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, refusing CUDA on a machine without it (with the fix)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            explain(
                "unknown device",
                expected="cpu, cuda or cuda:N",
                got=repr(device),
                fix="pass --device cpu or --device cuda",
            )
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            explain(
                "CUDA device requested but none is available",
                expected="a machine with a CUDA GPU and a CUDA build of torch",
                got=f"torch {torch.__version__}, no GPU visible",
                fix="run with --device cpu",
            )
        )
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            explain(
                "unsupported device type",
                expected="cpu or cuda",
                got=repr(str(dev)),
                fix="pass --device cpu or --device cuda",
            )
        )
    return dev


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def check_labels(metrics: Sequence[Any]) -> None:
    """Every metric's label must be unique within a run (it keys results and rows)."""
    seen: dict[str, Any] = {}
    for metric in metrics:
        parts = getattr(metric, "parts", ())
        labels = [metric.label] + ([metric.part_label(p) for p, _ in parts] if parts else [])
        for label in labels:
            if label in seen:
                raise ConfigError(
                    explain(
                        f"two metrics share the label {label!r}",
                        expected="one label per metric (and per row of a multi-row metric) in a run",
                        got=f"{type(seen[label]).__name__} and {type(metric).__name__}",
                        fix="give one of them label = '...' in its [[metrics]] table",
                    )
                )
            seen[label] = metric


def extractor_table(
    extractors: Sequence[FeatureExtractor] | Mapping[str, FeatureExtractor], metrics: Sequence[Any]
) -> dict[str, FeatureExtractor]:
    """Extractors by key; every metric's extractor must be among them."""
    table = dict(extractors) if isinstance(extractors, Mapping) else {extractor_key(e): e for e in extractors}
    for metric in metrics:
        if metric.extractor is not None and metric.extractor not in table:
            raise ConfigError(
                explain(
                    f"metric {metric.label!r} needs extractor {metric.extractor!r}",
                    expected=f"{metric.extractor!r} among the extractors",
                    got=f"{sorted(table) or 'none'}",
                    fix=f"pass extractors=[get_extractor({metric.extractor!r})]",
                )
            )
    return table


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def extract_with_retry(extractor: FeatureExtractor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``extractor(images)``; on CUDA out-of-memory, retry in halves (said on stderr) down to single images."""
    try:
        return extractor(images)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
        if not _is_oom(error) or images.shape[0] <= 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = images.shape[0] // 2
    note(
        f"CUDA out of memory extracting {extractor.name} features for {images.shape[0]} images; retrying in batches"
        f" of {half}"
    )
    parts = [extract_with_retry(extractor, chunk) for chunk in (images[:half], images[half:])]
    return {layer: torch.cat([p[layer] for p in parts]) for layer in parts[0]}


def feed(
    metrics: Sequence[Any],
    extractors: Mapping[str, FeatureExtractor],
    images: torch.Tensor,
    seeds: list[int],
    cond: Any = None,
) -> None:
    """Run each needed extractor once on uint8 ``images`` (OOM-safe) and update every metric."""
    needed = {m.extractor for m in metrics if m.extractor is not None}
    batch = Batch(
        features={key: extract_with_retry(extractors[key], images) for key in sorted(needed)},
        seeds=seeds,
        cond=cond,
        images=images,
    )
    for metric in metrics:
        metric.update(batch)


def consume(
    batches: Iterable[tuple[list[int], torch.Tensor, Any]],
    metrics: Sequence[Any],
    extractors: Mapping[str, FeatureExtractor],
    after_batch: Callable[[int], None] | None = None,
) -> int:
    """The batch loop: :func:`feed` every ``(seeds, uint8 images, cond)`` to the metrics; returns the batch count.

    At each batch boundary ``after_batch(batches done)`` runs (checkpoints), then a pending
    stop request (SIGTERM, :mod:`diffeval.core.signals`) ends the loop with ``KeyboardInterrupt``.
    """
    count = 0
    for seeds, images, cond in batches:
        if metrics:
            feed(metrics, extractors, images, seeds, cond)
        count += 1
        if after_batch is not None:
            after_batch(count)
        signals.stop_if_requested()
    return count


def _progress(iterable: Iterable[Any], total: int, desc: str, enabled: bool | None) -> Iterable[Any]:
    """A progress bar naming the stage; ``enabled=None``: on when stderr is a terminal."""
    if not (stderr_is_terminal() if enabled is None else enabled):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=True)  # one line per stage stays


def measure(
    source: ImageSource,
    *,
    extractors: Sequence[FeatureExtractor] | Mapping[str, FeatureExtractor] = (),
    metrics: Sequence[Any],
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    cond_fn: Callable[[list[int]], Any] | None = None,
    progress: bool | None = None,
    compute: bool = True,
    stage: str | None = None,
) -> dict[str, MetricResult]:
    """Feed stored images (by index; the index is the sample's seed) to the metrics; returns ``{label: result}``.

    ``stage`` names the progress bar (default: the metrics fed and the source).
    """
    table = extractor_table(extractors, metrics)
    check_labels(metrics)
    chosen = list(range(len(source))) if indices is None else list(indices)
    batches = (
        (idx, images, cond_fn(idx) if cond_fn is not None else None)
        for idx, images in iter_batches(source, batch_size, chosen)
    )
    desc = stage or f"{', '.join(m.label for m in metrics)} on {source.name}"
    consume(_progress(batches, -(-len(chosen) // batch_size), desc, progress), metrics, table)
    return {metric.label: metric.compute() for metric in metrics} if compute else {}


@dataclass
class LoopState:
    """Where a sampling loop stands after ``batches_done`` batches: enough to resume it exactly (a checkpoint)."""

    batches_done: int
    batch_size: int
    n_seeds: int
    step_s: list[float]
    sampling_s: float
    nfe: int
    output_range: RangeStats
    kept: torch.Tensor
    metric_states: dict[str, dict[str, Any]]


class _SamplingLoop:
    """Iterates ``(seeds, uint8 images, cond)`` by sampling, and records latency, range and the first samples."""

    def __init__(
        self, sampler: Any, seeds: list[int], image_shape: tuple[int, ...], batch_size: int, **kw: Any
    ) -> None:
        self.sampler, self.seeds, self.image_shape, self.batch_size = sampler, seeds, image_shape, batch_size
        self.device, self.cond_fn, self.keep, self.timing, self.on_batch = (
            kw["device"],
            kw["cond_fn"],
            kw["keep"],
            kw["timing"],
            kw["on_batch"],
        )
        self.step_s: list[float] = []
        self.sampling_s = 0.0
        self.nfe = 0
        self.range = RangeStats()
        self.kept: list[torch.Tensor] = []
        self.batches = -(-len(seeds) // batch_size)
        self.start_batch = 0

    def restore(self, state: LoopState) -> None:
        """Continue after ``state.batches_done`` batches (same seeds and batch size)."""
        if state.batch_size != self.batch_size or state.n_seeds != len(self.seeds):
            raise ConfigError(
                explain(
                    "the checkpoint does not fit this run",
                    expected=f"batch size {self.batch_size} and {len(self.seeds)} seeds",
                    got=f"batch size {state.batch_size} and {state.n_seeds} seeds",
                    fix="resume with the config the interrupted run used",
                )
            )
        self.start_batch = state.batches_done
        self.step_s, self.sampling_s, self.nfe = list(state.step_s), state.sampling_s, state.nfe
        self.range = state.output_range
        self.kept = [state.kept] if state.kept.numel() else []

    def state(self, batches_done: int, metrics: Sequence[Any]) -> LoopState:
        kept = torch.cat(self.kept) if self.kept else torch.empty(0, dtype=torch.uint8)
        states = {m.label: m.state() for m in metrics}
        range_now = self.range.finalize()
        return LoopState(
            batches_done,
            self.batch_size,
            len(self.seeds),
            list(self.step_s),
            self.sampling_s,
            self.nfe,
            range_now,
            kept,
            states,
        )

    def __iter__(self) -> Iterator[tuple[list[int], torch.Tensor, Any]]:
        n_kept = sum(k.shape[0] for k in self.kept)
        for index in range(self.start_batch, self.batches):
            start = index * self.batch_size
            batch_seeds = self.seeds[start : start + self.batch_size]
            if self.on_batch is not None:
                self.on_batch(index, batch_seeds)
            rng = SeedRNG(batch_seeds, self.device)
            noise = rng.randn(self.image_shape)
            cond = self.cond_fn(batch_seeds) if self.cond_fn is not None else None
            timer = StepTimer(self.timing)
            images = self.sampler(noise, cond, rng=rng, timer=timer)
            run = timer.stats
            self.step_s.extend(run.step_s)
            self.sampling_s += run.wall_s
            self.nfe = run.nfe
            self.range.update(images)  # stays on the device: no per-batch sync
            u8 = quantize(images)
            if n_kept < self.keep:
                self.kept.append(u8[: self.keep - n_kept].to("cpu", non_blocking=True))
                n_kept += self.kept[-1].shape[0]
            yield batch_seeds, u8, cond

    def latency(self) -> LatencySummary:
        ordered = sorted(self.step_s)
        return LatencySummary(
            nfe=self.nfe,
            step_ms_median=1e3 * _percentile(ordered, 0.5),
            step_ms_iqr=1e3 * (_percentile(ordered, 0.75) - _percentile(ordered, 0.25)),
            images_per_s=len(self.seeds) / self.sampling_s if self.sampling_s > 0 else float("nan"),
            sampling_wall_s=self.sampling_s,
            batches=self.batches,
            batch_size=self.batch_size,
        )


def evaluate(
    sampler: Any,
    *,
    seeds: Iterable[int],
    image_shape: Sequence[int] | None = None,
    extractors: Sequence[FeatureExtractor] | Mapping[str, FeatureExtractor] = (),
    metrics: Sequence[Any] = (),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cond_fn: Callable[[list[int]], Any] | None = None,
    keep: int = 100,
    progress: bool | None = None,
    on_batch: Callable[[int, list[int]], None] | None = None,
    step_timing: bool = True,
    compute: bool = True,
    resume: LoopState | None = None,
    checkpoint: Callable[[LoopState], None] | None = None,
    checkpoint_every_s: float = 120.0,
    strict: bool | None = False,
) -> EvaluationResult:
    """Sample one image per seed and feed every metric; returns values (by label), latency and kept samples.

    ``sampler`` is a sampler or a plain function ``fn(noise, cond) -> images`` (wrapped).
    ``image_shape`` defaults to the sampler's declared one. ``cond_fn(seeds) -> cond``
    gives the condition for a batch (None: unconditional). ``on_batch(index, seeds)`` is
    called before each batch. ``step_timing=False`` times whole calls only, so no
    per-step CUDA synchronization stalls the GPU (per-step latency is then not
    reported). ``compute=False`` leaves the metrics updated but not computed (shards).

    Checkpoints: ``checkpoint(state)`` is called at a batch boundary every
    ``checkpoint_every_s`` seconds of work and when a stop is requested (SIGTERM);
    ``resume=state`` continues from such a state (metric states merged in, the remaining
    batches sampled), so the values equal an uninterrupted run's. Counts are checked
    before any sampling (:meth:`~diffeval.metrics.base.Metric.check_count`).

    The output range is judged by the ``output_range`` check: when it fails (images in [0, 1] or 0-255, not
    [-1, 1]) the result is returned with a :class:`~diffeval.core.errors.DiffevalWarning` naming the check and
    the fix; ``strict=True`` raises :class:`~diffeval.core.errors.CheckFailed` instead, ``strict=None`` does
    neither (the caller reports the check: ``diffeval run`` writes it as a row). ``progress=None`` shows a bar
    when stderr is a terminal.
    """
    sampler = as_sampler(sampler)
    info = describe(sampler)
    seeds = list(seeds)
    if not seeds:
        raise ConfigError(
            explain(
                "no seeds to evaluate", expected="at least one seed", got="[]", fix="pass seeds=range(n) with n >= 1"
            )
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(
            explain("invalid batch size", expected="an integer >= 1", got=repr(batch_size), fix="pass batch_size=64")
        )
    shape = image_shape if image_shape is not None else info.image_shape
    if shape is None or len(tuple(shape)) != 3:
        raise InputError(
            explain(
                "image shape unknown",
                expected="image_shape=(C, H, W), or a sampler that declares it",
                got=repr(shape),
                fix="pass image_shape",
            )
        )
    table = extractor_table(extractors, metrics)
    check_labels(metrics)
    if compute:
        for metric in metrics:
            metric.check_count(len(seeds))
    dev = resolve_device(device)
    t_start = time.perf_counter()
    loop = _SamplingLoop(
        sampler,
        seeds,
        tuple(int(s) for s in shape),
        batch_size,
        device=dev,
        cond_fn=cond_fn,
        keep=keep,
        timing="step" if step_timing else "run",
        on_batch=on_batch,
    )
    if resume is not None:
        loop.restore(resume)
        for metric in metrics:
            metric.reset()
            metric.merge_state(resume.metric_states[metric.label])
    last = {"t": time.perf_counter()}

    def after_batch(count: int) -> None:
        if checkpoint is None:
            return
        now = time.perf_counter()
        done = loop.start_batch + count == loop.batches  # saved before compute, which may still fail
        if done or now - last["t"] >= checkpoint_every_s or signals.requested():
            checkpoint(loop.state(loop.start_batch + count, metrics))
            last["t"] = time.perf_counter()

    consume(_progress(loop, loop.batches - loop.start_batch, "sampling", progress), metrics, table, after_batch)
    values = {metric.label: metric.compute() for metric in metrics} if compute else {}
    output_range = loop.range.finalize()
    verdict = check_output_range(output_range)
    if verdict.status == "fail":
        check_failed(verdict.name, verdict.message, strict)
    return EvaluationResult(
        n=len(seeds),
        metrics=values,
        latency=loop.latency(),
        samples=torch.cat(loop.kept) if loop.kept else torch.empty(0, *shape, dtype=torch.uint8),
        output_range=output_range,
        wall_s=time.perf_counter() - t_start,
        sampler=info,
        config={
            "sampler": info.knobs,
            "n": len(seeds),
            "batch_size": batch_size,
            "device": str(dev),
            "seeds": f"{seeds[0]}..{seeds[-1]}",
        },
    )

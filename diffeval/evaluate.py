"""The evaluation loop: seeds → noise → sampler → uint8 → features once → metric updates.

Each extractor runs once per batch and its features are fanned out to every metric
(:func:`feed`); :func:`measure` does the same for stored images (folders, .npz).
Only metric statistics are kept, plus the first ``keep`` samples for a picture.
Sampler outputs are checked for finiteness, the fraction of pixels outside [-1, 1]
(saturation) is recorded, then they are clamped and quantized with
:func:`diffeval.features.to_uint8`.

Example::

    >>> import torch
    >>> from diffeval.samplers import CallableSampler
    >>> sampler = CallableSampler(lambda noise, cond: noise.clamp(-1, 1))
    >>> result = evaluate(sampler, seeds=range(8), image_shape=(1, 8, 8), batch_size=4)
    >>> result.n, result.latency.batches
    (8, 2)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffeval.errors import ConfigError, explain
from diffeval.features import FeatureExtractor
from diffeval.metrics.base import Batch, Metric
from diffeval.samplers.base import Sampler, SeedRNG
from diffeval.sources import ImageSource, iter_batches

__all__ = ["evaluate", "measure", "feed", "extract_with_retry", "quantize", "EvaluationResult", "LatencySummary", "resolve_device"]


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
    n: int
    metrics: dict[str, dict[str, Any]]
    latency: LatencySummary
    samples: torch.Tensor  # uint8, the first `keep` samples
    saturation: float  # fraction of output pixels outside [-1, 1] before clamping
    wall_s: float
    config: dict[str, Any] = field(default_factory=dict)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Sampler output → uint8 without host round-trips: clamp to [-1, 1], ``round((x + 1) * 127.5)``.

    The same grid as :func:`diffeval.features.to_uint8`; samplers have already checked
    finiteness, and the fraction of pixels they put outside [-1, 1] is reported.
    """
    return torch.round((images.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, refusing CUDA on a machine without it (with the fix)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(explain("unknown device", expected="cpu, cuda or cuda:N", got=repr(device), fix="pass --device cpu or --device cuda")) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(explain("CUDA device requested but none is available", expected="a machine with a CUDA GPU and a CUDA build of torch", got=f"torch {torch.__version__}, no GPU visible", fix="run with --device cpu"))
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(explain("unsupported device type", expected="cpu or cuda", got=repr(str(dev)), fix="pass --device cpu or --device cuda"))
    return dev


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _batches(seeds: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    for start in range(0, len(seeds), batch_size):
        yield list(seeds[start : start + batch_size])


def _by_name(extractors: Sequence[FeatureExtractor] | Mapping[str, FeatureExtractor], metrics: Sequence[Metric]) -> dict[str, FeatureExtractor]:
    table = dict(extractors) if isinstance(extractors, Mapping) else {e.name: e for e in extractors}
    for metric in metrics:
        if metric.extractor is not None and metric.extractor not in table:
            raise ConfigError(
                explain(
                    f"metric {metric.name!r} needs extractor {metric.extractor!r}",
                    expected=f"{metric.extractor!r} among the extractors",
                    got=f"{sorted(table) or 'none'}",
                    fix=f"pass extractors=[get_extractor({metric.extractor!r})]",
                )
            )
    return table


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


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
    print(f"diffeval: CUDA out of memory extracting {extractor.name} features for {images.shape[0]} images; retrying in batches of {half}", file=sys.stderr)
    parts = [extract_with_retry(extractor, chunk) for chunk in (images[:half], images[half:])]
    return {layer: torch.cat([p[layer] for p in parts]) for layer in parts[0]}


def feed(metrics: Sequence[Metric], extractors: Mapping[str, FeatureExtractor], images: torch.Tensor, seeds: list[int], cond: Any = None) -> None:
    """Run each needed extractor once on uint8 ``images`` (OOM-safe) and update every metric."""
    needed = {m.extractor for m in metrics if m.extractor is not None}
    batch = Batch(features={name: extract_with_retry(extractors[name], images) for name in sorted(needed)}, seeds=seeds, cond=cond, images=images)
    for metric in metrics:
        metric.update(batch)


def measure(
    source: ImageSource,
    *,
    extractors: Sequence[FeatureExtractor] | Mapping[str, FeatureExtractor],
    metrics: Sequence[Metric],
    batch_size: int = 64,
    indices: Sequence[int] | None = None,
    cond_fn: Callable[[list[int]], Any] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Feed stored images (by index) to the metrics; returns ``{metric name: compute()}``."""
    table = _by_name(extractors, metrics)
    chosen = list(range(len(source))) if indices is None else list(indices)
    batches: Iterable[tuple[list[int], torch.Tensor]] = iter_batches(source, batch_size, chosen)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(chosen) // batch_size), desc=f"features {source.name}", unit="batch", leave=False)
    for idx, images in batches:
        feed(metrics, table, images, idx, cond_fn(idx) if cond_fn is not None else None)
    return {metric.name: metric.compute() for metric in metrics}


def evaluate(
    sampler: Sampler,
    *,
    seeds: Iterable[int],
    image_shape: Sequence[int],
    extractors: Sequence[FeatureExtractor] | Mapping[str, FeatureExtractor] = (),
    metrics: Sequence[Metric] = (),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cond_fn: Callable[[list[int]], Any] | None = None,
    keep: int = 100,
    progress: bool = False,
    on_batch: Callable[[int, list[int]], None] | None = None,
    step_timing: bool = True,
) -> EvaluationResult:
    """Sample one image per seed and feed every metric; returns values, latency and kept samples.

    ``cond_fn(seeds) -> cond`` gives the condition for a batch (None: unconditional).
    Each metric names the extractor it reads; every extractor runs once per batch.
    ``on_batch(index, seeds)`` is called before each batch (progress, error reports).
    ``step_timing=False`` switches the sampler's step timer to whole-call timing, so no
    per-step CUDA synchronization stalls the GPU (per-step latency is then not reported);
    the loop itself keeps its counters on the device and reads them once at the end.
    """
    seeds = list(seeds)
    if not seeds:
        raise ConfigError(explain("no seeds to evaluate", expected="at least one seed", got="[]", fix="pass seeds=range(n) with n >= 1"))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(explain("invalid batch size", expected="an integer >= 1", got=repr(batch_size), fix="pass batch_size=64"))
    table = _by_name(extractors, metrics)
    dev = resolve_device(device)
    saved_timer = getattr(sampler, "timer", None)
    if not step_timing and saved_timer is not None:
        from diffeval.samplers.base import StepTimer

        sampler.timer = StepTimer("run")
    try:
        return _evaluate(sampler, seeds, image_shape, table, metrics, batch_size, dev, cond_fn, keep, progress, on_batch)
    finally:
        if saved_timer is not None:
            sampler.timer = saved_timer


def _evaluate(sampler: Sampler, seeds: list[int], image_shape: Sequence[int], table: dict[str, FeatureExtractor], metrics: Sequence[Metric], batch_size: int, dev: torch.device, cond_fn: Any, keep: int, progress: bool, on_batch: Any) -> EvaluationResult:
    t_start = time.perf_counter()
    step_s: list[float] = []
    sampling_s = 0.0
    nfe = 0
    outside = torch.zeros((), dtype=torch.int64, device=dev)
    total_px = 0
    kept: list[torch.Tensor] = []
    n_kept = 0
    batches = list(_batches(seeds, batch_size))
    iterator: Iterable[list[int]] = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="sampling", unit="batch", leave=False)
    for batch_index, batch_seeds in enumerate(iterator):
        if on_batch is not None:
            on_batch(batch_index, batch_seeds)
        rng = SeedRNG(batch_seeds, dev)
        noise = rng.randn(tuple(image_shape))
        cond = cond_fn(batch_seeds) if cond_fn is not None else None
        images = sampler(noise, cond, rng=rng)
        run = sampler.last_run
        if run is not None:
            step_s.extend(run.step_s)
            sampling_s += run.wall_s
            nfe = run.nfe
        outside += ((images < -1) | (images > 1)).sum()  # stays on the device: no per-batch sync
        total_px += images.numel()
        u8 = quantize(images)
        if n_kept < keep:
            kept.append(u8[: keep - n_kept].to("cpu", non_blocking=True))
            n_kept += kept[-1].shape[0]
        if metrics:
            feed(metrics, table, u8, batch_seeds, cond)
    ordered = sorted(step_s)
    latency = LatencySummary(
        nfe=nfe,
        step_ms_median=1e3 * _percentile(ordered, 0.5),
        step_ms_iqr=1e3 * (_percentile(ordered, 0.75) - _percentile(ordered, 0.25)),
        images_per_s=len(seeds) / sampling_s if sampling_s > 0 else float("nan"),
        sampling_wall_s=sampling_s,
        batches=len(batches),
        batch_size=batch_size,
    )
    values = {metric.name: metric.compute() for metric in metrics}
    return EvaluationResult(
        n=len(seeds),
        metrics=values,
        latency=latency,
        samples=torch.cat(kept) if kept else torch.empty(0, *image_shape, dtype=torch.uint8),
        saturation=int(outside) / total_px if total_px else 0.0,
        wall_s=time.perf_counter() - t_start,
        config={"sampler": sampler.config(), "n": len(seeds), "batch_size": batch_size, "device": str(dev), "seeds": f"{seeds[0]}..{seeds[-1]}"},
    )

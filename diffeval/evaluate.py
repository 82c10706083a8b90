"""The evaluation loop: seeds → noise → sampler → uint8 → features once → metric updates.

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

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffeval.errors import ConfigError, explain
from diffeval.features import FeatureExtractor, to_uint8
from diffeval.samplers.base import Sampler, SeedRNG

__all__ = ["evaluate", "EvaluationResult", "LatencySummary", "resolve_device"]


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


def evaluate(
    sampler: Sampler,
    *,
    seeds: Iterable[int],
    image_shape: Sequence[int],
    extractor: FeatureExtractor | None = None,
    metrics: Sequence[Any] = (),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cond_fn: Callable[[list[int]], Any] | None = None,
    keep: int = 100,
    progress: bool = False,
) -> EvaluationResult:
    """Sample one image per seed and feed every metric; returns values, latency and kept samples.

    ``cond_fn(seeds) -> cond`` gives the condition for a batch (None: unconditional).
    Each metric has ``update(features_dict)`` and ``compute() -> dict``; features are
    computed once per batch by ``extractor``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ConfigError(explain("no seeds to evaluate", expected="at least one seed", got="[]", fix="pass seeds=range(n) with n >= 1"))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(explain("invalid batch size", expected="an integer >= 1", got=repr(batch_size), fix="pass batch_size=64"))
    if metrics and extractor is None:
        raise ConfigError(explain("metrics need a feature extractor", expected="extractor=...", got="None", fix="pass extractor=get_extractor(name)"))
    dev = resolve_device(device)
    t_start = time.perf_counter()
    step_s: list[float] = []
    sampling_s = 0.0
    nfe = 0
    outside = 0
    total_px = 0
    kept: list[torch.Tensor] = []
    n_kept = 0
    batches = list(_batches(seeds, batch_size))
    iterator: Iterable[list[int]] = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="sampling", unit="batch", leave=False)
    for batch_seeds in iterator:
        rng = SeedRNG(batch_seeds, dev)
        noise = rng.randn(tuple(image_shape))
        cond = cond_fn(batch_seeds) if cond_fn is not None else None
        images = sampler(noise, cond, rng=rng)
        run = sampler.last_run
        if run is not None:
            step_s.extend(run.step_s)
            sampling_s += run.wall_s
            nfe = run.nfe
        outside += int(((images < -1) | (images > 1)).sum())
        total_px += images.numel()
        u8 = to_uint8(images.clamp(-1, 1))
        if n_kept < keep:
            kept.append(u8[: keep - n_kept].cpu())
            n_kept += kept[-1].shape[0]
        if extractor is not None and metrics:
            features = extractor(u8)
            for metric in metrics:
                metric.update(features)
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
        saturation=outside / total_px if total_px else 0.0,
        wall_s=time.perf_counter() - t_start,
        config={"sampler": sampler.config(), "n": len(seeds), "batch_size": batch_size, "device": str(dev), "seeds": f"{seeds[0]}..{seeds[-1]}"},
    )

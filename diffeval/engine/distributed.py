"""Multi-GPU / multi-node evaluation on torch.distributed (``torchrun``); NCCL on GPUs, gloo on CPUs.

Seeds are split into contiguous blocks by rank, each rank samples its block and
accumulates its metric state; the states are gathered to rank 0 in rank order and merged
(sums for FID/CLIP score/bits-per-dim; concatenation in seed order for Inception Score
and KID), so every metric equals the single-process run on the same seeds (FID up to
floating-point summation order). Rank 0 computes the values and writes the report.

A rank that fails still takes part in the gather with its error, so every rank stops
with a message naming the failed rank, and no report claims to be complete.

    torchrun --nproc_per_node=8 -m diffeval run eval.toml --out runs/x
"""

from __future__ import annotations

import datetime as _dt
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from diffeval.core.errors import DiffevalError
from diffeval.engine.loop import EvaluationResult, LatencySummary, evaluate
from diffeval.samplers.base import describe
from diffeval.samplers.callable import as_sampler

__all__ = ["world", "init_from_env", "shard", "RankFailed", "evaluate_sharded", "is_main"]


class RankFailed(DiffevalError):
    """One or more ranks failed; the message names them."""


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's rank and the world size (0, 1 outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World(0, 1)


def is_main() -> bool:
    return world().rank == 0


def init_from_env(timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); NCCL with CUDA, gloo otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    return world()


def shard(seeds: Sequence[int], rank: int, size: int) -> list[int]:
    """Rank ``rank``'s contiguous block of ``seeds`` (blocks differ in length by at most one)."""
    seeds = list(seeds)
    base, extra = divmod(len(seeds), size)
    start = rank * base + min(rank, extra)
    return seeds[start : start + base + (1 if rank < extra else 0)]


def _gather(payload: dict[str, Any], w: World) -> list[dict[str, Any]]:
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, payload)
    return out


def _merge_latency(parts: Sequence[LatencySummary], n_total: int) -> LatencySummary:
    wall = max(p.sampling_wall_s for p in parts)
    medians = sorted(p.step_ms_median for p in parts)
    return LatencySummary(
        nfe=parts[0].nfe,
        step_ms_median=medians[len(medians) // 2],
        step_ms_iqr=max(p.step_ms_iqr for p in parts),
        images_per_s=n_total / wall if wall > 0 else float("nan"),
        sampling_wall_s=wall,
        batches=sum(p.batches for p in parts),
        batch_size=parts[0].batch_size,
    )


def evaluate_sharded(
    sampler: Any,
    *,
    seeds: Sequence[int],
    metrics: Sequence[Any],
    evaluate_fn: Callable[..., EvaluationResult] = evaluate,
    **kwargs: Any,
) -> EvaluationResult | None:
    """:func:`diffeval.engine.loop.evaluate` over this rank's block of ``seeds``; rank 0 returns the merged result.

    Outside torch.distributed this is plain ``evaluate``. Other ranks return None.
    """
    w = world()
    seeds = list(seeds)
    sampler = as_sampler(sampler)
    if not w.distributed:
        return evaluate_fn(sampler, seeds=seeds, metrics=metrics, **kwargs)
    mine = shard(seeds, w.rank, w.size)
    payload: dict[str, Any] = {"rank": w.rank, "error": None}
    try:
        if not mine:
            raise DiffevalError(
                f"rank {w.rank} has no seeds: {len(seeds)} seeds for {w.size} ranks; use at least as many samples as"
                " ranks"
            )
        for metric in metrics:
            metric.reset()
        result = evaluate_fn(sampler, seeds=mine, metrics=metrics, compute=False, **kwargs)
        payload.update(
            states=[m.state() for m in metrics],
            latency=result.latency,
            n=result.n,
            output_range=result.output_range,
            samples=result.samples,
            wall_s=result.wall_s,
        )
    except Exception as error:  # reported through the gather, so no rank waits forever
        payload["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
    parts = _gather(payload, w)
    failed = [p for p in parts if p["error"] is not None]
    if failed:
        names = ", ".join(f"rank {p['rank']}" for p in failed)
        raise RankFailed(
            f"{names} failed during distributed evaluation ({w.size} ranks); no report was written as complete. First"
            f" error: {failed[0]['error'].splitlines()[0]}"
        )
    if w.rank != 0:
        return None
    for part in parts[1:]:
        for metric, state in zip(metrics, part["states"], strict=True):
            metric.merge_state(state)
    n_total = sum(p["n"] for p in parts)
    latency = _merge_latency([p["latency"] for p in parts], n_total)
    values = {m.label: m.compute() for m in metrics}
    output_range = parts[0]["output_range"]
    for part in parts[1:]:
        output_range = output_range.merge(part["output_range"])
    mine_result = parts[0]
    return EvaluationResult(
        n=n_total,
        metrics=values,
        latency=latency,
        samples=mine_result["samples"],
        output_range=output_range,
        wall_s=max(p["wall_s"] for p in parts),
        sampler=describe(sampler),
        config={"world_size": w.size, "n": n_total},
    )

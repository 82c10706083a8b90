"""The metric contract and the batch every metric is fed.

Contract: ``update(batch)``, ``compute() -> dict``, ``merge(other)``, ``reset()``, with
``name``, ``higher_is_better``, ``extractor`` (the name of the feature extractor
whose layers it reads, or None) and ``state_keys`` (the attributes that hold its
accumulated state: what shards exchange, see :func:`metric_state`) as data. Features are computed once per batch by the
evaluation loop and handed to every metric in a :class:`Batch`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.errors import InputError, explain

__all__ = ["Batch", "Metric", "metric_state", "merge_state", "mean_and_stderr"]


@dataclass
class Batch:
    """One batch: ``features[extractor][layer]`` (N, D), the uint8 images, their seeds and condition."""

    features: dict[str, dict[str, torch.Tensor]]
    seeds: list[int] = field(default_factory=list)
    cond: Any = None
    images: torch.Tensor | None = None

    def layer(self, extractor: str, layer: str, who: str) -> torch.Tensor:
        if extractor not in self.features:
            raise InputError(explain(f"{who} needs features of extractor {extractor!r}", expected=f"extractor {extractor!r} in the run", got=f"extractors {sorted(self.features)}", fix=f"add the {extractor!r} extractor to the evaluation"))
        layers = self.features[extractor]
        if layer not in layers:
            raise InputError(explain(f"extractor {extractor!r} gave no layer {layer!r}", expected=f"layer {layer!r}", got=f"layers {sorted(layers)}", fix="pick a layer the extractor provides"))
        return layers[layer]


@runtime_checkable
class Metric(Protocol):
    name: str
    higher_is_better: bool
    extractor: str | None

    def update(self, batch: Batch) -> None: ...

    def compute(self) -> dict[str, Any]: ...

    def merge(self, other: Any) -> Any: ...

    def reset(self) -> None: ...


def mean_and_stderr(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """Mean and its standard error (unbiased variance / n) from running sums; stderr is NaN for n < 2."""
    mean = total / n
    if n < 2:
        return mean, float("nan")
    var = max(total_sq / n - mean**2, 0.0) * n / (n - 1)
    return mean, math.sqrt(var / n)


def _to_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        clone = copy.copy(value)
        clone.__dict__.update({k: _to_cpu(v) for k, v in value.__dict__.items()})
        return clone
    return value


def metric_state(metric: Any) -> dict[str, Any]:
    """The metric's accumulated state (``state_keys``), on the CPU and picklable: what a shard sends."""
    return {key: _to_cpu(getattr(metric, key)) for key in metric.state_keys}


def merge_state(metric: Any, state: dict[str, Any]) -> None:
    """Merge another shard's :func:`metric_state` into ``metric`` (via its own ``merge``)."""
    other = copy.copy(metric)
    for key, value in state.items():
        setattr(other, key, value)
    metric.merge(other)

"""The metric contract and the batch every metric is fed.

Contract: ``update(batch)``, ``compute() -> dict``, ``merge(other)``, ``reset()``, with
``name``, ``higher_is_better`` and ``extractor`` (the name of the feature extractor
whose layers it reads, or None) as data. Features are computed once per batch by the
evaluation loop and handed to every metric in a :class:`Batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.errors import InputError, explain

__all__ = ["Batch", "Metric"]


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

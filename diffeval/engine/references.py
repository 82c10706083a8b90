"""Reference sets: statistics (for FID) and features (for KID) of real images, at a matched count.

FID values are comparable only at equal sample counts, so a reference built from
images can be cut to exactly ``n`` images by a seeded subset; asking for more images
than the source has is an error that explains the bias. References go through the same
batch loop as everything else (:func:`diffeval.engine.loop.measure`, with its CUDA
out-of-memory retry), fed to two collectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffeval.core.errors import InputError, explain
from diffeval.data.sources import ImageSource, seeded_subset
from diffeval.engine.loop import measure
from diffeval.features import FeatureExtractor, extractor_key, feature_space
from diffeval.metrics.base import Batch
from diffeval.stats.moments import FeatureMoments

__all__ = ["Reference", "build_reference"]


@dataclass
class Reference:
    """Moments per layer, kept features per layer, and which images were used."""

    moments: dict[str, FeatureMoments]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.indices)


class _Collector:
    """Keeps moments (float64 sums) and/or the features (float64) of the layers it is given."""

    def __init__(self, extractor: str, moments: dict[str, FeatureMoments], feature_layers: Sequence[str]) -> None:
        self.extractor, self.moments = extractor, moments
        self.label = f"reference@{extractor}"
        self.kept: dict[str, list[torch.Tensor]] = {layer: [] for layer in feature_layers}

    def update(self, batch: Batch) -> None:
        for layer, m in self.moments.items():
            m.update(batch.layer(self.extractor, layer, "reference statistics"))
        for layer, chunks in self.kept.items():
            chunks.append(batch.layer(self.extractor, layer, "reference features").detach().to(torch.float64))

    def compute(self) -> Any:
        return None


def build_reference(
    source: ImageSource,
    extractor: FeatureExtractor,
    *,
    moment_layers: Sequence[str] = (),
    feature_layers: Sequence[str] = (),
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Reference:
    """Extract a reference from ``source``: all images, or a seeded subset of exactly ``n``."""
    total = len(source)
    if n is None:
        indices = list(range(total))
    elif n > total:
        raise InputError(
            explain(
                f"reference {source.name} has too few images",
                expected=f"at least n = {n} images (FID is only comparable at equal sample counts)",
                got=f"{total} images",
                fix=f"generate {total} samples instead, or use a larger reference set",
            )
        )
    else:
        indices = list(range(total)) if n == total else seeded_subset(total, n, seed)
    for layer in (*moment_layers, *feature_layers):
        if layer not in extractor.layers:
            raise InputError(
                explain(
                    f"extractor {extractor.name!r} has no layer {layer!r}",
                    expected=f"one of {sorted(extractor.layers)}",
                    got=repr(layer),
                    fix="pick a layer the extractor provides",
                )
            )
    key = extractor_key(extractor)
    meta = {"source": source.name, "subset_seed": seed if len(indices) < total else "none"}
    if getattr(source, "notes", ""):
        meta["conversion"] = source.notes
    moments = {layer: FeatureMoments({**meta, **feature_space(extractor, layer)}) for layer in moment_layers}
    collector = _Collector(key, moments, feature_layers)
    measure(
        source,
        extractors={key: extractor},
        metrics=[collector],
        batch_size=batch_size,
        indices=indices,
        progress=progress,
        compute=False,
    )
    return Reference(
        moments=collector.moments, features={k: torch.cat(v) for k, v in collector.kept.items() if v}, indices=indices
    )

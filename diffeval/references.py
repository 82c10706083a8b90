"""Reference sets: statistics (for FID) and features (for KID) of real images, at a matched count.

FID values are comparable only at equal sample counts, so a reference built from
images can be cut to exactly ``n`` images by a seeded subset; asking for more images
than the source has is an error that explains the bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from diffeval.errors import InputError, explain
from diffeval.features import FeatureExtractor
from diffeval.sources import ImageSource, iter_batches, seeded_subset
from diffeval.stats import FeatureMoments

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
            raise InputError(explain(f"extractor {extractor.name!r} has no layer {layer!r}", expected=f"one of {sorted(extractor.layers)}", got=repr(layer), fix="pick a layer the extractor provides"))
    meta = {"extractor": extractor.name, "resize": getattr(extractor, "resize", "none"), "quantization": "uint8 round((x+1)*127.5)", "source": source.name, "subset_seed": seed if len(indices) < total else "none"}
    moments = {layer: FeatureMoments({**meta, "layer": layer}) for layer in moment_layers}
    kept: dict[str, list[torch.Tensor]] = {layer: [] for layer in feature_layers}
    batches = iter_batches(source, batch_size, indices)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(indices) // batch_size), desc=f"reference {source.name}", unit="batch", leave=False)
    for _, images in batches:
        features = extractor(images)
        for layer, m in moments.items():
            m.update(features[layer])
        for layer, chunks in kept.items():
            chunks.append(features[layer].detach().float())
    return Reference(moments=moments, features={k: torch.cat(v) for k, v in kept.items() if v}, indices=indices)

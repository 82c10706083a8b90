"""Feature extractors: ``extractor(uint8 NCHW) -> {layer: (N, D) float}``.

Features are computed once per batch and fanned out to every metric. Extractors are
looked up by name in :data:`EXTRACTORS` (unknown names get a "did you mean"): ``inception-v3``
(and ``-fast``), ``clip`` (any open_clip model; ViT-L-14-336 for CMMD) and ``dinov2-vit-l14``
(:mod:`diffeval.features.dinov2`); plugins register their own (the bundled demo registers ``demo-digits``).

An extractor declares ``name``, ``layers`` (layer → D), ``default_layers`` (metric name
→ the layer it reads by default), ``channels``, and ``key``: its identity within a run
(the name, plus the weights' hash when they are not the published ones), under which
its features travel in a :class:`~diffeval.metrics.base.Batch`.

Images enter as uint8; float images in [-1, 1] are quantized on the 8-bit grid of
:mod:`diffeval.core.quantize`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.core.quantize import GRID
from diffeval.core.registry import Registry
from diffeval.features.weights import sha256_file

__all__ = ["FeatureExtractor", "EXTRACTORS", "get_extractor", "extractor_key", "feature_space", "weights_tag"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images_uint8) -> {layer: (N, D)}`` with ``name``, ``layers``, ``default_layers``, ``channels``."""

    name: str
    layers: dict[str, int]
    default_layers: dict[str, str]
    channels: int

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


EXTRACTORS: Registry[Any] = Registry("feature extractor", builtins="diffeval.features")


def get_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor (``inception-v3``, ``clip``, plugins' ...)."""
    return EXTRACTORS.create(name, **kwargs)


def extractor_key(extractor: Any) -> str:
    """The extractor's identity within a run: its ``key`` if it declares one, else its ``name``."""
    return str(getattr(extractor, "key", None) or extractor.name)


def feature_space(extractor: Any, layer: str) -> dict[str, str]:
    """The identity of a feature space: extractor (key), layer, weights SHA-256, resize and quantization.

    Stored in statistics files and every row, so statistics are only ever compared with
    features computed the same way.
    """
    identity = dict(getattr(extractor, "identity", {}) or {})
    return {
        "extractor": extractor_key(extractor),
        "layer": str(layer),
        "weights_sha256": str(identity.get("weights_sha256", "unknown")),
        "resize": str(identity.get("resize", getattr(extractor, "resize", "none"))),
        "quantization": GRID,
    }


def weights_tag(path: Any, verified: bool) -> str:
    """``""`` for published, hash-verified weights; ``[sha256:<first 12 hex>]`` for any other file."""
    return "" if verified or path is None else f"[sha256:{sha256_file(path)[:12]}]"

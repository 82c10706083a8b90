"""Feature extractors: ``extractor(uint8 NCHW) -> {layer: (N, D) float}``, computed once per batch.

Owns the extractor registry and contract (:mod:`~diffeval.features.registry`), the built-in
networks — Inception-v3 (:mod:`~diffeval.features.inception`), CLIP (:mod:`~diffeval.features.clip`),
DINOv2 ViT-L/14 (:mod:`~diffeval.features.dinov2`) — and weight resolution with hash checks
(:mod:`~diffeval.features.weights`). May import ``core`` and ``data`` only: an extractor never sees a
metric, a sampler or the batch loop.
"""

from diffeval.features.clip import ClipExtractor, resolve_open_clip
from diffeval.features.dinov2 import Dinov2Extractor
from diffeval.features.inception import INCEPTION_WEIGHTS, InceptionV3Extractor
from diffeval.features.registry import EXTRACTORS, FeatureExtractor, extractor_key, feature_space, get_extractor

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "get_extractor",
    "extractor_key",
    "feature_space",
    "InceptionV3Extractor",
    "INCEPTION_WEIGHTS",
    "ClipExtractor",
    "resolve_open_clip",
    "Dinov2Extractor",
]

"""Feature extractors: ``extractor(uint8 NCHW) -> {layer: (N, D) float}``.

Features are computed once per batch and fanned out to every metric. Extractors are
looked up by name in :data:`EXTRACTORS` (unknown names get a "did you mean").

Images enter as uint8. Float images in [-1, 1] are quantized by :func:`to_uint8`:
``round((x + 1) * 127.5)`` (round half to even), the same 8-bit grid every image file
has; any other range is an error that says what was seen.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.errors import InputError, explain
from diffeval.registry import Registry

__all__ = ["FeatureExtractor", "EXTRACTORS", "get_extractor", "to_uint8", "RANGE_TOLERANCE"]

RANGE_TOLERANCE = 1e-3


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images_uint8) -> {layer: (N, D)}``; ``layers`` maps layer names to D."""

    name: str
    layers: dict[str, int]
    channels: int

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor")


def get_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor (``demo-digits``, ...)."""
    return EXTRACTORS.create(name, **kwargs)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW images from uint8 (returned as is) or float images in [-1, 1].

    Float values must lie in ``[-1 - 1e-3, 1 + 1e-3]``; they are mapped by
    ``round((x + 1) * 127.5)`` and clamped to [0, 255].
    """
    if not torch.is_tensor(images) or images.ndim != 4:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise InputError(explain("images must be a 4-D tensor", expected="(N, C, H, W)", got=f"{got}", fix="stack images into an NCHW tensor"))
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise InputError(explain("images have an integer dtype other than uint8", expected="uint8 or float in [-1, 1]", got=str(images.dtype), fix="convert with images.to(torch.uint8)"))
    if not bool(torch.isfinite(images).all()):
        raise InputError(explain("images contain NaN or inf", expected="finite values in [-1, 1]", got="non-finite values", fix="check the sampler's output"))
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = (
            "these look like 0-255 pixels: pass them as uint8, or divide by 127.5 and subtract 1"
            if hi > 2
            else "scale images to [-1, 1] (x * 2 - 1 for [0, 1] data), or clamp sampler outputs"
        )
        raise InputError(explain("float images are outside [-1, 1]", expected="values in [-1, 1]", got=f"range [{lo:.4g}, {hi:.4g}]", fix=hint))
    return torch.round((images.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)


@EXTRACTORS.register("demo-digits")
def _demo_digits(device: str = "cpu") -> FeatureExtractor:
    from diffeval.demo.bundle import DigitsFeatureExtractor

    return DigitsFeatureExtractor(device=device)

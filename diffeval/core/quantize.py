"""The 8-bit grid: how float images in [-1, 1] and uint8 pixels map to each other.

One convention everywhere (feature extraction, sample grids, bits/dim, data loading)::

    u8 = round((x + 1) * 127.5)      (round half to even, clamped to [0, 255])
    x  = u8 / 127.5 - 1

:func:`to_uint8` validates (finite, within [-1, 1], not [0, 1]-looking) before
quantizing; :func:`quantize` is the no-sync path for sampler outputs whose range is
recorded separately.

Example::

    >>> import torch
    >>> to_uint8(torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 2, 2)).flatten().tolist()
    [0, 64, 128, 255]
    >>> dequantize(torch.tensor([0, 255], dtype=torch.uint8)).tolist()
    [-1.0, 1.0]
"""

from __future__ import annotations

import torch

from diffeval.core.errors import InputError, explain

__all__ = ["RANGE_TOLERANCE", "to_uint8", "quantize", "dequantize", "levels", "grid_offset", "GRID"]

RANGE_TOLERANCE = 1e-3
GRID = "uint8 round((x + 1) * 127.5)"


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images → uint8 without host round-trips: clamp to [-1, 1], then ``round((x + 1) * 127.5)``."""
    return torch.round((images.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def dequantize(u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 → float in [-1, 1]: ``u8 / 127.5 - 1`` (exact grid points)."""
    return u8.to(dtype) / 127.5 - 1.0


def levels(x: torch.Tensor) -> torch.Tensor:
    """The integer level 0..255 of each value on the grid: ``round((x + 1) * 127.5)`` as int64 (no clamping)."""
    return ((x.double() + 1) * 127.5).round().long()


def grid_offset(x: torch.Tensor) -> float:
    """Largest distance (in bins) of float data in [-1, 1] from the 8-bit grid ``k / 127.5 - 1``."""
    k = (x.double() + 1) * 127.5
    return float((k - k.round()).abs().max()) if x.numel() else 0.0


def to_uint8(images: torch.Tensor, *, allow_nonnegative: bool = False) -> torch.Tensor:
    """uint8 NCHW images from uint8 (returned as is) or float images in [-1, 1].

    Float values must lie in ``[-1 - 1e-3, 1 + 1e-3]``; a float batch with no negative
    value looks like [0, 1] data and is refused unless ``allow_nonnegative``.
    """
    if not torch.is_tensor(images) or images.ndim != 4:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise InputError(
            explain(
                "images must be a 4-D tensor",
                expected="(N, C, H, W)",
                got=f"{got}",
                fix="stack images into an NCHW tensor",
            )
        )
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise InputError(
            explain(
                "images have an integer dtype other than uint8",
                expected="uint8 or float in [-1, 1]",
                got=str(images.dtype),
                fix="convert with images.to(torch.uint8)",
            )
        )
    bad = ~torch.isfinite(images).flatten(1).all(1)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise InputError(
            explain(
                "images contain NaN or inf",
                expected="finite values in [-1, 1]",
                got=f"{int(bad.sum())} of {images.shape[0]} images non-finite, the first at index {first}",
                fix="check the sampler or the decoding of these images",
            )
        )
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = (
            "these look like 0-255 pixels: pass them as uint8, or divide by 127.5 and subtract 1"
            if hi > 2
            else "scale images to [-1, 1] (x * 2 - 1 for [0, 1] data), or clamp sampler outputs"
        )
        raise InputError(
            explain(
                "float images are outside [-1, 1]",
                expected="values in [-1, 1]",
                got=f"range [{lo:.4g}, {hi:.4g}]",
                fix=hint,
            )
        )
    if lo >= 0 and not allow_nonnegative:
        raise InputError(
            explain(
                "float images look like [0, 1] data (no negative value in the batch)",
                expected="values in [-1, 1]",
                got=f"range [{lo:.4g}, {hi:.4g}]",
                fix=(
                    "map them with x * 2 - 1, or pass uint8 images; if they really are bright [-1, 1] images, quantize"
                    " with to_uint8(x, allow_nonnegative=True)"
                ),
            )
        )
    return quantize(images)

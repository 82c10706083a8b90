"""Image helpers: sample grids (uint8 NCHW images tiled into one PNG) and channel matching for extractors."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from diffeval.core.errors import InputError, explain

__all__ = ["make_grid", "save_grid", "match_channels"]


def make_grid(images: torch.Tensor, nrow: int | None = None, scale: int = 1, pad: int = 1) -> torch.Tensor:
    """Tile uint8 (N, C, H, W) images into one uint8 (H', W', C) array, upscaled by ``scale`` (nearest)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise InputError(
            explain(
                "grid needs uint8 NCHW images",
                expected="uint8 (N>=1, C, H, W)",
                got=f"{images.dtype} {tuple(images.shape)}",
                fix="quantize with diffeval.to_uint8",
            )
        )
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    big = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    hs, ws = h * scale + pad, w * scale + pad
    grid = torch.full((c, ncol * hs + pad, nrow * ws + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, pad + r * hs : pad + r * hs + h * scale, pad + k * ws : pad + k * ws + w * scale] = big[i]
    return grid.permute(1, 2, 0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 4) -> Path:
    """Write a PNG grid of uint8 images; returns the path."""
    from PIL import Image

    grid = make_grid(images.cpu(), nrow=nrow, scale=scale).numpy()
    mode = "L" if grid.shape[2] == 1 else "RGB"
    Image.fromarray(grid[:, :, 0] if mode == "L" else grid, mode=mode).save(Path(path))
    return Path(path)


def match_channels(images: torch.Tensor, channels: int, who: str) -> torch.Tensor:
    """Repeat grayscale to ``channels``; any other mismatch is an :class:`InputError`."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, channels, -1, -1)
    raise InputError(
        explain(
            f"{who} got images with {c} channels",
            expected=f"{channels} channel(s) (grayscale is repeated)",
            got=f"{c} channels",
            fix="drop the alpha channel / convert to RGB or grayscale first",
        )
    )

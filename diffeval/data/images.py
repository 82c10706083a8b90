"""Image helpers: sample grids (uint8 NCHW images tiled into one PNG) and channel matching for extractors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.files import save_image
from diffeval.core.quantize import quantize

__all__ = ["make_grid", "save_grid", "match_channels", "images_to_uint8", "VALUE_RANGES"]


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
    return save_image(Image.fromarray(grid[:, :, 0] if mode == "L" else grid, mode=mode), Path(path))  # atomic


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


VALUE_RANGES = {"uint8": "uint8", "[-1, 1]": "signed", "[0, 1]": "unit", "signed": "signed", "unit": "unit"}


def images_to_uint8(images: Any, value_range: str | None, who: str) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """(uint8 NCHW images, the range they came in, the float images mapped to [-1, 1] before clamping); refuses
    what cannot be in the stated range (0-255 as floats, [-1, 1] stated as [0, 1])."""
    if not torch.is_tensor(images) or images.ndim != 4:
        got = f"{type(images).__name__}" + (f" of shape {tuple(images.shape)}" if torch.is_tensor(images) else "")
        raise InputError(
            explain(
                f"{who}: images must be an NCHW tensor",
                expected="a (N, C, H, W) tensor: uint8 0-255, or float with value_range",
                got=got,
                fix="stack the batch into one tensor, channels first (torch.stack, .permute(0, 3, 1, 2))",
            )
        )
    if value_range is not None and value_range not in VALUE_RANGES:
        raise ConfigError(
            explain(
                f"{who}: unknown value_range",
                expected=" / ".join(repr(k) for k in ("uint8", "[-1, 1]", "[0, 1]")),
                got=repr(value_range),
                fix="say what range the images are in",
            )
        )
    kind = VALUE_RANGES.get(value_range) if value_range is not None else None
    if images.dtype == torch.uint8:  # self-describing: 0-255, whatever range a float input would have
        return images, "uint8", None
    if not images.is_floating_point():
        raise InputError(
            explain(
                f"{who}: images of dtype {images.dtype}",
                expected="uint8 (0-255) or a float dtype with value_range",
                got=str(images.dtype),
                fix="convert 0-255 integers with .to(torch.uint8)",
            )
        )
    if kind in (None, "uint8"):
        raise InputError(
            explain(
                f"{who}: float images need their range stated",
                expected="value_range='[-1, 1]' (diffusion models' output) or '[0, 1]'",
                got=f"{images.dtype} images" + ("" if kind is None else " with value_range='uint8'"),
                fix="pass value_range='[-1, 1]' (or '[0, 1]'), or feed uint8 images",
            )
        )
    if not bool(torch.isfinite(images).all()):
        raise InputError(
            explain(
                f"{who}: images contain NaN or inf",
                expected="finite pixel values",
                got="non-finite values",
                fix="check the model's output (a diverged sampler, or a dtype overflow)",
            )
        )
    low, high = float(images.min()), float(images.max())
    # the traps are refused; a sampler's slight excursions are clamped and judged by output_range at compute()
    if kind == "signed" and high > 2.0:
        looks, fix = "0-255 pixels as floats", "divide by 127.5 and subtract 1, or feed .to(torch.uint8) images"
    elif kind == "unit" and high > 2.0:
        looks, fix = "0-255 pixels as floats", "divide by 255, or feed .to(torch.uint8) images"
    elif kind == "unit" and low < -0.5:
        looks, fix = "[-1, 1] images", "pass value_range='[-1, 1]'"
    else:
        signed = images if kind == "signed" else images * 2.0 - 1.0
        return quantize(signed), kind, signed
    raise InputError(
        explain(
            f"{who}: images outside value_range {value_range!r}",
            expected="values in [-1, 1]" if kind == "signed" else "values in [0, 1]",
            got=f"min {low:.4g}, max {high:.4g}: {looks}",
            fix=fix,
        )
    )

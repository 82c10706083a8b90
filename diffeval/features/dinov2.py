"""DINOv2 ViT-L/14 as a feature extractor (FD-DINOv2, PRDC): the CLS token after the final LayerNorm, 1024-d.

Preprocessing follows EDM2's DINOv2 detector (modelled on dgm-eval): uint8 images resized to
224 x 224 with torch's bicubic, antialiased interpolation (no crop), scaled to [0, 1] and
normalized with the ImageNet mean and std. The network is built with timm's
``vit_large_patch14_dinov2`` architecture, which open-clip-torch already requires — no new
dependency, and it constructs offline; transformers' ``Dinov2Model`` would add a large
dependency for the same network.

The published weights (``dinov2_vitl14_pretrain.pth``, what ``torch.hub.load('facebookresearch/
dinov2', 'dinov2_vitl14')`` — and so dgm-eval and EDM2 — load) carry position embeddings for a
518 x 518 input (37 x 37 patches). The reference model interpolates them to the input's grid
at every call: bicubic, no antialiasing, with the scale factor ``(16 + 0.1) / 37`` (DINOv2's
``interpolate_offset``). This module does that interpolation once, when the weights are loaded,
into a network built for 224 x 224 — the same numbers, once. Weights are resolved like
Inception's (explicit path → ``$DIFFEVAL_WEIGHTS_DIR`` → the torch hub cache) and loaded
with ``torch.load(weights_only=True)``; the official file's SHA-256 is not pinned yet, so a
local copy is checked by its size and never downloaded (see :mod:`diffeval.features.weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffeval.core.errors import WeightsError, explain
from diffeval.core.quantize import to_uint8
from diffeval.data.images import match_channels
from diffeval.features.registry import EXTRACTORS, FeatureExtractor
from diffeval.features.weights import PublishedWeights, load_state_dict, resolve, sha256_file

__all__ = ["DINOV2_WEIGHTS", "Dinov2Extractor", "interpolate_pos_embed", "to_timm_state_dict", "VIT_L14"]

DINOV2_WEIGHTS = PublishedWeights(
    filename="dinov2_vitl14_pretrain.pth",
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    sha256_prefix=None,  # not pinned yet: no network here to hash the published file
    size=1_217_586_395,
)
VIT_L14: dict[str, Any] = {"embed_dim": 1024, "depth": 24, "num_heads": 16}  # the published network
INPUT_SIZE = 224
PATCH = 14
OFFSET = 0.1  # DINOv2's interpolate_offset
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + M^2, D) position embeddings -> (1, 1 + grid^2, D) as DINOv2 interpolates them at run time.

    Bicubic, ``antialias=False``, ``scale_factor = (grid + 0.1) / M``, computed in float32.
    """
    n = pos_embed.shape[1] - 1
    m = int(round(n**0.5))
    if m * m != n:
        raise WeightsError(
            explain(
                "DINOv2 position embeddings are not a square grid",
                expected="1 + M^2 tokens",
                got=f"{pos_embed.shape[1]} tokens",
                fix="pass DINOv2 ViT weights without register tokens",
            )
        )
    if m == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    grid_in = patches.reshape(1, m, m, dim).permute(0, 3, 1, 2).float()
    scale = (grid + OFFSET) / m
    out = torch.nn.functional.interpolate(grid_in, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != (grid, grid):
        raise WeightsError(
            explain(
                "DINOv2 position-embedding interpolation gave the wrong grid",
                expected=f"{grid} x {grid}",
                got=f"{tuple(out.shape[-2:])}",
                fix="report this: the interpolation offset no longer matches",
            )
        )
    out = out.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([cls, out], dim=1)


def to_timm_state_dict(state: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """Official (or timm) DINOv2 ViT keys -> the timm network's: drop ``mask_token``, interpolate ``pos_embed``."""
    if "pos_embed" not in state or "cls_token" not in state:
        raise WeightsError(
            explain(
                "weights are not a DINOv2 ViT state dict",
                expected="keys cls_token, pos_embed, patch_embed.proj.weight, blocks.N.*, norm.*",
                got=f"{len(state)} keys, e.g. {sorted(state)[:3]}",
                fix="pass dinov2_vitl14_pretrain.pth (torch.hub's DINOv2 ViT-L/14 backbone)",
            )
        )
    if any(k.startswith("register_tokens") for k in state):
        raise WeightsError(
            explain(
                "these DINOv2 weights have register tokens",
                expected="the ViT-L/14 backbone without registers (dinov2_vitl14)",
                got="register_tokens in the state dict (dinov2_vitl14_reg)",
                fix="pass dinov2_vitl14_pretrain.pth",
            )
        )
    out = {k: v for k, v in state.items() if k != "mask_token"}
    out["pos_embed"] = interpolate_pos_embed(state["pos_embed"], grid)
    return out


class Dinov2Extractor:
    """DINOv2 ViT/14 CLS features (layer ``cls``) of uint8 images, EDM2/dgm-eval preprocessing.

    ``arch`` overrides the ViT-L/14 shape (``embed_dim``, ``depth``, ``num_heads``): for tests with
    small random-weight networks; the registered ``dinov2-vit-l14`` is the published network.
    """

    name = "dinov2-vit-l14"
    channels = 3
    resize = f"bicubic-antialias {INPUT_SIZE}x{INPUT_SIZE} (torch), ImageNet normalization"

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        arch: dict[str, Any] | None = None,
    ) -> None:
        import timm

        shape = {**VIT_L14, **(arch or {})}
        self.device = torch.device(device)
        self.batch_size = batch_size
        path, verified = resolve(DINOV2_WEIGHTS, weights)
        state = load_state_dict(path, None, fix="pass dinov2_vitl14_pretrain.pth (a plain state dict)")
        net = timm.create_model(
            "vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=INPUT_SIZE, **shape
        )
        try:
            net.load_state_dict(to_timm_state_dict(state, INPUT_SIZE // PATCH), strict=True)
        except RuntimeError as error:
            raise WeightsError(
                explain(
                    f"weights {path} do not fit the DINOv2 ViT network ({shape})",
                    expected="a DINOv2 ViT/14 backbone state dict of that shape",
                    got=str(error).splitlines()[0],
                    fix="pass dinov2_vitl14_pretrain.pth",
                )
            ) from None
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.layers = {"cls": int(shape["embed_dim"])}
        self.default_layers = {"fid": "cls", "kid": "cls", "prdc": "cls", "cmmd": "cls"}
        digest = sha256_file(path)
        self.key = self.name + ("" if verified and arch is None else f"[sha256:{digest[:12]}]")
        self.identity = {"weights_sha256": digest, "resize": self.resize}
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> the network's input: bicubic antialiased 224 x 224, [0, 1], ImageNet-normalized."""
        x = torch.nn.functional.interpolate(
            u8.to(self.device, torch.float32), size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True
        )
        return (x / 255 - self.mean) / self.std

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        u8 = match_channels(to_uint8(images), 3, self.name)
        out = []
        with torch.no_grad():
            for chunk in u8.split(self.batch_size):
                out.append(self.net(self.preprocess(chunk)).float())
        return {"cls": torch.cat(out)}


@EXTRACTORS.register("dinov2-vit-l14")
def _dinov2(device: str = "cpu", weights: str | None = None) -> FeatureExtractor:
    """DINOv2 ViT-L/14 CLS features (1024-d) for FD-DINOv2, PRDC, KID."""
    return Dinov2Extractor(weights=weights, device=device)

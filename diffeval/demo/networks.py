"""The two small networks of the bundled demo: a digits denoiser and a digits classifier.

Both work on 1 x 8 x 8 images in [-1, 1] (the UCI optical digits, 8-bit).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DigitsDenoiser", "DigitsClassifier", "NUM_CLASSES"]

NUM_CLASSES = 10


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM / improved-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the (time + class) embedding added in between."""

    def __init__(self, channels_in: int, channels_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, channels_out)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsDenoiser(nn.Module):
    """A two-level U-Net for 8x8 digits: ``model(x_t, t, cond=None) -> eps_hat``.

    ``t`` is the training step index (0..T-1, may be fractional); ``cond`` is a class
    label tensor (N,) or None for unconditional (the null label, trained with label
    dropout so classifier-free guidance works).
    """

    def __init__(self, channels: int = 32, emb_dim: int = 128) -> None:
        super().__init__()
        c1, c2 = channels, 2 * channels
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(NUM_CLASSES + 1, emb_dim)  # index NUM_CLASSES is "no label"
        self.conv_in = nn.Conv2d(1, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, emb_dim)
        self.downsample = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.down2 = ResBlock(c2, c2, emb_dim)
        self.mid = ResBlock(c2, c2, emb_dim)
        self.up2 = ResBlock(2 * c2, c2, emb_dim)
        self.upsample = nn.Conv2d(c2, c1, 3, padding=1)
        self.up1 = ResBlock(2 * c1, c1, emb_dim)
        self.norm_out = nn.GroupNorm(8, c1)
        self.conv_out = nn.Conv2d(c1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = (
            torch.full((x.shape[0],), NUM_CLASSES, device=x.device, dtype=torch.long) if cond is None else cond.long()
        )
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim).to(x.dtype)) + self.label_emb(labels).to(x.dtype)
        emb = nn.functional.silu(emb)
        h1 = self.down1(self.conv_in(x), emb)  # 8x8
        h2 = self.down2(self.downsample(h1), emb)  # 4x4
        h = self.mid(h2, emb)
        h = self.up2(torch.cat([h, h2], 1), emb)
        h = self.upsample(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up1(torch.cat([h, h1], 1), emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class DigitsClassifier(nn.Module):
    """A small CNN digit classifier; its 64-d penultimate layer is the demo's feature space.

    ``forward`` returns logits; ``features_and_logits`` returns both.
    """

    FEATURE_DIM = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, self.FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.FEATURE_DIM, NUM_CLASSES)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

"""A CIFAR-sized DDPM-style U-Net (random weights: for timing only).

``width=128, mults=(1, 2, 2, 2), blocks=2, attention at 16x16`` is the 35.7M-parameter
network of Ho et al. (2020) for 32x32 images; smaller widths keep CPU runs short.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _Res(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(32, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.e = nn.Linear(emb, c_out)
        self.n2, self.c2 = nn.GroupNorm(32, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(nn.functional.silu(self.n1(x))) + self.e(emb)[:, :, None, None]
        return self.skip(x) + self.c2(nn.functional.silu(self.n2(h)))


class _Attn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.out = nn.GroupNorm(32, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )[:, 0]
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


class CifarUNet(nn.Module):
    """``model(x_t, t) -> eps_hat`` for (N, 3, 32, 32) inputs."""

    def __init__(
        self,
        width: int = 128,
        mults: tuple[int, ...] = (1, 2, 2, 2),
        blocks: int = 2,
        attn_res: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        emb = 4 * width
        self.width = width
        self.t_mlp = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.down, chans, c, res = nn.ModuleList(), [width], width, 32
        for i, m in enumerate(mults):
            for _ in range(blocks):
                self.down.append(
                    nn.ModuleList([_Res(c, width * m, emb), _Attn(width * m) if res == attn_res else nn.Identity()])
                )
                c = width * m
                chans.append(c)
            if i < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                chans.append(c)
                res //= 2
        self.mid = nn.ModuleList([_Res(c, c, emb), _Attn(c), _Res(c, c, emb)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                self.up.append(
                    nn.ModuleList(
                        [_Res(c + chans.pop(), width * m, emb), _Attn(width * m) if res == attn_res else nn.Identity()]
                    )
                )
                c = width * m
            if i > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)])
                )
                res *= 2
        self.out = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.t_mlp(_embedding(t, self.width).to(x.dtype))
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            if len(layer) == 1:
                h = layer[0](h)
            else:
                h = layer[1](layer[0](h, emb))
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer[0], nn.Upsample):
                h = layer[1](layer[0](h))
            else:
                h = layer[1](layer[0](torch.cat([h, skips.pop()], 1), emb))
        return self.out(h)


def cifar_sampler(steps: int = 10, eta: float = 0.0, width: int = 128, device: str = "cpu", **knobs: object):
    """The generalized sampler over a random-weight CIFAR U-Net (linear schedule, eps)."""
    from diffeval import schedules
    from diffeval.samplers import GeneralizedSampler

    net = CifarUNet(width=width).to(device).eval()
    return GeneralizedSampler(
        net, schedules.linear(), prediction="eps", steps=steps, eta=eta, image_shape=(3, 32, 32), **knobs
    )

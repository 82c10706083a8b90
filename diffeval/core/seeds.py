"""Per-sample randomness: one ``torch.Generator`` per sample, seeded with that sample's seed.

Every random draw diffeval makes for a sample — its initial noise, every noise
injection of a stochastic sampler, the t and eps draws of bits/dim — comes from that
sample's own generator, so a result depends on the seeds alone, never on the batch a
sample was drawn in (EDM's stacked-generator idea).

    >>> rng = SeedRNG([0, 1], device="cpu")
    >>> rng.randn((1, 2, 2)).shape
    torch.Size([2, 1, 2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffeval.core.errors import SamplerError, explain

__all__ = ["SeedRNG", "seeded_noise", "MAX_SEED"]

MAX_SEED = 2**63 - 1


class SeedRNG:
    """One generator per sample; ``randn``/``rand``/``randn_like`` draw each sample's slice from its own generator.

    Same seeds give the same numbers on the same device type.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu") -> None:
        seeds = list(seeds)
        for s in seeds:
            if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED:
                raise SamplerError(
                    explain(
                        "invalid seed",
                        expected=f"integers in [0, {MAX_SEED}]",
                        got=repr(s),
                        fix="pass non-negative integer seeds",
                    )
                )
        if not seeds:
            raise SamplerError(
                explain("no seeds given", expected="at least one seed", got="[]", fix="pass seeds=range(n)")
            )
        self.seeds = seeds
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise of shape ``(len(seeds), *shape)``, drawn in float32 then cast to ``dtype``."""
        draws = [
            torch.randn(tuple(shape), generator=g, device=self.device, dtype=torch.float32) for g in self.generators
        ]
        return torch.stack(draws).to(dtype)

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draws of shape ``(len(seeds), *shape)``."""
        draws = [
            torch.rand(tuple(shape), generator=g, device=self.device, dtype=torch.float32) for g in self.generators
        ]
        return torch.stack(draws).to(dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped like ``x`` (one row per seed), on ``x``'s device and dtype."""
        if x.shape[0] != len(self.generators):
            raise SamplerError(
                explain(
                    "batch size does not match the number of seeds",
                    expected=f"{len(self.generators)} samples",
                    got=f"{x.shape[0]}",
                    fix="draw noise and rng from the same seeds",
                )
            )
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)

    def derived(self, offset: int) -> SeedRNG:
        """Independent streams for the same samples: seeds shifted by ``offset`` (mod 2**63)."""
        return SeedRNG([(s + offset) % (MAX_SEED + 1) for s in self.seeds], self.device)


#: seed offset of the noise a foreign sampler draws at its steps when diffeval supplied the initial noise
#: (``rng.derived(STEP_NOISE_OFFSET)``): the steps must not redraw z_T
STEP_NOISE_OFFSET = 1_000_003


def seeded_noise(
    seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit Gaussian noise ``(len(seeds), *shape)``, one generator per seed."""
    return SeedRNG(seeds, device).randn(shape, dtype)

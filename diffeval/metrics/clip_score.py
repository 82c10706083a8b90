"""CLIP score between images and their prompts, in both published conventions.

``cos`` is the cosine similarity of an image's CLIP embedding and its prompt's:

- ``torchmetrics``: ``max(mean(100 cos), 0)`` — clamp after averaging;
- ``clipscore`` (Hessel et al. 2021): ``mean(2.5 max(cos, 0))`` — per-sample clamp.

Every row names its convention. Example::

    >>> import torch
    >>> cos = torch.tensor([0.3, -0.1, 0.25], dtype=torch.float64)
    >>> clip_score_torchmetrics(cos), round(clip_score_hessel(cos), 10)
    (15.0, 0.4583333333)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from diffeval.core.errors import InputError, explain
from diffeval.core.options import Option
from diffeval.metrics.base import (
    LABEL_OPTION,
    Batch,
    BuildContext,
    Metric,
    MetricExample,
    MetricResult,
    mean_and_stderr,
    register_metric,
    require_finite,
)
from diffeval.stats.uncertainty import SeedBlocks, loo_means

__all__ = ["clip_score_torchmetrics", "clip_score_hessel", "CLIPScore", "CONVENTIONS"]

CONVENTIONS = ("torchmetrics", "clipscore")


def clip_score_torchmetrics(cos: torch.Tensor) -> float:
    """``max(mean(100 cos), 0)``."""
    return max(float((100 * cos.double()).mean()), 0.0)


def clip_score_hessel(cos: torch.Tensor) -> float:
    """``mean(2.5 max(cos, 0))``."""
    return float((2.5 * cos.double().clamp_min(0)).mean())


@register_metric
class CLIPScore(Metric):
    """Streaming CLIP score: prompts come from the batch's condition (one string per image).

    Keeps float64 sums (and sums of squares, for standard errors) of ``100 cos`` and
    ``2.5 max(cos, 0)``; the value is the chosen ``convention``, the other is in the
    details. ``text_encoder(prompts) -> (N, D)`` embeds the prompts.
    """

    name = "clip_score"
    direction = "higher"
    options = (
        Option("model", str, "ViT-B-32", "open_clip model name"),
        Option("pretrained", str, "openai", "open_clip tag or a local checkpoint path", nullable=True),
        Option(
            "convention",
            str,
            "torchmetrics",
            "torchmetrics: max(mean(100 cos), 0); clipscore: mean(2.5 max(cos, 0)) (Hessel et al.)",
            choices=CONVENTIONS,
        ),
        Option(
            "blocks",
            int,
            10,
            "seed blocks (seed mod blocks) of the paired comparison in the gate (< 2: none)",
            minimum=0,
        ),
        replace(LABEL_OPTION, attr="given_label"),
    )
    state_keys = ("n", "sums", "block_sums", "seed_blocks", "prompt_print")

    def __init__(
        self,
        text_encoder: Callable[[list[str]], torch.Tensor],
        extractor: str = "clip",
        layer: str = "image",
        convention: str = "torchmetrics",
        *,
        label: str | None = None,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        blocks: int = 10,
    ) -> None:
        if convention not in CONVENTIONS:
            raise InputError(
                explain(
                    "unknown CLIP score convention",
                    expected=" / ".join(CONVENTIONS),
                    got=repr(convention),
                    fix="use 'torchmetrics' or 'clipscore'",
                )
            )
        self.text_encoder = text_encoder
        self.extractor = extractor
        self.layer = layer
        self.space = extractor
        self.convention = convention
        self.given_label = label
        self.custom_label = label or (None if convention == "torchmetrics" else f"clip_score[{convention}]@{extractor}")
        self.model, self.pretrained = model, pretrained
        self.blocks = int(blocks)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sums = torch.zeros(4, dtype=torch.float64)  # Σ100cos, Σ(100cos)², Σ2.5cos+, Σ(2.5cos+)²
        self.seed_blocks = SeedBlocks(max(self.blocks, 1))
        self.block_sums = torch.zeros(self.seed_blocks.k, 2, dtype=torch.float64)  # per seed block: Σ100cos, Σ2.5cos+
        self.prompt_print = 0  # Σ crc32(seed, prompt): which prompt went with which seed (order-free)

    def update(self, batch: Batch) -> None:
        images = batch.layer(self.extractor, self.layer, "CLIP score")
        require_finite(images, "CLIP score")
        prompts = batch.cond
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise InputError(
                explain(
                    "CLIP score needs one prompt string per image",
                    expected="a list of str as the condition",
                    got=type(prompts).__name__,
                    fix="give the prompts as the sampler's condition ([cond] prompts = 'prompts.txt')",
                )
            )
        if len(prompts) != images.shape[0]:
            raise InputError(
                explain(
                    "prompt count differs from image count",
                    expected=f"{images.shape[0]} prompts",
                    got=f"{len(prompts)}",
                    fix="give exactly one prompt per image",
                )
            )
        text = self.text_encoder(list(prompts)).to(images.device)
        cos = torch.nn.functional.cosine_similarity(images.double(), text.double(), dim=1).cpu()
        if not bool(torch.isfinite(cos).all()):
            raise InputError(
                explain(
                    "CLIP similarities are NaN or inf",
                    expected="finite embeddings",
                    got="non-finite cosine similarity",
                    fix="check the images and the text encoder",
                )
            )
        a, b = 100 * cos, 2.5 * cos.clamp_min(0)
        self.sums += torch.stack([a.sum(), (a * a).sum(), b.sum(), (b * b).sum()])
        self.n += int(cos.numel())
        block = self.seed_blocks.assign(batch.seeds, int(cos.numel()))
        self.block_sums.index_add_(0, block, torch.stack([a, b], dim=1))
        seeds = batch.seeds if len(batch.seeds) == len(prompts) else [""] * len(prompts)
        self.prompt_print += sum(zlib.crc32(f"{s}\0{p}".encode()) for s, p in zip(seeds, prompts, strict=True))

    def merge(self, other: CLIPScore) -> CLIPScore:
        self.n += other.n
        self.sums += other.sums
        self.block_sums += other.block_sums
        self.seed_blocks.merge(other.seed_blocks)
        self.prompt_print += other.prompt_print
        return self

    def compute(self) -> MetricResult:
        if self.n < 1:
            raise InputError(
                explain(
                    "CLIP score has no samples",
                    expected=">= 1 image with a prompt",
                    got="0",
                    fix="evaluate some samples",
                )
            )
        s = self.sums.tolist()
        tm_mean, tm_stderr = mean_and_stderr(s[0], s[1], self.n)
        hessel_mean, hessel_stderr = mean_and_stderr(s[2], s[3], self.n)
        values = {
            "torchmetrics": (max(tm_mean, 0.0), tm_stderr, "torchmetrics: max(mean(100 cos), 0)"),
            "clipscore": (hessel_mean, hessel_stderr, "Hessel et al. CLIPScore: mean(2.5 max(cos, 0))"),
        }
        value, stderr, text = values[self.convention]
        other = "clipscore" if self.convention == "torchmetrics" else "torchmetrics"
        details: dict[str, Any] = {
            f"{other}_value": values[other][0],
            f"{other}_stderr": values[other][1],
            "model": self.model,
            "pretrained": self.pretrained,
            "stderr_is": "std (ddof 1) of the per-image scores / sqrt(n)",
        }
        if self.blocks >= 2 and min(self.seed_blocks.counts) >= 1 and max(self.seed_blocks.counts) < self.n:
            loo = loo_means(self.block_sums, self.seed_blocks.counts)[:, 0 if self.convention == "torchmetrics" else 1]
            loo = loo.clamp_min(0) if self.convention == "torchmetrics" else loo
            reference = f"{self.model}/{self.pretrained}; prompts {self.prompt_print}"
            details["pairing"] = self.seed_blocks.record("jackknife", loo.tolist(), reference=reference)
        return MetricResult(value, stderr, n_gen=self.n, convention=text, details=details)

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> CLIPScore:
        ex = ctx.extractor("clip", model=options["model"], pretrained=options["pretrained"])
        return cls(
            ex.encode_text,
            ex.key,
            "image",
            options["convention"],
            label=options["label"],
            model=options["model"],
            pretrained=options["pretrained"],
            blocks=options["blocks"],
        )

    @classmethod
    def example(cls) -> MetricExample:
        def encode(prompts: list[str]) -> torch.Tensor:  # a deterministic stub text encoder
            gens = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
            return torch.nn.functional.normalize(
                torch.stack([torch.randn(8, generator=g, dtype=torch.float64) for g in gens]), dim=1
            )

        g = torch.Generator().manual_seed(3)
        prompts = [f"prompt {i % 5}" for i in range(40)]
        images = torch.nn.functional.normalize(
            encode(prompts) + 0.8 * torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1
        )
        batch = Batch(features={"clip": {"image": images}}, seeds=list(range(40)), cond=prompts)
        return MetricExample(lambda: cls(encode), batch.split([9, 21, 10]))

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

from typing import Any

import torch

from diffeval.errors import InputError, explain
from diffeval.metrics.base import Batch, mean_and_stderr

__all__ = ["clip_score_torchmetrics", "clip_score_hessel", "CLIPScore", "CONVENTIONS"]

CONVENTIONS = ("torchmetrics", "clipscore")


def clip_score_torchmetrics(cos: torch.Tensor) -> float:
    """``max(mean(100 cos), 0)``."""
    return max(float((100 * cos.double()).mean()), 0.0)


def clip_score_hessel(cos: torch.Tensor) -> float:
    """``mean(2.5 max(cos, 0))``."""
    return float((2.5 * cos.double().clamp_min(0)).mean())


class CLIPScore:
    """Streaming CLIP score: prompts come from the batch's condition (one string per image).

    Keeps sums (and sums of squares, for standard errors) of ``100 cos`` and
    ``2.5 max(cos, 0)``; ``text_encoder(prompts) -> (N, D)`` embeds the prompts.
    """

    name = "clip_score"
    higher_is_better = True
    state_keys = ("n", "sums")

    def __init__(self, text_encoder: Any, extractor: str = "clip", layer: str = "image") -> None:
        self.text_encoder = text_encoder
        self.extractor = extractor
        self.layer = layer
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sums = torch.zeros(4, dtype=torch.float64)  # Σ100cos, Σ(100cos)², Σ2.5cos+, Σ(2.5cos+)²

    def update(self, batch: Batch) -> None:
        images = batch.layer(self.extractor, self.layer, "CLIP score")
        prompts = batch.cond
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise InputError(explain("CLIP score needs one prompt string per image", expected="a list of str as the condition", got=type(prompts).__name__, fix="give the prompts as the sampler's condition"))
        if len(prompts) != images.shape[0]:
            raise InputError(explain("prompt count differs from image count", expected=f"{images.shape[0]} prompts", got=f"{len(prompts)}", fix="give exactly one prompt per image"))
        text = self.text_encoder(list(prompts)).to(images.device)
        cos = torch.nn.functional.cosine_similarity(images.double(), text.double(), dim=1).cpu()
        a, b = 100 * cos, 2.5 * cos.clamp_min(0)
        self.sums += torch.stack([a.sum(), (a * a).sum(), b.sum(), (b * b).sum()])
        self.n += int(cos.numel())

    def merge(self, other: CLIPScore) -> CLIPScore:
        self.n += other.n
        self.sums += other.sums
        return self

    def compute(self) -> dict[str, Any]:
        if self.n < 1:
            raise InputError(explain("CLIP score has no samples", expected=">= 1 image with a prompt", got="0", fix="evaluate some samples"))
        s = self.sums.tolist()
        tm_mean, tm_stderr = mean_and_stderr(s[0], s[1], self.n)
        hessel_mean, hessel_stderr = mean_and_stderr(s[2], s[3], self.n)
        return {
            "clip_score": max(tm_mean, 0.0),
            "clip_score_stderr": tm_stderr,
            "clip_score_hessel": hessel_mean,
            "clip_score_hessel_stderr": hessel_stderr,
            "n_gen": self.n,
            "convention": "torchmetrics: max(mean(100 cos), 0); hessel: mean(2.5 max(cos, 0))",
        }

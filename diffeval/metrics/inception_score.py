"""Inception Score, in torch-fidelity's convention.

``IS = exp(E_x KL(p(y|x) || p(y)))`` per split: logits (``logits_unbiased`` for
Inception) are softmaxed in float64, rows are shuffled with
``numpy.random.RandomState(seed).permutation`` (seed 2020; ``shuffle=False`` keeps the
order, as torch-fidelity's ``isc_splits`` without shuffling), cut into ``splits``
contiguous chunks (``[i N // splits, (i+1) N // splits)``), and the mean and standard
deviation (ddof 0) of the per-split scores are reported. The streaming metric puts rows
in seed order before the shuffle (batching, shards and resumes then change nothing),
so two runs on the same seeds cut the same splits: the per-split scores are the pairing
record the gate uses for a paired comparison.

Example::

    >>> import torch
    >>> p = torch.tensor([[0.9, 0.1]] * 2 + [[0.1, 0.9]] * 2, dtype=torch.float64)
    >>> round(inception_score(p.log(), splits=1)[0], 10)
    1.4449348112
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffeval.core.errors import InputError, explain
from diffeval.core.options import Option
from diffeval.metrics.base import (
    Batch,
    BuildContext,
    MetricExample,
    MetricResult,
    choose_layer,
    feature_options,
    register_metric,
)
from diffeval.metrics.rows import RowMetric
from diffeval.stats.uncertainty import pairing

__all__ = ["inception_score", "split_scores", "InceptionScore"]


def inception_score(
    logits: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """(mean, std) of the Inception Score over ``splits`` chunks of (N, C) logits (std: ddof 0, torch-fidelity's)."""
    scores = split_scores(logits, splits, shuffle, seed)
    return float(np.mean(scores)), float(np.std(scores))


def split_scores(logits: torch.Tensor, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> np.ndarray:
    """The Inception Score of each of the ``splits`` disjoint chunks."""
    if logits.ndim != 2 or logits.shape[0] < splits or splits < 1:
        raise InputError(
            explain(
                "Inception Score needs at least one sample per split",
                expected=f"(N >= splits = {splits}, C) logits",
                got=f"{tuple(logits.shape)}",
                fix="evaluate more samples or use fewer splits",
            )
        )
    n = logits.shape[0]
    x = logits.detach().to(torch.float64)
    if shuffle:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(x.device)]
    p = x.softmax(dim=1)
    log_p = x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_p_chunk = p[lo:hi], log_p[lo:hi]
        log_q = p_chunk.mean(dim=0, keepdim=True).log()
        kl = (p_chunk * (log_p_chunk - log_q)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return np.asarray(scores)


@register_metric
class InceptionScore(RowMetric):
    """Streaming Inception Score: keeps the (N, C) logits in float64 (needed for the shuffle and splits)."""

    name = "inception_score"
    direction = "higher"
    options = (
        *feature_options(),
        Option("splits", int, 10, "number of splits", minimum=1),
        Option(
            "shuffle", bool, True, "shuffle rows with RandomState(seed) before splitting (torch-fidelity's default)"
        ),
        Option("seed", int, 2020, "seed of the shuffle", minimum=0),
    )
    display_name = "Inception Score"

    def __init__(
        self,
        extractor: str,
        layer: str,
        splits: int = 10,
        seed: int = 2020,
        shuffle: bool = True,
        *,
        label: str | None = None,
        extractor_name: str | None = None,
        weights: str | None = None,
    ) -> None:
        if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
            raise InputError(
                explain(
                    "invalid number of IS splits", expected="an integer >= 1", got=repr(splits), fix="use splits=10"
                )
            )
        self.extractor = extractor
        self.layer = layer
        self.space = f"{extractor}:{layer}"
        self.splits = splits
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.custom_label = label
        self.extractor_name = extractor_name or extractor
        self.weights = weights
        self.reset()

    def seed_block_count(self) -> int:
        return 1  # the seed fingerprint only: the splits are the blocks

    def check_count(self, n: int) -> None:
        if n < self.splits:
            raise InputError(
                explain(
                    "Inception Score needs at least one sample per split",
                    expected=f"n >= splits = {self.splits}",
                    got=str(n),
                    fix="evaluate more samples or use fewer splits",
                )
            )

    def compute(self) -> MetricResult:
        logits = self.rows(0)
        if self.seeded():  # seed order: independent of batching, shards, resumes
            logits = logits[torch.argsort(self.row_seeds(), stable=True)]
        scores = split_scores(logits, self.splits, self.shuffle, self.seed)
        order = f"shuffled (RandomState({self.seed}))" if self.shuffle else "unshuffled"
        # disjoint splits give independent scores: the mean's standard error is std (ddof 1) / sqrt(splits)
        stderr = float(scores.std(ddof=1) / np.sqrt(self.splits)) if self.splits > 1 else None
        details = {
            "splits": self.splits,
            "shuffle": self.shuffle,
            "inception_score_std": float(scores.std()),
            "stderr_is": (
                "std (ddof 1) of the disjoint splits' scores / sqrt(splits)" if stderr is not None else "none (1 split)"
            ),
        }
        if stderr is not None:
            rule = f"{self.splits} splits of the seed-ordered rows" + (
                f", shuffled ({self.seed})" if self.shuffle else ""
            )
            details["pairing"] = pairing(
                "blocks", scores.tolist(), self.splits, seeds=self.seed_blocks.fingerprint, rule=rule
            )
        return MetricResult(
            float(scores.mean()),
            stderr,
            n_gen=int(logits.shape[0]),
            convention=f"torch-fidelity: softmax in float64, {order}, {self.splits} splits",
            details=details,
        )

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> InceptionScore:
        ex = ctx.extractor(options["extractor"], weights=options["weights"])
        layer = choose_layer(ex, options["layer"], "inception_score")
        return cls(
            ex.key,
            layer,
            options["splits"],
            options["seed"],
            options["shuffle"],
            label=options["label"],
            extractor_name=options["extractor"],
            weights=options["weights"],
        )

    @classmethod
    def example(cls) -> MetricExample:
        logits = torch.randn(60, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
        return MetricExample(
            lambda: cls("x", "logits", splits=3),
            Batch(features={"x": {"logits": logits}}, seeds=list(range(60))).split([17, 23, 20]),
        )

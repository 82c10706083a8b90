"""CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD² with a Gaussian RBF kernel on CLIP embeddings, x 1000.

``k(x, y) = exp(-||x - y||² / (2 sigma²))`` with ``sigma = 10`` on the L2-normalized image
embeddings of CLIP ViT-L/14 at 336 px (the ``clip`` extractor normalizes them), scaled by 1000.
Two estimators, named in the row:

- ``min-variance`` (the reference implementation's, Gretton et al. 2012 eq. 5, the biased
  V-statistic): ``mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j)``;
  a set against itself is exactly 0;
- ``unbiased`` (eq. 3, the U-statistic): the within-set means leave out ``i = j``; a set
  against itself is ``2 (mean_{i!=j} k - mean_ij k) <= 0``, which the tests check in closed form.

Streaming: the generated embeddings are kept (float64, N x d) and every kernel sum is taken
in row blocks (never an N x N matrix), in float64; the reference's within-set sum is taken
once when the metric is built. Standard error: a delete-a-block jackknife over the seed
blocks (``seed mod blocks``) from per-block-pair sums, the reference fixed; the K
leave-one-out values are the pairing record the gate uses.

Example::

    >>> import math, torch
    >>> a, b = torch.zeros(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
    >>> round(cmmd(a, b).value, 9) == round(1000 * 2 * (1 - math.exp(-4 / 200)), 9)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.options import Option
from diffeval.metrics.base import (
    LABEL_OPTION,
    Batch,
    BuildContext,
    Deferred,
    MetricExample,
    MetricResult,
    register_metric,
    require_finite,
)
from diffeval.metrics.rows import RowMetric
from diffeval.stats.uncertainty import digest, jackknife_se

__all__ = ["cmmd", "CmmdEstimate", "CMMD", "ESTIMATORS", "SIGMA", "SCALE", "CLIP_INPUT"]

ESTIMATORS = ("min-variance", "unbiased")
SIGMA = 10.0
SCALE = 1000.0
CLIP_INPUT = 336
_BLOCK_ELEMENTS = 1 << 24  # rows per block x columns: 16 M float64 kernel values (128 MB) at most


def _kernel_sum(x: torch.Tensor, y: torch.Tensor, sigma: float, x_blocks: torch.Tensor | None, k: int) -> torch.Tensor:
    """``sum_j k(x_i, y_j)`` grouped by ``x_blocks`` (K,) — or the total (1,) — in row blocks, float64."""
    out = torch.zeros(max(k, 1), dtype=torch.float64, device=x.device)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return out
    gamma = 1.0 / (2.0 * sigma * sigma)
    y_sq = (y * y).sum(1)
    rows = max(1, _BLOCK_ELEMENTS // max(y.shape[0], 1))
    for lo in range(0, x.shape[0], rows):
        xb = x[lo : lo + rows]
        d2 = ((xb * xb).sum(1, keepdim=True) + y_sq[None, :] - 2.0 * xb @ y.T).clamp_min_(0)
        row_sums = torch.exp(-gamma * d2).sum(1)
        if x_blocks is None:
            out[0] += row_sums.sum()
        else:
            out.index_add_(0, x_blocks[lo : lo + rows], row_sums)
    return out


def _pair_sums(x: torch.Tensor, sigma: float, blocks: torch.Tensor, k: int) -> torch.Tensor:
    """``S[a, b] = sum_{i in a, j in b} k(x_i, x_j)`` (K, K), diagonal pairs i = j included, float64."""
    out = torch.zeros(k, k, dtype=torch.float64, device=x.device)
    for b in range(k):
        cols = x[blocks == b]
        if cols.shape[0]:
            out[:, b] = _kernel_sum(x, cols, sigma, blocks, k)
    return out


@dataclass(frozen=True)
class CmmdEstimate:
    value: float
    stderr: float | None
    left_out: tuple[float, ...]
    estimator: str


def _estimate(s_xx: float, n_x: float, s_yy: float, n_y: float, s_xy: float, estimator: str) -> float:
    """MMD² x SCALE from the kernel sums (within-set sums include the diagonal; k(x, x) = 1)."""
    if estimator == "min-variance":
        xx, yy = s_xx / (n_x * n_x), s_yy / (n_y * n_y)
    else:
        xx, yy = (s_xx - n_x) / (n_x * (n_x - 1)), (s_yy - n_y) / (n_y * (n_y - 1))
    return SCALE * (xx + yy - 2.0 * s_xy / (n_x * n_y))


def _check_settings(estimator: str, sigma: float) -> None:
    if estimator not in ESTIMATORS:
        raise ConfigError(
            explain(
                "unknown CMMD estimator",
                expected=" / ".join(ESTIMATORS),
                got=repr(estimator),
                fix="use 'min-variance' (the reference implementation's) or 'unbiased'",
            )
        )
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(
            explain("bad CMMD kernel bandwidth", expected="a finite sigma > 0", got=repr(sigma), fix="use sigma = 10")
        )


def cmmd(
    generated: torch.Tensor,
    reference: torch.Tensor,
    *,
    estimator: str = "min-variance",
    sigma: float = SIGMA,
    block_ids: torch.Tensor | None = None,
    blocks: int = 0,
    reference_sum: float | None = None,
) -> CmmdEstimate:
    """CMMD between (N, d) generated and (M, d) reference embeddings, with the jackknife SE over ``block_ids``."""
    _check_settings(estimator, sigma)
    x = generated.to(torch.float64)
    y = reference.to(torch.float64).to(x.device)
    n, m = x.shape[0], y.shape[0]
    low = 1 if estimator == "min-variance" else 2
    if n < low or m < low:
        raise InputError(
            explain(
                f"CMMD ({estimator}) needs at least {low} embeddings in each set",
                expected=f">= {low} generated and reference embeddings",
                got=f"n_gen = {n}, n_ref = {m}",
                fix="evaluate more samples",
            )
        )
    s_yy = reference_sum if reference_sum is not None else float(_kernel_sum(y, y, sigma, None, 0)[0])
    k = blocks if block_ids is not None and blocks >= 2 else 0
    if k:
        ids = block_ids.to(x.device, torch.int64)
        pairs = _pair_sums(x, sigma, ids, k)
        cross = _kernel_sum(x, y, sigma, ids, k)
        counts = torch.bincount(ids, minlength=k).to(torch.float64)
        s_xx, s_xy = float(pairs.sum()), float(cross.sum())
    else:
        s_xx = float(_kernel_sum(x, x, sigma, None, 0)[0])
        s_xy = float(_kernel_sum(x, y, sigma, None, 0)[0])
    value = _estimate(s_xx, n, s_yy, m, s_xy, estimator)
    stderr, left_out = None, ()
    if k and float(counts.min()) >= 1 and float((n - counts).min()) >= low:
        loo = []
        for a in range(k):
            s_a = s_xx - 2.0 * float(pairs[a].sum()) + float(pairs[a, a])
            loo.append(_estimate(s_a, n - float(counts[a]), s_yy, m, s_xy - float(cross[a]), estimator))
        stderr, left_out = jackknife_se(loo), tuple(loo)
    return CmmdEstimate(value, stderr, left_out, estimator)


@register_metric
class CMMD(RowMetric):
    """Streaming CMMD against reference CLIP embeddings (kept, float64; kernel sums in blocks)."""

    name = "cmmd"
    direction = "lower"
    options = (
        Option(
            "reference",
            str,
            attr="reference_spec",
            doc="reference images: a folder, an .npz image batch or a registered data set ('name:split')",
        ),
        Option("model", str, "ViT-L-14-336", "open_clip model (CMMD is defined on CLIP ViT-L/14 at 336 px)"),
        Option("pretrained", str, "openai", "open_clip tag or a local checkpoint path", nullable=True),
        Option("weights", str, None, "explicit CLIP weight file (takes the place of pretrained)", nullable=True),
        Option("estimator", str, "min-variance", "min-variance (the reference code's) or unbiased", choices=ESTIMATORS),
        Option("sigma", float, SIGMA, "RBF kernel bandwidth", minimum=1e-12),
        Option(
            "blocks", int, 10, "seed blocks (seed mod blocks) for the jackknife standard error (< 2: none)", minimum=0
        ),
        LABEL_OPTION,
    )
    display_name = "CMMD"
    width_fix = "embed both sets with the same CLIP model"

    def __init__(
        self,
        reference_embeddings: torch.Tensor,
        extractor: str = "clip",
        layer: str = "image",
        *,
        estimator: str = "min-variance",
        sigma: float = SIGMA,
        blocks: int = 10,
        label: str | None = None,
        reference_spec: str = "<embeddings in memory>",
        model: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        weights: str | None = None,
    ) -> None:
        if not torch.is_tensor(reference_embeddings) or reference_embeddings.ndim != 2:
            raise InputError(
                explain(
                    "CMMD reference embeddings must be 2-D",
                    expected="(N_ref, d)",
                    got=repr(getattr(reference_embeddings, "shape", type(reference_embeddings).__name__)),
                    fix="pass the reference set's CLIP image embeddings",
                )
            )
        require_finite(reference_embeddings, "CMMD reference")
        _check_settings(estimator, sigma)
        self.reference = reference_embeddings.detach().to(torch.float64)
        self.extractor, self.layer = extractor, layer
        self.space = f"{extractor}:{layer}"
        self.estimator, self.sigma, self.blocks = estimator, float(sigma), int(blocks)
        self.custom_label = label
        self.reference_spec = reference_spec
        self.model, self.pretrained, self.weights = model, pretrained, weights
        self.reference_sum = float(_kernel_sum(self.reference, self.reference, self.sigma, None, 0)[0])
        self.reference_digest = digest(self.reference)
        self.reset()

    def reference_width(self) -> int:
        return self.reference.shape[1]

    def check_count(self, n: int) -> None:
        if n < 2:
            raise InputError(
                explain("CMMD needs at least 2 samples", expected="n >= 2", got=str(n), fix="evaluate more samples")
            )

    def compute(self) -> MetricResult:
        d = self.reference.shape[1]
        x = self.rows(d)
        ids, k = None, 0
        if self.seeded() and self.blocks >= 2:
            ids, k = self.row_seeds() % self.blocks, self.blocks
        est = cmmd(
            x.to(self.reference.device),
            self.reference,
            estimator=self.estimator,
            sigma=self.sigma,
            block_ids=ids,
            blocks=k,
            reference_sum=self.reference_sum,
        )
        kind = "biased V-statistic, as the reference code" if self.estimator == "min-variance" else "U-statistic"
        details: dict[str, Any] = {
            "estimator": self.estimator,
            "sigma": self.sigma,
            "scale": SCALE,
            "reference": self.reference_spec,
            "stderr_is": (
                f"delete-a-block jackknife over {k} seed blocks (seed mod {k}), reference fixed"
                if est.stderr is not None
                else "none (blocks < 2, samples without seeds, or a block too small)"
            ),
        }
        if est.stderr is not None:
            details["pairing"] = self.seed_blocks.record(
                "jackknife", est.left_out, reference=f"{self.reference_digest}:{self.estimator}:{self.sigma:g}"
            )
        return MetricResult(
            est.value,
            est.stderr,
            n_gen=int(x.shape[0]),
            n_ref=int(self.reference.shape[0]),
            convention=f"MMD^2 x {SCALE:g}, RBF sigma {self.sigma:g}, {self.estimator} estimator ({kind})",
            details=details,
        )

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> Deferred:
        from diffeval.stats.moments import FeatureMoments

        pretrained = options["weights"] if options["weights"] is not None else options["pretrained"]
        ex = ctx.extractor("clip", model=options["model"], pretrained=pretrained)
        check_clip_input(ex)
        source = ctx.open_source(options["reference"])
        if isinstance(source, FeatureMoments):
            raise InputError(
                explain(
                    f"CMMD reference {options['reference']} holds statistics",
                    expected="reference images (CMMD needs the embeddings, not mean and covariance)",
                    got="mu/sigma statistics",
                    fix="point reference to the image folder or .npz image batch",
                )
            )
        ref = ctx.reference(source, ex, features=["image"])
        return Deferred(
            lambda: cls(
                ref.features("image"),
                ex.key,
                "image",
                estimator=options["estimator"],
                sigma=options["sigma"],
                blocks=options["blocks"],
                label=options["label"],
                reference_spec=options["reference"],
                model=options["model"],
                pretrained=options["pretrained"],
                weights=options["weights"],
            )
        )

    @classmethod
    def example(cls) -> MetricExample:
        g = torch.Generator().manual_seed(3)
        reference = torch.nn.functional.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
        features = torch.nn.functional.normalize(torch.randn(60, 8, generator=g, dtype=torch.float64) + 0.3, dim=1)
        return MetricExample(
            lambda: cls(reference, "x", "f", sigma=1.0, blocks=5),
            Batch(features={"x": {"f": features}}, seeds=list(range(60))).split([17, 23, 20]),
        )


def check_clip_input(extractor: Any) -> None:
    """CMMD is defined on CLIP at 336 px: refuse a CLIP model with another input size."""
    size = getattr(extractor, "image_size", None)
    if size != CLIP_INPUT:
        raise ConfigError(
            explain(
                f"CMMD needs a CLIP model with a {CLIP_INPUT} px input",
                expected=f"CLIP ViT-L/14@{CLIP_INPUT} (open_clip 'ViT-L-14-336', pretrained 'openai')",
                got=f"{getattr(extractor, 'model_name', extractor)} with a {size} px input",
                fix="use model = 'ViT-L-14-336' (CMMD values are only comparable in that space)",
            )
        )

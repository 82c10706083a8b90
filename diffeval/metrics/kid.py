"""Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, over subsets.

``k(x, y) = (x·y / d + 1)^3``; per subset (``subset_size`` rows drawn without
replacement from each set with ``numpy.random.RandomState(seed)``, generated set
first, as torch-fidelity does)::

    MMD² = (Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)) / (m (m-1)) - 2 Σ_{i,j} k(x_i, y_j) / m²

The mean over ``subsets`` subsets is the value (torch-fidelity's convention); the
standard deviation over subsets (ddof 0) is kept as ``kid_std`` in the details — it is
the spread of one subset's estimate, not the uncertainty of the mean. When a set has
fewer rows than ``subset_size`` the subset size shrinks to fit, and the result says so.

Generated rows are put in seed order first (so batching, shards and resumes do not move
the subset draws). Standard error: a delete-a-block jackknife over ``blocks`` seed blocks
(``seed mod blocks``; rows fed without seeds: contiguous blocks). Leaving block ``a`` out of every subset keeps the
same subset draws (common random numbers, so the Monte Carlo noise of the draws cancels)
and gives an unbiased MMD² with ``m_a`` generated rows::

    MMD²_(-a) = Σ_{i≠j ∉ a} k(x_i, x_j) / (m_a (m_a - 1)) + Σ_{i≠j} k(y_i, y_j) / (m (m-1))
                - 2 Σ_{i ∉ a, j} k(x_i, y_j) / (m_a m)

computed from per-block sums of the same kernel matrices (no extra kernel evaluations);
``SE = sqrt((K - 1) / K Σ_a (KID_(-a) - mean)²)``. It is the standard error over the
generated samples given the reference set (what a comparison against the same
reference needs). The K leave-one-out values are the pairing record the gate uses to
compare two runs on the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffeval.core.errors import InputError, explain
from diffeval.core.options import Option
from diffeval.metrics.base import (
    Batch,
    BuildContext,
    Deferred,
    MetricExample,
    MetricResult,
    choose_layer,
    feature_options,
    register_metric,
)
from diffeval.metrics.rows import RowMetric
from diffeval.stats.uncertainty import digest, jackknife_se

__all__ = ["mmd2_unbiased", "kernel_inception_distance", "kid_with_jackknife", "KidEstimate", "KID"]


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


KERNEL_CACHE_BYTES = 1 << 30  # whole kernel matrices are formed once when all three fit in this many bytes


def _subset_sums_whole(
    x: torch.Tensor, y: torch.Tensor, draws: list[tuple[torch.Tensor, torch.Tensor]], block_of: Any, blocks: int
) -> list[tuple[torch.Tensor, ...]]:
    """Every subset's kernel sums at once, from the three whole kernel matrices (each pair's kernel formed once).

    With ``u_i`` the indicator of subset i and ``O_i = u_i * onehot(block)``: ``sum K_yy[iy, iy] = u_i^T K_yy u_i``,
    ``sum K_xy[ix, iy] = u_i^T K_xy v_i``, block sums ``O_i^T K_xx O_i`` and ``O_i^T K_xy v_i`` — a few GEMMs against
    the indicator matrices instead of three kernel GEMMs per subset.
    """
    n_x, n_y, s = x.shape[0], y.shape[0], len(draws)
    u_x = torch.zeros(n_x, s, dtype=torch.float64, device=x.device)
    u_y = torch.zeros(n_y, s, dtype=torch.float64, device=x.device)
    for i, (ix, iy) in enumerate(draws):
        u_x[ix, i] = 1.0
        u_y[iy, i] = 1.0
    k_yy = _poly_kernel(y, y)
    off_yy = (u_y * (k_yy @ u_y)).sum(0) - u_y.T @ k_yy.diagonal()
    del k_yy
    kxy_v = _poly_kernel(x, y) @ u_y  # (n_x, s)
    sum_xy = (u_x * kxy_v).sum(0)
    k_xx = _poly_kernel(x, x)
    diag_x = k_xx.diagonal()
    if block_of is None:
        off_xx = (u_x * (k_xx @ u_x)).sum(0) - u_x.T @ diag_x
        return [(off_xx[i], off_yy[i], sum_xy[i], None, None, None) for i in range(s)]
    onehot = torch.nn.functional.one_hot(block_of, blocks).to(torch.float64)  # (n_x, K)
    o = (u_x[:, :, None] * onehot[:, None, :]).reshape(n_x, s * blocks)
    kxx_o = (k_xx @ o).reshape(n_x, s, blocks)
    s_xx = torch.einsum("nik,nil->ikl", o.reshape(n_x, s, blocks), kxx_o)  # (s, K, K), diagonal included
    s_xx -= torch.diag_embed((u_x * diag_x[:, None]).T @ onehot)  # ... now excluded
    s_xy = (u_x * kxy_v).T @ onehot  # (s, K)
    count = u_x.T @ onehot  # (s, K)
    off_xx = s_xx.sum((1, 2))
    return [(off_xx[i], off_yy[i], sum_xy[i], s_xx[i], s_xy[i], count[i]) for i in range(s)]


def _subset_sums(
    x: torch.Tensor, y: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, block_of: Any, blocks: int
) -> tuple[torch.Tensor, ...]:
    """One subset's kernel sums: off-diagonal xx and yy sums, the xy sum, and (with blocks) their block sums."""
    xs, ys = x[ix], y[iy]
    k_xx, k_yy, k_xy = _poly_kernel(xs, xs), _poly_kernel(ys, ys), _poly_kernel(xs, ys)
    k_xx = k_xx - torch.diag(k_xx.diagonal())
    off_xx, off_yy, sum_xy = k_xx.sum(), k_yy.sum() - k_yy.diagonal().sum(), k_xy.sum()
    if block_of is None:
        return off_xx, off_yy, sum_xy, None, None, None
    onehot = torch.nn.functional.one_hot(block_of[ix], blocks).to(torch.float64)  # (m, K)
    return off_xx, off_yy, sum_xy, onehot.T @ k_xx @ onehot, onehot.T @ k_xy.sum(1), onehot.sum(0)


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² between equal-size sets x, y (m, d) with the cubic polynomial kernel."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 2020
) -> tuple[float, float, int]:
    """(mean, std, subset size used) of MMD² over random subsets, in float64."""
    out = kid_with_jackknife(generated, reference, subsets, subset_size, seed, blocks=0)
    return out.value, out.std, out.subset_size


@dataclass(frozen=True)
class KidEstimate:
    value: float  # mean over subsets
    std: float  # spread over subsets (ddof 0): torch-fidelity's "kid_std"
    subset_size: int
    stderr: float | None  # delete-a-block jackknife over the generated samples (None without blocks)
    blocks: int
    left_out: tuple[float, ...] = ()  # the K leave-one-block-out values (the pairing record)


def kid_with_jackknife(
    generated: torch.Tensor,
    reference: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
    blocks: int = 10,
    block_ids: torch.Tensor | None = None,
) -> KidEstimate:
    """KID over random subsets and its delete-a-block jackknife standard error (``blocks`` = 0: none).

    ``block_ids`` (n_gen,) gives each generated row's block in ``0 .. blocks - 1`` (the seed
    blocks); without it, rows fall into ``blocks`` contiguous blocks.
    """
    n_gen, n_ref = generated.shape[0], reference.shape[0]
    size = min(subset_size, n_gen, n_ref)
    if size < 2:
        raise InputError(
            explain(
                "KID needs at least 2 samples in each set",
                expected=">= 2 generated and reference features",
                got=f"n_gen = {n_gen}, n_ref = {n_ref}",
                fix="evaluate more samples",
            )
        )
    x_all = generated.detach().to(torch.float64)
    y_all = reference.detach().to(torch.float64).to(x_all.device)
    if block_ids is None:
        blocks = min(blocks, n_gen // 2)
        block_of = torch.arange(n_gen, device=x_all.device) * blocks // n_gen if blocks >= 2 else None
    else:
        block_of = block_ids.to(x_all.device, torch.int64) if blocks >= 2 else None
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    left_out = np.full((subsets, max(blocks, 1)), np.nan)
    m = size
    draws = []
    for _ in range(subsets):  # the draws of torch-fidelity's loop, in its order
        ix = torch.from_numpy(rng.choice(n_gen, size, replace=False)).to(x_all.device)
        iy = torch.from_numpy(rng.choice(n_ref, size, replace=False)).to(x_all.device)
        draws.append((ix, iy))
    whole = (n_gen * n_gen + n_ref * n_ref + 2 * n_gen * n_ref) * 8 <= KERNEL_CACHE_BYTES
    sums = (
        _subset_sums_whole(x_all, y_all, draws, block_of, blocks)
        if whole
        else [_subset_sums(x_all, y_all, ix, iy, block_of, blocks) for ix, iy in draws]
    )
    for i, (off_xx, off_yy, sum_xy, s_xx, s_xy, count) in enumerate(sums):
        yy_term = off_yy / (m * (m - 1))
        values[i] = float(off_xx / (m * (m - 1)) + yy_term - 2 * sum_xy / (m * m))
        if block_of is None:
            continue
        m_a = m - count
        xx = off_xx - 2 * s_xx.sum(1) + s_xx.diagonal()
        est = xx / (m_a * (m_a - 1)) + yy_term - 2 * (sum_xy - s_xy) / (m_a * m)
        left_out[i] = torch.where(m_a >= 2, est, torch.full_like(est, float("nan"))).cpu().numpy()
    stderr, theta = None, ()
    if block_of is not None:
        with np.errstate(all="ignore"):
            means = np.nanmean(left_out, axis=0) if np.isfinite(left_out).any(0).all() else np.full(blocks, np.nan)
        if np.isfinite(means).all():
            stderr, theta = jackknife_se(means), tuple(means.tolist())
    return KidEstimate(
        float(values.mean()), float(values.std()), size, stderr, blocks if block_of is not None else 0, theta
    )


@register_metric
class KID(RowMetric):
    """Streaming KID against reference features (KID needs features, not moments); float64 throughout."""

    name = "kid"
    direction = "lower"
    options = (
        Option(
            "reference",
            str,
            attr="reference_spec",
            doc="reference images: a folder, an .npz image batch or a registered data set ('name:split')",
        ),
        *feature_options(),
        Option("subsets", int, 100, "number of random subsets", minimum=1),
        Option("subset_size", int, 1000, "rows per subset (shrinks to the smaller set, said in the row)", minimum=2),
        Option("seed", int, 2020, "seed of the subset draws", minimum=0),
        Option(
            "blocks", int, 10, "seed blocks (seed mod blocks) for the jackknife standard error (< 2: none)", minimum=0
        ),
    )
    display_name = "KID"

    def __init__(
        self,
        reference_features: torch.Tensor,
        extractor: str,
        layer: str,
        subsets: int = 100,
        subset_size: int = 1000,
        seed: int = 2020,
        *,
        blocks: int = 10,
        label: str | None = None,
        reference_spec: str = "<features in memory>",
        extractor_name: str | None = None,
        weights: str | None = None,
    ) -> None:
        if not torch.is_tensor(reference_features) or reference_features.ndim != 2:
            got = (
                tuple(reference_features.shape)
                if torch.is_tensor(reference_features)
                else type(reference_features).__name__
            )
            raise InputError(
                explain(
                    "KID reference features must be 2-D",
                    expected="(N_ref, d)",
                    got=f"{got}",
                    fix="pass the reference set's features of one layer",
                )
            )
        bad = ~torch.isfinite(reference_features)
        if bool(bad.any()):
            raise InputError(
                explain(
                    "KID reference features contain NaN or inf",
                    expected="finite reference features",
                    got=(
                        f"{int(bad.flatten(1).any(1).sum())} non-finite row(s), the first at"
                        f" {int(torch.nonzero(bad)[0, 0])}"
                    ),
                    fix="recompute the reference features from valid images",
                )
            )
        self.reference = reference_features.detach().to(torch.float64)
        self.extractor = extractor
        self.layer = layer
        self.space = f"{extractor}:{layer}"
        self.subsets = subsets
        self.subset_size = subset_size
        self.seed = seed
        self.blocks = blocks
        self.custom_label = label
        self.reference_spec = reference_spec
        self.extractor_name = extractor_name or extractor
        self.weights = weights
        self.reset()

    def reference_width(self) -> int:
        return self.reference.shape[1]

    def check_count(self, n: int) -> None:
        if n < 2:
            raise InputError(
                explain("KID needs at least 2 samples", expected="n >= 2", got=str(n), fix="evaluate more samples")
            )

    def compute(self) -> MetricResult:
        generated = self.rows(self.reference.shape[1])
        blocks, block_ids = (self.blocks if self.blocks >= 2 else 0), None
        if self.seeded():  # seed order: independent of batching, shards, resumes
            seeds = self.row_seeds()
            order = torch.argsort(seeds, stable=True)
            generated, block_ids = generated[order], seeds[order] % max(blocks, 1)
            blocks = blocks if min(self.seed_blocks.counts) >= 2 else 0
        est = kid_with_jackknife(  # on the reference's device (the GPU when features were extracted there)
            generated.to(self.reference.device),
            self.reference,
            self.subsets,
            self.subset_size,
            self.seed,
            blocks,
            block_ids,
        )
        details = {
            "subsets": self.subsets,
            "subset_size": est.subset_size,
            "subset_size_reduced": est.subset_size < self.subset_size,
            "kid_std": est.std,
            "stderr_is": (
                f"delete-a-block jackknife over {est.blocks} seed blocks (seed mod {est.blocks}) of generated"
                " samples, common subset draws (given the reference)"
                if est.stderr is not None
                else f"none (blocks < 2, or a seed block with < 2 samples: counts {self.seed_blocks.counts})"
            ),
            "reference": self.reference_spec,
        }
        if est.stderr is not None:
            details["pairing"] = self.seed_blocks.record(
                "jackknife",
                est.left_out,
                reference=f"{digest(self.reference)}:subsets {self.subsets}x{est.subset_size}/{self.seed}",
            )
        return MetricResult(
            est.value,
            est.stderr,
            n_gen=int(generated.shape[0]),
            n_ref=int(self.reference.shape[0]),
            convention="unbiased MMD^2, kernel (x.y/d + 1)^3, mean over subsets",
            details=details,
        )

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> Deferred:
        from diffeval.stats.moments import FeatureMoments

        ex = ctx.extractor(options["extractor"], weights=options["weights"])
        layer = choose_layer(ex, options["layer"], "kid")
        source = ctx.open_source(options["reference"])
        if isinstance(source, FeatureMoments):
            raise InputError(
                explain(
                    f"KID reference {options['reference']} holds statistics",
                    expected="reference images (KID needs features, not mean and covariance)",
                    got="mu/sigma statistics",
                    fix="point reference to the image folder or .npz image batch",
                )
            )
        ref = ctx.reference(source, ex, features=[layer])
        return Deferred(
            lambda: cls(
                ref.features(layer),
                ex.key,
                layer,
                options["subsets"],
                options["subset_size"],
                options["seed"],
                blocks=options["blocks"],
                label=options["label"],
                reference_spec=options["reference"],
                extractor_name=options["extractor"],
                weights=options["weights"],
            )
        )

    @classmethod
    def example(cls) -> MetricExample:
        g = torch.Generator().manual_seed(2)
        reference = torch.randn(50, 6, generator=g, dtype=torch.float64)
        features = torch.randn(60, 6, generator=g, dtype=torch.float64) + 0.3
        return MetricExample(
            lambda: cls(reference, "x", "f", subsets=20, subset_size=25),
            Batch(features={"x": {"f": features}}, seeds=list(range(60))).split([17, 23, 20]),
        )

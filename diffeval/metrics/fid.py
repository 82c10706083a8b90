"""Fréchet distance between Gaussian fits of two feature sets (FID when the features are Inception's).

``FID = ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)``. The trace term is computed
in float64 from symmetric eigenvalue problems only (no ``scipy.linalg.sqrtm``):
with a factor ``S1 = L L^T``, ``tr sqrt(S1 S2) = sum sqrt(clip0(eigvalsh(L^T S2 L)))``
— L from Cholesky, or, when S1 is singular (N <= d, dead features), from ``eigh``
restricted to S1's range (THEORY.md §5's ``R = sqrt(S1)`` form, without the null
space). The numerics (smallest eigenvalue, mass clipped) come with the value.

Values are comparable only at equal sample counts (the bias is about d(d+5)/(2N)),
so :class:`FID` refuses unmatched counts unless ``allow_unmatched=True``.

Example::

    >>> import torch
    >>> r = frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
    >>> round(r.value, 10)
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffeval.errors import InputError, explain
from diffeval.metrics.base import (
    Batch,
    BuildContext,
    Metric,
    MetricExample,
    MetricResult,
    choose_layer,
    feature_options,
    register_metric,
)
from diffeval.options import Option
from diffeval.stats import FeatureMoments, check_gaussian, check_space

__all__ = [
    "ZERO_TOLERANCE",
    "FrechetResult",
    "frechet_distance",
    "trace_sqrt_product",
    "FID",
    "unmatched_message",
    "reference_statistics",
]

ZERO_TOLERANCE = 1e-9  # relative to tr S1 + tr S2: |FID| below it is round-off, reported as 0


@dataclass(frozen=True)
class FrechetResult:
    value: float  # raw_value, or exactly 0 when |raw_value| <= tolerance (identical sets print 0, not -8e-11)
    raw_value: float
    tolerance: float  # ZERO_TOLERANCE * (tr S1 + tr S2)
    mean_term: float
    trace_sqrt: float
    min_eigenvalue: float
    clipped_mass: float
    method: str


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> tuple[float, float, float, str]:
    """``tr sqrt(S1 S2)`` for symmetric PSD S1, S2 (float64); returns (trace, min eig, clipped mass, method).

    With any factor ``S1 = L L^T``, the eigenvalues of ``S1 S2`` are those of the
    symmetric ``L^T S2 L``. L is the Cholesky factor when S1 is positive definite;
    otherwise ``L = V_k sqrt(w_k)`` from ``eigh(S1)`` keeping only eigenvalues above
    ``d * eps * max(w)``, so S1's null space (dead features, N <= d) adds no spurious
    square roots of round-off. ``clipped mass`` sums what was dropped or clipped.
    """
    s1 = sigma1.to(torch.float64)
    s2 = sigma2.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(s1)
    dropped = 0.0
    if int(info) == 0:
        factor = chol
        method = "cholesky"
    else:
        w, v = torch.linalg.eigh(s1)
        keep = w > w.max().clamp_min(0) * w.numel() * torch.finfo(torch.float64).eps
        dropped = float(w[~keep].abs().sum())
        factor = v[:, keep] * w[keep].sqrt()
        method = "eigh"
    m = factor.T @ s2 @ factor
    eig = torch.linalg.eigvalsh(0.5 * (m + m.T))
    clipped = dropped + float(-eig.clamp_max(0).sum())
    min_eig = float(eig.min()) if eig.numel() else 0.0
    return float(eig.clamp_min(0).sqrt().sum()), min_eig, clipped, method


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> FrechetResult:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Both Gaussians are validated first (:func:`diffeval.stats.check_gaussian`: finite,
    symmetric, positive semi-definite), so bad statistics are an error, never a number.
    """
    mu1, sigma1 = check_gaussian(mu1, sigma1, "first statistics")
    mu2, sigma2 = check_gaussian(mu2, sigma2, "second statistics")
    mu2, sigma2 = mu2.to(mu1.device), sigma2.to(mu1.device)
    if mu1.numel() != mu2.numel():
        raise InputError(
            explain(
                "Fréchet distance inputs have different dimensions",
                expected=f"the same feature dimension d for both sets (first d = {mu1.numel()})",
                got=f"d = {mu2.numel()}",
                fix="compare statistics of the same extractor layer",
            )
        )
    mean_term = float(((mu1 - mu2) ** 2).sum())
    trace, min_eig, clipped, method = trace_sqrt_product(sigma1, sigma2)
    traces = float(torch.trace(sigma1)) + float(torch.trace(sigma2))
    raw = mean_term + traces - 2 * trace
    tolerance = ZERO_TOLERANCE * traces
    value = 0.0 if abs(raw) <= tolerance else raw
    return FrechetResult(value, raw, tolerance, mean_term, trace, min_eig, clipped, method)


def unmatched_message(n_gen: int, n_ref: int, dim: int) -> str:
    """The error for FIDs whose sample counts differ: explains the 1/N bias and the fixes."""
    bias = dim * (dim + 5) / 2
    return explain(
        "FID sample counts do not match",
        expected=f"as many generated samples as reference samples (n_ref = {n_ref})",
        got=f"n_gen = {n_gen}",
        fix=(
            f"FID is biased by about d(d+5)/(2N) (here d = {dim}: {bias / max(n_gen, 1):.3g} at n_gen vs"
            f" {bias / max(n_ref, 1):.3g} at n_ref), so values are only comparable at equal N. Generate {n_ref}"
            f" samples, compute the reference from {n_gen} images (a seeded subset of a larger image set), or pass"
            " allow_unmatched=True / --allow-unmatched (the report marks the row)"
        ),
    )


def reference_statistics(
    spec: str,
    ctx: BuildContext,
    extractor: Any,
    layer: str,
    *,
    allow_unmatched: bool,
    reference_seed: int,
    reference_n: int | None = None,
) -> tuple[FeatureMoments, str]:
    """Statistics of a reference given in a config, and whether their feature space is ``verified``.

    An ``.npz`` statistics file is checked against the extractor's feature space (any recorded
    difference — weights, layer, resize — is an error naming both sides) and the count
    (``reference_n`` for files that carry none); images are cut to the run's count.
    """
    from diffeval.features import feature_space
    from diffeval.references import build_reference

    source = ctx.open_source(spec, stats_n=reference_n)
    dim = extractor.layers[layer]
    space = feature_space(extractor, layer)
    if isinstance(source, FeatureMoments):
        verdict = check_space(source.meta, space, f"reference statistics {spec}")
        if source.dim != dim:
            raise InputError(
                explain(
                    f"reference statistics {spec} have another dimension",
                    expected=f"d = {dim} ({space['extractor']}:{layer})",
                    got=f"d = {source.dim}",
                    fix=f"recompute them with: diffeval ref IMAGES --features {extractor.name} --out {spec}",
                )
            )
        if source.n != ctx.n and not allow_unmatched:
            raise InputError(unmatched_message(ctx.n, source.n, dim))
        return source, verdict
    if reference_n is not None:
        raise InputError(
            explain(
                "reference_n applies to statistics files only",
                expected="reference = a .npz statistics file without a count",
                got=f"reference = {spec} (images: their count is known)",
                fix="drop reference_n",
            )
        )
    n_ref: int | None = ctx.n
    if len(source) < ctx.n:
        if not allow_unmatched:
            raise InputError(unmatched_message(ctx.n, len(source), dim))
        n_ref = None
    reference = build_reference(
        source,
        extractor,
        moment_layers=[layer],
        n=n_ref,
        seed=reference_seed,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
    )
    return reference.moments[layer], "verified"


@register_metric
class FID(Metric):
    """Streaming Fréchet distance of generated features against reference statistics.

    ``update(batch)`` keeps only float64 moments of the ``extractor``/``layer``
    features; ``compute()`` returns the value, the counts and the numerics; ``merge``
    adds another shard's state.
    """

    name = "fid"
    direction = "lower"
    options = (
        Option(
            "reference",
            str,
            doc=(
                "reference: an image folder, an .npz image batch, .npz statistics (mu, sigma, n) or a registered data"
                " set ('name:split')"
            ),
        ),
        *feature_options(),
        Option(
            "allow_unmatched",
            bool,
            False,
            "compute even when the generated and reference counts differ (the row says so)",
        ),
        Option("reference_seed", int, 0, "seed of the subset drawn from a larger reference image set", minimum=0),
        Option(
            "reference_n",
            int,
            None,
            "images behind a statistics file that records no count (pytorch-fid, clean-fid, EDM files)",
            minimum=2,
            nullable=True,
        ),
    )
    state_keys = ("generated",)

    def __init__(
        self,
        reference: FeatureMoments,
        extractor: str,
        layer: str,
        allow_unmatched: bool = False,
        *,
        label: str | None = None,
        reference_spec: str = "<statistics in memory>",
        extractor_name: str | None = None,
        reference_seed: int = 0,
        weights: str | None = None,
        reference_n: int | None = None,
        feature_space: dict[str, str] | None = None,
        reference_space: str = "",
    ) -> None:
        if not isinstance(reference, FeatureMoments):
            raise InputError(
                explain(
                    "FID needs reference statistics",
                    expected="a diffeval.stats.FeatureMoments",
                    got=type(reference).__name__,
                    fix=(
                        "load them with FeatureMoments.load(path) or build them with"
                        " diffeval.references.build_reference"
                    ),
                )
            )
        self.reference = reference
        self.extractor = extractor
        self.layer = layer
        self.space = f"{extractor}:{layer}"
        self.allow_unmatched = bool(allow_unmatched)
        self.custom_label = label
        self.reference_spec = reference_spec
        self.extractor_name = extractor_name or extractor
        self.reference_seed = reference_seed
        self.weights = weights
        self.reference_n = reference_n
        self.feature_space = feature_space
        self.reference_space = reference_space
        self.reset()

    def reset(self) -> None:
        self.generated = FeatureMoments({"extractor": self.extractor, "layer": self.layer})

    def update(self, batch: Batch) -> None:
        self.generated.update(batch.layer(self.extractor, self.layer, "FID"))

    def merge(self, other: FID) -> FID:
        self.generated.merge(other.generated)
        return self

    def check_count(self, n: int) -> None:
        if n != self.reference.n and not self.allow_unmatched:
            raise InputError(unmatched_message(n, self.reference.n, self.reference.dim or 0))
        if n < 2:
            raise InputError(
                explain("FID needs at least 2 samples", expected="n >= 2", got=str(n), fix="evaluate more samples")
            )

    def compute(self) -> MetricResult:
        n_gen, n_ref = self.generated.n, self.reference.n
        matched = n_gen == n_ref
        if not matched and not self.allow_unmatched:
            raise InputError(unmatched_message(n_gen, n_ref, self.generated.dim or 0))
        result = frechet_distance(self.generated.mean, self.generated.cov, self.reference.mean, self.reference.cov)
        details = {
            "matched": matched,
            "raw_value": result.raw_value,
            "zero_tolerance": result.tolerance,
            "min_eigenvalue": result.min_eigenvalue,
            "clipped_mass": result.clipped_mass,
            "trace_method": result.method,
            "reference": self.reference_spec,
        }
        if self.feature_space is not None:
            details["feature_space"] = self.feature_space
        if self.reference_space:
            details["reference_space"] = self.reference_space
        return MetricResult(
            result.value,
            None,
            n_gen=n_gen,
            n_ref=n_ref,
            convention="Fréchet distance of Gaussian fits (ddof 1), float64",
            status="" if matched else "unmatched-counts",
            details=details,
        )

    def config_options(self) -> dict[str, Any]:
        return {
            "reference": self.reference_spec,
            "extractor": self.extractor_name,
            "layer": self.layer,
            "weights": self.weights,
            "label": self.custom_label,
            "allow_unmatched": self.allow_unmatched,
            "reference_seed": self.reference_seed,
            "reference_n": self.reference_n,
        }

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> FID:
        from diffeval.features import feature_space

        ex = ctx.extractor(options["extractor"], weights=options["weights"])
        layer = choose_layer(ex, options["layer"], "fid")
        stats, verdict = reference_statistics(
            options["reference"],
            ctx,
            ex,
            layer,
            allow_unmatched=options["allow_unmatched"],
            reference_seed=options["reference_seed"],
            reference_n=options["reference_n"],
        )
        return cls(
            stats,
            ex.key,
            layer,
            options["allow_unmatched"],
            label=options["label"],
            reference_spec=options["reference"],
            extractor_name=options["extractor"],
            reference_seed=options["reference_seed"],
            weights=options["weights"],
            reference_n=options["reference_n"],
            feature_space=feature_space(ex, layer),
            reference_space=verdict,
        )

    @classmethod
    def example(cls) -> MetricExample:
        g = torch.Generator().manual_seed(0)
        reference = FeatureMoments()
        reference.update(torch.randn(60, 6, generator=g, dtype=torch.float64))
        features = torch.randn(60, 6, generator=g, dtype=torch.float64) * 1.3 + 0.2
        batches = Batch(features={"x": {"f": features}}, seeds=list(range(60))).split([7, 23, 30])
        return MetricExample(lambda: cls(reference, "x", "f"), batches)

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
from diffeval.metrics.base import Batch
from diffeval.stats import FeatureMoments

__all__ = ["FrechetResult", "frechet_distance", "trace_sqrt_product", "FID", "unmatched_message"]


@dataclass(frozen=True)
class FrechetResult:
    value: float
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
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    sigma1 = torch.as_tensor(sigma1, dtype=torch.float64).to(mu1.device)
    sigma2 = torch.as_tensor(sigma2, dtype=torch.float64).to(mu1.device)
    mu2 = mu2.to(mu1.device)
    d = mu1.numel()
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InputError(
            explain(
                "Fréchet distance inputs have mismatched shapes",
                expected=f"mu (d,), sigma (d, d) for both sets with d = {d}",
                got=f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}",
                fix="compare statistics of the same extractor layer",
            )
        )
    mean_term = float(((mu1 - mu2) ** 2).sum())
    trace, min_eig, clipped, method = trace_sqrt_product(sigma1, sigma2)
    value = mean_term + float(torch.trace(sigma1)) + float(torch.trace(sigma2)) - 2 * trace
    return FrechetResult(value=value, mean_term=mean_term, trace_sqrt=trace, min_eigenvalue=min_eig, clipped_mass=clipped, method=method)


def unmatched_message(n_gen: int, n_ref: int, dim: int) -> str:
    """The error for FIDs whose sample counts differ: explains the 1/N bias and the fixes."""
    bias = dim * (dim + 5) / 2
    return explain(
        "FID sample counts do not match",
        expected=f"as many generated samples as reference samples (n_ref = {n_ref})",
        got=f"n_gen = {n_gen}",
        fix=(
            f"FID is biased by about d(d+5)/(2N) (here d = {dim}: {bias / max(n_gen, 1):.3g} at n_gen vs {bias / max(n_ref, 1):.3g} at n_ref), "
            f"so values are only comparable at equal N. Generate {n_ref} samples, compute the reference from {n_gen} images "
            "(a seeded subset of a larger image set), or pass allow_unmatched=True / --allow-unmatched (the report marks the row)"
        ),
    )


class FID:
    """Streaming Fréchet distance of generated features against reference statistics.

    ``update(batch)`` keeps only float64 moments of the ``extractor``/``layer``
    features; ``compute()`` returns the value, the counts and the numerics; ``merge``
    adds another shard's state.
    """

    name = "fid"
    higher_is_better = False
    state_keys = ("generated",)

    def __init__(self, reference: FeatureMoments, extractor: str, layer: str, allow_unmatched: bool = False) -> None:
        self.reference = reference
        self.extractor = extractor
        self.layer = layer
        self.allow_unmatched = bool(allow_unmatched)
        self.generated = FeatureMoments({"extractor": extractor, "layer": layer})

    def reset(self) -> None:
        self.generated.reset()

    def update(self, batch: Batch) -> None:
        self.generated.update(batch.layer(self.extractor, self.layer, "FID"))

    def merge(self, other: FID) -> FID:
        self.generated.merge(other.generated)
        return self

    def compute(self) -> dict[str, Any]:
        n_gen, n_ref = self.generated.n, self.reference.n
        matched = n_gen == n_ref
        if not matched and not self.allow_unmatched:
            raise InputError(unmatched_message(n_gen, n_ref, self.generated.dim or 0))
        result = frechet_distance(self.generated.mean, self.generated.cov, self.reference.mean, self.reference.cov)
        return {
            "fid": result.value,
            "n_gen": n_gen,
            "n_ref": n_ref,
            "matched": matched,
            "min_eigenvalue": result.min_eigenvalue,
            "clipped_mass": result.clipped_mass,
            "trace_method": result.method,
        }

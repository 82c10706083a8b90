"""Fréchet distance between Gaussian fits of two feature sets (FID when the features are Inception's).

``FID = ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)``. The trace term is computed
in float64 from symmetric eigenvalue problems only (no ``scipy.linalg.sqrtm``):
with a Cholesky factor ``S1 = L L^T``, ``tr sqrt(S1 S2) = sum sqrt(eigvalsh(L^T S2 L))``;
when S1 is singular (N <= d) it falls back to ``R = sqrt(S1)`` from ``eigh`` and
``sum sqrt(clip0(eigvalsh(R S2 R)))``. The numerics (smallest eigenvalue, negative
mass clipped) are returned with the value.

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
from diffeval.stats import FeatureMoments

__all__ = ["FrechetResult", "frechet_distance", "trace_sqrt_product", "FID"]


@dataclass(frozen=True)
class FrechetResult:
    value: float
    mean_term: float
    trace_sqrt: float
    min_eigenvalue: float
    clipped_mass: float
    method: str


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> tuple[float, float, float, str]:
    """``tr sqrt(S1 S2)`` for symmetric PSD S1, S2 (float64); returns (trace, min eig, clipped mass, method)."""
    s1 = sigma1.to(torch.float64)
    s2 = sigma2.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(s1)
    if int(info) == 0:
        m = chol.T @ s2 @ chol
        method = "cholesky"
    else:
        w, v = torch.linalg.eigh(s1)
        root = (v * w.clamp_min(0).sqrt()) @ v.T
        m = root @ s2 @ root
        method = "eigh"
    eig = torch.linalg.eigvalsh(0.5 * (m + m.T))
    clipped = float(-eig.clamp_max(0).sum())
    return float(eig.clamp_min(0).sqrt().sum()), float(eig.min()), clipped, method


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


class FID:
    """Streaming Fréchet distance of generated features against reference statistics.

    ``update(features)`` takes the extractor's ``{layer: (N, d)}`` dict and keeps only
    float64 moments of ``layer``; ``compute()`` returns the value, the counts and the
    numerics; ``merge`` adds another shard's state.
    """

    name = "fid"
    higher_is_better = False

    def __init__(self, reference: FeatureMoments, layer: str, allow_unmatched: bool = False) -> None:
        self.reference = reference
        self.layer = layer
        self.allow_unmatched = bool(allow_unmatched)
        self.generated = FeatureMoments({"layer": layer})

    def reset(self) -> None:
        self.generated.reset()

    def update(self, features: dict[str, torch.Tensor]) -> None:
        if self.layer not in features:
            raise InputError(explain(f"extractor gave no layer {self.layer!r}", expected=f"layer {self.layer!r}", got=f"layers {sorted(features)}", fix="pick a layer the extractor provides"))
        self.generated.update(features[self.layer])

    def merge(self, other: FID) -> FID:
        self.generated.merge(other.generated)
        return self

    def compute(self) -> dict[str, Any]:
        n_gen, n_ref = self.generated.n, self.reference.n
        matched = n_gen == n_ref
        if not matched and not self.allow_unmatched:
            raise InputError(
                explain(
                    "FID sample counts do not match",
                    expected=f"as many generated samples as reference samples (n_ref = {n_ref})",
                    got=f"n_gen = {n_gen}",
                    fix=f"generate {n_ref} samples, or pass allow_unmatched=True (the report will say so)",
                )
            )
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

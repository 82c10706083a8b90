"""Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, over subsets.

``k(x, y) = (x·y / d + 1)^3``; per subset (``subset_size`` rows drawn without
replacement from each set with ``numpy.random.RandomState(seed)``, generated set
first, as torch-fidelity does)::

    MMD² = (Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)) / (m (m-1)) - 2 Σ_{i,j} k(x_i, y_j) / m²

The mean and standard deviation (ddof 0) over ``subsets`` subsets are reported. When a
set has fewer rows than ``subset_size`` the subset size shrinks to fit, and the result
says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffeval.errors import InputError, explain
from diffeval.metrics.base import Batch

__all__ = ["mmd2_unbiased", "kernel_inception_distance", "KID"]


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² between equal-size sets x, y (m, d) with the cubic polynomial kernel."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 2020) -> tuple[float, float, int]:
    """(mean, std, subset size used) of MMD² over random subsets, in float64."""
    n_gen, n_ref = generated.shape[0], reference.shape[0]
    size = min(subset_size, n_gen, n_ref)
    if size < 2:
        raise InputError(explain("KID needs at least 2 samples in each set", expected=">= 2 generated and reference features", got=f"n_gen = {n_gen}, n_ref = {n_ref}", fix="evaluate more samples"))
    x_all = generated.detach().to(torch.float64)
    y_all = reference.detach().to(torch.float64).to(x_all.device)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        ix = torch.from_numpy(rng.choice(n_gen, size, replace=False)).to(x_all.device)
        iy = torch.from_numpy(rng.choice(n_ref, size, replace=False)).to(x_all.device)
        values[i] = mmd2_unbiased(x_all[ix], y_all[iy])
    return float(values.mean()), float(values.std()), size


class KID:
    """Streaming KID against reference features (KID needs features, not moments)."""

    name = "kid"
    higher_is_better = False
    state_keys = ("chunks",)

    def __init__(self, reference_features: torch.Tensor, extractor: str, layer: str, subsets: int = 100, subset_size: int = 1000, seed: int = 2020) -> None:
        if reference_features.ndim != 2:
            raise InputError(explain("KID reference features must be 2-D", expected="(N_ref, d)", got=f"{tuple(reference_features.shape)}", fix="pass the reference set's features of one layer"))
        self.reference = reference_features
        self.extractor = extractor
        self.layer = layer
        self.subsets = subsets
        self.subset_size = subset_size
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.chunks: list[torch.Tensor] = []

    def update(self, batch: Batch) -> None:
        features = batch.layer(self.extractor, self.layer, "KID")
        if features.shape[1] != self.reference.shape[1]:
            raise InputError(explain("KID feature dimension differs from the reference", expected=f"d = {self.reference.shape[1]}", got=f"d = {features.shape[1]}", fix="use the same extractor layer for both sets"))
        if not features.is_cuda and not bool(torch.isfinite(features).all()):  # CUDA: checked in compute (no per-batch sync)
            raise InputError(explain("features contain NaN or inf", expected="finite features", got="non-finite values", fix="check the images fed to the extractor"))
        self.chunks.append(features.detach().float())

    def merge(self, other: KID) -> KID:
        self.chunks.extend(other.chunks)
        return self

    def compute(self) -> dict[str, Any]:
        generated = torch.cat([c.cpu() for c in self.chunks]) if self.chunks else torch.empty(0, self.reference.shape[1])
        if not bool(torch.isfinite(generated).all()):
            raise InputError(explain("features contain NaN or inf", expected="finite features", got="non-finite values", fix="check the images fed to the extractor"))
        mean, std, size = kernel_inception_distance(generated, self.reference, self.subsets, self.subset_size, self.seed)
        return {"kid": mean, "kid_std": std, "n_gen": int(generated.shape[0]), "n_ref": int(self.reference.shape[0]), "subsets": self.subsets, "subset_size": size, "subset_size_reduced": size < self.subset_size}

"""Streaming float64 feature moments: n, shifted sums of f and f f^T — with merge and .npz files.

Only these statistics are kept (O(d^2) memory), never the N x d features. The sums
live on the features' device in float64; ``merge`` adds shards (ranks, processes) so
merged shards equal one pass over all the data.

Example::

    >>> import torch
    >>> m = FeatureMoments()
    >>> m.update(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> m.mean.tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.core.errors import InputError, explain
from diffeval.core.files import save_npz
from diffeval.core.log import note
from diffeval.core.npz import ArrayHeader, npz_headers, read_npz

__all__ = ["require_psd", "FeatureMoments", "check_gaussian", "check_space", "SPACE_KEYS", "SYMMETRY_TOL", "PSD_TOL"]

SYMMETRY_TOL = 1e-6  # max |S - S^T| relative to max |S|
PSD_TOL = 1e-6  # smallest eigenvalue allowed: -PSD_TOL * max diagonal (round-off of a float32-stored covariance)
COUNT_OPTION = "--ref-n N for a reference, --gen-n N for generated statistics (reference_n = N in a config)"
MAX_STATISTICS_DIM = 1 << 16  # d above this (a 32 GiB sigma) is refused before sigma is read


def _first_bad(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def check_gaussian(mu: Any, sigma: Any, who: str, psd: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a mean and a covariance (finite, matching shapes, symmetric, positive semi-definite); returns them in
    float64. ``psd=False`` leaves the positive-semi-definite test to a caller that factors sigma anyway
    (:func:`require_psd` on its eigenvalues).

    Each defect is an :class:`InputError` naming the statistics (``who``), where the
    defect is, and the fix — a NaN, a non-symmetric or an indefinite covariance would
    otherwise give a meaningless Fréchet distance (a NaN pair gave 16.0; an indefinite
    diag(1, -1, 1) gave 0.0 against the identity).
    """
    for name, x in (("mu", mu), ("sigma", sigma)):
        if x.is_complex() if torch.is_tensor(x) else np.iscomplexobj(x):
            raise InputError(
                explain(
                    f"{who}: {name} is complex",
                    expected="real statistics (an imaginary part would be dropped silently)",
                    got=f"a complex {name}",
                    fix="pass the real mean and covariance of the features (a complex sigma comes from a bad sqrtm)",
                )
            )
    mu_t = torch.as_tensor(np.asarray(mu, dtype=np.float64) if not torch.is_tensor(mu) else mu).to(torch.float64)
    sigma_t = (
        torch.as_tensor(np.asarray(sigma, dtype=np.float64) if not torch.is_tensor(sigma) else sigma)
        .to(torch.float64)
        .to(mu_t.device)
    )
    d = mu_t.numel()
    if mu_t.ndim != 1 or sigma_t.shape != (d, d):
        raise InputError(
            explain(
                f"{who}: mu/sigma shapes do not match",
                expected="mu (d,), sigma (d, d)",
                got=f"{tuple(mu_t.shape)}, {tuple(sigma_t.shape)}",
                fix="pass the mean vector and covariance matrix of one feature layer",
            )
        )
    for name, t in (("mu", mu_t), ("sigma", sigma_t)):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            raise InputError(
                explain(
                    f"{who}: {name} contains NaN or inf",
                    expected="finite statistics",
                    got=f"{int(bad.sum())} non-finite value(s), the first at index {_first_bad(bad)}",
                    fix=(
                        "recompute the statistics from finite features (a NaN feature row poisons the whole covariance)"
                    ),
                )
            )
    scale = float(sigma_t.abs().max()) if d else 0.0
    asym = float((sigma_t - sigma_t.T).abs().max()) if d else 0.0
    if asym > SYMMETRY_TOL * max(scale, 1e-300):
        i, j = _first_bad((sigma_t - sigma_t.T).abs() == asym)
        raise InputError(
            explain(
                f"{who}: sigma is not symmetric",
                expected=f"a covariance matrix (|S - S^T| <= {SYMMETRY_TOL:g} max|S|)",
                got=f"S[{i},{j}] = {float(sigma_t[i, j]):.6g} but S[{j},{i}] = {float(sigma_t[j, i]):.6g}",
                fix="pass a covariance (e.g. numpy.cov of the features), not a transposed or edited matrix",
            )
        )
    sigma_t = 0.5 * (sigma_t + sigma_t.T)
    diag = sigma_t.diagonal()
    if psd and d and (bool((diag < 0).any()) or not _psd(sigma_t, PSD_TOL * max(float(diag.max()), 0.0))):
        require_psd(float(torch.linalg.eigvalsh(sigma_t).min()), float(diag.max()), who)
    return mu_t, sigma_t


def require_psd(min_eigenvalue: float, max_variance: float, who: str) -> None:
    """An :class:`InputError` unless ``min_eigenvalue >= -PSD_TOL * max_variance`` (a covariance's round-off)."""
    if min_eigenvalue < -PSD_TOL * max(max_variance, 0.0) or max_variance < 0:
        raise InputError(
            explain(
                f"{who}: sigma is not positive semi-definite",
                expected=f"eigenvalues >= -{PSD_TOL:g} x max variance",
                got=f"smallest eigenvalue {min_eigenvalue:.6g} (max variance {max_variance:.6g})",
                fix="a covariance cannot have negative variance along any direction: recompute it from the features",
            )
        )


def check_features(features: Any, dim: int | None, defer_cuda: bool = False) -> torch.Tensor | None:
    """An :class:`InputError` unless ``features`` is an (N, d) tensor of finite values (d = ``dim`` when known).

    With ``defer_cuda``, CUDA features are not synchronized: the count of non-finite rows is returned (a
    device tensor) for the caller to check when the statistics are read; otherwise returns None.
    """
    if not torch.is_tensor(features) or features.ndim != 2:
        got = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise InputError(
            explain(
                "features must be a 2-D tensor",
                expected="(N, d)",
                got=f"{got}",
                fix="flatten each sample's features to one row",
            )
        )
    if dim is not None and features.shape[1] != dim:
        raise InputError(
            explain(
                "feature dimension changed between batches",
                expected=f"d = {dim}",
                got=f"d = {features.shape[1]}",
                fix="use one extractor layer per statistic",
            )
        )
    if features.is_cuda and defer_cuda:
        return (~torch.isfinite(features)).any(1).sum()
    if not bool(torch.isfinite(features).all()):
        raise InputError(
            explain(
                "features contain NaN or inf",
                expected="finite features",
                got="non-finite values",
                fix="check the images fed to the extractor",
            )
        )
    return None


def _psd(sigma: torch.Tensor, slack: float) -> bool:
    if float(sigma.abs().max()) == 0.0:
        return True
    shifted = sigma + max(slack, 1e-300) * torch.eye(sigma.shape[0], dtype=sigma.dtype, device=sigma.device)
    return int(torch.linalg.cholesky_ex(shifted).info) == 0


class FeatureMoments:
    """Running ``n``, ``sum (f - a)`` and ``sum (f - a)(f - a)^T`` of (N, d) features, in float64.

    The shift ``a`` (the first batch's mean) keeps the sums centred, so the covariance
    does not lose digits to ``n mu mu^T`` cancellation; statistics loaded from a file
    are held about their own mean and round-trip exactly.
    """

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.meta: dict[str, Any] = dict(meta or {})
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.nonfinite_rows: torch.Tensor | int = 0  # deferred check for CUDA features (no per-batch sync)
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sum_outer: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else int(self.sum.numel())

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, d); non-finite features are an :class:`InputError`."""
        bad = check_features(features, self.dim, defer_cuda=True)
        if bad is not None:  # checked when the statistics are read, so the GPU never waits here
            self.nonfinite_rows = self.nonfinite_rows + bad
        self.add_checked(features)

    def add_checked(self, features: torch.Tensor) -> None:
        """:meth:`update` for features the caller has already passed through :func:`check_features`."""
        if features.shape[0] == 0:
            return
        f = features.detach().to(torch.float64)
        if self.sum is None:
            d = f.shape[1]
            self.shift = f.mean(0)
            self.sum = torch.zeros(d, dtype=torch.float64, device=f.device)
            self.sum_outer = torch.zeros(d, d, dtype=torch.float64, device=f.device)
        if self.sum.device != f.device:  # e.g. resumed from a CPU checkpoint, then fed CUDA features
            self.shift, self.sum, self.sum_outer = (t.to(f.device) for t in (self.shift, self.sum, self.sum_outer))
        # in place only on a fresh float64 copy: a float64 input is the caller's and stays untouched
        y = f - self.shift if features.dtype == torch.float64 else f.sub_(self.shift)
        self.n += y.shape[0]
        self.sum += y.sum(0)
        self.sum_outer.addmm_(y.T, y)  # in place: no d x d temporary

    def _shifted_sums(self, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This shard's sums about another shift: ``z = y + delta``, ``delta = a - b``."""
        delta = self.shift.to(shift.device) - shift
        s = self.sum.to(shift.device)
        s_outer = self.sum_outer.to(shift.device)
        return s + self.n * delta, s_outer + torch.outer(s, delta) + torch.outer(delta, s) + self.n * torch.outer(
            delta, delta
        )

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Add another shard's sums into this one (in place); returns ``self``."""
        if other.sum is None:
            return self
        if self.sum is None:
            self.n, self.shift, self.sum, self.sum_outer = (
                other.n,
                other.shift.clone(),
                other.sum.clone(),
                other.sum_outer.clone(),
            )
            bad = other.nonfinite_rows
            self.nonfinite_rows = bad.clone() if torch.is_tensor(bad) else bad  # the deferred NaN count goes along
            return self
        if other.sum.numel() != self.sum.numel():
            raise InputError(
                explain(
                    "cannot merge statistics of different dimension",
                    expected=f"d = {self.dim}",
                    got=f"d = {other.dim}",
                    fix="merge shards of the same extractor layer",
                )
            )
        s, s_outer = other._shifted_sums(self.shift)
        self.nonfinite_rows = self.nonfinite_rows + (
            other.nonfinite_rows.to(self.sum.device) if torch.is_tensor(other.nonfinite_rows) else other.nonfinite_rows
        )
        self.n += other.n
        self.sum += s
        self.sum_outer += s_outer
        return self

    def _require(self, n_min: int) -> None:
        bad = int(self.nonfinite_rows)
        if bad:
            raise InputError(
                explain(
                    "features contain NaN or inf",
                    expected="finite features",
                    got=f"{bad} non-finite feature rows",
                    fix="check the images fed to the extractor",
                )
            )
        if self.n < n_min:
            raise InputError(
                explain(
                    "too few samples for these statistics",
                    expected=f"at least {n_min} samples",
                    got=f"{self.n}",
                    fix="evaluate more samples",
                )
            )

    @property
    def mean(self) -> torch.Tensor:
        self._require(1)
        return self.shift + self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance (ddof = 1): ``(sum y y^T - (sum y)(sum y)^T / n) / (n - 1)``."""
        self._require(2)
        cov = (self.sum_outer - torch.outer(self.sum, self.sum) / self.n) / (self.n - 1)
        return 0.5 * (cov + cov.T)

    # -- files --------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``mu``, ``sigma`` (the pytorch-fid / clean-fid / EDM keys), ``n`` and metadata to .npz."""
        meta = {f"meta_{k}": np.asarray(str(v)) for k, v in self.meta.items()}
        save_npz(  # atomic: a failed write keeps an older file at ``path`` intact
            Path(path),
            mu=self.mean.cpu().numpy(),
            sigma=self.cov.cpu().numpy(),
            n=np.asarray(self.n),
            **meta,
        )

    @classmethod
    def from_mean_cov(
        cls, mu: Any, sigma: Any, n: int, meta: dict[str, Any] | None = None, who: str = "statistics"
    ) -> FeatureMoments:
        """Rebuild the sums from a mean, an unbiased covariance and a count (validated by :func:`check_gaussian`)."""
        mu_t, sigma_t = check_gaussian(mu, sigma, who)
        if n < 2:
            raise InputError(
                explain(
                    "statistics need a sample count",
                    expected="n >= 2",
                    got=f"{n}",
                    fix="pass the number of images behind mu and sigma",
                )
            )
        moments = cls(meta)
        moments.n = int(n)
        moments.shift = mu_t.clone()
        moments.sum = torch.zeros_like(mu_t)
        moments.sum_outer = sigma_t * (n - 1)
        return moments

    @classmethod
    def load(cls, path: str | Path, n: int | None = None, count_option: str = COUNT_OPTION) -> FeatureMoments:
        """Read an .npz with ``mu`` and ``sigma`` and the sample count ``n`` (a key of the file, or the argument).

        pytorch-fid, clean-fid and EDM reference files carry no count: pass ``n`` (``--ref-n`` /
        ``reference_n`` for a reference, ``--gen-n`` for generated statistics) — the number of images behind
        them — so matched counts can be enforced; ``count_option`` is the option an error names. The file is
        data: its headers are checked before any array is read (:func:`diffeval.core.npz.npz_headers`), ``mu``
        and ``sigma`` must be real numbers of shapes (d,) and (d, d), and ``n`` one whole number.
        """
        who = f"statistics file {path}"
        headers = npz_headers(path, "statistics file")
        missing = {"mu", "sigma"} - set(headers)
        if missing:
            raise InputError(
                explain(
                    f"{who} lacks keys {sorted(missing)}",
                    expected="keys mu and sigma",
                    got=f"keys {sorted(headers)}",
                    fix="save statistics with FeatureMoments.save or pytorch-fid's format",
                )
            )
        _check_stat_headers(headers, who)
        data = read_npz(path, who="statistics file")
        recorded = _count(data["n"], who) if "n" in data else None
        if recorded is None and n is None:
            raise InputError(
                explain(
                    f"{who} has no sample count 'n'",
                    expected="key n (the number of images behind mu/sigma), or the count given",
                    got=f"keys {sorted(data)}",
                    fix=(
                        f"pass {count_option}: the number of images behind the file"
                        " (50000 for the standard pytorch-fid / clean-fid / EDM CIFAR-10 and ImageNet files)"
                    ),
                )
            )
        if recorded is not None and n is not None and recorded != n:
            raise InputError(
                explain(
                    f"{who} records n = {recorded}",
                    expected=f"the count given (n = {n}) to agree with the file",
                    got=f"n = {recorded} in the file",
                    fix=f"drop {count_option.split()[0]} (the file knows its count)",
                )
            )
        meta = {k[5:]: str(data[k]) for k in data if k.startswith("meta_")}
        count = recorded if recorded is not None else int(n)  # type: ignore[arg-type]
        return cls.from_mean_cov(data["mu"], data["sigma"], count, meta, who=who)


def _check_stat_headers(headers: dict[str, ArrayHeader], who: str) -> None:
    """``mu`` (d,) and ``sigma`` (d, d) of real numbers, and a scalar ``n``, judged from the headers alone."""
    mu, sigma = headers["mu"], headers["sigma"]
    for key, header in (("mu", mu), ("sigma", sigma)):
        if header.dtype.kind not in "fiu":
            raise InputError(
                explain(
                    f"{who}: {key} is not real numbers",
                    expected="a float (or integer) array",
                    got=f"dtype {header.dtype}"
                    + (" (complex: an imaginary part would be dropped)" if header.dtype.kind == "c" else ""),
                    fix="save the real mean and covariance of the features (a complex sigma comes from a bad sqrtm)",
                )
            )
    d = mu.shape[0] if len(mu.shape) == 1 else None
    if d is None or sigma.shape != (d, d):
        raise InputError(
            explain(
                f"{who}: mu/sigma shapes do not match",
                expected="mu (d,), sigma (d, d)",
                got=f"{mu.shape}, {sigma.shape}",
                fix="pass the mean vector and covariance matrix of one feature layer",
            )
        )
    if d > MAX_STATISTICS_DIM:
        raise InputError(
            explain(
                f"{who}: the feature dimension is too large",
                expected=f"d <= {MAX_STATISTICS_DIM} (sigma of {MAX_STATISTICS_DIM}^2 float64 is 32 GiB)",
                got=f"d = {d}",
                fix="point to statistics of a feature layer (Inception's is d = 2048)",
            )
        )
    if "n" in headers and (headers["n"].shape != () or headers["n"].dtype.kind not in "iuf"):
        raise InputError(
            explain(
                f"{who}: n is not one number",
                expected="n: one whole number (the images behind mu and sigma)",
                got=f"{headers['n'].dtype} of shape {headers['n'].shape}",
                fix="save n=numpy.asarray(count)",
            )
        )


def _count(value: np.ndarray, who: str) -> int:
    """The file's ``n`` as an int: a whole, finite number (100.7 is an error, never 100)."""
    number = float(value)
    if not math.isfinite(number) or number != round(number):
        raise InputError(
            explain(
                f"{who}: n is not a whole number",
                expected="n: the number of images behind mu and sigma (an integer)",
                got=f"n = {value.item()!r}",
                fix="save the count itself (numpy.asarray(count)), not a mean or a rounded-off float",
            )
        )
    return int(number)


SPACE_KEYS = ("extractor", "layer", "weights_sha256", "resize", "quantization")


def check_space(meta: dict[str, Any], space: dict[str, str], who: str) -> str:
    """Compare the feature space recorded with statistics to ``space``; ``verified`` or ``unverified``.

    Any recorded field that differs is an :class:`InputError` naming both sides (statistics
    made through one weight file compared with features from another give a meaningless
    FID). Statistics that record no full identity — pytorch-fid, clean-fid and EDM files, or
    older diffeval files — are ``unverified``, and a caveat is printed.
    """
    recorded = {k: str(meta[k]) for k in SPACE_KEYS if k in meta}
    differ = [k for k, v in recorded.items() if v != str(space.get(k))]
    if differ:
        raise InputError(
            explain(
                f"{who} were computed in another feature space",
                expected=", ".join(f"{k} = {space.get(k)}" for k in differ) + " (this run)",
                got=", ".join(f"{k} = {recorded[k]}" for k in differ) + " (the statistics)",
                fix=(
                    "recompute the statistics with the same extractor, weights and layer (diffeval ref), or evaluate"
                    " with the extractor they were made with"
                ),
            )
        )
    if set(recorded) == set(SPACE_KEYS):
        return "verified"
    missing = ", ".join(k for k in SPACE_KEYS if k not in recorded)
    note(
        f"caveat: {who} record no {missing}: files from pytorch-fid, clean-fid or EDM come from other"
        " Inception ports and resizes, so a FID against them is comparable only with features computed the same way"
    )
    return "unverified"

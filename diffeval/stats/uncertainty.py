"""Gate-grade uncertainty: seed blocks, jackknife standard errors, paired differences, extrapolation in 1/N.

Samples are split into ``K`` disjoint *seed blocks* by ``block = seed mod K`` — a rule that
depends on the seed alone, so the same seeds fall into the same blocks in every run, on
every rank, after every resume. Metrics keep their streaming state per block and report,
beside the value, *pairing values*: the ``K`` delete-a-block (leave-one-out) replicates
(``kind = "jackknife"``) or the ``K`` block estimates (``kind = "blocks"``). From them:

- :func:`jackknife_se`: ``sqrt((K - 1) / K Σ_k (θ_(-k) - mean)²)`` (delete-a-group jackknife);
- :func:`block_se`: ``std(θ_k, ddof = 1) / sqrt(K)`` (independent block estimates);
- :func:`paired_se`: the same formulas on the per-block *differences* of two runs on the same
  seeds — noise the two runs share (the seeds' draw) cancels;
- :func:`extrapolate`: least-squares ``value = a + b / N``; ``a`` estimates the value at
  infinite sample size (FID∞, Chong & Forsyth 2020).

Example::

    >>> round(jackknife_se([1.0, 1.2, 0.8, 1.0]), 6)
    0.244949
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffeval.core.errors import InputError, explain

__all__ = [
    "SeedBlocks",
    "jackknife_se",
    "block_se",
    "loo_means",
    "paired_se",
    "pairing_problem",
    "extrapolate",
    "PAIRING_KINDS",
    "pairing",
    "digest",
]

PAIRING_KINDS = ("jackknife", "blocks")


@dataclass
class SeedBlocks:
    """Seed-block bookkeeping of one metric: per-block counts and a fingerprint of the seeds seen (mergeable).

    ``assign(seeds, n)`` returns each sample's block (``seed mod k``). Samples given without
    seeds fall into blocks by arrival order; such a run still gets a standard error but no
    fingerprint, so the gate never pairs it. The fingerprint (count, Σ seed, Σ seed² in exact
    integers, and Σ splitmix64(seed) mod 2⁶⁴ — the sums alone collide, e.g. {1, 5, 6} and
    {2, 3, 7}) is order-free and additive, so it is the same whatever the batching, sharding
    or resumes, and two different seed sets share it only by a 64-bit hash collision. Plain
    fields only, so a checkpoint stores it as values.
    """

    k: int
    counts: list[int] = field(default_factory=list)
    n: int = 0
    seed_sum: int = 0
    seed_sumsq: int = 0
    seed_hash: int = 0
    unseeded: int = 0

    def __post_init__(self) -> None:
        self.k = int(self.k)
        self.counts = list(self.counts) or [0] * self.k

    def assign(self, seeds: Sequence[int], n: int, device: Any = None) -> torch.Tensor:
        if len(seeds) not in (0, n):
            raise InputError(
                explain(
                    "a batch's seeds do not match its samples",
                    expected=f"{n} seeds (one per sample) or none",
                    got=f"{len(seeds)} seeds",
                    fix="pass one seed per sample (Batch.seeds)",
                )
            )
        if len(seeds) == n:
            values = [int(x) for x in seeds]
            self.seed_sum += sum(values)
            self.seed_sumsq += sum(x * x for x in values)  # Python integers: exact, no overflow
            self.seed_hash = (self.seed_hash + sum(_splitmix64(x) for x in values)) % 2**64
            s = torch.as_tensor(values, dtype=torch.int64)
        else:
            s = torch.arange(self.n, self.n + n, dtype=torch.int64)
            self.unseeded += n
        self.n += n
        block = s % self.k
        for b, c in enumerate(torch.bincount(block, minlength=self.k).tolist()):
            self.counts[b] += c
        return block.to(device) if device is not None else block

    def merge(self, other: SeedBlocks) -> SeedBlocks:
        if other.k != self.k:
            raise InputError(
                explain(
                    "cannot merge states with different seed blocks",
                    expected=f"{self.k} blocks",
                    got=f"{other.k}",
                    fix="merge shards of the same metric (same blocks option)",
                )
            )
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.n += other.n
        self.seed_sum += other.seed_sum
        self.seed_sumsq += other.seed_sumsq
        self.seed_hash = (self.seed_hash + other.seed_hash) % 2**64
        self.unseeded += other.unseeded
        return self

    @property
    def fingerprint(self) -> str | None:
        """``n:Σs:Σs²:hash`` of the seeds, or None when some samples came without seeds."""
        return None if self.unseeded else f"{self.n}:{self.seed_sum}:{self.seed_sumsq}:{self.seed_hash:016x}"

    def record(self, kind: str, values: Sequence[float], reference: str | None = None) -> dict[str, Any]:
        """The pairing record for ``values`` over these blocks (see :func:`pairing`)."""
        out = pairing(kind, values, self.k, seeds=self.fingerprint, reference=reference)
        out["counts"] = list(self.counts)
        return out


def _splitmix64(seed: int) -> int:
    """A 64-bit mix of one seed (splitmix64's finalizer): the summand of the fingerprint's hash."""
    z = (seed + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def digest(*tensors: torch.Tensor) -> str:
    """A short content hash of float tensors (identifies a reference set in pairing records)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def loo_means(sums: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Leave-one-block-out means ``(S - S_b) / (N - N_b)`` of per-block sums (``sums``: (k, ...))."""
    c = torch.as_tensor(list(counts), dtype=torch.float64).reshape(-1, *([1] * (sums.ndim - 1)))
    return (sums.sum(0, keepdim=True) - sums) / (c.sum() - c)


def jackknife_se(replicates: Sequence[float]) -> float:
    """Delete-a-group jackknife standard error from the K leave-one-out replicates (NaN for K < 2)."""
    x = np.asarray(replicates, dtype=np.float64)
    k = x.size
    if k < 2 or not np.isfinite(x).all():
        return float("nan")
    return float(math.sqrt((k - 1) / k * ((x - x.mean()) ** 2).sum()))


def block_se(estimates: Sequence[float]) -> float:
    """Standard error of the mean of K independent block estimates (NaN for K < 2)."""
    x = np.asarray(estimates, dtype=np.float64)
    if x.size < 2 or not np.isfinite(x).all():
        return float("nan")
    return float(x.std(ddof=1) / math.sqrt(x.size))


def pairing(
    kind: str,
    values: Sequence[float],
    k: int,
    *,
    seeds: str | None = None,
    reference: str | None = None,
    rule: str | None = None,
) -> dict[str, Any]:
    """The pairing record a metric puts in its result's details (and so in its report row).

    ``kind``: ``jackknife`` (leave-one-block-out values) or ``blocks`` (per-block estimates);
    ``rule``: how samples were blocked; ``seeds``: the seed fingerprint; ``reference``: a
    digest of the reference the metric compares against (None: no reference).
    """
    if kind not in PAIRING_KINDS:
        raise InputError(
            explain(
                "unknown pairing kind",
                expected=" / ".join(PAIRING_KINDS),
                got=repr(kind),
                fix="use jackknife or blocks",
            )
        )
    return {
        "kind": kind,
        "k": int(k),
        "rule": rule or f"seed mod {k}",
        "seeds": seeds,
        "reference": reference,
        "values": [float(v) for v in values],
    }


def pairing_problem(base: Any, cand: Any) -> str | None:
    """Why two pairing records cannot be paired (None: they can)."""
    if not isinstance(base, dict) or not isinstance(cand, dict):
        side = "baseline" if not isinstance(base, dict) else "candidate"
        return f"the {side} row records no seed blocks"
    for key, what in (
        ("kind", "pairing kind"),
        ("k", "number of blocks"),
        ("rule", "blocking rule"),
        ("reference", "reference"),
    ):
        if base.get(key) != cand.get(key):
            return f"{what} differs ({base.get(key)} vs {cand.get(key)})"
    if base.get("seeds") is None or cand.get("seeds") is None:
        return "a run fed samples without seeds"
    if str(base["seeds"]).count(":") != str(cand["seeds"]).count(":"):
        return "the seed fingerprints are of different formats (an older report: re-run it)"
    if base["seeds"] != cand["seeds"] or base.get("counts") != cand.get("counts"):
        return "the runs used different seeds"
    if len(base.get("values", [])) != len(cand.get("values", [])):
        return "different numbers of pairing values"
    return None


def paired_se(base: dict[str, Any], cand: dict[str, Any]) -> float:
    """Standard error of ``candidate - baseline`` from two runs' pairing records on the same seed blocks."""
    problem = pairing_problem(base, cand)
    if problem is not None:
        raise InputError(
            explain(
                "the two runs' seed blocks do not pair",
                expected="the same seeds, reference, blocking rule and number of blocks",
                got=problem,
                fix="run both with the same seeds, reference and metric options, or compare unpaired",
            )
        )
    diff = np.asarray(cand["values"], dtype=np.float64) - np.asarray(base["values"], dtype=np.float64)
    return jackknife_se(diff) if base["kind"] == "jackknife" else block_se(diff)


def extrapolate(ns: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``value = a + b / N`` over the points; returns ``(a, b)`` (a = the value at infinite N)."""
    x = 1.0 / np.asarray(ns, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise InputError(
            explain(
                "an extrapolation in 1/N needs two sample sizes",
                expected=">= 2 distinct N",
                got=f"{sorted(set(np.asarray(ns).tolist()))}",
                fix="use more blocks",
            )
        )
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)

"""Precision and recall (Kynkäänniemi et al. 2019, k = 3), density and coverage (Naeem et al. 2020, k = 5).

With ``r_k(z)`` the distance from ``z`` to its k-th nearest neighbour within its own set
(the point itself not counted), generated samples ``Y`` (M) and reference samples ``X`` (N)::

    precision = mean_j [ exists i: ||y_j - x_i|| <= r_k(x_i) ]                (generated in the real manifold)
    recall    = mean_i [ exists j: ||x_i - y_j|| <= r_k(y_j) ]                (real in the generated manifold)
    density   = 1 / (k M) sum_j sum_i [ ||y_j - x_i|| <= r_k(x_i) ]
    coverage  = mean_i [ min_j ||x_i - y_j|| <= r_k(x_i) ]

Ties count as inside (``<=``), as the definitions say — so a set compared with itself scores
precision = recall = coverage = 1. Distances are Euclidean, computed as squared distances in
float64 in row blocks on the features' device (no N x M matrix: at N = M = 50,000 and d =
1024 the features take 0.8 GB and a block 0.13 GB). The reference radii are computed once
(:class:`PrdcReference`, saved with the reference features by ``diffeval prdc
--save-reference``). One pass gives the four rows of the ``prdc`` metric.

Standard errors: delete-a-block jackknife over the generated samples' seed blocks, the
reference fixed. Precision and density are means over generated samples; coverage keeps,
per reference sample, the nearest generated sample of each block; recall keeps, per
generated sample, its k + 1 nearest neighbours in each block, so each leave-one-block-out
replicate re-derives the generated radii exactly as the full computation would.

Example::

    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    >>> out = prdc(x, x, k_pr=1, k_dc=1)
    >>> [round(out[k], 6) for k in ("precision", "recall", "density", "coverage")]
    [1.0, 1.0, 2.5, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.core.errors import InputError, explain
from diffeval.core.files import save_npz
from diffeval.core.npz import npz_headers, read_npz
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
    require_finite,
)
from diffeval.metrics.rows import RowMetric
from diffeval.stats.uncertainty import digest, jackknife_se

__all__ = ["knn_radii", "knn_radii_many", "prdc", "PrdcReference", "PRDC", "PARTS"]

PARTS = ("precision", "recall", "density", "coverage")
_BLOCK_ELEMENTS = 1 << 24  # rows x columns of one block of squared distances: 16 M float64 (128 MB)


def _rows_per_block(columns: int, block_elements: int = _BLOCK_ELEMENTS) -> int:
    return max(1, block_elements // max(columns, 1))


def _sq_dist(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (rows of a) x (rows of b), float64, clamped at 0 — one block-sized buffer."""
    d = a @ b.T
    return d.mul_(-2.0).add_((a * a).sum(1, keepdim=True)).add_(b_sq[None, :]).clamp_min_(0)


def _check_k(k: int, n: int, who: str) -> None:
    if not (isinstance(k, int) and 1 <= k < n):
        raise InputError(
            explain(
                f"{who}: k = {k} nearest neighbours needs more samples",
                expected=f"1 <= k < N (N = {n} samples in the set)",
                got=f"k = {k}, N = {n}",
                fix="evaluate more samples or lower k",
            )
        )


TILE_ROWS = 1024  # rows of one tile of a symmetric distance pass


def _tiles(bounds: Sequence[int], size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` tiles of at most ``size`` rows, none crossing a boundary of ``bounds``."""
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        out += [(a, min(a + size, hi)) for a in range(lo, hi, size)]
    return out


def _tile_nearest(z: torch.Tensor, tiles: Sequence[tuple[int, int]], k1: int) -> torch.Tensor:
    """``(n, len(tiles), k1)``: each row's ``k1`` smallest squared distances to the rows of each tile (sorted, inf
    where a tile has fewer rows; a row's distance to itself is exactly 0).

    Distances are symmetric, so each pair of tiles is formed once and read both ways: half the GEMMs of a
    row-by-row pass.
    """
    n = z.shape[0]
    z_sq = (z * z).sum(1)
    out = torch.full((n, len(tiles), k1), float("inf"), dtype=torch.float64, device=z.device)
    for i, (lo_i, hi_i) in enumerate(tiles):
        for j in range(i, len(tiles)):
            lo_j, hi_j = tiles[j]
            d = _sq_dist(z[lo_i:hi_i], z[lo_j:hi_j], z_sq[lo_j:hi_j])
            if i == j:
                own = torch.arange(hi_i - lo_i, device=z.device)
                d[own, own] = 0.0  # the point itself: exactly 0 (not a rounding residue)
            take = min(k1, hi_j - lo_j)
            out[lo_i:hi_i, j, :take] = d.topk(take, dim=1, largest=False).values
            if i != j:
                take = min(k1, hi_i - lo_i)
                out[lo_j:hi_j, i, :take] = d.T.topk(take, dim=1, largest=False).values
    return out


def knn_radii(x: torch.Tensor, k: int, *, block_elements: int = _BLOCK_ELEMENTS) -> torch.Tensor:
    """Squared distance of every row to its k-th nearest neighbour in ``x`` (itself not counted), in row blocks."""
    return knn_radii_many(x, (k,), block_elements=block_elements)[k]


def knn_radii_many(
    x: torch.Tensor, ks: Sequence[int], *, block_elements: int = _BLOCK_ELEMENTS
) -> dict[int, torch.Tensor]:
    """:func:`knn_radii` for several k from one pass over the distances (the k + 1 smallest, sorted, per row)."""
    for k in ks:
        _check_k(k, x.shape[0], "k-NN radii")
    x = x.to(torch.float64)
    top = max(ks) + 1  # + 1: the point itself is the first
    per_tile = _tile_nearest(x, _tiles([0, x.shape[0]], TILE_ROWS), top)
    nearest = per_tile.reshape(x.shape[0], -1).topk(top, dim=1, largest=False).values  # sorted ascending
    return {k: nearest[:, k].contiguous() for k in ks}


@dataclass
class PrdcReference:
    """Reference features and their k-NN squared radii per k (computed once, saved with the features)."""

    features: torch.Tensor
    radii: dict[int, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def radius(self, k: int) -> torch.Tensor:
        if k not in self.radii:
            self.radii[k] = knn_radii(self.features, k)
        return self.radii[k]

    def radii_for(self, *ks: int) -> list[torch.Tensor]:
        """The radii for every k, the missing ones from one pass over the distances."""
        missing = [k for k in dict.fromkeys(ks) if k not in self.radii]
        if missing:
            self.radii.update(knn_radii_many(self.features, missing))
        return [self.radii[k] for k in ks]

    def save(self, path: str | Path) -> Path:
        arrays = {"features": self.features.cpu().numpy()}
        arrays.update({f"radii_k{k}": r.cpu().numpy() for k, r in self.radii.items()})
        arrays.update({f"meta_{k}": np.array(v) for k, v in self.meta.items()})
        return save_npz(Path(path), **arrays)  # atomic; like np.savez, appends .npz to a path without it

    @classmethod
    def load(cls, path: str | Path) -> PrdcReference:
        """Read a saved reference (headers checked first, no pickle: :func:`diffeval.core.npz.read_npz`)."""
        data = read_npz(path, who="PRDC reference")
        if "features" not in data:
            raise InputError(
                explain(
                    f"{path} holds no reference features",
                    expected="an .npz written by `diffeval prdc --save-reference` (features, radii_k*)",
                    got=f"arrays {sorted(data)}",
                    fix="point to the reference images, or save the reference with --save-reference",
                )
            )
        if data["features"].dtype.kind not in "fiu" or data["features"].ndim != 2:
            raise InputError(
                explain(
                    f"{path}: the reference features are not an (N, d) array of real numbers",
                    expected="features (N, d), float",
                    got=f"{data['features'].dtype} {data['features'].shape}",
                    fix="save the reference with `diffeval prdc --save-reference`",
                )
            )
        features = torch.from_numpy(data["features"]).to(torch.float64)
        radii = {int(k[len("radii_k") :]): torch.from_numpy(data[k]) for k in data if k.startswith("radii_k")}
        meta = {k[len("meta_") :]: str(data[k]) for k in data if k.startswith("meta_")}
        require_finite(features, f"reference features {path}")
        return cls(features, radii, meta)


@dataclass
class _Passes:
    """What the two blocked passes leave behind: enough for the four values and every leave-one-block-out replicate."""

    inside: torch.Tensor  # (M,) generated sample inside some real k_pr-ball
    count: torch.Tensor  # (M,) real k_dc-balls holding the generated sample
    covered: torch.Tensor  # (1 + K, N) real sample inside some generated k_pr-ball: all blocks, then without block b
    nearest_gen: torch.Tensor  # (N, K) each real sample's nearest generated sample (squared distance) per block


def _generated_nearest(y: torch.Tensor, bounds: list[int], k: int) -> torch.Tensor:
    """``(M, K, k + 1)``: each generated row's k + 1 nearest generated rows (itself included, at 0) in each seed block.

    The rows of ``y`` are sorted by block: block b is the slice ``bounds[b]:bounds[b + 1]``.
    """
    tiles = _tiles(bounds, TILE_ROWS)
    per_tile = _tile_nearest(y, tiles, k + 1)
    kb = len(bounds) - 1
    owner = [next(b for b in range(kb) if bounds[b] <= lo < bounds[b + 1]) for lo, _ in tiles]
    nearest = torch.full((y.shape[0], kb, k + 1), float("inf"), dtype=torch.float64, device=y.device)
    for b in range(kb):
        mine = [i for i, o in enumerate(owner) if o == b]
        if mine:
            cand = per_tile[:, mine].reshape(y.shape[0], -1)
            nearest[:, b] = cand.topk(k + 1, dim=1, largest=False).values
    return nearest


def _cross_pass(
    x: torch.Tensor,
    y: torch.Tensor,
    real_radii: tuple[torch.Tensor, torch.Tensor],
    r_gen: list[torch.Tensor],
    bounds: list[int],
    cap: int,
) -> _Passes:
    """One pass over the real x generated distances, in blocks of real rows: everything the four values need.

    Per generated row: inside some real k_pr-ball, and the count of real k_dc-balls holding it (reduced over the
    real rows); per real row: inside some generated ball (for each radii replicate, its block's columns left
    out) and the nearest generated row per block.
    """
    (n, m), kb = (x.shape[0], y.shape[0]), len(bounds) - 1
    r_pr, r_dc = real_radii
    y_sq = (y * y).sum(1)
    inside = torch.zeros(m, dtype=torch.bool, device=x.device)
    count = torch.zeros(m, dtype=torch.float64, device=x.device)
    covered = torch.zeros(len(r_gen), n, dtype=torch.bool, device=x.device)
    nearest_gen = torch.full((n, kb), float("inf"), dtype=torch.float64, device=x.device)
    r_widest = torch.stack(r_gen[1:]).amax(0) if len(r_gen) > 1 else r_gen[0]  # >= every replicate's radius
    rows = _rows_per_block(m, cap)
    for lo in range(0, n, rows):
        d = _sq_dist(x[lo : lo + rows], y, y_sq)  # (B, M)
        in_dc = d <= r_dc[lo : lo + rows, None]
        count += in_dc.sum(0, dtype=torch.int32)  # exact; an int32 sum runs twice as fast as the default int64
        inside |= in_dc.any(0) if r_pr is r_dc else (d <= r_pr[lo : lo + rows, None]).any(0)
        del in_dc
        ok = d <= r_gen[0][None, :]
        by_block = torch.stack([ok[:, bounds[c] : bounds[c + 1]].any(1) for c in range(kb)], 1)  # (B, K)
        covered[0, lo : lo + rows] = by_block.any(1)
        if len(r_gen) > 1:
            ok = d <= r_widest[None, :]
            maybe = torch.stack([ok[:, bounds[c] : bounds[c + 1]].any(1) for c in range(kb)], 1)  # (B, K)
        del ok
        for r in range(1, len(r_gen)):  # replicate r: block r - 1's columns left out, its radii
            # without a block every other radius can only grow (up to r_widest): a row covered by another block's
            # columns at the full radii stays covered, and one no other block's columns reach even at the widest
            # radii stays uncovered; only the rows in between need the replicate's own radii
            others = torch.ones(kb, dtype=torch.bool, device=x.device)
            others[r - 1] = False
            rest = by_block[:, others].any(1)
            todo = (~rest & maybe[:, others].any(1)).nonzero().squeeze(1)
            if todo.numel():
                hit = d[todo] <= r_gen[r][None, :]
                hit[:, bounds[r - 1] : bounds[r]] = False
                rest[todo] = hit.any(1)
            covered[r, lo : lo + rows] = rest
        for b in range(kb):
            if bounds[b + 1] > bounds[b]:
                nearest_gen[lo : lo + rows, b] = d[:, bounds[b] : bounds[b + 1]].min(1).values
    return _Passes(inside.to(torch.float64), count, covered, nearest_gen)


def _leave_one_out(p: _Passes, ids: torch.Tensor, kb: int, k_dc: int, r_dc: torch.Tensor) -> dict[str, list[float]]:
    """The four values with each seed block left out, from the passes' per-sample and per-block results."""
    m = p.inside.shape[0]
    sizes = torch.bincount(ids, minlength=kb).to(torch.float64)
    in_sum = torch.zeros(kb, dtype=torch.float64, device=ids.device).index_add_(0, ids, p.inside)
    ct_sum = torch.zeros(kb, dtype=torch.float64, device=ids.device).index_add_(0, ids, p.count)
    loo: dict[str, list[float]] = {part: [] for part in PARTS}
    for b in range(kb):
        rest = float(m - sizes[b])
        loo["precision"].append(float((p.inside.sum() - in_sum[b]) / rest))
        loo["density"].append(float((p.count.sum() - ct_sum[b]) / (k_dc * rest)))
        loo["recall"].append(float(p.covered[b + 1].to(torch.float64).mean()))
        others = torch.cat([p.nearest_gen[:, :b], p.nearest_gen[:, b + 1 :]], dim=1).min(1).values
        loo["coverage"].append(float((others <= r_dc).to(torch.float64).mean()))
    return loo


def prdc(
    generated: torch.Tensor,
    reference: torch.Tensor | PrdcReference,
    *,
    k_pr: int = 3,
    k_dc: int = 5,
    block_ids: torch.Tensor | None = None,
    blocks: int = 0,
    block_elements: int = _BLOCK_ELEMENTS,
) -> dict[str, Any]:
    """The four values (and, with ``block_ids``, their K leave-one-block-out replicates under ``loo``)."""
    ref = reference if isinstance(reference, PrdcReference) else PrdcReference(reference.to(torch.float64))
    y = generated.to(torch.float64).to(ref.features.device)
    x = ref.features.to(torch.float64)
    m, n = y.shape[0], x.shape[0]
    if y.shape[1] != x.shape[1]:
        raise InputError(
            explain(
                "generated and reference features have different dimensions",
                expected=f"d = {x.shape[1]} (the reference's)",
                got=f"d = {y.shape[1]}",
                fix="compute both with the same extractor and layer",
            )
        )
    for k in (k_pr, k_dc):
        _check_k(k, n, "reference set")
        _check_k(k, m, "generated set")
    r_pr, r_dc = (r.to(x.device) for r in ref.radii_for(k_pr, k_dc))
    r_dc = r_pr if k_dc == k_pr else r_dc  # one tensor: the cross pass compares once
    kb = blocks if block_ids is not None and blocks >= 2 else 1
    ids = block_ids.to(x.device, torch.int64) if kb > 1 else torch.zeros(m, dtype=torch.int64, device=x.device)
    if kb > 1 and int(m - torch.bincount(ids, minlength=kb).max()) <= max(k_pr, 1):
        kb, ids = 1, torch.zeros(m, dtype=torch.int64, device=x.device)  # a replicate would lack k + 1 samples
    # generated rows sorted by seed block, so a block is a slice (every result is a sum or an extreme: order-free)
    order = torch.argsort(ids, stable=True)
    y, ids = y[order], ids[order]
    bounds = [0, *torch.cumsum(torch.bincount(ids, minlength=kb), 0).tolist()]
    nearest = _generated_nearest(y, bounds, k_pr)

    def radii_without(b: int | None) -> torch.Tensor:  # the generated k-NN radii, block b's samples left out
        keep = nearest if b is None else torch.cat([nearest[:, :b], nearest[:, b + 1 :]], dim=1)
        return keep.reshape(m, -1).kthvalue(k_pr + 1, dim=1).values

    r_gen = [radii_without(None)] + ([radii_without(b) for b in range(kb)] if kb > 1 else [])
    passes = _cross_pass(x, y, (r_pr, r_dc), r_gen, bounds, block_elements)
    inside, count, covered, nearest_gen = passes.inside, passes.count, passes.covered, passes.nearest_gen
    out: dict[str, Any] = {
        "precision": float(inside.mean()),
        "recall": float(covered[0].to(torch.float64).mean()),
        "density": float(count.sum() / (k_dc * m)),
        "coverage": float((nearest_gen.min(1).values <= r_dc).to(torch.float64).mean()),
    }
    if kb > 1:
        out["loo"] = _leave_one_out(passes, ids, kb, k_dc, r_dc)
    return out


@register_metric
class PRDC(RowMetric):
    """Precision, recall (k = 3), density and coverage (k = 5) in one pass: four rows, all higher-is-better."""

    name = "prdc"
    direction = "higher"
    parts = tuple((p, "higher") for p in PARTS)
    options = (
        Option(
            "reference",
            str,
            attr="reference_spec",
            doc=(
                "reference images (folder, .npz image batch, 'name:split'), or an .npz of reference features and radii"
                " from `diffeval prdc --save-reference`"
            ),
        ),
        *feature_options(),
        Option("k_pr", int, 3, "nearest neighbours for precision and recall", minimum=1),
        Option("k_dc", int, 5, "nearest neighbours for density and coverage", minimum=1),
        Option(
            "blocks", int, 10, "seed blocks (seed mod blocks) for the jackknife standard errors (< 2: none)", minimum=0
        ),
    )
    display_name = "PRDC"

    def __init__(
        self,
        reference: torch.Tensor | PrdcReference,
        extractor: str,
        layer: str,
        *,
        k_pr: int = 3,
        k_dc: int = 5,
        blocks: int = 10,
        label: str | None = None,
        reference_spec: str = "<features in memory>",
        extractor_name: str | None = None,
        weights: str | None = None,
    ) -> None:
        ref = reference if isinstance(reference, PrdcReference) else PrdcReference(reference.detach().to(torch.float64))
        if ref.features.ndim != 2:
            raise InputError(
                explain(
                    "PRDC reference features must be 2-D",
                    expected="(N_ref, d)",
                    got=f"{tuple(ref.features.shape)}",
                    fix="pass the reference set's features of one layer",
                )
            )
        require_finite(ref.features, "PRDC reference")
        for k in (k_pr, k_dc):
            _check_k(k, ref.features.shape[0], "PRDC reference set")
        self.reference = ref
        ref.radius(k_pr), ref.radius(k_dc)  # computed once, before any sampling
        self.extractor, self.layer = extractor, layer
        self.space = f"{extractor}:{layer}"
        self.k_pr, self.k_dc, self.blocks = int(k_pr), int(k_dc), int(blocks)
        self.custom_label = label
        self.reference_spec = reference_spec
        self.extractor_name = extractor_name or extractor
        self.weights = weights
        self.reference_digest = digest(ref.features)
        self.reset()

    def reference_width(self) -> int:
        return self.reference.features.shape[1]

    def reference_note(self) -> str:
        return str(self.reference.meta.get("extractor", "ref"))

    def check_count(self, n: int) -> None:
        for k in (self.k_pr, self.k_dc):
            _check_k(k, n, "PRDC generated set")

    def compute(self) -> MetricResult:
        d = self.reference.features.shape[1]
        y = self.rows(d)
        ids, k = None, 0
        if self.seeded() and self.blocks >= 2 and min(self.seed_blocks.counts) >= 1:
            ids, k = self.row_seeds() % self.blocks, self.blocks
        out = prdc(y, self.reference, k_pr=self.k_pr, k_dc=self.k_dc, block_ids=ids, blocks=k)
        n_gen, n_ref = int(y.shape[0]), int(self.reference.features.shape[0])
        conventions = {
            "precision": f"k = {self.k_pr}: share of generated samples inside the real k-NN balls (<=)",
            "recall": f"k = {self.k_pr}: share of real samples inside the generated k-NN balls (<=)",
            "density": f"k = {self.k_dc}: real k-NN balls holding each generated sample, / k, averaged",
            "coverage": f"k = {self.k_dc}: share of real samples whose k-NN ball holds a generated sample (<=)",
        }
        parts = {}
        for part in PARTS:
            details: dict[str, Any] = {"k": self.k_pr if part in ("precision", "recall") else self.k_dc}
            stderr = None
            if "loo" in out:
                stderr = jackknife_se(out["loo"][part])
                details["stderr_is"] = f"delete-a-block jackknife over {k} seed blocks (seed mod {k}), reference fixed"
                details["pairing"] = self.seed_blocks.record(
                    "jackknife", out["loo"][part], reference=f"{self.reference_digest}:k{details['k']}"
                )
            else:
                details["stderr_is"] = "none (blocks < 2, samples without seeds, or an empty seed block)"
            parts[part] = MetricResult(
                out[part], stderr, n_gen=n_gen, n_ref=n_ref, convention=conventions[part], details=details
            )
        return MetricResult(
            out["precision"],
            parts["precision"].stderr,
            n_gen=n_gen,
            n_ref=n_ref,
            convention="precision, recall, density, coverage (one pass)",
            details={"reference": self.reference_spec},
            parts=parts,
        )

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> Deferred:
        ex = ctx.extractor(options["extractor"], weights=options["weights"])
        layer = choose_layer(ex, options["layer"], "prdc")
        reference = reference_features(options["reference"], ex, layer, ctx)
        return Deferred(
            lambda: cls(
                reference(),
                ex.key,
                layer,
                k_pr=options["k_pr"],
                k_dc=options["k_dc"],
                blocks=options["blocks"],
                label=options["label"],
                reference_spec=options["reference"],
                extractor_name=options["extractor"],
                weights=options["weights"],
            )
        )

    @classmethod
    def example(cls) -> MetricExample:
        g = torch.Generator().manual_seed(5)
        reference = torch.randn(50, 4, generator=g, dtype=torch.float64)
        features = torch.randn(60, 4, generator=g, dtype=torch.float64) * 1.2 + 0.2
        return MetricExample(
            lambda: cls(reference, "x", "f", blocks=5),
            Batch(features={"x": {"f": features}}, seeds=list(range(60))).split([17, 23, 20]),
        )


def reference_features(spec: str, extractor: Any, layer: str, ctx: BuildContext) -> PrdcReference:
    """A PRDC reference: a saved ``.npz`` of features and radii (its feature space checked), or images."""
    from diffeval.features import feature_space
    from diffeval.stats.moments import FeatureMoments, check_space

    path = ctx.base_dir / spec if not Path(spec).is_absolute() else Path(spec)
    if path.suffix.lower() == ".npz" and path.is_file():
        if "features" in npz_headers(path, "PRDC reference"):
            ref = PrdcReference.load(path)
            check_space(ref.meta, feature_space(extractor, layer), f"reference features {spec}")
            return lambda: ref
    source = ctx.open_source(spec)
    if isinstance(source, FeatureMoments):
        raise InputError(
            explain(
                f"PRDC reference {spec} holds statistics",
                expected="reference images, or features saved by `diffeval prdc --save-reference`",
                got="mu/sigma statistics (PRDC needs the features)",
                fix="point reference to the image folder or .npz image batch",
            )
        )
    handle = ctx.reference(source, extractor, features=[layer])
    return lambda: PrdcReference(
        handle.features(layer), meta={**feature_space(extractor, layer), "source": source.name}
    )

"""The fast paths of issue 22 give the values of the direct computations they replace (speed is shown by benchmarks)."""

from __future__ import annotations

import pytest
import torch

import diffeval.metrics.kid as kid_module
from diffeval.core.errors import InputError
from diffeval.metrics import FID
from diffeval.metrics.base import Batch
from diffeval.metrics.fid import FLUSH_ROWS, BlockDistances, FrechetToReference, frechet_distance
from diffeval.metrics.kid import kid_with_jackknife
from diffeval.metrics.prdc import _tile_nearest, _tiles, knn_radii, knn_radii_many
from diffeval.stats.moments import FeatureMoments


def _moments(rows: torch.Tensor) -> FeatureMoments:
    m = FeatureMoments()
    m.update(rows)
    return m


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def test_every_union_of_rotated_blocks_is_the_frechet_distance_of_those_rows():
    ref = _moments(_features(300, 12, 0))
    rows = _features(250, 12, 1) * 0.9 + 0.3
    ids = torch.arange(250) % 5
    blocks = [_moments(rows[ids == b]) for b in range(5)]
    distances = BlockDistances(FrechetToReference(ref), blocks)
    for left_out in [(), (0,), (3,), (1, 4), (0, 2)]:
        keep = ~torch.isin(ids, torch.tensor(left_out, dtype=torch.int64))
        n, got = distances.without(*left_out)
        want = frechet_distance(rows[keep].mean(0), torch.cov(rows[keep].T), ref.mean, ref.cov)
        assert n == int(keep.sum())
        assert got.raw_value == pytest.approx(want.raw_value, rel=1e-11)
        assert got.trace_sqrt == pytest.approx(want.trace_sqrt, rel=1e-12)


def test_a_singular_reference_takes_the_eigh_factor_and_the_same_values():
    base = _features(400, 10, 2)
    ref = _moments(torch.cat([base[:, :6], base[:, :4] * 2.0], 1))  # rank 6 of 10: no Cholesky factor
    rows = _features(200, 10, 3)
    distances = BlockDistances(FrechetToReference(ref), [_moments(rows[:120]), _moments(rows[120:])])
    assert distances.distance.factor.method == "eigh"
    _, got = distances.without()
    want = FrechetToReference(ref)(_moments(rows))  # the factorization the merged-moments path used
    assert got.raw_value == pytest.approx(want.raw_value, rel=1e-11)
    assert got.method == want.method == "eigh" and got.clipped_mass == pytest.approx(want.clipped_mass, rel=1e-6)


def test_fid_buffers_rows_per_block_and_ships_them_all():
    ref = _moments(_features(600, 8, 4))
    rows = (_features(2 * FLUSH_ROWS + 37, 8, 5) * 0.5).float()
    seeds = list(range(rows.shape[0]))

    def fed(batch: int) -> FID:
        metric = FID(ref, "x", "f", allow_unmatched=True, blocks=4)
        for lo in range(0, rows.shape[0], batch):
            metric.update(Batch(features={"x": {"f": rows[lo : lo + batch]}}, seeds=seeds[lo : lo + batch]))
        return metric

    one, small, big = fed(rows.shape[0]), fed(7), fed(300)
    waiting = sum(small._pending_rows)
    assert waiting > 0  # some rows still wait for their block's GEMM ...
    shipped = small.state()  # ... and the state a shard (or a checkpoint) sends carries them as they are
    assert sum(m.n for m in shipped["blocks_moments"]) + sum(r.shape[0] for r in shipped["pending"]) == rows.shape[0]
    assert sum(small._pending_rows) == waiting and all(r.dtype == torch.float64 for r in shipped["pending"])
    restored = FID(ref, "x", "f", allow_unmatched=True, blocks=4)
    restored.merge_state(shipped)
    assert restored.compute().value == small.compute().value
    half = fed(300)
    other = FID(ref, "x", "f", allow_unmatched=True, blocks=4)
    merged = FID(ref, "x", "f", allow_unmatched=True, blocks=4)
    lo = 500
    merged.update(Batch(features={"x": {"f": rows[:lo]}}, seeds=seeds[:lo]))
    other.update(Batch(features={"x": {"f": rows[lo:]}}, seeds=seeds[lo:]))
    merged.merge(other)  # both sides still hold buffered rows
    results = [m.compute() for m in (one, small, big, half, merged)]
    for r in results[1:]:
        assert r.value == pytest.approx(results[0].value, rel=1e-10)
        assert r.stderr == pytest.approx(results[0].stderr, rel=1e-9)


def test_fid_refuses_an_unknown_infinity_se_method():
    with pytest.raises(InputError, match="unknown FID∞ standard-error method"):
        FID(_moments(_features(40, 3, 6)), "x", "f", infinity_se="jackknife")


def test_float64_features_are_not_modified_by_the_moments():
    rows = _features(50, 4, 7)
    before = rows.clone()
    FeatureMoments().update(rows)
    assert torch.equal(rows, before)


def test_kid_from_whole_kernel_matrices_equals_the_per_subset_kernels(monkeypatch):
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(300, 16, generator=g).abs(), (torch.randn(260, 16, generator=g) * 1.2).abs()
    ids = torch.arange(300) % 6
    whole = kid_with_jackknife(x, y, 25, 120, 7, 6, ids)
    monkeypatch.setattr(kid_module, "KERNEL_CACHE_BYTES", 0)  # force the per-subset kernels
    direct = kid_with_jackknife(x, y, 25, 120, 7, 6, ids)
    assert whole.value == pytest.approx(direct.value, rel=1e-12)
    assert whole.stderr == pytest.approx(direct.stderr, rel=1e-10)
    assert whole.left_out == pytest.approx(direct.left_out, rel=1e-12)
    assert whole.std == pytest.approx(direct.std, rel=1e-10)


def test_symmetric_tiles_give_every_rows_nearest_neighbours():
    z = _features(230, 5, 9)
    d2 = torch.cdist(z, z) ** 2
    tiles = _tiles([0, 100, 230], 64)  # tiles never cross a block boundary
    assert all(lo < hi for lo, hi in tiles) and sorted({lo for lo, _ in tiles}) == [0, 64, 100, 164, 228]
    per_tile = _tile_nearest(z, tiles, 4)
    for t, (lo, hi) in enumerate(tiles):
        want = d2[:, lo:hi].clone()
        want[torch.arange(lo, hi), torch.arange(hi - lo)] = 0.0
        take = min(4, hi - lo)
        torch.testing.assert_close(
            per_tile[:, t, :take], want.topk(take, dim=1, largest=False).values, rtol=1e-9, atol=1e-9
        )
    radii = knn_radii_many(z, [1, 3])
    for k in (1, 3):
        torch.testing.assert_close(radii[k], d2.kthvalue(k + 1, dim=1).values, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(knn_radii(z, k), radii[k], rtol=0, atol=0)

"""Streaming moments and the Fréchet distance: closed forms (THEORY.md §5), invariants, files."""

import numpy as np
import pytest
import torch

from diffeval.core.errors import InputError
from diffeval.metrics import FID, Batch, frechet_distance
from diffeval.stats.moments import FeatureMoments


@pytest.mark.parametrize(
    "mu1, s1, mu2, s2, want",
    [
        ([0.0, 0.0], np.eye(2), [1.0, 1.0], 4 * np.eye(2), 4.0),
        ([0.0], [[1.0]], [1.0], [[4.0]], 2.0),
        ([0.3, -0.2], [[2.0, 0.5], [0.5, 1.0]], [0.3, -0.2], [[2.0, 0.5], [0.5, 1.0]], 0.0),
        ([0.0, 0.0], np.diag([1.0, 0.0]), [0.0, 0.0], np.eye(2), 1.0),
    ],
)
def test_closed_forms(mu1, s1, mu2, s2, want):
    r = frechet_distance(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert r.value == pytest.approx(want, abs=1e-10)


def test_singular_covariance_uses_eigh_fallback():
    r = frechet_distance(torch.zeros(2), torch.diag(torch.tensor([1.0, 0.0])), torch.zeros(2), torch.eye(2))
    assert r.method == "eigh"
    assert r.clipped_mass < 1e-12


def test_identical_rank_deficient_sets_give_zero():
    """N < d (singular covariance): the null space adds no sqrt-of-round-off error."""
    f = torch.randn(20, 50, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 10
    cov = torch.cov(f.T)
    r = frechet_distance(f.mean(0), cov, f.mean(0), cov)
    assert r.method == "eigh"
    assert abs(r.value) < 1e-9 * float(torch.trace(cov))


def test_cholesky_and_eigh_paths_agree_with_scipy_free_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g, dtype=torch.float64)
    b = (
        torch.randn(300, 16, generator=g, dtype=torch.float64)
        @ torch.randn(16, 16, generator=g, dtype=torch.float64)
        * 0.3
        + 0.1
    )
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    r = frechet_distance(a.mean(0), s1, b.mean(0), s2)
    assert r.method == "cholesky"
    # reference: eigenvalues of S1 S2 (general, as torch-fidelity computes it)
    ev = torch.linalg.eigvals(s1 @ s2)
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * ev.sqrt().real.sum())
    assert r.value == pytest.approx(ref, rel=1e-10)


def test_streaming_equals_one_shot_and_merge_equals_single_pass():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(257, 12, generator=g) * 3 + 1
    one = FeatureMoments()
    one.update(f)
    stream = FeatureMoments()
    for chunk in f.split(31):
        stream.update(chunk)
    torch.testing.assert_close(stream.mean, one.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stream.cov, one.cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(one.cov, torch.cov(f.double().T), rtol=1e-10, atol=1e-10)
    a, b = FeatureMoments(), FeatureMoments()
    a.update(f[:100])
    b.update(f[100:])
    merged = a.merge(b)
    assert merged.n == 257
    torch.testing.assert_close(merged.cov, one.cov, rtol=1e-10, atol=1e-10)


def test_npz_round_trip(tmp_path):
    f = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    m = FeatureMoments({"extractor": "x", "layer": "features"})
    m.update(f)
    m.save(tmp_path / "s.npz")
    back = FeatureMoments.load(tmp_path / "s.npz")
    assert back.n == 50 and back.meta == {"extractor": "x", "layer": "features"}
    torch.testing.assert_close(back.mean, m.mean)
    torch.testing.assert_close(back.cov, m.cov)
    np.savez(tmp_path / "nocount.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(InputError, match="no sample count"):
        FeatureMoments.load(tmp_path / "nocount.npz")


def test_fid_metric_refuses_unmatched_counts():
    g = torch.Generator().manual_seed(3)
    ref = FeatureMoments()
    ref.update(torch.randn(40, 3, generator=g))
    metric = FID(ref, "x", "features")
    metric.update(Batch(features={"x": {"features": torch.randn(30, 3, generator=g)}}))
    with pytest.raises(InputError, match="sample counts do not match"):
        metric.compute()
    metric.allow_unmatched = True
    out = metric.compute()
    assert out["matched"] is False and out["n_gen"] == 30 and out["n_ref"] == 40
    with pytest.raises(InputError, match="no layer"):
        metric.update(Batch(features={"x": {"logits": torch.zeros(2, 3)}}))
    with pytest.raises(InputError, match="needs features of extractor"):
        metric.update(Batch(features={"y": {"features": torch.zeros(2, 3)}}))


def test_bad_features():
    m = FeatureMoments()
    with pytest.raises(InputError, match="NaN"):
        m.update(torch.tensor([[1.0, float("nan")]]))
    m.update(torch.zeros(2, 2))
    with pytest.raises(InputError, match="dimension changed"):
        m.update(torch.zeros(2, 3))
    assert m.n == 2  # nothing lost


def test_fid_state_does_not_grow_with_n():
    """Only O(d^2) statistics are kept: the state after 20 batches equals the state after 1 in size."""
    ref = FeatureMoments()
    ref.update(torch.randn(64, 16, generator=torch.Generator().manual_seed(5)))
    metric = FID(ref, "x", "features", allow_unmatched=True)

    def state_numel():
        g = metric.generated
        return sum(t.numel() for t in (g.shift, g.sum, g.sum_outer))

    metric.update(Batch(features={"x": {"features": torch.randn(500, 16)}}))
    first = state_numel()
    for _ in range(19):
        metric.update(Batch(features={"x": {"features": torch.randn(500, 16)}}))
    assert state_numel() == first == 16 + 16 + 16 * 16 and metric.generated.n == 10_000

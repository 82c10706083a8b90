"""FID / IS / KID / CLIP score: closed forms (THEORY.md §5), invariants, parity with torch-fidelity 0.4."""

import math

import numpy as np
import pytest
import torch
from inception_fixture import save_random_inception

from diffeval.core.errors import InputError
from diffeval.data.sources import TensorSource
from diffeval.engine.loop import measure
from diffeval.engine.references import build_reference
from diffeval.features import InceptionV3Extractor
from diffeval.metrics import (
    FID,
    KID,
    Batch,
    InceptionScore,
    clip_score_hessel,
    clip_score_torchmetrics,
    frechet_distance,
    inception_score,
    mmd2_unbiased,
)

N_PARITY = 48


# -- closed forms ------------------------------------------------------------------------
def test_inception_score_closed_forms():
    p = torch.tensor([[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 5, dtype=torch.float64)
    assert inception_score(p.log(), splits=1)[0] == pytest.approx(1.4449348112, abs=1e-9)
    one_hot = torch.full((10, 10), -1e4, dtype=torch.float64).fill_diagonal_(0.0)
    assert inception_score(one_hot, splits=1)[0] == pytest.approx(10.0, abs=1e-9)
    same = torch.randn(1, 7, dtype=torch.float64).expand(20, 7)
    mean, std = inception_score(same, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InputError, match="one sample per split"):
        inception_score(torch.zeros(5, 3), splits=10)


def test_clip_score_conventions():
    cos = torch.tensor([0.3, -0.1, 0.25], dtype=torch.float64)
    assert clip_score_torchmetrics(cos) == pytest.approx(15.0, abs=1e-9)
    assert clip_score_hessel(cos) == pytest.approx(0.4583333333, abs=1e-9)


def test_kid_of_identical_sets_is_near_zero_and_mmd_is_symmetric():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(40, 8, generator=g, dtype=torch.float64),
        torch.randn(40, 8, generator=g, dtype=torch.float64) + 1,
    )
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_unbiased(y, x), rel=1e-12)
    assert mmd2_unbiased(x, y) > 0.5
    # the unbiased estimator of MMD^2(P, P) has mean 0: average over many independent pairs
    vals = [
        mmd2_unbiased(
            torch.randn(30, 8, generator=g, dtype=torch.float64), torch.randn(30, 8, generator=g, dtype=torch.float64)
        )
        for _ in range(200)
    ]
    assert abs(np.mean(vals)) < 4 * np.std(vals) / math.sqrt(len(vals))


def test_fid_sample_size_bias_matches_theory():
    """Two N-sample sets from N(0, I_d): E[FID] ~ d(d+5)/(2N) (THEORY.md §5)."""
    d, n = 8, 400
    g = torch.Generator().manual_seed(1)
    vals = []
    for _ in range(40):
        a, b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
        vals.append(frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)).value)
    assert np.mean(vals) == pytest.approx(d * (d + 5) / (2 * n), rel=0.15)


def test_scipy_118_without_sqrtm_disp(monkeypatch):
    """SciPy 1.18 removed sqrtm's ``disp`` argument (and peers break); diffeval never calls sqrtm."""
    import scipy.linalg

    def sqrtm_118(a, *, blocksize=64):  # the 1.18 signature: no disp
        raise AssertionError("diffeval must not call scipy.linalg.sqrtm")

    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm_118)
    r = frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
    assert r.value == pytest.approx(4.0, abs=1e-12)


# -- streaming invariants ------------------------------------------------------------------
def _batch(features, layer="f", seeds=None):
    return Batch(features={"x": {layer: features}}, seeds=seeds or [])


def test_is_and_kid_streaming_equal_one_shot_and_merge():
    g = torch.Generator().manual_seed(2)
    logits, feats, ref = (
        torch.randn(60, 5, generator=g),
        torch.randn(60, 6, generator=g),
        torch.randn(50, 6, generator=g),
    )
    one_is, one_kid = InceptionScore("x", "f", splits=3), KID(ref, "x", "f", subsets=20, subset_size=25)
    one_is.update(_batch(logits))
    one_kid.update(_batch(feats))
    a_is, b_is = InceptionScore("x", "f", splits=3), InceptionScore("x", "f", splits=3)
    a_kid, b_kid = KID(ref, "x", "f", subsets=20, subset_size=25), KID(ref, "x", "f", subsets=20, subset_size=25)
    for i, (lo, hi) in enumerate(((0, 17), (17, 40), (40, 60))):
        (a_is if i < 2 else b_is).update(_batch(logits[lo:hi]))
        (a_kid if i < 2 else b_kid).update(_batch(feats[lo:hi]))
    assert a_is.merge(b_is).compute().value == pytest.approx(one_is.compute().value, rel=1e-12)
    assert a_kid.merge(b_kid).compute().value == pytest.approx(one_kid.compute().value, rel=1e-12)
    out = KID(ref, "x", "f", subset_size=1000)
    out.update(_batch(feats))
    assert out.compute()["subset_size"] == 50 and out.compute()["subset_size_reduced"] is True


# -- parity with torch-fidelity ------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return save_random_inception(tmp_path_factory.mktemp("weights") / "inception-random.pt")


@pytest.fixture(scope="module")
def image_sets():
    g = torch.Generator().manual_seed(3)
    noise = torch.randint(0, 256, (N_PARITY, 3, 32, 32), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32) * torch.rand(N_PARITY, 3, 1, 1, generator=g)
    smooth = (255 * (0.7 * ramp + 0.3 * torch.rand(N_PARITY, 3, 32, 32, generator=g))).round().to(torch.uint8)
    return noise, smooth


class _UInt8Dataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_parity_with_torch_fidelity(inception_file, image_sets):
    import torch_fidelity

    gen, ref = image_sets
    theirs = torch_fidelity.calculate_metrics(
        input1=_UInt8Dataset(gen),
        input2=_UInt8Dataset(ref),
        cuda=False,
        fid=True,
        isc=True,
        kid=True,
        feature_extractor_weights_path=str(inception_file),
        kid_subset_size=20,
        kid_subsets=50,
        verbose=False,
        cache=False,
        batch_size=16,
    )
    extractor = InceptionV3Extractor(weights=str(inception_file), batch_size=16)
    assert extractor.key.startswith("inception-v3[sha256:")  # a user weight file is named by its hash in every row
    reference = build_reference(
        TensorSource(ref), extractor, moment_layers=["2048"], feature_layers=["2048"], batch_size=16
    )
    metrics = [
        FID(reference.moments["2048"], extractor.key, "2048"),
        InceptionScore(extractor.key, "logits_unbiased"),
        KID(reference.features["2048"], extractor.key, "2048", subsets=50, subset_size=20),
    ]
    out = measure(TensorSource(gen), extractors=[extractor], metrics=metrics, batch_size=16)
    ours = {m.name: out[m.label] for m in metrics}
    fid_theirs, fid_ours = theirs["frechet_inception_distance"], ours["fid"].value
    assert fid_ours > 0
    assert abs(fid_ours - fid_theirs) / fid_theirs <= 1e-6, (fid_ours, fid_theirs)
    assert abs(ours["inception_score"].value - theirs["inception_score_mean"]) / theirs["inception_score_mean"] <= 1e-3
    # torch-fidelity evaluates the KID kernel in float32 (numpy on float32 features); diffeval in float64.
    # End to end the two agree to float32 precision; on the same float64 features, to 1e-6 (the acceptance bar).
    assert (
        abs(ours["kid"].value - theirs["kernel_inception_distance_mean"])
        / abs(theirs["kernel_inception_distance_mean"])
        <= 1e-5
    ), (ours["kid"], theirs)
    from torch_fidelity.metric_kid import kid_features_to_metric

    gen_features = extractor(gen)["2048"].double()
    theirs64 = kid_features_to_metric(
        gen_features, reference.features["2048"].double(), kid_subsets=50, kid_subset_size=20, verbose=False
    )
    assert (
        abs(ours["kid"].value - theirs64["kernel_inception_distance_mean"])
        / abs(theirs64["kernel_inception_distance_mean"])
        <= 1e-6
    )
    assert ours["kid"]["kid_std"] == pytest.approx(theirs64["kernel_inception_distance_std"], rel=1e-6)
    # batch-size independence of the features (and so of every metric)
    again = measure(
        TensorSource(gen),
        extractors=[InceptionV3Extractor(weights=str(inception_file), batch_size=7)],
        metrics=[FID(reference.moments["2048"], extractor.key, "2048")],
        batch_size=5,
    )
    assert next(iter(again.values())).value == pytest.approx(fid_ours, rel=1e-6)


def test_inception_grayscale_is_repeated_and_bad_input_refused(inception_file):
    extractor = InceptionV3Extractor(weights=str(inception_file))
    gray = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(extractor(gray)["2048"], extractor(gray.expand(-1, 3, -1, -1))["2048"])
    with pytest.raises(InputError, match="4 channels"):
        extractor(torch.zeros(2, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"range \[0, 255\]"):
        extractor(torch.full((2, 3, 16, 16), 255.0).index_fill_(0, torch.tensor([0]), 0.0))
    nan = torch.zeros(3, 3, 8, 8)
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        extractor(nan)


def test_fast_inception_mode_is_named_and_close(inception_file, image_sets):
    gen, _ = image_sets
    exact = InceptionV3Extractor(weights=str(inception_file), batch_size=16)
    fast = InceptionV3Extractor(weights=str(inception_file), batch_size=16, fast=True)
    assert exact.name == "inception-v3" and fast.name == "inception-v3-fast"
    a, b = exact(gen[:16])["2048"], fast(gen[:16])["2048"]
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < 0.05  # bf16: close, not exact — that is why it is opt-in and named


def test_cuda_oom_in_feature_extraction_retries_with_smaller_batches(capsys):
    from diffeval.engine.loop import extract_with_retry

    class Flaky:
        name = "flaky"

        def __call__(self, images):
            if images.shape[0] > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return {"f": images.flatten(1).float()}

    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    out = extract_with_retry(Flaky(), images)
    torch.testing.assert_close(out["f"], images.flatten(1).float())
    err = capsys.readouterr().err
    assert "out of memory extracting flaky features for 10 images; retrying in batches of 5" in err


def test_reference_building_goes_through_the_oom_retry(capsys):
    from diffeval.data.sources import TensorSource

    class Flaky:
        name = key = "flaky"
        layers = {"f": 4}

        def __call__(self, images):
            if images.shape[0] > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return {"f": images.flatten(1).double()}

    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    ref = build_reference(TensorSource(images), Flaky(), moment_layers=["f"], feature_layers=["f"], batch_size=10)
    torch.testing.assert_close(ref.features["f"], images.flatten(1).double())
    assert ref.moments["f"].n == 10 and "retrying in batches of 5" in capsys.readouterr().err

"""Beyond Inception: the DINOv2 extractor (FD-DINOv2), CMMD and precision / recall / density / coverage."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch

from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, InputError, WeightsError
from diffeval.features import EXTRACTORS
from diffeval.features.dinov2 import (
    DINOV2_WEIGHTS,
    MEAN,
    STD,
    Dinov2Extractor,
    interpolate_pos_embed,
    to_timm_state_dict,
)
from diffeval.metrics.base import Batch
from diffeval.metrics.cmmd import CMMD, cmmd
from diffeval.metrics.prdc import PRDC, PrdcReference, knn_radii, prdc
from diffeval.run.config import load_config
from diffeval.run.runner import run_config
from diffeval.stats.uncertainty import jackknife_se

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4}


# -- DINOv2 ------------------------------------------------------------------------------------
def _official_state(seed=0):
    """A random DINOv2-shaped state dict in the official file's layout (518 px position grid, mask_token)."""
    import timm

    torch.manual_seed(seed)
    net = timm.create_model("vit_large_patch14_dinov2", pretrained=False, num_classes=0, img_size=518, **TINY)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    for key in state:  # timm zero/one-initializes these: randomize so every parameter matters
        if key.endswith("gamma") or key in ("pos_embed", "cls_token") or (".norm" in key and key.endswith("bias")):
            state[key] = torch.randn(state[key].shape, generator=g) * 0.3
    state["mask_token"] = torch.zeros(1, TINY["embed_dim"])
    return state


@pytest.fixture(scope="module")
def dino_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_tiny.pth"
    torch.save(_official_state(), path)
    return path


def _hf_reference(state):
    """transformers' Dinov2Model (the reference port) with the same weights, built for 224 px; position embeddings
    interpolated as the official DINOv2 code does at run time (bicubic, scale (16 + 0.1) / 37, no antialias)."""
    transformers = pytest.importorskip("transformers")
    d, layers = TINY["embed_dim"], TINY["depth"]
    cfg = transformers.Dinov2Config(
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=TINY["num_heads"],
        intermediate_size=4 * d,
        image_size=224,
        patch_size=14,
        layer_norm_eps=1e-6,
    )
    model = transformers.Dinov2Model(cfg).eval()
    pe = state["pos_embed"]
    grid = pe[:, 1:].reshape(1, 37, 37, d).permute(0, 3, 1, 2)
    pe224 = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")
    hf = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": torch.cat([pe[:, :1], pe224.permute(0, 2, 3, 1).reshape(1, 256, d)], 1),
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(layers):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        q, k, v = state[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[b + "attn.qkv.bias"].chunk(3)
        hf.update(
            {
                h + "attention.q_proj.weight": q,
                h + "attention.q_proj.bias": qb,
                h + "attention.k_proj.weight": k,
                h + "attention.k_proj.bias": kb,
                h + "attention.v_proj.weight": v,
                h + "attention.v_proj.bias": vb,
                h + "attention.o_proj.weight": state[b + "attn.proj.weight"],
                h + "attention.o_proj.bias": state[b + "attn.proj.bias"],
                h + "layer_scale1.lambda1": state[b + "ls1.gamma"],
                h + "layer_scale2.lambda1": state[b + "ls2.gamma"],
            }
        )
        for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for p in ("weight", "bias"):
                hf[f"{h}{name}.{p}"] = state[f"{b}{name}.{p}"]
    try:
        model.load_state_dict(hf, strict=True)
    except RuntimeError as error:  # another transformers layout: this parity check needs the one above
        pytest.skip(f"transformers' Dinov2Model layout differs: {str(error)[:120]}")
    return model


def test_dinov2_features_equal_the_reference_port_on_the_same_weights(dino_weights):
    state = _official_state()
    ours = Dinov2Extractor(weights=dino_weights, arch=TINY)
    reference = _hf_reference(state)
    u8 = torch.randint(0, 256, (4, 3, 60, 45), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    x = torch.nn.functional.interpolate(u8.float(), size=(224, 224), mode="bicubic", antialias=True) / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)  # EDM2's DINOv2 input
    with torch.no_grad():
        theirs = reference(pixel_values=x).pooler_output
    got = ours(u8)["cls"]
    assert got.shape == (4, TINY["embed_dim"]) and ours.layers == {"cls": 64}
    torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-5)
    gray = torch.randint(0, 256, (2, 1, 30, 30), dtype=torch.uint8)
    torch.testing.assert_close(ours(gray)["cls"], ours(gray.expand(-1, 3, -1, -1))["cls"])  # grayscale -> RGB


def test_position_embeddings_are_interpolated_as_dinov2_does_at_run_time():
    pe = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    out = interpolate_pos_embed(pe, 16)
    grid = pe[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, scale_factor=16.1 / 37, mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 256, 8), rtol=0, atol=0)
    assert torch.equal(out[:, :1], pe[:, :1]) and interpolate_pos_embed(out, 16) is out
    with pytest.raises(WeightsError, match="not a square grid"):
        interpolate_pos_embed(torch.zeros(1, 1 + 30, 8), 16)
    with pytest.raises(WeightsError, match="register tokens"):
        to_timm_state_dict({"pos_embed": pe, "cls_token": pe[:, :1], "register_tokens": torch.zeros(1, 4, 8)}, 16)
    with pytest.raises(WeightsError, match="not a DINOv2 ViT state dict"):
        to_timm_state_dict({"fc.weight": torch.zeros(2, 2)}, 16)


def test_dinov2_weights_resolution_fails_closed(tmp_path, monkeypatch, dino_weights):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("DIFFEVAL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("DIFFEVAL_OFFLINE", "1")
    with pytest.raises(WeightsError, match="downloads are off"):
        Dinov2Extractor()
    monkeypatch.delenv("DIFFEVAL_OFFLINE")
    with pytest.raises(WeightsError, match="no pinned SHA-256"):  # never an unverifiable download
        Dinov2Extractor()
    cached = tmp_path / "hub" / "checkpoints" / DINOV2_WEIGHTS.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"0" * 100)
    with pytest.raises(WeightsError, match="wrong size"):
        Dinov2Extractor()
    from diffeval.features.weights import resolve

    right_size = tmp_path / "dir" / DINOV2_WEIGHTS.filename  # size-checked only: found, but not "verified"
    right_size.parent.mkdir()
    with right_size.open("wb") as f:
        f.truncate(DINOV2_WEIGHTS.size)
    monkeypatch.setenv("DIFFEVAL_WEIGHTS_DIR", str(right_size.parent))
    assert resolve(DINOV2_WEIGHTS) == (right_size, False)
    monkeypatch.delenv("DIFFEVAL_WEIGHTS_DIR")
    with pytest.raises(WeightsError, match="not found"):
        Dinov2Extractor(weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="do not fit the DINOv2 ViT network"):
        Dinov2Extractor(weights=dino_weights)  # tiny weights, the published ViT-L/14 shape
    pickle_path = tmp_path / "pickle.pth"
    torch.save({"model": object()}, pickle_path)
    with pytest.raises(WeightsError, match="weights_only"):
        Dinov2Extractor(weights=pickle_path, arch=TINY)


FD_CONFIG = """
[run]
name = "fd"
n = 40
batch_size = 20

[sampler]
factory = "demo"
[sampler.kwargs]
steps = 3

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true

[[metrics]]
name = "fid"
extractor = "dinov2-tiny-test"
weights = "{weights}"
reference = "digits:test"
allow_unmatched = true

[[metrics]]
name = "prdc"
extractor = "dinov2-tiny-test"
weights = "{weights}"
reference = "digits:test"
blocks = 4
"""


def test_fd_dinov2_next_to_another_fid_in_one_pass(tmp_path, dino_weights):
    calls = {"n": 0, "images": 0}

    def tiny(device="cpu", weights=None):
        extractor = Dinov2Extractor(weights=weights, device=device, arch=TINY)
        inner = extractor.__call__

        class Counted(Dinov2Extractor):
            def __call__(self, images):
                calls["n"] += 1
                calls["images"] += images.shape[0]
                return inner(images)

        extractor.__class__ = Counted
        return extractor

    EXTRACTORS.register("dinov2-tiny-test", tiny)
    try:
        path = tmp_path / "fd.toml"
        path.write_text(textwrap.dedent(FD_CONFIG.format(weights=dino_weights)))
        out = run_config(load_config(path), tmp_path / "out")
    finally:
        EXTRACTORS.unregister("dinov2-tiny-test")
    rows = {r["label"]: r for r in out.report.rows}
    fd = [label for label in rows if label.startswith("fid@dinov2-vit-l14")]
    assert len(fd) == 1 and "fid@demo-digits:features" in rows
    assert rows[fd[0]]["stderr"] > 0 and rows[fd[0]]["direction"] == "lower"
    details = json.loads(rows[fd[0]]["details"])
    assert details["feature_space"]["resize"].startswith("bicubic-antialias 224x224")
    for part in ("precision", "recall", "density", "coverage"):
        label = next(label for label in rows if label.startswith(f"{part}@dinov2-vit-l14"))
        assert rows[label]["direction"] == "higher" and 0 <= rows[label]["value"] <= (5 if part == "density" else 1)
    # one network for both metrics, one reference pass: PRDC's 360 reference images, FID's matched n = 40 subset taken
    # from the same pass (it was a pass of its own: 40 + 360 + 40), and one pass over the 40 samples both metrics read
    assert calls["images"] == 360 + 40


# -- CMMD --------------------------------------------------------------------------------------------
def _numpy_cmmd(x, y, sigma=10.0, unbiased=False):
    """CMMD from the paper's formula (Jayasumana et al. 2024, eq. 3 / the reference code), written in NumPy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def gram(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma**2))

    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    if unbiased:
        n, m = len(x), len(y)
        xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        return 1000 * (xx + yy - 2 * kxy.mean())
    return 1000 * (kxx.mean() + kyy.mean() - 2 * kxy.mean())


def _unit(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64) + shift, dim=1)


def test_cmmd_closed_forms():
    x = _unit(30, 8, 1)
    assert cmmd(x, x).value == pytest.approx(0.0, abs=1e-9)  # the reference's (min-variance) estimator
    k = torch.exp(-(torch.cdist(x, x) ** 2) / 200)
    off, everything = (k.sum() - k.trace()) / (30 * 29), k.mean()
    assert cmmd(x, x, estimator="unbiased").value == pytest.approx(float(2000 * (off - everything)), abs=1e-9)
    a, b = torch.full((5, 3), 0.2, dtype=torch.float64), torch.full((7, 3), -0.4, dtype=torch.float64)
    want = 1000 * 2 * (1 - math.exp(-float(((a[0] - b[0]) ** 2).sum()) / (2 * 10.0**2)))
    for estimator in ("min-variance", "unbiased"):
        assert cmmd(a, b, estimator=estimator).value == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("estimator", ["min-variance", "unbiased"])
def test_cmmd_equals_an_independent_numpy_implementation(estimator, monkeypatch):
    x, y = _unit(70, 16, 2, shift=0.2), _unit(50, 16, 3)
    want = _numpy_cmmd(x.numpy(), y.numpy(), unbiased=estimator == "unbiased")
    assert cmmd(x, y, estimator=estimator).value == pytest.approx(want, rel=1e-9)
    monkeypatch.setattr("diffeval.metrics.cmmd._BLOCK_ELEMENTS", 64)  # tiny row blocks: same sums
    assert cmmd(x, y, estimator=estimator).value == pytest.approx(want, rel=1e-9)


def test_cmmd_standard_error_is_the_jackknife_over_seed_blocks():
    x, y = _unit(60, 8, 4, shift=0.5), _unit(40, 8, 5)
    seeds = np.arange(100, 160)
    metric = CMMD(y, "x", "f", blocks=4, sigma=1.0)
    for lo in range(0, 60, 25):
        metric.update(Batch(features={"x": {"f": x[lo : lo + 25]}}, seeds=list(seeds[lo : lo + 25])))
    result = metric.compute()
    assert result.value == pytest.approx(_numpy_cmmd(x.numpy(), y.numpy(), sigma=1.0), rel=1e-9)
    loo = [_numpy_cmmd(x.numpy()[seeds % 4 != b], y.numpy(), sigma=1.0) for b in range(4)]
    assert result["pairing"]["values"] == pytest.approx(loo, rel=1e-9)
    assert result.stderr == pytest.approx(jackknife_se(loo), rel=1e-9)
    assert "min-variance" in result.convention and result.n_gen == 60 and result.n_ref == 40


def _tiny_clip(tmp_path, size):
    open_clip = pytest.importorskip("open_clip")
    name = f"tiny-test-{size}"
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": size, "layers": 1, "width": 32, "patch_size": 112, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder = tmp_path / "clip_configs"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    weights = tmp_path / f"{name}.pt"
    torch.save(open_clip.create_model(name).state_dict(), weights)
    return name, weights


def test_cmmd_cli_on_a_336px_clip_and_refuses_another_size(tmp_path, capsys):
    name, weights = _tiny_clip(tmp_path, 336)
    args = ["cmmd", "digits:test", "digits:train", "--model", name, "--weights", str(weights), "--json"]
    assert main([*args, "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cmmd"] > 0 and out["cmmd_stderr"] > 0 and out["n_gen"] == 360 and out["estimator"] == "min-variance"
    other, other_weights = _tiny_clip(tmp_path, 224)
    args = ["cmmd", "digits:test", "digits:train", "--model", other, "--weights", str(other_weights), "--no-progress"]
    assert main(args) == 2
    assert "CMMD needs a CLIP model with a 336 px input" in capsys.readouterr().err


def test_cmmd_bad_input():
    y = _unit(10, 4, 6)
    metric = CMMD(y, "x", "f")
    with pytest.raises(InputError, match="dimension differs"):
        metric.update(Batch(features={"x": {"f": _unit(5, 3, 7)}}, seeds=list(range(5))))
    with pytest.raises(InputError, match="NaN or inf"):
        CMMD(torch.full((3, 4), float("nan")), "x", "f")
    with pytest.raises(ConfigError, match="unknown CMMD estimator"):
        cmmd(y, y, estimator="biased")
    with pytest.raises(InputError, match="at least 2"):
        cmmd(y[:1], y, estimator="unbiased")


# -- precision, recall, density, coverage ------------------------------------------------------------
def test_prdc_on_hand_made_sets():
    """Reals at 0, 1, 2, 3 (k = 1: every radius is 1); fakes at 0.5 (inside two balls), 2.9 (inside two) and 10."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5], [2.9], [10.0]], dtype=torch.float64)
    out = prdc(fake, real, k_pr=1, k_dc=1)
    # fake radii (k = 1): 0.5 -> 2.4, 2.9 -> 2.4, 10 -> 7.1; every real is within 2.4 of 0.5 or 2.9
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(1.0)
    # density: 0.5 is in the balls of 0 and 1, 2.9 in those of 2 and 3: (2 + 2 + 0) / (1 * 3)
    assert out["density"] == pytest.approx(4 / 3)
    # coverage: nearest fakes 0.5, 0.5, 2.9, 2.9 at distances 0.5, 0.5, 0.9, 0.1 <= 1: all covered
    assert out["coverage"] == pytest.approx(1.0)
    far = prdc(torch.tensor([[100.0], [101.0], [102.0]], dtype=torch.float64), real, k_pr=1, k_dc=1)
    assert (far["precision"], far["recall"], far["density"], far["coverage"]) == (0.0, 0.0, 0.0, 0.0)


def test_ties_count_inside_so_identical_sets_and_duplicates_score_one():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = prdc(x, x, k_pr=3, k_dc=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    masses = torch.cat([torch.zeros(10, 2), torch.ones(10, 2)]).to(torch.float64)  # radii are exactly 0
    dup = prdc(masses, masses, k_pr=3, k_dc=5)  # with a strict '<' every value would be 0
    assert dup["precision"] == dup["recall"] == dup["coverage"] == 1.0
    assert dup["density"] == pytest.approx(10 / 5)  # each fake sits in the 10 zero-radius balls of its mass


def test_identical_gaussians_in_64_dimensions():
    """N(0, I_64) vs N(0, I_64), N = M = 5,000. Naeem et al. 2020 (Sec. 4): E[density] = 1 and
    E[coverage] = 1 - prod_{i<k} (N - 1 - i) / (M + N - 1 - i) (0.9688 here) for identical distributions;
    precision and recall are equal by symmetry (and match torch-fidelity's in the parity test)."""
    g = torch.Generator().manual_seed(11)
    real = torch.randn(5000, 64, generator=g, dtype=torch.float64)
    fake = torch.randn(5000, 64, generator=g, dtype=torch.float64)
    out = prdc(fake, real)
    expected_coverage = 1 - math.prod((4999 - i) / (9999 - i) for i in range(5))
    assert out["density"] == pytest.approx(1.0, abs=0.05)
    assert out["coverage"] == pytest.approx(expected_coverage, abs=0.01)
    assert out["precision"] == pytest.approx(out["recall"], abs=0.03)
    assert 0.5 < out["precision"] < 0.95


def test_precision_recall_equal_torch_fidelity_and_density_coverage_the_prdc_package():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    prdc_package = pytest.importorskip("prdc")
    g = torch.Generator().manual_seed(12)
    real = torch.randn(600, 32, generator=g, dtype=torch.float64)
    fake = torch.randn(500, 32, generator=g, dtype=torch.float64) * 1.1 + 0.05
    ours = prdc(fake, real)
    precision, recall = calculate_precision_recall_full(fake, real, neighborhood=3)  # features_1 = generated
    # torch-fidelity averages in float32: the same counts (500 and 600 samples: steps of 2e-3 and 1.7e-3)
    assert ours["precision"] == pytest.approx(precision, abs=1e-6) and ours["recall"] == pytest.approx(recall, abs=1e-6)
    theirs = prdc_package.compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=5)
    assert ours["density"] == pytest.approx(theirs["density"], rel=1e-12)
    assert ours["coverage"] == pytest.approx(theirs["coverage"], rel=1e-12)
    ours_k5 = prdc(fake, real, k_pr=5)
    assert ours_k5["precision"] == pytest.approx(theirs["precision"], rel=1e-12)
    assert ours_k5["recall"] == pytest.approx(theirs["recall"], rel=1e-12)


def test_blocked_distances_and_radii_equal_the_whole_matrix():
    g = torch.Generator().manual_seed(13)
    real, fake = (
        torch.randn(90, 6, generator=g, dtype=torch.float64),
        torch.randn(70, 6, generator=g, dtype=torch.float64),
    )
    whole = torch.cdist(real, real) ** 2
    want = whole.kthvalue(4, dim=1).values
    assert torch.allclose(knn_radii(real, 3, block_elements=100), want, rtol=1e-9, atol=1e-12)
    ids = torch.arange(70) % 5
    a = prdc(fake, real, block_ids=ids, blocks=5)
    b = prdc(fake, real, block_ids=ids, blocks=5, block_elements=97)
    assert a == b


def test_prdc_standard_errors_are_leave_one_block_out_recomputations():
    g = torch.Generator().manual_seed(14)
    real, fake = (
        torch.randn(80, 5, generator=g, dtype=torch.float64),
        torch.randn(60, 5, generator=g, dtype=torch.float64),
    )
    seeds = np.arange(60)
    metric = PRDC(real, "x", "f", blocks=4)
    metric.update(Batch(features={"x": {"f": fake}}, seeds=list(seeds)))
    result = metric.compute()
    for part in ("precision", "recall", "density", "coverage"):
        loo = [prdc(fake[seeds % 4 != b], real)[part] for b in range(4)]
        assert result.parts[part]["pairing"]["values"] == pytest.approx(loo, abs=1e-12), part
        assert result.parts[part].stderr == pytest.approx(jackknife_se(loo), abs=1e-12), part


def test_saved_reference_keeps_features_and_radii(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(15)
    real = torch.randn(50, 4, generator=g, dtype=torch.float64)
    ref = PrdcReference(real, meta={"extractor": "x"})
    ref.radius(3), ref.radius(5)
    path = ref.save(tmp_path / "ref.npz")
    monkeypatch.setattr("diffeval.metrics.prdc.knn_radii", lambda *a, **k: pytest.fail("radii recomputed"))
    back = PrdcReference.load(path)
    fake = torch.randn(30, 4, generator=g, dtype=torch.float64)
    monkeypatch.undo()
    assert prdc(fake, back) == prdc(fake, real) and back.meta == {"extractor": "x"}


def test_prdc_cli_saves_and_reuses_the_reference(tmp_path, capsys):
    saved = tmp_path / "ref.npz"
    base = ["prdc", "digits:test", "digits:train", "--features", "demo-digits", "--no-progress", "--json"]
    assert main([*base, "--save-reference", str(saved)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["prdc", "digits:test", str(saved), "--features", "demo-digits", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for part in ("precision", "recall", "density", "coverage"):
        assert again[part] == first[part] and first[f"{part}_stderr"] > 0
    with np.load(saved) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta_weights_sha256"] = np.array("0" * 64)  # features saved through other weights
    np.savez(tmp_path / "other.npz", **arrays)
    other = ["prdc", "digits:test", str(tmp_path / "other.npz"), "--features", "demo-digits", "--no-progress"]
    assert main(other) == 2
    assert "computed in another feature space" in capsys.readouterr().err


def test_prdc_bad_input():
    with pytest.raises(InputError, match="k = 5 nearest neighbours needs more samples"):
        PRDC(torch.randn(5, 3, dtype=torch.float64), "x", "f")  # k_dc = 5 needs at least 6 reference samples
    metric = PRDC(torch.randn(20, 3, dtype=torch.float64), "x", "f")
    with pytest.raises(InputError, match="needs more samples"):
        metric.check_count(4)
    with pytest.raises(InputError, match="dimension differs"):
        metric.update(Batch(features={"x": {"f": torch.randn(8, 4)}}, seeds=list(range(8))))
    with pytest.raises(InputError, match="different dimensions"):
        prdc(torch.randn(8, 4, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="NaN or inf"):
        metric.update(Batch(features={"x": {"f": torch.full((8, 3), float("nan"))}}, seeds=list(range(8))))


def test_check_metric_conformance_of_the_new_metrics():
    from diffeval.testing import check_metric

    for cls in (CMMD, PRDC):
        example = cls.example()
        failed = [r for r in check_metric(example.make, example.batches) if r.status != "pass"]
        assert not failed, [(r.name, r.message) for r in failed]

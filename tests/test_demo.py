"""The bundled demo: data, pinned weights, the end-to-end run, reproducible training."""

import json
import pickle

import pytest
import torch

from diffeval.core.errors import ConfigError, InputError, WeightsError
from diffeval.demo import bundle
from diffeval.demo.data import N_HELD_OUT, load_digits
from diffeval.demo.run import DemoConfig, run_demo
from diffeval.demo.train import train_classifier, train_denoiser


def test_digits_data():
    all_ = load_digits("all")
    assert all_.images.shape == (1797, 1, 8, 8) and all_.images.dtype == torch.uint8
    assert sorted(all_.labels.unique().tolist()) == list(range(10))
    test, train = load_digits("test"), load_digits("train")
    assert len(test.images) == N_HELD_OUT and len(train.images) == 1797 - N_HELD_OUT
    assert float(all_.as_float().min()) == -1.0 and float(all_.as_float().max()) == 1.0
    with pytest.raises(ConfigError, match="split"):
        load_digits("validation")


def test_bundled_weights_load_and_classify():
    classifier = bundle.load_classifier()
    test = load_digits("test")
    with torch.no_grad():
        accuracy = (classifier(test.as_float()).argmax(1) == test.labels).float().mean().item()
    assert accuracy > 0.95
    assert isinstance(bundle.load_denoiser(), torch.nn.Module)


def test_corrupted_weight_file_is_refused(tmp_path):
    data = bytearray(bundle.weight_path("denoiser.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "denoiser.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="failed its hash check") as info:
        bundle.load_denoiser(bad, sha256=bundle.WEIGHTS_SHA256["denoiser.pt"])
    assert "Fix:" in str(info.value)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickle_bearing_file_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(WeightsError, match="weights_only=True"):
        bundle.load_denoiser(path, sha256=None)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bundle.weight_path("classifier.pt").read_bytes()[:1000])
    with pytest.raises(WeightsError, match="weights_only=True"):
        bundle.load_classifier(truncated, sha256=None)


def test_random_weight_network_through_the_real_loader(tmp_path):
    from diffeval.demo.networks import DigitsClassifier
    from diffeval.features.weights import sha256_file

    torch.manual_seed(5)
    net = DigitsClassifier()
    path = tmp_path / "classifier.pt"
    torch.save(net.state_dict(), path)
    loaded = bundle.load_classifier(path, sha256=sha256_file(path))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(loaded(x), net.eval()(x))


def test_extractor_rejects_bad_images():
    ex = bundle.DigitsFeatureExtractor()
    with pytest.raises(InputError, match="0-255"):
        ex(torch.full((2, 1, 8, 8), 200.0))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        ex(torch.full((2, 1, 8, 8), 1.5))
    with pytest.raises(InputError, match="wrong size"):
        ex(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    out = ex(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert out["features"].shape == (2, 64) and out["logits"].shape == (2, 10)


def test_demo_end_to_end(tmp_path):
    report, paths = run_demo(DemoConfig(out=tmp_path, steps=20, progress=False))
    frame = report.to_frame().set_index("name")
    fid, untrained, noise = (float(frame.loc[k, "value"]) for k in ("fid", "fid[untrained model]", "fid[pure noise]"))
    assert fid < 0.2 * untrained and fid < 0.2 * noise, (fid, untrained, noise)
    assert int(frame.loc["fid", "n_gen"]) == int(frame.loc["fid", "n_ref"]) == N_HELD_OUT
    assert float(frame.loc["nfe", "value"]) == 20
    for key in ("csv", "json", "md", "samples", "html", "log_snr_png", "xt_histogram_png", "xt_qq_png"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    names = [row["name"] for row in json.loads(paths["json"].read_text())["rows"]]
    assert {"fid", "inception_score", "kid", "bpd", "terminal_snr", "xT_mean"} <= set(names)


def test_demo_is_deterministic_under_seed(tmp_path):
    cfg = DemoConfig(out=tmp_path / "a", n=40, steps=10, progress=False, batch_size=16)
    a, _ = run_demo(cfg)
    b, _ = run_demo(DemoConfig(out=tmp_path / "b", n=40, steps=10, progress=False, batch_size=40))
    fa = a.to_frame().set_index("name").loc["fid"]
    fb = b.to_frame().set_index("name").loc["fid"]
    assert int(fa["n_gen"]) == int(fa["n_ref"]) == 40  # the reference is cut to a seeded subset of 40 held-out digits
    assert float(fa["value"]) == pytest.approx(float(fb["value"]), rel=1e-6)


def test_training_is_reproducible():
    torch.set_num_threads(1)
    try:
        a = train_denoiser(steps=3, batch_size=8, log_every=0).state_dict()
        b = train_denoiser(steps=3, batch_size=8, log_every=0).state_dict()
    finally:
        torch.set_num_threads(2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    c = train_classifier(epochs=1, seed=1)
    d = train_classifier(epochs=1, seed=1)
    for k, v in c.state_dict().items():
        torch.testing.assert_close(v, d.state_dict()[k], rtol=0, atol=0)

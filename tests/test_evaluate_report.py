"""The evaluation loop and reports: batch-size independence, quantization, lossless round-trip."""

import math

import pytest
import torch

from diffeval.core.errors import ConfigError, InputError
from diffeval.core.quantize import to_uint8
from diffeval.diffusion.schedules import linear
from diffeval.engine.loop import evaluate
from diffeval.metrics.fid import FID
from diffeval.report.report import Report, make_row
from diffeval.samplers import CallableSampler, GeneralizedSampler, seeded_noise
from diffeval.stats.moments import FeatureMoments


class PixelFeatures:
    """A stand-in extractor: the flattened uint8 pixels as float features."""

    name = "pixels"
    layers = {"features": 16}
    channels = 1

    def __call__(self, images):
        return {"features": images.flatten(1).double()}


def _reference():
    ref = FeatureMoments()
    ref.update(torch.rand(32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255)
    return ref


def test_fid_is_batch_size_independent():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    torch.nn.init.normal_(net.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    sampler = GeneralizedSampler(net_wrapper(net), linear(), steps=8, eta=1.0)
    values = []
    for batch_size in (1, 5, 32):
        metric = FID(_reference(), "pixels", "features")
        result = evaluate(
            sampler,
            seeds=range(32),
            image_shape=(1, 4, 4),
            extractors=[PixelFeatures()],
            metrics=[metric],
            batch_size=batch_size,
        )
        values.append(result["fid"].value)
        assert result.latency.nfe == 8 and result.latency.batches == math.ceil(32 / batch_size)
    assert values[0] == pytest.approx(values[1], rel=1e-9) and values[0] == pytest.approx(values[2], rel=1e-9)


def net_wrapper(net):
    def model(x, t):
        with torch.no_grad():
            return net(x)

    return model


def test_saturation_is_recorded_and_samples_kept():
    sampler = CallableSampler(lambda noise, cond: noise * 2)
    result = evaluate(sampler, seeds=range(10), image_shape=(1, 4, 4), keep=4, batch_size=3)
    assert result.samples.shape == (4, 1, 4, 4) and result.samples.dtype == torch.uint8
    noise = seeded_noise(range(10), (1, 4, 4))
    assert result.saturation == pytest.approx(float(((2 * noise).abs() > 1).double().mean()), abs=1e-12)
    torch.testing.assert_close(result.samples, to_uint8((2 * noise[:4]).clamp(-1, 1)))


def test_to_uint8_rounding_and_errors():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 2, 2)
    assert to_uint8(x).flatten().tolist() == [0, 64, 128, 255]  # 63.75 -> 64, 127.5 -> 128 (half to even)
    nan = torch.zeros(5, 1, 2, 2)
    nan[3, 0, 1, 1] = math.nan
    nan[4, 0, 0, 0] = math.inf
    with pytest.raises(InputError, match="2 of 5 images non-finite, the first at index 3"):
        to_uint8(nan)
    with pytest.raises(InputError, match=r"look like \[0, 1\] data"):
        to_uint8(torch.rand(4, 1, 2, 2))
    assert to_uint8(torch.ones(1, 1, 2, 2), allow_nonnegative=True).flatten().tolist() == [255] * 4
    with pytest.raises(InputError, match="0-255"):
        to_uint8(torch.full((1, 1, 2, 2), 255.0))
    with pytest.raises(InputError, match="integer dtype"):
        to_uint8(torch.zeros(1, 1, 2, 2, dtype=torch.int32))


def test_evaluate_bad_input():
    sampler = CallableSampler(lambda noise, cond: noise.clamp(-1, 1))
    with pytest.raises(ConfigError, match="no seeds"):
        evaluate(sampler, seeds=[], image_shape=(1, 2, 2))
    with pytest.raises(ConfigError, match="batch size"):
        evaluate(sampler, seeds=[1], image_shape=(1, 2, 2), batch_size=0)
    with pytest.raises(ConfigError, match="needs extractor 'pixels'"):
        evaluate(sampler, seeds=[1], image_shape=(1, 2, 2), metrics=[FID(_reference(), "pixels", "features")])


def test_report_round_trip(tmp_path):
    rows = [
        make_row("fid", "metric", 12.5, n_gen=100, n_ref=100, extractor="x", details={"matched": True}),
        make_row("throughput", "latency", 3.25, stderr=0.5, unit="images/s"),
    ]
    report = Report(rows, {"device": "cpu", "config": {"n": 100}})
    paths = report.write(tmp_path)
    back = Report.load(paths["json"])
    assert back.run_id == report.run_id
    import pandas as pd

    pd.testing.assert_frame_equal(back.to_frame(), report.to_frame())
    with pytest.raises(InputError, match="row kind"):
        make_row("x", "vibes", 1.0)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read report"):
        Report.load(tmp_path / "broken.json")

"""References belong to the run: one extraction pass per (source, extractor), whatever the metrics that share it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from diffeval.demo.bundle import DigitsFeatureExtractor
from diffeval.demo.data import digits_source
from diffeval.engine.references import ReferencePool, build_reference
from diffeval.run.config import MetricSpec, load_config
from diffeval.run.runner import run_config

N_TEST = 360  # images in digits:test


@pytest.fixture
def extracted(monkeypatch):
    """How many images went through the demo extractor, call by call."""
    calls: list[int] = []
    original = DigitsFeatureExtractor.__call__

    def counting(self, images):
        calls.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(DigitsFeatureExtractor, "__call__", counting)
    return calls


def _fast_demo(**run):
    cfg = load_config("demo")
    sampler = replace(cfg.sampler, kwargs={**cfg.sampler.kwargs, "steps": 4})
    return replace(cfg, sampler=sampler, checks=[], **run)


def test_run_demo_extracts_the_reference_once(tmp_path, extracted):
    cfg = _fast_demo()
    outcome = run_config(cfg, tmp_path / "run")
    assert sum(extracted) == cfg.n + N_TEST  # was n + 2 x 360: FID and KID each extracted digits:test
    labels = set(outcome.report.to_frame()["label"])
    assert {"fid@demo-digits:features", "kid@demo-digits:features"} <= labels


def test_fid_kid_and_prdc_on_one_reference_extract_it_once_and_equal_lone_passes(tmp_path, extracted):
    base = _fast_demo(n=100)
    metrics = [m for m in base.metrics if m.name in ("fid", "kid")]
    fid = next(m for m in metrics if m.name == "fid")
    metrics[metrics.index(fid)] = MetricSpec("fid", {**fid.options, "allow_unmatched": False})
    prdc = MetricSpec(
        "prdc",
        {
            "reference": "digits:test",
            "extractor": "demo-digits",
            "layer": None,
            "weights": None,
            "label": None,
            "k_pr": 3,
            "k_dc": 5,
            "blocks": 10,
        },
    )
    cfg = replace(base, metrics=[*metrics, prdc])
    outcome = run_config(cfg, tmp_path / "three")
    # FID wants a seeded subset of 100 of the 360 (matched counts), KID and PRDC all 360: one pass over the union
    assert sum(extracted) == 100 + N_TEST
    rows = {r["label"]: r for r in outcome.report.rows}

    # each metric alone (its own pass, as before references belonged to the run) gives the same value
    alone = {}
    for spec in cfg.metrics:
        extracted.clear()
        out = run_config(replace(cfg, metrics=[spec]), tmp_path / f"alone-{spec.name}")
        alone |= {r["label"]: r for r in out.report.rows if r["kind"] == "metric"}
    for label, row in alone.items():  # FID's subset comes from the union pass: float32 round-off of other batches
        assert rows[label]["value"] == pytest.approx(row["value"], rel=1e-6, abs=1e-9), label
        if row["stderr"] is not None:
            assert rows[label]["stderr"] == pytest.approx(row["stderr"], rel=1e-6, abs=1e-9), label
    assert len(alone) >= 6  # fid, kid and the four prdc rows
    json.dumps(outcome.report.provenance)


def test_the_pool_keeps_each_requests_rows_and_a_lone_request_is_unchanged():
    extractor = DigitsFeatureExtractor()
    source = digits_source("test")
    pool = ReferencePool(batch_size=50)
    subset = pool.request(source, extractor, moments=["features"], n=100, seed=3)
    whole = pool.request(source, extractor, features=["features"])
    assert (subset.n, whole.n, pool.passes) == (100, N_TEST, 0)  # nothing extracted before resolve
    pool.resolve()
    assert (pool.passes, pool.images_extracted) == (1, N_TEST)
    lone = build_reference(source, extractor, moment_layers=["features"], n=100, seed=3, batch_size=50)
    assert subset.indices == lone.indices
    got, want = subset.moments("features"), lone.moments["features"]
    assert got.n == want.n == 100
    # the union pass batches other images together: the float32 extractor's round-off differs (seen: 2e-8)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got.cov, want.cov, rtol=1e-6, atol=1e-6 * float(want.cov.abs().max()))
    assert got.meta == want.meta
    # requests over the same images are fed exactly as a lone request is: equal to the last bit
    pool = ReferencePool(batch_size=50)
    a = pool.request(source, extractor, moments=["features"], n=100, seed=3)
    b = pool.request(source, extractor, features=["features"], n=100, seed=3)
    assert torch.equal(a.moments("features").mean, want.mean) and torch.equal(a.moments("features").cov, want.cov)
    assert pool.passes == 1 and b.features("features").shape == (100, 64)
    features = whole.features("features")
    assert features.shape[0] == N_TEST and features.dtype == torch.float64
    torch.testing.assert_close(features[subset.indices].mean(0), got.mean, rtol=1e-9, atol=1e-12)


def test_a_reference_larger_than_its_source_is_refused_when_asked():
    pool = ReferencePool()
    with pytest.raises(Exception, match="too few images"):
        pool.request(digits_source("test"), DigitsFeatureExtractor(), moments=["features"], n=N_TEST + 1)
    assert pool.passes == 0

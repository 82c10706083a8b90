"""diffeval inside your own code: the Evaluator (images in), warnings Python users see, conformance asserts."""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from dist_helpers import EVALUATOR_METRICS, evaluator_worker

from diffeval import CallableSampler, CheckFailed, DiffevalWarning, Evaluator, evaluate, fid_between
from diffeval.core.errors import InputError
from diffeval.core.seeds import SeedRNG
from diffeval.demo.bundle import demo_sampler
from diffeval.demo.data import load_digits
from diffeval.metrics import FID
from diffeval.run.config import load_config
from diffeval.run.runner import build_metrics
from diffeval.testing import assert_sampler_conforms

PACKAGE = Path(__file__).resolve().parents[1] / "diffeval"


def _samples(sampler, seeds):
    rng = SeedRNG(list(seeds), "cpu")
    return sampler(rng.randn((1, 8, 8)), None, rng=rng)


def _feed(ev, sampler, seeds, batch=40):
    seeds = list(seeds)
    for lo in range(0, len(seeds), batch):
        chunk = seeds[lo : lo + batch]
        ev.update(_samples(sampler, chunk), seeds=chunk, value_range="[-1, 1]")
    return ev


def test_the_evaluator_gives_evaluates_values_standard_errors_and_pairing():
    cfg = load_config("demo")
    specs = [m for m in cfg.metrics if m.name in ("fid", "kid", "inception_score")]
    sampler = demo_sampler(steps=6)
    metrics, extractors = build_metrics(cfg.__class__(**{**cfg.__dict__, "metrics": specs}), None)
    want = evaluate(
        sampler,
        seeds=range(360),
        image_shape=(1, 8, 8),
        extractors=extractors,
        metrics=metrics,
        batch_size=120,
        strict=True,
    ).metrics
    options = [{"name": m.name, **{k: v for k, v in m.options.items() if v is not None}} for m in specs]
    ev = Evaluator(options, reference="digits:test", extractor="demo-digits", n=360, strict=True)
    got = _feed(ev, sampler, range(360), batch=120).compute()  # the batches evaluate() samples and extracts
    assert set(got) == set(want) and len(got) == 3
    for label, r in want.items():
        assert got[label].value == pytest.approx(r.value, rel=1e-9), label
        assert got[label].stderr == pytest.approx(r.stderr, rel=1e-9), label
        assert got[label]["pairing"]["seeds"] == r["pairing"]["seeds"]
        assert got[label]["pairing"]["values"] == pytest.approx(r["pairing"]["values"], rel=1e-9)
    assert got["fid"].value == got["fid@demo-digits:features"].value  # by name or by label


def test_two_gloo_ranks_in_a_users_ddp_loop_equal_one_process(tmp_path):
    out = tmp_path / "ranks.json"
    mp.spawn(evaluator_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank gets the result
    single = _feed(
        Evaluator(EVALUATOR_METRICS, reference="digits:test", extractor="demo-digits", n=64),
        demo_sampler(steps=4),
        range(64),
        batch=16,
    ).compute()
    for label, r in single.items():
        assert ranks[0][label]["value"] == pytest.approx(r.value, rel=1e-9), label
        assert ranks[0][label]["stderr"] == pytest.approx(r.stderr, rel=1e-9), label


def test_shards_merge_and_states_round_trip_to_the_single_pass(tmp_path):
    sampler = demo_sampler(steps=4)
    make = lambda: Evaluator(EVALUATOR_METRICS, reference="digits:test", extractor="demo-digits", n=64)  # noqa: E731
    whole = _feed(make(), sampler, range(64)).compute()
    a, b = _feed(make(), sampler, range(0, 30)), _feed(make(), sampler, range(30, 64))
    torch.save(a.state_dict(), tmp_path / "a.pt")
    restored = make()
    restored.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
    merged = restored.merge(b).compute()
    for label, r in whole.items():
        assert merged[label].value == pytest.approx(r.value, rel=1e-9)
        assert merged[label].stderr == pytest.approx(r.stderr, rel=1e-9)
    with pytest.raises(InputError, match="does not fit these metrics"):
        Evaluator(["inception_score"], extractor="demo-digits").load_state_dict(a.state_dict())


def test_default_seeds_are_a_running_count():
    sampler = demo_sampler(steps=4)
    explicit = _feed(Evaluator(["fid"], reference="digits:test", extractor="demo-digits", n=64), sampler, range(64))
    implicit = Evaluator(["fid"], reference="digits:test", extractor="demo-digits", n=64)
    for lo in range(0, 64, 40):
        implicit.update(_samples(sampler, range(lo, min(lo + 40, 64))), value_range="[-1, 1]")
    assert implicit.compute()["fid"]["pairing"] == explicit.compute()["fid"]["pairing"]


def test_wrong_inputs_are_refused_with_the_fix():
    ev = Evaluator(["inception_score"], extractor="demo-digits")
    digits = load_digits("test").images[:8]
    cases = [
        (digits.float(), None, "float images need their range stated"),
        (digits.float(), "[-1, 1]", "0-255 pixels as floats"),
        (digits.float() / 127.5 - 1, "[0, 1]", r"\[-1, 1\] images"),
        (digits.long(), None, "convert 0-255 integers"),
        (digits[0], None, "NCHW"),
        (digits.float() / 255, "0..1", "unknown value_range"),
    ]
    for images, value_range, message in cases:
        with pytest.raises(Exception, match=message) as info:
            ev.update(images, value_range=value_range)
        assert "Fix:" in str(info.value)
    assert ev.n == 0  # nothing half-fed
    with pytest.raises(InputError, match="one seed per image"):
        ev.update(digits, seeds=[1, 2])
    with pytest.raises(Exception, match="compares with a reference, and the Evaluator has none"):
        Evaluator(["fid"], extractor="demo-digits")


def test_inputs_that_only_look_wrong_warn_and_strict_raises():
    unit = load_digits("test").images[:64].float() / 255  # [0, 1] images stated as [-1, 1]
    ev = Evaluator(["inception_score"], extractor="demo-digits")
    ev.update(unit, value_range="[-1, 1]")
    with pytest.warns(DiffevalWarning, match=r"output_range failed.*look like \[0, 1\] images.*Fix"):
        ev.compute()
    strict = Evaluator(["inception_score"], extractor="demo-digits", strict=True)
    strict.update((unit > 0.5).to(torch.uint8))  # [0, 1] floats cast to uint8: all 0 or 1
    with pytest.raises(CheckFailed, match="every uint8 image is 0 or 1"):
        strict.compute()


def test_evaluate_warns_on_0_255_images_and_strict_raises():
    bad = CallableSampler(lambda noise, cond: (noise.clamp(-1, 1) + 1) * 127.5, name="0-255 sampler")
    with pytest.warns(DiffevalWarning, match=r"output_range failed.*0-255.*Fix"):
        result = evaluate(bad, seeds=range(8), image_shape=(1, 8, 8), batch_size=4)
    assert result.range_check.status == "fail"
    with pytest.raises(CheckFailed, match="0-255"):
        evaluate(bad, seeds=range(8), image_shape=(1, 8, 8), batch_size=4, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(bad, seeds=range(8), image_shape=(1, 8, 8), batch_size=4, strict=None)  # the caller reports it


def test_a_metric_given_images_points_to_the_evaluator():
    ref = load_digits("test").images[:16].flatten(1).double()
    from diffeval.stats.moments import FeatureMoments

    moments = FeatureMoments()
    moments.update(ref)
    with pytest.raises(InputError, match="diffeval.Evaluator"):
        FID(moments, "x", "f").update(torch.zeros(4, 1, 8, 8))


def test_the_api_functions_take_tensors_as_well_as_paths(tmp_path):
    gen, ref = load_digits("train").images[:120], load_digits("test").images[:120]
    np.savez(tmp_path / "gen.npz", arr_0=gen.permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / "ref.npz", arr_0=ref.permute(0, 2, 3, 1).numpy())
    from_paths = fid_between(str(tmp_path / "gen.npz"), str(tmp_path / "ref.npz"), features="demo-digits")
    from_tensors = fid_between(gen, ref, features="demo-digits")
    from_floats = fid_between(gen.float() / 127.5 - 1, ref, features="demo-digits", value_range="[-1, 1]")
    assert from_floats["fid"] == from_tensors["fid"] and from_floats["stderr"] == from_tensors["stderr"]
    # the same images from a file: equal up to the float32 extractor's round-off on other batches
    assert from_tensors["fid"] == pytest.approx(from_paths["fid"], rel=1e-6)
    assert from_tensors["stderr"] == pytest.approx(from_paths["stderr"], rel=1e-5)


def test_no_library_module_prints():
    """Notes go through the `diffeval` logger; only the command line (and the demo's command) writes to streams."""
    allowed = {"cli/main.py", "cli/commands.py", "gate/process.py", "demo/run.py", "demo/train.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_assert_sampler_conforms_names_the_failed_check():
    def noisy(noise, cond=None):  # ignores its noise: the same seeds give other images
        return torch.rand_like(noise) * 2 - 1

    with pytest.raises(AssertionError, match=r"does not conform \(.*seed_determinism"):
        assert_sampler_conforms(CallableSampler(noisy, name="noisy"), image_shape=(1, 8, 8))
    assert_sampler_conforms(demo_sampler(steps=3), image_shape=(1, 8, 8))  # a conforming one passes silently


def test_diffusers_adapters_read_the_image_shape_from_the_models_config():
    pytest.importorskip("diffusers")
    from adapter_helpers import tiny_unet
    from diffusers import DDIMScheduler

    from diffeval.samplers import DiffusersSchedulerSampler

    sampler = DiffusersSchedulerSampler(DDIMScheduler(num_train_timesteps=50), tiny_unet(), num_inference_steps=4)
    assert sampler.describe().image_shape == (1, 8, 8)
    result = evaluate(sampler, seeds=range(4), batch_size=4, strict=None)  # no image_shape given
    assert result.samples.shape == (4, 1, 8, 8)
    with pytest.raises(Exception, match="invalid image_shape"):
        DiffusersSchedulerSampler(DDIMScheduler(num_train_timesteps=50), tiny_unet(), image_shape=(8, 8))

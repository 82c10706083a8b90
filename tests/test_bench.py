"""Latency measurement: structure and honesty of the numbers (no timing is asserted)."""

import json
import math

import pytest
import torch

from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, SamplerError
from diffeval.demo.bundle import demo_sampler
from diffeval.run.bench import format_table, latency_rows, measure_hook_overhead, measure_latency
from diffeval.samplers import StepTimer, seeded_noise


def test_measure_latency_fields():
    r = measure_latency(demo_sampler(steps=4), image_shape=(1, 8, 8), batch_size=3, dtype="bf16", warmup=1, repeats=2)
    assert (r.nfe, r.steps, r.batch_size, r.dtype, r.repeats) == (4, 4, 3, "bf16", 2)
    assert r.step_ms_median > 0 and r.step_ms_iqr >= 0 and r.images_per_s > 0
    assert math.isnan(r.peak_memory_mb)  # CPU: no device allocator to ask
    rows = latency_rows(r)
    assert {row["kind"] for row in rows} == {"latency"} and rows[0]["name"] == "step_latency_ms[bf16,b3]"
    assert "steps" in format_table([r])


def test_warmup_is_excluded_and_every_round_draws_fresh_noise():
    seen = []
    sampler = demo_sampler(steps=2)
    model = sampler.model

    def spy(x, t, *cond):
        seen.append(float(x.sum()))
        return model(x, t, *cond)

    measure_latency(sampler.replace(model=spy), image_shape=(1, 8, 8), batch_size=2, warmup=2, repeats=3)
    first_step_inputs = seen[::2]  # two steps per call
    assert len(first_step_inputs) == 5 and len(set(first_step_inputs)) == 5


def test_timing_modes():
    noise = seeded_noise(range(2), (1, 8, 8))
    for mode, expect_steps in (("step", 3), ("run", 0), ("off", 0)):
        timer = StepTimer(mode)
        demo_sampler(steps=3)(noise, timer=timer)
        assert len(timer.stats.step_s) == expect_steps and timer.stats.nfe == 3
        assert (timer.stats.wall_s > 0) == (mode != "off")
    with pytest.raises(SamplerError, match="timing mode"):
        StepTimer("sometimes")


def test_hook_overhead_measurement_runs():
    o = measure_hook_overhead(demo_sampler(steps=3), image_shape=(1, 8, 8), repeats=2)
    assert o.steps == 3 and o.bare_step_ms > 0 and o.sampler_step_ms > 0 and math.isfinite(o.hook_overhead_pct)


def test_bad_input():
    with pytest.raises(ConfigError, match="dtype"):
        measure_latency(demo_sampler(steps=2), image_shape=(1, 8, 8), dtype="fp8", repeats=1, warmup=0)
    with pytest.raises(ConfigError, match="repeat"):
        measure_latency(demo_sampler(steps=2), image_shape=(1, 8, 8), repeats=0)
    with pytest.raises(SamplerError, match="option 'steps' is too small"):
        demo_sampler(steps=0)


def test_bench_cli_writes_latency_rows(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "demo",
                "--steps",
                "2",
                "--batch-size",
                "1",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "images/s" in out
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    names = {r["name"] for r in rows}
    assert {"step_latency_ms[steps=2,fp32,b1]", "throughput[steps=2,fp32,b2]", "nfe[steps=2,fp32,b1]"} <= names
    assert {r["kind"] for r in rows} == {"latency"}
    assert {r["direction"] for r in rows} == {"lower", "higher"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_cli_cuda_without_gpu(capsys):
    assert main(["bench", "demo", "--device", "cuda", "--steps", "2"]) == 2
    assert "--device cpu" in capsys.readouterr().err

"""Sampler latency baselines (pytest-benchmark): sampler x steps x batch size x dtype.

    python -m pytest benchmarks --benchmark-enable --benchmark-storage=file://reports/benchmarks \\
        --benchmark-save=baseline
    python -m pytest benchmarks --benchmark-enable --benchmark-storage=file://reports/benchmarks \\
        --benchmark-compare=0001 --benchmark-compare-fail=median:10%

Each round draws fresh noise in ``setup`` (not timed), runs the whole sampler call and
synchronizes CUDA before the clock stops. ``extra_info`` carries NFE, the median per-step
latency from the step timer, device, dtype and batch size.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SlowedModel, synchronize

from diffeval.run.bench import _precision
from diffeval.samplers import SeedRNG, StepTimer

SAMPLERS = {"ddim": {"eta": 0.0}, "ddpm": {"eta": 1.0}}


def _run(benchmark, sampler, image_shape, batch, dtype, device, rounds):
    counter = {"seed": 0}

    def setup():
        seeds = range(counter["seed"], counter["seed"] + batch)
        counter["seed"] += batch
        rng = SeedRNG(seeds, device)
        return (rng.randn(tuple(image_shape)), rng), {}

    timers = []

    def target(noise, rng):
        timers.append(StepTimer())
        with _precision(device, dtype), torch.no_grad():
            out = sampler(noise, None, rng=rng, timer=timers[-1])
        synchronize(device)
        return out

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    steps_ms = sorted(timers[-1].stats.step_s)
    benchmark.extra_info.update(
        nfe=timers[-1].stats.nfe,
        step_ms_median=1e3 * steps_ms[len(steps_ms) // 2],
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=dtype,
        batch_size=batch,
        torch=torch.__version__,
    )


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_demo_sampler(benchmark, device, slowdown_ms, kind, steps, batch, dtype):
    from diffeval.demo.bundle import demo_sampler

    sampler = demo_sampler(steps=steps, device=device, **SAMPLERS[kind])
    if slowdown_ms:
        sampler = sampler.replace(model=SlowedModel(sampler.model, slowdown_ms))
    benchmark.group = f"demo digits 8x8 {kind}"
    _run(benchmark, sampler, (1, 8, 8), batch, dtype, device, rounds=5)


CIFAR_CASES = {
    "small": [(width, steps, batch) for width in (32,) for steps in (10,) for batch in (1, 4)],
    "full": [(128, steps, batch) for steps in (10, 50) for batch in (1, 256)],
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("case", range(4))
def test_cifar_unet_ddim(benchmark, device, bench_size, slowdown_ms, case, dtype):
    from unet import cifar_sampler

    cases = CIFAR_CASES[bench_size]
    if case >= len(cases):
        pytest.skip(f"--bench-size {bench_size} has {len(cases)} CIFAR cases")
    width, steps, batch = cases[case]
    sampler = cifar_sampler(steps=steps, width=width, device=str(device))
    if slowdown_ms:
        sampler = sampler.replace(model=SlowedModel(sampler.model, slowdown_ms))
    benchmark.group = f"cifar unet w{width} ddim-{steps} b{batch}"
    _run(benchmark, sampler, (3, 32, 32), batch, dtype, device, rounds=3)

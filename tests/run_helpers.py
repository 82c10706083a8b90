"""Sampler factories for the config-runner tests (importable as ``run_helpers:...``)."""

import torch

from diffeval.samplers import CallableSampler


def noise_sampler(scale: float = 1.0):
    return CallableSampler(lambda noise, cond: (noise * scale).clamp(-1, 1), name="noise", nfe=1, image_shape=(1, 8, 8))


def dying_sampler(die_at_call: int = 2):
    calls = {"n": 0}

    def fn(noise, cond):
        calls["n"] += 1
        if calls["n"] >= die_at_call:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return noise.clamp(-1, 1)

    return CallableSampler(fn, name="dying", nfe=1, image_shape=(1, 8, 8))


def interrupted_sampler():
    calls = {"n": 0}

    def fn(noise, cond):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise KeyboardInterrupt
        return noise.clamp(-1, 1)

    return CallableSampler(fn, name="interrupted", nfe=1, image_shape=(1, 8, 8))


def raising_factory():
    raise ValueError("checkpoint not found: /models/missing.ckpt")


def torch_version():  # keeps torch imported for the helper module
    return torch.__version__


def constant_sampler(level: float = 0.0):
    """Every image is the constant ``level`` (for metrics whose value is known in closed form)."""
    return CallableSampler(
        lambda noise, cond: torch.full_like(noise, level), name="constant", nfe=1, image_shape=(1, 8, 8)
    )


def analytic_sampler(steps: int = 10):
    """The generalized sampler over the exact eps* of N(0, 0.25) data on a 50-step linear schedule (closed-form
    bits/dim).
    """
    from diffeval import schedules
    from diffeval.samplers import GeneralizedSampler

    sch = schedules.linear(T=50)

    def eps_star(z, t):
        ab = sch.alpha_bar[t.long().cpu()].view(-1, 1, 1, 1).to(z.dtype)
        return (1 - ab).sqrt() * z / (ab * 0.25 + (1 - ab))

    return GeneralizedSampler(eps_star, sch, steps=steps, image_shape=(1, 8, 8))


class _Slow:
    """Wraps a sampler and sleeps ``delay_s`` per call (to interrupt a run mid-way in tests)."""

    def __init__(self, inner, delay_s):
        self.inner, self.delay_s = inner, delay_s

    def describe(self):
        return self.inner.describe()

    def __call__(self, noise, cond=None, *, rng=None, timer=None):
        import time

        time.sleep(self.delay_s)
        return self.inner(noise, cond, rng=rng, timer=timer)


def slow_demo(steps: int = 4, delay_s: float = 0.3):
    from diffeval.demo.bundle import demo_sampler

    return _Slow(demo_sampler(steps=steps, eta=1.0), delay_s)


def unit_sampler():
    """A sampler that returns [0, 1] images (the sampler-side range trap)."""
    return CallableSampler(lambda noise, cond: (noise.clamp(-1, 1) + 1) / 2, name="unit", nfe=1, image_shape=(1, 8, 8))


def byte_sampler():
    """A sampler that returns 0-255 values."""

    def fn(noise, cond):
        return (noise.clamp(-1, 1) + 1) * 127.5

    return CallableSampler(fn, name="bytes", nfe=1, image_shape=(1, 8, 8))

"""Sampler factories for the config-runner tests (importable as ``run_helpers:...``)."""

import torch

from diffeval.samplers import CallableSampler


def noise_sampler(scale: float = 1.0):
    sampler = CallableSampler(lambda noise, cond: (noise * scale).clamp(-1, 1), name="noise", nfe=1)
    sampler.image_shape = (1, 8, 8)
    return sampler


def dying_sampler(die_at_call: int = 2):
    calls = {"n": 0}

    def fn(noise, cond):
        calls["n"] += 1
        if calls["n"] >= die_at_call:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return noise.clamp(-1, 1)

    sampler = CallableSampler(fn, name="dying", nfe=1)
    sampler.image_shape = (1, 8, 8)
    return sampler


def interrupted_sampler():
    calls = {"n": 0}

    def fn(noise, cond):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise KeyboardInterrupt
        return noise.clamp(-1, 1)

    sampler = CallableSampler(fn, name="interrupted", nfe=1)
    sampler.image_shape = (1, 8, 8)
    return sampler


def raising_factory():
    raise ValueError("checkpoint not found: /models/missing.ckpt")


def torch_version():  # keeps torch imported for the helper module
    return torch.__version__

"""Samplers: the contract, per-seed noise, and adapters (plain callables, the generalized DDPM/DDIM family)."""

from diffeval.samplers.base import RunStats, Sampler, SeedRNG, StepTimer, check_sampler_output, seeded_noise
from diffeval.samplers.callable import CallableSampler
from diffeval.samplers.generic import PREDICTIONS, GeneralizedSampler, to_x0_eps

__all__ = [
    "CallableSampler",
    "GeneralizedSampler",
    "PREDICTIONS",
    "RunStats",
    "Sampler",
    "SeedRNG",
    "StepTimer",
    "check_sampler_output",
    "seeded_noise",
    "to_x0_eps",
]

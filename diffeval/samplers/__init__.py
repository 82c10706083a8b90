"""Samplers: the contract, per-seed noise, and adapters.

Plain callables (:class:`CallableSampler`), the generalized DDPM/DDIM family
(:class:`GeneralizedSampler`), diffusers pipelines and schedulers
(:mod:`diffeval.samplers.diffusers`) and k-diffusion samplers
(:mod:`diffeval.samplers.kdiffusion`) — the last two import their ecosystem only when used.
"""

from diffeval.samplers.base import RunStats, Sampler, SeedRNG, StepTimer, check_sampler_output, seeded_noise
from diffeval.samplers.callable import CallableSampler
from diffeval.samplers.diffusers import DiffusersPipelineSampler, DiffusersSchedulerSampler
from diffeval.samplers.generic import PREDICTIONS, GeneralizedSampler, to_x0_eps
from diffeval.samplers.kdiffusion import KDiffusionSampler

__all__ = [
    "CallableSampler",
    "DiffusersPipelineSampler",
    "DiffusersSchedulerSampler",
    "KDiffusionSampler",
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

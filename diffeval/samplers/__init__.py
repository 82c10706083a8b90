"""Samplers: the contract (``sampler(noise, cond) -> images in [-1, 1]`` and ``describe()``), and adapters.

May import ``core``, ``diffusion``, ``data`` and ``stats``; never a metric, a check or the engine.

Plain callables (:class:`CallableSampler`), the generalized DDPM/DDIM family
(:class:`GeneralizedSampler`), diffusers pipelines and schedulers
(:mod:`diffeval.samplers.diffusers`) and k-diffusion samplers
(:mod:`diffeval.samplers.kdiffusion`) — the last two import their ecosystem only when used.
"""

from diffeval.core.seeds import SeedRNG, seeded_noise
from diffeval.samplers.base import RunStats, Sampler, SamplerInfo, StepTimer, check_sampler_output, describe
from diffeval.samplers.callable import CallableSampler, as_sampler
from diffeval.samplers.diffusers import DiffusersPipelineSampler, DiffusersSchedulerSampler
from diffeval.samplers.factories import SAMPLER_FACTORIES, build_sampler, import_factory
from diffeval.samplers.generic import GeneralizedSampler
from diffeval.samplers.kdiffusion import KDiffusionSampler

__all__ = [
    "CallableSampler",
    "DiffusersPipelineSampler",
    "DiffusersSchedulerSampler",
    "GeneralizedSampler",
    "KDiffusionSampler",
    "RunStats",
    "SAMPLER_FACTORIES",
    "Sampler",
    "SamplerInfo",
    "SeedRNG",
    "StepTimer",
    "as_sampler",
    "build_sampler",
    "check_sampler_output",
    "describe",
    "import_factory",
    "seeded_noise",
]

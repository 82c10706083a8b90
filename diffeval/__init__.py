"""diffeval: evaluation and diagnostics for diffusion models.

Point it at any sampler (``sampler(noise, cond) -> images in [-1, 1]``) and get
fidelity metrics, likelihood, diagnostics, latency and a report a CI gate can read.
"""

from diffeval import schedules
from diffeval.errors import ConfigError, DiffevalError, InputError, SamplerError, ScheduleError, WeightsError
from diffeval.evaluate import EvaluationResult, evaluate
from diffeval.features import EXTRACTORS, get_extractor, to_uint8
from diffeval.metrics import FID, frechet_distance
from diffeval.report import Report
from diffeval.samplers import CallableSampler, GeneralizedSampler, SeedRNG, seeded_noise
from diffeval.schedules import Schedule
from diffeval.stats import FeatureMoments

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CallableSampler",
    "ConfigError",
    "DiffevalError",
    "EXTRACTORS",
    "EvaluationResult",
    "FID",
    "FeatureMoments",
    "GeneralizedSampler",
    "InputError",
    "Report",
    "SamplerError",
    "Schedule",
    "ScheduleError",
    "SeedRNG",
    "WeightsError",
    "evaluate",
    "frechet_distance",
    "get_extractor",
    "schedules",
    "seeded_noise",
    "to_uint8",
]

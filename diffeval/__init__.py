"""diffeval: evaluation and diagnostics for diffusion models.

Point it at any sampler (``sampler(noise, cond) -> images in [-1, 1]``) and get
fidelity metrics, likelihood, diagnostics, latency and a report a CI gate can read.
"""

from diffeval.api import (
    clip_score_of,
    cmmd_between,
    compute_reference,
    fid_between,
    inception_score_of,
    kid_between,
    prdc_between,
)
from diffeval.core.errors import (
    CheckFailed,
    ConfigError,
    DiffevalError,
    DiffevalWarning,
    ExitCode,
    InputError,
    OutputError,
    SamplerError,
    ScheduleError,
    WeightsError,
)
from diffeval.core.points import sweep_table
from diffeval.core.quantize import to_uint8
from diffeval.core.seeds import SeedRNG
from diffeval.diffusion import schedules
from diffeval.diffusion.schedules import Schedule
from diffeval.engine.loop import EvaluationResult, evaluate, measure
from diffeval.evaluator import Evaluator
from diffeval.features import EXTRACTORS, get_extractor
from diffeval.metrics import FID, METRICS, Metric, MetricResult, frechet_distance, register_metric
from diffeval.report.report import Report
from diffeval.run.monitor import TrainingMonitor
from diffeval.samplers import CallableSampler, GeneralizedSampler, SamplerInfo, seeded_noise
from diffeval.stats.moments import FeatureMoments
from diffeval.version import __version__

__all__ = [
    "__version__",
    "CallableSampler",
    "CheckFailed",
    "DiffevalWarning",
    "Evaluator",
    "TrainingMonitor",
    "ConfigError",
    "DiffevalError",
    "EXTRACTORS",
    "EvaluationResult",
    "ExitCode",
    "FID",
    "FeatureMoments",
    "GeneralizedSampler",
    "InputError",
    "OutputError",
    "METRICS",
    "Metric",
    "MetricResult",
    "Report",
    "SamplerError",
    "SamplerInfo",
    "Schedule",
    "ScheduleError",
    "SeedRNG",
    "WeightsError",
    "evaluate",
    "fid_between",
    "kid_between",
    "cmmd_between",
    "prdc_between",
    "compute_reference",
    "inception_score_of",
    "clip_score_of",
    "sweep_table",
    "frechet_distance",
    "get_extractor",
    "measure",
    "register_metric",
    "schedules",
    "seeded_noise",
    "to_uint8",
]

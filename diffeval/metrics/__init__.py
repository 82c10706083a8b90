"""Metrics: one registered class per metric (the contract is :mod:`diffeval.metrics.base`), over pure functions.

FID (any feature space), Inception Score, KID, CLIP score, CMMD, precision/recall/density/coverage, bits/dim. A
metric streams over the features the engine hands it and is given its reference by the run; it never reads files
or runs a model pass. Importing this package registers the built-in metrics in :data:`METRICS`. May import
``core``, ``diffusion``, ``data``, ``stats``, ``features`` and ``samplers``; never a check, the engine or above.
"""

from diffeval.metrics.base import METRICS, Batch, BuildContext, Metric, MetricExample, MetricResult, register_metric
from diffeval.metrics.bpd import BitsPerDim
from diffeval.metrics.clip_score import CLIPScore, clip_score_hessel, clip_score_torchmetrics
from diffeval.metrics.cmmd import CMMD
from diffeval.metrics.fid import FID, FrechetResult, frechet_distance, trace_sqrt_product
from diffeval.metrics.inception_score import InceptionScore, inception_score
from diffeval.metrics.kid import KID, kernel_inception_distance, mmd2_unbiased
from diffeval.metrics.prdc import PRDC

__all__ = [
    "METRICS",
    "Batch",
    "BitsPerDim",
    "BuildContext",
    "CLIPScore",
    "CMMD",
    "FID",
    "FrechetResult",
    "InceptionScore",
    "KID",
    "Metric",
    "MetricExample",
    "MetricResult",
    "PRDC",
    "clip_score_hessel",
    "clip_score_torchmetrics",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "mmd2_unbiased",
    "register_metric",
    "trace_sqrt_product",
]

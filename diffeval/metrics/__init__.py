"""Metrics: streaming shells (update / compute / merge / reset) over pure functions."""

from diffeval.metrics.base import Batch, Metric
from diffeval.metrics.clip_score import CLIPScore, clip_score_hessel, clip_score_torchmetrics
from diffeval.metrics.fid import FID, FrechetResult, frechet_distance, trace_sqrt_product
from diffeval.metrics.inception_score import InceptionScore, inception_score
from diffeval.metrics.kid import KID, kernel_inception_distance, mmd2_unbiased

__all__ = [
    "Batch",
    "CLIPScore",
    "FID",
    "FrechetResult",
    "InceptionScore",
    "KID",
    "Metric",
    "clip_score_hessel",
    "clip_score_torchmetrics",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "mmd2_unbiased",
    "trace_sqrt_product",
]

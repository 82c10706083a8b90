"""Metrics: streaming shells (update / compute / merge / reset) over pure functions."""

from diffeval.metrics.fid import FID, FrechetResult, frechet_distance, trace_sqrt_product

__all__ = ["FID", "FrechetResult", "frechet_distance", "trace_sqrt_product"]

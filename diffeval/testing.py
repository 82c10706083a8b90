"""Conformance checks any sampler adapter should pass — run them on your own adapter too.

>>> from diffeval.demo.bundle import demo_sampler
>>> [r.status for r in check_sampler(demo_sampler(steps=3), image_shape=(1, 8, 8))]
['pass', 'pass', 'pass', 'pass', 'pass', 'pass']

Checks: ``shape_and_range`` (float NCHW, same N, finite, within [-1, 1]),
``seed_determinism`` (same seeds, same images), ``batch_size_independence``
(seeds drawn together vs in two batches agree to ``atol``), ``nfe_counted``
(``last_run.nfe`` > 0, or equal to ``expected_nfe``), ``schedule_exposed``
(``schedule`` is a diffeval Schedule or None, ``prediction`` in eps/x0/v/None),
``config_reported`` (``config()`` returns a dict of plain values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffeval.checks.base import CheckResult
from diffeval.samplers.base import SeedRNG
from diffeval.schedules import Schedule

__all__ = ["check_sampler", "assert_conforms"]


def _draw(sampler: Any, seeds: Sequence[int], image_shape: Sequence[int], device: str, cond_fn: Callable[[list[int]], Any] | None) -> torch.Tensor:
    rng = SeedRNG(list(seeds), device)
    noise = rng.randn(tuple(image_shape))
    with torch.no_grad():
        return sampler(noise, cond_fn(list(seeds)) if cond_fn else None, rng=rng)


def check_sampler(sampler: Any, *, image_shape: Sequence[int], seeds: Sequence[int] = (0, 1, 2, 3), device: str = "cpu", cond_fn: Callable[[list[int]], Any] | None = None, expected_nfe: int | None = None, atol: float = 1e-4) -> list[CheckResult]:
    """Run the conformance checks; every problem is a failed :class:`CheckResult`, never an exception."""
    seeds = list(seeds)
    results: list[CheckResult] = []

    def attempt(name: str, threshold: str, fn: Callable[[], tuple[bool, float, str]]) -> None:
        try:
            ok, value, message = fn()
        except Exception as error:  # a conformance suite reports, it does not crash
            ok, value, message = False, float("nan"), f"raised {type(error).__name__}: {error}"
        results.append(CheckResult(name, "pass" if ok else "fail", value, threshold, message))

    first: dict[str, torch.Tensor] = {}

    def shape_and_range() -> tuple[bool, float, str]:
        out = _draw(sampler, seeds, image_shape, device, cond_fn)
        first["out"] = out
        ok = tuple(out.shape) == (len(seeds), *image_shape) and out.is_floating_point() and bool(torch.isfinite(out).all()) and float(out.abs().max()) <= 1 + 1e-3
        return ok, float(out.abs().max()), f"output {tuple(out.shape)} {out.dtype}, max |x| {float(out.abs().max()):.4g}"

    def determinism() -> tuple[bool, float, str]:
        again = _draw(sampler, seeds, image_shape, device, cond_fn)
        diff = float((again - first["out"]).abs().max())
        return diff == 0.0, diff, "same seeds, same images" if diff == 0 else f"re-run differs by {diff:.3g}"

    def batch_independence() -> tuple[bool, float, str]:
        half = len(seeds) // 2 or 1
        parts = torch.cat([_draw(sampler, seeds[:half], image_shape, device, cond_fn), _draw(sampler, seeds[half:], image_shape, device, cond_fn)]) if len(seeds) > 1 else first["out"]
        diff = float((parts - first["out"]).abs().max())
        return diff <= atol, diff, f"batches of {half} and {len(seeds) - half} vs one batch of {len(seeds)}: max diff {diff:.3g}"

    def nfe() -> tuple[bool, float, str]:
        run = getattr(sampler, "last_run", None)
        value = float(getattr(run, "nfe", 0) or 0)
        ok = value > 0 if expected_nfe is None else value == expected_nfe
        return ok, value, f"last_run.nfe = {value:g}" + ("" if expected_nfe is None else f" (expected {expected_nfe})")

    def schedule() -> tuple[bool, float, str]:
        sched, pred = getattr(sampler, "schedule", "missing"), getattr(sampler, "prediction", "missing")
        ok = (sched is None or isinstance(sched, Schedule)) and pred in (None, "eps", "x0", "v")
        return ok, float(sched.T) if isinstance(sched, Schedule) else float("nan"), f"schedule {sched!r}, prediction {pred!r}"

    def config() -> tuple[bool, float, str]:
        cfg = sampler.config()
        ok = isinstance(cfg, dict) and all(isinstance(v, (int, float, str, bool, type(None))) for v in cfg.values())
        return ok, float(len(cfg)), f"config() = {cfg}"

    attempt("shape_and_range", "float (N, C, H, W) within [-1, 1]", shape_and_range)
    if "out" in first:
        attempt("seed_determinism", "identical", determinism)
        attempt("batch_size_independence", f"max diff <= {atol:g}", batch_independence)
    attempt("nfe_counted", "> 0" if expected_nfe is None else f"== {expected_nfe}", nfe)
    attempt("schedule_exposed", "Schedule or None; eps/x0/v/None", schedule)
    attempt("config_reported", "dict of plain values", config)
    return results


def assert_conforms(sampler: Any, **kwargs: Any) -> None:
    """:func:`check_sampler`, raising ``AssertionError`` listing every failed check."""
    failed = [r for r in check_sampler(sampler, **kwargs) if r.failed]
    if failed:
        raise AssertionError("sampler does not conform:\n" + "\n".join(str(r) for r in failed))

"""Conformance suites any adapter or metric should pass — run them on your own too.

:func:`check_sampler` (samplers)::

    >>> import torch
    >>> from diffeval import schedules
    >>> from diffeval.samplers import GeneralizedSampler
    >>> sampler = GeneralizedSampler(lambda x, t: 0.1 * x, schedules.cosine(), steps=3)
    >>> [r.status for r in check_sampler(sampler, image_shape=(1, 8, 8))]
    ['pass', 'pass', 'pass', 'pass', 'pass', 'pass']

Checks: ``declaration`` (``describe()`` returns a sound :class:`~diffeval.samplers.SamplerInfo`:
schedule, prediction, model, steps, spacing, visited steps, image shape, plain knobs),
``shape_and_range`` (float NCHW, same N, finite, within [-1, 1]), ``seed_determinism``
(same seeds, same images), ``batch_size_independence`` (seeds drawn together vs in two
batches agree to ``atol``), ``nfe_counted`` (the timer it is passed counts > 0
evaluations, or ``expected_nfe``; one per declared step at least when steps are
declared), ``timer_used`` (the sampler reports into the caller's timer and is not
modified by the call).

:func:`check_metric` (metrics): ``declaration`` (name, direction, options, label),
``streaming_equals_one_shot``, ``merged_shards_equal_single_pass``,
``batch_size_independence``, ``options_round_trip`` (through a TOML config),
``float64_state`` and ``non_finite_refused``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffeval.checks.base import CheckResult
from diffeval.core.errors import DiffevalError
from diffeval.core.seeds import SeedRNG
from diffeval.metrics.base import DIRECTIONS, Batch, Metric, MetricResult
from diffeval.samplers.base import StepTimer, describe

__all__ = ["check_sampler", "assert_sampler_conforms", "assert_conforms", "check_metric", "assert_metric_conforms"]


def _draw(
    sampler: Any,
    seeds: Sequence[int],
    image_shape: Sequence[int],
    device: str,
    cond_fn: Callable[[list[int]], Any] | None,
    timer: StepTimer | None = None,
) -> torch.Tensor:
    rng = SeedRNG(list(seeds), device)
    noise = rng.randn(tuple(image_shape))
    with torch.no_grad():
        return sampler(
            noise, cond_fn(list(seeds)) if cond_fn else None, rng=rng, timer=timer if timer is not None else StepTimer()
        )


def _attempt(results: list[CheckResult], name: str, threshold: str, fn: Callable[[], tuple[bool, float, str]]) -> None:
    try:
        ok, value, message = fn()
    except Exception as error:  # a conformance suite reports, it does not crash
        ok, value, message = False, float("nan"), f"raised {type(error).__name__}: {error}"
    results.append(CheckResult(name, "pass" if ok else "fail", value, threshold, message))


def check_sampler(
    sampler: Any,
    *,
    image_shape: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2, 3),
    device: str = "cpu",
    cond_fn: Callable[[list[int]], Any] | None = None,
    expected_nfe: int | None = None,
    atol: float = 1e-4,
) -> list[CheckResult]:
    """Run the sampler conformance checks; every problem is a failed :class:`CheckResult`, never an exception."""
    seeds = list(seeds)
    results: list[CheckResult] = []
    first: dict[str, Any] = {}

    def declaration() -> tuple[bool, float, str]:
        info = describe(sampler)
        first["info"] = info
        problems = info.problems() + _hidden_declaration(sampler, info)
        summary = f"{info.label()}: schedule {getattr(info.schedule, 'name', None)!r}, prediction {info.prediction!r}"
        return not problems, float(len(problems)), "; ".join(problems) or f"{summary}, steps {info.steps}"

    def shape_and_range() -> tuple[bool, float, str]:
        timer = StepTimer()
        out = _draw(sampler, seeds, image_shape, device, cond_fn, timer)
        first["out"], first["timer"] = out, timer
        ok = (
            tuple(out.shape) == (len(seeds), *image_shape)
            and out.is_floating_point()
            and bool(torch.isfinite(out).all())
            and float(out.abs().max()) <= 1 + 1e-3
        )
        return (
            ok,
            float(out.abs().max()),
            f"output {tuple(out.shape)} {out.dtype}, max |x| {float(out.abs().max()):.4g}",
        )

    def determinism() -> tuple[bool, float, str]:
        again = _draw(sampler, seeds, image_shape, device, cond_fn)
        diff = float((again - first["out"]).abs().max())
        return diff == 0.0, diff, "same seeds, same images" if diff == 0 else f"re-run differs by {diff:.3g}"

    def batch_independence() -> tuple[bool, float, str]:
        half = len(seeds) // 2 or 1
        parts = (
            torch.cat(
                [
                    _draw(sampler, seeds[:half], image_shape, device, cond_fn),
                    _draw(sampler, seeds[half:], image_shape, device, cond_fn),
                ]
            )
            if len(seeds) > 1
            else first["out"]
        )
        diff = float((parts - first["out"]).abs().max())
        tolerance, why = _batch_tolerance(first.get("info"), seeds, half, image_shape, device, atol)
        return (
            diff <= tolerance,
            diff,
            f"batches of {half} and {len(seeds) - half} vs one batch of {len(seeds)}: max diff {diff:.3g} <= {why}",
        )

    def nfe() -> tuple[bool, float, str]:
        timer = first.get("timer") or StepTimer()
        if "timer" not in first:
            _draw(sampler, seeds, image_shape, device, cond_fn, timer)
        value = float(timer.stats.nfe)
        info = first.get("info")
        steps = getattr(info, "steps", None)
        ok = (value > 0 if expected_nfe is None else value == expected_nfe) and (steps is None or value >= steps)
        return (
            ok,
            value,
            f"the caller's timer counted {value:g} evaluations"
            + ("" if expected_nfe is None else f" (expected {expected_nfe})")
            + ("" if steps is None else f", declared steps {steps}"),
        )

    def timer_used() -> tuple[bool, float, str]:
        before = {k: id(v) for k, v in vars(sampler).items() if k != "last_run"} if hasattr(sampler, "__dict__") else {}
        timer = StepTimer()
        _draw(sampler, seeds[:1], image_shape, device, cond_fn, timer)
        after = {k: id(v) for k, v in vars(sampler).items() if k != "last_run"} if hasattr(sampler, "__dict__") else {}
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        ok = timer.stats.nfe > 0 and not changed
        return (
            ok,
            float(len(changed)),
            (
                "reports into the caller's timer; attributes unchanged"
                if ok
                else f"timer nfe {timer.stats.nfe}; attributes changed by the call: {changed}"
            ),
        )

    _attempt(results, "declaration", "describe() -> sound SamplerInfo", declaration)
    _attempt(results, "shape_and_range", "float (N, C, H, W) within [-1, 1]", shape_and_range)
    if "out" in first:
        _attempt(results, "seed_determinism", "identical", determinism)
        threshold = f"max diff <= max(atol {atol:g}, the derived float32 bound)"
        _attempt(results, "batch_size_independence", threshold, batch_independence)
    _attempt(results, "nfe_counted", "> 0" if expected_nfe is None else f"== {expected_nfe}", nfe)
    _attempt(results, "timer_used", "reports into the caller's timer, sampler unchanged", timer_used)
    return _ordered(results)


def _hidden_declaration(sampler: Any, info: Any) -> list[str]:
    """An adapter wrapping an object that states a schedule or a prediction must declare them (or every SNR
    check on it skips, unseen)."""
    wrapped = getattr(sampler, "scheduler", None) or getattr(getattr(sampler, "pipeline", None), "scheduler", None)
    if wrapped is None or not hasattr(wrapped, "config"):
        return []
    problems = []
    if info.schedule is None:
        problems.append(f"wraps {type(wrapped).__name__}, which has a schedule, but declares none")
    if info.prediction is None:
        problems.append(f"wraps {type(wrapped).__name__}, which states its prediction, but declares none")
    return problems


def _ordered(results: list[CheckResult]) -> list[CheckResult]:
    order = [
        "declaration",
        "shape_and_range",
        "seed_determinism",
        "batch_size_independence",
        "nfe_counted",
        "timer_used",
    ]
    return sorted(results, key=lambda r: order.index(r.name))


def _batch_tolerance(
    info: Any, seeds: list[int], half: int, image_shape: Sequence[int], device: str, atol: float
) -> tuple[float, str]:
    """The batch-size tolerance: ``atol``, or the bound derived from the declared model and schedule when larger.

    A float32 network's output depends on the batch it is computed in (different kernels and
    summation orders): measure that difference ``delta`` on the declared model at the first
    visited step. A deterministic sampler passes it on to x0 through ``x0 = (z - sigma eps) / alpha``:
    an error ``delta`` in ``eps_hat`` at step t moves the final image by ``|sigma_s/alpha_s - sigma_t/alpha_t| delta``,
    and the sum over steps telescopes to ``sigma_T/alpha_T = exp(-lambda_T / 2)`` (the VE noise level of
    the first step). The bound is ``4 delta exp(-lambda_T / 2)`` (the factor 4 covers the model's own
    dependence on its input); adapters without a declared model and schedule are held to ``atol``.
    """
    model, schedule = getattr(info, "model", None), getattr(info, "schedule", None)
    if model is None or schedule is None or len(seeds) < 2:
        return atol, f"{atol:g} (atol)"
    indices = [
        i
        for i in getattr(info, "indices", None) or range(schedule.T - 1, -1, -1)
        if bool(torch.isfinite(schedule.log_snr[i]))
    ]
    first = indices[0]
    try:
        rng = SeedRNG(seeds, device)
        x = rng.randn(tuple(image_shape))
        t = torch.full((len(seeds),), float(schedule.model_times[first]), device=x.device)
        with torch.no_grad():
            whole = model(x, t)
            parts = torch.cat([model(x[:half], t[:half]), model(x[half:], t[half:])])
        delta = float((whole - parts).abs().max())
    except Exception:  # a model that needs a condition, or returns something else: no bound to derive
        return atol, f"{atol:g} (atol; no bound derivable from the declared model)"
    amplification = float(torch.exp(-schedule.log_snr[first] / 2))
    bound = 4 * delta * amplification
    if bound <= atol:
        return atol, f"{atol:g} (atol; derived bound {bound:.3g})"
    why = (
        f"{bound:.3g} = 4 x model batch-size difference {delta:.3g} x sigma_T/alpha_T {amplification:.3g} (float32"
        " kernels)"
    )
    return bound, why


def assert_sampler_conforms(sampler: Any, **kwargs: Any) -> None:
    """:func:`check_sampler`, raising ``AssertionError`` that names every failed check (for a pytest of your own
    adapter: ``assert_sampler_conforms(MySampler(...), image_shape=(3, 32, 32))``)."""
    failed = [r for r in check_sampler(sampler, **kwargs) if r.failed]
    if failed:
        names = ", ".join(r.name for r in failed)
        raise AssertionError(f"sampler does not conform ({names}):\n" + "\n".join(str(r) for r in failed))


assert_conforms = assert_sampler_conforms  # the earlier name


# -- metrics ------------------------------------------------------------------------------------------
def _close(a: MetricResult, b: MetricResult, rtol: float) -> tuple[bool, float]:
    if a.parts or b.parts:  # a multi-row metric: every row must agree
        if set(a.parts) != set(b.parts):
            return False, math.inf
        checks = [_close(a.parts[k], b.parts[k], rtol) for k in a.parts]
        return all(ok for ok, _ in checks), max(d for _, d in checks)
    diff = abs(a.value - b.value) / max(abs(b.value), 1e-300) if a.value != b.value else 0.0
    same_se = (a.stderr is None and b.stderr is None) or (
        a.stderr is not None
        and b.stderr is not None
        and (
            math.isclose(a.stderr, b.stderr, rel_tol=max(rtol, 1e-9), abs_tol=1e-12)
            or (math.isnan(a.stderr) and math.isnan(b.stderr))
        )
    )
    return diff <= rtol and same_se and a.n_gen == b.n_gen and a.n_ref == b.n_ref, diff


def _fed(make: Callable[[], Metric], batches: Sequence[Batch]) -> Metric:
    metric = make()
    for batch in batches:
        metric.update(batch)
    return metric


def _poisoned(batch: Batch) -> Batch:
    bad = copy.copy(batch)
    bad.features = {ex: {k: _nan_first(v) for k, v in layers.items()} for ex, layers in batch.features.items()}
    if batch.images is not None and batch.images.is_floating_point():
        bad.images = _nan_first(batch.images)
    return bad


def _nan_first(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    out = t.clone()
    out.view(-1)[0] = float("nan")
    return out


def _state_dtypes(value: Any) -> list[torch.dtype]:
    if torch.is_tensor(value):
        return [value.dtype] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [d for v in value for d in _state_dtypes(v)]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return [d for v in vars(value).values() for d in _state_dtypes(v)]
    return []


def check_metric(make: Callable[[], Metric], batches: Sequence[Batch], *, rtol: float = 1e-9) -> list[CheckResult]:
    """Run the metric conformance checks on ``make()`` fed ``batches`` (at least two); problems are failed results."""
    from diffeval.core.options import validate_options
    from diffeval.core.toml import loads, to_toml

    batches = list(batches)
    results: list[CheckResult] = []
    ref: dict[str, MetricResult] = {}

    def declaration() -> tuple[bool, float, str]:
        metric = make()
        problems = []
        if metric.direction not in DIRECTIONS:
            problems.append(f"direction {metric.direction!r} is not one of {DIRECTIONS}")
        if not isinstance(metric.label, str) or not metric.label:
            problems.append("no label")
        if metric.inputs not in ("samples", "data"):
            problems.append(f"inputs {metric.inputs!r}")
        unknown = set(metric.config_options()) - {o.name for o in metric.options}
        if unknown:
            problems.append(f"config_options() has undeclared keys {sorted(unknown)}")
        return (
            not problems,
            float(len(problems)),
            "; ".join(problems) or f"{metric.label}: {metric.direction} is better",
        )

    def streaming() -> tuple[bool, float, str]:
        ref["stream"] = _fed(make, batches).compute()
        one = _fed(make, [Batch.concat(batches)]).compute()
        ok, diff = _close(ref["stream"], one, rtol)
        return ok, diff, f"{len(batches)} batches vs one: value {ref['stream'].value:.12g} vs {one.value:.12g}"

    def merged() -> tuple[bool, float, str]:
        cut = max(1, len(batches) // 2)
        a, b = _fed(make, batches[:cut]), _fed(make, batches[cut:])
        a.merge_state(b.state())
        ok, diff = _close(a.compute(), ref["stream"], rtol)
        return (
            ok,
            diff,
            f"shards of {cut} and {len(batches) - cut} batches merged through state(): relative difference {diff:.3g}",
        )

    def batch_sizes() -> tuple[bool, float, str]:
        whole = Batch.concat(batches)
        n = len(whole)
        sizes = [1, 2] + [3] * ((n - 3) // 3)
        sizes.append(n - sum(sizes))
        ok, diff = _close(_fed(make, whole.split([s for s in sizes if s > 0])).compute(), ref["stream"], rtol)
        return ok, diff, f"batches of 1, 2, 3, ... vs the original split: relative difference {diff:.3g}"

    def round_trip() -> tuple[bool, float, str]:
        metric = make()
        options = metric.config_options()
        text = to_toml({"name": metric.name, **options}, "[[metrics]]")
        table = dict(loads(text)["metrics"][0])
        table.pop("name")
        back = validate_options(table, type(metric).options, f"metric {metric.name!r}")
        expected = validate_options(
            {k: v for k, v in options.items() if v is not None}, type(metric).options, f"metric {metric.name!r}"
        )
        return (
            back == expected,
            0.0,
            "options survive TOML -> config validation" if back == expected else f"{expected} came back as {back}",
        )

    def float64_state() -> tuple[bool, float, str]:
        metric = _fed(make, batches[:1])
        dtypes = [d for value in metric.state().values() for d in _state_dtypes(value)]  # what a shard ships
        ok = bool(dtypes) and all(d == torch.float64 for d in dtypes)
        return ok, float(len(dtypes)), f"state dtypes {sorted({str(d) for d in dtypes})}"

    def non_finite() -> tuple[bool, float, str]:
        metric = make()
        try:
            metric.update(_poisoned(batches[0]))
            metric.compute()
        except DiffevalError as error:
            return True, 0.0, f"refused: {str(error)[:120]}"
        return False, 1.0, "a NaN input was accepted"

    _attempt(results, "declaration", "direction, label, declared options", declaration)
    _attempt(results, "streaming_equals_one_shot", f"rel diff <= {rtol:g}", streaming)
    if "stream" in ref:
        _attempt(results, "merged_shards_equal_single_pass", f"rel diff <= {rtol:g}", merged)
        _attempt(results, "batch_size_independence", f"rel diff <= {rtol:g}", batch_sizes)
    _attempt(results, "options_round_trip", "TOML round trip", round_trip)
    _attempt(results, "float64_state", "float64", float64_state)
    _attempt(results, "non_finite_refused", "an error", non_finite)
    return results


def assert_metric_conforms(make: Callable[[], Metric], batches: Sequence[Batch], **kwargs: Any) -> None:
    """:func:`check_metric`, raising ``AssertionError`` listing every failed check."""
    failed = [r for r in check_metric(make, batches, **kwargs) if r.failed]
    if failed:
        names = ", ".join(r.name for r in failed)
        raise AssertionError(f"metric does not conform ({names}):\n" + "\n".join(str(r) for r in failed))

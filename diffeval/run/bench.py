"""Sampler latency: per-step latency (median, IQR), images/s, NFE, peak memory — measured honestly.

- Warm-up calls are run first and excluded; each timed call draws fresh noise.
- On CUDA the step timer synchronizes around every step and the call is synchronized
  at both ends: GPU time, not launch time.
- ``dtype`` runs the model under ``torch.autocast`` (bf16/fp16) or plain fp32.
- ``compile=True`` wraps the model in ``torch.compile``; the first call's extra time is
  reported separately as ``compile_s`` and never mixed into the latency.
- :func:`measure_hook_overhead` times the same sampler with the step hook on and off,
  and a bare loop of the same model calls, so the harness's own cost is a number.

Example::

    >>> import torch
    >>> from diffeval import schedules
    >>> from diffeval.samplers import GeneralizedSampler
    >>> sampler = GeneralizedSampler(lambda x, t: torch.zeros_like(x), schedules.cosine(), steps=3)
    >>> r = measure_latency(sampler, image_shape=(1, 8, 8), batch_size=2, warmup=1, repeats=2)
    >>> r.nfe, r.batch_size
    (3, 2)
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from diffeval.core.errors import ConfigError, explain
from diffeval.core.seeds import SeedRNG
from diffeval.engine.loop import resolve_device
from diffeval.report.report import make_row
from diffeval.samplers.base import StepTimer, describe
from diffeval.samplers.callable import as_sampler

__all__ = [
    "LatencyResult",
    "OverheadResult",
    "measure_latency",
    "measure_hook_overhead",
    "latency_rows",
    "bench_grid",
    "bench_config",
    "format_table",
    "DTYPES",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LatencyResult:
    sampler: str
    device: str
    device_name: str
    dtype: str
    batch_size: int
    steps: int
    nfe: int
    step_ms_median: float
    step_ms_iqr: float
    call_ms_median: float
    images_per_s: float
    peak_memory_mb: float
    compile_s: float
    warmup: int
    repeats: int
    torch_version: str


@dataclass(frozen=True)
class OverheadResult:
    steps: int
    bare_step_ms: float  # the model calls alone, in a plain loop
    sampler_off_step_ms: float  # the sampler with the step hook off
    sampler_step_ms: float  # the sampler with per-step timing (the default)
    hook_overhead_pct: float  # (hook on - hook off) / hook off
    harness_overhead_pct: float  # (hook on - bare loop) / bare loop


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _precision(device: torch.device, dtype: str) -> Iterator[None]:
    if dtype not in DTYPES:
        raise ConfigError(
            explain("unknown dtype", expected=" / ".join(DTYPES), got=repr(dtype), fix="use fp32 or bf16")
        )
    if dtype == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[dtype]):
        yield


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _call(
    sampler: Any,
    image_shape: Sequence[int],
    batch_size: int,
    device: torch.device,
    seed: int,
    cond: Any,
    timer: StepTimer,
) -> float:
    rng = SeedRNG(range(seed, seed + batch_size), device)
    noise = rng.randn(tuple(image_shape))
    _sync(device)
    t = time.perf_counter()
    sampler(noise, cond, rng=rng, timer=timer)
    _sync(device)
    return time.perf_counter() - t


def measure_latency(
    sampler: Any,
    *,
    image_shape: Sequence[int],
    batch_size: int = 1,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    compile: bool = False,
    cond: Any = None,
    seed: int = 0,
) -> LatencyResult:
    """Per-step latency, images/s and peak memory of ``sampler`` at one batch size and dtype.

    ``compile=True`` times ``sampler.replace(model=torch.compile(model))`` (the sampler
    must offer ``replace``); the sampler passed in is never modified.
    """
    dev = resolve_device(device)
    sampler = as_sampler(sampler)
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(
            explain(
                "invalid warm-up/repeat counts",
                expected="warmup >= 0 and repeats >= 1",
                got=f"warmup={warmup}, repeats={repeats}",
                fix="use warmup=2, repeats=5",
            )
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            explain("invalid batch size", expected="an integer >= 1", got=repr(batch_size), fix="use batch_size=1")
        )
    compile_s = 0.0
    info = describe(sampler)
    if compile:
        if info.model is None or not callable(getattr(sampler, "replace", None)):
            raise ConfigError(
                explain(
                    "compile needs the sampler's model and a replace() method",
                    expected="a sampler that declares its model and offers replace(model=...)",
                    got=type(sampler).__name__,
                    fix="drop --compile",
                )
            )
        sampler = sampler.replace(model=torch.compile(info.model))
    with _precision(dev, dtype), torch.no_grad():
        first = _call(sampler, image_shape, batch_size, dev, seed, cond, StepTimer()) if (warmup or compile) else None
        for i in range(1, warmup):
            _call(sampler, image_shape, batch_size, dev, seed + i * batch_size, cond, StepTimer())
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        calls, steps_s = [], []
        run = None
        for r in range(repeats):
            timer = StepTimer()
            calls.append(_call(sampler, image_shape, batch_size, dev, seed + (warmup + r) * batch_size, cond, timer))
            run = timer.stats
            steps_s += list(run.step_s)
    call_median = statistics.median(calls)
    if compile and first is not None:
        compile_s = max(first - call_median, 0.0)
    steps = len(run.step_s) if run is not None and run.step_s else int(info.steps or 0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    return LatencyResult(
        sampler=info.label(),
        device=str(dev),
        device_name=_device_name(dev),
        dtype=dtype,
        batch_size=batch_size,
        steps=steps,
        nfe=int(run.nfe) if run is not None else 0,
        step_ms_median=1e3 * _percentile(steps_s, 0.5) if steps_s else float("nan"),
        step_ms_iqr=1e3 * (_percentile(steps_s, 0.75) - _percentile(steps_s, 0.25)) if steps_s else float("nan"),
        call_ms_median=1e3 * call_median,
        images_per_s=batch_size / call_median,
        peak_memory_mb=peak,
        compile_s=compile_s,
        warmup=warmup,
        repeats=repeats,
        torch_version=torch.__version__,
    )


def measure_hook_overhead(
    sampler: Any,
    *,
    image_shape: Sequence[int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 20,
    dtype: str = "fp32",
) -> OverheadResult:
    """Per-step cost of the sampler with the step hook on vs off, and of a bare loop of the same model calls.

    Needs a sampler that declares its model, schedule and visited steps (``indices``).
    """
    dev = resolve_device(device)
    info = describe(sampler)
    if info.model is None or info.schedule is None or info.indices is None:
        raise ConfigError(
            explain(
                "the hook overhead needs the sampler's model, schedule and visited steps",
                expected="a sampler whose describe() declares model, schedule and indices",
                got=info.name,
                fix="measure it on the generalized sampler, or drop --overhead",
            )
        )
    model, steps = info.model, len(info.indices)
    times = info.schedule.model_times[list(info.indices)].tolist()
    x = SeedRNG(range(batch_size), dev).randn(tuple(image_shape))
    t_vecs = [torch.full((batch_size,), t, device=dev, dtype=torch.float32) for t in times]

    def bare() -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for t in t_vecs:
            model(x, t)
        _sync(dev)
        return time.perf_counter() - t0

    def with_timer(mode: str) -> float:
        return _call(sampler, image_shape, batch_size, dev, 0, None, StepTimer(mode))

    with _precision(dev, dtype), torch.no_grad():
        for _ in range(2):  # warm-up
            bare(), with_timer("off"), with_timer("step")
        # interleave the three so drifts in machine load hit all of them alike
        b, off, on = [], [], []
        for _ in range(repeats):
            b.append(bare())
            off.append(with_timer("off"))
            on.append(with_timer("step"))
    b_ms, off_ms, on_ms = (1e3 * statistics.median(v) / steps for v in (b, off, on))
    return OverheadResult(steps, b_ms, off_ms, on_ms, 100 * (on_ms - off_ms) / off_ms, 100 * (on_ms - b_ms) / b_ms)


def latency_rows(result: LatencyResult, name_suffix: str = "") -> list[dict[str, Any]]:
    """Report rows (kind ``latency``) for one measurement."""
    details = {k: v for k, v in asdict(result).items() if not (isinstance(v, float) and math.isnan(v))}
    tag = name_suffix or f"[{result.dtype},b{result.batch_size}]"
    return [
        make_row(
            f"step_latency_ms{tag}",
            "latency",
            result.step_ms_median,
            unit="ms",
            sampler=result.sampler,
            details={**details, "statistic": "median", "iqr_ms": result.step_ms_iqr},
            direction="lower",
        ),
        make_row(
            f"throughput{tag}",
            "latency",
            result.images_per_s,
            unit="images/s",
            sampler=result.sampler,
            details=details,
            direction="higher",
        ),
        make_row(f"nfe{tag}", "latency", result.nfe, unit="evals/sample", sampler=result.sampler, direction="lower"),
        *(
            [
                make_row(
                    f"peak_memory_mb{tag}",
                    "latency",
                    result.peak_memory_mb,
                    unit="MiB",
                    sampler=result.sampler,
                    direction="lower",
                )
            ]
            if not math.isnan(result.peak_memory_mb)
            else []
        ),
    ]


def bench_grid(
    make_sampler: Any,
    *,
    image_shape: Sequence[int],
    steps: Sequence[int],
    batch_sizes: Sequence[int],
    dtypes: Sequence[str],
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    compile: bool = False,
) -> list[LatencyResult]:
    """:func:`measure_latency` over steps x batch size x dtype; ``make_sampler(steps)`` builds a fresh sampler."""
    results = []
    for n_steps in steps:
        for batch in batch_sizes:
            for dtype in dtypes:
                results.append(
                    measure_latency(
                        make_sampler(n_steps),
                        image_shape=image_shape,
                        batch_size=batch,
                        dtype=dtype,
                        device=device,
                        warmup=warmup,
                        repeats=repeats,
                        compile=compile,
                    )
                )
    return results


def bench_config(
    cfg: Any,
    *,
    steps: Sequence[int],
    batch_sizes: Sequence[int],
    dtypes: Sequence[str],
    warmup: int = 2,
    repeats: int = 5,
    compile: bool = False,
    overhead: bool = False,
) -> tuple[list[LatencyResult], OverheadResult | None, list[dict[str, Any]]]:
    """The latency grid of a config's sampler (rebuilt per step count), optionally the hook overhead; returns results
    and
    report rows.
    """
    from diffeval.run.subjects import build_subject

    subject = build_subject(cfg)
    if subject.make is None:
        raise ConfigError(
            explain(
                "bench needs a sampler",
                expected="a config with [sampler]",
                got="a [schedule] (checks-only) config",
                fix="bench a config that names a sampler",
            )
        )
    shape = cfg.image_shape or subject.info.image_shape
    if shape is None:
        raise ConfigError(
            explain(
                "image shape unknown",
                expected="[run] image_shape = [C, H, W] or a sampler that declares it",
                got="neither",
                fix="add image_shape to [run]",
            )
        )

    def make(n_steps: int) -> Any:
        return subject.make({"steps": n_steps})

    results = bench_grid(
        make,
        image_shape=shape,
        steps=steps,
        batch_sizes=batch_sizes,
        dtypes=dtypes,
        device=cfg.device,
        warmup=warmup,
        repeats=repeats,
        compile=compile,
    )
    rows = [row for r in results for row in latency_rows(r, f"[steps={r.steps},{r.dtype},b{r.batch_size}]")]
    measured = None
    if overhead:
        measured = measure_hook_overhead(make(steps[0]), image_shape=shape, batch_size=1, device=cfg.device)
        rows.append(
            make_row(
                "step_hook_overhead_pct",
                "latency",
                measured.hook_overhead_pct,
                unit="%",
                details=asdict(measured),
                direction="lower",
            )
        )
    return results, measured, rows


def format_table(results: Sequence[LatencyResult]) -> str:
    """A fixed-width table: steps, batch, dtype, NFE, step ms (median, IQR), images/s, peak MiB, compile s."""
    head = (
        f"{'steps':>5} {'batch':>5} {'dtype':>5} {'NFE':>4} {'step ms':>9} {'IQR ms':>8} {'call ms':>9}"
        f" {'images/s':>10} {'peak MiB':>9} {'compile s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        peak = "" if math.isnan(r.peak_memory_mb) else f"{r.peak_memory_mb:.0f}"
        lines.append(
            f"{r.steps:>5} {r.batch_size:>5} {r.dtype:>5} {r.nfe:>4} {r.step_ms_median:>9.3f} {r.step_ms_iqr:>8.3f}"
            f" {r.call_ms_median:>9.2f} {r.images_per_s:>10.1f} {peak:>9} {r.compile_s:>9.2f}"
        )
    if results:
        lines.append(
            f"device: {results[0].device} ({results[0].device_name}), torch {results[0].torch_version}, warm-up"
            f" {results[0].warmup}, repeats {results[0].repeats}"
        )
    return "\n".join(lines)

"""The sampler contract, declared in full, and the step timer the harness passes in.

Contract::

    sampler(noise, cond=None, *, rng=None, timer=None) -> images
    sampler.describe() -> SamplerInfo

- ``noise``: unit N(0, I) noise (N, C, H, W); ``images``: float (N, C, H, W) in [-1, 1].
- ``rng``: a :class:`~diffeval.core.seeds.SeedRNG` over the batch's seeds, for every noise
  injection (so a sample depends on its seed only).
- ``timer``: a :class:`StepTimer` the *caller* owns; the sampler reports its steps and
  network evaluations into it. The harness reads timings from its own timer and never
  sets attributes on a sampler.
- :meth:`describe` returns a :class:`SamplerInfo`: everything the harness reads about a
  sampler (its name and knobs for reports, schedule, prediction type, model, steps,
  spacing, visited training steps, image shape, guidance). A field a sampler cannot
  know is None, and the checks that need it are reported as skipped.

A plain function ``fn(noise, cond) -> images`` is wrapped by
:func:`diffeval.samplers.callable.as_sampler`.
Built-in samplers also keep ``last_run`` (the :class:`RunStats` of their latest call)
for interactive use; the harness does not rely on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.core.errors import SamplerError, explain
from diffeval.core.seeds import SeedRNG, seeded_noise

__all__ = [
    "Sampler",
    "SamplerInfo",
    "SeedRNG",
    "seeded_noise",
    "StepTimer",
    "RunStats",
    "check_sampler_output",
    "TIMINGS",
    "describe",
]

_PLAIN = (int, float, str, bool, type(None))


@dataclass(frozen=True)
class SamplerInfo:
    """What the harness reads about a sampler (one described object).

    Attributes:
        name: a short name for reports (``generalized``, ``diffusers:DDIMPipeline``, ...).
        knobs: the sampler's settings as plain values (reported in every row, swept by configs).
        schedule: the training schedule (:class:`~diffeval.diffusion.schedules.Schedule`) or None.
        prediction: ``eps``, ``x0``, ``v`` or None.
        model: ``model(x_t, t, *cond) -> prediction`` in the schedule's model time, or None.
        steps: sampling steps per call, or None.
        spacing: timestep spacing (``trailing``, ``leading``, ``linspace``) or None.
        indices: 0-based training steps visited, first (noisiest) first, or None.
        image_shape: ``(C, H, W)`` of the noise it takes, or None.
        guidance: True when ``guidance_scale`` is one of its knobs (classifier-free guidance).
    """

    name: str
    knobs: dict[str, Any] = field(default_factory=dict)
    schedule: Any = None
    prediction: str | None = None
    model: Any = None
    steps: int | None = None
    spacing: str | None = None
    indices: tuple[int, ...] | None = None
    image_shape: tuple[int, ...] | None = None
    guidance: bool = False

    def label(self) -> str:
        """``name`` and knobs in one line, for report rows."""
        knobs = ", ".join(f"{k}={v}" for k, v in self.knobs.items())
        return f"{self.name} ({knobs})" if knobs else self.name

    def problems(self) -> list[str]:
        """What is wrong with this declaration (empty when it is sound): used by
        :func:`diffeval.testing.check_sampler`.
        """
        from diffeval.diffusion.denoiser import PREDICTIONS
        from diffeval.diffusion.schedules import SPACINGS, Schedule

        out = []
        if not isinstance(self.name, str) or not self.name:
            out.append(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.knobs, dict) or not all(
            isinstance(k, str) and isinstance(v, _PLAIN) for k, v in self.knobs.items()
        ):
            out.append(f"knobs must map names to plain values (int, float, str, bool, None), got {self.knobs!r}")
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            out.append(f"schedule must be a diffeval Schedule or None, got {type(self.schedule).__name__}")
        if self.prediction is not None and self.prediction not in PREDICTIONS:
            out.append(f"prediction must be one of {PREDICTIONS} or None, got {self.prediction!r}")
        if self.model is not None and not callable(self.model):
            out.append(f"model must be callable or None, got {type(self.model).__name__}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            out.append(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            out.append(f"spacing must be one of {SPACINGS} or None, got {self.spacing!r}")
        if self.indices is not None:
            ok = all(isinstance(i, int) for i in self.indices)
            if not ok or (
                isinstance(self.schedule, Schedule) and any(not 0 <= i < self.schedule.T for i in self.indices)
            ):
                out.append(f"indices must be training steps in [0, T) of the schedule, got {self.indices[:5]!r}...")
        if self.image_shape is not None and (
            len(self.image_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in self.image_shape)
        ):
            out.append(f"image_shape must be (C, H, W) positive integers or None, got {self.image_shape!r}")
        if self.guidance and "guidance_scale" not in self.knobs:
            out.append("guidance=True but no guidance_scale among the knobs")
        return out


@dataclass
class RunStats:
    """What one sampler call cost: network evaluations per sample and per-step wall times."""

    nfe: int = 0
    step_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    batch_size: int = 0
    x0_outside: float = float(
        "nan"
    )  # fraction of x0_hat values beyond [-1.1, 1.1] before clipping, at steps with SNR >= 1


TIMINGS = ("step", "run", "off")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Records the per-step wall time and NFE of one sampler call; the caller creates it and reads :attr:`stats`.

    ``mode``: ``step`` (default) synchronizes CUDA before and after each step, so a step's
    time is the GPU's time, not the kernel-launch time; ``run`` synchronizes only at the
    start and end of a call (no per-step stalls: for throughput at scale; ``step_s`` stays
    empty); ``off`` records nothing but NFE (to measure the hook's own overhead).
    """

    def __init__(self, mode: str = "step") -> None:
        if mode not in TIMINGS:
            raise SamplerError(
                explain(
                    "unknown timing mode",
                    expected=" / ".join(TIMINGS),
                    got=repr(mode),
                    fix="use 'step' for per-step latency, 'run' for throughput",
                )
            )
        self.mode = mode
        self.stats = RunStats()
        self._device = torch.device("cpu")
        self._t0 = 0.0
        self._t_step = 0.0

    def start(self, device: torch.device, batch_size: int) -> None:
        self._device = torch.device(device)
        self.stats = RunStats(batch_size=batch_size)
        if self.mode != "off":
            _synchronize(self._device)
            self._t0 = time.perf_counter()

    def begin_step(self) -> None:
        """Mark the start of a step (for loops driven by someone else's callbacks)."""
        if self.mode == "step":
            _synchronize(self._device)
            self._t_step = time.perf_counter()

    def end_step(self) -> None:
        """Mark the end of the step begun last."""
        if self.mode == "step":
            _synchronize(self._device)
            self.stats.step_s.append(time.perf_counter() - self._t_step)

    @contextmanager
    def step(self) -> Iterator[None]:
        self.begin_step()
        yield
        self.end_step()

    def count_nfe(self, n: int = 1) -> None:
        """Add ``n`` network evaluations (per sample)."""
        self.stats.nfe += n

    def stop(self) -> RunStats:
        if self.mode != "off":
            _synchronize(self._device)
            self.stats.wall_s = time.perf_counter() - self._t0
        return self.stats


@runtime_checkable
class Sampler(Protocol):
    """``sampler(noise, cond=None, *, rng=None, timer=None) -> images`` in [-1, 1], and ``describe()``."""

    def __call__(
        self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None, timer: StepTimer | None = None
    ) -> torch.Tensor: ...

    def describe(self) -> SamplerInfo: ...


def describe(sampler: Any) -> SamplerInfo:
    """``sampler.describe()``, checked to be a :class:`SamplerInfo` (a clear error otherwise)."""
    fn = getattr(sampler, "describe", None)
    if not callable(fn):
        raise SamplerError(
            explain(
                f"{type(sampler).__name__} does not describe itself",
                expected="a describe() -> SamplerInfo method (the sampler contract)",
                got="no describe()",
                fix="wrap a plain function with diffeval.samplers.CallableSampler, or add describe()",
            )
        )
    info = fn()
    if not isinstance(info, SamplerInfo):
        raise SamplerError(
            explain(
                f"{type(sampler).__name__}.describe() returned the wrong type",
                expected="a diffeval.samplers.SamplerInfo",
                got=type(info).__name__,
                fix="return SamplerInfo(name=..., knobs=...)",
            )
        )
    return info


def check_sampler_output(images: object, noise: torch.Tensor, who: str) -> torch.Tensor:
    """Validate a sampler's output: a float tensor with the noise's batch size, all finite."""
    if not torch.is_tensor(images):
        raise SamplerError(
            explain(
                f"{who} returned no tensor",
                expected="a torch.Tensor (N, C, H, W)",
                got=type(images).__name__,
                fix="return the images as a tensor",
            )
        )
    if images.ndim != 4 or images.shape[0] != noise.shape[0]:
        raise SamplerError(
            explain(
                f"{who} returned images of the wrong shape",
                expected=f"(N={noise.shape[0]}, C, H, W)",
                got=f"{tuple(images.shape)}",
                fix="return one NCHW image per noise sample",
            )
        )
    if not images.is_floating_point():
        raise SamplerError(
            explain(
                f"{who} returned non-float images",
                expected="float images in [-1, 1]",
                got=str(images.dtype),
                fix="return images as x / 127.5 - 1",
            )
        )
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).sum())
        raise SamplerError(
            explain(
                f"{who} returned non-finite images",
                expected="finite values",
                got=f"NaN/inf in {bad} of {images.shape[0]} samples",
                fix="check the model for NaN (learning rate, fp16 overflow) and the schedule endpoints",
            )
        )
    return images

"""The sampler contract, per-seed noise and the step timer.

Contract (one line): ``sampler(noise, cond=None, *, rng=None) -> images`` — unit N(0, I)
noise in (N, C, H, W), float images in [-1, 1] out, same N. A sampler exposes
``schedule`` (a :class:`diffeval.schedules.Schedule` or None), ``prediction``
(``"eps"``, ``"x0"``, ``"v"`` or None), ``model`` (or None), ``last_run`` (a
:class:`RunStats` of its latest call) and ``config()`` (its knobs, for reports).

Noise comes from one random generator per sample (:class:`SeedRNG`), so a sample
depends on its seed only, never on the batch it was drawn in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.errors import SamplerError, explain

__all__ = ["Sampler", "SeedRNG", "seeded_noise", "StepTimer", "RunStats", "check_sampler_output", "TIMINGS"]


@runtime_checkable
class Sampler(Protocol):
    """``sampler(noise, cond=None, *, rng=None) -> images`` in [-1, 1]."""

    schedule: Any
    prediction: str | None
    model: Any
    last_run: RunStats | None

    def __call__(self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None) -> torch.Tensor: ...

    def config(self) -> dict[str, Any]: ...


_MAX_SEED = 2**63 - 1


class SeedRNG:
    """One ``torch.Generator`` per sample, seeded with that sample's seed.

    ``randn``/``randn_like`` draw each sample's slice from its own generator, so the
    initial noise and every noise injection of a stochastic sampler depend on the
    seed alone (EDM's stacked-generator idea). Same seeds give the same noise on the
    same device type.

    >>> rng = SeedRNG([0, 1], device="cpu")
    >>> rng.randn((1, 2, 2)).shape
    torch.Size([2, 1, 2, 2])
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu") -> None:
        seeds = list(seeds)
        for s in seeds:
            if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= _MAX_SEED:
                raise SamplerError(
                    explain("invalid seed", expected=f"integers in [0, {_MAX_SEED}]", got=repr(s), fix="pass non-negative integer seeds")
                )
        if not seeds:
            raise SamplerError(explain("no seeds given", expected="at least one seed", got="[]", fix="pass seeds=range(n)"))
        self.seeds = seeds
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Noise of shape ``(len(seeds), *shape)``, drawn in float32 then cast to ``dtype``."""
        draws = [torch.randn(tuple(shape), generator=g, device=self.device, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(dtype)

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draws of shape ``(len(seeds), *shape)``, one generator per sample."""
        draws = [torch.rand(tuple(shape), generator=g, device=self.device, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise SamplerError(
                explain(
                    "batch size does not match the number of seeds",
                    expected=f"{len(self.generators)} samples",
                    got=f"{x.shape[0]}",
                    fix="draw noise and rng from the same seeds",
                )
            )
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


def seeded_noise(
    seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit Gaussian noise ``(len(seeds), *shape)``, one generator per seed."""
    return SeedRNG(seeds, device).randn(shape, dtype)


@dataclass
class RunStats:
    """What one sampler call cost: network evaluations per sample and per-step wall times."""

    nfe: int = 0
    step_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    batch_size: int = 0
    x0_outside: float = float("nan")  # fraction of x0_hat values beyond [-1.1, 1.1] before clipping, at steps with SNR >= 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TIMINGS = ("step", "run", "off")


class StepTimer:
    """Records per-step wall time and NFE of a sampler run.

    ``mode``: ``step`` (default) synchronizes CUDA before and after each step, so a
    step's time is the GPU's time, not the kernel-launch time; ``run`` synchronizes only
    at the start and end of a call (no per-step stalls: for throughput at scale;
    ``step_s`` stays empty); ``off`` records nothing but NFE (to measure the hook's
    own overhead).
    """

    def __init__(self, mode: str = "step") -> None:
        if mode not in TIMINGS:
            raise SamplerError(explain("unknown timing mode", expected=" / ".join(TIMINGS), got=repr(mode), fix="use 'step' for per-step latency, 'run' for throughput"))
        self.mode = mode
        self._stats = RunStats()
        self._device = torch.device("cpu")
        self._t0 = 0.0
        self._t_step = 0.0

    def start(self, device: torch.device, batch_size: int) -> None:
        self._device = torch.device(device)
        self._stats = RunStats(batch_size=batch_size)
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
            self._stats.step_s.append(time.perf_counter() - self._t_step)

    @contextmanager
    def step(self) -> Iterator[None]:
        self.begin_step()
        yield
        self.end_step()

    def count_nfe(self, n: int = 1) -> None:
        """Add ``n`` network evaluations (per sample)."""
        self._stats.nfe += n

    def stop(self) -> RunStats:
        if self.mode != "off":
            _synchronize(self._device)
            self._stats.wall_s = time.perf_counter() - self._t0
        return self._stats


def check_sampler_output(images: object, noise: torch.Tensor, who: str) -> torch.Tensor:
    """Validate a sampler's output: a float tensor with the noise's batch size, all finite."""
    if not torch.is_tensor(images):
        raise SamplerError(
            explain(f"{who} returned no tensor", expected="a torch.Tensor (N, C, H, W)", got=type(images).__name__, fix="return the images as a tensor")
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
            explain(f"{who} returned non-float images", expected="float images in [-1, 1]", got=str(images.dtype), fix="return images as x / 127.5 - 1")
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

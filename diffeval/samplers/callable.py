"""Wrap any ``fn(noise, cond) -> images`` as a diffeval sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffeval.errors import SamplerError, explain
from diffeval.samplers.base import RunStats, SeedRNG, StepTimer, check_sampler_output
from diffeval.samplers.generic import PREDICTIONS

__all__ = ["CallableSampler"]


class CallableSampler:
    """A sampler from a plain function ``fn(noise, cond) -> images`` in [-1, 1].

    The whole call is timed as one step; ``nfe`` declares how many network
    evaluations per sample one call makes (0 when unknown). ``schedule``,
    ``prediction`` and ``model`` are passed through so checks that need them apply.

    >>> import torch
    >>> s = CallableSampler(lambda noise, cond: noise.clamp(-1, 1), name="noise")
    >>> s(torch.zeros(2, 1, 4, 4)).shape
    torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, Any], torch.Tensor],
        *,
        name: str = "callable",
        nfe: int = 0,
        schedule: Any = None,
        prediction: str | None = None,
        model: Any = None,
    ) -> None:
        if not callable(fn):
            raise SamplerError(explain("CallableSampler needs a function", expected="fn(noise, cond) -> images", got=type(fn).__name__, fix="pass a callable"))
        if prediction is not None and prediction not in PREDICTIONS:
            raise SamplerError(explain("unknown prediction type", expected=" / ".join(PREDICTIONS), got=repr(prediction), fix="pass eps, x0, v or leave it unset"))
        if not isinstance(nfe, int) or nfe < 0:
            raise SamplerError(explain("nfe must be a non-negative integer", expected="int >= 0", got=repr(nfe), fix="pass the network evaluations per call, or 0"))
        self.fn = fn
        self.name = name
        self.nfe = nfe
        self.schedule = schedule
        self.prediction = prediction
        self.model = model
        self.timer = StepTimer()
        self.last_run: RunStats | None = None

    def config(self) -> dict[str, Any]:
        return {"sampler": self.name, "nfe": self.nfe}

    def __call__(self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None) -> torch.Tensor:
        self.timer.start(noise.device, noise.shape[0])
        with torch.no_grad(), self.timer.step():
            images = self.fn(noise, cond)
        self.timer.count_nfe(self.nfe)
        self.last_run = self.timer.stop()
        return check_sampler_output(images, noise, f"sampler {self.name!r}")

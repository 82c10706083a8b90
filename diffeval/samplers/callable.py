"""Wrap any ``fn(noise, cond) -> images`` as a diffeval sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffeval.core.errors import SamplerError, explain
from diffeval.diffusion.denoiser import check_prediction
from diffeval.samplers.base import RunStats, Sampler, SamplerInfo, SeedRNG, StepTimer, check_sampler_output

__all__ = ["CallableSampler", "as_sampler"]


class CallableSampler:
    """A sampler from a plain function ``fn(noise, cond) -> images`` in [-1, 1].

    The whole call is timed as one step; ``nfe`` declares how many network evaluations
    per sample one call makes (0 when unknown). ``schedule``, ``prediction``, ``model``
    and ``image_shape`` are declared as given, so the checks that need them apply.

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
        image_shape: Sequence[int] | None = None,
    ) -> None:
        if not callable(fn):
            raise SamplerError(
                explain(
                    "CallableSampler needs a function",
                    expected="fn(noise, cond) -> images",
                    got=type(fn).__name__,
                    fix="pass a callable",
                )
            )
        if not isinstance(nfe, int) or nfe < 0:
            raise SamplerError(
                explain(
                    "nfe must be a non-negative integer",
                    expected="int >= 0",
                    got=repr(nfe),
                    fix="pass the network evaluations per call, or 0",
                )
            )
        self.fn = fn
        self.name = name
        self.nfe = nfe
        self.schedule = schedule
        self.prediction = check_prediction(prediction, allow_none=True)
        self.model = model
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.last_run: RunStats | None = None

    def describe(self) -> SamplerInfo:
        return SamplerInfo(
            name=self.name,
            knobs={"nfe": self.nfe},
            schedule=self.schedule,
            prediction=self.prediction,
            model=self.model,
            image_shape=self.image_shape,
        )

    def __call__(
        self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None, timer: StepTimer | None = None
    ) -> torch.Tensor:
        timer = timer if timer is not None else StepTimer()
        timer.start(noise.device, noise.shape[0])
        with torch.no_grad(), timer.step():
            images = self.fn(noise, cond)
        timer.count_nfe(self.nfe)
        self.last_run = timer.stop()
        return check_sampler_output(images, noise, f"sampler {self.name!r}")


def as_sampler(obj: Any, **callable_kwargs: Any) -> Sampler:
    """A full sampler from ``obj``: returned as is when it has ``describe()``; a plain callable ``fn(noise, cond)`` is
    wrapped in a :class:`CallableSampler`.
    """
    if callable(getattr(obj, "describe", None)):
        return obj
    if callable(obj):
        return CallableSampler(obj, **callable_kwargs)
    raise SamplerError(
        explain(
            "not a sampler",
            expected="a sampler (describe() and __call__) or a function fn(noise, cond) -> images",
            got=type(obj).__name__,
            fix="pass a sampler or a function",
        )
    )

"""Adapter for k-diffusion samplers (``k_diffusion.sampling.sample_*``) over a k-diffusion denoiser.

k-diffusion's contract is ``denoised = D(x, sigma)`` (VE: ``x = x0 + sigma n``); its
wrappers (``k_diffusion.external.DiscreteEpsDDPMDenoiser``/``DiscreteVDDPMDenoiser``)
turn eps-/v-models into it. The adapter starts at ``x = noise * sigmas[0]``, calls the
sampler function with a per-step callback (timing), counts denoiser calls (NFE; Heun
and DPM-2 make two per step), and feeds ancestral/SDE samplers their noise from
per-sample generators (``noise_sampler``) so results depend on the seeds only. The
training schedule is declared from the wrapper's discrete sigmas (``alpha_bar =
1/(1 + sigma^2)``) when it has them, and the prediction type of its inner model from
the wrapper's own kind: k-diffusion's ``DiscreteVDDPMDenoiser`` wraps a v-model,
``DiscreteEpsDDPMDenoiser`` (and its subclasses ``CompVisDenoiser``, ``OpenAIDenoiser``)
an eps-model; any other denoiser needs ``prediction=`` (or declares none). Output: the
final denoised x, clamped to [-1, 1].

Install with ``pip install 'diffeval[kdiffusion]'``, best in an environment of its own:
k-diffusion's ``dctorch`` dependency requires NumPy 1.x and its CLIP dependency imports
``pkg_resources``, so that extra pins ``numpy<2``, ``pandas<3`` and ``setuptools<81``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from diffeval.core.errors import ConfigError, SamplerError, explain
from diffeval.diffusion import schedules
from diffeval.diffusion.denoiser import check_prediction
from diffeval.samplers.base import RunStats, SamplerInfo, SeedRNG, StepTimer, check_sampler_output

__all__ = ["KDiffusionSampler", "require_kdiffusion"]


def require_kdiffusion() -> Any:
    """Import k_diffusion or fail with the install hint."""
    try:
        import k_diffusion
    except ImportError as error:
        raise ConfigError(
            explain(
                "k-diffusion is not importable",
                expected="the k-diffusion package",
                got=f"{type(error).__name__}: {error}",
                fix="pip install 'diffeval[kdiffusion]' (it pins setuptools<81 for k-diffusion's CLIP import)",
            )
        ) from None
    return k_diffusion


class _Counting(torch.nn.Module):
    def __init__(self, denoiser: Any) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.calls = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, **kwargs)


def wrapped_prediction(denoiser: Any) -> str | None:
    """What the inner model of a k-diffusion wrapper predicts, from the wrapper's type (None when it is not one of
    k-diffusion's).
    """
    K = require_kdiffusion()  # noqa: N806
    external = K.external
    if isinstance(denoiser, getattr(external, "DiscreteVDDPMDenoiser", ())):
        return "v"
    if isinstance(denoiser, getattr(external, "DiscreteEpsDDPMDenoiser", ())):
        return "eps"
    return None


class KDiffusionSampler:
    """``sample_fn`` (e.g. ``k_diffusion.sampling.sample_euler``) over ``denoiser`` with ``steps`` Karras sigmas (or
    given
    ``sigmas``).
    """

    def __init__(
        self,
        sample_fn: Callable[..., torch.Tensor],
        denoiser: Any,
        *,
        steps: int = 50,
        sigmas: torch.Tensor | None = None,
        rho: float = 7.0,
        prediction: str | None = None,
        timing: str = "step",
        **sampler_kwargs: Any,
    ) -> None:
        K = require_kdiffusion()  # noqa: N806 - k-diffusion's own alias
        if not callable(sample_fn) or "sigmas" not in inspect.signature(sample_fn).parameters:
            raise SamplerError(
                explain(
                    "not a k-diffusion sampler function",
                    expected="a k_diffusion.sampling.sample_* function",
                    got=repr(sample_fn),
                    fix="pass e.g. k_diffusion.sampling.sample_euler",
                )
            )
        if sigmas is None:
            if not isinstance(steps, int) or steps < 1:
                raise SamplerError(
                    explain("invalid number of steps", expected="an integer >= 1", got=repr(steps), fix="use steps=50")
                )
            sigma_min = float(getattr(denoiser, "sigma_min", 0.002))
            sigma_max = float(getattr(denoiser, "sigma_max", 80.0))
            sigmas = K.sampling.get_sigmas_karras(steps, sigma_min, sigma_max, rho=rho)
        self.sample_fn = sample_fn
        self.denoiser = denoiser
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        self.steps = int(self.sigmas.numel() - 1)
        self.sampler_kwargs = sampler_kwargs
        params = inspect.signature(sample_fn).parameters
        self._noise_sampler = "noise_sampler" in params
        train_sigmas = getattr(denoiser, "sigmas", None)
        self.schedule = (
            schedules.from_alphas_cumprod(
                (1 / (1 + train_sigmas.double().cpu() ** 2)).numpy(), name=f"k-diffusion:{type(denoiser).__name__}"
            )
            if torch.is_tensor(train_sigmas)
            else None
        )
        declared = wrapped_prediction(denoiser)
        check_prediction(prediction, allow_none=True)
        if prediction is not None and declared is not None and prediction != declared:
            raise SamplerError(
                explain(
                    f"prediction={prediction!r} contradicts the denoiser {type(denoiser).__name__}",
                    expected=f"{declared!r} (what that wrapper's inner model predicts)",
                    got=repr(prediction),
                    fix="drop prediction= or wrap the model in the matching k-diffusion denoiser",
                )
            )
        self.prediction = prediction or declared
        self.model = getattr(denoiser, "inner_model", None) if self.prediction is not None else None
        self.timing = StepTimer(timing).mode
        self.last_run: RunStats | None = None

    def knobs(self) -> dict[str, Any]:
        return {
            "function": self.sample_fn.__name__,
            "steps": self.steps,
            "sigma_max": float(self.sigmas[0]),
            **{k: v for k, v in self.sampler_kwargs.items() if isinstance(v, (int, float, str, bool))},
        }

    def describe(self) -> SamplerInfo:
        return SamplerInfo(
            name=f"k-diffusion:{self.sample_fn.__name__}",
            knobs=self.knobs(),
            schedule=self.schedule,
            prediction=self.prediction,
            model=self.model,
            steps=self.steps,
        )

    def __call__(
        self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None, timer: StepTimer | None = None
    ) -> torch.Tensor:
        sigmas = self.sigmas.to(noise.device)
        counting = _Counting(self.denoiser)
        kwargs = dict(self.sampler_kwargs)
        if cond is not None:
            kwargs["extra_args"] = {"cond": cond}
        if self._noise_sampler and rng is not None:
            kwargs["noise_sampler"] = lambda sigma, sigma_next: rng.randn_like(noise)
        x = noise * sigmas[0]
        timer = timer if timer is not None else StepTimer(self.timing)
        timer.start(noise.device, noise.shape[0])
        timer.begin_step()

        def callback(info: dict[str, Any]) -> None:  # k-diffusion calls it at the end of every step
            timer.end_step()
            if info["i"] + 1 < self.steps:
                timer.begin_step()

        with torch.no_grad():
            out = self.sample_fn(counting, x, sigmas, callback=callback, disable=True, **kwargs)
        stats = timer.stop()
        stats.nfe = counting.calls
        self.last_run = stats
        return check_sampler_output(out.clamp(-1, 1), noise, f"k-diffusion {self.sample_fn.__name__}")

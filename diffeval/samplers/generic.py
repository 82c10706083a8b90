"""The generalized DDPM/DDIM sampler over any eps-, x0- or v-prediction model.

One step from noise level t to s < t (Song et al. 2021, eq. 12, in SNR terms)::

    x0_hat = (z_t - sigma_t eps_hat) / alpha_t
    c**2   = eta**2 sigma_s**2 (1 - SNR_t / SNR_s)
    z_s    = alpha_s x0_hat + sqrt(sigma_s**2 - c**2) eps_hat + c xi,   xi ~ N(0, I)

``eta = 0`` is DDIM, ``eta = 1`` is DDPM ancestral sampling with the fixed-small
variance. ``churn`` adds EDM's stochasticity (Karras et al. 2022, Alg. 2): before a
step the noise level is raised from ``sigma_t`` to ``sigma_hat = sigma_t (1 + gamma)``
(VE sigma, ``gamma = min(churn / steps, sqrt(2) - 1)``) by injecting fresh noise, and
the step starts from ``sigma_hat``. The last step lands on clean data (alpha = 1).

Example::

    >>> import torch
    >>> from diffeval import schedules
    >>> from diffeval.samplers import GeneralizedSampler, seeded_noise
    >>> model = lambda x, t: torch.zeros_like(x)          # predicts eps = 0
    >>> sampler = GeneralizedSampler(model, schedules.linear(), steps=10)
    >>> sampler(seeded_noise(range(4), (1, 8, 8))).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffeval.denoiser import Denoiser, check_prediction, to_x0_eps
from diffeval.errors import SamplerError, explain
from diffeval.samplers.base import RunStats, SamplerInfo, SeedRNG, StepTimer, check_sampler_output
from diffeval.schedules import SPACINGS, Schedule, sampling_indices

__all__ = ["GeneralizedSampler", "SATURATION_MARGIN"]

SATURATION_MARGIN = 0.1  # x0_hat counts as saturated beyond [-1.1, 1.1]: data on the bounds overshoots them slightly


def _alpha_sigma(log_snr: float) -> tuple[float, float]:
    if log_snr == -math.inf:
        return 0.0, 1.0
    # sigmoid in a numerically safe form for both signs
    alpha_sq = 1.0 / (1.0 + math.exp(-log_snr)) if log_snr > -700 else 0.0
    sigma_sq = 1.0 / (1.0 + math.exp(log_snr)) if log_snr < 700 else 0.0
    return math.sqrt(alpha_sq), math.sqrt(sigma_sq)


class GeneralizedSampler:
    """DDIM (eta = 0) … DDPM ancestral (eta = 1), with EDM churn, over any denoiser.

    Args:
        model: ``model(x_t, t) -> prediction`` (or ``model(x_t, t, cond)`` when a
            condition is given); ``t`` is a float tensor (N,) in the schedule's model
            time convention (``schedule.model_times``).
        schedule: the training schedule.
        prediction: what the model predicts: ``eps``, ``x0`` or ``v``.
        steps: number of sampling steps (1..T).
        eta: DDIM stochasticity in [0, 1].
        churn: EDM ``S_churn`` >= 0 (0 disables it).
        spacing: ``trailing`` (starts at T), ``leading`` (diffusers' default) or ``linspace``.
        clip_x0: clamp ``x0_hat`` to [-1, 1] at every step (and re-derive ``eps_hat``).
        guidance_scale: classifier-free guidance weight w, ``out = out_u + w (out_c - out_u)``;
            used only with a condition; ``1`` is plain conditional sampling.
        timing: the default timer's mode when the caller passes none: ``step`` (per-step
            latency, CUDA-synchronized), ``run`` (whole-call time only) or ``off``.
        image_shape: ``(C, H, W)`` of the images, declared for configs that do not say it.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: Schedule,
        *,
        prediction: str = "eps",
        steps: int = 50,
        eta: float = 0.0,
        churn: float = 0.0,
        spacing: str = "trailing",
        clip_x0: bool = True,
        guidance_scale: float = 1.0,
        timing: str = "step",
        image_shape: Sequence[int] | None = None,
    ) -> None:
        check_prediction(prediction)
        self.denoiser = Denoiser(model, schedule, prediction)
        if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and 0.0 <= float(eta) <= 1.0):
            raise SamplerError(
                explain(
                    "eta out of range",
                    expected="0 <= eta <= 1 (0 = DDIM, 1 = DDPM)",
                    got=repr(eta),
                    fix="choose eta in [0, 1]",
                )
            )
        if not (isinstance(churn, (int, float)) and float(churn) >= 0.0 and math.isfinite(churn)):
            raise SamplerError(
                explain(
                    "churn out of range",
                    expected="a finite number >= 0",
                    got=repr(churn),
                    fix="use churn = 0 to disable it",
                )
            )
        if spacing not in SPACINGS:
            raise SamplerError(
                explain(
                    "unknown timestep spacing", expected=" / ".join(SPACINGS), got=repr(spacing), fix="use 'trailing'"
                )
            )
        if not (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= schedule.T):
            raise SamplerError(
                explain(
                    "number of sampling steps out of range",
                    expected=f"an integer in [1, T={schedule.T}]",
                    got=repr(steps),
                    fix=f"choose steps between 1 and {schedule.T}",
                )
            )
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
            raise SamplerError(
                explain(
                    "invalid guidance_scale",
                    expected="a finite number",
                    got=repr(guidance_scale),
                    fix="use 1.0 for no guidance",
                )
            )
        StepTimer(timing)  # validates the mode
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.steps = steps
        self.eta = float(eta)
        self.churn = float(churn)
        self.spacing = spacing
        self.clip_x0 = bool(clip_x0)
        self.guidance_scale = float(guidance_scale)
        self.timing = timing
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.indices = sampling_indices(schedule.T, steps, spacing)
        self.last_run: RunStats | None = None

    def knobs(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.name,
            "prediction": self.prediction,
            "steps": self.steps,
            "eta": self.eta,
            "churn": self.churn,
            "spacing": self.spacing,
            "clip_x0": self.clip_x0,
            "guidance_scale": self.guidance_scale,
        }

    def describe(self) -> SamplerInfo:
        return SamplerInfo(
            name="generalized",
            knobs=self.knobs(),
            schedule=self.schedule,
            prediction=self.prediction,
            model=self.model,
            steps=self.steps,
            spacing=self.spacing,
            indices=tuple(int(i) for i in self.indices),
            image_shape=self.image_shape,
            guidance=True,
        )

    def replace(self, **changes: Any) -> GeneralizedSampler:
        """A new sampler with some arguments changed (``model``, ``steps``, ``eta``, ...); this one is left as is."""
        args = {
            "prediction": self.prediction,
            "steps": self.steps,
            "eta": self.eta,
            "churn": self.churn,
            "spacing": self.spacing,
            "clip_x0": self.clip_x0,
            "guidance_scale": self.guidance_scale,
            "timing": self.timing,
            "image_shape": self.image_shape,
        }
        unknown = sorted(set(changes) - set(args) - {"model", "schedule"})
        if unknown:
            raise SamplerError(
                explain(
                    f"unknown knob(s) {unknown} for GeneralizedSampler",
                    expected=f"among model, schedule, {', '.join(args)}",
                    got=", ".join(unknown),
                    fix="correct the knob names",
                )
            )
        model = changes.pop("model", self.model)
        schedule = changes.pop("schedule", self.schedule)
        return GeneralizedSampler(model, schedule, **{**args, **changes})

    # -- one network evaluation, with guidance -------------------------------------
    def _predict(self, z: torch.Tensor, model_time: float, cond: Any, step: int, timer: StepTimer) -> torch.Tensor:
        t = torch.full((z.shape[0],), model_time, device=z.device, dtype=torch.float32)
        where = f"at sampling step {step}"
        if cond is None:
            timer.count_nfe()
            return self.denoiser(z, t, where=where)
        if self.guidance_scale == 1.0:
            timer.count_nfe()
            return self.denoiser(z, t, cond, where=where)
        out_u = self.denoiser(z, t, where=where)
        out_c = self.denoiser(z, t, cond, where=where)
        timer.count_nfe(2)
        return out_u + self.guidance_scale * (out_c - out_u)

    def __call__(
        self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None, timer: StepTimer | None = None
    ) -> torch.Tensor:
        if not torch.is_tensor(noise) or noise.ndim != 4 or not noise.is_floating_point():
            got = f"{type(noise).__name__} {tuple(noise.shape) if torch.is_tensor(noise) else ''}"
            raise SamplerError(
                explain(
                    "noise must be a float NCHW tensor",
                    expected="(N, C, H, W) float",
                    got=got,
                    fix="use diffeval.samplers.seeded_noise",
                )
            )
        timer = timer if timer is not None else StepTimer(self.timing)
        randn_like = rng.randn_like if rng is not None else torch.randn_like
        lam = self.schedule.log_snr
        lam_floor = float(lam[torch.isfinite(lam)].min())
        gamma = min(self.churn / self.steps, math.sqrt(2) - 1)
        indices = self.indices.tolist()
        timer.start(noise.device, noise.shape[0])
        first_bad = torch.full((), -1, device=noise.device, dtype=torch.int64)
        outside = torch.zeros((), device=noise.device, dtype=torch.float64)
        counted = 0
        z = noise
        with torch.no_grad():
            for i, t in enumerate(indices):
                with timer.step():
                    lam_t = float(lam[t])
                    model_time = float(self.schedule.model_times[t])
                    alpha_t, sigma_t = _alpha_sigma(lam_t)
                    # Churn (EDM Alg. 2, lines 5-6): raise VE noise sigma_t -> sigma_hat = sigma_t (1 + gamma).
                    if gamma > 0 and lam_t > lam_floor:
                        lam_hat = max(lam_t - 2 * math.log1p(gamma), lam_floor)
                        alpha_h, sigma_h = _alpha_sigma(lam_hat)
                        ve_t, ve_h = math.exp(-lam_t / 2), math.exp(-lam_hat / 2)
                        z = alpha_h * (z / alpha_t + math.sqrt(ve_h**2 - ve_t**2) * randn_like(z))
                        lam_t, alpha_t, sigma_t = lam_hat, alpha_h, sigma_h
                        model_time = self.schedule.model_time_at(lam_hat)
                    out = self._predict(z, model_time, cond, i, timer)
                    # x0_hat, eps_hat from the prediction (eq. 9 of DDIM in SNR form)
                    x0_hat, eps_hat = to_x0_eps(self.prediction, out, z, alpha_t, sigma_t)
                    if lam_t >= 0:  # saturation where signal dominates (SNR >= 1), counted on the device (no sync)
                        outside += (x0_hat.abs() > 1 + SATURATION_MARGIN).sum()
                        counted += x0_hat.numel()
                    if self.clip_x0:
                        x0_hat = x0_hat.clamp(-1, 1)
                        if sigma_t > 0:
                            eps_hat = (z - alpha_t * x0_hat) / sigma_t
                    bad_now = ~torch.isfinite(x0_hat).all()
                    first_bad = torch.where(bad_now & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
                    if i + 1 == len(indices):
                        z = x0_hat  # last step lands on clean data: alpha_s = 1, sigma_s = 0
                        continue
                    lam_s = float(lam[indices[i + 1]])
                    alpha_s, sigma_s = _alpha_sigma(lam_s)
                    # c^2 = eta^2 sigma_s^2 (1 - SNR_t / SNR_s)
                    c_sq = self.eta**2 * sigma_s**2 * (1.0 - math.exp(lam_t - lam_s))
                    c_sq = min(max(c_sq, 0.0), sigma_s**2)
                    # z_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi
                    z = alpha_s * x0_hat + math.sqrt(sigma_s**2 - c_sq) * eps_hat
                    if c_sq > 0:
                        z = z + math.sqrt(c_sq) * randn_like(z)
        stats = timer.stop()
        stats.x0_outside = float(outside) / counted if counted else float("nan")
        self.last_run = stats
        bad_step = int(first_bad)
        if bad_step >= 0:
            raise SamplerError(
                explain(
                    f"model produced NaN/inf at sampling step {bad_step} (training index t={indices[bad_step] + 1})",
                    expected="finite predictions",
                    got="non-finite x0_hat",
                    fix="check the model weights and dtype (fp16 overflow), and the schedule's endpoints",
                )
            )
        return check_sampler_output(z, noise, "GeneralizedSampler")

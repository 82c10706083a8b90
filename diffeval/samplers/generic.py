"""The generalized DDPM/DDIM sampler over any eps-, x0-, v- or flow-prediction model, with the S2N family.

One step from noise level t to s < t, in log-SNR terms (``lambda = log(alpha^2 / sigma^2)``,
``h = lambda_s - lambda_t > 0``; x0_hat and eps_hat from the model at t)::

    beta**2 = sigma_s**2 (1 - exp(-gamma h))            # S2N family (gamma, delta)
            = eta**2 sigma_s**2 (1 - exp(-h))           # or DDIM's eta (Song et al. 2021, eq. 12)
    z_s     = alpha_s x0_hat + sqrt(sigma_s**2 - beta**2) eps_hat + delta beta xi,   xi ~ N(0, I)

One step function serves both parameterizations. ``eta = 0`` is DDIM, ``eta = 1`` is DDPM
ancestral sampling with the fixed-small variance.

**What the S2N step is** (verified here: the coefficients below are derived and tested): the exact
solution, over one step, of the generalized backward SDE
``dz = [f z - (1 + tau^2) g^2 score / 2] dt + tau g dw`` with the model's ``x0_hat`` held fixed over the
step — the first-order SA-Solver / gDDIM step with ``tau^2 = gamma``. In log-SNR terms it keeps
``exp(-gamma h / 2)`` of the noise direction, puts ``alpha_s (1 - exp(-(1 + gamma) h / 2))`` on ``x0_hat`` and
``sigma_s^2 (1 - exp(-gamma h))`` of fresh noise; ``delta`` scales only that fresh noise. **What is diffeval's
own**: the name "S2N family" and the (gamma, delta) parameterization are diffeval's reconstruction after
"Connective Viewpoints of Signal-to-Noise Diffusion Models" (arXiv 2408.04221). **Unverified**: the paper's
own step equation was not consulted; public summaries name three knobs (gamma, rho, delta), rho being the
backward SDE's noise level (here ``sqrt(gamma)`` plays that role), so diffeval's gamma and delta may not be the
paper's. Special cases:

- ``gamma = 0`` (delta has no effect): DDIM, the probability-flow ODE's exact exponential
  step (Euler in EDM variables, k-diffusion ``sample_euler``; on a flow schedule with
  ``prediction = 'flow'``, the Euler step of the flow ODE ``z_s = z_t + (s - t) u``);
- ``gamma = 1, delta = 1``: the DDPM posterior q(z_s | z_t, x0_hat) exactly (= ``eta = 1``;
  k-diffusion ``sample_euler_ancestral`` in EDM variables);
- ``gamma = inf, delta = 1``: re-noising from x0_hat, ``z_s = alpha_s x0_hat + sigma_s xi``;
- ``delta = 0, gamma > 0``: removes ``beta^2`` of noise variance per step without replacing it, so the
  noise direction shrinks by ``exp(-gamma span(lambda) / 2)`` over the trajectory: it leaves the data
  distribution by construction (the shipped experiment no longer spends points on it);
- ``delta != 1``: leaves the forward marginals on purpose (too little or too much fresh
  noise, like EDM's ``s_noise``): z_s's variance is no longer alpha_s^2 Var(x0) + sigma_s^2.

On a zero-terminal-SNR schedule (every flow schedule) the first step starts at ``lambda = -inf``:
``gamma = 0`` is DDIM bit for bit there, while any ``gamma > 0`` re-draws all of ``sigma_s`` as fresh noise
on that step (``h = inf``), so the family is discontinuous at ``gamma = 0`` on such schedules.

Flow models (``prediction = 'flow'``, the velocity ``u = eps - x0``, on a ``flow`` schedule) run directly:
the model sees its own path's ``z = (1 - t) x0 + t eps`` (``z_vp / (alpha + sigma)``), and because the flow
path is linear in t, the deterministic step with ``x0_hat``, ``eps_hat`` held fixed *is* Euler in t —
the identity behind the equality with diffusers' ``FlowMatchEulerDiscreteScheduler`` on the same grid.

``churn`` adds EDM's stochasticity (Karras et al. 2022, Alg. 2): before a
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
from collections.abc import Callable
from typing import Any

import torch

from diffeval.core.errors import SamplerError, explain
from diffeval.core.options import Option, validate_options
from diffeval.diffusion.denoiser import Denoiser, check_prediction, to_x0_eps
from diffeval.diffusion.schedules import SPACINGS, Schedule, sampling_indices
from diffeval.samplers.base import TIMINGS, RunStats, SamplerInfo, SeedRNG, StepTimer, check_sampler_output

__all__ = ["GeneralizedSampler", "SATURATION_MARGIN", "KNOBS", "SETTINGS"]

SATURATION_MARGIN = 0.1  # x0_hat counts as saturated beyond [-1.1, 1.1]: data on the bounds overshoots them slightly


def _alpha_sigma(log_snr: float) -> tuple[float, float]:
    if log_snr == -math.inf:
        return 0.0, 1.0
    # sigmoid in a numerically safe form for both signs
    alpha_sq = 1.0 / (1.0 + math.exp(-log_snr)) if log_snr > -700 else 0.0
    sigma_sq = 1.0 / (1.0 + math.exp(log_snr)) if log_snr < 700 else 0.0
    return math.sqrt(alpha_sq), math.sqrt(sigma_sq)


def _path_at(path: str, lam: float, alpha: float, sigma: float) -> tuple[float, float, float]:
    """(z_path / z_vp, the path's alpha, its sigma) at log-SNR ``lam``; the vp path is the identity."""
    if path == "vp":
        return 1.0, alpha, sigma
    scale = 1.0 / (alpha + sigma)
    return scale, alpha * scale, sigma * scale


# The sampler's knobs, declared once: the constructor validates them (types, bounds, choices, "did you mean"), and
# describe().knobs, replace() and sweeps read the same list.
KNOBS: tuple[Option, ...] = (
    Option("prediction", str, "eps", "what the model predicts: eps, x0, v or flow (the velocity eps - x0)"),
    Option("steps", int, 50, "number of sampling steps (1..T)", minimum=1),
    Option("eta", float, 0.0, "DDIM stochasticity: 0 = DDIM, 1 = DDPM ancestral", minimum=0.0, maximum=1.0),
    Option(
        "gamma",
        float,
        None,
        "S2N log-SNR rate of the injected noise (inf: re-noising); None uses eta",
        minimum=0.0,
        nullable=True,
        finite=False,
    ),
    Option(
        "delta",
        float,
        1.0,
        "scale of the injected noise (1 keeps the forward marginals; applies to eta's too)",
        minimum=0.0,
    ),
    Option("churn", float, 0.0, "EDM S_churn (0 disables it)", minimum=0.0),
    Option("spacing", str, "trailing", "timestep spacing", choices=SPACINGS),
    Option("clip_x0", bool, True, "clamp x0_hat to [-1, 1] at every step (and re-derive eps_hat)"),
    Option("guidance_scale", float, 1.0, "classifier-free guidance weight w (1: plain conditional sampling)"),
)
SETTINGS: tuple[Option, ...] = (  # how it runs, not what it samples: not reported as knobs
    Option("timing", str, "step", "default timer: step (per-step latency), run (whole call) or off", choices=TIMINGS),
    Option("image_shape", list, None, "(C, H, W) of the images", item=int, length=3, minimum=1, nullable=True),
)


class GeneralizedSampler:
    """DDIM (eta = 0) … DDPM ancestral (eta = 1), with EDM churn, over any denoiser.

    Args:
        model: ``model(x_t, t) -> prediction`` (or ``model(x_t, t, cond)`` when a
            condition is given); ``t`` is a float tensor (N,) in the schedule's model
            time convention (``schedule.model_times``).
        schedule: the training schedule.
        prediction: what the model predicts: ``eps``, ``x0``, ``v`` or ``flow`` (the velocity
            ``eps - x0`` of flow matching; use a ``flow`` schedule).
        steps: number of sampling steps (1..T).
        eta: DDIM stochasticity in [0, 1].
        gamma: S2N log-SNR rate of the injected noise, >= 0 (``inf`` allowed: re-noising);
            None (default) uses ``eta``. Set one of ``eta > 0`` and ``gamma``, not both.
        delta: scale of the injected noise, >= 0 (1 keeps the forward marginals); applies
            to ``eta``'s noise too.
        churn: EDM ``S_churn`` >= 0 (0 disables it).
        spacing: ``trailing`` (starts at T), ``leading`` (diffusers' default) or ``linspace``.
        clip_x0: clamp ``x0_hat`` to [-1, 1] at every step (and re-derive ``eps_hat``).
        guidance_scale: classifier-free guidance weight w, ``out = out_u + w (out_c - out_u)``;
            used only with a condition; ``1`` is plain conditional sampling.
        timing: the default timer's mode when the caller passes none: ``step`` (per-step
            latency, CUDA-synchronized), ``run`` (whole-call time only) or ``off``.
        image_shape: ``(C, H, W)`` of the images, declared for configs that do not say it.
    """

    def __init__(self, model: Callable[..., torch.Tensor], schedule: Schedule, **knobs: Any) -> None:
        values = validate_options(knobs, KNOBS + SETTINGS, "GeneralizedSampler", error=SamplerError)
        check_prediction(values["prediction"])
        if not values["steps"] <= schedule.T:
            raise SamplerError(
                explain(
                    "number of sampling steps out of range",
                    expected=f"an integer in [1, T={schedule.T}]",
                    got=repr(values["steps"]),
                    fix=f"choose steps between 1 and {schedule.T}",
                )
            )
        if values["gamma"] is not None and values["eta"] > 0:
            raise SamplerError(
                explain(
                    "eta and gamma both set",
                    expected="one parameterization of the step's noise: eta (DDIM) or gamma (S2N)",
                    got=f"eta = {values['eta']}, gamma = {values['gamma']}",
                    fix="set eta = 0 to use gamma (gamma = 1, delta = 1 is eta = 1), or drop gamma",
                )
            )
        self.denoiser = Denoiser(model, schedule, values["prediction"])
        self.model = model
        self.schedule = schedule
        for name, value in values.items():
            setattr(self, name, value)
        self.image_shape = None if self.image_shape is None else tuple(self.image_shape)
        self.indices = sampling_indices(schedule.T, self.steps, self.spacing)
        self.last_run: RunStats | None = None

    def knobs(self) -> dict[str, Any]:
        """The schedule's name and every declared knob's value (what rows, labels and sweeps read)."""
        return {"schedule": self.schedule.name, **{o.name: getattr(self, o.name) for o in KNOBS}}

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
        args = {o.name: getattr(self, o.name) for o in KNOBS + SETTINGS}
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

    # -- one step from lambda_t to lambda_s, given the model's x0_hat and eps_hat -----
    def noise_variance(self, lam_t: float, lam_s: float) -> float:
        """``beta^2``: the fresh-noise variance of a step from log-SNR ``lam_t`` to ``lam_s`` (before ``delta``).

        On a zero-terminal-SNR schedule the first step starts at ``lam_t = -inf`` (h = inf): gamma = 0 injects
        nothing (exactly eta = 0, DDIM), while any gamma > 0 makes ``beta^2 = sigma_s^2`` — that step keeps
        none of ``eps_hat``, so the family is discontinuous at gamma = 0 on such schedules (flow schedules too).
        """
        alpha_s, sigma_s = _alpha_sigma(lam_s)
        h = lam_s - lam_t
        if self.gamma is None:  # DDIM's eta: eta^2 sigma_s^2 (1 - SNR_t / SNR_s)
            beta_sq = self.eta**2 * sigma_s**2 * -math.expm1(-h)
        elif self.gamma == 0.0:  # DDIM exactly, also from lambda_t = -inf (0 * inf would be NaN)
            beta_sq = 0.0
        elif math.isinf(self.gamma):  # gamma -> inf: all of sigma_s is fresh noise (re-noising from x0_hat)
            beta_sq = sigma_s**2
        else:  # S2N: sigma_s^2 (1 - exp(-gamma h))
            beta_sq = sigma_s**2 * -math.expm1(-self.gamma * h)
        return min(max(beta_sq, 0.0), sigma_s**2)

    def step(
        self,
        z: torch.Tensor,
        x0_hat: torch.Tensor,
        eps_hat: torch.Tensor,
        lam_t: float,
        lam_s: float,
        randn_like: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``z_s = alpha_s x0_hat + sqrt(sigma_s^2 - beta^2) eps_hat + delta beta xi`` (eta and S2N alike)."""
        alpha_s, sigma_s = _alpha_sigma(lam_s)
        beta_sq = self.noise_variance(lam_t, lam_s)
        z = alpha_s * x0_hat + math.sqrt(sigma_s**2 - beta_sq) * eps_hat
        if beta_sq > 0 and self.delta > 0:
            z = z + self.delta * math.sqrt(beta_sq) * randn_like(z)
        return z

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
                    # the model sees its own path's z_t (flow: (1 - t) x0 + t eps = z_vp / (alpha + sigma))
                    scale, alpha_p, sigma_p = _path_at(self.schedule.path, lam_t, alpha_t, sigma_t)
                    z_model = z if scale == 1.0 else z * scale
                    out = self._predict(z_model, model_time, cond, i, timer)
                    # x0_hat, eps_hat from the prediction (eq. 9 of DDIM in SNR form; v is the vp path's velocity)
                    if self.prediction == "v" or scale == 1.0:
                        x0_hat, eps_hat = to_x0_eps(self.prediction, out, z, alpha_t, sigma_t)
                    else:
                        x0_hat, eps_hat = to_x0_eps(self.prediction, out, z_model, alpha_p, sigma_p)
                    if lam_t >= 0:  # saturation where signal dominates (SNR >= 1), counted on the device (no sync)
                        outside += (x0_hat.abs() > 1 + SATURATION_MARGIN).sum()
                        counted += x0_hat.numel()
                    bad_now = ~torch.isfinite(x0_hat).all()  # before clipping, which would turn inf into +-1
                    if self.clip_x0:
                        x0_hat = x0_hat.clamp(-1, 1)
                        if sigma_t > 0:
                            eps_hat = (z - alpha_t * x0_hat) / sigma_t
                    first_bad = torch.where(bad_now & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
                    if i + 1 == len(indices):
                        z = x0_hat  # last step lands on clean data: alpha_s = 1, sigma_s = 0
                        continue
                    lam_s = float(lam[indices[i + 1]])
                    z = self.step(z, x0_hat, eps_hat, lam_t, lam_s, randn_like)
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

"""Noise schedules in one canonical form: log-SNR.

Every schedule — DDPM linear, cosine, Stable Diffusion scaled-linear, VDM, EDM sigmas,
a raw ``alphas_cumprod`` array, betas, a diffusers scheduler config — is converted once
into ``log_snr[t-1] = lambda_t = log(alpha_t**2 / sigma_t**2)`` (natural log) for
discrete steps ``t = 1..T``, strictly decreasing. Everything else derives from it
(variance preserving)::

    alpha_bar = sigmoid(lambda)      alpha = sqrt(alpha_bar)
    sigma**2  = sigmoid(-lambda)     snr   = exp(lambda)
    beta_t    = 1 - alpha_bar_t / alpha_bar_{t-1}   (alpha_bar_0 = 1)
    ve_sigma  = exp(-lambda / 2)     (the EDM / variance-exploding noise level)

Example::

    >>> from diffeval import schedules
    >>> s = schedules.linear()
    >>> f"{float(s.alpha_bar[-1]):.11e}"
    '4.03582976538e-05'
    >>> s.T
    1000

A terminal ``lambda_T = -inf`` (zero terminal SNR, Lin et al. 2023) is the only
non-finite value allowed.

A schedule also states its **path**, the coefficients of ``z_t = alpha_t x0 + sigma_t eps`` its model was trained
on: ``vp`` (variance preserving: ``alpha^2 + sigma^2 = 1``, the properties above) or ``flow`` (rectified flow /
flow matching: ``alpha = 1 - t``, ``sigma = t``, ``lambda = 2 log((1 - t) / t)``, so ``lambda(1) = -inf``).
Both paths share the log-SNR (what samplers, checks and bits/dim read); :attr:`Schedule.path_alpha` and
:attr:`Schedule.path_sigma` are the model's own coefficients (``alpha = sigmoid(lambda / 2)`` on the flow
path), and a model input is ``z_path = z_vp * path_scale`` with ``path_scale = path_alpha / alpha``.

    >>> f = flow(T=4)
    >>> [round(float(a), 3) for a in f.path_alpha], [round(float(s), 3) for s in f.path_sigma]
    ([0.75, 0.5, 0.25, 0.0], [0.25, 0.5, 0.75, 1.0])
    >>> round(float(flow(T=10, shift=3.0).path_sigma[0]), 4)  # SD3's shift: t' = s t / (1 + (s - 1) t)
    0.25
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from diffeval.core.errors import ConfigError, ScheduleError, explain
from diffeval.core.registry import Registry

__all__ = [
    "Schedule",
    "SPACINGS",
    "PRESETS",
    "linear",
    "cosine",
    "scaled_linear",
    "vdm",
    "edm",
    "from_betas",
    "from_alphas_cumprod",
    "from_log_snr",
    "from_diffusers_config",
    "is_flow_config",
    "START_MIN_LOG_SNR",
    "flow",
    "flow_shift_mu",
    "from_flow_sigmas",
    "path_scale",
    "PATHS",
    "rescale_zero_terminal_snr",
    "sampling_indices",
    "get",
]

SPACINGS = ("linspace", "leading", "trailing")
PATHS = ("vp", "flow")
START_MIN_LOG_SNR = 0.0  # a schedule whose first step is not signal-dominated does not start at data

PRESETS: Registry[Schedule] = Registry("schedule")


def _as_float64_vector(values: object, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64) if not torch.is_tensor(values) else values)
    tensor = tensor.detach().to(device="cpu", dtype=torch.float64)
    if tensor.ndim != 1 or tensor.numel() < 1:
        raise ScheduleError(
            explain(
                f"{what} must be a 1-D array",
                expected="shape (T,) with T >= 1",
                got=f"shape {tuple(tensor.shape)}",
                fix=f"pass one {what} value per training step",
            )
        )
    return tensor


def _first_bad(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask)[0, 0])


def _validate_log_snr(log_snr: torch.Tensor, name: str) -> None:
    nan = torch.isnan(log_snr)
    if nan.any():
        i = _first_bad(nan)
        raise ScheduleError(
            explain(
                f"schedule {name!r} has NaN log-SNR at t={i + 1}",
                expected="finite values",
                got=f"{int(nan.sum())} NaN value(s)",
                fix="check the betas / alphas_cumprod you passed for NaN or values outside (0, 1]",
            )
        )
    inner = log_snr[:-1]
    if torch.isinf(inner).any() or log_snr[-1] == math.inf:
        i = _first_bad(torch.isinf(log_snr))
        raise ScheduleError(
            explain(
                f"schedule {name!r} has an infinite log-SNR at t={i + 1}",
                expected="finite log-SNR everywhere except an explicit zero-terminal-SNR end (-inf at t=T)",
                got=f"{float(log_snr[i])} at t={i + 1}",
                fix="clip the betas into (0, 1) before the last step, or use rescale_zero_terminal_snr()",
            )
        )
    if not float(log_snr[0]) > START_MIN_LOG_SNR:
        raise ScheduleError(
            explain(
                f"schedule {name!r} does not start at data",
                expected=(
                    f"log-SNR > {START_MIN_LOG_SNR:g} at t=1 (alpha_1 > sigma_1: the cleanest step is mostly signal;"
                    " real schedules start near alpha = 1, sigma = 0, log-SNR 7 to 14)"
                ),
                got=f"log-SNR {float(log_snr[0]):.6g} at t=1 (alpha^2 = {float(torch.sigmoid(log_snr[0])):.4g})",
                fix=(
                    "pass the whole training schedule ordered from clean (t=1) to noisy (t=T); a flow path's t = 0 is"
                    " data and t = 1 noise (schedules.flow, from_flow_sigmas)"
                ),
            )
        )
    if log_snr.numel() > 1:
        step = log_snr[1:] - log_snr[:-1]
        bad = ~(step < 0)
        if bad.any():
            i = _first_bad(bad)
            raise ScheduleError(
                explain(
                    f"schedule {name!r} log-SNR is not strictly decreasing at t={i + 1}->{i + 2}",
                    expected="lambda_t > lambda_{t+1} (noise grows with t)",
                    got=f"lambda={float(log_snr[i]):.6g} then {float(log_snr[i + 1]):.6g}",
                    fix="pass a schedule ordered from clean (t=1) to noisy (t=T) with positive betas",
                )
            )


@dataclass(frozen=True, eq=False)
class Schedule:
    """A noise schedule as ``log_snr`` for steps ``t = 1..T`` (float64, strictly decreasing).

    ``model_times[t-1]`` is what the denoiser receives at step t in its own time
    convention: the step index ``t-1`` for discrete DDPM-style models (the diffusers
    and improved-diffusion convention), continuous ``t`` in [0, 1] for VDM, ``sigma``
    for EDM. ``log_snr_fn`` is set for continuous-time schedules: ``lambda(u)`` for
    ``u`` in [0, 1] (u = 0 the clean end), differentiable (autograd gives
    ``dlambda/du``); ``model_time_fn(u)`` is then the model's time input at ``u``.
    """

    log_snr: torch.Tensor
    name: str = "custom"
    model_times: torch.Tensor = field(default=None)
    log_snr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    model_time_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    path: str = "vp"

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ScheduleError(
                explain(
                    f"unknown path {self.path!r} of schedule {self.name!r}",
                    expected=" or ".join(PATHS),
                    got=repr(self.path),
                    fix="vp for DDPM-style models, flow for rectified-flow / flow-matching models",
                )
            )
        log_snr = _as_float64_vector(self.log_snr, "log_snr")
        _validate_log_snr(log_snr, self.name)
        object.__setattr__(self, "log_snr", log_snr)
        if self.model_times is None:
            object.__setattr__(self, "model_times", torch.arange(log_snr.numel(), dtype=torch.float64))
        else:
            times = _as_float64_vector(self.model_times, "model_times")
            if times.shape != log_snr.shape:
                raise ScheduleError(
                    explain(
                        f"schedule {self.name!r} model_times does not match log_snr",
                        expected=f"{log_snr.numel()} values",
                        got=f"{times.numel()}",
                        fix="give one model time per step",
                    )
                )
            object.__setattr__(self, "model_times", times)

    # -- converters ---------------------------------------------------------------
    @property
    def T(self) -> int:
        """Number of training steps."""
        return int(self.log_snr.numel())

    @property
    def alpha_bar(self) -> torch.Tensor:
        """``sigmoid(lambda)``: the variance-preserving signal fraction (alphas_cumprod)."""
        return torch.sigmoid(self.log_snr)

    @property
    def alpha(self) -> torch.Tensor:
        """``sqrt(sigmoid(lambda))``."""
        return torch.sigmoid(self.log_snr).sqrt()

    @property
    def sigma(self) -> torch.Tensor:
        """``sqrt(sigmoid(-lambda))``."""
        return torch.sigmoid(-self.log_snr).sqrt()

    @property
    def path_alpha(self) -> torch.Tensor:
        """The model's own signal coefficient: ``alpha`` on the vp path, ``1 - t = sigmoid(lambda / 2)`` on flow."""
        return self.alpha if self.path == "vp" else torch.sigmoid(0.5 * self.log_snr)

    @property
    def path_sigma(self) -> torch.Tensor:
        """The model's own noise coefficient: ``sigma`` on the vp path, ``t = sigmoid(-lambda / 2)`` on flow."""
        return self.sigma if self.path == "vp" else torch.sigmoid(-0.5 * self.log_snr)

    @property
    def snr(self) -> torch.Tensor:
        """``exp(lambda) = alpha**2 / sigma**2``."""
        return torch.exp(self.log_snr)

    @property
    def ve_sigma(self) -> torch.Tensor:
        """``exp(-lambda/2) = sigma/alpha``: the variance-exploding (EDM) noise level."""
        return torch.exp(-0.5 * self.log_snr)

    @property
    def betas(self) -> torch.Tensor:
        """``1 - alpha_bar_t / alpha_bar_{t-1}`` with ``alpha_bar_0 = 1``, computed in log space."""
        log_ab = torch.nn.functional.logsigmoid(self.log_snr)
        prev = torch.cat([torch.zeros(1, dtype=torch.float64), log_ab[:-1]])
        return -torch.expm1(log_ab - prev)

    @property
    def zero_terminal_snr(self) -> bool:
        """True when ``lambda_T = -inf`` (alpha_bar_T = 0)."""
        return bool(self.log_snr[-1] == -math.inf)

    def model_time_at(self, log_snr: float) -> float:
        """The model time at an arbitrary log-SNR, interpolated linearly between steps.

        Used when a sampler visits a noise level between training steps (churn).
        """
        finite = torch.isfinite(self.log_snr)
        lam = self.log_snr[finite].flip(0).numpy()
        times = self.model_times[finite].flip(0).numpy()
        return float(np.interp(log_snr, lam, times))

    def __repr__(self) -> str:
        return (
            f"Schedule(name={self.name!r}, T={self.T}, path={self.path!r}, log_snr=[{float(self.log_snr[0]):.6g} .. "
            f"{float(self.log_snr[-1]):.6g}])"
        )


def path_scale(path: str, log_snr: torch.Tensor) -> torch.Tensor:
    """``z_path / z_vp`` at these log-SNRs: 1 on the vp path, ``1 / (alpha_vp + sigma_vp)`` on the flow path."""
    if path == "vp":
        return torch.ones_like(log_snr)
    return 1.0 / (torch.sigmoid(log_snr).sqrt() + torch.sigmoid(-log_snr).sqrt())


# -- constructors -------------------------------------------------------------------
def from_log_snr(
    log_snr: object,
    name: str = "custom",
    model_times: object | None = None,
    log_snr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    model_time_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Schedule:
    """A schedule from log-SNR values for ``t = 1..T`` (validated)."""
    return Schedule(
        log_snr=_as_float64_vector(log_snr, "log_snr"),
        name=name,
        model_times=None if model_times is None else _as_float64_vector(model_times, "model_times"),
        log_snr_fn=log_snr_fn,
        model_time_fn=model_time_fn,
    )


def from_alphas_cumprod(alphas_cumprod: object, name: str = "custom") -> Schedule:
    """A schedule from ``alpha_bar_t`` for ``t = 1..T``: strictly decreasing in (0, 1), last may be 0."""
    alpha_bar = _as_float64_vector(alphas_cumprod, "alphas_cumprod")
    bad = torch.isnan(alpha_bar) | (alpha_bar >= 1) | (alpha_bar < 0)
    bad[:-1] |= alpha_bar[:-1] <= 0
    if bad.any():
        i = _first_bad(bad)
        raise ScheduleError(
            explain(
                f"alphas_cumprod of schedule {name!r} is out of range at t={i + 1}",
                expected="0 < alpha_bar_t < 1 (alpha_bar_T = 0 allowed for zero terminal SNR)",
                got=f"{float(alpha_bar[i])}",
                fix="pass cumprod(1 - betas) with betas in (0, 1]",
            )
        )
    log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
    return Schedule(log_snr=log_snr, name=name)


def from_betas(betas: object, name: str = "custom") -> Schedule:
    """A schedule from betas: ``0 < beta_t < 1`` (``beta_T = 1`` allowed: zero terminal SNR)."""
    beta = _as_float64_vector(betas, "betas")
    bad = torch.isnan(beta) | (beta <= 0) | (beta > 1)
    bad[:-1] |= beta[:-1] >= 1
    if bad.any():
        i = _first_bad(bad)
        raise ScheduleError(
            explain(
                f"betas of schedule {name!r} are out of range at t={i + 1}",
                expected="0 < beta_t < 1 (beta_T = 1 allowed for zero terminal SNR)",
                got=f"beta={float(beta[i])}",
                fix="betas must be positive noise increments; check the sign and the order of your array",
            )
        )
    log_alpha_bar = torch.cumsum(torch.log1p(-beta), 0)
    log_snr = log_alpha_bar - torch.log(-torch.expm1(log_alpha_bar))
    return Schedule(log_snr=log_snr, name=name)


@PRESETS.register("linear")
def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM linear: ``beta = linspace(beta_start, beta_end, T)`` (Ho et al. 2020)."""
    _check_T(T)
    return from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64), name="linear")


@PRESETS.register("scaled_linear")
def scaled_linear(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Stable Diffusion: ``beta = linspace(sqrt(beta_start), sqrt(beta_end), T)**2``."""
    _check_T(T)
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    return from_betas(betas, name="scaled_linear")


@PRESETS.register("cosine")
def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal cosine: ``f(u) = cos(((u+s)/(1+s)) pi/2)**2``, ``beta_i = min(1 - f((i+1)/T)/f(i/T),
    max_beta)``.
    """
    _check_T(T)

    def f(u: np.ndarray) -> np.ndarray:
        return np.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    i = np.arange(T, dtype=np.float64)
    betas = np.minimum(1 - f((i + 1) / T) / f(i / T), max_beta)
    return from_betas(betas, name="cosine")


@PRESETS.register("vdm")
def vdm(gamma_min: float = -13.3, gamma_max: float = 5.0, T: int = 1000) -> Schedule:
    """VDM fixed linear gamma: ``lambda(u) = -(gamma_min + (gamma_max - gamma_min) u)``, u in [0, 1].

    Discretized at ``u = linspace(0, 1, T)``; the model time is ``u``.
    """
    _check_T(T)
    if not gamma_max > gamma_min:
        raise ScheduleError(
            explain(
                "VDM schedule needs gamma_max > gamma_min",
                expected="gamma_min < gamma_max",
                got=f"gamma_min={gamma_min}, gamma_max={gamma_max}",
                fix="swap the two values",
            )
        )

    def log_snr_fn(u: torch.Tensor) -> torch.Tensor:
        return -(gamma_min + (gamma_max - gamma_min) * u)

    u = torch.linspace(0, 1, T, dtype=torch.float64)
    return Schedule(log_snr=log_snr_fn(u), name="vdm", model_times=u, log_snr_fn=log_snr_fn, model_time_fn=lambda v: v)


@PRESETS.register("edm")
def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, T: int = 1000) -> Schedule:
    """EDM (Karras et al. 2022): ``sigma(u) = (sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``.

    Variance exploding ``x + sigma n``; ``lambda = -2 ln sigma``; VP-equivalent
    ``alpha_bar = 1/(1 + sigma**2)``. Discretized at ``u = linspace(0, 1, T)``; the model
    time is ``sigma``.
    """
    _check_T(T)
    if not 0 < sigma_min < sigma_max:
        raise ScheduleError(
            explain(
                "EDM schedule needs 0 < sigma_min < sigma_max",
                expected="0 < sigma_min < sigma_max",
                got=f"sigma_min={sigma_min}, sigma_max={sigma_max}",
                fix="pass positive noise levels with sigma_min below sigma_max",
            )
        )
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)

    def log_snr_fn(u: torch.Tensor) -> torch.Tensor:
        return -2 * rho * torch.log(lo + u * (hi - lo))

    u = torch.linspace(0, 1, T, dtype=torch.float64)
    lam = log_snr_fn(u)
    return Schedule(
        log_snr=lam,
        name="edm",
        model_times=torch.exp(-0.5 * lam),
        log_snr_fn=log_snr_fn,
        model_time_fn=lambda v: torch.exp(-0.5 * log_snr_fn(v)),
    )


def _positive_finite(value: object, what: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ScheduleError(explain(f"invalid {what}", expected="a finite number > 0", got=repr(value), fix=fix))
    return float(value)


def flow_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """diffusers' ``calculate_shift``: ``mu`` linear in the number of image tokens (Flux / SD3.5 dynamic shifting);
    the shift is ``exp(mu)``."""
    if not isinstance(image_seq_len, int) or image_seq_len < 1 or max_seq_len == base_seq_len:
        raise ScheduleError(
            explain(
                "invalid image sequence length for dynamic shifting",
                expected="an integer >= 1 (image tokens: (H / patch) x (W / patch)), max_seq_len != base_seq_len",
                got=f"image_seq_len={image_seq_len!r}, base/max {base_seq_len}/{max_seq_len}",
                fix="pass the latent image's token count, or mu itself",
            )
        )
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


@PRESETS.register("flow")
def flow(
    T: int = 1000,
    shift: float = 1.0,
    mu: float | None = None,
    use_dynamic_shifting: bool = False,
) -> Schedule:
    """Rectified flow / flow matching: ``z_t = (1 - t) x0 + t eps`` at ``t = i / T`` (``i = 1..T``, diffusers'
    ``FlowMatchEulerDiscreteScheduler`` grid), ``lambda = 2 log((1 - t) / t)``, ``lambda_T = -inf``.

    ``shift`` s (SD3) maps ``t' = s t / (1 + (s - 1) t)``, an exact log-SNR offset of ``-2 ln s``;
    ``use_dynamic_shifting`` (Flux, SD3.5) takes the shift from ``mu`` (``s = exp(mu)``; see
    :func:`flow_shift_mu` for mu from the image size). The model time is ``1000 t'``, what diffusers' flow
    transformers receive.
    """
    _check_T(T)
    if use_dynamic_shifting:
        if mu is None:
            raise ScheduleError(
                explain(
                    "dynamic shifting needs mu",
                    expected="mu (from the image size: schedules.flow_shift_mu(image_seq_len)) or a fixed shift",
                    got="use_dynamic_shifting=True, mu=None",
                    fix="pass mu, or use_dynamic_shifting=False with shift",
                )
            )
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
            raise ScheduleError(
                explain("invalid mu", expected="a finite number (the shift is exp(mu))", got=repr(mu), fix="mu = 0.5")
            )
        if shift != 1.0:
            raise ScheduleError(
                explain(
                    "shift with dynamic shifting",
                    expected="either a fixed shift or dynamic shifting (whose shift is exp(mu))",
                    got=f"shift={shift!r}, use_dynamic_shifting=True, mu={mu!r}",
                    fix="drop shift (diffusers ignores it under dynamic shifting), or turn dynamic shifting off",
                )
            )
        s = math.exp(float(mu))
    else:
        if mu is not None:
            raise ScheduleError(
                explain(
                    "mu without dynamic shifting",
                    expected="mu only with use_dynamic_shifting=True",
                    got=f"mu={mu!r}, use_dynamic_shifting=False",
                    fix="drop mu, or set use_dynamic_shifting=True",
                )
            )
        s = _positive_finite(shift, "flow shift", "shift = 1.0 (none), 3.0 for SD3")
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    shifted = s * t / (1 + (s - 1) * t)
    log_snr = 2 * (torch.log1p(-shifted) - torch.log(shifted))  # -inf at t = 1
    name = "flow" + ("" if s == 1.0 else f"[shift={s:.4g}]")
    return Schedule(log_snr=log_snr, name=name, model_times=1000.0 * shifted, path="flow")


def from_flow_sigmas(sigmas: object, name: str = "flow-grid", time_scale: float = 1000.0) -> Schedule:
    """A flow-path schedule on a given grid of ``t`` (``sigma`` in diffusers' flow schedulers: ``z = (1 - t) x0 +
    t eps``), noisiest last, in (0, 1]; a trailing 0 (diffusers appends one for the final step) is dropped. The model
    time is ``time_scale * t``."""
    t = _as_float64_vector(sigmas, "flow sigmas").flip(0)
    if t[0] == 0:  # diffusers' appended terminal 0, now first after the flip: the final step, not a grid point
        t = t[1:]
    bad = torch.isnan(t) | (t <= 0) | (t > 1)
    if t.numel() < 1 or bool(bad.any()):
        raise ScheduleError(
            explain(
                f"flow sigmas of schedule {name!r} are out of range",
                expected="values in (0, 1], increasing with noise (t = 1 is pure noise)",
                got=f"{t.tolist()[:8]}",
                fix="pass the scheduler's sigmas (scheduler.sigmas after set_timesteps)",
            )
        )
    log_snr = 2 * (torch.log1p(-t) - torch.log(t))
    return Schedule(log_snr=log_snr, name=name, model_times=time_scale * t, path="flow")


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ScheduleError(
            explain("number of training steps T is invalid", expected="an integer >= 1", got=repr(T), fix="pass T=1000")
        )


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Lin et al. 2023: shift and scale ``sqrt(alpha_bar)`` so ``alpha_bar_T = 0`` and ``alpha_bar_1`` is unchanged.

    ``a = sqrt(alpha_bar); a = (a - a[-1]) * a[0] / (a[0] - a[-1]); alpha_bar = a**2``.
    Then ``beta_T = 1`` and ``lambda_T = -inf``: eps-prediction can no longer recover x0 at
    T (train with v-prediction) and samplers must start at exactly T ("trailing" spacing).
    """
    a = schedule.alpha
    a = (a - a[-1]) * a[0] / (a[0] - a[-1])
    alpha_bar = a**2
    alpha_bar[-1] = 0.0
    rescaled = from_alphas_cumprod(alpha_bar, name=f"{schedule.name}+zero_terminal_snr")
    return Schedule(log_snr=rescaled.log_snr, name=rescaled.name, model_times=schedule.model_times)


_DIFFUSERS_KEYS = {
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
}


def from_diffusers_config(config: Mapping[str, object], mu: float | None = None) -> Schedule:
    """A schedule from a diffusers scheduler config (``scheduler.config`` or its JSON as a dict).

    Reads ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
    (linear, scaled_linear, squaredcos_cap_v2), ``trained_betas`` and
    ``rescale_betas_zero_snr``; other keys (prediction_type, clip_sample, ...) describe
    the sampler, not the schedule, and are ignored here. A flow-matching scheduler's config
    (``_class_name`` ``FlowMatch...``, or ``shift`` / ``use_dynamic_shifting`` without betas) gives the
    :func:`flow` path with its ``shift``, or with dynamic shifting the shift ``exp(mu)`` (``mu`` is required then:
    diffusers computes it per image size, :func:`flow_shift_mu`).
    """
    T = int(config.get("num_train_timesteps", 1000))
    if is_flow_config(config):
        if config.get("use_dynamic_shifting", False):
            return flow(T, use_dynamic_shifting=True, mu=mu)
        if mu is not None:
            flow(T, mu=mu)  # refused: mu without dynamic shifting
        return flow(T, shift=config.get("shift", 1.0))  # type: ignore[arg-type]
    trained = config.get("trained_betas")
    kind = config.get("beta_schedule", "linear")
    if trained is not None:
        schedule = from_betas(trained, name="diffusers:trained_betas")
    elif kind == "linear":
        schedule = linear(T, float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
    elif kind == "scaled_linear":
        schedule = scaled_linear(T, float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012)))
    elif kind == "squaredcos_cap_v2":
        schedule = cosine(T)
    else:
        raise ConfigError(
            explain(
                f"unsupported diffusers beta_schedule {kind!r}",
                expected="linear, scaled_linear or squaredcos_cap_v2 (or trained_betas)",
                got=repr(kind),
                fix="pass the scheduler's alphas_cumprod to schedules.from_alphas_cumprod instead",
            )
        )
    if config.get("rescale_betas_zero_snr", False):
        schedule = rescale_zero_terminal_snr(schedule)
    return schedule


def is_flow_config(config: Mapping[str, object]) -> bool:
    """A flow-matching scheduler's config: its class is ``FlowMatch...``, or it states a flow shift and no betas."""
    cls = str(config.get("_class_name", ""))
    if cls:
        return cls.startswith("FlowMatch")
    return ("shift" in config or "use_dynamic_shifting" in config) and "beta_schedule" not in config


def sampling_indices(T: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """0-based training-step indices a sampler visits, noisiest first (index ``i`` is ``t = i + 1``).

    - ``linspace``: ``unique(round(linspace(0, T-1, steps)))`` — both ends.
    - ``leading``: ``arange(steps) * (T // steps)`` — diffusers' default; never visits T.
    - ``trailing``: ``round(arange(T, 0, -T/steps)) - 1`` — starts at exactly T (Lin et al.).
    """
    if spacing not in SPACINGS:
        raise ConfigError(
            explain("unknown timestep spacing", expected=" / ".join(SPACINGS), got=repr(spacing), fix="use 'trailing'")
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ConfigError(
            explain(
                "number of sampling steps is out of range",
                expected=f"an integer in [1, T={T}]",
                got=repr(steps),
                fix=f"choose steps between 1 and {T}",
            )
        )
    if spacing == "linspace":
        idx = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(np.int64))
    elif spacing == "leading":
        idx = np.arange(steps, dtype=np.int64) * (T // steps)
    else:
        idx = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
        idx = np.unique(idx)
    return torch.from_numpy(np.sort(idx)[::-1].copy())


def get(name: str, **kwargs: object) -> Schedule:
    """A preset schedule by name (``linear``, ``cosine``, ``scaled_linear``, ``vdm``, ``edm``, ``flow``)."""
    return PRESETS.create(name, **kwargs)

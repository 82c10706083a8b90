"""Bits per dimension: the discrete-time VLB and the continuous-time VDM estimator (THEORY.md §4).

Discrete-time VLB (improved-diffusion structure), per sample, in nats::

    NLL <= L_prior + sum_{t=2..T} L_{t-1} + L_0
    L_prior = KL(q(x_T|x0) || N(0, I)) = 0.5 sum(a x0^2 + (1 - a) - 1 - ln(1 - a)),  a = alpha_bar_T
    L_{t-1} = 0.5 (SNR_{t-1} - SNR_t) ||x0 - x0_hat(x_t, t)||^2   (fixed-small variances)
    L_0     = -log p(x0 | x_1): discretized Gaussian, bins x ± 1/255, open edge bins,
              mean x0_hat(x_1, 1), variance the clipped posterior variance beta~_2

The sum over t is either exact (all T-1 terms) or a stratified estimate: K contiguous
strata, one t drawn per stratum, weighted by the stratum size (unbiased).

Continuous-time VDM (Kingma et al. 2021), for a differentiable ``lambda(u)``::

    L_diff  = 0.5 E_u[(-dlambda/du) ||eps - eps_hat(z_u, u)||^2]      (dlambda/du by autograd)
    L_recon = -log p(x | z_0): 256-way categorical over the 8-bit grid (or a Gaussian
              decoder for continuous data), at lambda(0)
    L_prior = 0.5 sum(sigma_1^2 + alpha_1^2 x^2 - 1 - ln sigma_1^2)

``bpd = NLL / (D ln 2)``. A continuous-density estimate on [-1, 1] data becomes a
discrete one by adding 7 bits/dim (256 bins of width 2^-7); every result names its
convention. Standard errors are over samples (each sample draws its own t and noise
from its own generator, so estimates are iid and independent of the batch size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffeval.errors import InputError, explain
from diffeval.metrics.base import Batch, mean_and_stderr
from diffeval.samplers.base import SeedRNG
from diffeval.samplers.generic import PREDICTIONS
from diffeval.schedules import Schedule

__all__ = [
    "normal_cdf",
    "discretized_gaussian_log_likelihood",
    "prior_kl",
    "vdm_weight",
    "gaussian_decoder_nll",
    "check_8bit",
    "BpdEstimate",
    "vlb_nll",
    "vdm_nll",
    "BitsPerDim",
    "ESTIMATORS",
    "OFFSET_BITS_SIGNED",
]

LN2 = math.log(2.0)
OFFSET_BITS_SIGNED = 7.0  # log2(256 / 2): 256 bins of width 2/256 on [-1, 1]
ESTIMATORS = ("vlb", "vdm")
BIN_HALF_WIDTH = 1.0 / 255.0


def normal_cdf(x: torch.Tensor, approx: str = "exact") -> torch.Tensor:
    """Standard normal CDF: ``exact`` (erf) or improved-diffusion's ``tanh`` approximation."""
    if approx == "exact":
        return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approx == "tanh":
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise InputError(explain("unknown CDF", expected="exact or tanh", got=repr(approx), fix="use 'exact'"))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, cdf: str = "exact") -> torch.Tensor:
    """log P(x) per element for an 8-bit x in [-1, 1]: Gaussian mass of the bin x ± 1/255, edge bins open."""
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    cdf_plus = normal_cdf(inv_scale * (centered + BIN_HALF_WIDTH), cdf)
    cdf_minus = normal_cdf(inv_scale * (centered - BIN_HALF_WIDTH), cdf)
    log_cdf_plus = torch.log(cdf_plus.clamp_min(1e-300))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp_min(1e-300))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp_min(1e-300))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


def prior_kl(x0: torch.Tensor, alpha_sq: float) -> torch.Tensor:
    """KL(N(alpha x0, 1 - alpha^2) || N(0, 1)) per element, nats (VP)."""
    sigma_sq = 1.0 - alpha_sq
    log_sigma_sq = math.log(sigma_sq) if sigma_sq > 0 else -math.inf
    return 0.5 * (alpha_sq * x0**2 + sigma_sq - 1.0 - log_sigma_sq)


def check_8bit(x0: torch.Tensor, require_grid: bool = True) -> None:
    """Data must be finite; for discrete decoders also in [-1, 1] on the grid k/127.5 - 1."""
    if not torch.is_tensor(x0) or x0.ndim < 2 or x0.shape[0] == 0:
        raise InputError(explain("bits/dim needs a batch of data", expected="a non-empty (N, ...) tensor", got=f"{tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__}", fix="pass data images"))
    if not bool(torch.isfinite(x0).all()):
        raise InputError(explain("data contains NaN or inf", expected="finite 8-bit data in [-1, 1]", got="non-finite values", fix="clean the data"))
    if not require_grid:
        return  # continuous data (Gaussian decoder): any finite values
    lo, hi = float(x0.min()), float(x0.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise InputError(explain("data is outside [-1, 1]", expected="8-bit data scaled as u8 / 127.5 - 1", got=f"range [{lo:.4g}, {hi:.4g}]", fix="scale uint8 images with x / 127.5 - 1 (or pass uint8)"))
    k = (x0.double() + 1) * 127.5
    off = float((k - k.round()).abs().max())
    if off > 1e-4:
        raise InputError(
            explain("data is not on the 8-bit grid", expected="values k/127.5 - 1 for integer k", got=f"values up to {off:.3g} bins off the grid", fix="quantize to uint8 first, or use the continuous (gaussian) decoder and the +7 offset")
        )


@dataclass
class BpdEstimate:
    """Per-sample NLL bounds (nats, summed over dimensions) and their components."""

    nll_nats: torch.Tensor
    components: dict[str, torch.Tensor]
    dims: int
    terms: torch.Tensor | None = None  # (N, T-1) every L_{t-1} when computed exactly

    @property
    def bpd(self) -> torch.Tensor:
        return self.nll_nats / (self.dims * LN2)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise InputError(explain("unknown prediction type", expected=" / ".join(PREDICTIONS), got=repr(prediction), fix="say what the model outputs"))


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _x0_eps_hat(model: Callable[..., torch.Tensor], prediction: str, z: torch.Tensor, model_time: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, where: Callable[[int], str]) -> tuple[torch.Tensor, torch.Tensor]:
    """x0_hat and eps_hat (float64) from one model call at per-sample times; NaN names the t."""
    device = _model_device(model)
    with torch.no_grad():
        out = model(z.float().to(device), model_time.float().to(device))
    if not torch.is_tensor(out) or out.shape != z.shape:
        raise InputError(explain("model output has the wrong shape", expected=f"{tuple(z.shape)}", got=f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}", fix="return one prediction per pixel"))
    out = out.double().cpu()
    bad = ~torch.isfinite(out).flatten(1).all(1)
    if bool(bad.any()):
        raise InputError(explain(f"model returned NaN/inf at {where(int(torch.nonzero(bad)[0, 0]))}", expected="finite predictions", got=f"{int(bad.sum())} bad samples", fix="check the weights, the dtype and the model's time input"))
    a, s = alpha.view(-1, *[1] * (z.ndim - 1)), sigma.view(-1, *[1] * (z.ndim - 1))
    if prediction == "eps":
        if bool((a == 0).any()):
            raise InputError(explain("eps-prediction at zero SNR", expected="alpha > 0 wherever the model is evaluated", got="alpha = 0 (zero terminal SNR)", fix="use a v-prediction model with zero-terminal-SNR schedules"))
        return (z - s * out) / a, out
    if prediction == "x0":
        return out, (z - a * out) / s.clamp_min(1e-300)
    return a * z - s * out, s * z + a * out


def vlb_nll(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    x0: torch.Tensor,
    prediction: str = "eps",
    *,
    rng: SeedRNG,
    strata: int | None = 50,
    decoder: str = "discretized",
    cdf: str = "exact",
    clip_x0: bool = True,
) -> BpdEstimate:
    """Discrete-time VLB per sample; ``strata=None`` sums all T-1 terms (and returns them)."""
    _check_prediction(prediction)
    if decoder not in ("discretized", "gaussian"):
        raise InputError(explain("unknown VLB decoder", expected="discretized (8-bit data) or gaussian (continuous data)", got=repr(decoder), fix="use 'discretized'"))
    check_8bit(x0, require_grid=decoder == "discretized")
    if schedule.T < 2:
        raise InputError(explain("the VLB needs a schedule with at least 2 steps", expected="T >= 2", got=f"T = {schedule.T}", fix="pass the training schedule"))
    if len(rng) != x0.shape[0]:
        raise InputError(explain("one random stream per sample is needed", expected=f"{x0.shape[0]} seeds", got=f"{len(rng)}", fix="build SeedRNG with one seed per sample"))
    x0 = x0.double().cpu()
    n, dims = x0.shape[0], x0[0].numel()
    T = schedule.T  # noqa: N806
    alpha_bar = schedule.alpha_bar
    snr = torch.exp(schedule.log_snr)

    def denoise(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = alpha_bar[index].sqrt(), (1 - alpha_bar[index]).sqrt()
        z = a.view(-1, *[1] * (x0.ndim - 1)) * x0 + s.view(-1, *[1] * (x0.ndim - 1)) * rng.randn(x0.shape[1:], torch.float64)
        x0_hat, _ = _x0_eps_hat(model, prediction, z, schedule.model_times[index], a, s, lambda i: f"training step t={int(index[i]) + 1} (log-SNR {float(schedule.log_snr[index[i]]):.4g})")
        return (x0_hat.clamp(-1, 1) if clip_x0 else x0_hat), z

    prior = prior_kl(x0, float(alpha_bar[-1])).flatten(1).sum(1)
    # L_{t-1}, t = 2..T (0-based index i = t - 1 = 1..T-1)
    if strata is None:
        terms = torch.zeros(n, T - 1, dtype=torch.float64)
        for i in range(1, T):
            index = torch.full((n,), i, dtype=torch.long)
            x0_hat, _ = denoise(index)
            terms[:, i - 1] = 0.5 * (snr[i - 1] - snr[i]) * ((x0 - x0_hat) ** 2).flatten(1).sum(1)
        diffusion = terms.sum(1)
    else:
        if not isinstance(strata, int) or not 1 <= strata <= T - 1:
            raise InputError(explain("invalid number of strata", expected=f"an integer in [1, T-1 = {T - 1}] or None (all terms)", got=repr(strata), fix="use strata=50"))
        terms = None
        diffusion = torch.zeros(n, dtype=torch.float64)
        for group in np.array_split(np.arange(1, T), strata):
            lo, size = int(group[0]), len(group)
            index = lo + (rng.rand(()).double() * size).floor().long().clamp_max(size - 1)
            x0_hat, _ = denoise(index)
            weight = 0.5 * (snr[index - 1] - snr[index]) * size
            diffusion += weight * ((x0 - x0_hat) ** 2).flatten(1).sum(1)
    # L_0: decoder at t = 1 with the clipped fixed-small variance beta~_2
    beta_2 = 1 - alpha_bar[1] / alpha_bar[0]
    var_dec = float(beta_2 * (1 - alpha_bar[0]) / (1 - alpha_bar[1]))
    x0_hat, _ = denoise(torch.zeros(n, dtype=torch.long))
    if decoder == "discretized":
        log_p = discretized_gaussian_log_likelihood(x0, x0_hat, torch.full_like(x0, 0.5 * math.log(var_dec)), cdf)
    else:
        log_p = -0.5 * (math.log(2 * math.pi * var_dec) + (x0 - x0_hat) ** 2 / var_dec)
    dec = -log_p.flatten(1).sum(1)
    return BpdEstimate(nll_nats=prior + diffusion + dec, components={"prior": prior, "diffusion": diffusion, "decoder": dec}, dims=dims, terms=terms)


def gaussian_decoder_nll(x: torch.Tensor, z0_scaled: torch.Tensor, lam_0: float) -> torch.Tensor:
    """-log N(x; z_0/alpha_0, exp(-lambda_0)) per element: VDM's continuous decoder (mean over eps: 0.5 ln(2 pi e / SNR_0))."""
    var = math.exp(-lam_0)
    return 0.5 * (math.log(2 * math.pi * var) + (z0_scaled - x) ** 2 / var)


def vdm_weight(schedule: Schedule, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lambda(u)`` and ``-dlambda/du`` (autograd) of a continuous schedule; errors where not differentiable."""
    fn = schedule.log_snr_fn
    if fn is None or schedule.model_time_fn is None:
        raise InputError(
            explain(
                f"schedule {schedule.name!r} has no differentiable lambda(u)",
                expected="a continuous-time schedule (log_snr_fn and model_time_fn), e.g. schedules.vdm() or schedules.edm()",
                got="a discrete schedule",
                fix="use the discrete VLB (estimator='vlb') for discrete-time models",
            )
        )
    u = u.detach().double().requires_grad_(True)
    lam = fn(u)
    try:
        (grad,) = torch.autograd.grad(lam.sum(), u, allow_unused=True)
    except RuntimeError:  # lambda(u) was computed outside autograd (detached, NumPy, a lookup table)
        grad = None
    if grad is None or not bool(torch.isfinite(grad).all()) or not bool(torch.isfinite(lam).all()):
        bad = float(u[~torch.isfinite(grad)][0]) if grad is not None and not bool(torch.isfinite(grad).all()) else float("nan")
        raise InputError(explain(f"lambda(u) of {schedule.name!r} is not differentiable where the estimator needs it", expected="finite lambda and dlambda/du on [0, 1]", got=f"non-finite value or gradient (u = {bad:.4g})", fix="use a schedule with finite log-SNR on [0, 1] (no zero terminal SNR) or the discrete VLB"))
    if bool((grad >= 0).any()):
        raise InputError(explain(f"lambda(u) of {schedule.name!r} is not decreasing", expected="dlambda/du < 0", got=f"dlambda/du >= 0 at u = {float(u[grad >= 0][0]):.4g}", fix="order the schedule from clean (u=0) to noisy (u=1)"))
    return lam.detach(), -grad.detach()


def vdm_nll(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    x0: torch.Tensor,
    prediction: str = "eps",
    *,
    rng: SeedRNG,
    n_t: int = 1,
    t_sampling: str = "stratified",
    decoder: str = "categorical",
) -> BpdEstimate:
    """Continuous-time VDM bound per sample.

    ``t_sampling``: ``stratified`` — each sample draws ``n_t`` times ``u_j = (u0 + j/n_t) mod 1``
    from its own generator (iid across samples: honest standard errors, batch-size independent);
    ``antithetic`` — VDM's ``u_i = (u0 + i/B) mod 1`` across the batch (lower variance of the
    mean, batch-dependent, per-sample standard error is conservative).
    """
    _check_prediction(prediction)
    if decoder not in ("categorical", "gaussian"):
        raise InputError(explain("unknown VDM decoder", expected="categorical (8-bit data) or gaussian (continuous data)", got=repr(decoder), fix="use 'categorical'"))
    if t_sampling not in ("stratified", "antithetic"):
        raise InputError(explain("unknown t sampling", expected="stratified or antithetic", got=repr(t_sampling), fix="use 'stratified'"))
    if not isinstance(n_t, int) or n_t < 1:
        raise InputError(explain("invalid n_t", expected="an integer >= 1", got=repr(n_t), fix="use n_t=1"))
    check_8bit(x0, require_grid=decoder == "categorical")
    x0 = x0.double().cpu()
    n, dims = x0.shape[0], x0[0].numel()
    ends, _ = vdm_weight(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64))
    lam_0, lam_1 = float(ends[0]), float(ends[1])
    a1_sq = 1 / (1 + math.exp(-lam_1))
    prior = prior_kl(x0, a1_sq).flatten(1).sum(1)
    # L_recon at lambda(0): z_0 = alpha_0 x + sigma_0 eps, decoded from z_0 / alpha_0 with sd exp(-lambda_0 / 2)
    z0_scaled = x0 + math.exp(-lam_0 / 2) * rng.randn(x0.shape[1:], torch.float64)
    if decoder == "categorical":
        grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
        target = ((x0 + 1) * 127.5).round().long().flatten(1)
        recon = torch.zeros(n, dtype=torch.float64)
        for i in range(n):  # (D, 256) logits per sample keeps memory at O(D * 256)
            logits = -0.5 * ((z0_scaled[i].flatten()[:, None] - grid[None, :]) * math.exp(lam_0 / 2)) ** 2
            recon[i] = -torch.log_softmax(logits, dim=1).gather(1, target[i][:, None]).sum()
    else:
        recon = gaussian_decoder_nll(x0, z0_scaled, lam_0).flatten(1).sum(1)
    # L_diff with dlambda/du by autograd
    if t_sampling == "stratified":
        u0 = rng.rand(()).double()
        u = (u0[:, None] + torch.arange(n_t, dtype=torch.float64)[None, :] / n_t) % 1.0
    else:
        u0 = rng.rand(()).double()[0]
        u = (u0 + torch.arange(n * n_t, dtype=torch.float64).view(n, n_t) / (n * n_t)) % 1.0
    diffusion = torch.zeros(n, dtype=torch.float64)
    for j in range(n_t):
        lam, weight = vdm_weight(schedule, u[:, j])
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        eps = rng.randn(x0.shape[1:], torch.float64)
        z = alpha.view(-1, *[1] * (x0.ndim - 1)) * x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * eps
        _, eps_hat = _x0_eps_hat(model, prediction, z, schedule.model_time_fn(u[:, j]), alpha, sigma, lambda i, j=j, lam=lam: f"u={float(u[i, j]):.4g} (log-SNR {float(lam[i]):.4g})")  # type: ignore[misc]
        diffusion += 0.5 * weight * ((eps - eps_hat) ** 2).flatten(1).sum(1) / n_t
    return BpdEstimate(nll_nats=prior + diffusion + recon, components={"prior": prior, "diffusion": diffusion, "decoder": recon}, dims=dims)


class BitsPerDim:
    """Streaming bits/dim of real data under a model: sums of per-sample bpd (and squares) and components.

    Fed with uint8 data batches (``batch.images``; ``batch.seeds`` key each sample's own
    random stream, so the result does not depend on the batch size).
    """

    name = "bpd"
    higher_is_better = False
    state_keys = ("n", "sums")
    extractor = None

    def __init__(self, model: Callable[..., torch.Tensor], schedule: Schedule, prediction: str = "eps", estimator: str = "vlb", seed: int = 0, **options: Any) -> None:
        if estimator not in ESTIMATORS:
            raise InputError(explain("unknown bits/dim estimator", expected=" / ".join(ESTIMATORS), got=repr(estimator), fix="use 'vlb' for discrete-time models, 'vdm' for continuous-time ones"))
        allowed = {"vlb": {"strata", "decoder", "cdf", "clip_x0"}, "vdm": {"n_t", "t_sampling", "decoder"}}[estimator]
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InputError(explain(f"unknown option(s) {unknown} for the {estimator} estimator", expected=f"options among {sorted(allowed)}", got=", ".join(unknown), fix="remove or correct them"))
        _check_prediction(prediction)
        self.model, self.schedule, self.prediction, self.estimator, self.seed, self.options = model, schedule, prediction, estimator, seed, options
        self.reset()

    @property
    def continuous_decoder(self) -> bool:
        return self.options.get("decoder") == "gaussian"

    @property
    def convention(self) -> str:
        if self.continuous_decoder:
            return "continuous Gaussian decoder; +7 bits/dim added for 8-bit data on [-1, 1] (256 bins of width 2^-7)"
        return "discrete decoder: discretized Gaussian over 256 bins (vlb)" if self.estimator == "vlb" else "discrete decoder: 256-way categorical (vdm)"

    def reset(self) -> None:
        self.n = 0
        self.sums = torch.zeros(5, dtype=torch.float64)  # bpd, bpd^2, prior, diffusion, decoder (bits/dim)

    def estimate(self, x0: torch.Tensor, seeds: Sequence[int]) -> BpdEstimate:
        rng = SeedRNG([self.seed * 1_000_003 + int(s) for s in seeds])
        fn = vlb_nll if self.estimator == "vlb" else vdm_nll
        return fn(self.model, self.schedule, x0, self.prediction, rng=rng, **self.options)  # type: ignore[operator]

    def update(self, batch: Batch) -> None:
        if batch.images is None:
            raise InputError(explain("bits/dim needs the data images", expected="batch.images (uint8)", got="None", fix="feed data through diffeval.evaluate.measure"))
        seeds = batch.seeds if batch.seeds else list(range(self.n, self.n + batch.images.shape[0]))
        x0 = batch.images.double() / 127.5 - 1 if batch.images.dtype == torch.uint8 else batch.images
        est = self.estimate(x0, seeds)
        scale = est.dims * LN2
        bpd = est.bpd
        self.sums += torch.stack([bpd.sum(), (bpd**2).sum(), *(est.components[k].sum() / scale for k in ("prior", "diffusion", "decoder"))])
        self.n += int(bpd.numel())

    def merge(self, other: BitsPerDim) -> BitsPerDim:
        self.n += other.n
        self.sums += other.sums
        return self

    def compute(self) -> dict[str, Any]:
        if self.n < 2:
            raise InputError(explain("bits/dim needs at least 2 samples for a standard error", expected="n >= 2", got=f"{self.n}", fix="evaluate more data"))
        s = self.sums.tolist()
        mean, stderr = mean_and_stderr(s[0], s[1], self.n)
        offset = OFFSET_BITS_SIGNED if self.continuous_decoder else 0.0
        return {
            "bpd": mean + offset,
            "bpd_stderr": stderr,
            "prior_bpd": s[2] / self.n,
            "diffusion_bpd": s[3] / self.n,
            "decoder_bpd": s[4] / self.n,
            "offset_bits": offset,
            "n": self.n,
            "estimator": self.estimator,
            "convention": self.convention,
            "options": dict(self.options),
        }

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

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.options import Option
from diffeval.core.quantize import dequantize, grid_offset, levels
from diffeval.core.seeds import SeedRNG
from diffeval.diffusion.denoiser import Denoiser, check_prediction
from diffeval.diffusion.schedules import Schedule
from diffeval.metrics.base import (
    LABEL_OPTION,
    Batch,
    BuildContext,
    Metric,
    MetricExample,
    MetricResult,
    mean_and_stderr,
    register_metric,
)
from diffeval.stats.uncertainty import SeedBlocks, loo_means

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


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, cdf: str = "exact"
) -> torch.Tensor:
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
        raise InputError(
            explain(
                "bits/dim needs a batch of data",
                expected="a non-empty (N, ...) tensor",
                got=f"{tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__}",
                fix="pass data images",
            )
        )
    if not bool(torch.isfinite(x0).all()):
        raise InputError(
            explain(
                "data contains NaN or inf",
                expected="finite 8-bit data in [-1, 1]",
                got="non-finite values",
                fix="clean the data",
            )
        )
    if not require_grid:
        return  # continuous data (Gaussian decoder): any finite values
    lo, hi = float(x0.min()), float(x0.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise InputError(
            explain(
                "data is outside [-1, 1]",
                expected="8-bit data scaled as u8 / 127.5 - 1",
                got=f"range [{lo:.4g}, {hi:.4g}]",
                fix="scale uint8 images with x / 127.5 - 1 (or pass uint8)",
            )
        )
    off = grid_offset(x0)
    if off > 1e-4:
        raise InputError(
            explain(
                "data is not on the 8-bit grid",
                expected="values k/127.5 - 1 for integer k",
                got=f"values up to {off:.3g} bins off the grid",
                fix="quantize to uint8 first, or use the continuous (gaussian) decoder and the +7 offset",
            )
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
    denoiser = Denoiser(model, schedule, prediction)
    if decoder not in ("discretized", "gaussian"):
        raise InputError(
            explain(
                "unknown VLB decoder",
                expected="discretized (8-bit data) or gaussian (continuous data)",
                got=repr(decoder),
                fix="use 'discretized'",
            )
        )
    check_8bit(x0, require_grid=decoder == "discretized")
    if schedule.T < 2:
        raise InputError(
            explain(
                "the VLB needs a schedule with at least 2 steps",
                expected="T >= 2",
                got=f"T = {schedule.T}",
                fix="pass the training schedule",
            )
        )
    if len(rng) != x0.shape[0]:
        raise InputError(
            explain(
                "one random stream per sample is needed",
                expected=f"{x0.shape[0]} seeds",
                got=f"{len(rng)}",
                fix="build SeedRNG with one seed per sample",
            )
        )
    x0 = x0.double().cpu()
    n, dims = x0.shape[0], x0[0].numel()
    T = schedule.T  # noqa: N806
    alpha_bar = schedule.alpha_bar
    snr = torch.exp(schedule.log_snr)

    def denoise(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = denoiser.noised(x0, index, rng.randn(x0.shape[1:], torch.float64))
        x0_hat, _ = denoiser.predict(z, index)
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
            raise InputError(
                explain(
                    "invalid number of strata",
                    expected=f"an integer in [1, T-1 = {T - 1}] or None (all terms)",
                    got=repr(strata),
                    fix="use strata=50",
                )
            )
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
    return BpdEstimate(
        nll_nats=prior + diffusion + dec,
        components={"prior": prior, "diffusion": diffusion, "decoder": dec},
        dims=dims,
        terms=terms,
    )


def gaussian_decoder_nll(x: torch.Tensor, z0_scaled: torch.Tensor, lam_0: float) -> torch.Tensor:
    """-log N(x; z_0/alpha_0, exp(-lambda_0)) per element: VDM's continuous decoder (mean over eps: 0.5 ln(2 pi e /
    SNR_0)).
    """
    var = math.exp(-lam_0)
    return 0.5 * (math.log(2 * math.pi * var) + (z0_scaled - x) ** 2 / var)


def vdm_weight(schedule: Schedule, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lambda(u)`` and ``-dlambda/du`` (autograd) of a continuous schedule; errors where not differentiable."""
    fn = schedule.log_snr_fn
    if fn is None or schedule.model_time_fn is None:
        raise InputError(
            explain(
                f"schedule {schedule.name!r} has no differentiable lambda(u)",
                expected=(
                    "a continuous-time schedule (log_snr_fn and model_time_fn), e.g. schedules.vdm() or schedules.edm()"
                ),
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
        bad = (
            float(u[~torch.isfinite(grad)][0])
            if grad is not None and not bool(torch.isfinite(grad).all())
            else float("nan")
        )
        raise InputError(
            explain(
                f"lambda(u) of {schedule.name!r} is not differentiable where the estimator needs it",
                expected="finite lambda and dlambda/du on [0, 1]",
                got=f"non-finite value or gradient (u = {bad:.4g})",
                fix="use a schedule with finite log-SNR on [0, 1] (no zero terminal SNR) or the discrete VLB",
            )
        )
    if bool((grad >= 0).any()):
        raise InputError(
            explain(
                f"lambda(u) of {schedule.name!r} is not decreasing",
                expected="dlambda/du < 0",
                got=f"dlambda/du >= 0 at u = {float(u[grad >= 0][0]):.4g}",
                fix="order the schedule from clean (u=0) to noisy (u=1)",
            )
        )
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
    denoiser = Denoiser(model, schedule, prediction)
    if decoder not in ("categorical", "gaussian"):
        raise InputError(
            explain(
                "unknown VDM decoder",
                expected="categorical (8-bit data) or gaussian (continuous data)",
                got=repr(decoder),
                fix="use 'categorical'",
            )
        )
    if t_sampling not in ("stratified", "antithetic"):
        raise InputError(
            explain(
                "unknown t sampling", expected="stratified or antithetic", got=repr(t_sampling), fix="use 'stratified'"
            )
        )
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
        grid = dequantize(torch.arange(256), torch.float64)
        target = levels(x0).flatten(1)
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
        _, eps_hat = denoiser.predict_at(
            z,
            lam,
            schedule.model_time_fn(u[:, j]),
            lambda i, j=j, lam=lam: f"u={float(u[i, j]):.4g} (log-SNR {float(lam[i]):.4g})",
        )
        diffusion += 0.5 * weight * ((eps - eps_hat) ** 2).flatten(1).sum(1) / n_t
    return BpdEstimate(
        nll_nats=prior + diffusion + recon,
        components={"prior": prior, "diffusion": diffusion, "decoder": recon},
        dims=dims,
    )


_ESTIMATOR_OPTIONS = {"vlb": {"strata", "decoder", "cdf", "clip_x0"}, "vdm": {"n_t", "t_sampling", "decoder"}}


@register_metric
class BitsPerDim(Metric):
    """Streaming bits/dim of real data under a model: sums of per-sample bpd (and squares) and components.

    Fed with data batches (``batch.images``, uint8 or float on the 8-bit grid;
    ``batch.seeds`` key each sample's own random stream, so the result does not depend
    on the batch size). From a config it evaluates the run's sampler's declared model,
    schedule and prediction on ``data``.
    """

    name = "bpd"
    direction = "lower"
    unit = "bits/dim"
    inputs = "data"
    options = (
        Option(
            "data", str, doc="the data: an image folder, an .npz image batch or a registered data set ('name:split')"
        ),
        Option("n", int, None, "use the first n images (default: all)", minimum=2, nullable=True),
        Option(
            "estimator",
            str,
            "vlb",
            "vlb: discrete-time bound; vdm: continuous-time (needs a differentiable schedule)",
            choices=ESTIMATORS,
        ),
        Option(
            "strata",
            int,
            None,
            "vlb: t strata of the sum over steps (default 50; see all_terms)",
            minimum=1,
            nullable=True,
        ),
        Option("all_terms", bool, None, "vlb: sum all T-1 terms exactly (slow)", nullable=True),
        Option(
            "cdf",
            str,
            None,
            "vlb: decoder CDF, exact (erf) or improved-diffusion's tanh",
            choices=("exact", "tanh"),
            nullable=True,
        ),
        Option("clip_x0", bool, None, "vlb: clip x0_hat to [-1, 1] (default true)", nullable=True),
        Option("n_t", int, None, "vdm: t draws per sample (default 1)", minimum=1, nullable=True),
        Option(
            "t_sampling",
            str,
            None,
            "vdm: stratified (per sample, default) or antithetic (across the batch)",
            choices=("stratified", "antithetic"),
            nullable=True,
        ),
        Option(
            "decoder",
            str,
            None,
            "discretized/categorical (8-bit data, default) or gaussian (continuous data, +7 bits/dim)",
            choices=("discretized", "categorical", "gaussian"),
            nullable=True,
        ),
        Option(
            "seed",
            int,
            None,
            "seed offset of the per-sample random streams (default: the run's seed)",
            minimum=0,
            nullable=True,
        ),
        Option(
            "blocks",
            int,
            10,
            "seed blocks (seed mod blocks) of the paired comparison in the gate (< 2: none)",
            minimum=0,
        ),
        LABEL_OPTION,
    )
    state_keys = ("n", "sums", "block_sums", "seed_blocks")

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: Schedule,
        prediction: str = "eps",
        estimator: str = "vlb",
        seed: int = 0,
        *,
        label: str | None = None,
        data: str = "",
        blocks: int = 10,
        **options: Any,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ConfigError(
                explain(
                    "unknown bits/dim estimator",
                    expected=" / ".join(ESTIMATORS),
                    got=repr(estimator),
                    fix="use 'vlb' for discrete-time models, 'vdm' for continuous-time ones",
                )
            )
        options = {k: v for k, v in options.items() if v is not None}
        if options.pop("all_terms", False):
            if "strata" in options:
                raise ConfigError(
                    explain(
                        "strata and all_terms both given",
                        expected="one of them",
                        got=f"strata = {options['strata']}, all_terms = true",
                        fix="drop one",
                    )
                )
            options["strata"] = None
        allowed = _ESTIMATOR_OPTIONS[estimator]
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(
                explain(
                    f"option(s) {unknown} do not apply to the {estimator} estimator",
                    expected=f"options among {sorted(allowed)}",
                    got=", ".join(unknown),
                    fix="remove them, or pick the estimator they belong to",
                )
            )
        decoder = options.get("decoder")
        valid_decoders = {"vlb": ("discretized", "gaussian"), "vdm": ("categorical", "gaussian")}[estimator]
        if decoder is not None and decoder not in valid_decoders:
            raise ConfigError(
                explain(
                    f"decoder {decoder!r} does not apply to the {estimator} estimator",
                    expected=" or ".join(valid_decoders),
                    got=repr(decoder),
                    fix=f"use decoder = {valid_decoders[0]!r}",
                )
            )
        check_prediction(prediction)
        self.model, self.schedule, self.prediction, self.estimator, self.seed, self.settings = (
            model,
            schedule,
            prediction,
            estimator,
            seed,
            options,
        )
        self.data_spec = data
        self.blocks = int(blocks)
        self.space = data
        self.custom_label = label
        self.source: Any = None  # from a config: the data source and the indices to evaluate
        self.indices: list[int] = []
        self.n_requested: int | None = None
        self.reset()

    @property
    def label(self) -> str:
        return self.custom_label or (f"bpd[{self.estimator}]@{self.space}" if self.space else f"bpd[{self.estimator}]")

    @property
    def continuous_decoder(self) -> bool:
        return self.settings.get("decoder") == "gaussian"

    @property
    def convention_text(self) -> str:
        if self.continuous_decoder:
            return "continuous Gaussian decoder; +7 bits/dim added for 8-bit data on [-1, 1] (256 bins of width 2^-7)"
        return (
            "discrete decoder: discretized Gaussian over 256 bins (vlb)"
            if self.estimator == "vlb"
            else "discrete decoder: 256-way categorical (vdm)"
        )

    def reset(self) -> None:
        self.n = 0
        self.sums = torch.zeros(5, dtype=torch.float64)  # bpd, bpd^2, prior, diffusion, decoder (bits/dim)
        self.seed_blocks = SeedBlocks(max(self.blocks, 1))
        self.block_sums = torch.zeros(self.seed_blocks.k, dtype=torch.float64)  # Σ bpd per seed block

    def estimate(self, x0: torch.Tensor, seeds: Sequence[int]) -> BpdEstimate:
        rng = SeedRNG([self.seed * 1_000_003 + int(s) for s in seeds])
        fn = vlb_nll if self.estimator == "vlb" else vdm_nll
        return fn(self.model, self.schedule, x0, self.prediction, rng=rng, **self.settings)

    def update(self, batch: Batch) -> None:
        if batch.images is None:
            raise InputError(
                explain(
                    "bits/dim needs the data images",
                    expected="batch.images (uint8, or float on the 8-bit grid)",
                    got="None",
                    fix="feed data through diffeval.engine.loop.measure",
                )
            )
        seeds = batch.seeds if batch.seeds else list(range(self.n, self.n + batch.images.shape[0]))
        x0 = dequantize(batch.images, torch.float64) if batch.images.dtype == torch.uint8 else batch.images
        est = self.estimate(x0, seeds)
        scale = est.dims * LN2
        bpd = est.bpd
        self.sums += torch.stack(
            [bpd.sum(), (bpd**2).sum(), *(est.components[k].sum() / scale for k in ("prior", "diffusion", "decoder"))]
        )
        self.n += int(bpd.numel())
        # the real seeds only: invented indices (for the noise of unseeded batches) must not pair
        blocks = self.seed_blocks.assign(batch.seeds, int(bpd.numel()))
        self.block_sums.index_add_(0, blocks, bpd.detach().cpu().double())

    def merge(self, other: BitsPerDim) -> BitsPerDim:
        self.n += other.n
        self.sums += other.sums
        self.block_sums += other.block_sums
        self.seed_blocks.merge(other.seed_blocks)
        return self

    def compute(self) -> MetricResult:
        if self.n < 2:
            raise InputError(
                explain(
                    "bits/dim needs at least 2 samples for a standard error",
                    expected="n >= 2",
                    got=f"{self.n}",
                    fix="evaluate more data",
                )
            )
        s = self.sums.tolist()
        mean, stderr = mean_and_stderr(s[0], s[1], self.n)
        offset = OFFSET_BITS_SIGNED if self.continuous_decoder else 0.0
        details = {
            "prior_bpd": s[2] / self.n,
            "diffusion_bpd": s[3] / self.n,
            "decoder_bpd": s[4] / self.n,
            "offset_bits": offset,
            "estimator": self.estimator,
            "options": dict(self.settings),
            "data": self.data_spec,
            "model": f"{self.prediction}-prediction, schedule {self.schedule.name}",
        }
        if self.blocks >= 2 and min(self.seed_blocks.counts) >= 1 and max(self.seed_blocks.counts) < self.n:
            loo = loo_means(self.block_sums, self.seed_blocks.counts) + offset
            details["pairing"] = self.seed_blocks.record(
                "jackknife",
                loo.tolist(),
                reference=(
                    f"{self.data_spec}; noise seed {self.seed}; {self.estimator}"
                    f" {sorted((k, str(v)) for k, v in self.settings.items())}"
                ),
            )
        return MetricResult(mean + offset, stderr, n_ref=self.n, convention=self.convention_text, details=details)

    def config_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data": self.data_spec or "<data in memory>",
            "n": self.n_requested,
            "estimator": self.estimator,
            "seed": self.seed,
            "label": self.custom_label,
            "blocks": self.blocks,
        }
        for key, value in self.settings.items():
            if key == "strata" and value is None:
                out["all_terms"] = True
            else:
                out[key] = value
        return out

    @classmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> BitsPerDim:
        info = ctx.info
        missing = [k for k in ("model", "schedule", "prediction") if getattr(info, k, None) is None]
        if missing:
            raise ConfigError(
                explain(
                    "bits/dim needs the sampler's model, schedule and prediction",
                    expected="a sampler that declares model, schedule and prediction (describe())",
                    got=f"{getattr(info, 'name', 'the sampler')} declares no {', '.join(missing)}",
                    fix=(
                        "use an adapter that declares them (GeneralizedSampler, the diffusers adapters), or remove the"
                        " bpd metric"
                    ),
                )
            )
        if options["estimator"] == "vdm" and info.schedule.log_snr_fn is None:
            raise ConfigError(
                explain(
                    "the vdm estimator applies to continuous-time models only",
                    expected="a schedule with a differentiable lambda(u) (schedules.vdm(), schedules.edm())",
                    got=f"{info.name} declares the discrete schedule {info.schedule.name!r} (T = {info.schedule.T})",
                    fix=(
                        "use estimator = 'vlb' (the discrete-time bound); `diffeval bpd demo-gaussian` shows vdm on a"
                        " continuous-time model"
                    ),
                )
            )
        source = ctx.open_source(options["data"])
        from diffeval.stats.moments import FeatureMoments

        if isinstance(source, FeatureMoments):
            raise InputError(
                explain(
                    f"bits/dim data {options['data']} holds statistics",
                    expected="data images",
                    got="mu/sigma statistics",
                    fix="point data to the images",
                )
            )
        n = options["n"] if options["n"] is not None else len(source)
        if n > len(source):
            raise InputError(
                explain(
                    f"bits/dim data {options['data']} has fewer images than n",
                    expected=f">= {n} images",
                    got=f"{len(source)}",
                    fix=f"set n <= {len(source)}",
                )
            )
        knobs = {k: options[k] for k in ("strata", "all_terms", "cdf", "clip_x0", "n_t", "t_sampling", "decoder")}
        seed = options["seed"] if options["seed"] is not None else ctx.seed
        metric = cls(
            info.model,
            info.schedule,
            info.prediction,
            options["estimator"],
            seed,
            label=options["label"],
            data=options["data"],
            blocks=options["blocks"],
            **knobs,
        )
        metric.source, metric.indices, metric.n_requested = source, list(range(n)), options["n"]
        return metric

    @classmethod
    def example(cls) -> MetricExample:
        from diffeval.diffusion import schedules

        sch = schedules.linear(T=20)

        def eps_model(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the exact eps* for data N(0, 0.25)
            ab = sch.alpha_bar[t.long().cpu()].view(-1, *[1] * (z.ndim - 1)).to(z.dtype)
            return (1 - ab).sqrt() * z / (ab * 0.25 + (1 - ab))

        u8 = torch.randint(0, 256, (24, 1, 2, 2), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
        batch = Batch(features={}, seeds=list(range(24)), images=dequantize(u8, torch.float64))
        return MetricExample(lambda: cls(eps_model, sch, "eps", "vlb", strata=4), batch.split([5, 11, 8]))

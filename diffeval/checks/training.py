"""Diagnosing a training run from its denoiser: loss profile over log-SNR, terminal eps variance, saturation.

- :func:`loss_profile`: eps-MSE and x0-MSE per log-SNR bucket, with the VDM view
  (``0.5 (-dlambda/du) eps-MSE``, the continuous-time ELBO weighting, u = t/T) beside
  the unweighted DDPM view. A healthy model beats the trivial predictors (eps-MSE < 1
  at low SNR, x0-MSE < E[x0^2] at high SNR) in every bucket.
- :func:`check_terminal_eps_variance`: at t = T, z_T is almost pure noise, so a healthy
  eps-prediction has variance ~1 (pass within 0.1, warn within 0.25).
- :func:`saturation_by_guidance`: fraction of predicted x0 beyond [-1.1, 1.1] during
  sampling (at the steps where signal dominates, SNR >= 1 — at lower SNR x0_hat is
  noise-dominated for any model; the 0.1 margin because data on the bounds overshoots
  them slightly), per classifier-free guidance scale — the over-guidance symptom
  (warn above 5%, fail above 25%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffeval.checks.base import Check, CheckContext, CheckOutcome, CheckResult, register_check
from diffeval.checks.xt_normality import data_options, load_model_inputs
from diffeval.core.errors import InputError, explain
from diffeval.core.options import Option
from diffeval.core.seeds import SeedRNG
from diffeval.diffusion.denoiser import PREDICTIONS, Denoiser, check_prediction
from diffeval.diffusion.schedules import Schedule
from diffeval.samplers.base import StepTimer

__all__ = [
    "loss_profile",
    "check_terminal_eps_variance",
    "saturation_by_guidance",
    "SATURATION_WARN",
    "SATURATION_FAIL",
    "TerminalEpsVariance",
    "Saturation",
    "PredictionFit",
    "check_prediction_fit",
    "LABEL_RULES",
]

SATURATION_WARN = 0.05
SATURATION_FAIL = 0.25


def _check_inputs(x0: torch.Tensor, prediction: str) -> None:
    check_prediction(prediction)
    if not torch.is_tensor(x0) or x0.ndim != 4 or x0.shape[0] == 0:
        raise InputError(
            explain(
                "data must be a non-empty NCHW tensor in model space",
                expected="(N, C, H, W)",
                got=f"{tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__}",
                fix="pass preprocessed training images",
            )
        )
    if not bool(torch.isfinite(x0).all()):
        raise InputError(
            explain(
                "data contains NaN or inf",
                expected="finite data",
                got="non-finite values",
                fix="clean the data pipeline",
            )
        )


def _predict(
    model: Callable[..., torch.Tensor],
    prediction: str,
    x0: torch.Tensor,
    index: torch.Tensor,
    schedule: Schedule,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eps, eps_hat, x0_hat, z) for x0 noised at training indices ``index`` (one per sample)."""
    denoiser = Denoiser(model, schedule, prediction)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    z = denoiser.noised(x0, index, eps)
    x0_hat, eps_hat = denoiser.predict(z, index)
    return eps, eps_hat, x0_hat, z


def loss_profile(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    x0: torch.Tensor,
    prediction: str = "eps",
    buckets: int = 10,
    per_bucket: int = 256,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """eps-MSE, x0-MSE and the VDM-weighted loss in ``buckets`` equal-width log-SNR buckets."""
    _check_inputs(x0, prediction)
    if buckets < 1 or per_bucket < 1:
        raise InputError(
            explain(
                "invalid bucket sizes",
                expected="buckets >= 1 and per_bucket >= 1",
                got=f"{buckets}, {per_bucket}",
                fix="use buckets=10",
            )
        )
    lam = schedule.log_snr
    finite = torch.isfinite(lam)
    lo, hi = float(lam[finite].min()), float(lam[finite].max())
    edges = torch.linspace(lo, hi, buckets + 1, dtype=torch.float64)
    # -dlambda/du with u = t / T, by central differences on the step grid
    dlam = -torch.gradient(lam.masked_fill(~finite, lo), spacing=1.0 / schedule.T)[0]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    energy = float((x0.double() ** 2).mean())
    for b in range(buckets):
        in_bucket = torch.nonzero(finite & (lam >= edges[b]) & (lam <= edges[b + 1])).flatten()
        if in_bucket.numel() == 0:
            continue
        index = in_bucket[torch.randint(0, in_bucket.numel(), (per_bucket,), generator=gen)]
        data = x0[torch.randint(0, x0.shape[0], (per_bucket,), generator=gen)]
        eps, eps_hat, x0_hat, _ = _predict(model, prediction, data, index, schedule, gen)
        eps_mse = ((eps - eps_hat) ** 2).flatten(1).mean(1)
        x0_mse = ((data.double() - x0_hat) ** 2).flatten(1).mean(1)
        vdm = 0.5 * dlam[index] * eps_mse
        rows.append(
            {
                "log_snr_lo": float(edges[b]),
                "log_snr_hi": float(edges[b + 1]),
                "n": per_bucket,
                "eps_mse": float(eps_mse.mean()),
                "x0_mse": float(x0_mse.mean()),
                "vdm_weighted": float(vdm.mean()),
                "trivial_eps_mse": 1.0,
                "trivial_x0_mse": energy,
            }
        )
    return rows


def check_terminal_eps_variance(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    x0: torch.Tensor,
    prediction: str = "eps",
    n: int = 512,
    seed: int = 0,
) -> CheckResult:
    """Variance of the predicted noise at t = T (~1 for a healthy model)."""
    _check_inputs(x0, prediction)
    gen = torch.Generator().manual_seed(seed)
    data = x0[torch.randint(0, x0.shape[0], (n,), generator=gen)]
    index = torch.full((n,), schedule.T - 1, dtype=torch.long)
    _, eps_hat, _, _ = _predict(model, prediction, data, index, schedule, gen)
    var = float(eps_hat.var())
    dev = abs(var - 1)
    status = "pass" if dev <= 0.1 else "warn" if dev <= 0.25 else "fail"
    message = (
        "predicted noise at T has unit variance."
        if status == "pass"
        else (
            f"Var(eps_hat) = {var:.3g} at T, where z_T is almost pure noise and eps_hat should be ~z_T. Fix: check the"
            " model's time input (index vs continuous t), the prediction type, and that training covered t = T."
        )
    )
    return CheckResult("terminal_eps_variance", status, var, "|Var(eps_hat) - 1| <= 0.1 (warn <= 0.25)", message)


PREDICTION_FIT_LIMIT = 1.0  # x0 error relative to predicting the data mean, at log-SNR ~ -1
PREDICTION_FIT_LOG_SNR = -1.0  # noisy enough that a misread output is worse than the mean (measured: 1.2 to 4.8)
PREDICTION_FIT_MARGIN = 1.25  # ... and worse than the best reading by this factor


def check_prediction_fit(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    x0: torch.Tensor,
    prediction: str,
    n: int = 256,
    seed: int = 0,
) -> CheckResult:
    """Does the model denoise when its output is read as the declared ``prediction``?

    Real data is noised on the schedule's own path at the step nearest log-SNR -1 and the model's output,
    converted to ``x0_hat`` under each prediction type, is scored by ``R = MSE(x0_hat, x0) / MSE(mean, x0)``:
    read as what it was trained to predict, a model denoises (R < 1) and no other reading does clearly better; a
    flow (velocity) network declared as ``v`` (R 1.5 on an exact Gaussian flow model), or an eps network declared
    as ``flow`` (R 1.3 on the demo's), fails. The message names the prediction type the output reads best as.
    """
    _check_inputs(x0, prediction)
    lam = schedule.log_snr
    near = (lam - PREDICTION_FIT_LOG_SNR).abs()
    index = int(torch.argmin(torch.where(torch.isfinite(lam), near, torch.full_like(lam, math.inf))))
    gen = torch.Generator().manual_seed(seed)
    data = x0[torch.randint(0, x0.shape[0], (n,), generator=gen)].double()
    eps = torch.randn(data.shape, generator=gen, dtype=torch.float64)
    idx = torch.full((n,), index, dtype=torch.long)
    baseline = float(((data - data.mean(0, keepdim=True)) ** 2).mean())
    scores = {}
    for reading in PREDICTIONS:
        denoiser = Denoiser(model, schedule, reading)
        x0_hat, _ = denoiser.predict(denoiser.noised(data, idx, eps), idx)
        scores[reading] = float(((x0_hat - data) ** 2).mean()) / max(baseline, 1e-300)
    ratio, best = scores[prediction], min(scores, key=scores.get)
    where = f"log-SNR {float(lam[index]):.2g} (t = {index + 1}, {schedule.path} path)"
    threshold = (
        f"x0 error / error of the data mean < {PREDICTION_FIT_LIMIT:g} at log-SNR ~ {PREDICTION_FIT_LOG_SNR:g},"
        f" within {PREDICTION_FIT_MARGIN:g} x the best reading"
    )
    if ratio < PREDICTION_FIT_LIMIT and ratio <= PREDICTION_FIT_MARGIN * scores[best]:
        return CheckResult(
            "prediction_fit",
            "pass",
            ratio,
            threshold,
            f"read as {prediction}-prediction the model denoises at {where}: x0 error {ratio:.3g} x the data mean's.",
        )
    hint = (
        f" It reads best as {best}-prediction (error {scores[best]:.3g}): a "
        + ("flow (velocity) network" if best == "flow" else f"{best}-prediction network")
        + f" declared as {prediction}? Fix: declare prediction = '{best}'."
        if best != prediction and scores[best] < PREDICTION_FIT_LIMIT * min(1.0, ratio)
        else " No prediction type fits: check the model's weights, its time input and the schedule it was trained on."
    )
    return CheckResult(
        "prediction_fit",
        "fail",
        ratio,
        threshold,
        f"read as {prediction}-prediction the model does not denoise at {where}: x0 error {ratio:.3g} x the data"
        f" mean's.{hint}",
    )


def saturation_by_guidance(
    make_sampler: Callable[[float], Any],
    scales: Sequence[float],
    seeds: Sequence[int],
    image_shape: Sequence[int],
    cond_fn: Callable[[list[int]], Any] | None = None,
    device: str = "cpu",
) -> list[CheckResult]:
    """Fraction of x0_hat outside [-1, 1] during sampling, one check per guidance scale.

    ``make_sampler(scale)`` builds a sampler that records ``x0_outside`` in the timer it
    is passed (the built-in :class:`~diffeval.samplers.GeneralizedSampler` does).
    """
    results = []
    seeds = list(seeds)
    for scale in scales:
        sampler = make_sampler(float(scale))
        rng = SeedRNG(seeds, device)
        timer = StepTimer("off")
        sampler(rng.randn(tuple(image_shape)), cond_fn(seeds) if cond_fn else None, rng=rng, timer=timer)
        fraction = timer.stats.x0_outside
        if fraction is None or math.isnan(fraction):  # a foreign sampler: nothing to measure, said in a skip row
            return [
                CheckResult(
                    "x0_saturation",
                    "skip",
                    float("nan"),
                    "a sampler that reports x0",
                    "skipped: this sampler does not report x0_hat saturation (timer.stats.x0_outside); use"
                    " GeneralizedSampler, or record x0_outside in the adapter's timer stats",
                )
            ]
        status = "pass" if fraction <= SATURATION_WARN else "warn" if fraction <= SATURATION_FAIL else "fail"
        msg = f"{100 * fraction:.2f}% of predicted x0 values leave [-1.1, 1.1] at guidance {scale:g}."
        if status != "pass":
            msg += (
                " Over-guidance pushes predictions off the data range (washed-out, saturated images). Fix: lower the"
                " guidance scale, or use dynamic thresholding / CFG rescale."
            )
        results.append(
            CheckResult(
                f"x0_saturation[guidance={scale:g}]",
                status,
                fraction,
                f"<= {SATURATION_WARN:.0%} (fail > {SATURATION_FAIL:.0%})",
                msg,
            )
        )
    return results


@register_check
class TerminalEpsVariance(Check):
    """Variance of the model's predicted noise at t = T on real data (~1 for a healthy model)."""

    name = "terminal_eps_variance"
    needs = ("schedule", "model", "prediction")
    options = (
        *data_options(),
        Option("n", int, 512, "samples drawn (with replacement) from the data", minimum=2),
    )

    def run(self, ctx: CheckContext) -> CheckOutcome:
        o = self.settings
        x0 = load_model_inputs(ctx, o["data"], o["preprocess"], 4096)
        return CheckOutcome(
            [
                check_terminal_eps_variance(
                    ctx.info.model, ctx.info.schedule, x0, ctx.info.prediction, n=o["n"], seed=ctx.seed
                )
            ]
        )


@register_check
class PredictionFit(Check):
    """The model, read as its declared prediction type, denoises real data at SNR ~ 1 (catches a flow network
    declared as v, and the reverse)."""

    name = "prediction_fit"
    needs = ("schedule", "model", "prediction")
    options = (
        *data_options(),
        Option("n", int, 256, "samples drawn (with replacement) from the data", minimum=2),
    )

    def run(self, ctx: CheckContext) -> CheckOutcome:
        o = self.settings
        x0 = load_model_inputs(ctx, o["data"], o["preprocess"], 4096)
        return CheckOutcome(
            [check_prediction_fit(ctx.info.model, ctx.info.schedule, x0, ctx.info.prediction, n=o["n"], seed=ctx.seed)]
        )


LABEL_RULES = ("run", "seed_mod_10")


@register_check
class Saturation(Check):
    """x0_hat saturation during guided sampling, one verdict per guidance scale (the over-guidance symptom)."""

    name = "saturation"
    needs = ("sampler", "guidance")
    options = (
        Option("scales", list, [1.0, 3.0, 8.0], "guidance scales to sample at", item=float),
        Option("n", int, 64, "samples per scale", minimum=1),
        Option("steps", int, 25, "sampling steps (at most the run's own)", minimum=1),
        Option(
            "cond",
            str,
            "run",
            "condition of the guided samples: the run's [cond], or class labels seed mod 10",
            choices=LABEL_RULES,
        ),
    )

    def run(self, ctx: CheckContext) -> CheckOutcome:
        o = self.settings
        if o["cond"] == "seed_mod_10":
            cond_fn = lambda seeds: torch.tensor([s % 10 for s in seeds], device=ctx.device)  # noqa: E731
        elif ctx.cond_fn is None:
            return CheckOutcome(
                [
                    CheckResult(
                        self.name,
                        "skip",
                        float("nan"),
                        "needs a condition",
                        "skipped: guidance acts only on conditional samples and the run has no [cond]; set [cond] or"
                        " cond = 'seed_mod_10' in this check",
                    )
                ]
            )
        else:
            cond_fn = ctx.cond_fn
        knobs = {"steps": min(ctx.info.steps or o["steps"], o["steps"])} if "steps" in ctx.info.knobs else {}
        results = saturation_by_guidance(
            lambda w: ctx.make_sampler({"guidance_scale": w, **knobs}),
            o["scales"],
            range(ctx.seed, ctx.seed + o["n"]),
            ctx.image_shape,
            cond_fn=cond_fn,
            device=ctx.device,
        )
        return CheckOutcome(results)

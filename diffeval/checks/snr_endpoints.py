"""SNR-endpoint boundary checks of a noise schedule (THEORY.md §2).

- ``schedule_validity`` (B1): log-SNR strictly decreasing, finite except an explicit
  zero-terminal end; 0 < beta <= 1.
- ``terminal_snr`` (B2): worst-case prior KL per dimension for data in [-1, 1],
  ``0.5 log2(1 + SNR_T)`` bits/dim: pass <= 1e-3 (lambda_T <= -6.58043), warn <= 1e-2
  (lambda_T <= -4.27160), fail above — the end does not destroy the data
  (SD scaled-linear keeps SNR_T = 0.0047: the grey-image bug).
- ``start_snr`` (B3): for likelihood on 8-bit data the first step needs
  ``sigma_1/alpha_1 = exp(-lambda_max/2) <= Delta/6`` (Delta = 2/256), i.e.
  lambda_max >= 13.2876; above ~15.25 float32 loses sigma_1**2. Outside: warn.
- ``zero_terminal_snr_prediction``: zero terminal SNR with eps-prediction fails (x0 is
  unrecoverable at T).
- ``sampler_spacing``: the first sampling step should be the training schedule's last
  step ("leading" spacing never visits T and leaves residual signal).

Input: a :class:`~diffeval.diffusion.schedules.Schedule`, a raw ``alphas_cumprod`` array, or a
diffusers scheduler config dict. Example::

    >>> from diffeval import schedules
    >>> [r.status for r in check_snr_endpoints(schedules.scaled_linear())][:2]
    ['pass', 'warn']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from diffeval.checks.base import Check, CheckContext, CheckOutcome, CheckResult, Figure, register_check
from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.diffusion import schedules as _schedules
from diffeval.diffusion.denoiser import check_prediction

__all__ = [
    "check_snr_endpoints",
    "terminal_kl_bits",
    "SnrEndpoints",
    "BANDS",
    "B2_PASS_BITS",
    "B2_WARN_BITS",
    "B3_MIN_LOG_SNR",
    "B3_MAX_LOG_SNR",
]

B2_PASS_BITS = 1e-3
B2_WARN_BITS = 1e-2
DELTA_8BIT = 2 / 256
B3_MIN_LOG_SNR = -2 * math.log(DELTA_8BIT / 6)  # 13.2876
B3_MAX_LOG_SNR = 15.25


def terminal_kl_bits(log_snr_T: float) -> float:  # noqa: N803
    """Worst-case (|x0| = 1) prior KL at the terminal step, bits per dimension: ``0.5 log2(1 + SNR_T)``."""
    if log_snr_T == -math.inf:
        return 0.0
    return 0.5 * math.log1p(math.exp(log_snr_T)) / math.log(2) if log_snr_T < 700 else 0.5 * log_snr_T / math.log(2)


def _path_of(schedule: Any) -> str:
    """The path a schedule's model is trained on: ``flow`` for flow schedules and flow-matching configs, else vp."""
    if isinstance(schedule, _schedules.Schedule):
        return schedule.path
    if isinstance(schedule, Mapping) and _schedules.is_flow_config(schedule):
        return "flow"
    return "vp"


def _flow_t(lam: float) -> float:
    """The flow path's time at log-SNR ``lam``: ``t = sigmoid(-lambda / 2)`` (``lambda = 2 log((1 - t) / t)``)."""
    return 1.0 / (1.0 + math.exp(lam / 2)) if lam > -1400 else 1.0


def _log_snr_from(schedule: Any) -> tuple[np.ndarray, str]:
    """Raw log-SNR (not validated) and a name, from any accepted schedule form."""
    if isinstance(schedule, _schedules.Schedule):
        return schedule.log_snr.numpy(), schedule.name
    if isinstance(schedule, Mapping):
        sched = _schedules.from_diffusers_config(schedule)
        return sched.log_snr.numpy(), sched.name
    try:
        alpha_bar = np.asarray(schedule.detach().cpu() if torch.is_tensor(schedule) else schedule, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            explain(
                "cannot read the schedule",
                expected="a Schedule, an alphas_cumprod array or a diffusers config dict",
                got=type(schedule).__name__,
                fix="pass one of those",
            )
        ) from None
    if alpha_bar.ndim != 1 or alpha_bar.size < 2:
        raise InputError(
            explain(
                "alphas_cumprod has the wrong shape",
                expected="a 1-D array with T >= 2 steps",
                got=f"shape {alpha_bar.shape}",
                fix="pass one alpha_bar value per training step",
            )
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(alpha_bar) - np.log1p(-alpha_bar), "alphas_cumprod"


def _validity(lam: np.ndarray, name: str) -> CheckResult:
    problems = []
    if np.isnan(lam).any():
        problems.append(f"NaN at t={int(np.flatnonzero(np.isnan(lam))[0]) + 1}")
    finite_inner = np.isfinite(lam[:-1]).all() and lam[-1] != math.inf
    if not finite_inner:
        problems.append("infinite log-SNR before the last step (alpha_bar of 0 or 1 inside the schedule)")
    steps = np.diff(lam)
    with np.errstate(invalid="ignore"):
        bad = ~(steps < 0)
    if bad.any() and not np.isnan(lam).any():
        i = int(np.flatnonzero(bad)[0])
        problems.append(
            f"log-SNR not strictly decreasing at t={i + 1}->{i + 2} ({lam[i]:.6g} then {lam[i + 1]:.6g}; beta <= 0"
            " there)"
        )
    if problems:
        return CheckResult(
            "schedule_validity",
            "fail",
            float(len(problems)),
            "strictly decreasing, finite except a zero-terminal end, 0 < beta <= 1",
            f"{name}: "
            + "; ".join(problems)
            + ". Fix: rebuild the schedule from positive betas ordered clean to noisy.",
        )
    return CheckResult(
        "schedule_validity",
        "pass",
        0.0,
        "strictly decreasing, finite except a zero-terminal end, 0 < beta <= 1",
        f"{name}: log-SNR decreases from {lam[0]:.4g} to {lam[-1]:.4g}.",
    )


def _terminal(lam_T: float, path: str = "vp") -> CheckResult:  # noqa: N803
    bits = terminal_kl_bits(lam_T)
    threshold = f"pass <= {B2_PASS_BITS:g}, warn <= {B2_WARN_BITS:g} bits/dim worst-case prior KL"
    snr = math.exp(lam_T) if lam_T > -700 else 0.0
    if bits <= B2_PASS_BITS:
        flow = (
            " On the flow path t = 1 is pure noise (alpha_T = 1 - t = 0): zero terminal SNR by construction, as it"
            " should be for a flow (velocity) model."
            if path == "flow" and snr == 0.0
            else ""
        )
        return CheckResult(
            "terminal_snr",
            "pass",
            bits,
            threshold,
            f"SNR_T = {snr:.3g} (log-SNR {lam_T:.4g}): the last step destroys the data.{flow}",
        )
    if path == "flow":
        t_T = _flow_t(lam_T)  # noqa: N806
        return CheckResult(
            "terminal_snr",
            "warn" if bits <= B2_WARN_BITS else "fail",
            bits,
            threshold,
            f"the flow path ends at t = {t_T:.4g}, not 1 (SNR_T = {snr:.3g}): x_T = (1 - t) x0 + t eps keeps signal, so"
            " sampling from N(0, I) starts off-distribution. Fix: end the flow grid at t = 1 (schedules.flow).",
        )
    status = "warn" if bits <= B2_WARN_BITS else "fail"
    return CheckResult(
        "terminal_snr",
        status,
        bits,
        threshold,
        f"SNR_T = {snr:.3g} (log-SNR {lam_T:.4g}): x_T keeps signal, so sampling from N(0, I) starts off-distribution"
        " (mean-brightness / grey-image bias). Fix: rescale to zero terminal SNR (schedules.rescale_zero_terminal_snr)"
        " and train with v-prediction, or extend the schedule.",
    )


def _start(lam_1: float, path: str = "vp") -> CheckResult:
    threshold = f"{B3_MIN_LOG_SNR:.4f} <= log-SNR_1 <= {B3_MAX_LOG_SNR}"
    ratio = math.exp(-lam_1 / 2)
    on = (
        f" (flow path: the first step is t_1 = {_flow_t(lam_1):.4g}, sigma_1/alpha_1 = t_1/(1 - t_1); a shift s > 1"
        " moves it to s t / (1 + (s - 1) t), lowering log-SNR_1 by 2 ln s)"
        if path == "flow"
        else ""
    )
    if lam_1 < B3_MIN_LOG_SNR:
        fix = "Fix for likelihood work: start the schedule at log-SNR >= 13.29" + (
            " (a smaller shift, or a finer grid: t_1 <= 0.0013)." if path == "flow" else "."
        )
        return CheckResult(
            "start_snr",
            "warn",
            lam_1,
            threshold,
            f"sigma_1/alpha_1 = {ratio:.3g} > Delta/6 = {DELTA_8BIT / 6:.3g}{on}: the first step blurs 8-bit data, so"
            f" bits/dim is dominated by the decoder term (sampling is unaffected). {fix}",
        )
    if lam_1 > B3_MAX_LOG_SNR:
        return CheckResult(
            "start_snr",
            "warn",
            lam_1,
            threshold,
            f"sigma_1**2 = {1 / (1 + math.exp(lam_1)):.3g} is below float32 resolution next to alpha_1**2 ~ 1. Fix:"
            " compute in float64 or start at log-SNR <= 15.25.",
        )
    return CheckResult(
        "start_snr",
        "pass",
        lam_1,
        threshold,
        f"sigma_1/alpha_1 = {ratio:.3g} <= Delta/6{on}: fine for likelihood on 8-bit data.",
    )


def _prediction(zero_terminal: bool, prediction: str | None, path: str = "vp") -> CheckResult:
    threshold = "zero terminal SNR needs v-, x0- or flow-prediction"
    if (prediction == "flow") != (path == "flow") and prediction in ("flow", "v"):
        return CheckResult(
            "zero_terminal_snr_prediction",
            "warn",
            float("nan"),
            threshold,
            (
                "flow (velocity) prediction declared on a variance-preserving schedule: flow models are trained on the"
                " path (1 - t) x0 + t eps. Fix: declare the schedule as schedules.flow (with the shift it was trained"
                " with), or the prediction the model really has (eps, x0, v); the prediction_fit check tells which."
                if prediction == "flow"
                else "v-prediction declared on a flow path: v is the variance-preserving path's velocity, while flow"
                " models predict eps - x0. Fix: declare prediction = 'flow' if the model outputs eps - x0; the"
                " prediction_fit check tells which reading denoises."
            ),
        )
    if not zero_terminal:
        return CheckResult(
            "zero_terminal_snr_prediction",
            "pass",
            0.0,
            threshold,
            "terminal SNR is not zero: any prediction type can recover x0 at T.",
        )
    if prediction == "eps":
        where = (
            " — on a flow path, which ends at t = 1 (pure noise) by construction. Fix: a flow model predicts the"
            " velocity eps - x0: declare prediction = 'flow' if that is what it outputs, or train it so."
            if path == "flow"
            else ". Fix: train with v-prediction (Lin et al. 2023), or flow (velocity) prediction on a flow path."
        )
        return CheckResult(
            "zero_terminal_snr_prediction",
            "fail",
            1.0,
            threshold,
            "alpha_T = 0 with eps-prediction: x0 = (z - sigma eps)/alpha is undefined at T, so the first sampling step"
            f" divides by zero{where}",
        )
    if prediction is None:
        return CheckResult(
            "zero_terminal_snr_prediction",
            "warn",
            float("nan"),
            threshold,
            "zero terminal SNR, prediction type unknown. Fix: pass prediction='v', 'x0' or 'flow' to grade it.",
        )
    return CheckResult(
        "zero_terminal_snr_prediction",
        "pass",
        0.0,
        threshold,
        f"zero terminal SNR with {prediction}-prediction: x0 is recoverable at T"
        + (" (a flow path ends at pure noise by construction, t = 1: as it should)." if prediction == "flow" else "."),
    )


def _spacing(lam: np.ndarray, steps: int, spacing: str, path: str = "vp") -> CheckResult:
    T = lam.size  # noqa: N806
    try:
        first = int(_schedules.sampling_indices(T, steps, spacing)[0])
    except ConfigError as error:
        raise InputError(str(error)) from None
    threshold = "first sampling step = training step T"
    lam_first, lam_T = float(lam[first]), float(lam[-1])  # noqa: N806
    on = f" (flow path: t' = {_flow_t(lam_first):.4g} of the shifted grid)" if path == "flow" else ""
    if first == T - 1:
        return CheckResult(
            "sampler_spacing",
            "pass",
            float(first + 1),
            threshold,
            f"{spacing} spacing with {steps} steps starts at t = T = {T}{on}.",
        )
    bits = terminal_kl_bits(lam_first)
    message = (
        f"{spacing} spacing with {steps} steps starts at t = {first + 1}, not T = {T}{on}: log-SNR {lam_first:.4g}"
        f" instead of {lam_T:.4g}, worst-case residual-signal KL {bits:.3g} bits/dim. Fix: use 'trailing' spacing (or"
        " steps_offset so the first step is T)."
    )
    zero_terminal = lam_T == -math.inf
    status = "fail" if zero_terminal or bits > B2_WARN_BITS else "warn"
    return CheckResult("sampler_spacing", status, float(first + 1), threshold, message)


def check_snr_endpoints(
    schedule: Any, prediction: str | None = None, steps: int | None = None, spacing: str | None = None
) -> list[CheckResult]:
    """B1–B3, zero-terminal-SNR × prediction, and (when ``steps``/``spacing`` are given) the sampler spacing."""
    check_prediction(prediction, allow_none=True)
    lam, name = _log_snr_from(schedule)
    path = _path_of(schedule)
    if lam.size < 2:
        raise InputError(
            explain(
                "a schedule needs at least 2 steps to be checked",
                expected="T >= 2",
                got=f"T = {lam.size}",
                fix="pass the full training schedule",
            )
        )
    validity = _validity(lam, name)
    results = [validity]
    if validity.failed and (np.isnan(lam).any() or not np.isfinite(lam[0])):
        return results
    lam_T = float(lam[-1])  # noqa: N806
    results += [
        _terminal(lam_T, path),
        _start(float(lam[0]), path),
        _prediction(lam_T == -math.inf, prediction, path),
    ]
    if (steps is None) != (spacing is None):
        raise InputError(
            explain(
                "sampler spacing needs both steps and spacing",
                expected="steps=K and spacing='trailing'|'leading'|'linspace'",
                got=f"steps={steps}, spacing={spacing}",
                fix="pass both, or neither",
            )
        )
    if steps is not None:
        results.append(_spacing(lam, int(steps), str(spacing), path))
    return results


def _bands() -> Any:
    from diffeval.checks.figures import LogSnrBands

    # log-SNR_T at which the worst-case prior KL 0.5 log2(1 + SNR_T) reaches the pass / warn bits (THEORY.md §2)
    return LogSnrBands(
        math.log(2 ** (2 * B2_PASS_BITS) - 1), math.log(2 ** (2 * B2_WARN_BITS) - 1), B3_MIN_LOG_SNR, B3_MAX_LOG_SNR
    )


BANDS = _bands()


@register_check
class SnrEndpoints(Check):
    """B1–B3, zero terminal SNR × prediction type, and the sampler's spacing, on the subject's declared schedule; plots
    the
    log-SNR curve.
    """

    name = "snr_endpoints"
    needs = ("schedule",)

    def run(self, ctx: CheckContext) -> CheckOutcome:
        info = ctx.info
        spaced = info.steps is not None and info.spacing is not None
        results = check_snr_endpoints(
            info.schedule,
            prediction=info.prediction,
            steps=info.steps if spaced else None,
            spacing=info.spacing if spaced else None,
        )
        first = int(_schedules.sampling_indices(info.schedule.T, info.steps, info.spacing)[0]) + 1 if spaced else None

        def draw(path: Any) -> Any:
            from diffeval.checks.figures import plot_log_snr

            return plot_log_snr(info.schedule, path, BANDS, first)

        return CheckOutcome(results, [Figure("log_snr", draw)])

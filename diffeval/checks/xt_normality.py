"""x_T normality: does the forward process really end at N(0, I)? (THEORY.md §3)

The classic silent failure: raw 0–255 pixels fed to a process built for [-1, 1].
Then ``E[x_T] = sqrt(a) E[x0]`` and ``Var[x_T] = a Var[x0] + 1 - a`` (a = alpha_bar_T)
are far from 0 and 1 under the linear and SD schedules. x_T is still Gaussian-*shaped*
(shifted and scaled), so shape-only tests (Shapiro, D'Agostino, Anderson with fitted
loc/scale) do not see it; tests against the fully specified N(0, 1) do.

Checks, on data run through the user's own preprocessing:

1. ``x0_range``: fail outside [-1 - 1e-3, 1 + 1e-3]; warn if min >= 0 (looks like [0, 1]).
2. ``xT_mean`` / ``xT_variance``: pooled over >= 20,000 scalars, ``|mean| < 0.05 + sqrt(a)``,
   ``|var - 1| < 0.05 + a`` (fewer scalars: warn with the number needed).
3. ``xT_ks`` / ``xT_cramervonmises`` against N(0, 1) at alpha = 1e-3: diagnostics (warn only).
4. ``mid_t_energy``: at alpha_bar ~ 0.5, data in [-1, 1] has ``E[x_t^2] <= 1``; fail above
   1.05 — catches the trap under cosine and zero-terminal-SNR schedules, where x_T hides it.
5. ``xT_radius``: ``mean ||x_T||^2 / D`` in ``1 ± (0.05 + a)``; ``xT_neighbour_correlation``:
   horizontally adjacent pixels, ``|rho| < 0.05``.

Example::

    >>> import torch
    >>> from diffeval import schedules
    >>> x0 = torch.rand(400, 1, 8, 8) * 2 - 1
    >>> results = check_xt_normality(x0, schedules.linear(), seed=0)
    >>> sorted({r.status for r in results})
    ['pass']
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffeval.checks.base import Check, CheckContext, CheckOutcome, CheckResult, Figure, register_check
from diffeval.core.errors import InputError, explain
from diffeval.core.options import Option
from diffeval.core.quantize import dequantize
from diffeval.diffusion.schedules import Schedule

__all__ = [
    "check_xt_normality",
    "check_xt_batch",
    "forward_samples",
    "MIN_SCALARS",
    "PREPROCESSINGS",
    "preprocessing",
    "XtNormality",
    "load_model_inputs",
]

MIN_SCALARS = 20_000
ALPHA_TEST = 1e-3
RANGE_TOL = 1e-3
MID_T_LIMIT = 1.05
CORR_LIMIT = 0.05
MOMENT_TOL = 0.05


def _signed(u8: torch.Tensor) -> torch.Tensor:
    return dequantize(u8)


def _unit(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 255.0


def _raw(u8: torch.Tensor) -> torch.Tensor:
    return u8.float()


PREPROCESSINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"signed": _signed, "unit": _unit, "raw": _raw}


def preprocessing(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A named uint8 → model-input mapping: ``signed`` (x/127.5 - 1), ``unit`` (x/255) or ``raw`` (0–255)."""
    if name not in PREPROCESSINGS:
        raise InputError(
            explain(
                "unknown preprocessing",
                expected=" / ".join(PREPROCESSINGS),
                got=repr(name),
                fix="use 'signed' for models on [-1, 1]",
            )
        )
    return PREPROCESSINGS[name]


@dataclass(frozen=True)
class ForwardSamples:
    x0: torch.Tensor
    x_T: torch.Tensor  # noqa: N815
    x_mid: torch.Tensor
    alpha_bar_T: float  # noqa: N815
    alpha_bar_mid: float
    path: str = "vp"
    mid_limit: float = 1.0  # E[x_t^2] bound for data in [-1, 1]: alpha^2 + sigma^2 of the path at the mid step


def _as_model_input(data: Any, preprocess: Callable[[torch.Tensor], torch.Tensor] | Any | None) -> torch.Tensor:
    fn = getattr(preprocess, "preprocess", preprocess)
    x = fn(data) if fn is not None else data
    if not torch.is_tensor(x):
        raise InputError(
            explain(
                "preprocessed data is not a tensor",
                expected="a torch.Tensor (N, ...)",
                got=type(x).__name__,
                fix="return a tensor from the preprocessing",
            )
        )
    if x.numel() == 0 or x.ndim < 2:
        raise InputError(
            explain(
                "no data to check",
                expected="a non-empty (N, ...) tensor",
                got=f"shape {tuple(x.shape)}",
                fix="pass real training data",
            )
        )
    x = x.detach().to(torch.float64)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = int(torch.nonzero(bad.flatten(1).any(1))[0, 0])
        raise InputError(
            explain(
                "data contains NaN or inf",
                expected="finite data",
                got=f"{int(bad.sum())} non-finite values, first in sample {first}",
                fix="clean the data pipeline",
            )
        )
    return x


def forward_samples(x0: torch.Tensor, schedule: Schedule, seed: int = 0) -> ForwardSamples:
    """Draw ``x_T ~ q(x_T | x0)`` and ``x_t`` at alpha_bar ~ 0.5, float64, seeded."""
    if schedule.T < 2:
        raise InputError(
            explain(
                "x_T normality needs a schedule with at least 2 steps",
                expected="T >= 2",
                got=f"T = {schedule.T}",
                fix="pass the training schedule",
            )
        )
    g = torch.Generator().manual_seed(seed)
    alpha_bar = schedule.alpha_bar
    a_T = float(alpha_bar[-1])  # noqa: N806
    mid = int(torch.argmin((alpha_bar - 0.5).abs()))
    a_mid = float(alpha_bar[mid])
    x0 = x0.cpu()
    eps_T = torch.randn(x0.shape, generator=g, dtype=torch.float64)  # noqa: N806
    eps_mid = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # x_T in vp units (on a flow path that ends at t = 1 it is the same pure noise); x_mid on the model's own path,
    # what the network receives half-way (flow: (1 - t) x0 + t eps)
    x_T = math.sqrt(a_T) * x0 + math.sqrt(1 - a_T) * eps_T  # noqa: N806
    alpha_p, sigma_p = float(schedule.path_alpha[mid]), float(schedule.path_sigma[mid])
    x_mid = alpha_p * x0 + sigma_p * eps_mid
    return ForwardSamples(
        x0=x0,
        x_T=x_T,
        x_mid=x_mid,
        alpha_bar_T=a_T,
        alpha_bar_mid=a_mid,
        path=schedule.path,
        mid_limit=alpha_p**2 + sigma_p**2,
    )


def _range_guard(x0: torch.Tensor) -> CheckResult:
    lo, hi = float(x0.min()), float(x0.max())
    threshold = f"[-1 - {RANGE_TOL:g}, 1 + {RANGE_TOL:g}]"
    if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
        hint = (
            "these look like raw 0-255 pixels: divide by 127.5 and subtract 1"
            if hi > 2
            else "rescale the data to [-1, 1]"
        )
        return CheckResult(
            "x0_range",
            "fail",
            hi if hi > 1 + RANGE_TOL else lo,
            threshold,
            f"model inputs span [{lo:.4g}, {hi:.4g}], outside [-1, 1]: x_T will not be N(0, I). Fix: {hint}.",
        )
    if lo >= 0:
        return CheckResult(
            "x0_range",
            "warn",
            lo,
            threshold,
            f"model inputs span [{lo:.4g}, {hi:.4g}]: no negative value, which looks like [0, 1] data. Fix: map with x"
            " * 2 - 1 if the model expects [-1, 1].",
        )
    return CheckResult("x0_range", "pass", hi, threshold, f"model inputs span [{lo:.4g}, {hi:.4g}].")


def _moments(x_T: torch.Tensor, a_T: float) -> list[CheckResult]:  # noqa: N803
    n = x_T.numel()
    mean, var = float(x_T.mean()), float(x_T.var())
    mean_tol, var_tol = MOMENT_TOL + math.sqrt(a_T), MOMENT_TOL + a_T
    if n < MIN_SCALARS:
        msg = (
            f"only {n} scalars; the moment test needs at least {MIN_SCALARS} (false-positive rate ~0.11 at 2,000). Fix:"
            f" pass more data (>= {math.ceil(MIN_SCALARS / max(1, n // x_T.shape[0]))} samples of this size)."
        )
        return [
            CheckResult("xT_mean", "warn", mean, f"|mean| < {mean_tol:.4g} with >= {MIN_SCALARS} scalars", msg),
            CheckResult("xT_variance", "warn", var, f"|var - 1| < {var_tol:.4g} with >= {MIN_SCALARS} scalars", msg),
        ]
    fix = (
        "the data reaching the model is not on the scale the schedule assumes: check the preprocessing (0-255 vs [-1,"
        " 1])."
    )
    mean_ok, var_ok = abs(mean) < mean_tol, abs(var - 1) < var_tol
    return [
        CheckResult(
            "xT_mean",
            "pass" if mean_ok else "fail",
            mean,
            f"|mean| < {mean_tol:.4g}",
            f"pooled mean of x_T over {n} scalars." + ("" if mean_ok else f" Expected ~0 for N(0, I). Fix: {fix}"),
        ),
        CheckResult(
            "xT_variance",
            "pass" if var_ok else "fail",
            var,
            f"|var - 1| < {var_tol:.4g}",
            f"pooled variance of x_T over {n} scalars." + ("" if var_ok else f" Expected ~1 for N(0, I). Fix: {fix}"),
        ),
    ]


def _reference_tests(x_T: torch.Tensor) -> list[CheckResult]:  # noqa: N803
    from scipy import stats

    values = x_T.flatten().numpy()
    if values.size > 200_000:
        values = values[np.random.RandomState(0).choice(values.size, 200_000, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # CvM's series overflows for huge statistics: p is then 0
        ks = stats.kstest(values, "norm")
        cvm = stats.cramervonmises(values, "norm")
    out = []
    for name, res in (("xT_ks", ks), ("xT_cramervonmises", cvm)):
        pvalue = float(res.pvalue) if math.isfinite(res.pvalue) else 0.0
        ok = pvalue >= ALPHA_TEST
        out.append(
            CheckResult(
                name,
                "pass" if ok else "warn",
                pvalue,
                f"p >= {ALPHA_TEST:g} against N(0, 1) (diagnostic)",
                f"statistic {float(res.statistic):.4g} on {values.size} scalars"
                + ("." if ok else ": x_T differs from N(0, 1); see the moment checks for the verdict."),
            )
        )
    return out


def _mid_t(x_mid: torch.Tensor, a_mid: float, path: str = "vp", limit: float = 1.0) -> CheckResult:
    energy = float((x_mid**2).mean())
    bound = MID_T_LIMIT * limit
    ok = energy <= bound
    on = "" if path == "vp" else f" on the {path} path"
    return CheckResult(
        "mid_t_energy",
        "pass" if ok else "fail",
        energy,
        f"mean(x_t^2) <= {bound:.3g} at alpha_bar = {a_mid:.3f}{on}",
        (
            f"data in [-1, 1] keeps E[x_t^2] <= {bound:.3g}{on}."
            if ok
            else (
                f"E[x_t^2] = {energy:.4g} > {bound:.3g} half-way through the process{on}: the data's scale exceeds"
                " [-1, 1] (raw pixels?), hidden at T by a schedule that ends very noisy. Fix: scale the data to"
                " [-1, 1]."
            )
        ),
    )


def _radius_and_correlation(x_T: torch.Tensor, a_T: float) -> list[CheckResult]:  # noqa: N803
    flat = x_T.flatten(1)
    radius = float((flat**2).sum(1).mean() / flat.shape[1])
    tol = MOMENT_TOL + a_T
    results = [
        CheckResult(
            "xT_radius",
            "pass" if abs(radius - 1) < tol else "fail",
            radius,
            f"mean ||x_T||^2 / D in 1 ± {tol:.4g}",
            "per-sample energy of x_T."
            + ("" if abs(radius - 1) < tol else " Fix: check the data scale and the schedule's end."),
        ),
    ]
    if x_T.ndim >= 3 and x_T.shape[-1] >= 2:
        left, right = x_T[..., :-1].flatten(), x_T[..., 1:].flatten()
        rho = float(torch.corrcoef(torch.stack([left, right]))[0, 1])
        ok = abs(rho) < CORR_LIMIT
        results.append(
            CheckResult(
                "xT_neighbour_correlation",
                "pass" if ok else "fail",
                rho,
                f"|rho| < {CORR_LIMIT}",
                "correlation of horizontally adjacent pixels of x_T."
                + (
                    ""
                    if ok
                    else (
                        " Image structure survives to T: the data is too large for the schedule or the schedule ends"
                        " too early."
                    )
                ),
            )
        )
    return results


def check_xt_normality(
    data: Any, schedule: Schedule, preprocess: Callable[[torch.Tensor], torch.Tensor] | Any | None = None, seed: int = 0
) -> list[CheckResult]:
    """Run q(x_T | x0) (and q(x_t | x0) at alpha_bar ~ 0.5) on real data through ``preprocess`` and check it.

    ``preprocess`` is the user's own data → model-input mapping (a callable, or a
    sampler adapter with a ``preprocess`` attribute); None means ``data`` already is
    the model input.
    """
    x0 = _as_model_input(data, preprocess)
    fs = forward_samples(x0, schedule, seed)
    at_T = [
        *_moments(fs.x_T, fs.alpha_bar_T),
        *_reference_tests(fs.x_T),
        *_radius_and_correlation(fs.x_T, fs.alpha_bar_T),
    ]
    if fs.path == "flow" and fs.alpha_bar_T == 0.0:
        note = (
            " (flow path: x_T = eps at t = 1 by construction, so these pass whatever the data's scale; mid_t_energy and"
            " x0_range are the verdicts for a flow model)"
        )
        at_T = [dataclasses.replace(r, message=r.message.rstrip(".") + note + ".") for r in at_T]
    return [_range_guard(fs.x0), *at_T[:4], _mid_t(fs.x_mid, fs.alpha_bar_mid, fs.path, fs.mid_limit), *at_T[4:]]


def check_xt_batch(x_T: torch.Tensor, alpha_bar_T: float = 0.0) -> list[CheckResult]:  # noqa: N803
    """The x_T checks (moments, KS/CvM, radius, neighbour correlation) on a batch of x_T the user already has."""
    x = _as_model_input(x_T, None)
    if not 0.0 <= alpha_bar_T < 1.0:
        raise InputError(
            explain(
                "alpha_bar_T out of range",
                expected="0 <= alpha_bar_T < 1",
                got=repr(alpha_bar_T),
                fix="pass schedule.alpha_bar[-1]",
            )
        )
    return [*_moments(x, alpha_bar_T), *_reference_tests(x), *_radius_and_correlation(x, alpha_bar_T)]


def data_options() -> tuple[Option, Option]:
    """The ``data`` and ``preprocess`` options of a check that reads real images (see :func:`load_model_inputs`)."""
    return (
        Option(
            "data",
            str,
            doc="training-like images: a folder, an .npz image batch or a registered data set ('name:split')",
        ),
        Option(
            "preprocess",
            str,
            "signed",
            "uint8 -> model input: signed x/127.5-1, unit x/255, raw 0-255",
            choices=tuple(PREPROCESSINGS),
        ),
    )


def load_model_inputs(ctx: CheckContext, spec: str, preprocess: str, limit: int) -> torch.Tensor:
    """Up to ``limit`` images of ``spec`` (all, or a subset drawn with the run's seed: a folder sorted by class
    must not give the first classes only), mapped to model space by the named preprocessing."""
    from diffeval.data.sources import seeded_subset

    source = ctx.open_data(spec)
    n = len(source)
    return preprocessing(preprocess)(source.load(range(n) if n <= limit else seeded_subset(n, limit, ctx.seed)))


@register_check
class XtNormality(Check):
    """The forward process run on real data through the stated preprocessing: does it end at N(0, I)? Plots x_T's
    histogram
    and QQ plot.
    """

    name = "xt_normality"
    needs = ("schedule",)
    options = (
        *data_options(),
        Option("n", int, 4096, "use at most this many images", minimum=1),
    )

    def run(self, ctx: CheckContext) -> CheckOutcome:
        o = self.settings
        x0 = load_model_inputs(ctx, o["data"], o["preprocess"], o["n"])
        schedule = ctx.info.schedule
        results = check_xt_normality(x0, schedule, seed=ctx.seed)
        x_T = forward_samples(x0.double(), schedule, ctx.seed).x_T  # noqa: N806
        title = f"x_T of {o['data']} ({o['preprocess']}) under {schedule.name}"

        def hist(path: Any) -> Any:
            from diffeval.checks.figures import plot_xt_histogram

            return plot_xt_histogram(x_T, path, title=title)

        def qq(path: Any) -> Any:
            from diffeval.checks.figures import plot_qq

            return plot_qq(x_T, path)

        return CheckOutcome(results, [Figure("xt_histogram", hist), Figure("xt_qq", qq)])

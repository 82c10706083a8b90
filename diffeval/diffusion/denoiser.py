"""The denoiser view: a model, its training schedule and its prediction type → ``x0_hat`` and ``eps_hat``.

Every consumer of a diffusion model — the generalized sampler, bits per dimension and
the training diagnostics — asks the same question: "what does the model say x0 and eps
are at this noise level?". This module answers it once:

- :data:`PREDICTIONS` and :func:`check_prediction`: the prediction types (``eps``, ``x0``,
  ``v``, ``flow``), validated in one place with one exception type;
- :func:`to_x0_eps`: the conversion at ``z_t = alpha_t x0 + sigma_t eps`` (``v = alpha eps - sigma x0``;
  ``flow``: the velocity ``u = eps - x0`` of flow matching / rectified flow);
- :class:`Denoiser`: ``model(x_t, t, *cond)`` called in the schedule's own time
  convention and on its own path (a flow model sees ``(1 - t) x0 + t eps``), shape- and
  finiteness-checked, converted to ``(x0_hat, eps_hat)``.

Example::

    >>> import torch
    >>> from diffeval import schedules
    >>> d = Denoiser(lambda z, t: torch.zeros_like(z), schedules.linear(), "eps")
    >>> x0_hat, eps_hat = d.predict(torch.ones(2, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 999]))
    >>> float(eps_hat.abs().max())
    0.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffeval.core.errors import ConfigError, SamplerError, explain
from diffeval.diffusion.schedules import Schedule, path_scale

__all__ = ["PREDICTIONS", "check_prediction", "to_x0_eps", "Denoiser", "model_device"]

PREDICTIONS = ("eps", "x0", "v", "flow")


def check_prediction(prediction: Any, *, allow_none: bool = False) -> str | None:
    """``prediction`` if it is ``eps``, ``x0``, ``v`` or ``flow`` (or None when ``allow_none``); else a
    :class:`ConfigError`."""
    if prediction is None and allow_none:
        return None
    if prediction not in PREDICTIONS:
        raise ConfigError(
            explain(
                "unknown prediction type",
                expected=" / ".join(PREDICTIONS) + (" or None" if allow_none else ""),
                got=repr(prediction),
                fix=(
                    "say what the model outputs: eps (noise), x0 (clean data), v (alpha eps - sigma x0) or flow (the"
                    " velocity eps - x0 of flow matching)"
                ),
            )
        )
    return prediction


def _is_zero(x: float | torch.Tensor) -> bool:
    return bool((x == 0).any()) if torch.is_tensor(x) else x == 0.0


def to_x0_eps(
    prediction: str, out: torch.Tensor, z_t: torch.Tensor, alpha_t: float | torch.Tensor, sigma_t: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output to ``(x0_hat, eps_hat)`` at ``z_t = alpha_t x0 + sigma_t eps``.

    ``alpha_t``/``sigma_t`` are floats or tensors broadcastable to ``z_t`` (one per sample).
    eps: ``x0 = (z - sigma eps) / alpha``; x0: ``eps = (z - alpha x0) / sigma``;
    v = alpha eps - sigma x0 (vp path): ``x0 = alpha z - sigma v``, ``eps = sigma z + alpha v``;
    flow, u = eps - x0 (any path): ``x0 = (z - sigma u) / (alpha + sigma)``, ``eps = x0 + u`` — on the flow path
    (alpha + sigma = 1) ``x0 = z - t u`` and ``eps = z + (1 - t) u``.
    """
    if prediction == "eps":
        if _is_zero(alpha_t):
            raise SamplerError(
                explain(
                    "eps-prediction cannot recover x0 at zero SNR (alpha_t = 0)",
                    expected="a schedule with finite terminal log-SNR, or a v/x0-prediction model",
                    got="alpha_t = 0 where the model is evaluated",
                    fix="use v-prediction with zero-terminal-SNR schedules (Lin et al. 2023)",
                )
            )
        return (z_t - sigma_t * out) / alpha_t, out
    if prediction == "x0":
        if torch.is_tensor(sigma_t):
            safe = torch.where(sigma_t == 0, torch.ones_like(sigma_t), sigma_t)
            return out, torch.where(sigma_t == 0, torch.zeros_like(out), (z_t - alpha_t * out) / safe)
        if sigma_t == 0.0:
            return out, torch.zeros_like(out)
        return out, (z_t - alpha_t * out) / sigma_t
    if prediction == "v":
        return alpha_t * z_t - sigma_t * out, sigma_t * z_t + alpha_t * out
    if prediction == "flow":
        x0 = (z_t - sigma_t * out) / (alpha_t + sigma_t)
        return x0, x0 + out
    check_prediction(prediction)
    raise AssertionError("unreachable")


def model_device(model: Any) -> torch.device:
    """The device of a module's first parameter (CPU for plain functions)."""
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class Denoiser:
    """``model(x_t, t, *cond) -> prediction`` with its ``schedule`` and ``prediction`` type.

    ``t`` is in the schedule's model time convention (``schedule.model_times`` for
    discrete steps, ``schedule.model_time_fn(u)`` for continuous ones).
    """

    def __init__(self, model: Callable[..., torch.Tensor], schedule: Schedule, prediction: str) -> None:
        if not callable(model):
            raise SamplerError(
                explain(
                    "model is not callable",
                    expected="model(x_t, t) -> tensor",
                    got=type(model).__name__,
                    fix="pass the network (an nn.Module) or a function",
                )
            )
        if not isinstance(schedule, Schedule):
            raise SamplerError(
                explain(
                    "schedule is not a diffeval Schedule",
                    expected="a diffeval.diffusion.schedules.Schedule",
                    got=type(schedule).__name__,
                    fix="convert it with diffeval.diffusion.schedules.from_betas / from_alphas_cumprod",
                )
            )
        self.model = model
        self.schedule = schedule
        self.prediction = check_prediction(prediction)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def __call__(self, z: torch.Tensor, model_time: torch.Tensor, *cond: Any, where: str = "") -> torch.Tensor:
        """One model call; the output must have ``z``'s shape (no host sync: finiteness is the caller's to check)."""
        out = self.model(z, model_time, *cond)
        if not torch.is_tensor(out) or out.shape != z.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise SamplerError(
                explain(
                    f"model output{' ' + where if where else ''} has the wrong shape",
                    expected=f"{tuple(z.shape)} (same as x_t)",
                    got=f"{got}",
                    fix="the model must return one prediction per input pixel (eps, x0 or v)",
                )
            )
        return out

    def predict_at(
        self, z: torch.Tensor, log_snr: torch.Tensor, model_time: torch.Tensor, where: Callable[[int], str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` in float64 on the CPU, for float64 ``z`` at per-sample log-SNR and model times.

        The model runs in float32 on its own device, without gradients; a non-finite output
        is a :class:`SamplerError` naming the first bad sample's noise level (``where(i)``).
        """
        device = self.device
        shape = (-1, *[1] * (z.ndim - 1))
        lam = log_snr.double()
        scale = path_scale(self.schedule.path, lam).view(shape)  # the model sees its own path's z_t
        z_model = z.double().cpu() * scale
        with torch.no_grad():
            out = self(z_model.float().to(device), model_time.float().to(device), where=f"at {where(0)}")
        out = out.double().cpu()
        bad = ~torch.isfinite(out).flatten(1).all(1)
        if bool(bad.any()):
            raise SamplerError(
                explain(
                    f"model returned NaN/inf at {where(int(torch.nonzero(bad)[0, 0]))}",
                    expected="finite predictions",
                    got=f"{int(bad.sum())} bad samples",
                    fix="check the weights, the dtype and the model's time input convention",
                )
            )
        if self.prediction == "v" or self.schedule.path == "vp":  # v is defined on the vp path
            alpha, sigma = torch.sigmoid(lam).sqrt().view(shape), torch.sigmoid(-lam).sqrt().view(shape)
            return to_x0_eps(self.prediction, out, z.double().cpu(), alpha, sigma)
        alpha, sigma = torch.sigmoid(0.5 * lam).view(shape), torch.sigmoid(-0.5 * lam).view(shape)
        return to_x0_eps(self.prediction, out, z_model, alpha, sigma)

    def predict(self, z: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` at discrete training indices ``index`` (0-based, one per sample)."""
        index = index.long().cpu()
        lam = self.schedule.log_snr[index]
        return self.predict_at(
            z,
            lam,
            self.schedule.model_times[index],
            lambda i: f"training step t={int(index[i]) + 1} (log-SNR {float(lam[i]):.4g})",
        )

    def noised(self, x0: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``z_t = alpha_t x0 + sigma_t eps`` (float64) at training indices ``index``."""
        shape = (-1, *[1] * (x0.ndim - 1))
        index = index.long().cpu()
        return (
            self.schedule.alpha[index].view(shape) * x0.double() + self.schedule.sigma[index].view(shape) * eps.double()
        )

"""A small continuous-time model for the demo: the exact denoiser of a Gaussian fit of the digits.

The training digits (in [-1, 1]) are fitted by ``N(mu, Sigma)`` (plus the variance
``Delta^2 / 12`` of the 8-bit bins, so Sigma is positive definite). For Gaussian data the
optimal denoiser is linear and exact at every noise level of the continuous VDM schedule
(``lambda(u) = 13.3 - 18.3 u``)::

    x0*(z_u) = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (z_u - alpha mu),   eps* = (z_u - alpha x0*) / sigma

It needs no weight file (its parameters are computed from the bundled data) and its
log-SNR is differentiable, so the continuous-time VDM bits/dim estimator applies — the
demo's U-Net is discrete-time. Registered by the demo plugin as the sampler factory and
named config ``demo-gaussian``: ``diffeval bpd demo-gaussian --estimator vdm``.
"""

from __future__ import annotations

import torch

from diffeval.demo.bundle import IMAGE_SHAPE
from diffeval.demo.data import load_digits
from diffeval.diffusion import schedules
from diffeval.samplers.generic import GeneralizedSampler

__all__ = ["GaussianDigits", "gaussian_sampler"]


class GaussianDigits:
    """``model(z_u, u) -> eps*`` for data ``N(mu, Sigma)`` fitted on the training digits, under the VDM schedule."""

    def __init__(self, schedule: schedules.Schedule | None = None) -> None:
        self.schedule = schedule if schedule is not None else schedules.vdm()
        x = load_digits("train").as_float().double().flatten(1)
        bin_var = (2 / 255) ** 2 / 12
        self.mu = x.mean(0)
        cov = torch.cov(x.T) + bin_var * torch.eye(x.shape[1], dtype=torch.float64)
        self.s, self.v = torch.linalg.eigh(0.5 * (cov + cov.T))

    def __call__(self, z: torch.Tensor, u: torch.Tensor, *cond: object) -> torch.Tensor:
        lam = self.schedule.log_snr_fn(u.double().cpu()).view(-1, 1)  # type: ignore[misc]
        a, s2 = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam)
        flat = z.double().cpu().flatten(1)
        y = (flat - a * self.mu) @ self.v
        x0 = self.mu + (y * (a * self.s / (a**2 * self.s + s2))) @ self.v.T
        eps = (flat - a * x0) / s2.sqrt()
        return eps.view(z.shape).to(device=z.device, dtype=z.dtype)


def gaussian_sampler(steps: int = 50, eta: float = 0.0, device: str = "cpu", **knobs: object) -> GeneralizedSampler:
    """The generalized sampler over :class:`GaussianDigits` (eps-prediction, VDM schedule, T = 1000 steps)."""
    model = GaussianDigits()
    return GeneralizedSampler(
        model, model.schedule, prediction="eps", steps=steps, eta=eta, image_shape=IMAGE_SHAPE, **knobs
    )

"""``diffeval diagnose``: a checks-only run — SNR-endpoint checks of a schedule and, on data, the x_T-normality checks.

The command's options become a ``[schedule]`` config (a preset name, an
``alphas_cumprod`` file or a diffusers scheduler config, whose ``timestep_spacing`` and
``prediction_type`` apply unless overridden) with the ``snr_endpoints`` check and, given
``--data``, the ``xt_normality`` check; it runs through the same runner and report as
``diffeval run`` (report files and the checks' plots: log-SNR curve, x_T histogram, QQ plot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffeval.run.config import RunConfig, parse_config

__all__ = ["diagnose_config"]


def diagnose_config(
    *,
    schedule: str | None = None,
    alphas: str | Path | None = None,
    config: str | Path | None = None,
    rescale_zero_snr: bool = False,
    prediction: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    data: str | None = None,
    preprocess: str = "signed",
    seed: int = 0,
    shift: float | None = None,
    mu: float | None = None,
) -> RunConfig:
    """The checks-only :class:`~diffeval.run.config.RunConfig` for the ``diagnose`` options (paths relative to the
    working folder).
    """
    sched: dict[str, Any] = {"rescale_zero_snr": rescale_zero_snr}
    for key, value in (
        ("preset", schedule),
        ("alphas", None if alphas is None else str(alphas)),
        ("diffusers_config", None if config is None else str(config)),
        ("prediction", prediction),
        ("steps", steps),
        ("spacing", spacing),
        ("shift", shift),
        ("mu", mu),
    ):
        if value is not None:
            sched[key] = value
    checks: dict[str, Any] = {"snr_endpoints": True}
    if data is not None:
        checks["xt_normality"] = {"data": data, "preprocess": preprocess}
    return parse_config(
        {"run": {"name": "diagnose", "seed": seed}, "schedule": sched, "checks": checks},
        base_dir=Path.cwd(),
        source="diffeval diagnose",
    )

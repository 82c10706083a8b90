"""What a run evaluates: a sampler built by its factory, or a bare schedule (a checks-only run), and its condition.

:func:`build_subject` turns a config's ``[sampler]`` (or ``[schedule]``) into a
:class:`Subject`: the :class:`~diffeval.samplers.SamplerInfo` every check and metric
reads, the sampler itself (None for a bare schedule), and ``make(overrides)`` to build
the same sampler with knobs changed (sweeps, the saturation check). :func:`cond_fn`
turns ``[cond]`` into ``seeds -> condition``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.data.sources import read_prompts
from diffeval.diffusion import schedules
from diffeval.run.config import RunConfig, ScheduleSpec
from diffeval.samplers.base import SamplerInfo, describe
from diffeval.samplers.factories import build_sampler

__all__ = ["Subject", "build_subject", "load_schedule", "cond_fn"]


@dataclass
class Subject:
    info: SamplerInfo
    sampler: Any = None
    make: Callable[[dict[str, Any]], Any] | None = None


def load_schedule(
    preset: str | None = None,
    alphas: str | Path | None = None,
    diffusers_config: str | Path | None = None,
    shift: float | None = None,
    mu: float | None = None,
) -> tuple[schedules.Schedule, dict[str, Any]]:
    """Exactly one of a preset name, an ``alphas_cumprod`` file (.npy, .txt, .csv) or a diffusers scheduler config
    (.json).

    Returns the schedule and, for a diffusers config, the config itself (its
    ``timestep_spacing`` and ``prediction_type`` apply when the user does not override them). ``shift`` applies to
    the ``flow`` preset; ``mu`` to the flow preset or a flow scheduler's config with dynamic shifting.
    """
    given = [x is not None for x in (preset, alphas, diffusers_config)]
    if sum(given) != 1:
        raise ConfigError(
            explain(
                "a schedule needs exactly one source",
                expected="a preset name, an alphas_cumprod file or a diffusers config file",
                got=f"{sum(given)} given",
                fix="pass one of them",
            )
        )
    flow_preset = preset == "flow"
    if (shift is not None and not flow_preset) or (mu is not None and not (flow_preset or diffusers_config)):
        raise ConfigError(
            explain(
                "shift / mu apply to flow schedules only",
                expected="shift with preset = 'flow'; mu with preset = 'flow' or a flow scheduler's config",
                got=f"shift={shift!r}, mu={mu!r} for {preset or alphas or diffusers_config}",
                fix="drop shift / mu, or use preset = 'flow'",
            )
        )
    if preset is not None:
        if not flow_preset:
            return schedules.get(preset), {}
        kwargs: dict[str, Any] = {} if shift is None else {"shift": shift}
        if mu is not None:
            kwargs.update(mu=mu, use_dynamic_shifting=True)
        return schedules.get(preset, **kwargs), {}
    if alphas is not None:
        path = Path(alphas)
        if not path.is_file():
            raise InputError(
                explain(
                    f"alphas file {path} not found",
                    expected="an existing .npy/.txt/.csv file",
                    got="nothing",
                    fix="check the path",
                )
            )
        try:
            array = (
                np.load(path, allow_pickle=False)
                if path.suffix == ".npy"
                else np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
            )
        except ValueError as error:
            raise InputError(
                explain(
                    f"cannot read {path}",
                    expected="numbers, one alpha_bar per step",
                    got=str(error),
                    fix="save with numpy.save or one value per line",
                )
            ) from None
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 1:
            raise InputError(
                explain(
                    f"alphas file {path} has the wrong shape",
                    expected="a 1-D array (T,)",
                    got=f"shape {array.shape}",
                    fix="save one alpha_bar value per training step",
                )
            )
        return schedules.from_alphas_cumprod(array, name=path.name), {}
    path = Path(diffusers_config)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            explain(
                f"cannot read diffusers config {path}",
                expected="a scheduler_config.json",
                got=f"{type(error).__name__}: {error}",
                fix="pass the scheduler's config file",
            )
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            explain(
                f"diffusers config {path} is not a JSON object",
                expected="a scheduler_config.json",
                got=type(data).__name__,
                fix="pass the scheduler's config file",
            )
        )
    return schedules.from_diffusers_config(data, mu=mu), data


_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _config_prediction(config: dict[str, Any]) -> str | None:
    """The prediction type a diffusers scheduler config states (flow-matching schedulers: the velocity, ``flow``)."""
    if config and schedules.is_flow_config(config):
        return "flow"
    return _DIFFUSERS_PREDICTIONS.get(config.get("prediction_type"))


def _schedule_subject(spec: ScheduleSpec, base_dir: Path) -> Subject:
    resolve = lambda p: None if p is None else (Path(p) if Path(p).is_absolute() else base_dir / p)  # noqa: E731
    schedule, diffusers_cfg = load_schedule(
        spec.preset, resolve(spec.alphas), resolve(spec.diffusers_config), spec.shift, spec.mu
    )
    if spec.rescale_zero_snr:
        schedule = schedules.rescale_zero_terminal_snr(schedule)
    spacing = spec.spacing or (diffusers_cfg.get("timestep_spacing") if spec.steps is not None else None)
    if spacing is not None and spacing not in schedules.SPACINGS:
        raise ConfigError(
            explain(
                "unknown timestep spacing in the diffusers config",
                expected=" / ".join(schedules.SPACINGS),
                got=repr(spacing),
                fix="pass the spacing explicitly",
            )
        )
    prediction = spec.prediction or _config_prediction(diffusers_cfg)
    knobs = {"schedule": schedule.name, "prediction": prediction, "steps": spec.steps, "spacing": spacing}
    indices = None
    if spec.steps is not None and spacing is not None:
        indices = tuple(int(i) for i in schedules.sampling_indices(schedule.T, spec.steps, spacing))
    return Subject(
        SamplerInfo(
            name=f"schedule:{schedule.name}",
            knobs=knobs,
            schedule=schedule,
            prediction=prediction,
            steps=spec.steps,
            spacing=spacing,
            indices=indices,
        )
    )


def build_subject(cfg: RunConfig) -> Subject:
    """The subject of ``cfg``: its sampler (built now, so a broken factory fails before any work) or its bare
    schedule.
    """
    if cfg.sampler is None:
        return _schedule_subject(cfg.schedule, cfg.base_dir)
    spec = cfg.sampler

    def make(overrides: dict[str, Any]) -> Any:
        return build_sampler(spec.factory, {**spec.kwargs, **overrides}, device=cfg.device, search_path=cfg.base_dir)

    sampler = make({})
    return Subject(describe(sampler), sampler, make)


def cond_fn(cfg: RunConfig) -> Callable[[list[int]], Any] | None:
    """``seeds -> condition`` from ``[cond]``: class labels ``seed mod 10``, or prompt ``seed mod len(prompts)``; None
    when unconditional. The prompt count must divide ``n`` (one prompt per sample, or a list repeated whole): any
    other count is an error with both counts, since a lost or split line would shift every later pairing.
    """
    if "labels" in cfg.cond:
        device = cfg.device
        return lambda seeds: torch.tensor([s % 10 for s in seeds], device=device)
    if "prompts" in cfg.cond:
        path = cfg.resolve_path(cfg.cond["prompts"])
        prompts = read_prompts(path)
        if not prompts:
            raise ConfigError(
                explain(f"prompts file {path} is empty", expected="one prompt per line", got="none", fix="add prompts")
            )
        if cfg.n % len(prompts):  # a caption split in two (or a line lost) would shift every later pairing silently
            raise ConfigError(
                explain(
                    f"prompts file {path} does not fit the run's n = {cfg.n}",
                    expected=f"one prompt per sample ({cfg.n} lines), or a list repeated whole (a count dividing n)",
                    got=f"{len(prompts)} prompts",
                    fix="give one prompt per line and one line per sample (or per repeated block), or set [run] n",
                )
            )
        return lambda seeds: [prompts[s % len(prompts)] for s in seeds]
    return None

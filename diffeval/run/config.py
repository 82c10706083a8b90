"""Evaluation configs (TOML): parsed strictly into dataclasses; unknown keys are errors listing the valid ones.

Layout (see ``diffeval/demo/demo.toml``)::

    [run]        name, n, seed, batch_size, device, image_shape (optional if the sampler declares one)
    [sampler]    factory = "pkg.module:function" (or a registered name), [sampler.kwargs] ...
    [schedule]   instead of [sampler], for a checks-only run: preset | alphas | diffusers_config,
                 rescale_zero_snr, prediction, steps, spacing
    [cond]       labels = "seed_mod_10" | prompts = "prompts.txt"   (optional)
    [[metrics]]  name = a registered metric, and its declared options
    [checks]     name = true, or name = { its declared options }
    [sweep]      knob = "steps", values = [...] | [sweep.grid] gamma = [...], delta = [...] | points = [{...}]
                 (optional; max_points = 1000 by default; see :mod:`diffeval.run.sweeps`)

Metric and check options are validated against the declarations of the registered
classes (:data:`diffeval.metrics.base.METRICS`, :data:`diffeval.checks.base.CHECKS`),
so a config accepts exactly what the metric accepts. Relative paths are resolved
against the config file's folder; a named config (``demo``) is looked up in
:data:`CONFIGS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffeval.core.errors import ConfigError, explain
from diffeval.core.options import Option, reject_unknown, validate_options
from diffeval.core.registry import Registry
from diffeval.core.toml import read_toml
from diffeval.diffusion.denoiser import PREDICTIONS
from diffeval.diffusion.schedules import SPACINGS
from diffeval.run.sweeps import SweepSpec, parse_sweep

__all__ = [
    "RunConfig",
    "SamplerSpec",
    "ScheduleSpec",
    "MetricSpec",
    "CheckSpec",
    "SweepSpec",
    "CONFIGS",
    "load_config",
    "parse_config",
    "read_toml",
    "COND_LABEL_RULES",
    "RUN_OPTIONS",
    "SAMPLER_OPTIONS",
    "SCHEDULE_OPTIONS",
    "COND_OPTIONS",
]

CONFIGS: Registry[Path] = Registry("named config")  # name -> path of a TOML config (plugins register theirs)
COND_LABEL_RULES = ("seed_mod_10",)


@dataclass(frozen=True)
class SamplerSpec:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScheduleSpec:
    """A bare schedule to check (no sampler): exactly one of ``preset``, ``alphas`` (file) or ``diffusers_config``
    (file).
    """

    preset: str | None = None
    alphas: str | None = None
    diffusers_config: str | None = None
    rescale_zero_snr: bool = False
    prediction: str | None = None
    steps: int | None = None
    spacing: str | None = None
    shift: float | None = None
    mu: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # validated, defaults filled in


@dataclass(frozen=True)
class CheckSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # as given (the check validates and fills defaults)


@dataclass(frozen=True)
class RunConfig:
    name: str
    sampler: SamplerSpec | None
    n: int
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    image_shape: tuple[int, ...] | None = None
    metrics: list[MetricSpec] = field(default_factory=list)
    checks: list[CheckSpec] = field(default_factory=list)
    cond: dict[str, Any] = field(default_factory=dict)
    sweep: SweepSpec | None = None
    schedule: ScheduleSpec | None = None
    base_dir: Path = Path(".")
    source: str = "<dict>"

    def resolve_path(self, value: str | Path) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (for provenance)."""
        return {
            "name": self.name,
            "source": self.source,
            "n": self.n,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "device": self.device,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "sampler": (
                None if self.sampler is None else {"factory": self.sampler.factory, "kwargs": self.sampler.kwargs}
            ),
            "schedule": None if self.schedule is None else dict(self.schedule.__dict__),
            "metrics": [{"name": m.name, **m.options} for m in self.metrics],
            "checks": {c.name: c.options for c in self.checks},
            "cond": self.cond,
            "sweep": None if self.sweep is None else self.sweep.to_dict(),
        }


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            explain(
                f"{where} must be a table",
                expected="a TOML table",
                got=type(value).__name__,
                fix=f"write [{where}] with key = value lines",
            )
        )
    return dict(value)


# Every table of a config is declared, like a metric's options: types, bounds, choices and "did you mean" come from
# one place (diffeval.core.options), and --help / docs can list them.
RUN_OPTIONS = (
    Option("name", str, "run", "the run's name (default output folder: runs/<name>)"),
    Option(
        "n", int, None, "samples to generate (required with [sampler]; at most 100,000,000)", minimum=0, nullable=True
    ),
    Option("seed", int, 0, "first seed: sample i uses seed + i", minimum=0),
    Option("batch_size", int, 64, "samples per batch", minimum=1),
    Option("device", str, "cpu", "cpu, cuda or cuda:N"),
    Option(
        "image_shape", list, None, "[C, H, W] (default: the sampler's)", item=int, length=3, minimum=1, nullable=True
    ),
)
SAMPLER_OPTIONS = (
    Option("factory", str, doc="'pkg.module:function' or a registered sampler factory name"),
    Option("kwargs", dict, None, "keyword arguments of the factory ([sampler.kwargs])", nullable=True),
)
SCHEDULE_OPTIONS = (
    Option("preset", str, None, "a preset schedule name", nullable=True),
    Option("alphas", str, None, "an alphas_cumprod file (.npy, .txt, .csv)", nullable=True),
    Option("diffusers_config", str, None, "a diffusers scheduler_config.json", nullable=True),
    Option("rescale_zero_snr", bool, False, "apply Lin et al.'s zero-terminal-SNR rescale first"),
    Option("prediction", str, None, "what the model predicts", choices=PREDICTIONS, nullable=True),
    Option("steps", int, None, "sampling steps (with spacing: the first step is checked)", minimum=1, nullable=True),
    Option("spacing", str, None, "timestep spacing", choices=SPACINGS, nullable=True),
    Option("shift", float, None, "flow preset: the time shift s (SD3: 3.0)", nullable=True),
    Option("mu", float, None, "flow: dynamic shifting's mu (shift = exp(mu); Flux, SD3.5)", nullable=True),
)
COND_OPTIONS = (
    Option("labels", str, None, "a class-label rule", choices=COND_LABEL_RULES, nullable=True),
    Option("prompts", str, None, "a text file, one prompt per line (line i for seed i)", nullable=True),
)
TABLES = ("run", "sampler", "schedule", "cond", "metrics", "checks", "sweep")


def _metrics(items: Any) -> list[MetricSpec]:
    from diffeval.metrics.base import metric_class

    if not isinstance(items, list):
        raise ConfigError(
            explain(
                "metrics must be an array of tables",
                expected="[[metrics]] blocks",
                got=type(items).__name__,
                fix="write each metric as a [[metrics]] block",
            )
        )
    out = []
    for i, m in enumerate(items):
        m = _table(m, f"metrics[{i}]")
        name = m.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(
                explain(
                    f"[[metrics]] #{i + 1} has no name",
                    expected="name = a registered metric",
                    got=repr(name),
                    fix="add name = 'fid' (or another metric)",
                )
            )
        out.append(MetricSpec(name, validate_options(m, metric_class(name).options, f"[[metrics]] {name}")))
    return out


def _checks(table: Any) -> list[CheckSpec]:
    from diffeval.checks.base import CHECKS

    out = []
    for name, value in _table(table, "checks").items():
        cls = CHECKS.get(name)
        if value is False:
            continue
        options = {} if value is True else _table(value, f"checks.{name}")
        validate_options(options, cls.options, f"[checks] {name}")  # fail early, before any work
        out.append(CheckSpec(name, options))
    return out


def _schedule(table: Any) -> ScheduleSpec:
    sch = validate_options(_table(table, "schedule"), SCHEDULE_OPTIONS, "[schedule]")
    sources = [k for k in ("preset", "alphas", "diffusers_config") if sch[k] is not None]
    if len(sources) != 1:
        raise ConfigError(
            explain(
                "[schedule] needs exactly one source",
                expected=(
                    "preset = 'linear', alphas = 'alphas_cumprod.npy' or diffusers_config = 'scheduler_config.json'"
                ),
                got=f"{sources or 'none'}",
                fix="keep one of them",
            )
        )
    steps, spacing = sch["steps"], sch["spacing"]
    if (steps is None) != (spacing is None) and not (steps is not None and sch["diffusers_config"] is not None):
        raise ConfigError(
            explain(
                "[schedule] steps and spacing go together",
                expected="both (the first sampling step is checked) or neither",
                got=f"steps = {steps}, spacing = {spacing}",
                fix="add the missing one",
            )
        )
    return ScheduleSpec(**sch)


def _sampler(table: Any) -> SamplerSpec:
    spec = validate_options(_table(table, "sampler"), SAMPLER_OPTIONS, "[sampler]")
    return SamplerSpec(spec["factory"], spec["kwargs"] or {})


def _checks_only(schedule_table: Any, metrics: list[MetricSpec], data: Mapping[str, Any]) -> ScheduleSpec:
    """A [schedule] run: checks and (no) data metrics only."""
    from diffeval.metrics.base import metric_class

    schedule = _schedule(schedule_table)
    sampled = [m.name for m in metrics if metric_class(m.name).inputs == "samples"]
    if sampled or "sweep" in data or "cond" in data:
        raise ConfigError(
            explain(
                "a [schedule] (checks-only) run cannot sample",
                expected="checks and data metrics only",
                got=f"sample metrics {sampled}" if sampled else "a [sweep] or [cond] table",
                fix="use [sampler] to evaluate samples, or drop them",
            )
        )
    if any(metric_class(m.name).inputs == "data" for m in metrics):
        raise ConfigError(
            explain(
                "data metrics need a model",
                expected="a [sampler] that declares its model",
                got="[schedule] only",
                fix="use [sampler]",
            )
        )
    return schedule


MAX_SAMPLES = 100_000_000  # one run's seeds are listed in memory, and every sample is generated and featurized


def _check_counts(run: Mapping[str, Any]) -> None:
    """Absurd counts are refused before any work, not found out by a MemoryError (or a bad seed) hours in."""
    from diffeval.core.seeds import MAX_SEED

    n, seed = run["n"], run["seed"]
    if n > MAX_SAMPLES:
        raise ConfigError(
            explain(
                f"[run] n = {n:,} is more samples than one run can evaluate",
                expected=f"n <= {MAX_SAMPLES:,} (a run lists every seed in memory and generates every sample)",
                got=f"n = {n:,}",
                fix="lower n (FID is usually reported at 50,000 samples; use the reference's count)",
            )
        )
    if seed + n - 1 > MAX_SEED:
        raise ConfigError(
            explain(
                "[run] seed + n runs past the largest seed",
                expected=f"seed + n - 1 <= {MAX_SEED} (2**63 - 1)",
                got=f"seed = {seed}, n = {n:,}",
                fix="lower seed",
            )
        )


def parse_config(data: Mapping[str, Any], base_dir: Path = Path("."), source: str = "<dict>") -> RunConfig:
    """Validate a config mapping (as read from TOML)."""
    reject_unknown(data, TABLES, "the config", noun="table")
    if "run" not in data or ("sampler" in data) == ("schedule" in data):
        raise ConfigError(
            explain(
                "config needs [run] and one of [sampler] (evaluate a sampler) or [schedule] (check a schedule only)",
                expected="[run] and exactly one of [sampler], [schedule]",
                got=f"tables {sorted(data)}",
                fix="see diffeval/demo/demo.toml for a complete example",
            )
        )
    run = validate_options(_table(data["run"], "run"), RUN_OPTIONS, "[run]")
    metrics = _metrics(data.get("metrics", []))
    checks = _checks(data.get("checks", {}))
    sampler = schedule = None
    if "sampler" in data:
        sampler = _sampler(data["sampler"])
        if run["n"] is None or run["n"] < 1:
            raise ConfigError(
                explain(
                    "[run] needs n >= 1 to evaluate a sampler",
                    expected="n = number of samples",
                    got="nothing" if run["n"] is None else f"n = {run['n']}",
                    fix="add n = 10000 (or the reference size)",
                )
            )
        _check_counts(run)
    else:
        schedule = _checks_only(data["schedule"], metrics, data)
    cond = validate_options(_table(data.get("cond", {}), "cond"), COND_OPTIONS, "[cond]")
    cond = {k: v for k, v in cond.items() if v is not None}
    if len(cond) > 1:
        raise ConfigError(
            explain("[cond] takes one source", expected="labels or prompts", got=", ".join(cond), fix="keep one")
        )
    sweep = parse_sweep(_table(data["sweep"], "sweep"), n=run["n"]) if "sweep" in data else None
    shape = run["image_shape"]
    return RunConfig(
        name=run["name"],
        sampler=sampler,
        n=run["n"] or 0,
        seed=run["seed"],
        batch_size=run["batch_size"],
        device=run["device"],
        image_shape=None if shape is None else tuple(shape),
        metrics=metrics,
        checks=checks,
        cond=cond,
        sweep=sweep,
        schedule=schedule,
        base_dir=base_dir,
        source=source,
    )


def load_config(path_or_name: str | Path) -> RunConfig:
    """Read and validate a TOML config file, or a registered named config (``demo``)."""
    path = Path(path_or_name)
    if (
        not path.is_file()  # a folder named like a config (e.g. a `demo` output folder) does not shadow it
        and isinstance(path_or_name, str)
        and "/" not in path_or_name
        and not path_or_name.endswith(".toml")
    ):
        path = Path(CONFIGS.get(path_or_name))
    data = read_toml(path)
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))

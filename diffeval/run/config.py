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
                 (optional; see :mod:`diffeval.run.sweeps`)

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
from diffeval.core.registry import Registry
from diffeval.core.toml import read_toml
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


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        import difflib

        hints = [
            f"{u!r}: did you mean {c[0]!r}?"
            for u in unknown
            if (c := difflib.get_close_matches(u, sorted(allowed), n=1))
        ]
        raise ConfigError(
            explain(
                f"unknown key(s) {', '.join(map(repr, unknown))} in {where}",
                expected=f"keys among: {', '.join(sorted(allowed)) or '(none)'}",
                got=", ".join(unknown),
                fix="; ".join(hints) or "remove or correct them",
            )
        )


def _int(value: Any, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(
            explain(
                f"{where} must be an integer >= {minimum}",
                expected=f"an integer >= {minimum}",
                got=repr(value),
                fix=f"set {where} = {max(minimum, 1)}",
            )
        )
    return value


def _metrics(items: Any) -> list[MetricSpec]:
    from diffeval.core.options import validate_options
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
    from diffeval.core.options import validate_options

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
    from diffeval.diffusion.denoiser import check_prediction
    from diffeval.diffusion.schedules import SPACINGS

    sch = _table(table, "schedule")
    _only(
        sch,
        {"preset", "alphas", "diffusers_config", "rescale_zero_snr", "prediction", "steps", "spacing"},
        "[schedule]",
    )
    sources = [k for k in ("preset", "alphas", "diffusers_config") if k in sch]
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
    for key in sources:
        if not isinstance(sch[key], str):
            raise ConfigError(
                explain(
                    f"[schedule] {key} must be a string",
                    expected="a name or a path",
                    got=repr(sch[key]),
                    fix=f"write {key} = '...'",
                )
            )
    if "spacing" in sch and sch["spacing"] not in SPACINGS:
        raise ConfigError(
            explain(
                "unknown [schedule] spacing",
                expected=" / ".join(SPACINGS),
                got=repr(sch["spacing"]),
                fix="use 'trailing'",
            )
        )
    if ("steps" in sch) != ("spacing" in sch) and not ("steps" in sch and "diffusers_config" in sch):
        raise ConfigError(
            explain(
                "[schedule] steps and spacing go together",
                expected="both (the first sampling step is checked) or neither",
                got=f"steps = {sch.get('steps')}, spacing = {sch.get('spacing')}",
                fix="add the missing one",
            )
        )
    return ScheduleSpec(
        preset=sch.get("preset"),
        alphas=sch.get("alphas"),
        diffusers_config=sch.get("diffusers_config"),
        rescale_zero_snr=_bool(sch.get("rescale_zero_snr", False), "[schedule] rescale_zero_snr"),
        prediction=check_prediction(sch.get("prediction"), allow_none=True),
        steps=None if "steps" not in sch else _int(sch["steps"], "[schedule] steps", 1),
        spacing=sch.get("spacing"),
    )


def _bool(value: Any, where: str) -> bool:
    """A TOML boolean; a string such as "no" is an error, not True."""
    if not isinstance(value, bool):
        raise ConfigError(
            explain(f"bad {where}", expected="true or false", got=repr(value), fix=f"{where.split()[-1]} = true")
        )
    return value


def parse_config(data: Mapping[str, Any], base_dir: Path = Path("."), source: str = "<dict>") -> RunConfig:
    """Validate a config mapping (as read from TOML)."""
    from diffeval.metrics.base import metric_class

    _only(data, {"run", "sampler", "schedule", "cond", "metrics", "checks", "sweep"}, "the config")
    if "run" not in data or ("sampler" in data) == ("schedule" in data):
        raise ConfigError(
            explain(
                "config needs [run] and one of [sampler] (evaluate a sampler) or [schedule] (check a schedule only)",
                expected="[run] and exactly one of [sampler], [schedule]",
                got=f"tables {sorted(data)}",
                fix="see diffeval/demo/demo.toml for a complete example",
            )
        )
    run = _table(data["run"], "run")
    _only(run, {"name", "n", "seed", "batch_size", "device", "image_shape"}, "[run]")
    metrics = _metrics(data.get("metrics", []))
    checks = _checks(data.get("checks", {}))
    sampler = schedule = None
    if "sampler" in data:
        sampler_t = _table(data["sampler"], "sampler")
        _only(sampler_t, {"factory", "kwargs"}, "[sampler]")
        if not isinstance(sampler_t.get("factory"), str):
            raise ConfigError(
                explain(
                    "[sampler] needs factory",
                    expected="factory = 'pkg.module:function' or a registered name",
                    got=repr(sampler_t.get("factory")),
                    fix="name the function that builds your sampler",
                )
            )
        sampler = SamplerSpec(sampler_t["factory"], _table(sampler_t.get("kwargs", {}), "sampler.kwargs"))
        if "n" not in run:
            raise ConfigError(
                explain(
                    "[run] lacks n",
                    expected="n = number of samples",
                    got="nothing",
                    fix="add n = 10000 (or the reference size)",
                )
            )
    else:
        schedule = _schedule(data["schedule"])
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
    cond = _table(data.get("cond", {}), "cond")
    _only(cond, {"labels", "prompts"}, "[cond]")
    if len(cond) > 1:
        raise ConfigError(
            explain("[cond] takes one source", expected="labels or prompts", got=", ".join(cond), fix="keep one")
        )
    if "labels" in cond and cond["labels"] not in COND_LABEL_RULES:
        raise ConfigError(
            explain(
                "unknown label rule",
                expected=" / ".join(map(repr, COND_LABEL_RULES)),
                got=repr(cond["labels"]),
                fix="use labels = 'seed_mod_10'",
            )
        )
    sweep = parse_sweep(_table(data["sweep"], "sweep")) if "sweep" in data else None
    shape = run.get("image_shape")
    if shape is not None and (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise ConfigError(
            explain(
                "[run] image_shape must be [C, H, W]",
                expected="three positive integers",
                got=repr(shape),
                fix="e.g. image_shape = [3, 32, 32]",
            )
        )
    device = run.get("device", "cpu")
    if not isinstance(device, str):
        raise ConfigError(
            explain(
                "[run] device must be a string",
                expected="'cpu', 'cuda' or 'cuda:N'",
                got=repr(device),
                fix="set device = 'cpu'",
            )
        )
    return RunConfig(
        name=str(run.get("name", "run")),
        sampler=sampler,
        n=_int(run.get("n", 0), "[run] n", 1 if sampler is not None else 0),
        seed=_int(run.get("seed", 0), "[run] seed", 0),
        batch_size=_int(run.get("batch_size", 64), "[run] batch_size", 1),
        device=device,
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

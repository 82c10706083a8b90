"""Evaluation configs (TOML): parsed strictly into dataclasses; unknown keys are errors listing the valid ones.

Layout (see ``diffeval/demo/demo.toml``)::

    [run]      name, n, seed, batch_size, device, image_shape (optional if the sampler has one)
    [sampler]  factory = "pkg.module:function" (or "demo"), [sampler.kwargs] ...
    [cond]     labels = "seed_mod_10" | prompts = "prompts.txt"   (optional)
    [[metrics]] name = "fid" | "inception_score" | "kid" | "clip_score" | "bpd", and its options
    [checks]   snr_endpoints = true, xt_normality = {data, preprocess}, terminal_eps_variance = {data},
               saturation = {scales = [...]}
    [sweep]    knob = "steps" | "guidance_scale" | "eta" | "churn" | ..., values = [...]   (optional)

Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffeval.errors import ConfigError, explain

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib

__all__ = ["RunConfig", "SamplerSpec", "MetricSpec", "SweepSpec", "load_config", "parse_config", "METRIC_OPTIONS", "CHECK_NAMES"]

METRIC_OPTIONS: dict[str, set[str]] = {
    "fid": {"extractor", "layer", "reference", "allow_unmatched", "weights", "reference_seed"},
    "inception_score": {"extractor", "layer", "splits", "weights"},
    "kid": {"extractor", "layer", "reference", "subsets", "subset_size", "weights", "reference_seed"},
    "clip_score": {"model", "pretrained"},
    "bpd": {"data", "estimator", "strata", "cdf", "n_t", "t_sampling", "decoder", "n"},
}
CHECK_NAMES = {"snr_endpoints", "xt_normality", "terminal_eps_variance", "saturation"}
CHECK_OPTIONS: dict[str, set[str]] = {
    "snr_endpoints": set(),
    "xt_normality": {"data", "preprocess"},
    "terminal_eps_variance": {"data", "preprocess"},
    "saturation": {"scales", "n"},
}


@dataclass(frozen=True)
class SamplerSpec:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    knob: str
    values: list[Any]


@dataclass(frozen=True)
class RunConfig:
    name: str
    sampler: SamplerSpec
    n: int
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    image_shape: tuple[int, ...] | None = None
    metrics: list[MetricSpec] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    cond: dict[str, Any] = field(default_factory=dict)
    sweep: SweepSpec | None = None
    base_dir: Path = Path(".")
    source: str = "<dict>"

    def resolve_path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(explain(f"{where} must be a table", expected="a TOML table", got=type(value).__name__, fix=f"write [{where}] with key = value lines"))
    return dict(value)


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(explain(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}", expected=f"keys among: {', '.join(sorted(allowed)) or '(none)'}", got=", ".join(unknown), fix="remove or correct them"))


def _int(value: Any, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(explain(f"{where} must be an integer >= {minimum}", expected=f"an integer >= {minimum}", got=repr(value), fix=f"set {where} = {max(minimum, 1)}"))
    return value


def parse_config(data: Mapping[str, Any], base_dir: Path = Path("."), source: str = "<dict>") -> RunConfig:
    """Validate a config mapping (as read from TOML)."""
    _only(data, {"run", "sampler", "cond", "metrics", "checks", "sweep"}, "the config")
    if "run" not in data or "sampler" not in data:
        raise ConfigError(explain("config lacks [run] or [sampler]", expected="both tables", got=f"tables {sorted(data)}", fix="see diffeval/demo/demo.toml for a complete example"))
    run = _table(data["run"], "run")
    _only(run, {"name", "n", "seed", "batch_size", "device", "image_shape"}, "[run]")
    if "n" not in run:
        raise ConfigError(explain("[run] lacks n", expected="n = number of samples", got="nothing", fix="add n = 10000 (or the reference size)"))
    sampler = _table(data["sampler"], "sampler")
    _only(sampler, {"factory", "kwargs"}, "[sampler]")
    if not isinstance(sampler.get("factory"), str):
        raise ConfigError(explain("[sampler] needs factory", expected="factory = 'pkg.module:function' or 'demo'", got=repr(sampler.get("factory")), fix="name the function that builds your sampler"))
    metrics = []
    for i, m in enumerate(data.get("metrics", [])):
        m = _table(m, f"metrics[{i}]")
        name = m.pop("name", None)
        if name not in METRIC_OPTIONS:
            raise ConfigError(explain(f"unknown metric {name!r} in [[metrics]] #{i + 1}", expected=f"one of {', '.join(sorted(METRIC_OPTIONS))}", got=repr(name), fix="correct the metric name"))
        _only(m, METRIC_OPTIONS[name], f"[[metrics]] {name}")
        metrics.append(MetricSpec(name, m))
    checks = {}
    for name, value in _table(data.get("checks", {}), "checks").items():
        if name not in CHECK_NAMES:
            raise ConfigError(explain(f"unknown check {name!r} in [checks]", expected=f"one of {', '.join(sorted(CHECK_NAMES))}", got=repr(name), fix="correct the check name"))
        if value is False:
            continue
        options = {} if value is True else _table(value, f"checks.{name}")
        _only(options, CHECK_OPTIONS[name], f"[checks] {name}")
        checks[name] = options
    cond = _table(data.get("cond", {}), "cond")
    _only(cond, {"labels", "prompts"}, "[cond]")
    if len(cond) > 1:
        raise ConfigError(explain("[cond] takes one source", expected="labels or prompts", got=", ".join(cond), fix="keep one"))
    if "labels" in cond and cond["labels"] != "seed_mod_10":
        raise ConfigError(explain("unknown label rule", expected="'seed_mod_10'", got=repr(cond["labels"]), fix="use labels = 'seed_mod_10'"))
    sweep = None
    if "sweep" in data:
        sw = _table(data["sweep"], "sweep")
        _only(sw, {"knob", "values"}, "[sweep]")
        if not isinstance(sw.get("knob"), str) or not isinstance(sw.get("values"), list) or not sw["values"]:
            raise ConfigError(explain("[sweep] needs knob and a non-empty values list", expected="knob = 'steps', values = [10, 25, 50]", got=repr(sw), fix="add both"))
        sweep = SweepSpec(sw["knob"], list(sw["values"]))
    shape = run.get("image_shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape)):
        raise ConfigError(explain("[run] image_shape must be [C, H, W]", expected="three positive integers", got=repr(shape), fix="e.g. image_shape = [3, 32, 32]"))
    return RunConfig(
        name=str(run.get("name", "run")),
        sampler=SamplerSpec(sampler["factory"], _table(sampler.get("kwargs", {}), "sampler.kwargs")),
        n=_int(run["n"], "[run] n", 1),
        seed=_int(run.get("seed", 0), "[run] seed", 0),
        batch_size=_int(run.get("batch_size", 64), "[run] batch_size", 1),
        device=str(run.get("device", "cpu")),
        image_shape=None if shape is None else tuple(shape),
        metrics=metrics,
        checks=checks,
        cond=cond,
        sweep=sweep,
        base_dir=base_dir,
        source=source,
    )


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(explain(f"cannot read config {path}", expected="a readable TOML file", got=f"{type(error).__name__}: {error}", fix="check the path")) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(explain(f"config {path} is not valid TOML", expected="TOML syntax", got=str(error), fix="fix the line named above")) from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))

"""Sweeps over sampler knobs: one knob, a product grid, or a list of points.

``[sweep]`` in a config takes any of (their points are joined in this order, duplicates
dropped)::

    [sweep]                       # one knob
    knob = "steps"
    values = [10, 25, 50]

    [sweep.grid]                  # a product grid (or [[sweep.grid]]: a union of grids)
    gamma = [0, 0.5, 1, 2, 4]
    delta = [0, 0.5, 1, 1.5]

    [sweep]                       # a list of points
    points = [{ gamma = 0 }, { gamma = 1, delta = 1 }]

Every knob is numeric (the error names the first value that is not); before any
work, the run checks every knob against the sampler's declared knobs and has the
sampler validate every point (``replace``, which shares the model), so a knob the
sampler does not have, or a value it refuses (``gamma < 0``), stops the run at once. A point is a
dict ``knob -> value`` in the sweep's knob order; report rows carry it as JSON in the
``point`` column and :func:`diffeval.core.points.sweep_table` spreads it into one column per knob.

Example::

    >>> spec = parse_sweep({"grid": {"gamma": [0, 1], "delta": [0.5, 1]}})
    >>> [point_text(p) for p in spec.points]
    ['gamma=0, delta=0.5', 'gamma=0, delta=1', 'gamma=1, delta=0.5', 'gamma=1, delta=1']
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diffeval.core.errors import ConfigError, DiffevalError, explain
from diffeval.core.points import point_key, point_text

__all__ = [
    "SweepSpec",
    "parse_sweep",
    "check_points",
]

Point = dict[str, float]


@dataclass(frozen=True)
class SweepSpec:
    """The points of a sweep, in run order, and its knobs in first-seen order."""

    points: tuple[Point, ...]
    knobs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"knobs": list(self.knobs), "points": [dict(p) for p in self.points]}


def _numeric(knob: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(
            explain(
                f"{where}: knob {knob!r} has a value that is not a number",
                expected="numeric knob values (steps, eta, gamma, delta, guidance_scale, churn, ...)",
                got=repr(value),
                fix="sweep numeric knobs only; set other options in [sampler.kwargs] (one run per setting)",
            )
        )
    return int(value) if isinstance(value, int) else float(value)


def _values(knob: str, values: Any, where: str) -> list[float]:
    if not isinstance(knob, str) or not knob:
        raise ConfigError(
            explain(f"{where}: a knob name is not a string", expected="knob = 'gamma'", got=repr(knob), fix="name it")
        )
    if not isinstance(values, list) or not values:
        raise ConfigError(
            explain(
                f"{where}: knob {knob!r} needs a non-empty list of values",
                expected="e.g. gamma = [0, 0.5, 1]",
                got=repr(values),
                fix="give at least one value",
            )
        )
    return [_numeric(knob, v, where) for v in values]


def _grid(table: Any, where: str) -> list[Point]:
    if not isinstance(table, Mapping) or not table:
        raise ConfigError(
            explain(
                f"{where} must be a table of knob = [values]",
                expected="e.g. gamma = [0, 1], delta = [0.5, 1]",
                got=repr(table),
                fix="give at least one knob with values",
            )
        )
    axes = {knob: _values(knob, values, where) for knob, values in table.items()}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def parse_sweep(data: Mapping[str, Any]) -> SweepSpec:
    """Validate a ``[sweep]`` table into its points (see the module docstring)."""
    unknown = sorted(set(data) - {"knob", "values", "grid", "points"})
    if unknown:
        raise ConfigError(
            explain(
                f"unknown key(s) {unknown} in [sweep]",
                expected="knob + values, grid, points",
                got=", ".join(unknown),
                fix="e.g. knob = 'steps', values = [10, 50]; or [sweep.grid] gamma = [...]",
            )
        )
    points: list[Point] = []
    if "knob" in data or "values" in data:
        if "knob" not in data or "values" not in data:
            raise ConfigError(
                explain(
                    "[sweep] needs knob and values together",
                    expected="knob = 'steps', values = [10, 25, 50]",
                    got=f"only {'knob' if 'knob' in data else 'values'}",
                    fix="add the other",
                )
            )
        points += [{data["knob"]: v} for v in _values(data["knob"], data["values"], "[sweep]")]
    if "grid" in data:
        grids = data["grid"] if isinstance(data["grid"], list) else [data["grid"]]
        if not grids:
            raise ConfigError(
                explain("[sweep] grid is empty", expected="at least one grid", got="[]", fix="add knob = [values]")
            )
        for i, grid in enumerate(grids):
            points += _grid(grid, "[sweep.grid]" if len(grids) == 1 else f"[[sweep.grid]] #{i + 1}")
    if "points" in data:
        listed = data["points"]
        if not isinstance(listed, list) or not listed:
            raise ConfigError(
                explain(
                    "[sweep] points must be a non-empty list of tables",
                    expected="points = [{ gamma = 0 }, { gamma = 1, delta = 1 }]",
                    got=repr(listed),
                    fix="give at least one point",
                )
            )
        for i, point in enumerate(listed):
            if not isinstance(point, Mapping) or not point:
                raise ConfigError(
                    explain(
                        f"[sweep] point #{i + 1} is not a table of knobs",
                        expected="{ gamma = 1, delta = 1 }",
                        got=repr(point),
                        fix="write each point as an inline table",
                    )
                )
            points.append({k: _numeric(k, v, f"[sweep] point #{i + 1}") for k, v in point.items()})
    if not points:
        raise ConfigError(
            explain(
                "[sweep] has no points",
                expected="knob + values, a grid or points",
                got="an empty [sweep] table",
                fix="add one, or remove [sweep]",
            )
        )
    unique: dict[str, Point] = {}
    for p in points:
        unique.setdefault(point_key(p), p)
    knobs = tuple(dict.fromkeys(k for p in unique.values() for k in p))
    return SweepSpec(tuple(unique.values()), knobs)


def check_points(
    spec: SweepSpec, declared: Mapping[str, Any], validate: Callable[[Mapping[str, float]], Any] | None = None
) -> None:
    """Before any work: every swept knob is a numeric knob the sampler ``declared`` (its ``describe().knobs``),
    and ``validate(point)`` (e.g. the sampler's cheap ``replace``) accepts every point's values.
    """
    missing = [k for k in spec.knobs if k not in declared]
    if missing:
        raise ConfigError(
            explain(
                f"[sweep] knob(s) {missing} are not knobs of the sampler",
                expected=f"knobs the sampler declares: {', '.join(declared)}",
                got=", ".join(missing),
                fix="sweep a declared knob (the sampler's describe().knobs)",
            )
        )
    for k in spec.knobs:
        value = declared[k]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(
                explain(
                    f"[sweep] knob {k!r} is not numeric for this sampler",
                    expected="a numeric knob",
                    got=f"{k} = {value!r}",
                    fix="set non-numeric options in [sampler.kwargs], one run per setting",
                )
            )
    if validate is not None:
        for point in spec.points:
            try:
                validate(point)
            except DiffevalError as error:
                raise ConfigError(f"[sweep] point {point_text(point)}: {error}") from None

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

A sweep is refused before any work when it has more points than ``max_points`` (default
:data:`MAX_POINTS`; ``[sweep] max_points = N`` raises it): a typo'd grid of a million points
would otherwise start sampling. Configs and reports keep the sweep as declared (the grid's
axes, not its expanded points), so their size does not grow with the grid's.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffeval.core.errors import ConfigError, DiffevalError, explain
from diffeval.core.options import Option
from diffeval.core.points import point_key, point_text

__all__ = [
    "SweepSpec",
    "parse_sweep",
    "check_points",
    "MAX_POINTS",
    "SWEEP_KEYS",
    "SWEEP_OPTIONS",
]

Point = dict[str, float]
MAX_POINTS = 1000
SWEEP_KEYS = ("knob", "values", "grid", "points")  # how points are declared (see the module docstring)
SWEEP_OPTIONS = (
    Option(
        "max_points",
        int,
        MAX_POINTS,
        "refuse a sweep with more points than this before any work (raise it for a large grid you mean)",
        minimum=1,
    ),
)


@dataclass(frozen=True)
class SweepSpec:
    """The points of a sweep, in run order, and its knobs in first-seen order; ``declared`` is the ``[sweep]``
    table as written (without ``max_points``), what configs and reports store instead of every point."""

    points: tuple[Point, ...]
    knobs: tuple[str, ...]
    declared: dict[str, Any] = field(default_factory=dict, compare=False)
    max_points: int = MAX_POINTS

    def to_dict(self) -> dict[str, Any]:
        """The sweep as stored in configs, checkpoints and reports: knobs, point count and the declared table (its
        size does not grow with a grid's point count; the points are :attr:`points`, and each row carries its own)."""
        declared = self.declared or {"points": [dict(p) for p in self.points]}
        return {"knobs": list(self.knobs), "count": len(self.points), "declared": declared}


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


def _grid(table: Any, where: str) -> tuple[int, Iterable[Point]]:
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
    count = math.prod(len(v) for v in axes.values())
    return count, (dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values()))


def _too_many(declared: int, max_points: int, n: int | None) -> ConfigError:
    cost = f"; at n = {n:,} samples per point that is {declared * n:,} samples" if n else ""
    return ConfigError(
        explain(
            f"[sweep] has more points than max_points = {max_points:,}",
            expected=f"at most {max_points:,} points (each point is a full evaluation{cost})",
            got=f"{declared:,} points declared",
            fix=(
                "sweep fewer values (a coarse grid first, then a finer one where it matters), or raise the limit"
                f" with max_points = {declared} in [sweep] if you mean it"
            ),
        )
    )


def parse_sweep(data: Mapping[str, Any], n: int | None = None) -> SweepSpec:
    """Validate a ``[sweep]`` table into its points (see the module docstring); ``n`` (samples per point) words the
    refusal of a sweep above ``max_points``."""
    unknown = sorted(set(data) - set(SWEEP_KEYS) - {o.name for o in SWEEP_OPTIONS})
    if unknown:
        raise ConfigError(
            explain(
                f"unknown key(s) {unknown} in [sweep]",
                expected="knob + values, grid, points (and max_points)",
                got=", ".join(unknown),
                fix="e.g. knob = 'steps', values = [10, 50]; or [sweep.grid] gamma = [...]",
            )
        )
    (limit,) = SWEEP_OPTIONS
    max_points = limit.check(data.get("max_points", limit.default), "[sweep]")
    sources: list[Iterable[Point]] = []
    declared = 0
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
        values = _values(data["knob"], data["values"], "[sweep]")
        sources.append([{data["knob"]: v} for v in values])
        declared += len(values)
    if "grid" in data:
        grids = data["grid"] if isinstance(data["grid"], list) else [data["grid"]]
        if not grids:
            raise ConfigError(
                explain("[sweep] grid is empty", expected="at least one grid", got="[]", fix="add knob = [values]")
            )
        for i, grid in enumerate(grids):
            count, points = _grid(grid, "[sweep.grid]" if len(grids) == 1 else f"[[sweep.grid]] #{i + 1}")
            sources.append(points)
            declared += count
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
        sources.append(
            [{k: _numeric(k, v, f"[sweep] point #{i + 1}") for k, v in point.items()} for i, point in enumerate(listed)]
        )
        declared += len(listed)
    if not declared:
        raise ConfigError(
            explain(
                "[sweep] has no points",
                expected="knob + values, a grid or points",
                got="an empty [sweep] table",
                fix="add one, or remove [sweep]",
            )
        )
    unique: dict[str, Point] = {}
    for p in itertools.chain.from_iterable(sources):  # lazily: a huge grid is refused without being expanded
        unique.setdefault(point_key(p), p)
        if len(unique) > max_points:
            raise _too_many(declared, max_points, n)
    knobs = tuple(dict.fromkeys(k for p in unique.values() for k in p))
    table = {k: v for k, v in data.items() if k != "max_points"}
    return SweepSpec(tuple(unique.values()), knobs, declared=table, max_points=max_points)


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

"""Sweep points: a point is a dict ``knob -> value``; how rows carry it (the ``point`` column) and read it back.

Low in the tree because the report, its plots and the gate all match and print points
(:mod:`diffeval.run.sweeps` parses ``[sweep]`` tables into points).

Example::

    >>> point_text({"gamma": 1.0, "delta": 0.5})
    'gamma=1, delta=0.5'
    >>> point_key('{"steps": 8}') == point_key({"steps": 8.0})
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["point_text", "point_json", "point_key", "parse_point", "sweep_table", "varying_knobs"]


def point_text(point: Mapping[str, float]) -> str:
    """``gamma=1, delta=0.5`` (the knob order of the point)."""
    return ", ".join(f"{k}={v:g}" for k, v in point.items())


def point_json(point: Mapping[str, float] | None) -> str:
    """The ``point`` column of a report row: JSON in the point's knob order ("" for no sweep)."""
    return json.dumps(dict(point)) if point else ""


def point_key(point: Mapping[str, float] | str) -> str:
    """An order-free key of a point (or of its ``point`` column text): what matches two runs' rows."""
    values = parse_point(point) if isinstance(point, str) else dict(point)
    return json.dumps({k: float(v) for k, v in values.items()}, sort_keys=True)  # 8 and 8.0 are one point


def parse_point(text: str) -> dict[str, float]:
    """The inverse of :func:`point_json` ({} for "")."""
    return json.loads(text) if text else {}


def sweep_table(frame: Any, kind: str = "metric") -> Any:
    """The swept rows of a report frame with one column per knob (for pivots: FID over gamma x delta)."""
    swept = frame[(frame["point"] != "") & (frame["kind"] == kind)].copy()
    points = [parse_point(p) for p in swept["point"]]
    knobs = list(dict.fromkeys(k for p in points for k in p))
    for knob in knobs:
        swept[knob] = [p.get(knob, math.nan) for p in points]
    return swept


def varying_knobs(points: Sequence[Mapping[str, float]]) -> list[str]:
    """Knobs taking more than one value over ``points``, most values first (ties: first-seen order)."""
    seen: dict[str, set[float]] = {}
    for p in points:
        for k, v in p.items():
            seen.setdefault(k, set()).add(v)
    order = list(seen)
    return sorted((k for k in order if len(seen[k]) > 1), key=lambda k: (-len(seen[k]), order.index(k)))

"""Gate rules: the TOML tables (absolute, relative, checks, noise, compare) parsed into small objects.

See :mod:`diffeval.gate` for the rule language; every unknown table, key or malformed rule is an error."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffeval.core.errors import ConfigError, explain
from diffeval.core.toml import read_toml

__all__ = ["Bound", "Change", "GateRules", "parse_rules", "load_rules", "check_k"]

_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?\d+(\.\d*)?([eE][-+]?\d+)?)\s*$")
_CHANGE = re.compile(r"^\s*([-+])\s*(\d+(\.\d*)?([eE][-+]?\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return {"<=": value <= self.limit, "<": value < self.limit, ">=": value >= self.limit, ">": value > self.limit}[
            self.op
        ]


@dataclass(frozen=True)
class Change:
    metric: str
    direction: int | None  # +1: increases are regressions, -1: decreases; None: the row's own direction (default rules)
    amount: float
    percent: bool

    def allowance(self, baseline: float) -> float:
        return abs(baseline) * self.amount / 100 if self.percent else self.amount

    def text(self, direction: int | None = None) -> str:
        d = self.direction if self.direction is not None else direction
        return f"{'+' if (d or 1) > 0 else '-'}{self.amount:g}{'%' if self.percent else ''}"


@dataclass(frozen=True)
class GateRules:
    absolute: list[Bound] = field(default_factory=list)
    relative: list[Change] = field(default_factory=list)
    must_pass: list[str] | str = field(default_factory=list)
    k: float = 2.0
    default: bool = False
    paired: bool = False
    different_n: str = "refuse"  # or "infinity"


def _parse_bound(metric: str, text: Any) -> Bound:
    match = _BOUND.match(str(text))
    if not match:
        raise ConfigError(
            explain(
                f"bad absolute rule for {metric!r}",
                expected="'<= 12', '>= 25', '< 0.1' or '> 3'",
                got=repr(text),
                fix="write an operator and a number",
            )
        )
    return Bound(metric, match.group(1), _finite(float(match.group(2)), f"absolute rule for {metric!r}", text))


def _parse_change(metric: str, text: Any) -> Change:
    match = _CHANGE.match(str(text))
    if not match:
        raise ConfigError(
            explain(
                f"bad relative rule for {metric!r}",
                expected="'+2%', '-1%' or '+0.5' (sign = the bad direction)",
                got=repr(text),
                fix="write a sign, a number and optionally %",
            )
        )
    direction = +1 if match.group(1) == "+" else -1
    amount = _finite(float(match.group(2)), f"relative rule for {metric!r}", text)
    return Change(metric, direction, amount, match.group(5) == "%")


def _finite(number: float, where: str, text: Any) -> float:
    """A rule's number, finite: ``1e400`` reads as inf, a limit no value can break (a gate that never fails)."""
    if not math.isfinite(number):
        raise ConfigError(
            explain(
                f"bad {where}: its number is not finite",
                expected="a finite number (at most about 1.8e308)",
                got=f"{text!r}, which reads as {number}",
                fix="write the limit you mean; a rule that can never fail gates nothing",
            )
        )
    return number


def _rules_table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``[name]`` table of a rules mapping ({} when absent); anything but a table is an error."""
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(
            explain(
                f"[{name}] in gate rules is not a table",
                expected=f"a [{name}] table of key = value lines",
                got=f"{name} = {value!r}",
                fix=f"write it as a [{name}] section",
            )
        )
    return dict(value)


def check_k(k: Any, where: str) -> float:
    """A noise multiplier: a finite number >= 0 (NaN or inf would switch the noise test off)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k < 0:
        raise ConfigError(explain(f"bad {where}", expected="a finite number >= 0", got=repr(k), fix="use k = 2.0"))
    return float(k)


def parse_rules(data: Mapping[str, Any]) -> GateRules:
    """Validate a rules mapping (as read from TOML)."""
    unknown = sorted(set(data) - {"absolute", "relative", "checks", "noise", "compare"})
    if unknown:
        raise ConfigError(
            explain(
                f"unknown table(s) {unknown} in gate rules",
                expected="absolute, relative, checks, noise, compare",
                got=", ".join(unknown),
                fix="correct the table names",
            )
        )
    checks = _rules_table(data, "checks")
    if set(checks) - {"must_pass"}:
        raise ConfigError(
            explain(
                "unknown key in [checks]",
                expected="must_pass",
                got=", ".join(sorted(set(checks) - {"must_pass"})),
                fix="use must_pass = [...] or 'all'",
            )
        )
    must_pass = checks.get("must_pass", [])
    if not (must_pass == "all" or (isinstance(must_pass, list) and all(isinstance(x, str) for x in must_pass))):
        raise ConfigError(
            explain(
                "bad [checks] must_pass",
                expected="a list of check names or 'all'",
                got=repr(must_pass),
                fix="e.g. must_pass = ['terminal_snr']",
            )
        )
    noise = _rules_table(data, "noise")
    if set(noise) - {"k", "paired"}:
        raise ConfigError(
            explain(
                "unknown key in [noise]",
                expected="k, paired",
                got=", ".join(sorted(set(noise) - {"k", "paired"})),
                fix="use k = 2.0 and/or paired = true",
            )
        )
    k = check_k(noise.get("k", 2.0), "[noise] k")
    paired = noise.get("paired", False)
    if not isinstance(paired, bool):
        raise ConfigError(
            explain("bad [noise] paired", expected="true or false", got=repr(paired), fix="use paired = true")
        )
    compare = _rules_table(data, "compare")
    if set(compare) - {"different_n"}:
        raise ConfigError(
            explain(
                "unknown key in [compare]",
                expected="different_n",
                got=", ".join(sorted(set(compare) - {"different_n"})),
                fix='use different_n = "refuse" or "infinity"',
            )
        )
    different_n = compare.get("different_n", "refuse")
    if different_n not in ("refuse", "infinity"):
        raise ConfigError(
            explain(
                "bad [compare] different_n",
                expected='"refuse" (the default) or "infinity" (compare FID rows by FID∞)',
                got=repr(different_n),
                fix='use different_n = "infinity"',
            )
        )
    if paired and different_n == "infinity":
        raise ConfigError(
            explain(
                'gate rules ask for paired comparisons and different_n = "infinity"',
                expected="one of them: FID∞ rows at different N cannot be paired (their seeds differ)",
                got='[noise] paired = true with [compare] different_n = "infinity"',
                fix="drop paired = true, or compare at the same N",
            )
        )
    return GateRules(
        absolute=[_parse_bound(m, t) for m, t in _rules_table(data, "absolute").items()],
        relative=[_parse_change(m, t) for m, t in _rules_table(data, "relative").items()],
        must_pass=must_pass,
        k=k,
        paired=paired,
        different_n=different_n,
        default=not any(table in data for table in ("absolute", "relative", "checks")),  # only [noise]/[compare]
    )


def load_rules(path: str | Path | None) -> GateRules:
    """Rules from a TOML file, or the defaults (no metric worse, no new check failure) when None."""
    if path is None:
        return GateRules(default=True)
    return parse_rules(read_toml(path, "gate rules"))

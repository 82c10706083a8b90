"""``diffeval gate``: compare a candidate report with a baseline under rules; exit 0 pass, 1 regression, 2 error.

Rules (TOML; every table optional, unknown keys are errors)::

    [absolute]            # bounds on the candidate
    fid = "<= 12"
    clip_score = ">= 25"

    [relative]            # allowed change from the baseline, in the metric's bad direction
    fid = "+2%"           # FID may rise by at most 2 %
    clip_score = "-1%"    # CLIP score may fall by at most 1 %
    step_latency_ms = "+0.5"   # an absolute allowance (no %)

    [checks]
    must_pass = ["terminal_snr", "xT_mean"]   # or "all"

    [noise]
    k = 2.0               # a change must also exceed k standard errors of the difference (z > k)
    paired = false        # true: every relative verdict must be paired (same seeds and reference), else error

    [compare]
    different_n = "refuse"   # or "infinity": FID rows at different N are compared by FID∞ (unpaired)

A rule's key is a metric name (``fid``: every FID row, e.g. one per feature extractor)
or a row label (``fid@inception-v3:2048``: that row only). Which way is worse is read
from each row's own ``direction`` (declared by its metric); a rule whose sign contradicts
it, and a gated row with no direction, are errors — the gate fails closed.

The noise of a relative verdict is the standard error of ``candidate - baseline``:
*paired* when both rows carry pairing records on the same seeds, reference and blocks
(the per-block leave-one-out differences, so the noise the runs share cancels), else
*unpaired* ``sqrt(se_b^2 + se_c^2)``, else none (the bare change decides). Every verdict
shows baseline, candidate, difference, its standard error, ``z = worse / SE`` and the mode.

Without rules (or with only ``[noise]``/``[compare]``): every metric row of the baseline
is held to "no worse" (0 %, noise-aware with k = 2) and no check may newly fail. Rows are
matched by label and sweep point; a missing metric, a different sample count or feature space between the runs,
an unreadable file or a failed run are errors (exit 2) — never a pass. Runs on
different world sizes are compared on quality metrics, never on latency rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pandas as pd

from diffeval.core.errors import ConfigError, DiffevalError, ExitCode, InputError, explain
from diffeval.report.report import Report, writable_file
from diffeval.run.config import read_toml
from diffeval.run.sweeps import parse_point, point_key, point_text
from diffeval.stats.uncertainty import paired_se, pairing_problem

__all__ = [
    "GateRules",
    "Verdict",
    "parse_rules",
    "load_rules",
    "run_gate",
    "evaluate_gate",
    "EXIT_PASS",
    "EXIT_REGRESSION",
    "EXIT_ERROR",
]

EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR = int(ExitCode.OK), int(ExitCode.FAILED), int(ExitCode.ERROR)
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


@dataclass(frozen=True)
class Verdict:
    rule: str
    metric: str
    baseline: float
    candidate: float
    limit: str
    status: str  # pass | regression
    note: str = ""
    difference: float = math.nan  # candidate - baseline
    stderr: float = math.nan  # standard error of the difference
    z: float = math.nan  # (change in the bad direction) / stderr
    mode: str = ""  # paired | unpaired | none ("" for absolute bounds and checks)


@dataclass(frozen=True)
class Noise:
    """The standard error of ``candidate - baseline`` and how it was obtained."""

    mode: str  # paired | unpaired | none
    stderr: float
    why: str = ""  # why not paired


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
    return Bound(metric, match.group(1), float(match.group(2)))


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
    return Change(metric, direction, float(match.group(2)), match.group(5) == "%")


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


def _rows(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Metric and latency rows whose label or name is ``key`` (every one of them: none goes ungated)."""
    gated = frame[frame["kind"].isin(["metric", "latency"])]
    return gated[(gated["label"] == key) | (gated["name"] == key)]


def _by_key(rows: pd.DataFrame, side: str) -> dict[tuple[str, str], Any]:
    """Rows by (label, point); two rows for one key is an error (which one would be gated?)."""
    out: dict[tuple[str, str], Any] = {}
    for _, row in rows.iterrows():
        if _key(row) in out:
            raise InputError(
                explain(
                    f"two rows for {_where(row)} in the {side}",
                    expected="one row per metric label and sweep point",
                    got="a duplicate (a report merged or edited by hand?)",
                    fix=f"regenerate the {side} report",
                )
            )
        out[_key(row)] = row
    return out


def _number(row: Any, value: Any, what: str, side: str) -> float:
    """A row's value as a finite float; NaN, inf or nothing is an error, never a silent pass."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InputError(
            explain(
                f"{_where(row)}: the {side}'s {what} is not a finite number",
                expected="a finite value to compare",
                got=repr(value),
                fix="re-run that evaluation and look at the row's status and details",
            )
        )
    return number


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _key(row: Any) -> tuple[str, str]:
    return (row["label"], point_key(row["point"]))


def _at(row: Any) -> str:
    return "" if not row["point"] else f" @ {point_text(parse_point(row['point']))}"


def _where(row: Any) -> str:
    return row["label"] + _at(row)


def _direction(row: Any) -> int:
    """+1 when increases are worse (lower is better), -1 when decreases are; an undirected row is an error."""
    if row["direction"] == "lower":
        return +1
    if row["direction"] == "higher":
        return -1
    raise InputError(
        explain(
            f"row {row['label']!r} carries no direction",
            expected="'lower' or 'higher' (is better), declared by its metric",
            got=repr(row["direction"]),
            fix=(
                "declare direction on the metric class (or the row), so the gate knows which way is worse; the gate"
                " never guesses"
            ),
        )
    )


def _details(row: Any) -> dict[str, Any]:
    raw = row["details"]
    if isinstance(raw, dict):
        return raw
    try:
        out = json.loads(raw) if isinstance(raw, str) and raw else {}
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _by_infinity(b: Any, c: Any, col: str, different_n: str) -> bool:
    """Whether rows at different N may be compared by FID∞ (``[compare] different_n = "infinity"``)."""
    if col != "n_gen" or different_n != "infinity":
        return False
    missing = [side for side, row in (("baseline", b), ("candidate", c)) if "fid_infinity" not in _details(row)]
    if missing:
        raise InputError(
            explain(
                f"{_where(b)}: the runs have different N and the {' and '.join(missing)} row has no FID∞",
                expected="rows with fid_infinity in their details (FID with blocks >= 4 and extrapolate = true)",
                got=f"n_gen {b['n_gen']} vs {c['n_gen']}",
                fix="re-run with the same N, or with FID's extrapolate option on",
            )
        )
    return True


def _pairs(
    base: pd.DataFrame, cand: pd.DataFrame, key: str, sizes: tuple[int, int], different_n: str = "refuse"
) -> list[tuple[Any, Any, bool]]:
    """Matched (baseline, candidate, compare-by-FID∞) rows for a rule key; anything that does not match is an error."""
    b_rows, c_rows = _rows(base, key), _rows(cand, key)
    if b_rows.empty:
        raise InputError(
            explain(
                f"metric {key!r} is missing from the baseline",
                expected=f"a row named or labelled {key!r}",
                got=f"labels {sorted(set(base['label']))}",
                fix="gate on metrics both runs computed",
            )
        )
    if c_rows.empty:
        raise InputError(
            explain(
                f"metric {key!r} is missing from the candidate",
                expected=f"a row named or labelled {key!r}",
                got=f"labels {sorted(set(cand['label']))}",
                fix="run the candidate with the same config as the baseline",
            )
        )
    cand_by_key = _by_key(c_rows, "candidate")
    pairs = []
    for b in _by_key(b_rows, "baseline").values():
        if b["kind"] == "latency" and sizes[0] != sizes[1]:
            raise InputError(
                explain(
                    f"{_where(b)} is a latency row and the runs used different world sizes",
                    expected=f"the baseline's world size {sizes[0]}",
                    got=f"world size {sizes[1]}",
                    fix=(
                        "re-run the candidate on as many ranks as the baseline: throughput and latency are"
                        " per-deployment figures; quality metrics may still be gated"
                    ),
                )
            )
        c = cand_by_key.get(_key(b))
        if c is None:
            raise InputError(
                explain(
                    f"{_where(b)} is missing from the candidate",
                    expected="the same metrics and sweep values",
                    got="no such row",
                    fix="use the same config (metrics, extractors, sweep) in both runs",
                )
            )
        infinity = False
        for col in ("n_gen", "n_ref", "extractor", "direction", "unit"):
            bv, cv = b[col], c[col]
            same = (pd.isna(bv) and pd.isna(cv)) or (not pd.isna(bv) and not pd.isna(cv) and bv == cv)
            if not same and _by_infinity(b, c, col, different_n):
                infinity = True
            elif not same:
                raise InputError(
                    explain(
                        f"{_where(b)}: {col} differs between the runs",
                        expected=f"{col} = {bv} (baseline)",
                        got=f"{col} = {cv} (candidate)",
                        fix=(
                            "compare runs made with the same sample count, reference and feature extractor"
                            + ('; for FID at different N, [compare] different_n = "infinity"' if col == "n_gen" else "")
                        ),
                    )
                )
        pairs.append((b, c, infinity))
    return pairs


def _noise(b: Any, c: Any, infinity: bool, rules: GateRules) -> Noise:
    """Paired when both rows' seed blocks pair, else unpaired, else none; ``[noise] paired`` makes unpaired an error."""
    bd, cd = _details(b), _details(c)
    if infinity:
        problem = "FID∞ rows at different N are compared unpaired"
        se_b, se_c = _float_or_nan(bd.get("fid_infinity_stderr")), _float_or_nan(cd.get("fid_infinity_stderr"))
    else:
        problem = pairing_problem(bd.get("pairing"), cd.get("pairing"))
        se_b, se_c = _float_or_nan(b["stderr"]), _float_or_nan(c["stderr"])
    if problem is None:
        se = paired_se(bd["pairing"], cd["pairing"])
        if math.isfinite(se):
            return Noise("paired", se)
        problem = "the paired standard error is not finite"
    if rules.paired:
        raise InputError(
            explain(
                f"{_where(b)}: [noise] paired = true, but the runs cannot be paired",
                expected="both rows with seed blocks on the same seeds and reference",
                got=problem,
                fix=(
                    "run baseline and candidate on the same seeds (config seed and n), reference and metric options,"
                    " or drop paired = true to allow the unpaired test"
                ),
            )
        )
    if math.isfinite(se_b) and math.isfinite(se_c):
        return Noise("unpaired", math.sqrt(se_b**2 + se_c**2), problem)
    return Noise("none", math.nan, problem + "; a row has no standard error")


def _relative_verdicts(
    change: Change, base: pd.DataFrame, cand: pd.DataFrame, rules: GateRules, sizes: tuple[int, int]
) -> list[Verdict]:
    verdicts = []
    for b, c, infinity in _pairs(base, cand, change.metric, sizes, rules.different_n):
        direction = _direction(b)
        if change.direction is not None and change.direction != direction:
            good = "+" if direction > 0 else "-"
            raise ConfigError(
                explain(
                    f"relative rule {change.metric} = {change.text()!r} points the wrong way for {b['label']}",
                    expected=(
                        f"'{good}...' ({b['name']} gets worse {'upward' if direction > 0 else 'downward'}:"
                        f" {b['direction']} is better)"
                    ),
                    got=repr(change.text()),
                    fix=f'write {change.metric} = "{good}{change.amount:g}{"%" if change.percent else ""}"',
                )
            )
        if infinity:
            bv = _number(b, _details(b).get("fid_infinity"), "FID∞", "baseline")
            cv = _number(c, _details(c).get("fid_infinity"), "FID∞", "candidate")
        else:
            bv, cv = _number(b, b["value"], "value", "baseline"), _number(c, c["value"], "value", "candidate")
        noise = _noise(b, c, infinity, rules)
        worse = (cv - bv) * direction + 0.0  # no "-0"
        allowance = change.allowance(bv)
        if noise.mode == "none":
            z = math.nan
        elif noise.stderr > 0:
            z = worse / noise.stderr
        else:  # identical blocks on both sides: no noise at all
            z = 0.0 if worse == 0 else math.copysign(math.inf, worse)
        regression = worse > allowance and (noise.mode == "none" or z > rules.k)
        note = f"worse by {worse:.4g} (allowed {allowance:.4g}" + (
            f"; z = {z:.2f} vs k = {rules.k:g})" if noise.mode != "none" else "; no standard error)"
        )
        if infinity:
            note = f"FID∞ (N {b['n_gen']} vs {c['n_gen']}); " + note
        if noise.why and noise.mode != "paired":
            note += f"; not paired: {noise.why}"
        rule = change.text(direction)
        verdicts.append(
            Verdict(
                f"relative {rule}",
                _where(b),
                bv,
                cv,
                rule + (f", z <= {rules.k:g}" if noise.mode != "none" else ""),
                "regression" if regression else "pass",
                note,
                difference=cv - bv,
                stderr=noise.stderr,
                z=z,
                mode=noise.mode,
            )
        )
    return verdicts


def _absolute_verdicts(bound: Bound, base: pd.DataFrame, cand: pd.DataFrame, sizes: tuple[int, int]) -> list[Verdict]:
    rows = _rows(cand, bound.metric)
    if rows.empty:
        raise InputError(
            explain(
                f"metric {bound.metric!r} is missing from the candidate",
                expected=f"a row named or labelled {bound.metric!r}",
                got=f"labels {sorted(set(cand['label']))}",
                fix="gate on a metric the run computed",
            )
        )
    base_by_key = _by_key(_rows(base, bound.metric), "baseline")
    out = []
    for c in _by_key(rows, "candidate").values():
        if c["kind"] == "latency" and sizes[0] != sizes[1]:
            raise InputError(
                explain(
                    f"{_where(c)} is a latency row and the runs used different world sizes",
                    expected=f"world size {sizes[0]}",
                    got=f"{sizes[1]}",
                    fix="bound latency only between runs on the same number of ranks",
                )
            )
        b = base_by_key.get(_key(c))
        bv = _float_or_nan(b["value"]) if b is not None else math.nan
        cv = _number(c, c["value"], "value", "candidate")
        out.append(
            Verdict(
                f"absolute {bound.op} {bound.limit:g}",
                _where(c),
                bv,
                cv,
                f"{bound.op} {bound.limit:g}",
                "pass" if bound.holds(cv) else "regression",
            )
        )
    return out


ALWAYS_CHECKED = ("output_range",)  # checks no candidate may fail, whatever the rules say


def _check_where(row: Any) -> str:
    return row["name"] + _at(row)


def _check_verdicts(rules: GateRules, base: pd.DataFrame, cand: pd.DataFrame) -> list[Verdict]:
    c_checks = cand[cand["kind"] == "check"]
    b_checks = base[base["kind"] == "check"]
    b_status = {(r["name"], point_key(r["point"])): r["status"] for _, r in b_checks.iterrows()}
    names = list(dict.fromkeys(c_checks["name"])) if rules.must_pass == "all" else list(rules.must_pass)
    out = []
    for name in names:
        rows = c_checks[c_checks["name"] == name]
        if rows.empty:
            raise InputError(
                explain(
                    f"check {name!r} is missing from the candidate",
                    expected=f"a check row {name!r}",
                    got=f"checks {sorted(set(c_checks['name']))}",
                    fix="run the check in the candidate run",
                )
            )
        for _, row in rows.iterrows():
            where = _check_where(row)
            status = row["status"]
            note = f"status {status} (baseline {b_status.get((row['name'], point_key(row['point'])), '-')})"
            verdict = "pass" if status == "pass" else "regression"
            out.append(Verdict("check must pass", where, math.nan, float(row["value"]), "pass", verdict, note))
    for _, row in c_checks[c_checks["name"].isin(ALWAYS_CHECKED) & ~c_checks["name"].isin(names)].iterrows():
        where = _check_where(row)
        verdict = "regression" if row["status"] == "fail" else "pass"
        note = f"status {row['status']}: " + str(_details(row).get("message", ""))[:160]
        out.append(Verdict("must not fail (always)", where, math.nan, float(row["value"]), "not fail", verdict, note))
    if rules.default:
        for _, row in c_checks[~c_checks["name"].isin(ALWAYS_CHECKED)].iterrows():
            where = _check_where(row)
            before = b_status.get((row["name"], point_key(row["point"])))
            if row["status"] == "fail" and before != "fail":
                note = f"baseline {before or 'absent'} -> fail"
                out.append(
                    Verdict(
                        "no new check failure", where, math.nan, float(row["value"]), "not fail", "regression", note
                    )
                )
    return out


def _defaults(base: pd.DataFrame) -> list[Change]:
    metric_rows = base[base["kind"] == "metric"]
    undirected = sorted(set(metric_rows[~metric_rows["direction"].isin(["lower", "higher"])]["label"]))
    if undirected:
        raise InputError(
            explain(
                f"the default gate cannot direct metric row(s) {undirected}",
                expected="every metric row with a direction ('lower' or 'higher' is better)",
                got="rows without one",
                fix=(
                    "declare direction on those metrics (every registered metric has one), or gate them with explicit"
                    " rules"
                ),
            )
        )
    return [Change(label, None, 0.0, True) for label in sorted(set(metric_rows["label"]))]


def evaluate_gate(baseline: Report, candidate: Report, rules: GateRules) -> list[Verdict]:
    """All verdicts; raises :class:`InputError` for anything that makes the comparison invalid."""
    sizes = (int(baseline.provenance.get("world_size", 1)), int(candidate.provenance.get("world_size", 1)))
    base, cand = baseline.to_frame(), candidate.to_frame()
    for label, frame in (("baseline", base), ("candidate", cand)):
        failed = frame[frame["name"].isin(["run_error", "run_interrupted"])]
        if not failed.empty:
            raise InputError(
                explain(
                    f"the {label} run did not finish",
                    expected="a complete run",
                    got=f"{failed['name'].iloc[0]}: {failed['details'].iloc[0]}",
                    fix=f"re-run the {label}",
                )
            )
    verdicts: list[Verdict] = []
    for change in rules.relative + (_defaults(base) if rules.default else []):
        verdicts += _relative_verdicts(change, base, cand, rules, sizes)
    for bound in rules.absolute:
        verdicts += _absolute_verdicts(bound, base, cand, sizes)
    verdicts += _check_verdicts(rules, base, cand)
    return verdicts


def _num(x: float, fmt: str = ".6g") -> str:
    return "" if math.isnan(x) else format(x, fmt)


def _cells(v: Verdict) -> tuple[str, ...]:
    """rule, metric, baseline, candidate, difference, SE, z, mode, limit, verdict — one verdict as text."""
    return (
        v.rule,
        v.metric,
        _num(v.baseline),
        _num(v.candidate),
        _num(v.difference, "+.4g"),
        _num(v.stderr, ".3g"),
        _num(v.z, "+.2f"),
        v.mode,
        v.limit,
        v.status.upper(),
    )


_HEADER = ("rule", "metric", "baseline", "candidate", "difference", "SE", "z", "mode", "limit", "verdict")


def _table(verdicts: list[Verdict]) -> str:
    rows = [(*_HEADER, "note")] + [(*_cells(v), v.note) for v in verdicts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _markdown(verdicts: list[Verdict], status: str) -> str:
    lines = [
        f"## diffeval gate: {status}",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    for v in verdicts:
        cells = list(_cells(v))
        cells[-1] = f"{'✅' if v.status == 'pass' else '❌'} {v.status}"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [f"- {v.metric}: {v.note}" for v in verdicts if v.status != "pass" and v.note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _junit(verdicts: list[Verdict], error: str | None) -> str:
    failures = sum(v.status != "pass" for v in verdicts)
    cases = []
    for v in verdicts:
        cells = dict(zip(_HEADER, _cells(v), strict=True))
        summary = ", ".join(f"{k} {cells[k]}" for k in _HEADER[2:9] if cells[k]) + (f"; {v.note}" if v.note else "")
        body = f"<system-out>{escape(summary)}</system-out>"
        if v.status != "pass":
            message = escape(v.note or v.status, {'"': "&quot;"})
            body = f'<failure message="{message}">{escape(f"{v.metric}: {summary}")}</failure>' + body
        cases.append(
            '  <testcase classname="diffeval.gate"'
            f' name="{escape(f"{v.rule}: {v.metric}", {chr(34): "&quot;"})}">{body}</testcase>'
        )
    if error is not None:
        cases.append(
            '  <testcase classname="diffeval.gate" name="gate"><error'
            f' message="{escape(error, {chr(34): "&quot;"})}"/></testcase>'
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="diffeval gate" tests="{len(cases)}"'
        f' failures="{failures}" errors="{int(error is not None)}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )


def run_gate(
    baseline: str | Path,
    candidate: str | Path,
    rules_path: str | Path | None = None,
    junit: str | Path | None = None,
    k: float | None = None,
) -> int:
    """Compare and print; returns the exit code (0 pass, 1 regression, 2 error). Never raises.

    The outputs (``junit``, ``$GITHUB_STEP_SUMMARY``) are checked for writability first: a gate that
    cannot record its verdict is an error (2), never a pass or a regression.
    """
    verdicts: list[Verdict] = []
    errors: list[str] = []
    summary = os.environ.get("GITHUB_STEP_SUMMARY") or None
    outputs = {"--junit": junit, "$GITHUB_STEP_SUMMARY": summary}
    writable = {}
    for option, path in outputs.items():
        if path is None:
            continue
        try:
            writable[option] = writable_file(path, option)
        except InputError as exc:
            errors.append(str(exc))
    code = EXIT_ERROR
    if not errors:
        try:
            rules = load_rules(rules_path)
            if k is not None:
                rules = dataclasses.replace(rules, k=check_k(k, "--k"))
            verdicts = evaluate_gate(Report.load(baseline), Report.load(candidate), rules)
            if not verdicts:
                raise ConfigError(
                    explain(
                        "the gate has nothing to compare",
                        expected="at least one rule that applies",
                        got="no rules matched any row",
                        fix="add rules, or compare reports that contain metrics",
                    )
                )
            code = EXIT_REGRESSION if any(v.status != "pass" for v in verdicts) else EXIT_PASS
        except DiffevalError as exc:
            errors.append(str(exc))
        except Exception as exc:  # anything unexpected is an error (2), never a pass or a regression
            errors.append(f"unexpected error: {type(exc).__name__}: {exc}")
    error = "; ".join(errors) or None
    status = {EXIT_PASS: "pass", EXIT_REGRESSION: "REGRESSION", EXIT_ERROR: "ERROR"}[code]
    if verdicts:
        print(_table(verdicts))
    if error is not None:
        print(f"diffeval gate: error: {error}", file=sys.stderr)
    print(f"gate: {status}", file=sys.stderr)
    try:
        if "$GITHUB_STEP_SUMMARY" in writable:
            with open(writable["$GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as handle:
                handle.write(_markdown(verdicts, status) + (f"\n**Error:** {error}\n" if error else ""))
        if "--junit" in writable:
            writable["--junit"].write_text(_junit(verdicts, error), encoding="utf-8")
    except OSError as exc:
        print(f"diffeval gate: error: could not write the gate's outputs: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code

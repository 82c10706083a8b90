"""The comparison itself, pure: two report frames and the rules in, verdicts out (no files, no printing).

Rows are matched by label and sweep point; each relative verdict carries its noise (paired, unpaired or none).
Anything that makes the comparison invalid raises :class:`~diffeval.core.errors.InputError` (the gate's exit 2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.points import parse_point, point_key, point_text
from diffeval.gate.rules import Bound, Change, GateRules
from diffeval.report.report import Report
from diffeval.stats.uncertainty import paired_se, pairing_problem

__all__ = ["Verdict", "Noise", "compare", "evaluate_gate", "ALWAYS_CHECKED"]


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
    for se, row, side in ((se_b, b, "baseline"), (se_c, c, "candidate")):
        if se < 0:  # a negative SE would be squared into a plausible noise level
            raise InputError(
                explain(
                    f"{_where(row)}: the {side}'s standard error is negative",
                    expected="a standard error >= 0 (or none)",
                    got=repr(se),
                    fix=f"regenerate the {side} report (a standard error is never negative)",
                )
            )
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


def compare(
    base: pd.DataFrame, cand: pd.DataFrame, rules: GateRules, world_sizes: tuple[int, int] = (1, 1)
) -> list[Verdict]:
    """All verdicts of ``cand`` against ``base`` (report frames); raises :class:`InputError` for anything that makes
    the comparison invalid. ``world_sizes``: the two runs' process counts (latency rows are not compared across them).
    """
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
        verdicts += _relative_verdicts(change, base, cand, rules, world_sizes)
    for bound in rules.absolute:
        verdicts += _absolute_verdicts(bound, base, cand, world_sizes)
    verdicts += _check_verdicts(rules, base, cand)
    return verdicts


def evaluate_gate(baseline: Report, candidate: Report, rules: GateRules) -> list[Verdict]:
    """:func:`compare` on two loaded reports (their frames and world sizes)."""
    sizes = (int(baseline.provenance.get("world_size", 1)), int(candidate.provenance.get("world_size", 1)))
    return compare(baseline.to_frame(), candidate.to_frame(), rules, sizes)

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
    k = 2.0               # with standard errors on both sides, a change must also exceed k * sqrt(se_b^2 + se_c^2)

Without rules: every metric of the baseline is held to "no worse" (0 %, noise-aware with
k = 2) and no check may newly fail. Rows are matched by name and sweep knob value; a
missing metric, a different sample count or feature extractor between the runs, an
unreadable file or a failed run are errors (exit 2) — never a pass.
"""

from __future__ import annotations

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

from diffeval.errors import ConfigError, DiffevalError, InputError, explain
from diffeval.report import Report

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["GateRules", "Verdict", "parse_rules", "load_rules", "run_gate", "DIRECTIONS", "EXIT_PASS", "EXIT_REGRESSION", "EXIT_ERROR"]

EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2
# +1: higher is worse; -1: lower is worse
DIRECTIONS: dict[str, int] = {
    "fid": +1,
    "kid": +1,
    "bpd": +1,
    "inception_score": -1,
    "clip_score": -1,
    "clip_score_hessel": -1,
    "step_latency_ms": +1,
    "throughput": -1,
    "nfe": +1,
}
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?\d+(\.\d*)?([eE][-+]?\d+)?)\s*$")
_CHANGE = re.compile(r"^\s*([-+])\s*(\d+(\.\d*)?([eE][-+]?\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return {"<=": value <= self.limit, "<": value < self.limit, ">=": value >= self.limit, ">": value > self.limit}[self.op]


@dataclass(frozen=True)
class Change:
    metric: str
    direction: int  # +1: increases are regressions
    amount: float
    percent: bool

    def allowance(self, baseline: float) -> float:
        return abs(baseline) * self.amount / 100 if self.percent else self.amount

    def text(self) -> str:
        return f"{'+' if self.direction > 0 else '-'}{self.amount:g}{'%' if self.percent else ''}"


@dataclass(frozen=True)
class GateRules:
    absolute: list[Bound] = field(default_factory=list)
    relative: list[Change] = field(default_factory=list)
    must_pass: list[str] | str = field(default_factory=list)
    k: float = 2.0
    default: bool = False


@dataclass(frozen=True)
class Verdict:
    rule: str
    metric: str
    baseline: float
    candidate: float
    limit: str
    status: str  # pass | regression
    note: str = ""


def _parse_bound(metric: str, text: Any) -> Bound:
    match = _BOUND.match(str(text))
    if not match:
        raise ConfigError(explain(f"bad absolute rule for {metric!r}", expected="'<= 12', '>= 25', '< 0.1' or '> 3'", got=repr(text), fix="write an operator and a number"))
    return Bound(metric, match.group(1), float(match.group(2)))


def _parse_change(metric: str, text: Any) -> Change:
    match = _CHANGE.match(str(text))
    if not match:
        raise ConfigError(explain(f"bad relative rule for {metric!r}", expected="'+2%', '-1%' or '+0.5' (sign = the bad direction)", got=repr(text), fix="write a sign, a number and optionally %"))
    direction = +1 if match.group(1) == "+" else -1
    known = DIRECTIONS.get(metric)
    if known is not None and known != direction:
        good = "+" if known > 0 else "-"
        raise ConfigError(explain(f"relative rule {metric} = {text!r} points the wrong way", expected=f"'{good}...' ({metric} gets worse {'upward' if known > 0 else 'downward'})", got=repr(text), fix=f"write {metric} = \"{good}{match.group(2)}{match.group(5)}\""))
    return Change(metric, direction, float(match.group(2)), match.group(5) == "%")


def parse_rules(data: Mapping[str, Any]) -> GateRules:
    """Validate a rules mapping (as read from TOML)."""
    unknown = sorted(set(data) - {"absolute", "relative", "checks", "noise"})
    if unknown:
        raise ConfigError(explain(f"unknown table(s) {unknown} in gate rules", expected="absolute, relative, checks, noise", got=", ".join(unknown), fix="correct the table names"))
    checks = dict(data.get("checks", {}))
    if set(checks) - {"must_pass"}:
        raise ConfigError(explain("unknown key in [checks]", expected="must_pass", got=", ".join(sorted(set(checks) - {"must_pass"})), fix="use must_pass = [...] or 'all'"))
    must_pass = checks.get("must_pass", [])
    if not (must_pass == "all" or (isinstance(must_pass, list) and all(isinstance(x, str) for x in must_pass))):
        raise ConfigError(explain("bad [checks] must_pass", expected="a list of check names or 'all'", got=repr(must_pass), fix="e.g. must_pass = ['terminal_snr']"))
    noise = dict(data.get("noise", {}))
    if set(noise) - {"k"}:
        raise ConfigError(explain("unknown key in [noise]", expected="k", got=", ".join(sorted(set(noise) - {"k"})), fix="use k = 2.0"))
    k = noise.get("k", 2.0)
    if not isinstance(k, (int, float)) or k < 0:
        raise ConfigError(explain("bad [noise] k", expected="a number >= 0", got=repr(k), fix="use k = 2.0"))
    return GateRules(
        absolute=[_parse_bound(m, t) for m, t in dict(data.get("absolute", {})).items()],
        relative=[_parse_change(m, t) for m, t in dict(data.get("relative", {})).items()],
        must_pass=must_pass,
        k=float(k),
    )


def load_rules(path: str | Path | None) -> GateRules:
    """Rules from a TOML file, or the defaults (no metric worse, no new check failure) when None."""
    if path is None:
        return GateRules(default=True)
    try:
        return parse_rules(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except OSError as error:
        raise ConfigError(explain(f"cannot read rules {path}", expected="a readable TOML file", got=f"{type(error).__name__}: {error}", fix="check the path")) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(explain(f"rules {path} are not valid TOML", expected="TOML", got=str(error), fix="fix the syntax")) from None


def _rows(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    return frame[(frame["name"] == metric) & frame["kind"].isin(["metric", "latency"])]


def _key(row: Any) -> tuple[str, float]:
    return (row["knob"], -math.inf if pd.isna(row["knob_value"]) else float(row["knob_value"]))


def _paired(base: pd.DataFrame, cand: pd.DataFrame, metric: str) -> list[tuple[Any, Any]]:
    b_rows, c_rows = _rows(base, metric), _rows(cand, metric)
    if b_rows.empty:
        raise InputError(explain(f"metric {metric!r} is missing from the baseline", expected=f"a row named {metric!r}", got=f"metrics {sorted(set(base['name']))}", fix="gate on metrics both runs computed"))
    if c_rows.empty:
        raise InputError(explain(f"metric {metric!r} is missing from the candidate", expected=f"a row named {metric!r}", got=f"metrics {sorted(set(cand['name']))}", fix="run the candidate with the same config as the baseline"))
    cand_by_key = {_key(r): r for _, r in c_rows.iterrows()}
    pairs = []
    for _, b in b_rows.iterrows():
        c = cand_by_key.get(_key(b))
        if c is None:
            raise InputError(explain(f"metric {metric!r} at {b['knob'] or 'no sweep'}={b['knob_value']} is missing from the candidate", expected="the same sweep values", got="no such row", fix="use the same sweep in both runs"))
        for col in ("n_gen", "n_ref", "extractor"):
            bv, cv = b[col], c[col]
            same = (pd.isna(bv) and pd.isna(cv)) or (not pd.isna(bv) and not pd.isna(cv) and bv == cv)
            if not same:
                raise InputError(explain(f"{metric!r}: {col} differs between the runs", expected=f"{col} = {bv} (baseline)", got=f"{col} = {cv} (candidate)", fix="compare runs made with the same sample count, reference and feature extractor"))
        pairs.append((b, c))
    return pairs


def _relative_verdicts(change: Change, base: pd.DataFrame, cand: pd.DataFrame, k: float) -> list[Verdict]:
    verdicts = []
    for b, c in _paired(base, cand, change.metric):
        worse = (float(c["value"]) - float(b["value"])) * change.direction
        allowance = change.allowance(float(b["value"]))
        se_b, se_c = float(b["stderr"]), float(c["stderr"])
        noise = k * math.sqrt(se_b**2 + se_c**2) if not (math.isnan(se_b) or math.isnan(se_c)) else 0.0
        regression = worse > allowance and worse > noise
        where = "" if not b["knob"] else f" @ {b['knob']}={b['knob_value']:g}"
        note = f"worse by {worse:.4g} (allowed {allowance:.4g}" + (f", noise {noise:.4g} = {k:g} SE" if noise else "") + ")"
        verdicts.append(Verdict(f"relative {change.text()}", change.metric + where, float(b["value"]), float(c["value"]), change.text(), "regression" if regression else "pass", note))
    return verdicts


def _absolute_verdicts(bound: Bound, base: pd.DataFrame, cand: pd.DataFrame) -> list[Verdict]:
    rows = _rows(cand, bound.metric)
    if rows.empty:
        raise InputError(explain(f"metric {bound.metric!r} is missing from the candidate", expected=f"a row named {bound.metric!r}", got=f"metrics {sorted(set(cand['name']))}", fix="gate on a metric the run computed"))
    out = []
    for _, c in rows.iterrows():
        where = "" if not c["knob"] else f" @ {c['knob']}={c['knob_value']:g}"
        b = _rows(base, bound.metric)
        bv = float(b["value"].iloc[0]) if len(b) == 1 else math.nan
        out.append(Verdict(f"absolute {bound.op} {bound.limit:g}", bound.metric + where, bv, float(c["value"]), f"{bound.op} {bound.limit:g}", "pass" if bound.holds(float(c["value"])) else "regression"))
    return out


def _check_verdicts(rules: GateRules, base: pd.DataFrame, cand: pd.DataFrame) -> list[Verdict]:
    c_checks = cand[cand["kind"] == "check"]
    b_status = dict(zip(base[base["kind"] == "check"]["name"], base[base["kind"] == "check"]["status"], strict=False))
    names = list(c_checks["name"]) if rules.must_pass == "all" else list(rules.must_pass)
    out = []
    for name in names:
        row = c_checks[c_checks["name"] == name]
        if row.empty:
            raise InputError(explain(f"check {name!r} is missing from the candidate", expected=f"a check row {name!r}", got=f"checks {sorted(c_checks['name'])}", fix="run the check in the candidate run"))
        status = row["status"].iloc[0]
        out.append(Verdict("check must pass", name, math.nan, float(row["value"].iloc[0]), "pass", "pass" if status == "pass" else "regression", f"status {status} (baseline {b_status.get(name, '-')})"))
    if rules.default:
        for _, row in c_checks.iterrows():
            before = b_status.get(row["name"])
            if row["status"] == "fail" and before != "fail":
                out.append(Verdict("no new check failure", row["name"], math.nan, float(row["value"]), "not fail", "regression", f"baseline {before or 'absent'} -> fail"))
    return out


def _defaults(base: pd.DataFrame) -> list[Change]:
    names = sorted(set(base[base["kind"] == "metric"]["name"]))
    return [Change(n, DIRECTIONS[n], 0.0, True) for n in names if n in DIRECTIONS]


def evaluate_gate(baseline: Report, candidate: Report, rules: GateRules) -> list[Verdict]:
    """All verdicts; raises :class:`InputError` for anything that makes the comparison invalid."""
    sizes = (int(baseline.provenance.get("world_size", 1)), int(candidate.provenance.get("world_size", 1)))
    if sizes[0] != sizes[1]:
        raise InputError(
            explain(
                "the runs used different world sizes",
                expected=f"the baseline's world size {sizes[0]}",
                got=f"world size {sizes[1]}",
                fix="re-run the candidate on as many ranks as the baseline: throughput and latency are per-deployment figures, and a gate must compare like with like",
            )
        )
    base, cand = baseline.to_frame(), candidate.to_frame()
    for label, frame in (("baseline", base), ("candidate", cand)):
        failed = frame[frame["name"].isin(["run_error", "run_interrupted"])]
        if not failed.empty:
            raise InputError(explain(f"the {label} run did not finish", expected="a complete run", got=f"{failed['name'].iloc[0]}: {failed['details'].iloc[0]}", fix=f"re-run the {label}"))
    verdicts: list[Verdict] = []
    for change in rules.relative + (_defaults(base) if rules.default else []):
        verdicts += _relative_verdicts(change, base, cand, rules.k)
    for bound in rules.absolute:
        verdicts += _absolute_verdicts(bound, base, cand)
    verdicts += _check_verdicts(rules, base, cand)
    return verdicts


def _table(verdicts: list[Verdict]) -> str:
    rows = [("rule", "metric", "baseline", "candidate", "limit", "verdict", "note")] + [
        (v.rule, v.metric, "" if math.isnan(v.baseline) else f"{v.baseline:.6g}", "" if math.isnan(v.candidate) else f"{v.candidate:.6g}", v.limit, v.status.upper(), v.note) for v in verdicts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _markdown(verdicts: list[Verdict], status: str) -> str:
    lines = [f"## diffeval gate: {status}", "", "| rule | metric | baseline | candidate | limit | verdict |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.rule} | {v.metric} | {'' if math.isnan(v.baseline) else f'{v.baseline:.6g}'} | {'' if math.isnan(v.candidate) else f'{v.candidate:.6g}'} | {v.limit} | {'✅' if v.status == 'pass' else '❌'} {v.status} |")
    return "\n".join(lines) + "\n"


def _junit(verdicts: list[Verdict], error: str | None) -> str:
    failures = sum(v.status != "pass" for v in verdicts)
    cases = []
    for v in verdicts:
        body = "" if v.status == "pass" else f'<failure message="{escape(v.note or v.status, {chr(34): "&quot;"})}">{escape(f"{v.metric}: baseline {v.baseline} candidate {v.candidate} limit {v.limit}")}</failure>'
        cases.append(f'  <testcase classname="diffeval.gate" name="{escape(f"{v.rule}: {v.metric}", {chr(34): "&quot;"})}">{body}</testcase>')
    if error is not None:
        cases.append(f'  <testcase classname="diffeval.gate" name="gate"><error message="{escape(error, {chr(34): "&quot;"})}"/></testcase>')
    return f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="diffeval gate" tests="{len(cases)}" failures="{failures}" errors="{int(error is not None)}">\n' + "\n".join(cases) + "\n</testsuite>\n"


def run_gate(baseline: str | Path, candidate: str | Path, rules_path: str | Path | None = None, junit: str | Path | None = None, k: float | None = None) -> int:
    """Compare and print; returns the exit code (0 pass, 1 regression, 2 error). Never raises for bad input."""
    verdicts: list[Verdict] = []
    error: str | None = None
    try:
        rules = load_rules(rules_path)
        if k is not None:
            rules = GateRules(rules.absolute, rules.relative, rules.must_pass, float(k), rules.default)
        verdicts = evaluate_gate(Report.load(baseline), Report.load(candidate), rules)
        code = EXIT_REGRESSION if any(v.status != "pass" for v in verdicts) else EXIT_PASS
        if not verdicts:
            raise ConfigError(explain("the gate has nothing to compare", expected="at least one rule that applies", got="no rules matched any row", fix="add rules, or compare reports that contain metrics"))
    except (DiffevalError, ValueError, KeyError, OSError) as exc:
        error = str(exc)
        code = EXIT_ERROR
    status = {EXIT_PASS: "pass", EXIT_REGRESSION: "REGRESSION", EXIT_ERROR: "ERROR"}[code]
    if verdicts:
        print(_table(verdicts))
    if error is not None:
        print(f"diffeval gate: error: {error}", file=sys.stderr)
    print(f"gate: {status}", file=sys.stderr)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(_markdown(verdicts, status) + (f"\n**Error:** {error}\n" if error else ""))
    if junit is not None:
        Path(junit).write_text(_junit(verdicts, error), encoding="utf-8")
    return code

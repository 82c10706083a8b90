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

A rule's key is a metric name (``fid``: every FID row, e.g. one per feature extractor)
or a row label (``fid@inception-v3:2048``: that row only). Which way is worse is read
from each row's own ``direction`` (declared by its metric); a rule whose sign contradicts
it, and a gated row with no direction, are errors — the gate fails closed.

Without rules: every metric row of the baseline is held to "no worse" (0 %, noise-aware
with k = 2) and no check may newly fail. Rows are matched by label and sweep knob
value; a missing metric, a different sample count or feature space between the runs,
an unreadable file or a failed run are errors (exit 2) — never a pass. Runs on
different world sizes are compared on quality metrics, never on latency rows.
"""

from __future__ import annotations

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

from diffeval.config import read_toml
from diffeval.errors import ConfigError, DiffevalError, ExitCode, InputError, explain
from diffeval.report import Report, writable_file

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


def parse_rules(data: Mapping[str, Any]) -> GateRules:
    """Validate a rules mapping (as read from TOML)."""
    unknown = sorted(set(data) - {"absolute", "relative", "checks", "noise"})
    if unknown:
        raise ConfigError(
            explain(
                f"unknown table(s) {unknown} in gate rules",
                expected="absolute, relative, checks, noise",
                got=", ".join(unknown),
                fix="correct the table names",
            )
        )
    checks = dict(data.get("checks", {}))
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
    noise = dict(data.get("noise", {}))
    if set(noise) - {"k"}:
        raise ConfigError(
            explain(
                "unknown key in [noise]", expected="k", got=", ".join(sorted(set(noise) - {"k"})), fix="use k = 2.0"
            )
        )
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
    return parse_rules(read_toml(path, "gate rules"))


def _rows(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Metric and latency rows whose label or name is ``key``."""
    gated = frame[frame["kind"].isin(["metric", "latency"])]
    by_label = gated[gated["label"] == key]
    return by_label if not by_label.empty else gated[gated["name"] == key]


def _key(row: Any) -> tuple[str, str, float]:
    return (row["label"], row["knob"], -math.inf if pd.isna(row["knob_value"]) else float(row["knob_value"]))


def _where(row: Any) -> str:
    return row["label"] + ("" if not row["knob"] else f" @ {row['knob']}={row['knob_value']:g}")


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


def _pairs(base: pd.DataFrame, cand: pd.DataFrame, key: str, sizes: tuple[int, int]) -> list[tuple[Any, Any]]:
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
    cand_by_key = {_key(r): r for _, r in c_rows.iterrows()}
    pairs = []
    for _, b in b_rows.iterrows():
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
        for col in ("n_gen", "n_ref", "extractor"):
            bv, cv = b[col], c[col]
            same = (pd.isna(bv) and pd.isna(cv)) or (not pd.isna(bv) and not pd.isna(cv) and bv == cv)
            if not same:
                raise InputError(
                    explain(
                        f"{_where(b)}: {col} differs between the runs",
                        expected=f"{col} = {bv} (baseline)",
                        got=f"{col} = {cv} (candidate)",
                        fix="compare runs made with the same sample count, reference and feature extractor",
                    )
                )
        pairs.append((b, c))
    return pairs


def _relative_verdicts(
    change: Change, base: pd.DataFrame, cand: pd.DataFrame, k: float, sizes: tuple[int, int]
) -> list[Verdict]:
    verdicts = []
    for b, c in _pairs(base, cand, change.metric, sizes):
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
        worse = (float(c["value"]) - float(b["value"])) * direction
        allowance = change.allowance(float(b["value"]))
        se_b, se_c = float(b["stderr"]), float(c["stderr"])
        noise = k * math.sqrt(se_b**2 + se_c**2) if not (math.isnan(se_b) or math.isnan(se_c)) else 0.0
        regression = worse > allowance and worse > noise
        note = (
            f"worse by {worse:.4g} (allowed {allowance:.4g}"
            + (f", noise {noise:.4g} = {k:g} SE" if noise else "")
            + ")"
        )
        rule = change.text(direction)
        verdicts.append(
            Verdict(
                f"relative {rule}",
                _where(b),
                float(b["value"]),
                float(c["value"]),
                rule,
                "regression" if regression else "pass",
                note,
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
    base_by_key = {_key(r): r for _, r in _rows(base, bound.metric).iterrows()}
    out = []
    for _, c in rows.iterrows():
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
        bv = float(b["value"]) if b is not None else math.nan
        out.append(
            Verdict(
                f"absolute {bound.op} {bound.limit:g}",
                _where(c),
                bv,
                float(c["value"]),
                f"{bound.op} {bound.limit:g}",
                "pass" if bound.holds(float(c["value"])) else "regression",
            )
        )
    return out


ALWAYS_CHECKED = ("output_range",)  # checks no candidate may fail, whatever the rules say


def _check_where(row: Any) -> str:
    return row["name"] + ("" if not row["knob"] else f" @ {row['knob']}={row['knob_value']:g}")


def _check_verdicts(rules: GateRules, base: pd.DataFrame, cand: pd.DataFrame) -> list[Verdict]:
    c_checks = cand[cand["kind"] == "check"]
    b_checks = base[base["kind"] == "check"]
    b_status = {_check_where(r): r["status"] for _, r in b_checks.iterrows()}
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
            note = f"status {status} (baseline {b_status.get(where, '-')})"
            verdict = "pass" if status == "pass" else "regression"
            out.append(Verdict("check must pass", where, math.nan, float(row["value"]), "pass", verdict, note))
    for _, row in c_checks[c_checks["name"].isin(ALWAYS_CHECKED) & ~c_checks["name"].isin(names)].iterrows():
        where = _check_where(row)
        verdict = "regression" if row["status"] == "fail" else "pass"
        note = f"status {row['status']}: " + str(json.loads(row["details"]).get("message", ""))[:160]
        out.append(Verdict("must not fail (always)", where, math.nan, float(row["value"]), "not fail", verdict, note))
    if rules.default:
        for _, row in c_checks[~c_checks["name"].isin(ALWAYS_CHECKED)].iterrows():
            where = _check_where(row)
            before = b_status.get(where)
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
        verdicts += _relative_verdicts(change, base, cand, rules.k, sizes)
    for bound in rules.absolute:
        verdicts += _absolute_verdicts(bound, base, cand, sizes)
    verdicts += _check_verdicts(rules, base, cand)
    return verdicts


def _table(verdicts: list[Verdict]) -> str:
    rows = [("rule", "metric", "baseline", "candidate", "limit", "verdict", "note")] + [
        (
            v.rule,
            v.metric,
            "" if math.isnan(v.baseline) else f"{v.baseline:.6g}",
            "" if math.isnan(v.candidate) else f"{v.candidate:.6g}",
            v.limit,
            v.status.upper(),
            v.note,
        )
        for v in verdicts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _markdown(verdicts: list[Verdict], status: str) -> str:
    lines = [
        f"## diffeval gate: {status}",
        "",
        "| rule | metric | baseline | candidate | limit | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.rule} | {v.metric} | {'' if math.isnan(v.baseline) else f'{v.baseline:.6g}'} |"
            f" {'' if math.isnan(v.candidate) else f'{v.candidate:.6g}'} | {v.limit} |"
            f" {'✅' if v.status == 'pass' else '❌'} {v.status} |"
        )
    return "\n".join(lines) + "\n"


def _junit(verdicts: list[Verdict], error: str | None) -> str:
    failures = sum(v.status != "pass" for v in verdicts)
    cases = []
    for v in verdicts:
        body = ""
        if v.status != "pass":
            message = escape(v.note or v.status, {'"': "&quot;"})
            text = escape(f"{v.metric}: baseline {v.baseline} candidate {v.candidate} limit {v.limit}")
            body = f'<failure message="{message}">{text}</failure>'

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
                rules = GateRules(rules.absolute, rules.relative, rules.must_pass, float(k), rules.default)
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

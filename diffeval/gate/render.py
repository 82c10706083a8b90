"""Verdicts as text: the terminal table, the Markdown step summary and JUnit XML."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from diffeval.gate.compare import Verdict

__all__ = ["HEADER", "table", "markdown", "junit"]


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


HEADER = ("rule", "metric", "baseline", "candidate", "difference", "SE", "z", "mode", "limit", "verdict")


def table(verdicts: list[Verdict]) -> str:
    rows = [(*HEADER, "note")] + [(*_cells(v), v.note) for v in verdicts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def markdown(verdicts: list[Verdict], status: str) -> str:
    lines = [
        f"## diffeval gate: {status}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for v in verdicts:
        cells = list(_cells(v))
        cells[-1] = f"{'✅' if v.status == 'pass' else '❌'} {v.status}"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [f"- {v.metric}: {v.note}" for v in verdicts if v.status != "pass" and v.note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def junit(verdicts: list[Verdict], error: str | None) -> str:
    failures = sum(v.status != "pass" for v in verdicts)
    cases = []
    for v in verdicts:
        cells = dict(zip(HEADER, _cells(v), strict=True))
        summary = ", ".join(f"{k} {cells[k]}" for k in HEADER[2:9] if cells[k]) + (f"; {v.note}" if v.note else "")
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

"""Verdicts as text: the terminal table, the Markdown step summary and JUnit XML.

Labels, notes and errors come from report files anyone may have written: every format gets them through
:mod:`diffeval.core.text` (control characters escaped for the terminal and XML, Markdown escaped on one line for
the summary), so no label can end the XML, add a heading to the summary or move the terminal's cursor."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from diffeval.core.text import markdown_text, printable
from diffeval.gate.compare import Verdict

__all__ = ["HEADER", "table", "markdown", "junit"]


def _num(x: float, fmt: str = ".6g") -> str:
    return "" if math.isnan(x) else format(x, fmt)


def _cells(v: Verdict) -> tuple[str, ...]:
    """rule, metric, baseline, candidate, difference, SE, z, mode, limit, verdict — one verdict as text (raw: each
    format escapes it)."""
    return (
        str(v.rule),
        str(v.metric),
        _num(v.baseline),
        _num(v.candidate),
        _num(v.difference, "+.4g"),
        _num(v.stderr, ".3g"),
        _num(v.z, "+.2f"),
        str(v.mode),
        str(v.limit),
        str(v.status).upper(),
    )


HEADER = ("rule", "metric", "baseline", "candidate", "difference", "SE", "z", "mode", "limit", "verdict")


def table(verdicts: list[Verdict]) -> str:
    rows = [(*HEADER, "note")] + [tuple(printable(c) for c in (*_cells(v), v.note)) for v in verdicts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def markdown(verdicts: list[Verdict], status: str, error: str | None = None) -> str:
    """The step summary: a heading with the status, one table row per verdict, the failures' notes, the error."""
    lines = [
        f"## diffeval gate: {status}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for v in verdicts:
        cells = [markdown_text(c) for c in _cells(v)]
        cells[-1] = f"{'✅' if v.status == 'pass' else '❌'} {markdown_text(v.status)}"
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {markdown_text(v.metric)}: {markdown_text(v.note)}" for v in verdicts if v.status != "pass" and v.note]
    text = "\n".join(lines + ([""] + notes if notes else [])) + "\n"
    return text + (f"\n**Error:** {markdown_text(error)}\n" if error else "")


def _xml(text: str, attribute: bool = False) -> str:
    """Text as XML 1.0 character data (``attribute``: a double-quoted attribute value): characters XML cannot hold
    written as visible escapes (``\\x01``), then ``& < >`` (and ``"``) escaped."""
    return escape(printable(text, keep="" if attribute else "\t\n"), {'"': "&quot;"} if attribute else {})


def junit(verdicts: list[Verdict], error: str | None) -> str:
    failures = sum(v.status != "pass" for v in verdicts)
    cases = []
    for v in verdicts:
        cells = dict(zip(HEADER, _cells(v), strict=True))
        summary = ", ".join(f"{k} {cells[k]}" for k in HEADER[2:9] if cells[k]) + (f"; {v.note}" if v.note else "")
        body = f"<system-out>{_xml(summary)}</system-out>"
        if v.status != "pass":
            message = _xml(v.note or v.status, attribute=True)
            body = f'<failure message="{message}">{_xml(f"{v.metric}: {summary}")}</failure>' + body
        cases.append(
            f'  <testcase classname="diffeval.gate" name="{_xml(f"{v.rule}: {v.metric}", attribute=True)}">{body}'
            "</testcase>"
        )
    if error is not None:
        cases.append(
            f'  <testcase classname="diffeval.gate" name="gate"><error message="{_xml(error, attribute=True)}"/>'
            "</testcase>"
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="diffeval gate" tests="{len(cases)}"'
        f' failures="{failures}" errors="{int(error is not None)}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )

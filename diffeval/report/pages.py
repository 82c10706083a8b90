"""Report pages a person reads: Markdown and a self-contained HTML page (plots embedded as base64 PNG).

Layout, top to bottom: the run's name; an *incomplete* banner when the run failed or was
interrupted (where, why, and the command that resumes it); a banner when checks failed;
the sampler and its configuration; then one table per kind of row — metrics (value ±
standard error, counts, feature space), checks (verdict, value, threshold, message),
latency, yardsticks — the plots, and the provenance.

Names, labels and messages come from report files anyone may have written: the Markdown page gets each through
:func:`~diffeval.core.text.markdown_text` (one line, Markdown and inline HTML escaped), the HTML page through
:func:`_esc` (control characters escaped, then HTML-escaped), so no name adds a heading, a tag or a script.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from diffeval.core.points import parse_point, point_text
from diffeval.core.text import markdown_code, markdown_text, printable

__all__ = ["to_markdown", "to_html", "incomplete"]

_STOPPED = ("run_error", "run_interrupted")


def _fmt(value: Any, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _details(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(row["details"]) if row.get("details") else {}


def incomplete(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``run_error``/``run_interrupted`` row's details (stage, error, resume command); None when complete."""
    for row in rows:
        if row["name"] in _STOPPED:
            return {"kind": "interrupted" if row["name"] == "run_interrupted" else "failed", **_details(row)}
    return None


def _sections(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    checks = frame[(frame["kind"] == "check") & ~frame["name"].isin(_STOPPED)]
    return {
        "Metrics": frame[frame["kind"] == "metric"],
        "Checks": checks,
        "Latency": frame[frame["kind"] == "latency"],
        "Yardsticks": frame[frame["kind"] == "baseline"],
    }


def _metric_cells(row: Any) -> list[str]:
    value = _fmt(row["value"]) + (f" ± {_fmt(row['stderr'], 3)}" if not math.isnan(row["stderr"]) else "")
    details = _details(row)
    if "fid_infinity" in details:  # FID's bias in N: the extrapolated value beside FID at N
        value += f" (FID∞ {_fmt(details['fid_infinity'])} ± {_fmt(details['fid_infinity_stderr'], 3)})"
    knob = point_text(parse_point(row["point"]))
    return [
        row["label"],
        value,
        row["unit"],
        _fmt(row["n_gen"]),
        _fmt(row["n_ref"]),
        row["extractor"],
        knob,
        row["status"],
    ]


def _check_cells(row: Any) -> list[str]:
    details = _details(row)
    knob = point_text(parse_point(row["point"]))
    return [
        row["status"].upper(),
        row["name"],
        _fmt(row["value"]),
        knob,
        details.get("threshold", ""),
        details.get("message", ""),
    ]


_HEADERS = {
    "Metrics": ["label", "value ± SE", "unit", "n_gen", "n_ref", "feature space", "knob", "status"],
    "Checks": ["verdict", "check", "value", "knob", "threshold", "message"],
    "Latency": ["label", "value ± SE", "unit", "n_gen", "n_ref", "feature space", "knob", "status"],
    "Yardsticks": ["label", "value ± SE", "unit", "n_gen", "n_ref", "feature space", "knob", "status"],
}


def _cells(section: str, row: Any) -> list[str]:
    return _check_cells(row) if section == "Checks" else _metric_cells(row)


def _sampler_lines(report: Any, frame: pd.DataFrame) -> list[str]:
    config = report.provenance.get("config", {}) or {}
    lines = [s for s in dict.fromkeys(frame[frame["kind"].isin(["metric", "latency"])]["sampler"]) if s]
    sampler = config.get("sampler") or {}
    if sampler:
        kwargs = ", ".join(f"{k}={v}" for k, v in (sampler.get("kwargs") or {}).items())
        lines.insert(0, f"factory {sampler.get('factory')}" + (f" ({kwargs})" if kwargs else ""))
    if config.get("n"):
        lines.append(
            f"n = {config.get('n')}, seeds {report.provenance.get('seeds', '')}, batch size {config.get('batch_size')}"
        )
    sweep = config.get("sweep") or {}
    if sweep:
        points = sweep.get("points") or [{sweep.get("knob"): v} for v in sweep.get("values") or []]  # older reports
        knobs = sweep.get("knobs") or list(dict.fromkeys(k for p in points for k in p))
        count = sweep.get("count", len(points))  # reports store the declared sweep and its count, not every point
        lines = lines[:1] + [f"sweep over {', '.join(map(str, knobs))}: {count} points (one row per point)"]
    return lines


def _failed_checks(report: Any) -> list[str]:
    return [
        r["name"] for r in report.rows if r["kind"] == "check" and r["status"] == "fail" and r["name"] not in _STOPPED
    ]


def _title(report: Any) -> str:
    return str(report.provenance.get("run_name") or "diffeval report")


def to_markdown(report: Any) -> str:
    """The report as Markdown: banner, sampler, one table per kind of row, provenance (every name and message
    escaped: :func:`~diffeval.core.text.markdown_text`)."""
    md = markdown_text
    frame = report.to_frame()
    lines = [f"# {md(_title(report))}", "", f"diffeval report {markdown_code(report.run_id)}", ""]
    stopped = incomplete(report.rows)
    if stopped:
        lines += [
            f"> **INCOMPLETE — the run {md(stopped['kind'])}** during {md(stopped.get('stage', '?'))}:"
            f" {md(stopped.get('error', ''))}"
        ]
        if stopped.get("resume"):
            lines += [f"> Continue it with {markdown_code(stopped['resume'])}."]
        lines += [""]
    failed = _failed_checks(report)
    if failed:
        lines += [f"> **{len(failed)} check(s) failed**: {md(', '.join(failed))} — see the Checks table.", ""]
    sampler = _sampler_lines(report, frame)
    if sampler:
        lines += ["## Sampler", ""] + [f"- {md(s)}" for s in sampler] + [""]
    for section, rows in _sections(frame).items():
        if rows.empty:
            continue
        headers = _HEADERS[section]
        lines += [f"## {section}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(md(c) for c in _cells(section, row)) + " |" for _, row in rows.iterrows()]
        lines += [""]
    lines += ["## Provenance", ""] + [f"- {md(k)}: {md(v)}" for k, v in report.provenance.items() if k != "config"]
    return "\n".join(lines)


def _esc(text: Any) -> str:
    """Text for an HTML page: control characters written as visible escapes (``\\x07``), then HTML-escaped."""
    return html.escape(printable(text, keep="\t\n"))


def _html_table(section: str, rows: pd.DataFrame) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in _HEADERS[section])
    body = []
    for _, row in rows.iterrows():
        cells = _cells(section, row)
        cls = f' class="{_esc(row["status"])}"' if section == "Checks" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return f'<table class="rows"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { margin-bottom: 0.1em; } .sub { color: #666; font-size: 13px; }
.banner { padding: 0.8em 1em; margin: 1em 0; border-radius: 4px; font-size: 14px; }
.banner.incomplete { background: #fde7e9; border: 1px solid #b00020; color: #6b0014; }
.banner.failed { background: #fff4e5; border: 1px solid #a06000; }
table.rows { border-collapse: collapse; font-size: 13px; margin-bottom: 1em; }
table.rows td, table.rows th { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
tr.fail td:first-child { color: #b00020; font-weight: bold; }
tr.warn td:first-child { color: #a06000; font-weight: bold; }
tr.pass td:first-child { color: #1b7a1b; } tr.skip td:first-child { color: #777; }
table.prov th { text-align: left; padding-right: 1em; } table.prov { font-size: 12px; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 640px; border: 1px solid #ccc; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def to_html(report: Any, images: Mapping[str, Path]) -> str:
    """A self-contained HTML page (plots embedded): banner, sampler, tables per kind of row, plots, provenance."""
    frame = report.to_frame()
    esc = _esc
    parts = [f"<h1>{esc(_title(report))}</h1>"]
    prov = report.provenance
    parts.append(
        f'<div class="sub">diffeval report <code>{esc(report.run_id)}</code> · {esc(str(prov.get("created", "")))} ·'
        f" device {esc(str(prov.get('device', '')))}</div>"
    )
    stopped = incomplete(report.rows)
    if stopped:
        resume = f"<br>Continue it with <code>{esc(stopped['resume'])}</code>." if stopped.get("resume") else ""
        parts.append(
            f'<div class="banner incomplete"><b>INCOMPLETE — the run {esc(stopped["kind"])}</b> during'
            f" {esc(str(stopped.get('stage', '?')))}: {esc(str(stopped.get('error', '')))}{resume}</div>"
        )
    failed = _failed_checks(report)
    if failed:
        names = esc(", ".join(failed))
        parts.append(f'<div class="banner failed"><b>{len(failed)} check(s) failed</b>: {names} — see Checks.</div>')
    sampler = _sampler_lines(report, frame)
    if sampler:
        parts.append("<h2>Sampler</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in sampler) + "</ul>")
    for section, rows in _sections(frame).items():
        if not rows.empty:
            parts.append(f"<h2>{section}</h2>{_html_table(section, rows)}")
    figures = []
    for key, path in images.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        name = esc(Path(path).name)
        figures.append(
            f'<figure><img alt="{esc(key)}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'
        )
    if figures:
        parts.append("<h2>Plots</h2>" + "".join(figures))
    rows_prov = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in prov.items() if k != "config"
    )
    config = esc(json.dumps(prov.get("config", {}), indent=2, default=str))
    parts.append(
        "<h2>Provenance</h2><table"
        f' class="prov">{rows_prov}</table><details><summary>config</summary><pre>{config}</pre></details>'
    )
    title = esc(_title(report) + (" (incomplete)" if stopped else ""))
    return (
        '<!doctype html>\n<html lang="en"><head><meta'
        f' charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head><body>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )

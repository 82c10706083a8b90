"""Reports: rows with provenance → pandas; written as CSV + JSON + Markdown.

Every metric value, check verdict and latency figure is one row with the columns of
:data:`COLUMNS`; run-wide facts (versions, git commit, device, seeds, config) are the
``provenance``. ``Report.write(folder)`` writes ``report.csv``, ``report.json`` (rows
and provenance; :meth:`Report.load` reads it back) and ``report.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from diffeval.errors import InputError, explain

__all__ = ["COLUMNS", "Report", "provenance", "make_row"]

COLUMNS = (
    "run_id",
    "name",
    "kind",
    "value",
    "stderr",
    "unit",
    "status",
    "n_gen",
    "n_ref",
    "extractor",
    "sampler",
    "details",
)
KINDS = ("metric", "baseline", "latency", "check")


def make_row(name: str, kind: str, value: float, *, stderr: float | None = None, unit: str = "", status: str = "", n_gen: int | None = None, n_ref: int | None = None, extractor: str = "", sampler: str = "", details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One report row; ``details`` holds anything else (serialized as JSON text)."""
    if kind not in KINDS:
        raise InputError(explain("unknown row kind", expected=" / ".join(KINDS), got=repr(kind), fix="use one of the listed kinds"))
    return {
        "name": name,
        "kind": kind,
        "value": float(value),
        "stderr": float("nan") if stderr is None else float(stderr),
        "unit": unit,
        "status": status,
        "n_gen": pd.NA if n_gen is None else int(n_gen),
        "n_ref": pd.NA if n_ref is None else int(n_ref),
        "extractor": extractor,
        "sampler": sampler,
        "details": json.dumps(dict(details or {}), sort_keys=True, default=str),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def provenance(config: Mapping[str, Any], device: str) -> dict[str, Any]:
    """Versions, git commit of the working directory (if any), device, host and config."""
    import numpy
    import torch

    import diffeval

    info: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "diffeval": diffeval.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "device_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "git_commit": _git_commit(),
        "config": dict(config),
    }
    return info


class Report:
    """Rows of one run plus its provenance."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any], run_id: str | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.rows = [dict(row, run_id=self.run_id) for row in rows]
        self.provenance = dict(provenance)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        for col in ("n_gen", "n_ref"):
            frame[col] = frame[col].astype("Int64")
        for col in ("value", "stderr"):
            frame[col] = frame[col].astype("float64")
        return frame

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write report.csv, report.json and report.md into ``folder``; returns their paths."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "report.csv", "json": out / "report.json", "md": out / "report.md"}
        frame = self.to_frame()
        frame.to_csv(paths["csv"], index=False)
        records = [{k: (None if (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]
        paths["json"].write_text(json.dumps({"run_id": self.run_id, "provenance": self.provenance, "rows": records}, indent=2, default=str) + "\n")
        paths["md"].write_text(self.to_markdown() + "\n")
        return paths

    def to_markdown(self) -> str:
        lines = [f"# diffeval report {self.run_id}", ""]
        lines += [f"- {k}: {v}" for k, v in self.provenance.items() if k != "config"]
        lines += ["", "| name | kind | value | stderr | unit | status | n_gen | n_ref | extractor | sampler |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in self.to_frame().itertuples():
            stderr = "" if math.isnan(row.stderr) else f"{row.stderr:.4g}"
            n_gen = "" if row.n_gen is pd.NA else row.n_gen
            n_ref = "" if row.n_ref is pd.NA else row.n_ref
            lines.append(f"| {row.name} | {row.kind} | {row.value:.6g} | {stderr} | {row.unit} | {row.status} | {n_gen} | {n_ref} | {row.extractor} | {row.sampler} |")
        return "\n".join(lines)

    def to_text(self) -> str:
        """A plain table for the terminal."""
        frame = self.to_frame()[["name", "kind", "value", "stderr", "unit", "status", "n_gen", "n_ref"]]
        return frame.to_string(index=False, float_format=lambda v: f"{v:.5g}", na_rep="")

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report.json written by :meth:`write`."""
        try:
            data = json.loads(Path(path).read_text())
            rows = [{k: (float("nan") if k in ("value", "stderr") and v is None else v) for k, v in row.items()} for row in data["rows"]]
            report = cls(rows, data["provenance"], run_id=data["run_id"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(explain(f"cannot read report {path}", expected="a report.json written by diffeval", got=f"{type(error).__name__}: {error}", fix="point to the report.json of a diffeval run")) from None
        return report

"""Reports: rows with provenance → pandas; written as CSV, JSON, Markdown and a self-contained HTML page.

Every metric value, check verdict and latency figure is one row (:data:`ROW_COLUMNS`),
built from the metric's own description (:func:`metric_row`: label, direction, unit,
feature space) or the check's result (:func:`check_row`) — no per-metric code here.
run-wide facts (versions, git commit, device, seeds, wall time, config) are the
``provenance`` and are repeated as columns (:data:`RUN_COLUMNS`) in :meth:`Report.to_frame`
so several runs concatenate into one comparable frame (:func:`load_frames`).

``Report.write(folder)`` writes ``report.csv``, ``report.json`` (rows + provenance;
:meth:`Report.load` reads it back to the same frame), ``report.md`` and ``report.html``
(tables and the plots — sample grid, the checks' figures, metric vs knob — embedded as
base64 PNG, so the page stands alone).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from diffeval.core.errors import InputError, explain
from diffeval.core.files import write_text
from diffeval.core.points import parse_point, point_json, point_text

__all__ = [
    "writable_folder",
    "writable_file",
    "ROW_COLUMNS",
    "RUN_COLUMNS",
    "COLUMNS",
    "KINDS",
    "Report",
    "provenance",
    "make_row",
    "metric_row",
    "metric_rows",
    "check_row",
    "load_frames",
    "read_csv",
]

ROW_COLUMNS = (
    "name",
    "label",
    "kind",
    "direction",
    "value",
    "stderr",
    "unit",
    "status",
    "n_gen",
    "n_ref",
    "extractor",
    "sampler",
    "point",
    "details",
)
RUN_COLUMNS = (
    "run_id",
    "run_name",
    "seeds",
    "device",
    "wall_s",
    "git_commit",
    "diffeval_version",
    "torch_version",
    "created",
)
COLUMNS = RUN_COLUMNS + ROW_COLUMNS
KINDS = ("metric", "baseline", "latency", "check")
_FLOAT = ("value", "stderr", "wall_s")
_INT = ("n_gen", "n_ref")


def make_row(
    name: str,
    kind: str,
    value: float,
    *,
    stderr: float | None = None,
    unit: str = "",
    status: str = "",
    n_gen: int | None = None,
    n_ref: int | None = None,
    extractor: str = "",
    sampler: str = "",
    point: Mapping[str, float] | None = None,
    details: Mapping[str, Any] | None = None,
    label: str | None = None,
    direction: str = "",
) -> dict[str, Any]:
    """One report row; ``label`` (default: ``name``) keys it within a run (with ``point``, the sweep point, if any);
    ``direction`` (lower/higher) tells the gate which way is worse.
    """
    if kind not in KINDS:
        raise InputError(
            explain("unknown row kind", expected=" / ".join(KINDS), got=repr(kind), fix="use one of the listed kinds")
        )
    if direction not in ("", "lower", "higher"):
        raise InputError(
            explain(
                "unknown row direction",
                expected="'lower' or 'higher' (is better), or '' for checks",
                got=repr(direction),
                fix="declare the metric's direction",
            )
        )
    return {
        "name": name,
        "label": label or name,
        "kind": kind,
        "direction": direction,
        "value": float(value),
        "stderr": float("nan") if stderr is None else float(stderr),
        "unit": unit,
        "status": status,
        "n_gen": None if n_gen is None else int(n_gen),
        "n_ref": None if n_ref is None else int(n_ref),
        "extractor": extractor,
        "sampler": sampler,
        "point": point_json(point),
        "details": json.dumps(dict(details or {}), sort_keys=True, default=str),
    }


def writable_folder(out: str | Path, option: str = "--out") -> Path:
    """Create ``out`` and prove a file can be written there — before any work, so nothing computed is lost."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".diffeval-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise InputError(
            explain(
                f"output folder {out} is not writable",
                expected="a folder diffeval can create files in",
                got=f"{type(error).__name__}: {error}",
                fix=f"pass {option} with a writable folder",
            )
        ) from None
    return out


def writable_file(path: str | Path, option: str) -> Path:
    """Prove ``path`` can be written (its folder exists and takes files; it is not a folder) — before any work."""
    path = Path(path)
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        with open(path, "a", encoding="utf-8"):
            pass
        if not existed:
            path.unlink()
    except OSError as error:
        raise InputError(
            explain(
                f"cannot write {option} {path}",
                expected="a file path in an existing, writable folder",
                got=f"{type(error).__name__}: {error}",
                fix=f"pass a writable path to {option} (create its folder first)",
            )
        ) from None
    return path


def metric_row(
    metric: Any, result: Any, *, sampler: str = "", point: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The report row of a metric's :class:`~diffeval.metrics.base.MetricResult`, from the metric's own description."""
    details = dict(result.details)
    if result.convention:
        details["convention"] = result.convention
    return make_row(
        metric.name,
        "metric",
        result.value,
        stderr=result.stderr,
        unit=metric.unit,
        status=result.status,
        n_gen=result.n_gen,
        n_ref=result.n_ref,
        extractor=metric.space,
        sampler=sampler,
        point=point,
        details=details,
        label=metric.label,
        direction=metric.direction,
    )


def metric_rows(metric: Any, result: Any, **extra: Any) -> list[dict[str, Any]]:
    """The report rows of a metric's result: one, or one per declared part (``Metric.parts``)."""
    if not getattr(metric, "parts", ()):
        return [metric_row(metric, result, **extra)]
    rows = []
    for part, direction in metric.parts:
        sub = result.parts[part]
        details = {**dict(sub.details), "computed_with": metric.label}
        if sub.convention:
            details["convention"] = sub.convention
        rows.append(
            make_row(
                part,
                "metric",
                sub.value,
                stderr=sub.stderr,
                unit=metric.unit,
                status=sub.status,
                n_gen=sub.n_gen,
                n_ref=sub.n_ref,
                extractor=metric.space,
                sampler=extra.get("sampler", ""),
                point=extra.get("point"),
                details=details,
                label=metric.part_label(part),
                direction=direction,
            )
        )
    return rows


def check_row(result: Any, *, point: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The report row (kind ``check``) of a :class:`~diffeval.checks.base.CheckResult` (at a sweep point if given)."""
    value = (
        result.value if isinstance(result.value, (int, float)) and not isinstance(result.value, bool) else float("nan")
    )
    return make_row(
        result.name,
        "check",
        value,
        status=result.status,
        point=point,
        details={"threshold": result.threshold, "message": result.message, **extra},
    )


def _git_commit(folder: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False, cwd=folder
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _code_folder(code: str | None) -> Path | None:
    """The folder of the module behind a ``pkg.module:function`` factory, if importable."""
    if not code or ":" not in code:
        return None
    import importlib.util

    try:
        spec = importlib.util.find_spec(code.split(":", 1)[0])
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def provenance(
    config: Mapping[str, Any],
    device: str,
    *,
    wall_s: float | None = None,
    seeds: str = "",
    code: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Versions, git commit of the evaluated code (the factory's module, else the working dir), device, host and
    config.
    """
    import numpy
    import torch

    from diffeval.version import __version__

    return {
        "run_name": name or str(config.get("name", "")),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "diffeval_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "pandas_version": pd.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "device_name": (
            torch.cuda.get_device_name(torch.device(device))
            if device.startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        "git_commit": _git_commit(_code_folder(code)),
        "seeds": seeds,
        "world_size": int(config.get("world_size", 1)),
        "wall_s": float("nan") if wall_s is None else float(wall_s),
        "config": dict(config),
    }


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for col in _FLOAT:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in _INT:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in set(COLUMNS) - set(_FLOAT) - set(_INT):
        frame[col] = frame[col].fillna("").astype(str)
    return frame[list(COLUMNS)]


class Report:
    """Rows of one run plus its provenance."""

    def __init__(
        self, rows: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any], run_id: str | None = None
    ) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.rows = [dict(row) for row in rows]
        self.provenance = dict(provenance)

    def to_frame(self) -> pd.DataFrame:
        """All rows with the run-wide columns filled in."""
        frame = pd.DataFrame(self.rows, columns=list(ROW_COLUMNS))
        run = {"run_id": self.run_id, **{k: self.provenance.get(k, "") for k in RUN_COLUMNS if k != "run_id"}}
        for key, value in run.items():
            frame[key] = value
        return _typed(frame)

    # -- writers ---------------------------------------------------------------------------
    def write(self, folder: str | Path, *, samples: Any = None, figures: Sequence[Any] = ()) -> dict[str, Path]:
        """Write report.csv / .json / .md / .html (and the PNGs the HTML embeds: samples, the checks' ``figures``,
        sweeps)
        into ``folder``.

        Every file is written atomically (:func:`diffeval.core.files.atomic_write`): a failed or killed write leaves
        the older file (or none) under each name, never a partial one.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "report.csv", "json": out / "report.json", "md": out / "report.md"}
        frame = self.to_frame()
        write_text(paths["csv"], frame.to_csv(index=False))
        records = [
            {k: _json_value(v) for k, v in row.items()}
            for row in frame[list(ROW_COLUMNS)].astype(object).to_dict("records")
        ]
        write_text(
            paths["json"],
            json.dumps({"run_id": self.run_id, "provenance": self.provenance, "rows": records}, indent=2, default=str)
            + "\n",
        )
        write_text(paths["md"], self.to_markdown() + "\n")
        paths.update(self._write_plots(out, samples, figures))
        paths["html"] = out / "report.html"
        write_text(
            paths["html"], self.to_html({k: v for k, v in paths.items() if k.endswith("_png") or k == "samples"})
        )
        return paths

    def _write_plots(self, out: Path, samples: Any, figures: Sequence[Any]) -> dict[str, Path]:
        from diffeval.data.images import save_grid
        from diffeval.report import plots

        paths: dict[str, Path] = {}
        if samples is not None and len(samples):
            paths["samples"] = save_grid(
                samples[:100], out / "samples.png", nrow=10, scale=max(1, 32 // int(samples.shape[-1]))
            )
        for figure in figures:
            paths[f"{figure.name}_png"] = figure.draw(out / f"{figure.name}.png")
        paths.update(plots.sweep_figures(self.to_frame(), out))
        return paths

    def to_markdown(self) -> str:
        """The report as Markdown (:func:`diffeval.report.pages.to_markdown`)."""
        from diffeval.report.pages import to_markdown

        return to_markdown(self)

    def to_html(self, images: Mapping[str, Path]) -> str:
        """A self-contained HTML page with ``images`` embedded (:func:`diffeval.report.pages.to_html`)."""
        from diffeval.report.pages import to_html

        return to_html(self, images)

    def attention(self) -> list[str]:
        """One line per check that warned or failed: ``[FAIL] name = value (threshold): message``."""
        lines = []
        for r in self.rows:
            if r["kind"] == "check" and r["status"] in ("warn", "fail"):
                details = json.loads(r["details"])
                value = (
                    ""
                    if r["value"] is None or (isinstance(r["value"], float) and math.isnan(r["value"]))
                    else f"{r['value']:.6g}"
                )
                lines.append(
                    f"[{r['status'].upper()}] {r['name']} = {value} ({details.get('threshold', '')}):"
                    f" {details.get('message', details.get('error', ''))}"
                )
        return lines

    def to_text(self) -> str:
        """A plain table for the terminal."""
        frame = self.to_frame()
        cols = ["label", "kind", "value", "stderr", "unit", "status", "n_gen", "n_ref"]
        if (frame["point"] != "").any():
            frame = frame.assign(point=[point_text(parse_point(p)) for p in frame["point"]])
            cols.append("point")
        return frame[cols].to_string(index=False, float_format=lambda v: f"{v:.5g}", na_rep="")

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report.json written by :meth:`write`."""
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict):
                raise TypeError(f"the file holds a JSON {type(data).__name__}, not an object")
            for key, kind in (("rows", list), ("provenance", dict)):
                if not isinstance(data.get(key), kind):
                    raise TypeError(f"{key!r} is {type(data.get(key)).__name__}, not a JSON {kind.__name__}")
            bad = [i for i, row in enumerate(data["rows"]) if not isinstance(row, dict)]
            if bad:
                raise TypeError(f"rows {bad[:5]} are not JSON objects")
            rows = [
                _upgrade_row({k: float("nan") if k in _FLOAT and v is None else v for k, v in row.items()})
                for row in data["rows"]
            ]
            for row in rows:
                missing = set(ROW_COLUMNS) - set(row)
                if missing:
                    raise KeyError(f"row lacks {sorted(missing)}")
                stderr = row["stderr"]
                if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) and stderr < 0:
                    raise ValueError(f"row {row['label']!r} has a negative standard error ({stderr})")
            return cls(rows, data["provenance"], run_id=data["run_id"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(
                explain(
                    f"cannot read report {path}",
                    expected="a report.json written by diffeval",
                    got=f"{type(error).__name__}: {error}",
                    fix="point to the report.json of a diffeval run",
                )
            ) from None


def _upgrade_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an older report: label = name, a metric's direction from the registry, ``knob``/``knob_value`` as
    ``point``.
    """
    row = dict(row)
    row.setdefault("label", row.get("name"))
    if "point" not in row:  # before multi-knob sweeps: one knob and its value
        knob, value = row.pop("knob", ""), row.pop("knob_value", None)
        has_value = value is not None and not (isinstance(value, float) and math.isnan(value))
        row["point"] = point_json({knob: value}) if knob and has_value else ""
    if "direction" not in row:
        direction = ""
        if row.get("kind") == "metric":
            from diffeval.metrics.base import METRICS

            if row.get("name") in METRICS:
                direction = METRICS.get(row["name"]).direction
        row["direction"] = direction
    return row


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def read_csv(path: str | Path) -> pd.DataFrame:
    """A report.csv back as the frame :meth:`Report.to_frame` wrote (same dtypes)."""
    frame = pd.read_csv(Path(path), dtype=str, keep_default_na=False)
    if "point" not in frame.columns and {"knob", "knob_value"} <= set(frame.columns):  # an older report.csv
        frame["point"] = [
            point_json({k: float(v)}) if k and v not in ("", "nan") else ""
            for k, v in zip(frame["knob"], frame["knob_value"], strict=True)
        ]
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise InputError(
            explain(
                f"{path} is not a diffeval report.csv",
                expected=f"columns {list(COLUMNS)}",
                got=f"missing {sorted(missing)}",
                fix="point to a report.csv written by diffeval",
            )
        )
    frame = frame.replace({"": None})
    return _typed(frame)


def load_frames(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Several runs' report.json (or report.csv) files as one frame, for comparison."""
    frames = [read_csv(p) if str(p).endswith(".csv") else Report.load(p).to_frame() for p in paths]
    if not frames:
        raise InputError(
            explain("no reports to load", expected="at least one report path", got="none", fix="pass report.json files")
        )
    return pd.concat(frames, ignore_index=True)

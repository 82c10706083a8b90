"""Sweep plots as PNG (matplotlib, Agg backend): metric vs knob lines and heatmaps over two knobs (the checks'
own figures live in :mod:`diffeval.checks.figures`).

Plots draw what they are given: thresholds come from the checks that own them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffeval.checks.figures import pyplot
from diffeval.core.files import save_figure
from diffeval.core.points import parse_point, point_text, sweep_table, varying_knobs

__all__ = [
    "plot_metric_vs_knob",
    "plot_sweep_lines",
    "plot_heatmap",
    "sweep_figures",
]

Series = tuple[str, Sequence[float], Sequence[float], Sequence[float] | None]  # label, x, y, y errors


def plot_metric_vs_knob(
    knob: str,
    values: Sequence[float],
    metric: str,
    results: Sequence[float],
    path: str | Path,
    errors: Sequence[float] | None = None,
) -> Path:
    """A metric against a swept knob (FID vs NFE, FID vs guidance)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=110)
    ax.errorbar(
        list(values), list(results), yerr=None if errors is None else list(errors), marker="o", color="black", capsize=3
    )
    ax.set_xlabel(knob)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {knob}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_sweep_lines(knob: str, metric: str, panels: Sequence[tuple[str, Sequence[Series]]], path: str | Path) -> Path:
    """A metric against one knob: one line per value of another knob, one panel per setting of the rest."""
    plt = pyplot()
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=110, squeeze=False, sharey=True)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for label, x, y, err in series:
            ax.errorbar(list(x), list(y), yerr=None if err is None else list(err), marker="o", capsize=2, label=label)
        ax.set_xlabel(knob)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    ys = [v for _, series in panels for _, _, y, _ in series for v in y if math.isfinite(v)]
    if _wide(ys):
        for ax in axes.flat:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    fig.suptitle(f"{metric} vs {knob}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_heatmap(
    metric: str,
    x_knob: str,
    x_values: Sequence[float],
    y_knob: str,
    y_values: Sequence[float],
    values: np.ndarray,
    errors: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    best: tuple[int, int] | None = None,
) -> Path:
    """``values[i, j]`` at ``(y_values[i], x_values[j])`` as a heatmap, cells labelled value ± SE (blank: not run)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(x_values) + 2.4, 0.8 * len(y_values) + 1.6), dpi=110)
    finite = values[np.isfinite(values)]
    norm = None
    if _wide(finite.tolist()):
        from matplotlib.colors import LogNorm

        norm = LogNorm(vmin=float(finite.min()), vmax=float(finite.max()))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", origin="lower", norm=norm)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_xticks(range(len(x_values)), [f"{v:g}" for v in x_values])
    ax.set_yticks(range(len(y_values)), [f"{v:g}" for v in y_values])
    ax.set_xlabel(x_knob)
    ax.set_ylabel(y_knob)
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        middle = math.sqrt(lo * hi) if norm is not None else (lo + hi) / 2
    else:
        middle = 0.0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                text = f"{values[i, j]:.3g}" + (f"\n±{errors[i, j]:.2g}" if np.isfinite(errors[i, j]) else "")
                color = "white" if values[i, j] < middle else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    if best is not None:
        ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(title or f"{metric} over {x_knob} x {y_knob}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def _wide(values: Sequence[float]) -> bool:
    """Positive values spanning more than 20x: drawn on a log scale (a collapsed sampler next to good ones)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def _stem(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _nfe_axis(frame: Any, group: Any, knob: str) -> dict[str, float] | None:
    """Point -> NFE per sample when ``knob`` is ``steps`` (FID vs NFE), else None."""
    if knob != "steps":
        return None
    nfe = frame[(frame["name"] == "nfe") & (frame["point"] != "")]
    return {p: float(v) for p, v in zip(nfe["point"], nfe["value"], strict=True)}


def sweep_figures(frame: Any, out: Path) -> dict[str, Path]:
    """The sweep plots of a report frame: per metric, a line plot per varying knob and, with two or more
    varying knobs, a heatmap over the two with the most values (one per setting of the others).
    """
    table = sweep_table(frame)
    paths: dict[str, Path] = {}
    for label, group in table.groupby("label", sort=False):
        points = [parse_point(p) for p in group["point"]]
        knobs = varying_knobs(points)
        if not knobs:
            continue
        lower = (group["direction"] == "lower").all()
        for knob in knobs:
            nfe = _nfe_axis(frame, group, knob)
            series_knob = next((k for k in knobs if k != knob), None)
            rest = [k for k in knobs if k not in (knob, series_knob)]
            panels: dict[str, list[Series]] = {}
            keys = [series_knob, *rest] if series_knob else []
            for combo, sub in group.groupby(keys, sort=True) if keys else [((), group)]:
                combo = combo if isinstance(combo, tuple) else (combo,)
                setting = dict(zip(keys, combo, strict=True))
                panel = point_text({k: setting[k] for k in rest}) if rest else ""
                sub = sub.sort_values(knob)
                x = [nfe.get(p, v) for p, v in zip(sub["point"], sub[knob], strict=True)] if nfe else sub[knob]
                err = sub["stderr"].tolist() if sub["stderr"].notna().any() else None
                name = f"{series_knob}={setting[series_knob]:g}" if series_knob else label
                panels.setdefault(panel, []).append((name, list(x), sub["value"].tolist(), err))
            single = len(knobs) == 1
            stem = _stem(f"sweep_{label}" if single else f"sweep_{label}_{knob}")
            axis = "NFE" if nfe else knob
            if single:
                x, y, err = _single(panels)
                paths[f"{stem}_png"] = plot_metric_vs_knob(axis, x, label, y, out / f"{stem}.png", err)
            else:
                paths[f"{stem}_png"] = plot_sweep_lines(axis, label, list(panels.items()), out / f"{stem}.png")
        if len(knobs) >= 2:
            paths.update(_heatmaps(group, label, knobs, lower, out))
    return paths


def _single(panels: Mapping[str, Sequence[Series]]) -> tuple[list[float], list[float], list[float] | None]:
    ((_, x, y, err),) = panels[""]
    return list(x), list(y), None if err is None else list(err)


def _heatmaps(group: Any, label: str, knobs: list[str], lower: bool, out: Path) -> dict[str, Path]:
    x_knob, y_knob, rest = knobs[0], knobs[1], knobs[2:]
    paths = {}
    for combo, sub in group.groupby(rest, sort=True) if rest else [((), group)]:
        combo = combo if isinstance(combo, tuple) else (combo,)
        facet = point_text(dict(zip(rest, combo, strict=True)))
        xs, ys = sorted(sub[x_knob].dropna().unique()), sorted(sub[y_knob].dropna().unique())
        values = np.full((len(ys), len(xs)), np.nan)
        errors = np.full((len(ys), len(xs)), np.nan)
        for _, row in sub.iterrows():
            if not (math.isnan(row[x_knob]) or math.isnan(row[y_knob])):
                i, j = ys.index(row[y_knob]), xs.index(row[x_knob])
                values[i, j], errors[i, j] = row["value"], row["stderr"]
        best = None
        if np.isfinite(values).any():
            flat = int(np.nanargmin(values) if lower else np.nanargmax(values))
            best = divmod(flat, len(xs))
        stem = _stem(f"heatmap_{label}" + (f"_{facet}" if facet else ""))
        title = f"{label} over {x_knob} x {y_knob}" + (f" ({facet})" if facet else "") + "; box: best"
        paths[f"{stem}_png"] = plot_heatmap(
            label, x_knob, xs, y_knob, ys, values, errors, out / f"{stem}.png", title=title, best=best
        )
    return paths

"""The S2N experiment on the bundled model: FID over (gamma, delta) at each step count, and the best point against
DDIM (gamma = 0) and DDPM (gamma = 1, delta = 1) at the same NFE, paired on the shared seeds.

    python benchmarks/s2n_experiment.py                       # runs `diffeval run s2n` (~2 min on CPU), prints
    python benchmarks/s2n_experiment.py --report runs/s2n/report.json   # the tables of an existing run

Every point samples the same seeds, so a difference between two points has a paired standard error
(the jackknife of the per-seed-block leave-one-out differences, as `diffeval gate` computes it).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from diffeval.core.points import sweep_table
from diffeval.report.report import Report
from diffeval.stats.uncertainty import paired_se


def _row(table: pd.DataFrame, steps: int, gamma: float, delta: float | None) -> pd.Series | None:
    """The point at (steps, gamma, delta); delta None matches any (at gamma = 0 delta has no effect)."""
    hit = table[(table["steps"] == steps) & (table["gamma"] == gamma)]
    if delta is not None:
        hit = hit[hit["delta"] == delta]
    return None if hit.empty else hit.iloc[0]


def _versus(best: pd.Series, other: pd.Series) -> tuple[float, float, float]:
    pb, po = (json.loads(r["details"])["pairing"] for r in (best, other))
    diff = float(best["value"] - other["value"])
    se = paired_se(po, pb)
    return diff, se, diff / se if se > 0 else math.nan


def tables(frame: pd.DataFrame, label: str) -> str:
    table = sweep_table(frame)
    table = table[table["label"] == label]
    out = []
    for steps, group in table.groupby("steps"):
        grid = group.pivot_table(index="delta", columns="gamma", values="value")
        ses = group.pivot_table(index="delta", columns="gamma", values="stderr")
        cells = grid.map(lambda v: "" if pd.isna(v) else f"{v:.1f}") + ses.map(
            lambda v: "" if pd.isna(v) else f" ± {v:.1f}"
        )
        out.append(f"\n{label} at {steps} steps (rows: delta, columns: gamma)\n")
        out.append(cells.to_markdown() if _has_tabulate() else cells.to_string())
        lines = []
        stochastic = group[group["gamma"] > 0]
        for title, pool in (("best point", group), ("best stochastic point (gamma > 0)", stochastic)):
            if pool.empty:
                continue
            best = pool.loc[pool["value"].idxmin()]
            lines.append(
                f"\n{title}: gamma = {best['gamma']:g}, delta = {best['delta']:g}:"
                f" {best['value']:.2f} ± {best['stderr']:.2f}"
            )
            for name, (g, d) in (("DDIM (gamma 0)", (0.0, None)), ("DDPM (gamma 1, delta 1)", (1.0, 1.0))):
                other = _row(group, steps, g, d)
                if other is None:
                    continue
                if other.name == best.name:
                    lines.append(f"  it is {name}")
                    continue
                diff, se, z = _versus(best, other)
                unpaired = math.hypot(best["stderr"], other["stderr"])
                verdict = "exceeds 2 SE" if abs(z) > 2 else "within 2 SE"
                lines.append(
                    f"  vs {name} {other['value']:.2f} ± {other['stderr']:.2f}: difference {diff:+.2f}, paired SE"
                    f" {se:.2f} (unpaired {unpaired:.2f}), z = {z:+.2f} ({verdict})"
                )
        out.append("\n".join(lines))
    ode = table[table["gamma"] == 0].sort_values("steps")
    if not ode.empty:
        out.append(
            "\ndeterministic mode, the probability-flow ODE (gamma = 0, DDIM): "
            + ", ".join(f"{int(r['steps'])} steps {r['value']:.1f} ± {r['stderr']:.1f}" for _, r in ode.iterrows())
        )
    return "\n".join(out)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", default=None, help="report.json of a finished `diffeval run s2n` (default: run it)")
    p.add_argument("--metric", default="fid@demo-digits:features")
    args = p.parse_args()
    if args.report is None:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "diffeval", "run", "s2n", "--out", tmp, "--no-progress"]
            subprocess.run(cmd, check=True, capture_output=True)
            frame = Report.load(Path(tmp) / "report.json").to_frame()
    else:
        frame = Report.load(args.report).to_frame()
    print(tables(frame, args.metric))


if __name__ == "__main__":
    main()

"""Gate-grade statistics, measured by simulation: FID's jackknife standard error, the gate's false-positive rate
and power (paired and unpaired), FID-infinity, and the paired/unpaired standard-error ratio on the demo model.

    python benchmarks/gate_statistics.py se --dims 64,2048 --ns 2000,10000 --reps 200   # SE vs the empirical SD
    python benchmarks/gate_statistics.py gate --reps 100                                # FP rate and power
    python benchmarks/gate_statistics.py infinity --reps 200                            # FID-inf vs population FID
    python benchmarks/gate_statistics.py demo                                           # the bundled demo model
    python benchmarks/gate_statistics.py all --quick                                    # every part, small (CPU)

Synthetic "models" map seeds to Gaussian features: a seed range is drawn from a generator
keyed by its first seed, so the same seeds give the same noise ``z`` in every run; model
``A`` maps ``z`` to ``mu_g + C z`` (``C C^T = Sigma_g``); a *retrained* model of equal
quality maps it to ``mu_g + C (rho z + sqrt(1 - rho^2) z')`` (same distribution, partly
different samples per seed); a *degraded* one adds a mean shift orthogonal to
``mu_g - mu_r`` whose square is the wanted FID increase. The reference is the population
itself (exact mean and covariance), so the population FID is known in closed form. Every
number goes through the real code: the ``FID`` metric fed in batches with seeds, report
rows built by ``report.metric_row`` and verdicts by ``gate.evaluate_gate`` (default
rules: no metric worse, k = 2). ``--out FILE`` keeps finished repetitions (a re-run
resumes). d = 2048 costs ~7 s per repetition on one CPU thread (11 eigendecompositions on rotated block sums).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffeval.gate import GateRules, evaluate_gate
from diffeval.metrics import FID
from diffeval.metrics.base import Batch
from diffeval.metrics.fid import frechet_distance
from diffeval.report.report import Report, metric_row
from diffeval.stats.moments import FeatureMoments

CHUNK = 1000


@dataclass
class World:
    """Population Gaussians: reference N(0, diag(lam_r)); generated N(mu_g, C C^T) with a rotated spectrum."""

    d: int
    mu_g: torch.Tensor
    c: torch.Tensor
    lam_r: torch.Tensor
    v: torch.Tensor  # unit direction orthogonal to mu_g (the degradation)

    @classmethod
    def make(cls, d: int, seed: int = 0) -> World:
        g = torch.Generator().manual_seed(seed)
        i = torch.arange(d, dtype=torch.float64)
        lam_r = 1.0 / (1.0 + i / 8.0)  # a decaying spectrum, like Inception features'
        lam_g = lam_r * (1.0 + 0.3 * torch.rand(d, generator=g, dtype=torch.float64))
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        mu_g = torch.randn(d, generator=g, dtype=torch.float64)
        mu_g *= math.sqrt(0.05 * float(lam_r.sum())) / float(mu_g.norm())
        v = torch.randn(d, generator=g, dtype=torch.float64)
        v -= (v @ mu_g) / (mu_g @ mu_g) * mu_g
        return cls(d, mu_g, q * lam_g.sqrt(), lam_r, v / v.norm())

    def reference(self) -> FeatureMoments:
        return FeatureMoments.from_mean_cov(torch.zeros(self.d, dtype=torch.float64), torch.diag(self.lam_r), 10**9)

    def population_fid(self, shift: float = 0.0) -> float:
        sigma_g = self.c @ self.c.T
        return frechet_distance(self.mu_g + shift * self.v, sigma_g, torch.zeros(self.d), torch.diag(self.lam_r)).value

    def features(self, start: int, n: int, *, rho: float = 1.0, stream: int = 0, shift: float = 0.0):
        """(seeds, features) in chunks for seeds start .. start + n - 1."""
        for s in range(start, start + n, CHUNK):
            m = min(CHUNK, start + n - s)
            z = torch.randn(m, self.d, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            if rho < 1.0:
                other = torch.Generator().manual_seed(s + 7919 * (stream + 1) * 10**9)
                z = rho * z + math.sqrt(1 - rho * rho) * torch.randn(m, self.d, generator=other, dtype=torch.float64)
            yield list(range(s, s + m)), self.mu_g + shift * self.v + z @ self.c.T


def run_fid(world: World, ref: FeatureMoments, start: int, n: int, *, extrapolate: bool = False, **model: Any):
    metric = FID(ref, "x", "f", allow_unmatched=True, blocks=10, extrapolate=extrapolate)
    for seeds, f in world.features(start, n, **model):
        metric.update(Batch(features={"x": {"f": f}}, seeds=seeds))
    return metric, metric.compute()


class Store:
    """Finished repetitions by key, kept in ``--out`` (JSON) so an interrupted run resumes."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, list[Any]] = json.loads(self.path.read_text()) if self.path and self.path.exists() else {}

    def reps(self, key: str) -> list[Any]:
        return self.data.setdefault(key, [])

    def save(self) -> None:
        if self.path:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    cells = [[c for c in cols]] + [[r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)) for row in cells)


def part_se(args: argparse.Namespace, store: Store) -> None:
    """Jackknife SE vs the empirical SD of FID over repetitions (fixed reference, fresh seeds each time)."""
    rows = []
    for d in args.dims:
        world = World.make(d)
        ref = world.reference()
        for n in args.ns:
            key = f"se/d={d}/n={n}"
            done = store.reps(key)
            t0 = time.perf_counter()
            while len(done) < args.reps:
                rep = len(done)
                _, r = run_fid(world, ref, 10**7 + rep * n, n)
                done.append([r.value, r.stderr])
                store.save()
                if args.verbose:
                    print(f"{key} rep {rep}: {r.value:.5g} +- {r.stderr:.3g} ({time.perf_counter() - t0:.0f} s)")
            x = np.array(done[: args.reps])
            sd = x[:, 0].std(ddof=1)
            rel = 1 / math.sqrt(2 * (len(x) - 1))  # relative SE of an SD estimate
            rows.append(
                {
                    "d": str(d),
                    "N": str(n),
                    "reps": str(len(x)),
                    "mean FID": x[:, 0].mean(),
                    "pop FID": world.population_fid(),
                    "empirical SD": sd,
                    "mean jackknife SE": x[:, 1].mean(),
                    "SE / SD": x[:, 1].mean() / sd,
                    "+- (SD's own noise)": rel * x[:, 1].mean() / sd,
                    "median SE / SD": float(np.median(x[:, 1])) / sd,
                }
            )
    print("\njackknife standard error of FID (K = 10 seed blocks) vs the empirical SD over repetitions")
    print(_table(rows))
    print("acceptance: SE / SD within [0.9, 1.1] (issue 22; it was [0.75, 1.25])")


def _report(metric: FID, result: Any) -> Report:
    return Report([metric_row(metric, result)], {"world_size": 1})


def _gate(base: tuple[FID, Any], cand: tuple[FID, Any]) -> tuple[str, Any]:
    verdicts = evaluate_gate(_report(*base), _report(*cand), GateRules(default=True))
    (v,) = verdicts
    return v.status, v


def part_gate(args: argparse.Namespace, store: Store) -> None:
    """False-positive rate (equal quality) and power (3 SE worse) of the default gate, paired and unpaired."""
    d, n = args.gate_d, args.gate_n
    world = World.make(d)
    ref = world.reference()
    se_single = None
    scenarios = {
        "equal quality, unpaired (different seeds)": dict(base={}, cand={}, same_seeds=False),
        "equal quality, paired (retrained, rho 0.8)": dict(base={}, cand={"rho": 0.8, "stream": 1}, same_seeds=True),
        "3 SE worse, paired (same sampler, rho 1)": dict(base={}, cand={"degrade": 3.0}, same_seeds=True),
        "3 SE worse, paired (retrained, rho 0.8)": dict(
            base={}, cand={"degrade": 3.0, "rho": 0.8, "stream": 1}, same_seeds=True
        ),
        "3 SE worse, unpaired": dict(base={}, cand={"degrade": 3.0}, same_seeds=False),
    }
    # the single-run SE that "3 standard errors" refers to: the mean jackknife SE of FID at this N
    ses = store.reps(f"gate/d={d}/n={n}/se")
    while len(ses) < 20:
        ses.append(run_fid(world, ref, 5 * 10**8 + len(ses) * n, n)[1].stderr)
        store.save()
    se_single = float(np.mean(ses))
    rows = []
    for name, sc in scenarios.items():
        key = f"gate/d={d}/n={n}/{name}"
        done = store.reps(key)
        cand_model = dict(sc["cand"])
        degrade = cand_model.pop("degrade", 0.0)
        shift = math.sqrt(degrade * se_single)  # a shift orthogonal to mu_g - mu_r raises FID by shift^2
        while len(done) < args.gate_reps:
            rep = len(done)
            start = 10**8 + rep * 2 * n
            base = run_fid(world, ref, start, n, **sc["base"])
            cand = run_fid(world, ref, start if sc["same_seeds"] else start + n, n, shift=shift, **cand_model)
            status, v = _gate(base, cand)
            done.append([status == "pass", v.mode, v.stderr, v.z, cand[1].value - base[1].value])
            store.save()
        x = done[: args.gate_reps]
        passed = np.mean([r[0] for r in x])
        modes = sorted({r[1] for r in x})
        rows.append(
            {
                "scenario": name,
                "reps": str(len(x)),
                "true dFID": world.population_fid(shift) - world.population_fid(),
                "mode": "/".join(modes),
                "mean SE(diff)": float(np.mean([r[2] for r in x])),
                "SD(diff)": float(np.std([r[4] for r in x], ddof=1)),
                "mean z": float(np.mean([r[3] for r in x])),
                "pass rate": passed,
                "fail rate": 1 - passed,
            }
        )
    print(f"\ndefault gate (no metric worse, k = 2) at d = {d}, N = {n}; one run's FID SE = {se_single:.4g}")
    print(_table(rows))
    print("acceptance: equal quality passes >= 95 %; 3 SE worse (paired) fails >= 90 %")


def part_infinity(args: argparse.Namespace, store: Store) -> None:
    """FID-infinity vs the population FID (closed form), and FID at N's bias."""
    rows = []
    for d in args.inf_dims:
        world = World.make(d)
        ref = world.reference()
        pop = world.population_fid()
        for n in args.ns:
            key = f"inf/d={d}/n={n}"
            done = store.reps(key)
            while len(done) < args.inf_reps:
                rep = len(done)
                metric, r = run_fid(world, ref, 2 * 10**9 + rep * n, n, extrapolate=True)
                metric.infinity_se = "leave-two-out"  # the exact jackknife of FID-inf, on the same state
                exact = metric.compute()["fid_infinity_stderr"]
                done.append([r.value, r.stderr, r["fid_infinity"], r["fid_infinity_stderr"], exact])
                store.save()
                if args.verbose:
                    print(f"{key} rep {rep}: FID {r.value:.5g}, FID-inf {r['fid_infinity']:.5g}")
            x = np.array(done[: args.inf_reps])
            covered = np.abs(x[:, 2] - pop) <= 2 * x[:, 3]
            rows.append(
                {
                    "d": str(d),
                    "N": str(n),
                    "reps": str(len(x)),
                    "pop FID": pop,
                    "mean FID_N - pop": x[:, 0].mean() - pop,
                    "mean FID_inf - pop": x[:, 2].mean() - pop,
                    "+- (MC)": x[:, 2].std(ddof=1) / math.sqrt(len(x)),
                    "SD FID_inf": x[:, 2].std(ddof=1),
                    "mean SE_inf": x[:, 3].mean(),
                    "|FID_inf - pop| <= 2 SE": float(covered.mean()),
                    **(
                        {
                            "exact SE_inf": x[:, 4].mean(),
                            "first-order / exact": float(np.median(x[:, 3] / x[:, 4])),
                            "exact covers": float((np.abs(x[:, 2] - pop) <= 2 * x[:, 4]).mean()),
                        }
                        if x.shape[1] > 4
                        else {}
                    ),
                }
            )
    print(
        "\nFID-infinity (FID = a + b/N through N and the leave-one-block-out unions, K = 10) vs the population FID;"
        " SE_inf is the default (first order: FID's jackknife SE), 'exact' the leave-two-out jackknife"
    )
    print(_table(rows))
    print("acceptance: FID_inf within 2 SE of the population FID (coverage ~95 %)")


def part_demo(args: argparse.Namespace, store: Store) -> None:
    """The bundled demo: run twice and gate (pass); worse samplers on the same seeds (z in the table); SE ratios."""
    from diffeval.stats.uncertainty import paired_se

    runs = {"default": [], "again": [], **{f"steps {s}": ["--steps", str(s)] for s in args.demo_steps}, "eta 1": []}
    runs["eta 1"] = ["--eta", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for name, extra in runs.items():
            folder = Path(tmp) / name.replace(" ", "_")
            cmd = [sys.executable, "-m", "diffeval", "demo", "--out", str(folder), "--no-progress", *extra]
            subprocess.run(cmd, check=True, capture_output=True)
            out[name] = Report.load(folder / "report.json")
        for name in ("again", f"steps {args.demo_steps[-1]}"):
            print(f"\n$ diffeval gate --baseline <demo> --candidate <demo, {name}>")
            folder = Path(tmp)
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "diffeval",
                    "gate",
                    "--baseline",
                    str(folder / "default" / "report.json"),
                    "--candidate",
                    str(folder / name.replace(" ", "_") / "report.json"),
                ],
                capture_output=True,
                text=True,
            )
            print(proc.stdout + proc.stderr.strip().splitlines()[-1], f"(exit {proc.returncode})")
    rows = []
    base = out["default"].to_frame()
    for name in [n for n in runs if n not in ("default", "again")]:
        cand = out[name].to_frame()
        for _, b in base[base["kind"] == "metric"].iterrows():
            c = cand[cand["label"] == b["label"]].iloc[0]
            bd, cd = json.loads(b["details"]), json.loads(c["details"])
            unpaired = math.hypot(b["stderr"], c["stderr"])
            paired = paired_se(bd["pairing"], cd["pairing"]) if "pairing" in bd and "pairing" in cd else math.nan
            rows.append(
                {
                    "candidate": name,
                    "metric": b["label"],
                    "difference": c["value"] - b["value"],
                    "paired SE": paired,
                    "unpaired SE": unpaired,
                    "paired / unpaired": paired / unpaired if unpaired else math.nan,
                }
            )
    print("\npaired vs unpaired standard error of (candidate - demo) on the bundled demo model (same seeds 0..359)")
    print(_table(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["se", "gate", "infinity", "demo", "all"])
    p.add_argument("--dims", default="64,2048", help="feature dimensions of the SE part")
    p.add_argument("--ns", default="2000,10000", help="sample counts of the SE and infinity parts")
    p.add_argument("--reps", type=int, default=200, help="repetitions of the SE part")
    p.add_argument("--gate-d", type=int, default=64)
    p.add_argument("--gate-n", type=int, default=2000)
    p.add_argument("--gate-reps", type=int, default=100)
    p.add_argument("--inf-dims", default="64")
    p.add_argument("--inf-reps", type=int, default=200)
    p.add_argument("--demo-steps", default="20,10,5", help="fewer-steps candidates of the demo part")
    p.add_argument("--quick", action="store_true", help="small sizes: a CPU check of the script")
    p.add_argument("--out", default=None, help="JSON file keeping finished repetitions (resumes)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.dims, args.ns, args.reps, args.gate_reps, args.inf_reps, args.gate_n = "16", "400", 20, 20, 20, 400
        args.inf_dims = "16"
    args.dims = [int(x) for x in str(args.dims).split(",")]
    args.ns = [int(x) for x in str(args.ns).split(",")]
    args.inf_dims = [int(x) for x in str(args.inf_dims).split(",")]
    args.demo_steps = [int(x) for x in str(args.demo_steps).split(",")]
    store = Store(args.out)
    parts = {"se": part_se, "gate": part_gate, "infinity": part_infinity, "demo": part_demo}
    for name, fn in parts.items():
        if args.part in (name, "all"):
            fn(args, store)


if __name__ == "__main__":
    main()

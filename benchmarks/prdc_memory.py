"""Peak memory of precision / recall / density / coverage against N: it grows like the features (N d), not N².

    python benchmarks/prdc_memory.py                        # CUDA if present, else CPU: N = 5,000 and 20,000, d = 1024
    python benchmarks/prdc_memory.py --dim 64 --ns 2000,8000   # a quick CPU check

Each N runs in a fresh subprocess (so peaks do not mix); the table shows the peak (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set minus its size
before the features were made), the features' own size, and what one N x N float64 distance
matrix would take. The distances are computed in row blocks of at most 2^24 values (128 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(n: int, dim: int, device: str) -> None:
    from diffeval.metrics.prdc import prdc

    g = torch.Generator().manual_seed(0)
    base = _rss_mb()
    real = torch.randn(n, dim, generator=g, dtype=torch.float64).to(device)
    fake = torch.randn(n, dim, generator=g, dtype=torch.float64).to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    t = time.perf_counter()
    out = prdc(fake, real, block_ids=torch.arange(n) % 10, blocks=10)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - start) / 2**20
    else:
        peak = _rss_mb() - base
    seconds = time.perf_counter() - t
    print(json.dumps({"n": n, "peak_mb": peak, "seconds": seconds, "precision": out["precision"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", default="5000,20000")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.dim, args.device)
        return
    rows = []
    for n in [int(x) for x in args.ns.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--device", args.device]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"precision/recall/density/coverage (with the K = 10 jackknife), d = {args.dim}, {args.device}")
    print(f"{'N':>7} {'peak MB':>9} {'features MB':>12} {'N x N float64 MB':>17} {'seconds':>8}")
    for r in rows:
        feats = 2 * r["n"] * args.dim * 8 / 2**20
        full = r["n"] ** 2 * 8 / 2**20
        print(f"{r['n']:>7} {r['peak_mb']:>9.0f} {feats:>12.0f} {full:>17.0f} {r['seconds']:>8.1f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        ratio_n = b["n"] / a["n"]
        print(f"N x {ratio_n:g}: peak x {b['peak_mb'] / max(a['peak_mb'], 1e-9):.2f} (N^2 would be x {ratio_n**2:g})")


if __name__ == "__main__":
    main()

"""The training monitor's cost per training step, on the demo's own training loop (diffeval/demo/train.py).

    python benchmarks/monitor_overhead.py                 # 200 steps x 5 interleaved pairs, one thread
    python benchmarks/monitor_overhead.py --steps 50 --repeats 2

Each pair trains the demo denoiser for ``--steps`` steps from the same seed, once plain and once with a
``TrainingMonitor`` fed every step (its first-batch checks, and the per-sample losses binned by log-SNR);
the two runs alternate, so a slow moment of the machine hits both. Prints the median time per step of each and
the overhead in per cent (the target: at most 1 %).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffeval.demo.train import SCHEDULE, train_denoiser
from diffeval.diffusion import schedules
from diffeval.run.monitor import TrainingMonitor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window", type=int, default=100, help="the monitor's window (one host sync per window)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    schedule = schedules.get(SCHEDULE)
    plain, watched = [], []
    train_denoiser(5, log_every=0)  # warm-up
    for _ in range(args.repeats):
        t = time.perf_counter()
        train_denoiser(args.steps, log_every=0)
        plain.append((time.perf_counter() - t) / args.steps)
        monitor = TrainingMonitor(schedule, "eps", window=args.window)
        t = time.perf_counter()
        train_denoiser(args.steps, log_every=0, monitor=monitor)
        watched.append((time.perf_counter() - t) / args.steps)
    a, b = statistics.median(plain), statistics.median(watched)
    pairwise = [100 * (w - q) / q for q, w in zip(plain, watched, strict=True)]
    print(
        f"demo training loop, {args.steps} steps x {args.repeats} pairs, {args.threads} thread(s): plain"
        f" {1e3 * a:.2f} ms/step, with the monitor {1e3 * b:.2f} ms/step: overhead, median of the pairs"
        f" {statistics.median(pairwise):+.2f} % (pairwise: {', '.join(f'{x:+.1f}' for x in pairwise)} %; each"
        " monitored run pays its first-batch checks once, the first one also SciPy's import)"
    )


if __name__ == "__main__":
    main()

"""Sampler-speed table for a CIFAR-sized U-Net: DDIM 10/50 steps x batch 1/256 x fp32/bf16, plus the step hook's
overhead.

    python benchmarks/sampler_speed.py                       # on CUDA: the full table (35.7M-param U-Net)
    python benchmarks/sampler_speed.py --width 32 --batch-size 1 4 --steps 10   # a small CPU check

Per-step latency is the step timer's CUDA-synchronized median; images/s is batch / the
median whole-call time; warm-up calls are excluded; ``--compile`` reports compile time
separately. The last line is the harness overhead: the same sampler with the per-step
hook on vs off, and against a bare loop of the same model calls, at batch 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unet import cifar_sampler  # noqa: E402

from diffeval.run.bench import bench_grid, format_table, measure_hook_overhead  # noqa: E402


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--width", type=int, default=128, help="U-Net base width (128 = the 35.7M-param DDPM CIFAR net)"
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    params = sum(p.numel() for p in cifar_sampler(steps=1, width=args.width).model.parameters()) / 1e6
    print(f"CIFAR U-Net width {args.width}: {params:.1f}M parameters, DDIM (eta = 0), linear schedule, random weights")
    results = bench_grid(
        lambda steps: cifar_sampler(steps=steps, width=args.width, device=args.device),
        image_shape=(3, 32, 32),
        steps=args.steps,
        batch_sizes=args.batch_size,
        dtypes=args.dtype,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        compile=args.compile,
    )
    print(format_table(results))
    o = measure_hook_overhead(
        cifar_sampler(steps=min(args.steps), width=args.width, device=args.device),
        image_shape=(3, 32, 32),
        batch_size=1,
        device=args.device,
        repeats=10,
    )
    print(
        f"\nstep hook overhead at batch 1 ({o.steps} steps): {o.hook_overhead_pct:+.2f}% of a step"
        f" ({o.sampler_step_ms:.3f} ms with the per-step hook, {o.sampler_off_step_ms:.3f} ms without); whole harness"
        f" vs a bare loop of the model calls ({o.bare_step_ms:.3f} ms/step): {o.harness_overhead_pct:+.2f}%"
    )


if __name__ == "__main__":
    main()

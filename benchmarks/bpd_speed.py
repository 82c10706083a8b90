"""Bits/dim throughput: images/s of the discrete VLB and the continuous VDM estimator.

    python benchmarks/bpd_speed.py                   # CPU, or CUDA when available
    python benchmarks/bpd_speed.py --device cuda --n 2048

Discrete VLB: the bundled digits denoiser on the held-out digits (8x8), 50 strata
(51 network evaluations per image). VDM: a CIFAR-sized (3x32x32) random-weight
convolutional eps-model on the VDM schedule, n_t = 1 (1 evaluation per image).
"""

from __future__ import annotations

import argparse
import time

import torch

from diffeval import schedules
from diffeval.data.sources import TensorSource
from diffeval.demo.bundle import load_denoiser
from diffeval.demo.data import load_digits
from diffeval.engine.loop import measure
from diffeval.metrics.bpd import BitsPerDim


class ConvEps(torch.nn.Module):
    """A small random-weight eps-model for 3x32x32 images (timing only)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(4, width, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]).to(x.dtype)], 1))


def _time(metric: BitsPerDim, images: torch.Tensor, batch_size: int) -> tuple[float, dict]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = measure(TensorSource(images), extractors=[], metrics=[metric], batch_size=batch_size)[metric.label]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images.shape[0] / (time.perf_counter() - t), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--batch-size", type=int, default=120)
    args = parser.parse_args()
    digits = load_digits("test").images[: args.n]
    rows = []
    vlb = BitsPerDim(load_denoiser(device=args.device), schedules.cosine(), "eps", "vlb", strata=50)
    rate, out = _time(vlb, digits, args.batch_size)
    rows.append(("VLB, digits 1x8x8, 50 strata", f"{rate:.1f}", f"{out.value:.3f} ± {out.stderr:.3f}"))
    torch.manual_seed(0)
    cifar = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8)
    vdm = BitsPerDim(ConvEps().to(args.device), schedules.vdm(), "eps", "vdm", n_t=1)
    rate, out = _time(vdm, cifar, args.batch_size)
    rows.append(("VDM, random conv 3x32x32, n_t=1", f"{rate:.1f}", f"{out.value:.3f} ± {out.stderr:.3f}"))
    print(
        f"device {args.device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if args.device.startswith("cuda")
            else f", {torch.get_num_threads()} threads"
        )
        + f", n = {args.n}"
    )
    print(f"{'estimator':34s} {'images/s':>10s}  bits/dim")
    for name, rate_s, value in rows:
        print(f"{name:34s} {rate_s:>10s}  {value}")


if __name__ == "__main__":
    main()

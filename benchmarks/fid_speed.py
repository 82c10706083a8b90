"""FID speed and memory: diffeval against torch-fidelity, in one run.

    python benchmarks/fid_speed.py                 # CPU (or CUDA when available), default sizes
    python benchmarks/fid_speed.py --device cuda --n-extract 2048 --n-memory 20000

Prints three tables:
1. FID from statistics at d = 2048: diffeval's ``frechet_distance`` (float64, Cholesky +
   eigvalsh, on --device) vs torch-fidelity's ``fid_statistics_to_metric`` (NumPy
   ``eigvals(S1 S2)`` on the CPU), best of --repeats, and their agreement.
2. Inception feature extraction throughput (random weights, same images): diffeval's
   extractor vs torch-fidelity's own extraction path (its DataLoader + network).
3. Peak memory of a streaming FID over N images (fresh subprocess per N, demo extractor):
   it must not grow with N beyond the image batches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _spd(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.RandomState(seed)
    a = g.randn(d, d + 64)
    return g.randn(d) * 0.1, a @ a.T / (d + 64)


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_statistics(d: int, device: str, repeats: int) -> list[tuple[str, str]]:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    from diffeval.metrics.fid import frechet_distance

    mu1, s1 = _spd(d, 0)
    mu2, s2 = _spd(d, 1)
    t_theirs, theirs = _best(
        lambda: fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)[
            "frechet_inception_distance"
        ],
        repeats,
    )
    args = [torch.as_tensor(x, dtype=torch.float64, device=device) for x in (mu1, s1, mu2, s2)]
    frechet_distance(*args)  # warm-up (CUDA context, kernels)
    t_ours, ours = _best(lambda: frechet_distance(*args).value, repeats)
    rel = abs(ours - theirs) / abs(theirs)
    return [
        ("d", str(d)),
        ("torch-fidelity fid_statistics_to_metric (cpu) [s]", f"{t_theirs:.3f}"),
        (f"diffeval frechet_distance ({device}) [s]", f"{t_ours:.3f}"),
        ("speed-up (torch-fidelity / diffeval)", f"{t_theirs / t_ours:.2f}x"),
        ("relative difference of the two FIDs", f"{rel:.2e}"),
    ]


def bench_extraction(n: int, batch_size: int, device: str) -> list[tuple[str, str]]:
    from inception_fixture import save_random_inception
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from diffeval.features import InceptionV3Extractor

    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return images[i]

    with tempfile.TemporaryDirectory() as tmp:
        weights = save_random_inception(Path(tmp) / "inception.pt")
        ours = InceptionV3Extractor(weights=str(weights), device=device, batch_size=batch_size)
        ours(images[:batch_size])  # warm-up
        t_ours, f_ours = _best(lambda: ours(images.to(device))["2048"], 1)
        cuda = device.startswith("cuda")
        theirs = create_feature_extractor(
            "inception-v3-compat", ["2048"], cuda=cuda, feature_extractor_weights_path=str(weights), verbose=False
        )
        t_theirs, f_theirs = _best(
            lambda: get_featuresdict_from_dataset(Images(), theirs, batch_size, cuda, False, False)["2048"], 1
        )
    diff = float((f_ours.cpu() - f_theirs.cpu()).abs().max() / f_theirs.abs().max())
    return [
        ("images (32x32 -> 299x299)", str(n)),
        ("torch-fidelity extraction [images/s]", f"{n / t_theirs:.1f}"),
        (f"diffeval extraction ({device}) [images/s]", f"{n / t_ours:.1f}"),
        ("ratio (diffeval / torch-fidelity)", f"{t_theirs / t_ours:.2f}x"),
        ("max relative feature difference", f"{diff:.2e}"),
    ]


_MEMORY_CHILD = """
import json, resource, sys, torch
from diffeval.demo.bundle import DigitsFeatureExtractor
from diffeval.demo.run import reference_moments
from diffeval.engine.loop import measure
from diffeval.metrics import FID
from diffeval.data.sources import TensorSource
n, batch = int(sys.argv[1]), int(sys.argv[2])
ex = DigitsFeatureExtractor()
ref = reference_moments(ex)

class Stream:
    name = "synthetic"
    def __len__(self): return n
    def load(self, idx):
        g = torch.Generator().manual_seed(idx[0])
        return torch.randint(0, 256, (len(idx), 1, 8, 8), generator=g, dtype=torch.uint8)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fid = FID(ref, "demo-digits", "features", allow_unmatched=True)
out = measure(Stream(), extractors=[ex], metrics=[fid], batch_size=batch)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "peak_rss_mb": peak / 1024, "before_mb": base / 1024, "fid": out[fid.label].value}))
"""


def bench_memory(sizes: list[int], batch_size: int) -> list[tuple[str, str]]:
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(n), str(batch_size)], capture_output=True, text=True, check=True
        )
        data = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            (
                f"N = {n}: peak RSS [MiB] (growth during the FID)",
                f"{data['peak_rss_mb']:.1f} ({data['peak_rss_mb'] - data['before_mb']:+.1f})",
            )
        )
    return rows


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 16))
    for key, value in rows:
        print(f"{key:{width}s}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-extract", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-memory", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if args.device.startswith("cuda")
            else f", {torch.get_num_threads()} threads"
        )
    )
    _table("1. FID from statistics", bench_statistics(args.dim, args.device, args.repeats))
    _table("2. Inception feature extraction", bench_extraction(args.n_extract, args.batch_size, args.device))
    _table("3. Streaming FID memory", bench_memory(args.n_memory, 500))


if __name__ == "__main__":
    main()

"""Evaluation at scale, in one run: end-to-end FID vs the bare sampling loop, FID-from-statistics time,
exact/fast Inception throughput vs torch-fidelity's path, and peak GPU memory vs N.

    python benchmarks/scale_eval.py                                   # on one GPU: the full table (N = 10,000)
    python benchmarks/scale_eval.py --n 64 --batch-size 16 --steps 2 --width 32 --n-extract 32   # CPU check

The sampler is the CIFAR-sized U-Net (random weights; bf16 autocast on CUDA), DDIM; the
Inception network has random weights too (no downloads here), which changes nothing about
speed. Targets (issue "Scale"): evaluation / bare loop <= 1.05x; FID from statistics
<= 0.1 s at d = 2048; exact features >= 1.0x and fast features >= 3x torch-fidelity's path;
peak memory flat in N.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from unet import cifar_sampler  # noqa: E402

from diffeval.engine.loop import evaluate  # noqa: E402
from diffeval.features import InceptionV3Extractor  # noqa: E402
from diffeval.metrics import FID  # noqa: E402
from diffeval.metrics.fid import frechet_distance  # noqa: E402
from diffeval.run.bench import _precision  # noqa: E402
from diffeval.samplers import SeedRNG  # noqa: E402
from diffeval.stats.moments import FeatureMoments  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dtype", default="bf16" if cuda else "fp32")
    p.add_argument("--n-extract", type=int, default=5000)
    p.add_argument("--compile", action="store_true", help="compile the fast Inception path")
    a = p.parse_args()
    device = torch.device(a.device)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        from inception_fixture import save_random_inception

        weights = str(save_random_inception(Path(tmp) / "inception.pt"))
        exact = InceptionV3Extractor(weights=weights, device=str(device), batch_size=a.batch_size)
        fast = InceptionV3Extractor(
            weights=weights, device=str(device), batch_size=a.batch_size, fast=True, compile=a.compile
        )

        # -- 1. end-to-end FID vs the bare sampling loop ----------------------------------------
        sampler = cifar_sampler(steps=a.steps, width=a.width, device=str(device), timing="run")
        reference = FeatureMoments()
        reference.update(
            exact(torch.randint(0, 256, (max(a.batch_size, 64), 3, 32, 32), dtype=torch.uint8))["2048"]
        )  # stand-in reference statistics

        def bare():
            for start in range(0, a.n, a.batch_size):
                rng = SeedRNG(range(start, min(a.n, start + a.batch_size)), device)
                sampler(rng.randn((3, 32, 32)), rng=rng)

        with _precision(device, a.dtype):
            bare_s, _ = _timed(bare, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            fid_metric = FID(reference, exact.key, "2048", allow_unmatched=True)
            eval_s, _ = _timed(
                lambda: evaluate(
                    sampler,
                    seeds=range(a.n),
                    image_shape=(3, 32, 32),
                    extractors=[exact],
                    metrics=[fid_metric],
                    batch_size=a.batch_size,
                    device=device,
                    step_timing=False,
                    compute=False,
                ),
                device,
            )
            compute_s, fid_result = _timed(fid_metric.compute, device)
            peak_full = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            quarter = max(a.batch_size, a.n // 4)
            evaluate(
                sampler,
                seeds=range(quarter),
                image_shape=(3, 32, 32),
                extractors=[exact],
                metrics=[FID(reference, exact.key, "2048", allow_unmatched=True)],
                batch_size=a.batch_size,
                device=device,
                step_timing=False,
            )
            peak_quarter = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        rows += [
            (f"samples (CIFAR U-Net width {a.width}, DDIM-{a.steps}, {a.dtype}, batch {a.batch_size})", f"{a.n}"),
            ("bare sampling loop [s]", f"{bare_s:.2f}"),
            ("evaluation incl. Inception features + FID's 10 seed blocks of moments [s]", f"{eval_s:.2f}"),
            ("evaluation / bare loop (target <= 1.05x)", f"{eval_s / bare_s:.3f}x"),
            ("then FID + jackknife SE + FID-inf (56 Frechet distances at d = 2048) [s]", f"{compute_s:.2f}"),
            (
                "FID (random weights: a timing run)",
                f"{fid_result.value:.4g} +- {fid_result.stderr or float('nan'):.3g}",
            ),
            (f"peak GPU memory [MiB] at N = {quarter} / N = {a.n}", f"{peak_quarter:.0f} / {peak_full:.0f}"),
        ]

        # -- 2. FID from statistics at d = 2048 --------------------------------------------------
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        g = torch.Generator().manual_seed(0)
        m1, m2 = (
            torch.randn(2048, generator=g, dtype=torch.float64),
            torch.randn(2048, generator=g, dtype=torch.float64),
        )
        x1, x2 = (
            torch.randn(2048, 2112, generator=g, dtype=torch.float64),
            torch.randn(2048, 2112, generator=g, dtype=torch.float64),
        )
        s1, s2 = x1 @ x1.T / 2112, x2 @ x2.T / 2112
        theirs_s, theirs = _timed(
            lambda: fid_statistics_to_metric(
                {"mu": m1.numpy(), "sigma": s1.numpy()}, {"mu": m2.numpy(), "sigma": s2.numpy()}, False
            )["frechet_inception_distance"],
            torch.device("cpu"),
        )
        args_dev = [t.to(device) for t in (m1, s1, m2, s2)]
        frechet_distance(*args_dev)
        ours_s, ours = _timed(lambda: frechet_distance(*args_dev).value, device)
        rows += [
            (
                "FID from statistics, d = 2048: torch-fidelity (CPU) / diffeval (" + a.device + ") [s]",
                f"{theirs_s:.3f} / {ours_s:.3f} (rel diff {abs(ours - theirs) / theirs:.1e})",
            )
        ]

        # -- 3. feature throughput: exact, fast, torch-fidelity's own path -----------------------
        from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

        images = torch.randint(0, 256, (a.n_extract, 3, 32, 32), dtype=torch.uint8)

        class Images(torch.utils.data.Dataset):
            def __len__(self):
                return a.n_extract

            def __getitem__(self, i):
                return images[i]

        theirs_net = create_feature_extractor(
            "inception-v3-compat",
            ["2048"],
            cuda=device.type == "cuda",
            feature_extractor_weights_path=weights,
            verbose=False,
        )
        get_featuresdict_from_dataset(
            Images(), theirs_net, a.batch_size, device.type == "cuda", False, False
        )  # warm-up
        tf_s, tf_feat = _timed(
            lambda: get_featuresdict_from_dataset(
                Images(), theirs_net, a.batch_size, device.type == "cuda", False, False
            )["2048"],
            device,
        )
        on_device = images.to(device)
        exact(on_device[: a.batch_size]), fast(on_device[: a.batch_size])  # warm-up (and compile)
        ex_s, ex_feat = _timed(lambda: exact(on_device)["2048"], device)
        fa_s, fa_feat = _timed(lambda: fast(on_device)["2048"], device)
        rel = float((fa_feat.cpu() - ex_feat.cpu()).norm() / ex_feat.cpu().norm())
        m_ex, m_fa = FeatureMoments(), FeatureMoments()
        m_ex.update(ex_feat)
        m_fa.update(fa_feat)
        fid_gap = (
            frechet_distance(
                m_ex.mean, m_ex.cov, reference.mean.to(m_ex.mean.device), reference.cov.to(m_ex.mean.device)
            ).value
            - frechet_distance(
                m_fa.mean, m_fa.cov, reference.mean.to(m_fa.mean.device), reference.cov.to(m_fa.mean.device)
            ).value
        )
        rows += [
            (f"Inception features, {a.n_extract} images: torch-fidelity path [images/s]", f"{a.n_extract / tf_s:.0f}"),
            ("diffeval exact [images/s] (target >= 1.0x)", f"{a.n_extract / ex_s:.0f} ({tf_s / ex_s:.2f}x)"),
            (
                "diffeval fast, bf16 channels-last" + (" compiled" if a.compile else "") + " [images/s] (target >= 3x)",
                f"{a.n_extract / fa_s:.0f} ({tf_s / fa_s:.2f}x)",
            ),
            ("fast vs exact: feature relative error / FID difference", f"{rel:.2e} / {fid_gap:+.3g}"),
            (
                "exact vs torch-fidelity: max feature difference",
                f"{float((ex_feat.cpu() - tf_feat.cpu()).abs().max()):.2e}",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    print(
        f"device {a.device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
        + f", torch {torch.__version__}"
    )
    for key, value in rows:
        print(f"{key:{width}s}  {value}")


if __name__ == "__main__":
    main()

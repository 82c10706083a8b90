"""diffeval beside its peers, in one interleaved run: the same inputs, threads pinned equally, values compared.

    python benchmarks/peers.py                      # CPU, one thread each side (the numbers in docs/scale.md)
    python benchmarks/peers.py --quick              # small sizes: a check of the script
    python benchmarks/peers.py --device cuda        # the same table on a GPU (diffeval's side on the device)
    python benchmarks/peers.py --whole              # also `diffeval fid DIR DIR` vs `fidelity --fid`, whole process

The peers come from the ``bench`` extra (``pip install -e ".[bench]"``: torch-fidelity, torchmetrics, clean-fid,
pytorch-fid, prdc); a missing peer is a skipped row, said so. Every row times diffeval and its peer alternately,
``--repeats`` times each (median), after one untimed warm-up of each; the ratio is diffeval / peer (below 1:
diffeval is faster) and the last column compares the values (relative difference, or both values).

Rows: the Fréchet distance alone (d = 2048) against torch-fidelity, torchmetrics, clean-fid and pytorch-fid; FID's
whole compute with its jackknife standard error and FID∞ against torch-fidelity's plain FID on the same
statistics; seed-block accumulation (``FID.update``, rows/s) against torchmetrics' ``update`` and plain
``FeatureMoments.update``; KID with its jackknife against torch-fidelity; PRDC with its jackknife against the
prdc package (d = 2048 and 64); the Inception Score from logits against torch-fidelity; CMMD against its direct
formula.
"""

from __future__ import annotations

import argparse
import os
import sys

_early = argparse.ArgumentParser(add_help=False)
_early.add_argument("--threads", type=int, default=1)
_THREADS = _early.parse_known_args()[0].threads
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before NumPy and torch load BLAS
    os.environ[_var] = str(_THREADS)

import importlib.util  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffeval.metrics import FID  # noqa: E402
from diffeval.metrics.base import Batch  # noqa: E402
from diffeval.metrics.cmmd import cmmd  # noqa: E402
from diffeval.metrics.fid import frechet_distance  # noqa: E402
from diffeval.metrics.inception_score import inception_score  # noqa: E402
from diffeval.metrics.kid import kid_with_jackknife  # noqa: E402
from diffeval.metrics.prdc import prdc  # noqa: E402
from diffeval.stats.moments import FeatureMoments  # noqa: E402

ROWS: list[dict[str, str]] = []


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def pair(what: str, ours: Callable[[], Any], peer: Callable[[], Any], peer_name: str, repeats: int, agree: Any) -> None:
    """Time ``ours`` and ``peer`` alternately (one warm-up each, then ``repeats`` each); one table row."""
    ours(), peer()
    t_ours, t_peer, v_ours, v_peer = [], [], None, None
    for _ in range(repeats):
        dt, v_ours = _timed(ours)
        t_ours.append(dt)
        dt, v_peer = _timed(peer)
        t_peer.append(dt)
    a, b = statistics.median(t_ours), statistics.median(t_peer)
    ROWS.append(
        {
            "what": what,
            "diffeval": f"{a:.3g} s",
            "peer": f"{peer_name} {b:.3g} s",
            "diffeval / peer": f"{a / b:.2f}",
            "values": agree(v_ours, v_peer),
        }
    )
    print(f"  {what}: {a:.3g} s vs {peer_name} {b:.3g} s", file=sys.stderr)


def skipped(what: str, why: str) -> None:
    ROWS.append({"what": what, "diffeval": "", "peer": f"skipped: {why}", "diffeval / peer": "", "values": ""})


def _rel(a: float, b: float) -> str:
    return (
        f"rel. diff {abs(a - b) / max(abs(b), 1e-300):.1e}" if math.isfinite(a) and math.isfinite(b) else f"{a} / {b}"
    )


def _statistics(d: int, n: int, seed: int) -> tuple[FeatureMoments, FeatureMoments]:
    """Generated and reference moments with a decaying spectrum, like Inception features'."""
    g = torch.Generator().manual_seed(seed)
    lam = 1.0 / (1.0 + torch.arange(d, dtype=torch.float64) / 8.0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    ref, gen = FeatureMoments(), FeatureMoments()
    for start in range(0, n, 1000):
        m = min(1000, n - start)
        ref.update(torch.randn(m, d, generator=g, dtype=torch.float64) * lam.sqrt())
        gen.update((torch.randn(m, d, generator=g, dtype=torch.float64) * (1.2 * lam).sqrt()) @ q.T + 0.02)
    return gen, ref


def frechet_rows(args: argparse.Namespace) -> None:
    d = args.d
    gen, ref = _statistics(d, max(2 * d, 4000) if not args.quick else 2 * d, 0)
    mu1, s1, mu2, s2 = gen.mean, gen.cov, ref.mean, ref.cov
    dev = torch.device(args.device)
    ours = lambda: frechet_distance(mu1.to(dev), s1.to(dev), mu2.to(dev), s2.to(dev)).value  # noqa: E731
    n1, c1, n2, c2 = (t.numpy() for t in (mu1, s1, mu2, s2))
    peers = {
        "torch-fidelity": ("torch_fidelity", lambda: _tf_fid(n1, c1, n2, c2)),
        "torchmetrics": ("torchmetrics", lambda: _tm_fid(mu1, s1, mu2, s2)),
        "clean-fid": ("cleanfid", lambda: float(__import__("cleanfid.fid").fid.frechet_distance(n1, c1, n2, c2))),
        "pytorch-fid": (
            "pytorch_fid",
            lambda: float(__import__("pytorch_fid.fid_score").fid_score.calculate_frechet_distance(n1, c1, n2, c2)),
        ),
    }
    for name, (module, fn) in peers.items():
        if _have(module):
            pair(f"Fréchet distance alone, d = {d}", ours, fn, name, args.repeats, _rel)
        else:
            skipped(f"Fréchet distance alone, d = {d}", f"{name} not installed")


def _tf_fid(n1: Any, c1: Any, n2: Any, c2: Any) -> float:
    import torch_fidelity.metric_fid as tfm

    return float(
        tfm.fid_statistics_to_metric({"mu": n1, "sigma": c1}, {"mu": n2, "sigma": c2}, False)[
            "frechet_inception_distance"
        ]
    )


def _tm_fid(mu1: Any, s1: Any, mu2: Any, s2: Any) -> float:
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(mu1, s1, mu2, s2))


def _fid_metric(d: int, n: int, device: str) -> tuple[FID, FeatureMoments]:
    g = torch.Generator().manual_seed(1)
    lam = 1.0 / (1.0 + torch.arange(d, dtype=torch.float64) / 8.0)
    ref = FeatureMoments()
    ref.update(torch.randn(n, d, generator=g, dtype=torch.float64) * lam.sqrt())
    metric = FID(ref, "x", "f")
    for start in range(0, n, 500):
        f = (torch.randn(500, d, generator=g, dtype=torch.float64) * (1.2 * lam).sqrt() + 0.02).float()
        metric.update(Batch(features={"x": {"f": f.to(device)}}, seeds=list(range(start, start + 500))))
    return metric, ref


def fid_compute_row(args: argparse.Namespace) -> None:
    what = f"FID compute with its SE and FID∞, d = {args.d}"
    if not _have("torch_fidelity"):
        return skipped(what, "torch-fidelity not installed")
    metric, ref = _fid_metric(args.d, 2000 if args.quick else 5000, args.device)
    gen = metric.generated
    n1, c1, n2, c2 = (t.cpu().numpy() for t in (gen.mean, gen.cov, ref.mean, ref.cov))
    pair(
        what,
        lambda: metric.compute().value,
        lambda: _tf_fid(n1, c1, n2, c2),
        "torch-fidelity plain FID",
        args.repeats,
        _rel,
    )


def update_rows(args: argparse.Namespace) -> None:
    d, n, batch = args.d, (5000 if args.quick else 50000), args.batch
    g = torch.Generator().manual_seed(2)
    pool = [torch.randn(batch, d, generator=g).abs().to(args.device) for _ in range(4)]
    batches = [pool[i % 4] for i in range(n // batch)]
    ref = FeatureMoments()
    ref.update(torch.randn(d + 10, d, dtype=torch.float64))

    def blocked() -> float:
        metric, start = FID(ref, "x", "f"), 0
        for f in batches:
            metric.update(Batch(features={"x": {"f": f}}, seeds=list(range(start, start + f.shape[0]))))
            start += f.shape[0]
        metric.flush()
        _sync(args.device)
        return float(metric.blocks_moments[0].n)

    def plain() -> float:
        m = FeatureMoments()
        for f in batches:
            m.update(f)
        _sync(args.device)
        return float(m.n)

    rate = f"{len(batches) * batch} rows of d = {d} in batches of {batch}"
    pair(
        f"FID.update, 10 seed blocks vs plain FeatureMoments.update ({rate})",
        blocked,
        plain,
        "plain",
        args.repeats,
        lambda a, b: "same rows",
    )
    if _have("torchmetrics"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        class Identity(torch.nn.Module):
            num_features = d

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x

        def tm() -> float:
            metric = FrechetInceptionDistance(feature=Identity(), normalize=False).to(args.device)
            for f in batches:
                metric.update(f, real=False)
            _sync(args.device)
            return 0.0

        pair(
            f"FID.update, 10 seed blocks vs torchmetrics FID.update ({rate})",
            blocked,
            tm,
            "torchmetrics",
            args.repeats,
            lambda a, b: "same rows",
        )
    else:
        skipped("FID.update vs torchmetrics", "torchmetrics not installed")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def kid_row(args: argparse.Namespace) -> None:
    n = 2000 if args.quick else 5000
    what = f"KID with its jackknife, N = {n} vs {n}, d = {args.d}, 100 subsets of 1000"
    if not _have("torch_fidelity"):
        return skipped(what, "torch-fidelity not installed")
    import torch_fidelity.metric_kid as tfk

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, args.d, generator=g).abs(), (torch.randn(n, args.d, generator=g) * 1.1).abs()
    ids = torch.arange(n) % 10
    ours = lambda: kid_with_jackknife(x.to(args.device), y.to(args.device), 100, 1000, 2020, 10, ids).value  # noqa: E731

    def peer() -> float:
        out = tfk.kid_features_to_metric(
            x,
            y,
            kid_subsets=100,
            kid_subset_size=1000,
            verbose=False,
            kid_degree=3,
            kid_gamma=None,
            kid_coef0=1,
            rng_seed=2020,
        )
        return float(out["kernel_inception_distance_mean"])

    pair(what, ours, peer, "torch-fidelity (float32)", args.repeats, lambda a, b: f"{a:.6g} vs {b:.6g}")


def prdc_rows(args: argparse.Namespace) -> None:
    n = 2000 if args.quick else 5000
    for d in (args.d, 64):
        what = f"PRDC k = 5 with its jackknife (10 seed blocks), N = {n} vs {n}, d = {d}"
        if not _have("prdc"):
            skipped(what, "prdc not installed")
            continue
        import prdc as peer_prdc

        g = torch.Generator().manual_seed(4)
        x = torch.randn(n, d, generator=g) @ (torch.randn(d, d, generator=g) / d**0.5)
        y = torch.randn(n, d, generator=g) @ (torch.randn(d, d, generator=g) / d**0.5) * 1.05 + 0.02
        ids = torch.arange(n) % 10
        keys = ("precision", "recall", "density", "coverage")

        def ours(x=x, y=y, ids=ids, keys=keys) -> tuple[float, ...]:
            out = prdc(y.to(args.device), x.to(args.device), k_pr=5, k_dc=5, block_ids=ids, blocks=10)
            return tuple(out[k] for k in keys)

        def peer(x=x, y=y, keys=keys) -> tuple[float, ...]:
            out = peer_prdc.compute_prdc(real_features=x.numpy(), fake_features=y.numpy(), nearest_k=5)
            return tuple(float(out[k]) for k in keys)

        pair(what, ours, peer, "prdc", args.repeats, lambda a, b: "equal" if np.allclose(a, b) else f"{a} vs {b}")


def is_and_cmmd_rows(args: argparse.Namespace) -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2000 if args.quick else 10000, 1008, generator=g) * 3
    if _have("torch_fidelity"):
        import torch_fidelity.metric_isc as tfi

        pair(
            f"Inception Score from logits, N = {logits.shape[0]}",
            lambda: inception_score(logits.to(args.device))[0],
            lambda: float(tfi.isc_features_to_metric(logits, 10, True, 2020)["inception_score_mean"]),
            "torch-fidelity",
            args.repeats,
            _rel,
        )
    n = 1000 if args.quick else 2000
    x = torch.nn.functional.normalize(torch.randn(n, 768, generator=g, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(n, 768, generator=g, dtype=torch.float64) + 0.05, dim=1)

    def direct() -> float:  # the paper's formula (min-variance MMD^2 x 1000, sigma 10), NumPy float64
        a, b = x.numpy(), y.numpy()
        gamma = 1 / (2 * 10.0**2)

        def k(p: np.ndarray, q: np.ndarray) -> float:
            sq = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2 * p @ q.T
            return float(np.exp(-gamma * sq).mean())

        return 1000 * (k(a, a) + k(b, b) - 2 * k(a, b))

    pair(
        f"CMMD, N = {n}, d = 768",
        lambda: cmmd(x.to(args.device), y.to(args.device)).value,
        direct,
        "direct formula (NumPy)",
        args.repeats,
        _rel,
    )


def whole_process_row(args: argparse.Namespace) -> None:
    """`diffeval fid DIR DIR` vs `fidelity --fid` on 150 PNGs each with the same random Inception weights."""
    what = "`diffeval fid DIR DIR` vs `fidelity --fid`, 150 PNGs each, whole process"
    if shutil.which("fidelity") is None or shutil.which("diffeval") is None:
        return skipped(what, "the fidelity or diffeval command is not on PATH")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from inception_fixture import save_random_inception
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = save_random_inception(root / "inception.pth")
        rng = np.random.default_rng(0)
        for name, shift in (("a", 0), ("b", 20)):
            (root / name).mkdir()
            for i in range(150):
                img = np.clip(rng.normal(128 + shift, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / name / f"{i:04d}.png")
        env = os.environ | {"DIFFEVAL_OFFLINE": "1"}
        cpu = ["--cpu"] if args.device == "cpu" else []
        ours = [
            "diffeval",
            "fid",
            "a",
            "b",
            "--weights",
            str(weights),
            "--no-progress",
            "--json",
            "--device",
            args.device,
        ]
        peer = [
            "fidelity",
            "--input1",
            "a",
            "--input2",
            "b",
            "--fid",
            *cpu,
            "--silent",
            "--feature-extractor-weights-path",
            str(weights),
        ]

        def run(cmd: list[str]) -> float:
            out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True).stdout
            if cmd[0] == "diffeval":
                return float(__import__("json").loads(out)["fid"])
            return float(out.strip().split()[-1])

        pair(what, lambda: run(ours), lambda: run(peer), "fidelity --fid", max(1, args.repeats // 2), _rel)


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "frechet": frechet_rows,
    "fid": fid_compute_row,
    "update": update_rows,
    "kid": kid_row,
    "prdc": prdc_rows,
    "is-cmmd": is_and_cmmd_rows,
    "whole": whole_process_row,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="threads on each side (BLAS, OpenMP and torch)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (diffeval's side; the NumPy peers stay on the CPU)")
    p.add_argument("--d", type=int, default=2048, help="feature dimension of the FID, KID and PRDC rows")
    p.add_argument("--batch", type=int, default=64, help="rows per batch of the accumulation rows")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side (median)")
    p.add_argument("--quick", action="store_true", help="small sizes: a check of the script, not figures to quote")
    p.add_argument("--whole", action="store_true", help="also time `diffeval fid DIR DIR` vs `fidelity --fid`")
    p.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these rows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.d, args.repeats = min(args.d, 256), 1
    started = time.perf_counter()
    print(
        f"diffeval vs peers: {args.threads} thread(s) each side, device {args.device}, torch {torch.__version__}",
        file=sys.stderr,
    )
    chosen = args.only or [name for name in PARTS if name != "whole" or args.whole]
    for name in chosen:
        PARTS[name](args)
    cols = list(ROWS[0])
    widths = [max(len(c), *(len(r[c]) for r in ROWS)) for c in cols]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in ROWS:
        print("| " + " | ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print(f"\n({time.perf_counter() - started:.0f} s; threads {args.threads}; device {args.device})")


if __name__ == "__main__":
    main()

"""Reproducible training of the demo's denoiser, flow model and classifier (fixed seed, CPU).

    python -m diffeval.demo.train --out diffeval/demo/weights                  # all three
    python -m diffeval.demo.train --out diffeval/demo/weights --models flow    # flow.pt only

writes ``denoiser.pt`` (eps-prediction, cosine schedule; EMA weights), ``flow.pt`` (flow matching, velocity
prediction on the flow path; EMA weights) and ``classifier.pt``, and prints their SHA-256,
which :mod:`diffeval.demo.bundle` pins. Bit-identical reruns need the same torch
version, CPU kind and ``--threads``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffeval.demo.data import load_digits
from diffeval.demo.networks import NUM_CLASSES, DigitsClassifier, DigitsDenoiser
from diffeval.diffusion import schedules
from diffeval.features.weights import sha256_file

__all__ = ["train_denoiser", "train_classifier", "main"]

LABEL_DROPOUT = 0.25


def _lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _noised_eps(x0: torch.Tensor, gen: torch.Generator, schedule: schedules.Schedule) -> _Noised:
    """DDPM's objective: a uniform training index t, ``x_t = alpha_t x0 + sigma_t eps``, target eps."""
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    alpha, sigma = schedule.alpha.float()[t, None, None, None], schedule.sigma.float()[t, None, None, None]
    return _Noised(alpha * x0 + sigma * eps, t.float(), eps, t)


def _noised_flow(x0: torch.Tensor, gen: torch.Generator, schedule: schedules.Schedule) -> _Noised:
    """Flow matching (rectified flow): ``t ~ U(0, 1]``, ``x_t = (1 - t) x0 + t eps``, target the velocity
    ``u = eps - x0``; the network's time input is ``1000 t`` (the ``flow`` schedule's model time)."""
    t = 1.0 - torch.rand(x0.shape[0], generator=gen)  # (0, 1]
    eps = torch.randn(x0.shape, generator=gen)
    tt = t[:, None, None, None]
    log_snr = 2 * (torch.log1p(-t.double()) - torch.log(t.double()))  # -inf at t = 1
    return _Noised((1 - tt) * x0 + tt * eps, 1000.0 * t, eps - x0, log_snr)


@dataclass(frozen=True)
class _Noised:
    x_t: torch.Tensor
    model_time: torch.Tensor
    target: torch.Tensor
    monitor_key: torch.Tensor  # what TrainingMonitor.observe_loss reads: the index (eps) or the log-SNR (flow)


SCHEDULE = "cosine"  # the eps objective's schedule (denoiser.pt)
OBJECTIVES = {"eps": (SCHEDULE, _noised_eps), "flow": ("flow", _noised_flow)}


def train_denoiser(
    steps: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    ema_decay: float = 0.999,
    log_every: int = 500,
    *,
    monitor: Any = None,
    data: torch.Tensor | None = None,
    objective: str = "eps",
) -> DigitsDenoiser:
    """Diffusion training of the digits U-Net on the train split with label dropout; returns the EMA model.

    ``objective`` ``eps``: eps-prediction DDPM training on the cosine schedule (the demo's ``denoiser.pt``);
    ``flow``: flow matching, the velocity ``eps - x0`` on the path ``(1 - t) x0 + t eps`` (``flow.pt``).
    ``monitor`` (a :class:`diffeval.run.monitor.TrainingMonitor`) sees every batch as the model receives it and
    every step's per-sample losses; ``data`` replaces the train split's images in [-1, 1] (e.g. to show the
    monitor catching 0-255 pixels). Without them the loop is exactly the one that made the bundled weights.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    schedule_name, noised = OBJECTIVES[objective]
    torch.manual_seed(seed)
    x_train = load_digits("train")
    data, labels = (x_train.as_float() if data is None else data), x_train.labels
    schedule = schedules.get(schedule_name)
    model = DigitsDenoiser()
    ema = DigitsDenoiser()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x0, y = data[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < LABEL_DROPOUT] = NUM_CLASSES
        batch = noised(x0, gen, schedule)
        out = model(batch.x_t, batch.model_time, y)
        loss = nn.functional.mse_loss(out, batch.target)
        if monitor is not None:
            monitor.observe_batch(x0)  # the first batch(es) only: the data range and the forward process
            with torch.no_grad():
                monitor.observe_loss(batch.monitor_key, ((out - batch.target) ** 2).mean(dim=(1, 2, 3)))
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"{objective} step {step:6d}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s", flush=True)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
    return ema.eval()


def train_classifier(epochs: int, seed: int = 0, batch_size: int = 64, lr: float = 2e-3) -> DigitsClassifier:
    """Cross-entropy training on the train split with 1-pixel shifts and Gaussian pixel noise."""
    torch.manual_seed(seed)
    x_train = load_digits("train")
    data, labels = x_train.as_float(), x_train.labels
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    for _epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            x = data[idx]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            x = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    test = load_digits("test")
    with torch.no_grad():
        accuracy = (model(test.as_float()).argmax(1) == test.labels).float().mean().item()
    print(f"classifier: {epochs} epochs, held-out accuracy {accuracy:.4f}", flush=True)
    return model


MODELS = ("classifier", "denoiser", "flow")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffeval.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for classifier.pt, denoiser.pt and flow.pt")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which files to train")
    parser.add_argument("--denoiser-steps", type=int, default=12000)
    parser.add_argument("--flow-steps", type=int, default=6000)
    parser.add_argument("--classifier-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (bit-exact reruns need the same number)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    if "classifier" in args.models:
        classifier = train_classifier(args.classifier_epochs, seed=args.seed)
        torch.save(classifier.state_dict(), args.out / "classifier.pt")
    if "denoiser" in args.models:
        denoiser = train_denoiser(args.denoiser_steps, seed=args.seed)
        torch.save(denoiser.state_dict(), args.out / "denoiser.pt")
    if "flow" in args.models:
        flow = train_denoiser(args.flow_steps, seed=args.seed, objective="flow")
        torch.save(flow.state_dict(), args.out / "flow.pt")
    for name in {"classifier": "classifier.pt", "denoiser": "denoiser.pt", "flow": "flow.pt"}.values():
        if (args.out / name).exists() and name.removesuffix(".pt") in args.models:
            print(f"{name}  sha256 {sha256_file(args.out / name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

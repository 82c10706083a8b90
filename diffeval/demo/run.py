"""``diffeval demo``: the whole job on the bundled digits model, offline, in seconds.

Runs the bundled config (``demo.toml``: FID, IS, KID in the demo classifier's feature
space against the held-out digits, bits/dim, every check, latency) through the same
runner as ``diffeval run``, and adds yardstick rows: the same Fréchet distance for an
untrained network, for pure noise, and for real training digits (the floor a perfect
model would reach). Writes the report, an HTML page and a PNG grid of samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from diffeval.config import RunConfig, load_config
from diffeval.demo.bundle import DEMO_PREDICTION, DEMO_SCHEDULE, IMAGE_SHAPE, DigitsFeatureExtractor, demo_sampler, load_denoiser
from diffeval.demo.data import load_digits
from diffeval.demo.networks import DigitsDenoiser
from diffeval.errors import ConfigError, explain
from diffeval.evaluate import EvaluationResult, evaluate, measure, resolve_device
from diffeval.metrics import FID
from diffeval.metrics.bpd import BitsPerDim
from diffeval.references import build_reference
from diffeval.report import Report, make_row
from diffeval.runner import run_config
from diffeval.samplers import CallableSampler
from diffeval.samplers.base import Sampler
from diffeval.sources import TensorSource
from diffeval.stats import FeatureMoments

__all__ = ["DemoConfig", "BUGS", "demo_config", "demo_config_path", "run_demo", "reference_moments", "demo_bpd"]

LAYER = "features"
EXTRACTOR = "demo-digits"
BUGS = ("raw-pixels",)


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("diffeval-demo")
    device: str = "cpu"
    n: int = 360
    steps: int = 50
    seed: int = 0
    batch_size: int = 120
    eta: float = 0.0
    progress: bool = True
    bug: str | None = None  # "raw-pixels": feed the digits as 0-255 to the diagnostics (the SNR-collapse trap)


def demo_config_path() -> Path:
    """The bundled ``demo.toml``."""
    return Path(str(resources.files("diffeval.demo") / "demo.toml"))


def demo_config(cfg: DemoConfig) -> RunConfig:
    """``demo.toml`` with the command-line overrides applied."""
    if cfg.bug is not None and cfg.bug not in BUGS:
        raise ConfigError(explain("unknown demo bug", expected=" / ".join(BUGS), got=repr(cfg.bug), fix="use --bug raw-pixels"))
    base = load_config(demo_config_path())
    checks = {k: dict(v) for k, v in base.checks.items()}
    if cfg.bug == "raw-pixels":
        for name in ("xt_normality", "terminal_eps_variance"):
            checks[name]["preprocess"] = "raw"
    sampler = replace(base.sampler, kwargs={**base.sampler.kwargs, "steps": cfg.steps, "eta": cfg.eta})
    return replace(base, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device, sampler=sampler, checks=checks)


def reference_moments(extractor: DigitsFeatureExtractor, layer: str = LAYER, n: int | None = None) -> FeatureMoments:
    """Feature moments of the held-out digits (all 360, or a seeded subset of ``n``)."""
    source = TensorSource(load_digits("test").images, name="digits:test")
    return build_reference(source, extractor, moment_layers=[layer], n=n).moments[layer]


def demo_bpd(n: int = 360, estimator: str = "vlb", seed: int = 0, device: str = "cpu", batch_size: int = 120, **options: Any) -> dict[str, Any]:
    """Bits/dim of the first ``n`` held-out digits under the bundled model (discrete-time VLB by default)."""
    from diffeval import schedules

    test = load_digits("test")
    if not 2 <= n <= len(test.images):
        raise ConfigError(explain("invalid number of digits for bits/dim", expected=f"2 <= n <= {len(test.images)}", got=str(n), fix=f"use --n {len(test.images)}"))
    dev = resolve_device(device)
    metric = BitsPerDim(load_denoiser(device=dev), schedules.get(DEMO_SCHEDULE), DEMO_PREDICTION, estimator, seed=seed, **options)
    return measure(TensorSource(test.images[:n], name="digits:test"), extractors=[], metrics=[metric], batch_size=batch_size)["bpd"]


def _fid_of(sampler: Sampler, extractor: DigitsFeatureExtractor, reference: FeatureMoments, cfg: DemoConfig) -> EvaluationResult:
    return evaluate(sampler, seeds=range(cfg.seed, cfg.seed + cfg.n), image_shape=IMAGE_SHAPE, extractors=[extractor], metrics=[FID(reference, EXTRACTOR, LAYER)], batch_size=cfg.batch_size, device=cfg.device)


def _baseline_rows(cfg: DemoConfig) -> list[dict[str, Any]]:
    """Yardsticks at the same count: untrained network, pure noise, real training digits."""
    extractor = DigitsFeatureExtractor(device=resolve_device(cfg.device))
    reference = reference_moments(extractor, n=cfg.n)
    torch.manual_seed(cfg.seed)
    untrained = _fid_of(demo_sampler(steps=cfg.steps, eta=cfg.eta, device=cfg.device, model=DigitsDenoiser()), extractor, reference, cfg).metrics["fid"]
    noise = _fid_of(CallableSampler(lambda x, cond: x.clamp(-1, 1), name="pure-noise"), extractor, reference, cfg).metrics["fid"]
    train = load_digits("train").images[: cfg.n]
    floor = measure(TensorSource(train), extractors=[extractor], metrics=[FID(reference, EXTRACTOR, LAYER, allow_unmatched=len(train) != reference.n)])["fid"]
    label = f"{EXTRACTOR}:{LAYER}"
    return [
        make_row("fid[untrained model]", "baseline", untrained["fid"], n_gen=untrained["n_gen"], n_ref=untrained["n_ref"], extractor=label, sampler="untrained DigitsDenoiser"),
        make_row("fid[pure noise]", "baseline", noise["fid"], n_gen=noise["n_gen"], n_ref=noise["n_ref"], extractor=label, sampler="N(0,I) clamped to [-1,1]"),
        make_row("fid[real training digits]", "baseline", floor["fid"], n_gen=floor["n_gen"], n_ref=floor["n_ref"], extractor=label, sampler="real digits (train split)"),
    ]


def run_demo(cfg: DemoConfig) -> tuple[Report, dict[str, Path]]:
    """Run the demo and write ``report.{csv,json,md,html}`` and ``samples.png`` under ``cfg.out``."""
    run_cfg = demo_config(cfg)
    outcome = run_config(run_cfg, cfg.out, progress=cfg.progress, extra_rows=lambda sampler: _baseline_rows(cfg))
    return outcome.report, outcome.paths

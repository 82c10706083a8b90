"""``diffeval demo``: the whole job on the bundled digits model, offline, in seconds.

Runs the bundled config (``demo.toml``: FID, IS, KID in the demo classifier's feature
space against the held-out digits, bits/dim, every check, latency) through the same
runner as ``diffeval run``, and adds yardstick rows: the same Fréchet distance for an
untrained network, for pure noise, and for real training digits (the floor a perfect
model would reach). Writes the report, an HTML page and a PNG grid of samples.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from diffeval.core.errors import ConfigError, ExitCode, explain
from diffeval.data.sources import TensorSource
from diffeval.demo.bundle import IMAGE_SHAPE, DigitsFeatureExtractor, demo_sampler
from diffeval.demo.data import digits_source, load_digits
from diffeval.demo.networks import DigitsDenoiser
from diffeval.engine.loop import EvaluationResult, evaluate, measure, resolve_device
from diffeval.engine.references import build_reference
from diffeval.metrics.fid import FID
from diffeval.report.report import Report, make_row
from diffeval.run.config import CheckSpec, RunConfig, load_config
from diffeval.run.runner import RunFailed, run_config
from diffeval.samplers.callable import CallableSampler
from diffeval.stats.moments import FeatureMoments

__all__ = [
    "DemoConfig",
    "BUGS",
    "demo_config",
    "demo_config_path",
    "run_demo",
    "reference_moments",
    "add_arguments",
    "command",
]

LAYER = "features"
BUGS = ("raw-pixels", "unit-output", "raw-output")
_OUTPUT_OF_BUG = {"unit-output": "unit", "raw-output": "0-255"}


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("diffeval-demo")
    device: str = "cpu"
    n: int = 360
    steps: int = 50
    seed: int = 0
    batch_size: int = 120
    eta: float = 0.0
    progress: bool | None = None  # None: a bar when stderr is a terminal
    bug: str | None = None  # a classic bug to show being caught (BUGS): data side (raw-pixels) or sampler side


def demo_config_path() -> Path:
    """The bundled ``demo.toml``."""
    return Path(str(resources.files("diffeval.demo") / "demo.toml"))


def demo_config(cfg: DemoConfig) -> RunConfig:
    """``demo.toml`` with the command-line overrides applied."""
    if cfg.bug is not None and cfg.bug not in BUGS:
        raise ConfigError(
            explain(
                "unknown demo bug",
                expected=" / ".join(BUGS),
                got=repr(cfg.bug),
                fix="use --bug " + " or --bug ".join(BUGS),
            )
        )
    base = load_config(demo_config_path())
    checks = [
        CheckSpec(
            c.name,
            (
                {**c.options, "preprocess": "raw"}
                if cfg.bug == "raw-pixels" and c.name in ("xt_normality", "terminal_eps_variance")
                else dict(c.options)
            ),
        )
        for c in base.checks
    ]
    kwargs = {**base.sampler.kwargs, "steps": cfg.steps, "eta": cfg.eta}
    if cfg.bug in _OUTPUT_OF_BUG:
        kwargs["output"] = _OUTPUT_OF_BUG[cfg.bug]
    sampler = replace(base.sampler, kwargs=kwargs)
    return replace(
        base, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device, sampler=sampler, checks=checks
    )


def reference_moments(extractor: DigitsFeatureExtractor, layer: str = LAYER, n: int | None = None) -> FeatureMoments:
    """Feature moments of the held-out digits (all 360, or a seeded subset of ``n``)."""
    return build_reference(digits_source("test"), extractor, moment_layers=[layer], n=n).moments[layer]


def _fid_of(
    sampler: Any, extractor: DigitsFeatureExtractor, reference: FeatureMoments, cfg: DemoConfig
) -> EvaluationResult:
    return evaluate(
        sampler,
        seeds=range(cfg.seed, cfg.seed + cfg.n),
        image_shape=IMAGE_SHAPE,
        extractors=[extractor],
        metrics=[FID(reference, extractor.key, LAYER)],
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=False,
        strict=None,  # yardsticks: their range is not the run's verdict
    )


def _baseline_rows(cfg: DemoConfig, metrics: list[Any]) -> list[dict[str, Any]]:
    """Yardsticks at the same count: untrained network, pure noise, real training digits — against the run's own
    FID reference (extracted once for the whole run)."""
    extractor = DigitsFeatureExtractor(device=resolve_device(cfg.device))
    fid = [m for m in metrics if isinstance(m, FID) and m.layer == LAYER and m.extractor == extractor.key]
    reference = fid[0].reference if fid else reference_moments(extractor, n=cfg.n)
    torch.manual_seed(cfg.seed)
    untrained = _fid_of(
        demo_sampler(steps=cfg.steps, eta=cfg.eta, device=cfg.device, model=DigitsDenoiser()), extractor, reference, cfg
    )["fid"]
    noise = _fid_of(CallableSampler(lambda x, cond: x.clamp(-1, 1), name="pure-noise"), extractor, reference, cfg)[
        "fid"
    ]
    train = load_digits("train").images[: cfg.n]
    floor = measure(
        TensorSource(train),
        extractors=[extractor],
        metrics=[FID(reference, extractor.key, LAYER, allow_unmatched=len(train) != reference.n)],
    )
    floor_result = next(iter(floor.values()))
    space = f"{extractor.key}:{LAYER}"
    return [
        make_row(
            "fid[untrained model]",
            "baseline",
            untrained.value,
            n_gen=untrained.n_gen,
            n_ref=untrained.n_ref,
            extractor=space,
            sampler="untrained DigitsDenoiser",
        ),
        make_row(
            "fid[pure noise]",
            "baseline",
            noise.value,
            n_gen=noise.n_gen,
            n_ref=noise.n_ref,
            extractor=space,
            sampler="N(0,I) clamped to [-1,1]",
        ),
        make_row(
            "fid[real training digits]",
            "baseline",
            floor_result.value,
            n_gen=floor_result.n_gen,
            n_ref=floor_result.n_ref,
            extractor=space,
            sampler="real digits (train split)",
        ),
    ]


def run_demo(cfg: DemoConfig) -> tuple[Report, dict[str, Path]]:
    """Run the demo and write ``report.{csv,json,md,html}`` and ``samples.png`` under ``cfg.out``."""
    run_cfg = demo_config(cfg)
    outcome = run_config(
        run_cfg, cfg.out, progress=cfg.progress, extra_rows=lambda subject, metrics: _baseline_rows(cfg, metrics)
    )
    return outcome.report, outcome.paths


def add_arguments(parser: argparse.ArgumentParser, positive_int: Any, non_negative_int: Any) -> None:
    """The ``diffeval demo`` options."""
    parser.add_argument("--out", type=Path, default=Path("diffeval-demo"), help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--n", type=positive_int, default=360, help="number of samples")
    parser.add_argument("--steps", type=positive_int, default=50, help="sampling steps")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="first seed; sample i uses seed + i")
    parser.add_argument("--batch-size", type=positive_int, default=120, help="samples per batch")
    parser.add_argument("--eta", type=float, default=0.0, help="0 = DDIM, 1 = DDPM ancestral")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--bug",
        choices=BUGS,
        default=None,
        help=(
            "inject a classic bug: raw-pixels feeds the digits as 0-255 to the diagnostics; unit-output / raw-output"
            " make the sampler return [0, 1] / 0-255 images"
        ),
    )


def command(args: argparse.Namespace) -> int:
    """``diffeval demo``: exit 0, 1 when a check fails, 2 on error, 130 when interrupted."""
    cfg = DemoConfig(
        out=args.out,
        device=args.device,
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        eta=args.eta,
        progress=False if args.no_progress else None,
        bug=args.bug,
    )
    try:
        report, paths = run_demo(cfg)
    except RunFailed as failure:
        print(f"diffeval demo: error: {failure}", file=sys.stderr)
        return int(ExitCode.INTERRUPTED if failure.interrupted else ExitCode.ERROR)
    print(report.to_text())
    attention = report.attention()
    if attention:
        print("\nchecks that need attention:\n" + "\n".join(attention))
    print()
    for kind, path in paths.items():
        print(f"{kind:18s} {path}")
    failed = [row["name"] for row in report.rows if row["kind"] == "check" and row["status"] == "fail"]
    if failed:
        print(f"\nFAILED checks: {', '.join(failed)} (see report.md for each fix)", file=sys.stderr)
        return int(ExitCode.FAILED)
    return int(ExitCode.OK)

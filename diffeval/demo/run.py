"""``diffeval demo``: the whole job on the bundled digits model, offline, in seconds.

Samples with the generalized sampler from the bundled denoiser, computes the Fréchet
distance to the 360 held-out digits in the demo classifier's feature space (and, as
yardsticks, the same distance for an untrained network, for pure noise, and for real
training digits — the floor a perfect model would reach), records
NFE and step latency, writes the report and a PNG grid of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffeval import schedules
from diffeval.checks import CheckResult, check_snr_endpoints, check_terminal_eps_variance, check_xt_normality, preprocessing, saturation_by_guidance
from diffeval.demo.bundle import DEMO_PREDICTION, DEMO_SCHEDULE, IMAGE_SHAPE, DigitsFeatureExtractor, demo_sampler, load_denoiser
from diffeval.demo.data import load_digits
from diffeval.demo.networks import DigitsDenoiser
from diffeval.errors import ConfigError, explain
from diffeval.evaluate import EvaluationResult, evaluate, measure, resolve_device
from diffeval.images import save_grid
from diffeval.metrics import FID, KID, InceptionScore
from diffeval.metrics.bpd import BitsPerDim
from diffeval.references import Reference, build_reference
from diffeval.report import Report, make_row, provenance
from diffeval.samplers import CallableSampler, GeneralizedSampler
from diffeval.samplers.base import Sampler
from diffeval.sources import TensorSource
from diffeval.stats import FeatureMoments

__all__ = ["DemoConfig", "run_demo", "reference_moments", "demo_reference", "demo_bpd"]

LAYER = "features"
LOGITS = "logits"
EXTRACTOR = "demo-digits"
KID_SUBSET = 100


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


BUGS = ("raw-pixels",)


def demo_bpd(n: int = 360, estimator: str = "vlb", seed: int = 0, device: str = "cpu", batch_size: int = 120, **options: object) -> dict:
    """Bits/dim of the first ``n`` held-out digits under the bundled model (discrete-time VLB by default)."""
    test = load_digits("test")
    if not 2 <= n <= len(test.images):
        raise ConfigError(explain("invalid number of digits for bits/dim", expected=f"2 <= n <= {len(test.images)}", got=str(n), fix=f"use --n {len(test.images)}"))
    dev = resolve_device(device)
    metric = BitsPerDim(load_denoiser(device=dev), schedules.get(DEMO_SCHEDULE), DEMO_PREDICTION, estimator, seed=seed, **options)
    return measure(TensorSource(test.images[:n], name="digits:test"), extractors=[], metrics=[metric], batch_size=batch_size)["bpd"]


def demo_checks(cfg: DemoConfig, sampler: GeneralizedSampler) -> list[CheckResult]:
    """The diagnostics of the demo: schedule endpoints, x_T normality of the digits, terminal eps variance, saturation."""
    digits = load_digits("all")
    prep = preprocessing("raw" if cfg.bug == "raw-pixels" else "signed")
    results = check_snr_endpoints(sampler.schedule, prediction=sampler.prediction, steps=sampler.steps, spacing=sampler.spacing)
    results += check_xt_normality(digits.images, sampler.schedule, prep, seed=cfg.seed)
    results.append(check_terminal_eps_variance(sampler.model, sampler.schedule, prep(digits.images), sampler.prediction, seed=cfg.seed))
    results += saturation_by_guidance(
        lambda w: demo_sampler(steps=min(cfg.steps, 25), device=cfg.device, model=sampler.model, guidance_scale=w),
        [1.0, 3.0, 8.0],
        range(cfg.seed, cfg.seed + 64),
        IMAGE_SHAPE,
        cond_fn=lambda seeds: torch.tensor([s % 10 for s in seeds], device=cfg.device),
        device=cfg.device,
    )
    return results


def demo_reference(extractor: DigitsFeatureExtractor) -> Reference:
    """Moments and features of the 360 held-out digits."""
    source = TensorSource(load_digits("test").images, name="digits:test")
    return build_reference(source, extractor, moment_layers=[LAYER], feature_layers=[LAYER])


def reference_moments(extractor: DigitsFeatureExtractor, layer: str = LAYER) -> FeatureMoments:
    """Feature moments of the 360 held-out digits."""
    return demo_reference(extractor).moments[layer]


def _fid_run(sampler: Sampler, extractor: DigitsFeatureExtractor, reference: Reference, cfg: DemoConfig, with_is_kid: bool = False) -> EvaluationResult:
    metrics: list = [FID(reference.moments[LAYER], EXTRACTOR, LAYER, allow_unmatched=cfg.n != reference.n)]
    if with_is_kid:
        metrics += [InceptionScore(EXTRACTOR, LOGITS), KID(reference.features[LAYER], EXTRACTOR, LAYER, subset_size=KID_SUBSET)]
    return evaluate(
        sampler,
        seeds=range(cfg.seed, cfg.seed + cfg.n),
        image_shape=IMAGE_SHAPE,
        extractors=[extractor],
        metrics=metrics,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=cfg.progress,
    )


def _fid_row(name: str, kind: str, result: EvaluationResult, sampler: str) -> dict:
    fid = result.metrics["fid"]
    details = {k: fid[k] for k in ("matched", "min_eigenvalue", "clipped_mass", "trace_method")}
    status = "" if fid["matched"] else "unmatched-counts"
    return make_row(name, kind, fid["fid"], n_gen=fid["n_gen"], n_ref=fid["n_ref"], extractor=f"demo-digits:{LAYER}", sampler=sampler, status=status, details=details)


def run_demo(cfg: DemoConfig) -> tuple[Report, dict[str, Path]]:
    """Run the demo and write ``report.{csv,json,md}`` and ``samples.png`` under ``cfg.out``."""
    if cfg.bug is not None and cfg.bug not in BUGS:
        raise ConfigError(explain("unknown demo bug", expected=" / ".join(BUGS), got=repr(cfg.bug), fix="use --bug raw-pixels"))
    device = resolve_device(cfg.device)
    extractor = DigitsFeatureExtractor(device=device)
    reference = demo_reference(extractor)

    sampler = demo_sampler(steps=cfg.steps, eta=cfg.eta, device=device)
    trained = _fid_run(sampler, extractor, reference, cfg, with_is_kid=True)
    label = f"demo generalized eta={cfg.eta} steps={cfg.steps}"

    torch.manual_seed(cfg.seed)
    untrained_sampler = demo_sampler(steps=cfg.steps, eta=cfg.eta, device=device, model=DigitsDenoiser())
    untrained = _fid_run(untrained_sampler, extractor, reference, cfg)
    noise = _fid_run(CallableSampler(lambda x, cond: x.clamp(-1, 1), name="pure-noise"), extractor, reference, cfg)

    train_digits = load_digits("train").images[: cfg.n]
    floor = FID(reference.moments[LAYER], EXTRACTOR, LAYER, allow_unmatched=len(train_digits) != reference.n)
    floor_value = measure(TensorSource(train_digits), extractors=[extractor], metrics=[floor])["fid"]
    isc, kid = trained.metrics["inception_score"], trained.metrics["kid"]

    lat = trained.latency
    rows = [
        _fid_row("fid", "metric", trained, label),
        _fid_row("fid[untrained model]", "baseline", untrained, "untrained DigitsDenoiser"),
        _fid_row("fid[pure noise]", "baseline", noise, "N(0,I) clamped to [-1,1]"),
        make_row("fid[real training digits]", "baseline", floor_value["fid"], n_gen=floor_value["n_gen"], n_ref=floor_value["n_ref"], extractor=f"demo-digits:{LAYER}", sampler="real digits (train split)"),
        make_row("inception_score", "metric", isc["inception_score"], stderr=isc["inception_score_std"], n_gen=isc["n_gen"], extractor=f"demo-digits:{LOGITS}", sampler=label, details={"splits": isc["splits"], "stderr_is": "std over splits (ddof 0)"}),
        make_row("kid", "metric", kid["kid"], stderr=kid["kid_std"], n_gen=kid["n_gen"], n_ref=kid["n_ref"], extractor=f"demo-digits:{LAYER}", sampler=label, details={k: kid[k] for k in ("subsets", "subset_size", "subset_size_reduced")} | {"stderr_is": "std over subsets (ddof 0)"}),
        make_row("nfe", "latency", lat.nfe, unit="evals/sample", sampler=label),
        make_row("step_latency_ms", "latency", lat.step_ms_median, unit="ms", sampler=label, details={"iqr_ms": lat.step_ms_iqr, "batch_size": lat.batch_size, "statistic": "median"}),
        make_row("throughput", "latency", lat.images_per_s, unit="images/s", sampler=label, details={"sampling_wall_s": lat.sampling_wall_s}),
    ]
    bpd = demo_bpd(seed=cfg.seed, device=cfg.device, batch_size=cfg.batch_size)
    rows.append(
        make_row("bpd", "metric", bpd["bpd"], stderr=bpd["bpd_stderr"], unit="bits/dim", n_ref=bpd["n"], sampler="bundled denoiser (eps, cosine)", details={k: bpd[k] for k in ("prior_bpd", "diffusion_bpd", "decoder_bpd", "estimator", "convention", "options")} | {"data": "360 held-out digits"})
    )
    rows += [r.to_row() for r in demo_checks(cfg, sampler)]
    config = {"command": "demo", **{k: str(v) for k, v in cfg.__dict__.items()}, "sampler": sampler.config(), "seeds": f"{cfg.seed}..{cfg.seed + cfg.n - 1}"}
    report = Report(rows, provenance(config, str(device)))
    paths = report.write(cfg.out)
    paths["samples"] = save_grid(trained.samples[:100], Path(cfg.out) / "samples.png", nrow=10, scale=4)
    return report, paths

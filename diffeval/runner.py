"""``diffeval run``: execute a :class:`~diffeval.config.RunConfig` into a report.

Order: checks (cheap, no sampling) → bits/dim on data → for each sweep value, sampling
with every sample metric and the latency rows. Rows are kept as they complete; if a
step fails or the run is interrupted, the rows so far are written with a
``run_error``/``run_interrupted`` row saying where it stopped, and the error is raised
again (exit 2, or 130 for Ctrl-C).
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffeval.checks import CheckResult, check_snr_endpoints, check_terminal_eps_variance, check_xt_normality, preprocessing, saturation_by_guidance
from diffeval.config import RunConfig
from diffeval.distributed import RankFailed, evaluate_sharded, world
from diffeval.errors import ConfigError, DiffevalError, InputError, explain
from diffeval.evaluate import EvaluationResult, measure, resolve_device
from diffeval.features import get_extractor
from diffeval.metrics import FID, KID, CLIPScore, InceptionScore
from diffeval.metrics.bpd import BitsPerDim
from diffeval.references import build_reference
from diffeval.report import Report, make_row, provenance
from diffeval.sources import ImageSource, TensorSource, open_input
from diffeval.stats import FeatureMoments

__all__ = ["run_config", "RunOutcome", "RunFailed", "import_factory", "open_data"]

BUILTIN_FACTORIES = {"demo": "diffeval.demo.bundle:demo_sampler"}


class RunFailed(DiffevalError):
    """A run stopped part-way; the partial report was written to ``paths``."""

    def __init__(self, message: str, paths: dict[str, Path], interrupted: bool = False) -> None:
        super().__init__(message)
        self.paths = paths
        self.interrupted = interrupted


@dataclass
class RunOutcome:
    report: Report
    paths: dict[str, Path]
    samples: torch.Tensor | None = None
    checks: list[CheckResult] = field(default_factory=list)


def import_factory(spec: str) -> Callable[..., Any]:
    """``pkg.module:function`` (or a built-in name such as ``demo``) → the callable."""
    target = BUILTIN_FACTORIES.get(spec, spec)
    if ":" not in target:
        raise ConfigError(explain(f"sampler factory {spec!r} is not an import path", expected="'pkg.module:function' or one of " + ", ".join(BUILTIN_FACTORIES), got=repr(spec), fix="write module and function separated by a colon"))
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(explain(f"cannot import {module_name!r} for sampler factory {spec!r}", expected="an importable module", got=f"{type(error).__name__}: {error}", fix="install the package or fix the module path")) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(explain(f"{module_name} has no callable {attr!r}", expected="a function that returns a sampler", got=type(fn).__name__, fix="check the name after the colon"))
    return fn


def _build_sampler(cfg: RunConfig, overrides: dict[str, Any]) -> Any:
    factory = import_factory(cfg.sampler.factory)
    kwargs = {**cfg.sampler.kwargs, **overrides}
    if "device" in inspect.signature(factory).parameters and "device" not in kwargs:
        kwargs["device"] = cfg.device
    try:
        return factory(**kwargs)
    except DiffevalError:
        raise
    except Exception as error:
        raise ConfigError(explain(f"sampler factory {cfg.sampler.factory!r} raised", expected="a sampler", got=f"{type(error).__name__}: {error}", fix="check the factory's keyword arguments in [sampler.kwargs]")) from None


def open_data(spec: str, cfg: RunConfig) -> ImageSource:
    """``digits:test|train|all`` (bundled) or a path (folder / .npz images) relative to the config."""
    if spec.startswith("digits:") or spec == "digits":
        from diffeval.demo.data import load_digits

        split = spec.split(":", 1)[1] if ":" in spec else "all"
        return TensorSource(load_digits(split).images, name=f"digits:{split}")
    source = open_input(cfg.resolve_path(spec))
    if isinstance(source, FeatureMoments):
        raise InputError(explain(f"{spec} holds statistics, not images", expected="images", got="mu/sigma statistics", fix="point to the image data"))
    return source


def _cond_fn(cfg: RunConfig) -> Callable[[list[int]], Any] | None:
    if "labels" in cfg.cond:
        return lambda seeds: torch.tensor([s % 10 for s in seeds], device=cfg.device)
    if "prompts" in cfg.cond:
        path = cfg.resolve_path(cfg.cond["prompts"])
        from diffeval.image_metrics import read_prompts

        prompts = read_prompts(path)
        if not prompts:
            raise ConfigError(explain(f"prompts file {path} is empty", expected="one prompt per line", got="none", fix="add prompts"))
        return lambda seeds: [prompts[s % len(prompts)] for s in seeds]
    return None


def _checks(cfg: RunConfig, sampler: Any) -> list[CheckResult]:
    results: list[CheckResult] = []
    schedule, prediction = getattr(sampler, "schedule", None), getattr(sampler, "prediction", None)
    for name, opts in cfg.checks.items():
        if name != "saturation" and schedule is None:
            results.append(CheckResult(name, "skip", float("nan"), "needs the training schedule", f"skipped: {type(sampler).__name__} exposes no schedule (e.g. a scheduler without alphas_cumprod); nothing was checked"))
            continue
        if name == "saturation" and not hasattr(sampler, "guidance_scale"):
            results.append(CheckResult(name, "skip", float("nan"), "needs a sampler with guidance_scale", f"skipped: {type(sampler).__name__} has no guidance scale to sweep"))
            continue
        if name == "snr_endpoints":
            results += check_snr_endpoints(schedule, prediction=prediction, steps=getattr(sampler, "steps", None), spacing=getattr(sampler, "spacing", None))
        elif name == "xt_normality":
            data = open_data(opts.get("data", "digits:all"), cfg)
            images = data.load(range(len(data)))
            results += check_xt_normality(images, schedule, preprocessing(opts.get("preprocess", "signed")), seed=cfg.seed)
        elif name == "terminal_eps_variance":
            data = open_data(opts.get("data", "digits:all"), cfg)
            x0 = preprocessing(opts.get("preprocess", "signed"))(data.load(range(min(len(data), 4096))))
            results.append(check_terminal_eps_variance(sampler.model, schedule, x0, prediction, seed=cfg.seed))
        elif name == "saturation":
            shape = _image_shape(cfg, sampler)
            labels = _cond_fn(cfg) or (lambda seeds: torch.tensor([s % 10 for s in seeds], device=cfg.device))
            results += saturation_by_guidance(
                lambda w: _build_sampler(cfg, {"guidance_scale": w, "steps": min(getattr(sampler, "steps", 25), 25)}),
                opts.get("scales", [1.0, 3.0, 8.0]),
                range(cfg.seed, cfg.seed + int(opts.get("n", 64))),
                shape,
                cond_fn=labels,
                device=cfg.device,
            )
    return results


def _image_shape(cfg: RunConfig, sampler: Any) -> tuple[int, ...]:
    shape = cfg.image_shape or getattr(sampler, "image_shape", None)
    if shape is None:
        raise ConfigError(explain("image shape unknown", expected="[run] image_shape = [C, H, W] or a sampler with .image_shape", got="neither", fix="add image_shape to [run]"))
    return tuple(shape)


@dataclass
class _SampleMetrics:
    extractors: dict[str, Any]
    metrics: list[Any]
    labels: dict[str, str]  # metric name -> extractor:layer label for the rows


def _build_sample_metrics(cfg: RunConfig) -> _SampleMetrics:
    extractors: dict[str, Any] = {}
    metrics: list[Any] = []
    labels: dict[str, str] = {}

    def extractor(name: str, weights: str | None) -> Any:
        if name not in extractors:
            kwargs: dict[str, Any] = {"device": str(resolve_device(cfg.device))}
            if weights is not None:
                kwargs["weights"] = str(cfg.resolve_path(weights))
            extractors[name] = get_extractor(name, **kwargs)
        return extractors[name]

    for spec in cfg.metrics:
        o = spec.options
        if spec.name == "bpd":
            continue
        if spec.name == "clip_score":
            from diffeval.features import ClipExtractor

            clip = ClipExtractor(model=o.get("model", "ViT-B-32"), pretrained=None if o.get("pretrained") is None else str(o["pretrained"]), device=str(resolve_device(cfg.device)))
            extractors["clip"] = clip
            metrics.append(CLIPScore(clip.encode_text))
            labels["clip_score"] = f"clip:{clip.model_name}"
            continue
        ex = extractor(o.get("extractor", "inception-v3"), o.get("weights"))
        kind = {"fid": "fid", "kid": "kid", "inception_score": "is"}[spec.name]
        layer = o.get("layer", ex.default_layers[kind])
        labels[spec.name] = f"{ex.name}:{layer}"
        if spec.name == "inception_score":
            metrics.append(InceptionScore(ex.name, layer, splits=int(o.get("splits", 10))))
            continue
        if "reference" not in o:
            raise ConfigError(explain(f"metric {spec.name!r} needs a reference", expected="reference = 'digits:test', an image folder, an .npz batch or (fid) .npz statistics", got="nothing", fix="add reference = ..."))
        ref_input = o["reference"]
        allow = bool(o.get("allow_unmatched", False))
        if spec.name == "fid" and str(ref_input).endswith(".npz") and isinstance(stats := open_input(cfg.resolve_path(ref_input)), FeatureMoments):
            # checked now, before any sampling, so a mismatch costs nothing
            if stats.meta.get("extractor", ex.name) != ex.name or stats.dim != ex.layers.get(layer, stats.dim):
                raise InputError(explain(f"reference statistics {ref_input} do not match the extractor", expected=f"{ex.name}:{layer} (d = {ex.layers.get(layer)})", got=f"{stats.meta.get('extractor', '?')}:{stats.meta.get('layer', '?')} (d = {stats.dim})", fix="recompute them with diffeval ref --features " + ex.name))
            if stats.n != cfg.n and not allow:
                from diffeval.metrics.fid import unmatched_message

                raise InputError(unmatched_message(cfg.n, stats.n, stats.dim or 0))
            metrics.append(FID(stats, ex.name, layer, allow_unmatched=allow))
            continue
        source = open_data(str(ref_input), cfg)
        n_ref = None if (allow and len(source) < cfg.n) or spec.name == "kid" else cfg.n
        if n_ref is not None and len(source) < n_ref:
            from diffeval.metrics.fid import unmatched_message

            raise InputError(unmatched_message(cfg.n, len(source), ex.layers.get(layer, 0)))
        ref = build_reference(source, ex, moment_layers=[layer] if spec.name == "fid" else [], feature_layers=[layer] if spec.name == "kid" else [], n=n_ref, seed=int(o.get("reference_seed", 0)))
        if spec.name == "fid":
            metrics.append(FID(ref.moments[layer], ex.name, layer, allow_unmatched=allow))
        else:
            metrics.append(KID(ref.features[layer], ex.name, layer, subsets=int(o.get("subsets", 100)), subset_size=int(o.get("subset_size", 1000))))
    return _SampleMetrics(extractors, metrics, labels)


def _metric_rows(result: EvaluationResult, labels: dict[str, str], sampler_label: str, extra: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, out in result.metrics.items():
        if name == "fid":
            rows.append(make_row("fid", "metric", out["fid"], n_gen=out["n_gen"], n_ref=out["n_ref"], extractor=labels[name], sampler=sampler_label, status="" if out["matched"] else "unmatched-counts", details={k: out[k] for k in ("matched", "min_eigenvalue", "clipped_mass", "trace_method")}, **extra))
        elif name == "inception_score":
            rows.append(make_row("inception_score", "metric", out["inception_score"], stderr=out["inception_score_std"], n_gen=out["n_gen"], extractor=labels[name], sampler=sampler_label, details={"splits": out["splits"], "stderr_is": "std over splits (ddof 0)"}, **extra))
        elif name == "kid":
            rows.append(make_row("kid", "metric", out["kid"], stderr=out["kid_std"], n_gen=out["n_gen"], n_ref=out["n_ref"], extractor=labels[name], sampler=sampler_label, details={k: out[k] for k in ("subsets", "subset_size", "subset_size_reduced")} | {"stderr_is": "std over subsets (ddof 0)"}, **extra))
        elif name == "clip_score":
            rows.append(make_row("clip_score", "metric", out["clip_score"], stderr=out["clip_score_stderr"], n_gen=out["n_gen"], extractor=labels[name], sampler=sampler_label, details={"convention": "torchmetrics: max(mean(100 cos), 0)"}, **extra))
            rows.append(make_row("clip_score_hessel", "metric", out["clip_score_hessel"], stderr=out["clip_score_hessel_stderr"], n_gen=out["n_gen"], extractor=labels[name], sampler=sampler_label, details={"convention": "Hessel et al.: mean(2.5 max(cos, 0))"}, **extra))
    lat = result.latency
    rows += [
        make_row("nfe", "latency", lat.nfe, unit="evals/sample", sampler=sampler_label, **extra),
        make_row("step_latency_ms", "latency", lat.step_ms_median, unit="ms", sampler=sampler_label, details={"iqr_ms": lat.step_ms_iqr, "batch_size": lat.batch_size, "statistic": "median"}, **extra),
        make_row("throughput", "latency", lat.images_per_s, unit="images/s", sampler=sampler_label, details={"sampling_wall_s": lat.sampling_wall_s}, **extra),
    ]
    return rows


def _bpd_rows(cfg: RunConfig, sampler: Any) -> list[dict[str, Any]]:
    rows = []
    for spec in (s for s in cfg.metrics if s.name == "bpd"):
        o = dict(spec.options)
        data = open_data(o.pop("data", "digits:test"), cfg)
        n = int(o.pop("n", len(data)))
        estimator = o.pop("estimator", "vlb")
        if getattr(sampler, "model", None) is None or getattr(sampler, "schedule", None) is None or getattr(sampler, "prediction", None) is None:
            raise ConfigError(explain("bits/dim needs the sampler's model, schedule and prediction", expected="an adapter exposing .model, .schedule, .prediction", got=type(sampler).__name__, fix="use an adapter that exposes them, or remove the bpd metric"))
        metric = BitsPerDim(sampler.model, sampler.schedule, sampler.prediction, estimator, seed=cfg.seed, **o)
        out = measure(data, extractors=[], metrics=[metric], batch_size=cfg.batch_size, indices=range(min(n, len(data))))["bpd"]
        rows.append(make_row("bpd", "metric", out["bpd"], stderr=out["bpd_stderr"], unit="bits/dim", n_ref=out["n"], sampler=f"{type(sampler).__name__} ({sampler.prediction}, {sampler.schedule.name})", details={k: out[k] for k in ("prior_bpd", "diffusion_bpd", "decoder_bpd", "estimator", "convention", "options", "offset_bits")} | {"data": data.name}))
    return rows


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".diffeval-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(explain(f"output folder {out} is not writable", expected="a folder diffeval can create files in", got=f"{type(error).__name__}: {error}", fix="pass --out with a writable folder")) from None


def run_config(cfg: RunConfig, out: str | Path, progress: bool = False, extra_rows: Callable[[Any], list[dict[str, Any]]] | None = None) -> RunOutcome:
    """Run every check, bits/dim and sample metric of ``cfg`` (per sweep value); write the report into ``out``."""
    out = Path(out)
    _check_writable(out)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    stage = "building the sampler"
    samples: torch.Tensor | None = None
    checks: list[CheckResult] = []
    sweep_values = cfg.sweep.values if cfg.sweep else [None]
    config_dict = {"name": cfg.name, "source": cfg.source, "n": cfg.n, "seed": cfg.seed, "batch_size": cfg.batch_size, "device": str(device), "sampler": {"factory": cfg.sampler.factory, "kwargs": cfg.sampler.kwargs}, "metrics": [{"name": m.name, **m.options} for m in cfg.metrics], "checks": cfg.checks, "cond": cfg.cond, "sweep": None if cfg.sweep is None else {"knob": cfg.sweep.knob, "values": cfg.sweep.values}}
    seeds_label = f"{cfg.seed}..{cfg.seed + cfg.n - 1}"
    current = {"batch": -1, "seeds": ""}

    def on_batch(index: int, seeds: list[int]) -> None:
        current["batch"], current["seeds"] = index, f"{seeds[0]}..{seeds[-1]}"

    w = world()
    config_dict["world_size"] = w.size
    try:
        sampler = _build_sampler(cfg, {})
        if w.rank == 0:  # cheap, data-side work: once
            stage = "checks"
            checks = _checks(cfg, sampler)
            rows += [c.to_row() for c in checks]
            stage = "bits/dim"
            rows += _bpd_rows(cfg, sampler)
        stage = "reference statistics"
        built = _build_sample_metrics(cfg)
        cond_fn = _cond_fn(cfg)
        for value in sweep_values:
            knob = {} if value is None else {cfg.sweep.knob: value}  # type: ignore[union-attr]
            stage = "sampling" + (f" at {cfg.sweep.knob} = {value}" if value is not None else "")  # type: ignore[union-attr]
            run_sampler = sampler if value is None else _build_sampler(cfg, knob)
            for metric in built.metrics:
                metric.reset()
            result = evaluate_sharded(run_sampler, seeds=range(cfg.seed, cfg.seed + cfg.n), image_shape=_image_shape(cfg, run_sampler), extractors=built.extractors, metrics=built.metrics, batch_size=cfg.batch_size, device=device, cond_fn=cond_fn, progress=progress and w.rank == 0, on_batch=on_batch)
            if result is None:  # not rank 0: rank 0 merges and reports
                continue
            label = ", ".join(f"{k}={v}" for k, v in run_sampler.config().items())
            extra = {"knob": cfg.sweep.knob, "knob_value": float(value)} if value is not None else {}  # type: ignore[union-attr]
            rows += _metric_rows(result, built.labels, label, extra)
            if samples is None:
                samples = result.samples
        if extra_rows is not None and w.rank == 0:
            stage = "extra rows"
            rows += extra_rows(sampler)
    except (Exception, KeyboardInterrupt) as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        if isinstance(error, RankFailed) and w.rank != 0:
            raise RunFailed(str(error), {}) from None
        where = f"{stage}" + (f", batch {current['batch']} (seeds {current['seeds']})" if stage.startswith("sampling") and current["batch"] >= 0 else "")
        rows.append(make_row("run_interrupted" if interrupted else "run_error", "check", float("nan"), status="fail", details={"stage": where, "error": f"{type(error).__name__}: {error}"}))
        report = Report(rows, provenance(config_dict, str(device), wall_s=time.perf_counter() - t0, seeds=seeds_label, code=cfg.sampler.factory))
        paths = report.write(out)
        message = f"run {'interrupted' if interrupted else 'failed'} during {where}: {type(error).__name__}: {error}. The {len(rows) - 1} rows computed before are in {paths['json']}"
        raise RunFailed(message, paths, interrupted) from (None if interrupted else error)
    report = Report(rows, provenance(config_dict, str(device), wall_s=time.perf_counter() - t0, seeds=seeds_label, code=cfg.sampler.factory))
    if w.rank != 0:
        return RunOutcome(report, {}, None, [])
    paths = report.write(out, samples=samples, schedule=getattr(sampler, "schedule", None), xt=_xt_for_plot(cfg, sampler))
    return RunOutcome(report, paths, samples, checks)


def _xt_for_plot(cfg: RunConfig, sampler: Any) -> torch.Tensor | None:
    if "xt_normality" not in cfg.checks or getattr(sampler, "schedule", None) is None:
        return None
    from diffeval.checks.xt_normality import forward_samples

    opts = cfg.checks["xt_normality"]
    data = open_data(opts.get("data", "digits:all"), cfg)
    x0 = preprocessing(opts.get("preprocess", "signed"))(data.load(range(min(len(data), 4096)))).double()
    return forward_samples(x0, sampler.schedule, cfg.seed).x_T


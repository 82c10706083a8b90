"""Metrics of stored images (folders, .npz batches, .npz statistics) — what ``diffeval fid/ref/is/clip-score`` run.

Matched counts: FID between ``n_gen`` generated images and a reference is computed
against exactly ``n_gen`` reference images (a seeded subset when the reference has
more); statistics with another ``n``, or too few reference images, are an error
unless ``allow_unmatched`` — and then the result says ``matched: False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffeval.errors import InputError, explain
from diffeval.evaluate import measure, resolve_device
from diffeval.features import FeatureExtractor, get_extractor
from diffeval.metrics import CLIPScore, InceptionScore
from diffeval.metrics.fid import frechet_distance, unmatched_message
from diffeval.references import build_reference
from diffeval.sources import ImageSource, open_input
from diffeval.stats import FeatureMoments

__all__ = ["fid_between", "compute_reference", "inception_score_of", "clip_score_of", "read_prompts"]


def _extractor(features: str, weights: str | None, device: str) -> FeatureExtractor:
    dev = str(resolve_device(device))
    if features == "clip":
        return get_extractor(features, device=dev)
    return get_extractor(features, device=dev, weights=weights)


def _check_stats_extractor(stats: FeatureMoments, features: str, path: str) -> None:
    recorded = stats.meta.get("extractor")
    if recorded is not None and recorded != features:
        raise InputError(
            explain(f"statistics {path} come from another feature extractor", expected=f"extractor {features!r}", got=f"{recorded!r}", fix=f"pass --features {recorded} or recompute the statistics")
        )


def _images(path: str) -> ImageSource:
    source = open_input(path)
    if isinstance(source, FeatureMoments):
        raise InputError(explain(f"{path} holds statistics, not images", expected="an image folder or an .npz image batch (arr_0)", got="mu/sigma statistics", fix="pass the images themselves"))
    return source


def _moments_of(source: ImageSource, extractor: FeatureExtractor, layer: str, n: int | None, seed: int, batch_size: int, progress: bool) -> FeatureMoments:
    return build_reference(source, extractor, moment_layers=[layer], n=n, seed=seed, batch_size=batch_size, progress=progress).moments[layer]


def fid_between(
    gen: str,
    ref: str,
    *,
    features: str = "inception-v3",
    weights: str | None = None,
    n: int | None = None,
    device: str = "cpu",
    allow_unmatched: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """FID between two inputs (image folder, .npz images or .npz statistics), at matched counts."""
    gen_input, ref_input = open_input(gen), open_input(ref)
    extractor: FeatureExtractor | None = None
    layer = "2048" if features.startswith("inception-v3") else None

    def need_extractor() -> FeatureExtractor:
        nonlocal extractor, layer
        if extractor is None:
            extractor = _extractor(features, weights, device)
            layer = extractor.default_layers["fid"]
        return extractor

    if isinstance(gen_input, FeatureMoments):
        _check_stats_extractor(gen_input, features, gen)
        if n is not None and n != gen_input.n:
            raise InputError(explain(f"--n {n} cannot apply to statistics {gen}", expected=f"n = {gen_input.n} (fixed when they were computed)", got=f"{n}", fix="drop --n or recompute the statistics from images"))
        gen_stats = gen_input
    else:
        if n is not None and n > len(gen_input):
            raise InputError(explain(f"{gen} has fewer images than --n", expected=f">= {n} images", got=f"{len(gen_input)}", fix="lower --n"))
        ex = need_extractor()
        gen_stats = _moments_of(gen_input, ex, layer, n, seed, batch_size, progress)  # type: ignore[arg-type]
    n_gen = gen_stats.n
    if isinstance(ref_input, FeatureMoments):
        _check_stats_extractor(ref_input, features, ref)
        ref_stats = ref_input
        if ref_stats.n != n_gen and not allow_unmatched:
            raise InputError(unmatched_message(n_gen, ref_stats.n, gen_stats.dim or 0))
    else:
        ex = need_extractor()
        if len(ref_input) < n_gen and not allow_unmatched:
            raise InputError(unmatched_message(n_gen, len(ref_input), gen_stats.dim or 0))
        ref_n = None if allow_unmatched and len(ref_input) < n_gen else n_gen
        ref_stats = _moments_of(ref_input, ex, layer, ref_n, seed, batch_size, progress)  # type: ignore[arg-type]
    if gen_stats.dim != ref_stats.dim:
        raise InputError(explain("feature dimensions differ between the two inputs", expected=f"d = {gen_stats.dim}", got=f"d = {ref_stats.dim}", fix="compute both with the same extractor and layer"))
    result = frechet_distance(gen_stats.mean, gen_stats.cov, ref_stats.mean, ref_stats.cov)
    return {
        "fid": result.value,
        "n_gen": n_gen,
        "n_ref": ref_stats.n,
        "matched": n_gen == ref_stats.n,
        "features": f"{features}:{layer or gen_stats.meta.get('layer', '?')}",
        "min_eigenvalue": result.min_eigenvalue,
        "clipped_mass": result.clipped_mass,
        "trace_method": result.method,
    }


def compute_reference(images: str, out: str | Path, *, features: str = "inception-v3", weights: str | None = None, n: int | None = None, seed: int = 0, device: str = "cpu", batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """Reference statistics (mu, sigma, n + metadata) of an image set, saved to ``out`` (.npz)."""
    source = _images(images)
    extractor = _extractor(features, weights, device)
    layer = extractor.default_layers["fid"]
    moments = _moments_of(source, extractor, layer, n, seed, batch_size, progress)
    moments.save(out)
    return {"out": str(out), "n": moments.n, "features": f"{features}:{layer}", "dim": moments.dim}


def inception_score_of(images: str, *, features: str = "inception-v3", weights: str | None = None, splits: int = 10, device: str = "cpu", batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """Inception Score (torch-fidelity convention) of an image set."""
    source = _images(images)
    extractor = _extractor(features, weights, device)
    metric = InceptionScore(extractor.name, extractor.default_layers["is"], splits=splits)
    out = measure(source, extractors=[extractor], metrics=[metric], batch_size=batch_size, progress=progress)["inception_score"]
    return {**out, "features": f"{features}:{metric.layer}"}


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (blank lines are errors: they would silently shift the pairing)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise InputError(explain(f"prompts file {path} has blank lines", expected="one non-empty prompt per line", got=f"blank line(s) {blank[:5]}", fix="remove the blank lines so prompt i pairs with image i"))
    return lines


def clip_score_of(images: str, prompts: str, *, model: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu", batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """CLIP score of images (sorted by path) against prompts (line i ↔ image i), both conventions."""
    from diffeval.features import ClipExtractor

    source = _images(images)
    texts = read_prompts(prompts)
    if len(texts) != len(source):
        raise InputError(explain("prompt count differs from image count", expected=f"{len(source)} prompts (one per image, in sorted file order)", got=f"{len(texts)} prompts", fix="give exactly one prompt per image"))
    extractor = ClipExtractor(model=model, pretrained=pretrained, device=str(resolve_device(device)))
    metric = CLIPScore(extractor.encode_text)
    out = measure(source, extractors=[extractor], metrics=[metric], batch_size=batch_size, cond_fn=lambda idx: [texts[i] for i in idx], progress=progress)["clip_score"]
    return {**out, "model": model, "pretrained": pretrained}


"""Metrics of stored images (folders, .npz batches, .npz statistics, data sets) — what ``diffeval
fid/ref/is/clip-score`` run.

Everything goes through the registered metric classes and the one batch loop
(:func:`diffeval.engine.loop.measure`), so a command computes exactly what a config run
computes. Matched counts: FID between ``n_gen`` generated images and a reference is
computed against exactly ``n_gen`` reference images (a seeded subset when the reference
has more); statistics with another ``n``, or too few reference images, are an error
unless ``allow_unmatched`` — and then the result says ``matched: False``. Counts are
checked before any feature is extracted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffeval.core.errors import InputError, explain
from diffeval.data.images import images_to_uint8
from diffeval.data.sources import ImageSource, TensorSource, open_images, open_source, read_prompts, seeded_subset
from diffeval.engine.loop import measure, resolve_device
from diffeval.engine.references import ReferencePool, build_reference
from diffeval.features import FeatureExtractor, extractor_key, feature_space, get_extractor
from diffeval.metrics.base import choose_layer
from diffeval.metrics.clip_score import CLIPScore
from diffeval.metrics.fid import FID, unmatched_message
from diffeval.metrics.inception_score import InceptionScore
from diffeval.metrics.kid import KID
from diffeval.report.report import writable_file
from diffeval.stats.moments import SPACE_KEYS, FeatureMoments, check_space

__all__ = ["fid_between", "kid_between", "compute_reference", "inception_score_of", "clip_score_of"]


def _extractor(features: str, weights: str | None, device: str) -> FeatureExtractor:
    dev = str(resolve_device(device))
    return get_extractor(features, device=dev, **({} if weights is None else {"weights": weights}))


def _check_stats_space(stats: FeatureMoments, key: str, layer: str | None, path: str) -> None:
    recorded = stats.meta.get("extractor")
    if recorded is not None and recorded != key:
        raise InputError(
            explain(
                f"statistics {path} come from another feature extractor",
                expected=f"extractor {key!r}",
                got=f"{recorded!r}",
                fix=f"pass --features {recorded.split('[')[0]} (with the same weights) or recompute the statistics",
            )
        )
    if layer is not None and stats.meta.get("layer", layer) != layer:
        raise InputError(
            explain(
                f"statistics {path} come from another layer",
                expected=f"layer {layer!r}",
                got=f"{stats.meta.get('layer')!r}",
                fix="recompute the statistics with this layer",
            )
        )


def _stats_of(
    source: ImageSource,
    extractor: FeatureExtractor,
    layer: str,
    n: int | None,
    seed: int,
    batch_size: int,
    progress: bool,
) -> FeatureMoments:
    return build_reference(
        source, extractor, moment_layers=[layer], n=n, seed=seed, batch_size=batch_size, progress=progress
    ).moments[layer]


Input = Any  # a path or data set name (str, Path), a uint8 NCHW tensor (or float with value_range), FeatureMoments


def _source(
    spec: Input, value_range: str | None, who: str, stats_n: int | None = None, count_option: str | None = None
) -> ImageSource | FeatureMoments:
    """A spec, images in memory or statistics, as a source (or the statistics themselves); ``count_option`` names the
    option that gives a statistics file without a count its count."""
    if torch.is_tensor(spec):
        images, _, _ = images_to_uint8(spec, value_range, who)
        return TensorSource(images.cpu(), name=f"{images.shape[0]} images in memory")
    if isinstance(spec, FeatureMoments):
        return spec
    return open_source(spec, stats_n=stats_n, **({} if count_option is None else {"count_option": count_option}))


def _images(spec: Input, value_range: str | None, who: str) -> ImageSource:
    """:func:`_source`, refusing statistics (for metrics that need the images)."""
    if torch.is_tensor(spec):
        return _source(spec, value_range, who)
    if isinstance(spec, FeatureMoments):
        raise InputError(
            explain(
                f"{who} needs images",
                expected="an image folder, an .npz image batch, a data set or an image tensor",
                got="FeatureMoments (statistics)",
                fix="pass the images",
            )
        )
    return open_images(spec, who=who)


def _fid_dim(features: str, weights: str | None, device: str) -> int | None:
    """The dimension of the extractor's FID layer (for the unmatched-count message); None when it cannot be built."""
    from diffeval.core.errors import DiffevalError

    try:
        extractor = _extractor(features, weights, device)
        return int(extractor.layers[choose_layer(extractor, None, "fid")])
    except (DiffevalError, OSError, KeyError):
        return None


def _name(spec: Input, source: Any) -> str:
    return str(spec) if isinstance(spec, (str, Path)) else getattr(source, "name", type(spec).__name__)


def fid_between(
    gen: Input,
    ref: Input,
    *,
    features: str = "inception-v3",
    weights: str | None = None,
    n: int | None = None,
    ref_n: int | None = None,
    gen_n: int | None = None,
    device: str = "cpu",
    allow_unmatched: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """FID between two inputs (image folder, .npz images, .npz statistics or a data set), at matched counts.

    Counts are checked first (``ref_n`` / ``gen_n``: the count behind a reference / generated statistics file
    that records none, as pytorch-fid and clean-fid files do); statistics are checked against the extractor's
    feature space (weights, layer, resize) before any image is read.
    """
    gen_input = _source(gen, value_range, "the generated images", stats_n=gen_n, count_option="--gen-n N (gen_n=)")
    ref_input = _source(ref, value_range, "the reference", stats_n=ref_n, count_option="--ref-n N (ref_n=)")
    for flag, count, side, given, which in (
        ("--ref-n", ref_n, ref_input, ref, "reference"),
        ("--gen-n", gen_n, gen_input, gen, "generated"),
    ):
        if count is not None and not isinstance(side, FeatureMoments):
            raise InputError(
                explain(
                    f"{flag} {count} applies only to {which} statistics",
                    expected="a statistics .npz that records no sample count",
                    got=f"images: {given}",
                    fix=f"drop {flag} (the images are counted)",
                )
            )
    if isinstance(gen_input, FeatureMoments):
        if n is not None and n != gen_input.n:
            raise InputError(
                explain(
                    f"--n {n} cannot apply to statistics {gen}",
                    expected=f"n = {gen_input.n} (fixed when they were computed)",
                    got=f"{n}",
                    fix="drop --n or recompute the statistics from images",
                )
            )
        n_gen = gen_input.n
    else:
        if n is not None and n > len(gen_input):
            raise InputError(
                explain(
                    f"{gen} has fewer images than --n",
                    expected=f">= {n} images",
                    got=f"{len(gen_input)}",
                    fix="lower --n",
                )
            )
        n_gen = n if n is not None else len(gen_input)
    exact = isinstance(ref_input, FeatureMoments)
    n_ref_available = ref_input.n if exact else len(ref_input)
    if (n_ref_available != n_gen if exact else n_ref_available < n_gen) and not allow_unmatched:
        dims = [x.dim for x in (gen_input, ref_input) if isinstance(x, FeatureMoments)]
        dim = dims[0] if dims else _fid_dim(features, weights, device)
        raise InputError(unmatched_message(n_gen, n_ref_available, dim))
    need_images = not (isinstance(gen_input, FeatureMoments) and isinstance(ref_input, FeatureMoments))
    if need_images:
        extractor = _extractor(features, weights, device)
        layer = choose_layer(extractor, None, "fid")
        key, space = extractor_key(extractor), feature_space(extractor, layer)
    else:  # two statistics files: compare them with each other (and with --features, when they record it)
        extractor, key, layer = None, features, ref_input.meta.get("layer", "?")
        _check_stats_space(gen_input, features, None, gen)
        _check_stats_space(ref_input, features, None, ref)
        space = {k: str(ref_input.meta[k]) for k in SPACE_KEYS if k in ref_input.meta}
    verdicts = [
        check_space(x.meta, space, f"statistics {p}")
        for x, p in ((gen_input, gen), (ref_input, ref))
        if isinstance(x, FeatureMoments)
    ]
    if isinstance(ref_input, FeatureMoments):
        ref_stats = ref_input
    else:
        ref_n_images = None if allow_unmatched and len(ref_input) < n_gen else n_gen
        ref_stats = _stats_of(ref_input, extractor, layer, ref_n_images, seed, batch_size, progress)
    metric = FID(ref_stats, key, layer, allow_unmatched=allow_unmatched, reference_spec=_name(ref, ref_input))
    if isinstance(gen_input, FeatureMoments):
        if gen_input.dim != ref_stats.dim:
            raise InputError(
                explain(
                    "feature dimensions differ between the two inputs",
                    expected=f"d = {ref_stats.dim}",
                    got=f"d = {gen_input.dim}",
                    fix="compute both with the same extractor and layer",
                )
            )
        metric.add_statistics(gen_input)
    else:
        indices = None if n is None or n == len(gen_input) else seeded_subset(len(gen_input), n, seed)
        measure(
            gen_input,
            extractors=[extractor],
            metrics=[metric],
            batch_size=batch_size,
            indices=indices,
            progress=progress,
            compute=False,
        )
    result = metric.compute()
    notes = "; ".join(x.notes for x in (gen_input, ref_input) if getattr(x, "notes", ""))
    out = {
        "fid": result.value,
        "stderr": result.stderr,
        "stderr_is": result["stderr_is"],
        **{k: result[k] for k in ("fid_infinity", "fid_infinity_stderr") if k in result.details},
        "n_gen": result.n_gen,
        "n_ref": result.n_ref,
        "matched": result["matched"],
        "features": metric.space,
        "statistics_space": "unverified" if "unverified" in verdicts else "verified" if verdicts else "images only",
        **{k: result[k] for k in ("raw_value", "min_eigenvalue", "clipped_mass", "trace_method")},
    }
    if notes:
        out["conversions"] = notes
    return out


def kid_between(
    gen: Input,
    ref: Input,
    *,
    features: str = "inception-v3",
    weights: str | None = None,
    subsets: int = 100,
    subset_size: int = 1000,
    blocks: int = 10,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """KID between two image sets (folders, .npz batches or data sets), with its jackknife standard error."""
    gen_source = _images(gen, value_range, "KID (the generated set)")
    ref_source = _images(ref, value_range, "KID (the reference: KID needs features, not statistics)")
    extractor = _extractor(features, weights, device)
    layer = choose_layer(extractor, None, "kid")
    reference = build_reference(ref_source, extractor, feature_layers=[layer], batch_size=batch_size, progress=progress)
    metric = KID(
        reference.features[layer],
        extractor_key(extractor),
        layer,
        subsets,
        subset_size,
        blocks=blocks,
        reference_spec=_name(ref, ref_source),
    )
    metric.check_count(len(gen_source))
    result = measure(gen_source, extractors=[extractor], metrics=[metric], batch_size=batch_size, progress=progress)[
        metric.label
    ]
    keys = ("subsets", "subset_size", "subset_size_reduced", "kid_std", "stderr_is")
    return {
        "kid": result.value,
        "kid_stderr": result.stderr,
        "n_gen": result.n_gen,
        "n_ref": result.n_ref,
        "features": metric.space,
        **{k: result[k] for k in keys},
    }


def cmmd_between(
    gen: Input,
    ref: Input,
    *,
    model: str = "ViT-L-14-336",
    pretrained: str | None = "openai",
    weights: str | None = None,
    estimator: str = "min-variance",
    blocks: int = 10,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """CMMD between two image sets on CLIP ViT-L/14@336 embeddings, with its jackknife standard error."""
    from diffeval.features import ClipExtractor
    from diffeval.metrics.cmmd import CMMD, check_clip_input

    gen_source = _images(gen, value_range, "CMMD (the generated set)")
    ref_source = _images(ref, value_range, "CMMD (the reference: CMMD needs images, not statistics)")
    extractor = ClipExtractor(
        model=model, pretrained=weights if weights is not None else pretrained, device=str(resolve_device(device))
    )
    check_clip_input(extractor)
    reference = build_reference(
        ref_source, extractor, feature_layers=["image"], batch_size=batch_size, progress=progress
    )
    metric = CMMD(
        reference.features["image"],
        extractor.key,
        "image",
        estimator=estimator,
        blocks=blocks,
        reference_spec=_name(ref, ref_source),
        model=model,
        pretrained=pretrained,
        weights=weights,
    )
    metric.check_count(len(gen_source))
    result = measure(gen_source, extractors=[extractor], metrics=[metric], batch_size=batch_size, progress=progress)[
        metric.label
    ]
    return {
        "cmmd": result.value,
        "cmmd_stderr": result.stderr,
        "estimator": estimator,
        "n_gen": result.n_gen,
        "n_ref": result.n_ref,
        "features": metric.space,
        "stderr_is": result["stderr_is"],
    }


def prdc_between(
    gen: Input,
    ref: Input,
    *,
    features: str = "inception-v3",
    weights: str | None = None,
    k_pr: int = 3,
    k_dc: int = 5,
    blocks: int = 10,
    save_reference: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """Precision, recall, density and coverage of an image set against a reference (images or saved features)."""
    from diffeval.metrics.base import BuildContext
    from diffeval.metrics.prdc import PRDC, reference_features

    out_path = writable_file(save_reference, "--save-reference") if save_reference is not None else None
    gen_source = _images(gen, value_range, "PRDC (the generated set)")
    extractor = _extractor(features, weights, device)
    layer = choose_layer(extractor, None, "prdc")
    pool = ReferencePool(batch_size=batch_size, progress=progress)
    in_memory = not isinstance(ref, (str, Path))
    spec = "<reference in memory>" if in_memory else str(ref)
    ctx = BuildContext(
        n=len(gen_source),
        seed=0,
        batch_size=batch_size,
        extractor=lambda *a, **k: extractor,
        open_source=(lambda s, **kw: _source(ref, value_range, "PRDC (the reference)")) if in_memory else open_source,
        base_dir=Path("."),
        progress=progress,
        reference=pool.request,
    )
    reference = reference_features(spec, extractor, layer, ctx)()
    metric = PRDC(reference, extractor_key(extractor), layer, k_pr=k_pr, k_dc=k_dc, blocks=blocks, reference_spec=spec)
    metric.check_count(len(gen_source))
    result = measure(gen_source, extractors=[extractor], metrics=[metric], batch_size=batch_size, progress=progress)[
        metric.label
    ]
    out: dict[str, Any] = {}
    for part, sub in result.parts.items():
        out[part] = sub.value
        out[f"{part}_stderr"] = sub.stderr
    out.update(k_pr=k_pr, k_dc=k_dc, n_gen=result.n_gen, n_ref=result.n_ref, features=metric.space)
    if out_path is not None:
        out["saved_reference"] = str(metric.reference.save(out_path))
    return out


def compute_reference(
    images: Input,
    out: str | Path,
    *,
    features: str = "inception-v3",
    weights: str | None = None,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """Reference statistics (mu, sigma, n + metadata) of an image set, saved to ``out`` (.npz).

    ``out`` is checked for writability before any image is read.
    """
    if Path(out).suffix != ".npz":
        raise InputError(
            explain(
                f"--out {out} is not an .npz path",
                expected="a file name ending in .npz",
                got=repr(str(out)),
                fix=f"pass --out {Path(out).with_suffix('.npz')}",
            )
        )
    writable_file(out, "--out")
    source = _images(images, value_range, "reference statistics")
    if n is not None and n > len(source):
        raise InputError(
            explain(
                f"{images} has fewer images than --n", expected=f">= {n} images", got=f"{len(source)}", fix="lower --n"
            )
        )
    extractor = _extractor(features, weights, device)
    layer = choose_layer(extractor, None, "fid")
    moments = _stats_of(source, extractor, layer, n, seed, batch_size, progress)
    moments.save(out)
    return {"out": str(out), "n": moments.n, "features": f"{extractor_key(extractor)}:{layer}", "dim": moments.dim}


def inception_score_of(
    images: Input,
    *,
    features: str = "inception-v3",
    weights: str | None = None,
    splits: int = 10,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """Inception Score (torch-fidelity convention) of an image set."""
    source = _images(images, value_range, "the Inception Score")
    extractor = _extractor(features, weights, device)
    metric = InceptionScore(extractor_key(extractor), choose_layer(extractor, None, "inception_score"), splits=splits)
    out = measure(source, extractors=[extractor], metrics=[metric], batch_size=batch_size, progress=progress)[
        metric.label
    ]
    return {
        "inception_score": out.value,
        "inception_score_std": out.stderr,
        "n_gen": out.n_gen,
        "splits": splits,
        "features": metric.space,
    }


def clip_score_of(
    images: Input,
    prompts: str,
    *,
    model: str = "ViT-B-32",
    pretrained: str | None = "openai",
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool | None = None,
    value_range: str | None = None,
) -> dict[str, Any]:
    """CLIP score of images (sorted by path) against prompts (line i ↔ image i), both conventions in one pass."""
    source = _images(images, value_range, "the CLIP score")
    texts = read_prompts(prompts)
    if len(texts) != len(source):
        raise InputError(
            explain(
                "prompt count differs from image count",
                expected=f"{len(source)} prompts (one per image, in sorted file order)",
                got=f"{len(texts)} prompts",
                fix="give exactly one prompt per image",
            )
        )
    extractor = get_extractor("clip", model=model, pretrained=pretrained, device=str(resolve_device(device)))
    key = extractor_key(extractor)
    metrics = [
        CLIPScore(extractor.encode_text, key, "image", "torchmetrics"),
        CLIPScore(extractor.encode_text, key, "image", "clipscore"),
    ]
    out = measure(
        source,
        extractors=[extractor],
        metrics=metrics,
        batch_size=batch_size,
        cond_fn=lambda idx: [texts[i] for i in idx],
        progress=progress,
    )
    tm, hessel = out[metrics[0].label], out[metrics[1].label]
    return {
        "clip_score": tm.value,
        "clip_score_stderr": tm.stderr,
        "clip_score_hessel": hessel.value,
        "clip_score_hessel_stderr": hessel.stderr,
        "n_gen": tm.n_gen,
        "model": model,
        "pretrained": pretrained,
        "convention": f"clip_score: {tm.convention}; clip_score_hessel: {hessel.convention}",
    }

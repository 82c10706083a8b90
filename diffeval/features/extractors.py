"""Feature extractors: ``extractor(uint8 NCHW) -> {layer: (N, D) float}``.

Features are computed once per batch and fanned out to every metric. Extractors are
looked up by name in :data:`EXTRACTORS` (unknown names get a "did you mean"): ``inception-v3``
(and ``-fast``), ``clip`` (any open_clip model; ViT-L-14-336 for CMMD) and ``dinov2-vit-l14``
(:mod:`diffeval.features.dinov2`); plugins register their own (the bundled demo registers ``demo-digits``).

An extractor declares ``name``, ``layers`` (layer → D), ``default_layers`` (metric name
→ the layer it reads by default), ``channels``, and ``key``: its identity within a run
(the name, plus the weights' hash when they are not the published ones), under which
its features travel in a :class:`~diffeval.metrics.base.Batch`.

Images enter as uint8; float images in [-1, 1] are quantized on the 8-bit grid of
:mod:`diffeval.core.quantize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from diffeval.core.errors import WeightsError, explain
from diffeval.core.quantize import GRID, to_uint8
from diffeval.core.registry import Registry
from diffeval.data.images import match_channels
from diffeval.features.weights import (
    OFFLINE_ENV,
    WEIGHTS_DIR_ENV,
    PublishedWeights,
    load_state_dict,
    offline,
    resolve,
    sha256_file,
)

__all__ = [
    "FeatureExtractor",
    "EXTRACTORS",
    "get_extractor",
    "extractor_key",
    "feature_space",
    "match_channels",
    "InceptionV3Extractor",
    "ClipExtractor",
    "resolve_open_clip",
    "INCEPTION_WEIGHTS",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images_uint8) -> {layer: (N, D)}`` with ``name``, ``layers``, ``default_layers``, ``channels``."""

    name: str
    layers: dict[str, int]
    default_layers: dict[str, str]
    channels: int

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


EXTRACTORS: Registry[Any] = Registry("feature extractor", builtins="diffeval.features.extractors")


def get_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor (``inception-v3``, ``clip``, plugins' ...)."""
    return EXTRACTORS.create(name, **kwargs)


def extractor_key(extractor: Any) -> str:
    """The extractor's identity within a run: its ``key`` if it declares one, else its ``name``."""
    return str(getattr(extractor, "key", None) or extractor.name)


def feature_space(extractor: Any, layer: str) -> dict[str, str]:
    """The identity of a feature space: extractor (key), layer, weights SHA-256, resize and quantization.

    Stored in statistics files and every row, so statistics are only ever compared with
    features computed the same way.
    """
    identity = dict(getattr(extractor, "identity", {}) or {})
    return {
        "extractor": extractor_key(extractor),
        "layer": str(layer),
        "weights_sha256": str(identity.get("weights_sha256", "unknown")),
        "resize": str(identity.get("resize", getattr(extractor, "resize", "none"))),
        "quantization": GRID,
    }


def weights_tag(path: Any, verified: bool) -> str:
    """``""`` for published, hash-verified weights; ``[sha256:<first 12 hex>]`` for any other file."""
    return "" if verified or path is None else f"[sha256:{sha256_file(path)[:12]}]"


# -- Inception-v3 (torch-fidelity's network) -------------------------------------------
INCEPTION_WEIGHTS = PublishedWeights(
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    sha256_prefix="6726825d",
)


class InceptionV3Extractor:
    """torch-fidelity's ``FeatureExtractorInceptionV3``: pool3 ``2048`` and ``logits_unbiased``.

    The network resizes uint8 input to 299x299 with its TF1-exact bilinear resize and
    scales by ``(x - 128) / 128``; grayscale input is repeated to RGB. Weights are
    resolved by :func:`diffeval.features.weights.resolve` and must load with
    ``torch.load(weights_only=True)`` before torch-fidelity reads them.
    """

    layers = {"2048": 2048, "logits_unbiased": 1008}
    default_layers = {"fid": "2048", "kid": "2048", "prdc": "2048", "inception_score": "logits_unbiased"}
    channels = 3
    resize = "tf1-bilinear-299"

    def __init__(
        self,
        weights: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        fast: bool = False,
        compile: bool = False,
    ) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path, verified = resolve(INCEPTION_WEIGHTS, weights)
        load_state_dict(
            path, None, fix="pass the torch-fidelity Inception weights (a plain state dict)"
        )  # refuses pickles
        self.weights_path = str(path)
        self.weights_verified = verified
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat", list(self.layers), feature_extractor_weights_path=str(path)
            )
        except RuntimeError as error:  # state dict of another network
            raise WeightsError(
                explain(
                    f"weights {path} do not fit the Inception-v3 network",
                    expected="torch-fidelity's pt_inception-2015-12-05 state dict",
                    got=str(error).splitlines()[0],
                    fix="pass the right weight file",
                )
            ) from None
        self.fast = bool(fast)
        # Fast mode (opt-in, named in every row: "inception-v3-fast"): bf16 autocast, channels-last, optionally
        # compiled.
        self.name = "inception-v3-fast" if self.fast else "inception-v3"
        self.key = self.name + weights_tag(path, verified)
        self.identity = {"weights_sha256": sha256_file(path), "resize": self.resize}
        net = net.to(self.device).eval()
        if self.fast:
            net = net.to(memory_format=torch.channels_last)
        self.net = torch.compile(net) if compile else net

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        u8 = match_channels(to_uint8(images), 3, self.name).to(self.device)
        outputs: list[tuple[torch.Tensor, ...]] = []
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.fast):
            for chunk in u8.split(self.batch_size):
                outputs.append(self.net(chunk.contiguous(memory_format=torch.channels_last) if self.fast else chunk))
        return {layer: torch.cat([o[i].float() for o in outputs]) for i, layer in enumerate(self.layers)}


@EXTRACTORS.register("inception-v3")
def _inception(device: str = "cpu", weights: str | None = None) -> FeatureExtractor:
    return InceptionV3Extractor(weights=weights, device=device)


@EXTRACTORS.register("inception-v3-fast")
def _inception_fast(device: str = "cpu", weights: str | None = None, compile: bool = False) -> FeatureExtractor:
    """Opt-in fast features: bf16 autocast, channels-last (and ``compile``); not bit-exact with torch-fidelity."""
    return InceptionV3Extractor(weights=weights, device=device, fast=True, compile=compile)


# -- CLIP (open_clip) --------------------------------------------------------------------
def _clip_candidates(model: str, tag: str) -> list[Path]:
    """Where a cached open_clip tag is looked for: ``$DIFFEVAL_WEIGHTS_DIR``, then the Hugging Face cache."""
    import os

    from open_clip import pretrained as oc

    found: list[Path] = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        for suffix in (".safetensors", ".bin"):
            found.append(Path(os.environ[WEIGHTS_DIR_ENV]) / f"open_clip-{model}-{tag}{suffix}")
    cfg = oc.get_pretrained_cfg(model, tag) or {}
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/") + ("/" if hub.endswith("/") else ""))
        names = [filename] if filename else [oc.HF_SAFE_WEIGHTS_NAME, oc.HF_WEIGHTS_NAME]
        for name in names:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                found.append(Path(cached))
    return found


def resolve_open_clip(model: str, pretrained: str | None) -> Path | None:
    """The local weight file of an open_clip model: a path as given, else a cached tag (downloaded only if allowed).

    Order: an existing file path → ``$DIFFEVAL_WEIGHTS_DIR/open_clip-<model>-<tag>.{safetensors,bin}`` →
    the Hugging Face cache (no network request when the file is there) → download through open_clip
    (never with ``DIFFEVAL_OFFLINE=1``: a missing file is then an error naming the places searched).
    ``None`` means random initialization.
    """
    import open_clip

    if pretrained is None:
        return None
    if Path(pretrained).is_file():
        return Path(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise WeightsError(
            explain(
                f"open_clip has no weights {pretrained!r} for model {model!r}, and no file exists at that path",
                expected=f"a local checkpoint path or one of the tags {tags or '(none)'}",
                got=repr(pretrained),
                fix="pass --weights PATH (a checkpoint file) or a known tag",
            )
        )
    candidates = _clip_candidates(model, pretrained)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates) or "the Hugging Face cache"
    if offline():
        raise WeightsError(
            explain(
                f"open_clip weights {model}/{pretrained} not found and downloads are off ({OFFLINE_ENV}=1)",
                expected=f"the file in one of: {searched}",
                got="no such file",
                fix=(
                    "pass --weights PATH to a local checkpoint, save it as"
                    f" ${WEIGHTS_DIR_ENV}/open_clip-{model}-{pretrained}.safetensors (or .bin), or unset {OFFLINE_ENV}"
                ),
            )
        )
    from open_clip import pretrained as oc

    try:
        return Path(oc.download_pretrained(oc.get_pretrained_cfg(model, pretrained)))
    except Exception as error:  # network errors, missing files: one message, not the hub's retries
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(
            explain(
                f"could not download open_clip weights {model}/{pretrained}",
                expected="a reachable Hugging Face hub (or a cached file)",
                got=f"{type(error).__name__}: {first}",
                fix=f"download them once where the hub is reachable, or pass --weights PATH (searched: {searched})",
            )
        ) from None


class ClipExtractor:
    """An open_clip model: L2-normalized image embeddings (layer ``image``) and text embeddings.

    ``model`` is any open_clip model name (``ViT-B-32``, ``ViT-L-14-336``, ...); ``pretrained``
    a tag (``openai``, ``laion2b_s34b_b79k``, ...) or a local checkpoint path, resolved by
    :func:`resolve_open_clip` and loaded weights-only. Images are resized (bicubic, antialiased)
    so the short side is the model's input size, centre-cropped, scaled to [0, 1] and
    normalized with the weights' mean/std (OpenAI's for OpenAI weights).
    """

    name = "clip"
    default_layers = {
        "clip_score": "image",
        "fid": "image",
        "kid": "image",
        "cmmd": "image",
        "prdc": "image",
        "inception_score": "image",
    }
    channels = 3

    def __init__(
        self, model: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu", batch_size: int = 64
    ) -> None:
        import open_clip

        self.model_name = model
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.batch_size = batch_size
        path = resolve_open_clip(model, pretrained)
        if path is not None and path.suffix != ".safetensors":
            load_state_dict(
                path, None, fix="pass an open_clip checkpoint saved as a plain state dict"
            )  # refuses pickles
        try:
            net = open_clip.create_model(
                model, pretrained=None if path is None else str(path), device=self.device, weights_only=True
            )
        except Exception as error:  # open_clip raises RuntimeError, AssertionError, KeyError ... on mismatched weights
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WeightsError(
                explain(
                    f"cannot build open_clip model {model!r} with weights {path}",
                    expected="a known model name and weights of that model",
                    got=first,
                    fix="check the model name (open_clip.list_models()) and pass the matching --weights",
                )
            ) from None
        self.net = net.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        pcfg = (
            open_clip.get_pretrained_cfg(model, pretrained) if pretrained and path != Path(pretrained) else {}
        ) or {}
        cfg = open_clip.get_model_preprocess_cfg(self.net)
        size = cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])
        mean = pcfg.get("mean", cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = pcfg.get("std", cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            dim = int(self.encode_text(["a"]).shape[1])
        self.layers = {"image": dim}
        is_user_file = pretrained is not None and path == Path(pretrained)
        tag = weights_tag(path, False) if is_user_file else f":{pretrained}" if pretrained else ":random"
        self.key = f"clip:{model}" + tag
        self.resize = f"bicubic-antialias short side {self.image_size}, centre crop"
        self.identity = {
            "weights_sha256": sha256_file(path) if path is not None else "random-init",
            "resize": self.resize,
        }

    def _preprocess(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.to(self.device).float() / 255.0
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        u8 = match_channels(to_uint8(images), 3, self.name)
        out = []
        with torch.no_grad():
            for chunk in u8.split(self.batch_size):
                embedding = self.net.encode_image(self._preprocess(chunk)).float()
                out.append(torch.nn.functional.normalize(embedding, dim=-1))
        return {"image": torch.cat(out)}

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalized text embeddings (N, D)."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.net.encode_text(tokens).float(), dim=-1)


@EXTRACTORS.register("clip")
def _clip(
    device: str = "cpu", model: str = "ViT-B-32", pretrained: str | None = "openai", weights: str | None = None
) -> FeatureExtractor:
    """``weights`` (a checkpoint path, as for every extractor) takes the place of ``pretrained``."""
    return ClipExtractor(model=model, pretrained=weights if weights is not None else pretrained, device=device)


# -- DINOv2 ViT-L/14 (timm architecture; diffeval/dinov2.py) --------------------------------
@EXTRACTORS.register("dinov2-vit-l14")
def _dinov2(device: str = "cpu", weights: str | None = None) -> FeatureExtractor:
    """DINOv2 ViT-L/14 CLS features (1024-d) for FD-DINOv2, PRDC, KID."""
    from diffeval.features.dinov2 import Dinov2Extractor

    return Dinov2Extractor(weights=weights, device=device)

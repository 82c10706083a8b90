"""CLIP image and text embeddings (open_clip): weights resolved like every extractor's, loaded weights-only."""

from __future__ import annotations

from pathlib import Path

import torch

from diffeval.core.errors import WeightsError, explain
from diffeval.core.quantize import to_uint8
from diffeval.data.images import match_channels
from diffeval.features.registry import EXTRACTORS, FeatureExtractor, weights_tag
from diffeval.features.weights import (
    OFFLINE_ENV,
    WEIGHTS_DIR_ENV,
    load_state_dict,
    offline,
    sha256_file,
)

__all__ = ["ClipExtractor", "resolve_open_clip"]


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

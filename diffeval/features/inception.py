"""Inception-v3 features: torch-fidelity's network (pool3 2048-d, unbiased logits), exact and fast variants."""

from __future__ import annotations

import torch

from diffeval.core.errors import WeightsError, explain
from diffeval.core.quantize import to_uint8
from diffeval.data.images import match_channels
from diffeval.features.registry import EXTRACTORS, FeatureExtractor, weights_tag
from diffeval.features.weights import (
    PublishedWeights,
    load_state_dict,
    resolve,
    sha256_file,
)

__all__ = ["INCEPTION_WEIGHTS", "InceptionV3Extractor"]

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

"""A random-weight Inception-v3 (torch-fidelity's architecture) saved as a plain state dict.

Conv weights get He-normal init and BatchNorm identity statistics, so activations
keep an O(1) scale through the network and the features of different images differ.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch


def build_random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with (
        mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None),
    ):
        net = FeatureExtractorInceptionV3("inception-random", ["2048"], feature_extractor_weights_path="unused")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            value = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.startswith("fc."):
            value = torch.randn(value.shape, generator=gen) * 0.05
        state[key] = value.clone()
    return state


def save_random_inception(path: Path, seed: int = 0) -> Path:
    torch.save(build_random_inception_state(seed), path)
    return path

"""The bundled 8x8 handwritten digits (UCI optical digits, CC BY 4.0; see ``data/ATTRIBUTION.md``).

1797 grayscale images, stored as 8-bit ``round(v * 255 / 16)`` of the original 0..16
pixel counts, with their labels. A fixed permutation (seed 0) splits them into 1437
training and 360 held-out images; the demo's Fréchet distance compares samples with
the held-out split.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from diffeval.core.errors import ConfigError, explain
from diffeval.core.quantize import dequantize
from diffeval.data.sources import TensorSource
from diffeval.features.weights import verify_sha256

__all__ = ["Digits", "load_digits", "digits_source", "DIGITS_SHA256", "N_HELD_OUT", "SPLITS"]

DIGITS_SHA256 = "8643566e0abb0749bdc0a5b2422d5561c20291546427c01449b417a5a9e3b17a"
N_HELD_OUT = 360
SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # uint8 (N, 1, 8, 8)
    labels: torch.Tensor  # int64 (N,)

    def as_float(self) -> torch.Tensor:
        """Images in [-1, 1]: ``u8 / 127.5 - 1``."""
        return dequantize(self.images)


def load_digits(split: str = "all") -> Digits:
    """The digits (``train``, ``test`` = held out, or ``all``), hash-verified."""
    if split not in SPLITS:
        raise ConfigError(
            explain("unknown digits split", expected=" / ".join(SPLITS), got=repr(split), fix="use 'train' or 'test'")
        )
    path = resources.files("diffeval.demo") / "data" / "digits.npz"
    with resources.as_file(path) as file:
        verify_sha256(file, DIGITS_SHA256, fix="reinstall diffeval: the bundled digits file is damaged")
        with np.load(file, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"].astype(np.int64)
    order = np.random.RandomState(0).permutation(len(images))
    if split == "test":
        order = order[:N_HELD_OUT]
    elif split == "train":
        order = order[N_HELD_OUT:]
    else:
        order = np.arange(len(images))
    return Digits(images=torch.from_numpy(images[order].copy()), labels=torch.from_numpy(labels[order].copy()))


def digits_source(split: str | None = None) -> TensorSource:
    """The digits as an image source (``digits`` = all, ``digits:train``, ``digits:test``): the ``digits`` data set."""
    split = split or "all"
    return TensorSource(load_digits(split).images, name=f"digits:{split}")

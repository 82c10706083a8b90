"""The bundled demo: pinned weight files, their loaders, the demo samplers and extractor.

Weights ship inside the package (``diffeval/demo/weights``), were produced by
``python -m diffeval.demo.train``, and are verified by SHA-256 and loaded with
``torch.load(weights_only=True)`` before use: ``denoiser.pt`` (eps-prediction on the cosine schedule),
``flow.pt`` (flow matching: the velocity ``eps - x0`` on the path ``(1 - t) x0 + t eps``, the same U-Net) and
``classifier.pt``. :mod:`diffeval.demo.plugin` registers the sampler factories (``demo``, ``demo-flow``) and the
extractor (``demo-digits``) defined here.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.quantize import dequantize, to_uint8
from diffeval.demo.networks import DigitsClassifier, DigitsDenoiser
from diffeval.diffusion import schedules
from diffeval.features.registry import weights_tag
from diffeval.features.weights import load_state_dict
from diffeval.samplers.base import SamplerInfo
from diffeval.samplers.generic import GeneralizedSampler

__all__ = [
    "WEIGHTS_SHA256",
    "DEMO_SCHEDULE",
    "DEMO_PREDICTION",
    "IMAGE_SHAPE",
    "weight_path",
    "load_denoiser",
    "load_flow_model",
    "load_classifier",
    "demo_sampler",
    "flow_sampler",
    "FLOW_SCHEDULE",
    "FLOW_PREDICTION",
    "DigitsFeatureExtractor",
]

WEIGHTS_SHA256 = {
    "denoiser.pt": "f2667ba1881786400d5620a182b299287117037175b05fdffa88a59b3cd6fafa",
    "classifier.pt": "0584c806c071969ca3d7ef62ca1a15a9b6369d32e7fe94be63afb4a0867d09e5",
    "flow.pt": "cb647ae78fdc72e3fe70539dc2f863904b9c5ecec10ec983d17fc0f94aa40b8f",
}
DEMO_SCHEDULE = "cosine"
DEMO_PREDICTION = "eps"
FLOW_SCHEDULE = "flow"  # rectified flow, t = i / 1000, no shift: what flow.pt was trained on (t ~ U(0, 1])
FLOW_PREDICTION = "flow"
IMAGE_SHAPE = (1, 8, 8)
_FIX = (
    "reinstall diffeval (the bundled file is damaged), or retrain with `python -m diffeval.demo.train` and update"
    " WEIGHTS_SHA256"
)


def weight_path(name: str) -> Path:
    """Path of a bundled weight file (``denoiser.pt`` or ``classifier.pt``)."""
    return Path(str(resources.files("diffeval.demo") / "weights" / name))


def _load(model: torch.nn.Module, name: str, path: str | Path | None, sha256: str | None, device: Any) -> Any:
    """``model`` with the weights of bundled file ``name`` (or of ``path``, checked against ``sha256``), in eval."""
    file = weight_path(name) if path is None else Path(path)
    digest = WEIGHTS_SHA256[name] if path is None else sha256
    model.load_state_dict(load_state_dict(file, digest, _FIX))
    return model.to(device).eval()


def load_denoiser(
    path: str | Path | None = None, sha256: str | None = None, device: str | torch.device = "cpu"
) -> DigitsDenoiser:
    """The trained demo denoiser (eps-prediction, cosine schedule), hash-verified.

    ``path``/``sha256`` load another file through the same checks (tests use them).
    """
    return _load(DigitsDenoiser(), "denoiser.pt", path, sha256, device)


def load_flow_model(
    path: str | Path | None = None, sha256: str | None = None, device: str | torch.device = "cpu"
) -> DigitsDenoiser:
    """The trained demo flow model (velocity ``eps - x0`` on the flow path, time input ``1000 t``), hash-verified."""
    return _load(DigitsDenoiser(), "flow.pt", path, sha256, device)


def load_classifier(
    path: str | Path | None = None, sha256: str | None = None, device: str | torch.device = "cpu"
) -> DigitsClassifier:
    """The trained demo classifier, hash-verified."""
    return _load(DigitsClassifier(), "classifier.pt", path, sha256, device)


OUTPUTS = ("signed", "unit", "0-255")


class MisScaledOutput:
    """The demo sampler returning its images on the wrong scale: ``unit`` ([0, 1]) or ``0-255`` (the sampler-side trap).

    For ``diffeval demo --bug unit-output|raw-output``: the ``output_range`` check must catch it.
    """

    def __init__(self, inner: GeneralizedSampler, output: str) -> None:
        self.inner, self.output = inner, output

    def describe(self) -> SamplerInfo:
        info = self.inner.describe()
        return dataclasses.replace(info, knobs={**info.knobs, "output": self.output})

    def replace(self, **changes: object) -> MisScaledOutput:
        return MisScaledOutput(self.inner.replace(**changes), self.output)

    def __call__(
        self, noise: torch.Tensor, cond: object = None, *, rng: object = None, timer: object = None
    ) -> torch.Tensor:
        x = self.inner(noise, cond, rng=rng, timer=timer)
        return (x + 1) / 2 if self.output == "unit" else (x + 1) * 255 / 2


def demo_sampler(
    steps: int = 50,
    eta: float = 0.0,
    device: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
    output: str = "signed",
    **knobs: object,
) -> GeneralizedSampler | MisScaledOutput:
    """The generalized sampler over the bundled denoiser (or ``model``, e.g. an untrained one).

    ``output`` other than ``signed`` returns the images on a wrong scale (``unit``: [0, 1];
    ``0-255``), the sampler-side trap the ``output_range`` check catches.
    """
    if output not in OUTPUTS:
        raise ConfigError(
            explain("unknown demo output scale", expected=" / ".join(OUTPUTS), got=repr(output), fix="use 'signed'")
        )
    net = load_denoiser(device=device) if model is None else model.to(device).eval()
    sampler = GeneralizedSampler(
        net,
        schedules.get(DEMO_SCHEDULE),
        prediction=DEMO_PREDICTION,
        steps=steps,
        eta=eta,
        image_shape=IMAGE_SHAPE,
        **knobs,
    )
    return sampler if output == "signed" else MisScaledOutput(sampler, output)


def flow_sampler(
    steps: int = 50,
    device: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
    shift: float = 1.0,
    **knobs: object,
) -> GeneralizedSampler:
    """The generalized sampler over the bundled flow model (or ``model``): ``prediction = 'flow'`` on the ``flow``
    schedule, so its deterministic step (eta = 0) is the Euler step of the flow ODE, ``z_s = z_t + (s - t) u``.

    ``shift`` samples on a shifted grid (the model was trained without one: a check of a wrongly declared shift).
    """
    net = load_flow_model(device=device) if model is None else model.to(device).eval()
    return GeneralizedSampler(
        net,
        schedules.get(FLOW_SCHEDULE, shift=shift),
        prediction=FLOW_PREDICTION,
        steps=steps,
        image_shape=IMAGE_SHAPE,
        **knobs,
    )


class DigitsFeatureExtractor:
    """The demo classifier as a feature extractor: layers ``features`` (64-d) and ``logits`` (10)."""

    name = "demo-digits"
    layers = {"features": DigitsClassifier.FEATURE_DIM, "logits": 10}
    default_layers = {"fid": "features", "kid": "features", "prdc": "features", "inception_score": "logits"}
    channels = 1

    def __init__(
        self, device: str | torch.device = "cpu", classifier: DigitsClassifier | None = None, weights: str | None = None
    ) -> None:
        self.device = torch.device(device)
        if classifier is None:
            classifier = load_classifier() if weights is None else load_classifier(weights, sha256=None)
        self.net = classifier.to(self.device).eval()
        self.key = self.name + weights_tag(weights, weights is None)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        u8 = to_uint8(images)
        if tuple(u8.shape[1:]) != IMAGE_SHAPE:
            raise InputError(
                explain(
                    "demo-digits extractor got images of the wrong size",
                    expected=f"(N, {', '.join(map(str, IMAGE_SHAPE))})",
                    got=f"{tuple(u8.shape)}",
                    fix="use 1x8x8 digit images",
                )
            )
        x = dequantize(u8.to(self.device))
        with torch.no_grad():
            features, logits = self.net.features_and_logits(x)
        return {"features": features, "logits": logits}

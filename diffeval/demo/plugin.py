"""The demo as a plugin: registers what the bundled demo brings, through the same registries any plugin uses.

- sampler factories ``demo`` (the generalized sampler over the bundled denoiser), ``demo-flow`` (over the
  bundled flow-matching model) and ``demo-gaussian`` (over the exact denoiser of a Gaussian fit of the digits: a
  continuous-time model);
- data set ``digits`` (``digits``, ``digits:train``, ``digits:test``);
- feature extractor ``demo-digits`` (the bundled classifier's 64-d features and logits);
- named configs ``demo`` (``demo.toml``: ``diffeval run demo``), ``flow`` (``flow.toml``: ``diffeval run flow``),
  ``demo-gaussian`` (``gaussian.toml``) and ``s2n`` (``s2n.toml``: the S2N (gamma, delta) experiment);
- command ``diffeval demo``.

It is loaded through the ``diffeval.plugins`` entry point (``pyproject.toml``); no module
outside ``diffeval/demo/`` imports the demo. Importing this module is cheap: weights and
data load only when used.
"""

from __future__ import annotations

from typing import Any

from diffeval.cli.main import COMMANDS, Command
from diffeval.data.sources import DATASETS
from diffeval.features import EXTRACTORS
from diffeval.run.config import CONFIGS
from diffeval.samplers.factories import SAMPLER_FACTORIES

__all__: list[str] = []


def _sampler(**kwargs: Any) -> Any:
    from diffeval.demo.bundle import demo_sampler

    return demo_sampler(**kwargs)


def _flow(**kwargs: Any) -> Any:
    from diffeval.demo.bundle import flow_sampler

    return flow_sampler(**kwargs)


def _gaussian(**kwargs: Any) -> Any:
    from diffeval.demo.gaussian import gaussian_sampler

    return gaussian_sampler(**kwargs)


def _digits(split: str | None = None) -> Any:
    from diffeval.demo.data import digits_source

    return digits_source(split)


def _extractor(device: str = "cpu", weights: str | None = None) -> Any:
    from diffeval.demo.bundle import DigitsFeatureExtractor

    return DigitsFeatureExtractor(device=device, weights=weights)


def _config_path(name: str = "demo.toml") -> Any:
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files("diffeval.demo") / name))


def _add_arguments(parser: Any, positive_int: Any, non_negative_int: Any) -> None:
    from diffeval.demo.run import add_arguments

    add_arguments(parser, positive_int, non_negative_int)


def _command(args: Any) -> int:
    from diffeval.demo.run import command

    return command(args)


SAMPLER_FACTORIES.register("demo", _sampler)
SAMPLER_FACTORIES.register("demo-flow", _flow)
SAMPLER_FACTORIES.register("demo-gaussian", _gaussian)
DATASETS.register("digits", _digits)
EXTRACTORS.register("demo-digits", _extractor)
CONFIGS.register("demo", _config_path())
CONFIGS.register("flow", _config_path("flow.toml"))
CONFIGS.register("demo-gaussian", _config_path("gaussian.toml"))
CONFIGS.register("s2n", _config_path("s2n.toml"))
COMMANDS.register("demo", Command("run the whole job on the bundled digits model (offline)", _add_arguments, _command))

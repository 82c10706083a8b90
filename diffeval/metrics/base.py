"""The metric contract: one self-describing class per metric, read by config, runner, report, merge and gate.

A metric class declares, as data:

- ``name`` (``fid``) and ``direction`` (``lower`` or ``higher`` is better);
- ``options``: the :class:`~diffeval.core.options.Option` list it accepts in a config
  (validation, ``--help`` and the conformance round-trip are generated from it);
- ``inputs``: ``samples`` (generated images, fed by the evaluation loop) or ``data``
  (real data under a model, e.g. bits/dim, fed from ``self.source``);
- ``state_keys``: the attributes holding its streaming state — float64 tensors,
  :class:`~diffeval.stats.moments.FeatureMoments` or lists of float64 tensors — which
  :meth:`Metric.state` ships between shards and ranks and :meth:`Metric.merge` adds;
- ``extractor`` / ``layer``: the feature extractor (by key) and layer it reads.

An instance has a ``label`` unique within a run (``fid@inception-v3:2048``), the key of
its results and report rows, and ``compute()`` returns one :class:`MetricResult`.
``from_config(options, ctx)`` builds it from validated options. A metric never reads images
or runs a model pass itself: it asks ``ctx.reference(...)`` for its reference (a handle the run
resolves, one extraction pass per source and extractor for every metric of the run) and returns
:class:`Deferred` — the instance to build once the references are extracted. ``example()`` builds
a small instance over synthetic batches for :func:`diffeval.testing.check_metric`.

Adding a metric is one module: subclass :class:`Metric` and decorate it with
:func:`register_metric` (plugins do the same from their own package). A metric that must keep
every generated row (not moments) subclasses :class:`diffeval.metrics.rows.RowMetric`, which
streams, merges and seed-orders the rows for it.
"""

from __future__ import annotations

import copy
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.options import Option
from diffeval.core.registry import Registry

__all__ = [
    "Batch",
    "BuildContext",
    "Deferred",
    "Metric",
    "MetricExample",
    "MetricResult",
    "METRICS",
    "DIRECTIONS",
    "register_metric",
    "metric_class",
    "mean_and_stderr",
    "feature_options",
    "LABEL_OPTION",
    "require_finite",
    "choose_layer",
]

DIRECTIONS = ("lower", "higher")
METRICS: Registry[type[Metric]] = Registry("metric", builtins="diffeval.metrics")
LABEL_OPTION = Option(
    "label",
    str,
    None,
    "row label, unique within a run (default: name@feature space)",
    nullable=True,
    attr="custom_label",
)


def feature_options(default_extractor: str = "inception-v3") -> tuple[Option, ...]:
    """The options every feature-space metric takes: extractor, layer, weights, label."""
    return (
        Option("extractor", str, default_extractor, "feature extractor (registered name)", attr="extractor_name"),
        Option("layer", str, None, "extractor layer (default: the extractor's layer for this metric)", nullable=True),
        Option("weights", str, None, "explicit weight file for the extractor (relative to the config)", nullable=True),
        LABEL_OPTION,
    )


@dataclass
class Batch:
    """One batch: ``features[extractor key][layer]`` (N, D), the uint8 images, their seeds and condition."""

    features: dict[str, dict[str, torch.Tensor]]
    seeds: list[int] = field(default_factory=list)
    cond: Any = None
    images: torch.Tensor | None = None

    def layer(self, extractor: str, layer: str, who: str) -> torch.Tensor:
        if extractor not in self.features:
            raise InputError(
                explain(
                    f"{who} needs features of extractor {extractor!r}",
                    expected=f"extractor {extractor!r} in the run",
                    got=f"extractors {sorted(self.features)}",
                    fix=f"add the {extractor!r} extractor to the evaluation",
                )
            )
        layers = self.features[extractor]
        if layer not in layers:
            raise InputError(
                explain(
                    f"extractor {extractor!r} gave no layer {layer!r}",
                    expected=f"layer {layer!r}",
                    got=f"layers {sorted(layers)}",
                    fix="pick a layer the extractor provides",
                )
            )
        return layers[layer]

    def __len__(self) -> int:
        if self.images is not None:
            return int(self.images.shape[0])
        for layers in self.features.values():
            for t in layers.values():
                return int(t.shape[0])
        return len(self.seeds)

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """One batch holding ``batches`` in order (features, images, seeds and list/tensor conditions concatenated)."""
        first = batches[0]
        features = {
            ex: {layer: torch.cat([b.features[ex][layer] for b in batches]) for layer in layers}
            for ex, layers in first.features.items()
        }
        images = torch.cat([b.images for b in batches]) if first.images is not None else None
        cond = first.cond
        if isinstance(cond, torch.Tensor):
            cond = torch.cat([b.cond for b in batches])
        elif isinstance(cond, (list, tuple)):
            cond = [c for b in batches for c in b.cond]
        return Batch(features=features, seeds=[s for b in batches for s in b.seeds], cond=cond, images=images)

    def split(self, sizes: Sequence[int]) -> list[Batch]:
        """This batch cut into consecutive pieces of ``sizes`` rows."""
        out, start = [], 0
        for size in sizes:
            sl = slice(start, start + size)
            cond = self.cond[sl] if isinstance(self.cond, (torch.Tensor, list, tuple)) else self.cond
            out.append(
                Batch(
                    features={ex: {k: v[sl] for k, v in layers.items()} for ex, layers in self.features.items()},
                    seeds=self.seeds[sl],
                    cond=cond,
                    images=None if self.images is None else self.images[sl],
                )
            )
            start += size
        return out


@dataclass(frozen=True)
class MetricResult:
    """What ``compute()`` returns: the value, its standard error (None where undefined), counts, convention and
    details.
    """

    value: float
    stderr: float | None = None
    n_gen: int | None = None
    n_ref: int | None = None
    convention: str = ""
    status: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, MetricResult] = field(default_factory=dict)  # a multi-row metric's rows (see Metric.parts)

    def __getitem__(self, key: str) -> Any:
        """Dict-style access to ``value``, ``stderr``, counts or a detail (``result["matched"]``)."""
        if key in ("value", "stderr", "n_gen", "n_ref", "convention", "status"):
            return getattr(self, key)
        if key in self.details:
            return self.details[key]
        raise KeyError(
            f"{key!r}: a MetricResult has value, stderr, n_gen, n_ref, convention, status and details"
            f" {sorted(self.details)}"
        )


@dataclass(frozen=True)
class BuildContext:
    """What :meth:`Metric.from_config` may use: the run's counts and seeds, shared extractors, inputs and the sampler's
    declaration.
    """

    n: int
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 64
    extractor: Callable[..., Any] | None = None  # (name, weights=None) -> shared extractor instance
    open_source: Callable[[str], Any] | None = None  # spec -> ImageSource or FeatureMoments
    info: Any = None  # SamplerInfo of the evaluated sampler
    base_dir: Path = Path(".")
    progress: bool = False
    # (source, extractor, *, moments=[layers], features=[layers], n=None, seed=0) -> a reference handle with
    # .n, .indices, .moments(layer), .features(layer): extracted by the run, once per source and extractor
    reference: Callable[..., Any] | None = None


class Deferred:
    """What ``from_config`` returns when the metric needs a reference: how to build it once the run has extracted
    every reference (``build()``, called by the run before any sampling)."""

    def __init__(self, build: Callable[[], Metric]) -> None:
        self._build = build

    def build(self) -> Metric:
        return self._build()

    @staticmethod
    def complete(item: Metric | Deferred) -> Metric:
        """``item`` itself, or the metric it defers."""
        return item.build() if isinstance(item, Deferred) else item


@dataclass(frozen=True)
class MetricExample:
    """A small instance and synthetic batches, for :func:`diffeval.testing.check_metric`."""

    make: Callable[[], Metric]
    batches: list[Batch]


class Metric(ABC):
    """Base class of every metric; see the module docstring for the contract."""

    name: ClassVar[str]
    direction: ClassVar[str]
    unit: ClassVar[str] = ""
    inputs: ClassVar[str] = "samples"
    options: ClassVar[tuple[Option, ...]] = ()
    state_keys: ClassVar[tuple[str, ...]] = ()
    extractor: str | None = None
    layer: str | None = None
    space: str = ""  # the feature space (or data) the value lives in, for rows: "inception-v3:2048"
    custom_label: str | None = None
    # A metric computed in one pass that reports several rows (precision, recall, density, coverage) declares
    # them here as (row name, direction); compute() fills MetricResult.parts with one result per row.
    parts: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "update" in cls.__dict__:  # every metric refuses what is not a Batch, with the way in for images
            cls.update = _batches_only(cls.__dict__["update"], cls.__name__)

    @property
    def label(self) -> str:
        """The metric's key within a run: ``custom_label`` if set, else ``name@space`` (or ``name``)."""
        return self.custom_label or (f"{self.name}@{self.space}" if self.space else self.name)

    def part_label(self, part: str) -> str:
        """The row label of one of ``parts``: ``part@space`` (or ``custom_label[part]``)."""
        return f"{self.custom_label}[{part}]" if self.custom_label else (f"{part}@{self.space}" if self.space else part)

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, batch: Batch) -> None: ...

    @abstractmethod
    def merge(self, other: Any) -> Metric: ...

    @abstractmethod
    def compute(self) -> MetricResult: ...

    def check_count(self, n: int) -> None:
        """Refuse, before any sampling, a sample count this metric cannot be computed from (default: any count)."""
        return None

    def config_options(self) -> dict[str, Any]:
        """The declared options that describe this instance (what a config would say); round-trips through TOML.

        Generated from :attr:`options`: each option's value is the instance attribute it names (``Option.attr``,
        default the option's name).
        """
        return {o.name: getattr(self, o.attr or o.name) for o in self.options}

    @classmethod
    @abstractmethod
    def from_config(cls, options: dict[str, Any], ctx: BuildContext) -> Metric | Deferred:
        """Build from validated options: the metric, or a :class:`Deferred` one when it asked ``ctx.reference``."""

    @classmethod
    @abstractmethod
    def example(cls) -> MetricExample:
        """A small instance over synthetic batches (for the conformance suite)."""

    # -- streaming state --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The accumulated state (``state_keys``), on the CPU and picklable: what a shard sends."""
        return {key: _to_cpu(getattr(self, key)) for key in self.state_keys}

    def empty_like(self) -> Metric:
        """A copy with the same settings and no accumulated state."""
        other = copy.copy(self)
        other.reset()
        return other

    def merge_state(self, state: dict[str, Any]) -> None:
        """Merge another shard's :meth:`state` into this metric (through :meth:`merge`)."""
        unknown = sorted(set(state) ^ set(self.state_keys))  # unknown, or missing (an empty default would merge)
        if unknown:
            raise InputError(
                explain(
                    f"state of {self.label} has unknown or missing keys {unknown}",
                    expected=f"keys {list(self.state_keys)}",
                    got=", ".join(unknown),
                    fix="merge states of the same metric",
                )
            )
        other = self.empty_like()
        for key, value in state.items():
            setattr(other, key, value)
        self.merge(other)


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: check the declaration and register ``cls`` under ``cls.name``."""
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("name (a non-empty string)")
    if getattr(cls, "direction", None) not in DIRECTIONS:
        problems.append(f"direction ({' or '.join(DIRECTIONS)})")
    if getattr(cls, "inputs", None) not in ("samples", "data"):
        problems.append("inputs ('samples' or 'data')")
    if not all(isinstance(o, Option) for o in getattr(cls, "options", ())):
        problems.append("options (a tuple of diffeval.core.options.Option)")
    if problems:
        raise ConfigError(
            explain(
                f"metric class {cls.__name__} is not fully declared",
                expected="name, direction, inputs and options as class attributes",
                got="missing or invalid: " + ", ".join(problems),
                fix="declare them on the class",
            )
        )
    METRICS.register(cls.name, cls)
    return cls


def metric_class(name: str) -> type[Metric]:
    """The registered metric class ``name`` (unknown names get a "did you mean")."""
    return METRICS.get(name)


def mean_and_stderr(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """Mean and its standard error (unbiased variance / n) from running sums; stderr is NaN for n < 2."""
    mean = total / n
    if n < 2:
        return mean, float("nan")
    var = max(total_sq / n - mean**2, 0.0) * n / (n - 1)
    return mean, math.sqrt(var / n)


def choose_layer(extractor: Any, layer: str | None, metric: str) -> str:
    """``layer``, or the extractor's default layer for ``metric``; it must be one the extractor provides."""
    chosen = layer or getattr(extractor, "default_layers", {}).get(metric)
    if chosen is None or chosen not in extractor.layers:
        raise InputError(
            explain(
                f"extractor {extractor.name!r} has no layer {chosen!r} for {metric}",
                expected=f"one of {sorted(extractor.layers)}",
                got=repr(chosen),
                fix="set layer = one of those",
            )
        )
    return chosen


def require_finite(t: torch.Tensor, who: str) -> None:
    """An :class:`InputError` if ``t`` (on the CPU) holds NaN or inf; CUDA tensors are checked when the metric
    computes.
    """
    if not t.is_cuda and not bool(torch.isfinite(t).all()):
        rows = int((~torch.isfinite(t)).flatten(1).any(1).sum()) if t.ndim > 1 else int((~torch.isfinite(t)).sum())
        raise InputError(
            explain(
                f"{who} input contains NaN or inf",
                expected="finite values",
                got=f"{rows} non-finite row(s)",
                fix="check the images fed to the extractor (or the model)",
            )
        )


def _batches_only(update: Callable[..., None], metric: str) -> Callable[..., None]:
    @functools.wraps(update)
    def checked(self: Metric, batch: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(batch, Batch):
            raise InputError(
                explain(
                    f"{metric}.update takes a Batch of features (what the batch loop hands every metric)",
                    expected="a diffeval.metrics.Batch",
                    got=f"{type(batch).__name__}"
                    + (f" of shape {tuple(batch.shape)}" if torch.is_tensor(batch) else ""),
                    fix=(
                        "feed images to diffeval.Evaluator(metrics=[...], reference=...).update(images), which runs the"
                        " feature extractor once per batch for every metric"
                    ),
                )
            )
        return update(self, batch, *args, **kwargs)

    return checked


def _to_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        clone = copy.copy(value)
        clone.__dict__.update({k: _to_cpu(v) for k, v in value.__dict__.items()})
        return clone
    return value

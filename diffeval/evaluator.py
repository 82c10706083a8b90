"""``Evaluator``: diffeval's metrics on images you feed from your own code, batch by batch.

A training loop, a notebook or a pytest holds the images; the :class:`Evaluator` holds the metrics::

    >>> import torch
    >>> from diffeval import Evaluator
    >>> ev = Evaluator(["fid", "inception_score"], reference="digits:test", extractor="demo-digits", n=64)
    >>> for lo in range(0, 64, 32):
    ...     images = torch.rand(32, 1, 8, 8) * 2 - 1     # your model's samples, float in [-1, 1]
    ...     ev.update(images, value_range="[-1, 1]")
    >>> results = ev.compute()
    >>> results["fid"].value > 0 and results["fid"].stderr > 0
    True

It is the run's machinery, reachable from Python: the metrics are the registered classes built from their
declared options (``metrics=["fid", {"name": "kid", "subset_size": 100}]``, or :class:`~diffeval.metrics.Metric`
instances); their reference (an image folder, an ``.npz``, a data set name such as ``"digits:test"``, a uint8
image tensor or :class:`~diffeval.stats.moments.FeatureMoments`) is extracted once for all of them; each
:meth:`update` runs each feature extractor once and feeds every metric; :meth:`compute` returns the same
:class:`~diffeval.metrics.MetricResult` s (values, standard errors, pairing records) as ``evaluate()`` would on
the same images and seeds. Seeds default to a running count (``seed``, ``seed + 1``, ...), so the seed blocks
behind every standard error follow the order images arrive; under ``torch.distributed`` the count interleaves the
ranks (rank r's i-th image is seed ``seed + i * world + r``) and :meth:`compute` gathers every rank's state, so
every rank gets the result of one process on the same seeds.

Images are uint8 NCHW (0-255), or float with the range stated by ``value_range``: ``"[-1, 1]"`` or ``"[0, 1]"``.
The traps that cannot be in the stated range are refused with the fix (0-255 pixels as floats, [-1, 1] images
stated as [0, 1]); float images are judged at :meth:`compute` by the same ``output_range`` check ``evaluate()``
applies to a sampler's outputs (it names [0, 1] images stated as [-1, 1]), and uint8 images that are all 0 and
1 are named too: a :class:`~diffeval.core.errors.DiffevalWarning`, or an error with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from diffeval.checks.output_range import RangeStats, check_output_range
from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.log import check_failed
from diffeval.core.options import validate_options
from diffeval.data.images import VALUE_RANGES, images_to_uint8
from diffeval.data.sources import ImageSource, TensorSource, open_source
from diffeval.engine.checkpoint import from_plain, to_plain
from diffeval.engine.loop import check_labels, extractor_table, feed, resolve_device
from diffeval.engine.references import ReferencePool
from diffeval.features import extractor_key, get_extractor
from diffeval.metrics.base import BuildContext, Deferred, Metric, MetricResult, metric_class
from diffeval.stats.moments import FeatureMoments

__all__ = ["Evaluator", "Results", "VALUE_RANGES"]

_FORMAT = 1


class Results(dict):
    """Results by label (``fid@inception-v3:2048``); ``results["fid"]`` finds the only metric of that name."""

    def __getitem__(self, key: str) -> MetricResult:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        named = [label for label in self if label.split("@")[0].split("[")[0] == key]
        if len(named) == 1:
            return dict.__getitem__(self, named[0])
        raise KeyError(
            f"{key!r}: "
            + (
                f"several metrics are named so, use a label: {named}"
                if named
                else f"no such metric; labels: {list(self)}"
            )
        )


class _Extractors:
    """Extractors built once per (name, options), shared by every metric that reads them."""

    def __init__(self, device: str) -> None:
        self.device, self.by_spec = device, {}

    def __call__(self, name: str, **options: Any) -> Any:
        options = {k: v for k, v in options.items() if v is not None}
        spec = (name, tuple(sorted(options.items())))
        if spec not in self.by_spec:
            self.by_spec[spec] = get_extractor(name, device=self.device, **options)
        return self.by_spec[spec]


class Evaluator:
    """diffeval's metrics over images fed batch by batch; see the module docstring.

    Args:
        metrics: registered metric names, ``{"name": ..., **options}`` dicts, or Metric instances.
        reference: what reference metrics (FID, KID, CMMD, PRDC) compare with: a path, a data set name, a uint8
            image tensor or FeatureMoments; extracted once for all of them.
        extractor / weights: the feature extractor (registered name) and its weight file, for the metrics that
            take one (default Inception-v3, published weights).
        n: the number of images you will feed (a larger image reference is cut to a seeded subset of n: FID is
            comparable only at matched counts); default: the whole reference.
        value_range: the range of float images (``"[-1, 1]"`` or ``"[0, 1]"``), unless given to each update.
        seed: the first seed of the running count.
        strict: True turns the input-range warnings into errors.
    """

    def __init__(
        self,
        metrics: Sequence[str | Mapping[str, Any] | Metric] = ("fid",),
        *,
        reference: Any = None,
        extractor: str = "inception-v3",
        weights: str | None = None,
        extractors: Iterable[Any] = (),
        n: int | None = None,
        value_range: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        seed: int = 0,
        strict: bool = False,
        progress: bool | None = None,
    ) -> None:
        if value_range is not None and value_range not in VALUE_RANGES:
            images_to_uint8(torch.zeros(1, 1, 1, 1), value_range, "Evaluator")  # the same message as update's
        self.value_range, self.strict, self.seed = value_range, strict, int(seed)
        self.device = str(resolve_device(device))
        cache = _Extractors(self.device)
        pool = ReferencePool(batch_size=batch_size, progress=progress)
        source = self._reference_source(reference)
        self._reference_spec = (
            None
            if reference is None
            else str(reference)
            if isinstance(reference, (str, Path))
            else "<statistics given to the Evaluator>"
            if isinstance(source, FeatureMoments)
            else "<images given to the Evaluator>"
        )
        self._sources: dict[tuple[str, Any], Any] = {}
        if source is not None:
            self._sources[(self._reference_spec, None)] = source
        if n is not None:
            count = n
        elif isinstance(source, FeatureMoments):
            count = source.n
        else:
            count = len(source) if source is not None else 0  # the whole reference: FID then needs that many
        ctx = BuildContext(
            n=int(count),
            seed=self.seed,
            device=self.device,
            batch_size=batch_size,
            extractor=cache,
            open_source=self._open,
            base_dir=Path("."),
            progress=progress,
            reference=pool.request,
        )
        asked = [self._build(item, ctx, extractor, weights) for item in metrics]
        pool.resolve()
        self.metrics: list[Metric] = [Deferred.complete(item) for item in asked]
        check_labels(self.metrics)
        given = list(extractors) + list(cache.by_spec.values())
        self.extractors = extractor_table({extractor_key(e): e for e in given}, self.metrics)
        self.reset()

    # -- construction --------------------------------------------------------------------------------------------
    @staticmethod
    def _reference_source(reference: Any) -> ImageSource | FeatureMoments | None:
        if reference is None or isinstance(reference, (str, Path)):
            return None if reference is None else open_source(str(reference))
        if isinstance(reference, FeatureMoments):
            return reference
        if torch.is_tensor(reference):
            images, _, _ = images_to_uint8(
                reference, None if reference.dtype == torch.uint8 else "[-1, 1]", "reference"
            )
            return TensorSource(images.cpu(), name="reference images")
        if hasattr(reference, "__len__") and hasattr(reference, "load"):
            return reference  # an ImageSource
        raise InputError(
            explain(
                "unusable reference",
                expected="a path, a data set name ('digits:test'), a uint8 image tensor or FeatureMoments",
                got=type(reference).__name__,
                fix="pass one of those",
            )
        )

    def _open(self, spec: str, **kw: Any) -> Any:
        """A spec's source, opened once: metrics naming one reference share one source (and one extraction)."""
        key = (str(spec), kw.get("stats_n"))
        if key not in self._sources:
            self._sources[key] = self._sources.get((str(spec), None)) or open_source(spec, **kw)
        return self._sources[key]

    def _build(self, item: Any, ctx: BuildContext, extractor: str, weights: str | None) -> Any:
        if isinstance(item, Metric):
            return item
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            name, options = item["name"], {k: v for k, v in item.items() if k != "name"}
        else:
            raise ConfigError(
                explain(
                    "a metric the Evaluator cannot build",
                    expected="a registered name ('fid'), {'name': 'kid', **options} or a Metric instance",
                    got=repr(item),
                    fix="name a registered metric",
                )
            )
        cls = metric_class(name)
        declared = {o.name for o in cls.options}
        if "reference" in declared and "reference" not in options:
            if self._reference_spec is None:
                raise ConfigError(
                    explain(
                        f"metric {name!r} compares with a reference, and the Evaluator has none",
                        expected="Evaluator(..., reference=...)",
                        got="no reference",
                        fix="pass reference= (a folder, an .npz, a data set name, uint8 images or FeatureMoments)",
                    )
                )
            options["reference"] = self._reference_spec
        if "extractor" in declared and "extractor" not in options:
            options["extractor"] = extractor
        if "weights" in declared and "weights" not in options and weights is not None:
            options["weights"] = weights
        return cls.from_config(validate_options(options, cls.options, f"Evaluator metric {name!r}"), ctx)

    # -- streaming ----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every image fed (the metrics and their reference stay)."""
        for metric in self.metrics:
            metric.reset()
        self.n = 0
        self._count = 0  # this rank's running count
        self._range = {"float": RangeStats(), "uint8_max": -1, "kinds": set()}

    def _seeds(self, n: int) -> list[int]:
        rank, size = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        seeds = [self.seed + (self._count + i) * size + rank for i in range(n)]
        self._count += n
        return seeds

    def update(
        self,
        images: torch.Tensor,
        seeds: Sequence[int] | None = None,
        cond: Any = None,
        value_range: str | None = None,
    ) -> None:
        """Feed a batch: uint8 NCHW, or float in the stated ``value_range``; ``seeds`` (one per image) default to
        the running count; ``cond`` is the batch's condition (prompts, for CLIP score)."""
        u8, kind, signed = images_to_uint8(images, value_range or self.value_range, "Evaluator.update")
        n = int(u8.shape[0])
        if seeds is None:
            seeds = self._seeds(n)
        else:
            seeds = [int(s) for s in seeds]
            if len(seeds) != n:
                raise InputError(
                    explain(
                        "seeds do not match the images",
                        expected=f"one seed per image ({n})",
                        got=f"{len(seeds)} seeds",
                        fix="pass one seed per image, or none (a running count)",
                    )
                )
        feed(self.metrics, self.extractors, u8.to(self.device), seeds, cond)
        self.n += n
        if signed is None:
            self._range["uint8_max"] = max(self._range["uint8_max"], int(u8.max()) if n else -1)
        else:
            self._range["float"].update(signed)
        self._range["kinds"].add(kind)

    def compute(self) -> Results:
        """Every metric's result by label (gathered over the ranks under ``torch.distributed``). Float inputs are
        judged by the ``output_range`` check (and the [0, 1]-as-[-1, 1] trap): a failure is a
        :class:`~diffeval.core.errors.DiffevalWarning`, or with ``strict=True`` an error."""
        metrics, stats = self.metrics, self._range
        if _distributed():
            metrics, stats = self._gathered()
        self._warn_inputs(stats)
        return Results({m.label: m.compute() for m in metrics})

    def _gathered(self) -> tuple[list[Metric], dict[str, Any]]:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.state_dict())
        merged = [m.empty_like() for m in self.metrics]
        for part in parts:  # rank order: the states merge as one process's would
            for metric in merged:
                metric.merge_state(from_plain(part["metrics"][metric.label]))
        stats = {"float": RangeStats(), "uint8_max": max(p["range"]["uint8_max"] for p in parts), "kinds": set()}
        for part in parts:
            stats["float"] = stats["float"].merge(RangeStats(**part["range"]["float"]))
            stats["kinds"] |= set(part["range"]["kinds"])
        return merged, stats

    def _warn_inputs(self, stats: Mapping[str, Any]) -> None:
        floats = stats["float"].finalize()
        if floats.n_values:
            verdict = check_output_range(floats)  # the same verdict as evaluate() gives a sampler's outputs
            if verdict.status == "fail":  # names the [0, 1]-stated-as-[-1, 1] and 0-255 signatures
                check_failed(verdict.name, verdict.message, self.strict)
        if "uint8" in stats["kinds"] and 0 <= stats["uint8_max"] <= 1:
            check_failed(
                "input_range",
                "every uint8 image is 0 or 1: [0, 1] floats cast to uint8? Fix: feed the floats with"
                " value_range='[0, 1]', or multiply by 255 before .to(torch.uint8)",
                self.strict,
            )

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything fed so far, on the CPU (what a checkpoint or another rank needs): metric states by label."""
        return {
            "format": _FORMAT,
            "n": self.n,
            "count": self._count,
            "range": {
                "float": dataclasses.asdict(self._range["float"].finalize()),
                "uint8_max": self._range["uint8_max"],
                "kinds": sorted(self._range["kinds"]),
            },
            "metrics": {m.label: to_plain(m.state()) for m in self.metrics},  # torch.load(weights_only=True) reads it
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the same metrics and reference)."""
        if state.get("format") != _FORMAT or set(state.get("metrics", {})) != {m.label for m in self.metrics}:
            raise InputError(
                explain(
                    "an Evaluator state that does not fit these metrics",
                    expected=f"format {_FORMAT} and metrics {sorted(m.label for m in self.metrics)}",
                    got=f"format {state.get('format')!r}, metrics {sorted(state.get('metrics', {}))}",
                    fix="load a state_dict saved by an Evaluator with the same metrics",
                )
            )
        self.reset()
        for metric in self.metrics:
            metric.merge_state(from_plain(state["metrics"][metric.label]))
        self.n, self._count = int(state["n"]), int(state["count"])
        r = state["range"]
        self._range = {"float": RangeStats(**r["float"]), "uint8_max": int(r["uint8_max"]), "kinds": set(r["kinds"])}

    def merge(self, other: Evaluator) -> Evaluator:
        """Add another Evaluator's images (a shard fed other seeds) into this one; returns ``self``."""
        self_state, other_state = self.state_dict(), other.state_dict()
        if set(other_state["metrics"]) != set(self_state["metrics"]):
            raise InputError(
                explain(
                    "cannot merge Evaluators of different metrics",
                    expected=f"metrics {sorted(self_state['metrics'])}",
                    got=f"{sorted(other_state['metrics'])}",
                    fix="merge shards built with the same metrics and reference",
                )
            )
        for metric in self.metrics:
            metric.merge_state(from_plain(other_state["metrics"][metric.label]))
        self.n += other.n
        self._range["float"] = self._range["float"].merge(other._range["float"])
        self._range["uint8_max"] = max(self._range["uint8_max"], other._range["uint8_max"])
        self._range["kinds"] |= other._range["kinds"]
        return self


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

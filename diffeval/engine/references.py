"""References belong to the run: every metric asks for its reference, the run extracts each one once.

A metric's ``from_config`` asks the build context for the reference it needs
(``ctx.reference(source, extractor, moments=[layer])`` or ``features=[layer]``, a count ``n`` and a
subset ``seed``) and receives a :class:`ReferenceHandle` — no image is read yet beyond counting them.
When every metric of the run has asked, :meth:`ReferencePool.resolve` extracts each (source,
extractor) group in **one** pass through the batch loop (:func:`diffeval.engine.loop.measure`, with its
CUDA out-of-memory retry), however many metrics, layers, counts and subsets it serves: FID's moments,
KID's, CMMD's and PRDC's kept features all come from that pass. Requests of one group that use the
same images are fed exactly as a lone request would be (the values do not depend on who else asked);
requests with different subsets share one pass over the union of their images, each keeping its own rows.

FID values are comparable only at equal sample counts, so a reference built from images
can be cut to exactly ``n`` images by a seeded subset; asking for more images than the
source has is an error that explains the bias.

Example::

    >>> import torch
    >>> from diffeval.data.sources import TensorSource
    >>> class Mean:  # a toy extractor: the mean of each image
    ...     name, layers, default_layers, channels = "mean", {"m": 1}, {}, 1
    ...     def __call__(self, images):
    ...         return {"m": images.double().mean((1, 2, 3))[:, None]}
    >>> pool = ReferencePool()
    >>> source = TensorSource(torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2))
    >>> a = pool.request(source, Mean(), moments=["m"])
    >>> b = pool.request(source, Mean(), features=["m"], n=4, seed=1)
    >>> (a.moments("m").n, tuple(b.features("m").shape), pool.passes)
    (6, (4, 1), 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffeval.core.errors import InputError, explain
from diffeval.data.sources import ImageSource, seeded_subset
from diffeval.engine.loop import measure
from diffeval.features import FeatureExtractor, extractor_key, feature_space
from diffeval.metrics.base import Batch
from diffeval.stats.moments import FeatureMoments

__all__ = ["Reference", "ReferenceHandle", "ReferencePool", "build_reference"]


@dataclass
class Reference:
    """Moments per layer, kept features per layer, and which images were used."""

    moments: dict[str, FeatureMoments]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.indices)


class ReferenceHandle:
    """One metric's request: which images of a source, which layers as moments and which as kept features.

    Known at once: ``n``, ``indices``, ``source_name``. The moments and features are extracted when the
    pool resolves (reading them resolves the pool first, so a handle read early is still right).
    """

    def __init__(
        self,
        pool: ReferencePool,
        source: ImageSource,
        extractor: FeatureExtractor,
        indices: list[int],
        moment_layers: Sequence[str],
        feature_layers: Sequence[str],
        meta: dict[str, Any],
    ) -> None:
        self._pool, self.source, self.extractor, self.indices = pool, source, extractor, indices
        self.moment_layers, self.feature_layers = tuple(moment_layers), tuple(feature_layers)
        self.source_name = getattr(source, "name", type(source).__name__)
        self.meta = meta
        self._moments: dict[str, FeatureMoments] | None = None
        self._features: dict[str, torch.Tensor] = {}

    @property
    def n(self) -> int:
        return len(self.indices)

    @property
    def resolved(self) -> bool:
        return self._moments is not None

    def moments(self, layer: str) -> FeatureMoments:
        """The float64 moments of ``layer`` over this request's images."""
        self._pool.resolve()
        assert self._moments is not None  # resolve() fills every pending handle
        return self._moments[layer]

    def features(self, layer: str) -> torch.Tensor:
        """The float64 features of ``layer``, one row per image in index order."""
        self._pool.resolve()
        return self._features[layer]

    def reference(self) -> Reference:
        self._pool.resolve()
        assert self._moments is not None
        return Reference(moments=dict(self._moments), features=dict(self._features), indices=list(self.indices))


class _Collector:
    """The one pass of a (source, extractor) group: routes each batch's rows to every request that uses them."""

    def __init__(self, key: str, handles: list[ReferenceHandle], order: list[int]) -> None:
        self.extractor, self.label = key, f"reference@{key}"
        self.handles = handles
        self.whole = [h.indices == order for h in handles]  # fed exactly as a lone request would be
        self.members = [None if whole else set(h.indices) for h, whole in zip(handles, self.whole, strict=True)]
        self.moments = [
            {layer: FeatureMoments({**h.meta, **feature_space(h.extractor, layer)}) for layer in h.moment_layers}
            for h in handles
        ]
        self.kept: list[dict[str, list[torch.Tensor]]] = [{layer: [] for layer in h.feature_layers} for h in handles]

    def update(self, batch: Batch) -> None:
        for i, members in enumerate(self.members):
            rows = None if members is None else [j for j, s in enumerate(batch.seeds) if s in members]
            if rows is not None and not rows:
                continue
            for layer, m in self.moments[i].items():
                x = batch.layer(self.extractor, layer, "reference statistics")
                m.update(x if rows is None else x[rows])
            for layer, chunks in self.kept[i].items():
                x = batch.layer(self.extractor, layer, "reference features").detach().to(torch.float64)
                chunks.append(x if rows is None else x[rows])

    def compute(self) -> Any:
        return None

    def finish(self) -> None:
        for handle, moments, kept in zip(self.handles, self.moments, self.kept, strict=True):
            handle._moments = moments
            handle._features = {layer: torch.cat(chunks) for layer, chunks in kept.items() if chunks}


class ReferencePool:
    """Every reference a run needs, extracted once per (source, extractor): see the module docstring.

    ``passes`` counts the extraction passes made and ``images_extracted`` the images they read — what the
    tests use to show that one source serves every metric in one pass.
    """

    def __init__(self, *, batch_size: int = 64, progress: bool | None = None) -> None:
        self.batch_size, self.progress = batch_size, progress
        self._pending: dict[tuple[int, str], list[ReferenceHandle]] = {}
        self.passes = 0
        self.images_extracted = 0

    def request(
        self,
        source: ImageSource,
        extractor: FeatureExtractor,
        *,
        moments: Sequence[str] = (),
        features: Sequence[str] = (),
        n: int | None = None,
        seed: int = 0,
    ) -> ReferenceHandle:
        """Ask for ``source``'s reference: all images, or a seeded subset of exactly ``n``; checked now, extracted
        at :meth:`resolve`."""
        total = len(source)
        if n is None:
            indices = list(range(total))
        elif n > total:
            raise InputError(
                explain(
                    f"reference {source.name} has too few images",
                    expected=f"at least n = {n} images (FID is only comparable at equal sample counts)",
                    got=f"{total} images",
                    fix=f"generate {total} samples instead, or use a larger reference set",
                )
            )
        else:
            indices = list(range(total)) if n == total else seeded_subset(total, n, seed)
        for layer in (*moments, *features):
            if layer not in extractor.layers:
                raise InputError(
                    explain(
                        f"extractor {extractor.name!r} has no layer {layer!r}",
                        expected=f"one of {sorted(extractor.layers)}",
                        got=repr(layer),
                        fix="pick a layer the extractor provides",
                    )
                )
        meta: dict[str, Any] = {"source": source.name, "subset_seed": seed if len(indices) < total else "none"}
        if getattr(source, "notes", ""):
            meta["conversion"] = source.notes
        handle = ReferenceHandle(self, source, extractor, indices, moments, features, meta)
        self._pending.setdefault((id(source), extractor_key(extractor)), []).append(handle)
        return handle

    def resolve(self) -> None:
        """Extract every pending group: one pass each over the images its requests use."""
        while self._pending:
            (_, key), handles = self._pending.popitem()
            lists = [h.indices for h in handles]
            order = lists[0] if all(x == lists[0] for x in lists) else sorted(set().union(*lists))
            collector = _Collector(key, handles, order)
            source, extractor = handles[0].source, handles[0].extractor
            measure(
                source,
                extractors={key: extractor},
                metrics=[collector],
                batch_size=self.batch_size,
                indices=order,
                progress=self.progress,
                compute=False,
                stage=f"reference {source.name} ({key})",
            )
            collector.finish()
            self.passes += 1
            self.images_extracted += len(order)


def build_reference(
    source: ImageSource,
    extractor: FeatureExtractor,
    *,
    moment_layers: Sequence[str] = (),
    feature_layers: Sequence[str] = (),
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool | None = None,
) -> Reference:
    """One reference on its own (a pool of one request): all images of ``source``, or a seeded subset of ``n``."""
    pool = ReferencePool(batch_size=batch_size, progress=progress)
    handle = pool.request(source, extractor, moments=moment_layers, features=feature_layers, n=n, seed=seed)
    return handle.reference()

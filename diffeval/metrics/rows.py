"""The streaming state shared by metrics that keep every generated row: KID, IS, CMMD, PRDC.

Such a metric cannot be reduced to moments: it keeps each feature row in float64 (``chunks``),
the seed of each row (``seed_chunks``; batches fed without seeds keep arrival order) and the
:class:`~diffeval.stats.uncertainty.SeedBlocks` fingerprint of those seeds. :class:`RowMetric` does
``reset``/``update``/``merge`` for all of them, so batching, shards and resumes are handled once;
a subclass says how many seed blocks it keeps and, when it has a reference, the width its rows
must have, and computes from :meth:`RowMetric.rows` and :meth:`RowMetric.row_seeds`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from diffeval.core.errors import InputError, explain
from diffeval.metrics.base import Batch, Metric, require_finite
from diffeval.stats.uncertainty import SeedBlocks


class RowMetric(Metric):
    """A metric whose state is its generated rows, their seeds and the seed-block fingerprint."""

    state_keys: ClassVar[tuple[str, ...]] = ("chunks", "seed_chunks", "seed_blocks")
    #: what the metric is called in messages ("KID")
    display_name: ClassVar[str] = ""
    #: the fix a width mismatch suggests
    width_fix: ClassVar[str] = "use the same extractor layer for both sets"

    def seed_block_count(self) -> int:
        """How many seed blocks the fingerprint keeps (the metric's ``blocks`` option, at least 1)."""
        return max(int(getattr(self, "blocks", 1)), 1)

    def reference_width(self) -> int | None:
        """The feature dimension rows must have (the reference's), or None when anything goes."""
        return None

    def reference_note(self) -> str:
        """A word on where the reference width comes from, for the mismatch message."""
        return ""

    def reset(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.seed_chunks: list[torch.Tensor] = []
        self.seed_blocks = SeedBlocks(self.seed_block_count())

    def update(self, batch: Batch) -> None:
        name = self.display_name or self.name
        features = batch.layer(self.extractor, self.layer, name)
        width = self.reference_width()
        if width is not None and features.shape[1] != width:
            note = self.reference_note()
            raise InputError(
                explain(
                    f"{name} feature dimension differs from the reference",
                    expected=f"d = {width}" + (f" ({note})" if note else ""),
                    got=f"d = {features.shape[1]}",
                    fix=self.width_fix,
                )
            )
        require_finite(features, name)
        self.seed_blocks.assign(batch.seeds, features.shape[0])
        self.chunks.append(features.detach().to(torch.float64))
        if len(batch.seeds) == features.shape[0]:
            self.seed_chunks.append(torch.as_tensor(list(batch.seeds), dtype=torch.int64))

    def merge(self, other: RowMetric) -> RowMetric:
        self.chunks.extend(other.chunks)
        self.seed_chunks.extend(other.seed_chunks)
        self.seed_blocks.merge(other.seed_blocks)
        return self

    def rows(self, width: int) -> torch.Tensor:
        """Every row kept, on the CPU, in arrival order (``(0, width)`` when none)."""
        if not self.chunks:
            return torch.empty(0, width, dtype=torch.float64)
        out = torch.cat([c.cpu() for c in self.chunks])
        require_finite(out, self.display_name or self.name)  # CUDA rows were not checked as they came
        return out

    def seeded(self) -> bool:
        """Whether every row came with its seed (so seed order and seed blocks are defined)."""
        return bool(self.chunks) and not self.seed_blocks.unseeded

    def row_seeds(self) -> torch.Tensor:
        """The seed of every row, in arrival order (only when :meth:`seeded`)."""
        return torch.cat(self.seed_chunks)

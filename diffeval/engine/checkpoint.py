"""Run checkpoints: what ``diffeval run --resume`` needs to continue an interrupted run exactly.

A checkpoint holds the rows of the stages already done, the checks' drawn figures, the
sweep points completed and, inside the current one, the sampling loop's state (metric
states, latency, output range, kept samples) at a batch boundary. It is written
atomically (a temporary file renamed over the old one) and read back with
``torch.load(weights_only=True)``: only plain values and tensors are stored, so loading
one runs no code. Known dataclasses are converted to tagged dicts and back.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from diffeval.checks.base import CheckResult
from diffeval.checks.output_range import RangeStats
from diffeval.core.errors import InputError, explain
from diffeval.engine.loop import LoopState
from diffeval.stats.moments import FeatureMoments
from diffeval.stats.uncertainty import SeedBlocks

__all__ = ["save", "load", "to_plain", "from_plain", "FILENAME", "VERSION"]

FILENAME = "checkpoint.pt"
VERSION = 1
_DATACLASSES: dict[str, type] = {
    "LoopState": LoopState,
    "RangeStats": RangeStats,
    "CheckResult": CheckResult,
    "SeedBlocks": SeedBlocks,
}
_TAG = "__diffeval_type__"


def _plain(value: Any) -> Any:
    if isinstance(value, FeatureMoments):
        return {_TAG: "FeatureMoments", **{k: _plain(v) for k, v in value.__dict__.items()}}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _DATACLASSES:
        return {
            _TAG: type(value).__name__,
            **{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return value.detach().cpu()
    return value


def to_plain(value: Any) -> Any:
    """Metric states (FeatureMoments, seed blocks, check results) as tensors, lists, dicts and numbers: what
    ``torch.load(weights_only=True)`` reads back, so a saved state never runs code."""
    return _plain(value)


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain`."""
    return _restore(value)


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get(_TAG)
        fields = {k: _restore(v) for k, v in value.items() if k != _TAG}
        if kind == "FeatureMoments":
            moments = FeatureMoments(fields.pop("meta", {}))
            moments.__dict__.update(fields)
            return moments
        if kind in _DATACLASSES:
            return _DATACLASSES[kind](**fields)
        return fields
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def save(folder: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``folder/checkpoint.pt`` atomically."""
    path = Path(folder) / FILENAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"version": VERSION, **_plain(payload)}, tmp)
    os.replace(tmp, path)
    return path


def load(folder: str | Path) -> dict[str, Any]:
    """Read ``folder/checkpoint.pt`` (weights-only: no code runs)."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        raise InputError(
            explain(
                f"nothing to resume in {folder}",
                expected=f"{FILENAME} left by an interrupted `diffeval run`",
                got="no checkpoint (the run completed, or stopped before its first checkpoint)",
                fix="run without --resume",
            )
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(
            explain(
                f"cannot read the checkpoint {path}",
                expected="a checkpoint written by diffeval",
                got=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                fix="delete it and run without --resume",
            )
        ) from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise InputError(
            explain(
                f"checkpoint {path} has an unknown format",
                expected=f"version {VERSION}",
                got=repr(data.get("version") if isinstance(data, dict) else type(data).__name__),
                fix="delete it and run without --resume",
            )
        )
    return _restore(data)

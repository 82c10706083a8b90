"""Run checkpoints: what ``diffeval run --resume`` needs to continue an interrupted run exactly.

A checkpoint holds the rows of the stages already done, the checks' drawn figures (as paths relative to the run
folder, so a moved run folder still resumes), the sweep points completed and, inside the current one, the
sampling loop's state (metric states, latency, output range, kept samples) at a batch boundary.

It is written atomically (:func:`diffeval.core.files.torch_save`: a temporary file renamed over the old one) and
read back with ``torch.load(weights_only=True)``: only plain values and tensors are stored, so loading one runs no
code. Known dataclasses are converted to tagged dicts and back. The file records its format, the diffeval version
that wrote it and a SHA-256 digest of its canonical payload (:func:`digest`); :func:`load` refuses a checkpoint
whose digest does not match (edited or damaged), one written by another diffeval version, and one with fields it
does not know.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from diffeval.checks.base import CheckResult
from diffeval.checks.output_range import RangeStats
from diffeval.core.errors import InputError, explain
from diffeval.core.files import torch_save
from diffeval.engine.loop import LoopState
from diffeval.stats.moments import FeatureMoments
from diffeval.stats.uncertainty import SeedBlocks
from diffeval.version import __version__

__all__ = ["save", "load", "to_plain", "from_plain", "digest", "FILENAME", "VERSION", "FIELDS"]

FILENAME = "checkpoint.pt"
VERSION = 2  # 2: payload + digest + diffeval version (1: the payload's keys at the top level, no digest)
FIELDS = ("version", "diffeval_version", "digest", "payload")
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


def _unknown_fields(kind: str, given: Iterable[str], known: Iterable[str]) -> InputError:
    extra, missing = sorted(set(given) - set(known)), sorted(set(known) - set(given))
    return InputError(
        explain(
            f"a saved {kind} has fields diffeval does not know",
            expected=f"the fields {sorted(known)}",
            got=", ".join([f"unknown {extra}"] * bool(extra) + [f"missing {missing}"] * bool(missing)),
            fix="use a state or checkpoint written by this diffeval version (a damaged one: start over)",
        )
    )


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get(_TAG)
        fields = {k: _restore(v) for k, v in value.items() if k != _TAG}
        if kind == "FeatureMoments":
            moments = FeatureMoments(fields.pop("meta", {}))
            if set(fields) - set(moments.__dict__):
                raise _unknown_fields(kind, fields, set(moments.__dict__) - {"meta"})
            moments.__dict__.update(fields)
            return moments
        if kind in _DATACLASSES:
            cls = _DATACLASSES[kind]
            names = [f.name for f in dataclasses.fields(cls)]
            required = [
                f.name
                for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            if set(fields) - set(names) or set(required) - set(fields):
                raise _unknown_fields(kind, fields, names)
            return cls(**fields)
        return fields
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def _feed(h: Any, value: Any) -> None:
    """Feed ``value``'s canonical form to the hash ``h``: types, lengths and sorted keys, tensors' dtype, shape and
    bytes, numbers by their exact ``repr``."""
    if isinstance(value, dict):
        h.update(b"{%d:" % len(value))
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[%d:" % len(value))
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, bytes):
        h.update(b"B%d:" % len(value) + value)
    else:
        text = repr(value).encode()
        h.update(f"{type(value).__name__}{len(text)}:".encode() + text)


def digest(payload: Any) -> str:
    """SHA-256 (hex) of the canonical form of a plain payload (:func:`to_plain`): equal payloads, equal digests,
    whatever the dict order or the file's pickling."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def save(folder: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``folder/checkpoint.pt`` atomically, with its digest and this diffeval's version."""
    folder = Path(folder)
    path = folder / FILENAME
    plain = _plain(payload)
    record = {"version": VERSION, "diffeval_version": __version__, "digest": digest(plain), "payload": plain}
    torch_save(path, record, fix="move the run folder to a disk with room: it resumes wherever it lies")
    (folder / f"{FILENAME}.tmp").unlink(missing_ok=True)  # left by the writer of format 1 (killed mid-write)
    return path


def _refuse(path: Path, what: str, expected: str, got: str, fix: str) -> InputError:
    return InputError(explain(f"cannot resume from {path}: {what}", expected=expected, got=got, fix=fix))


def load(folder: str | Path, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """Read ``folder/checkpoint.pt`` (weights-only: no code runs); the payload as saved.

    Refused (:class:`~diffeval.core.errors.InputError`, what / expected / got / fix): no checkpoint, one that does
    not load, another format or diffeval version, a digest that does not match its payload (edited or damaged),
    fields other than :data:`FIELDS` or, when given, payload keys other than ``fields``.
    """
    path = Path(folder) / FILENAME
    start_over = f"delete {path} and run without --resume (the run starts over)"
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
                fix=f"finish it with the diffeval version that wrote it, or {start_over}",
            )
        )
    if set(data) != set(FIELDS):
        extra, missing = sorted(set(data) - set(FIELDS)), sorted(set(FIELDS) - set(data))
        raise _refuse(
            path,
            "it has fields diffeval does not write",
            f"exactly the fields {list(FIELDS)}",
            "; ".join([f"unknown {extra}"] * bool(extra) + [f"missing {missing}"] * bool(missing)),
            start_over,
        )
    if data["diffeval_version"] != __version__:
        raise _refuse(
            path,
            "it was written by another diffeval version (its results could differ from this version's)",
            f"diffeval {__version__}",
            f"diffeval {data['diffeval_version']}",
            f"resume with diffeval {data['diffeval_version']} (pip install diffeval=={data['diffeval_version']}), or"
            f" {start_over}",
        )
    payload = data["payload"]
    found = digest(payload)
    if not isinstance(data["digest"], str) or found != data["digest"]:
        raise _refuse(
            path,
            "its content does not match the digest diffeval recorded (it was edited or damaged after it was written)",
            f"SHA-256 {data['digest']}",
            f"SHA-256 {found}",
            start_over,
        )
    if not isinstance(payload, dict):
        raise _refuse(path, "its payload is not a table", "a dict", type(payload).__name__, start_over)
    if fields is not None and set(payload) != set(fields):
        extra, missing = sorted(set(payload) - set(fields)), sorted(set(fields) - set(payload))
        raise _refuse(
            path,
            "it has fields this run does not know",
            f"exactly the fields {sorted(fields)}",
            "; ".join([f"unknown {extra}"] * bool(extra) + [f"missing {missing}"] * bool(missing)),
            start_over,
        )
    try:
        return _restore(payload)
    except InputError as error:
        raise InputError(f"cannot resume from {path}: {error}") from None

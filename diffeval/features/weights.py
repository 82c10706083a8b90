"""Weight files: resolution, SHA-256 verification and safe loading.

A weight file is accepted only if (when a hash is known) its SHA-256 matches and it
loads with ``torch.load(weights_only=True)`` — never an arbitrary pickle. Published
weights are resolved by :func:`resolve`: explicit path → ``$DIFFEVAL_WEIGHTS_DIR`` →
torch hub cache → download with the hash check (never with ``DIFFEVAL_OFFLINE=1``).
Nothing is downloaded at import time.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffeval.core.errors import WeightsError, explain

__all__ = [
    "sha256_file",
    "verify_sha256",
    "load_state_dict",
    "PublishedWeights",
    "resolve",
    "offline",
    "candidate_paths",
    "OFFLINE_ENV",
    "WEIGHTS_DIR_ENV",
]


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (cached per path, size and modification time)."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, fix: str) -> None:
    """Raise :class:`WeightsError` if ``path`` is missing or its SHA-256 is not ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            explain(f"weight file {path} not found", expected="an existing file", got="nothing at that path", fix=fix)
        )
    actual = sha256_file(path)
    if actual != expected.lower():
        raise WeightsError(
            explain(
                f"weight file {path} failed its hash check (corrupted or replaced)",
                expected=f"SHA-256 {expected}",
                got=f"SHA-256 {actual}",
                fix=fix,
            )
        )


def load_state_dict(path: str | Path, sha256: str | None, fix: str) -> dict[str, Any]:
    """Verify (when ``sha256`` is given) and load a state dict with ``weights_only=True``.

    ``sha256=None`` is for user-supplied files whose hash diffeval cannot know; they are
    still loaded only through the safe, weights-only unpickler.
    """
    if sha256 is not None:
        verify_sha256(path, sha256, fix)
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise WeightsError(
            explain(
                f"refused weight file {path}: it does not load with torch.load(weights_only=True)",
                expected="a plain state dict of tensors",
                got=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                fix="re-save the weights with torch.save(model.state_dict(), path)",
            )
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(
            explain(
                f"weight file {path} holds no state dict",
                expected="dict of tensors",
                got=type(state).__name__,
                fix="save model.state_dict(), not the model",
            )
        )
    return state


# -- resolution of published weights ------------------------------------------------
OFFLINE_ENV = "DIFFEVAL_OFFLINE"
WEIGHTS_DIR_ENV = "DIFFEVAL_WEIGHTS_DIR"


@dataclass(frozen=True)
class PublishedWeights:
    """A published weight file: its file name, download URL, SHA-256 prefix (torch.hub style) and size.

    ``sha256_prefix=None`` marks a file whose hash diffeval has not pinned yet: a local copy is
    accepted when its size matches ``size`` (its full SHA-256 still goes into every row's
    feature-space identity), and it is never downloaded — a download nobody can verify is refused.
    """

    filename: str
    url: str
    sha256_prefix: str | None
    size: int | None = None


def offline() -> bool:
    """True when ``DIFFEVAL_OFFLINE`` is set to 1/true/yes."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def candidate_paths(spec: PublishedWeights) -> list[Path]:
    """Where a published file is looked for: ``$DIFFEVAL_WEIGHTS_DIR``, then the torch hub cache."""
    paths = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        paths.append(Path(os.environ[WEIGHTS_DIR_ENV]) / spec.filename)
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / spec.filename)
    return paths


def _check_prefix(path: Path, spec: PublishedWeights) -> None:
    if spec.sha256_prefix is None:
        size = path.stat().st_size
        if spec.size is not None and size != spec.size:
            raise WeightsError(
                explain(
                    f"weight file {path} has the wrong size (truncated, or another file)",
                    expected=f"{spec.size:,} bytes ({spec.url})",
                    got=f"{size:,} bytes",
                    fix=f"delete it and download {spec.url} again",
                )
            )
        return
    digest = sha256_file(path)
    if not digest.startswith(spec.sha256_prefix):
        raise WeightsError(
            explain(
                f"weight file {path} failed its hash check (corrupted or replaced)",
                expected=f"SHA-256 starting with {spec.sha256_prefix}",
                got=f"SHA-256 {digest}",
                fix=f"delete it and download {spec.url} again",
            )
        )


def resolve(spec: PublishedWeights, path: str | Path | None = None) -> tuple[Path, bool]:
    """Find a weight file; returns ``(path, verified)`` (verified: its pinned hash matched; a file whose hash is not
    pinned is only size-checked, and is not called verified, so its rows carry its own hash).

    Order: explicit ``path`` (a user file: not hash-checked, still loaded weights-only) →
    ``$DIFFEVAL_WEIGHTS_DIR/<filename>`` → torch hub cache → download from ``spec.url``
    into the hub cache with the hash check on — unless ``DIFFEVAL_OFFLINE=1``, where a
    missing file is an error naming the places searched.
    """
    if path is not None:
        explicit = Path(path)
        if not explicit.is_file():
            raise WeightsError(
                explain(
                    f"weight file {explicit} not found",
                    expected="an existing file",
                    got="nothing at that path",
                    fix="check the --weights path",
                )
            )
        return explicit, False
    candidates = candidate_paths(spec)
    for candidate in candidates:
        if candidate.is_file():
            _check_prefix(candidate, spec)
            return candidate, spec.sha256_prefix is not None
    searched = ", ".join(str(c) for c in candidates)
    if offline():
        raise WeightsError(
            explain(
                f"weights {spec.filename} not found and downloads are off ({OFFLINE_ENV}=1)",
                expected=f"the file in one of: {searched}",
                got="no such file",
                fix=f"download {spec.url} into ${WEIGHTS_DIR_ENV} (or pass an explicit path), or unset {OFFLINE_ENV}",
            )
        )
    if spec.sha256_prefix is None:
        raise WeightsError(
            explain(
                f"weights {spec.filename} not found, and diffeval has no pinned SHA-256 to verify a download",
                expected=f"the file in one of: {searched}",
                got="no such file",
                fix=(
                    f"download {spec.url} ({spec.size:,} bytes) yourself into ${WEIGHTS_DIR_ENV} or the torch hub"
                    " cache (torch.hub.load('facebookresearch/dinov2', ...) puts it there), or pass an explicit path;"
                    " its SHA-256 is recorded in every row"
                    if spec.size
                    else f"download {spec.url} yourself into ${WEIGHTS_DIR_ENV}, or pass an explicit path"
                ),
            )
        )
    target = candidates[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=spec.sha256_prefix, progress=True)
    except Exception as error:  # network errors, hash mismatch (RuntimeError)
        raise WeightsError(
            explain(
                f"could not download {spec.url}",
                expected=f"a file whose SHA-256 starts with {spec.sha256_prefix}",
                got=f"{type(error).__name__}: {error}",
                fix=f"download it by hand into ${WEIGHTS_DIR_ENV}, or set {OFFLINE_ENV}=1 and pass an explicit path",
            )
        ) from None
    return target, True

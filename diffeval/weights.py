"""Weight files: SHA-256 verification and safe loading.

A weight file is accepted only if (when a hash is known) its SHA-256 matches and it
loads with ``torch.load(weights_only=True)`` — never an arbitrary pickle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from diffeval.errors import WeightsError, explain

__all__ = ["sha256_file", "verify_sha256", "load_state_dict"]


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, fix: str) -> None:
    """Raise :class:`WeightsError` if ``path`` is missing or its SHA-256 is not ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(explain(f"weight file {path} not found", expected="an existing file", got="nothing at that path", fix=fix))
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
            explain(f"weight file {path} holds no state dict", expected="dict of tensors", got=type(state).__name__, fix="save model.state_dict(), not the model")
        )
    return state

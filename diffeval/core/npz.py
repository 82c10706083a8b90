"""``.npz`` files read as data, never as code, and checked before anything is allocated.

:func:`npz_headers` reads only the archive's directory and each array's ``.npy`` header: an archive
that is not a zip file (truncated, or another format), an object array (pickled Python objects), or an
array whose declared shape needs more bytes than the archive holds for it (a forged or cut header that
would make NumPy allocate, say, 1.79 TiB) is an :class:`~diffeval.core.errors.InputError` saying what,
what was expected and the fix. :func:`read_npz` then loads the arrays asked for, with ``allow_pickle=False``.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffeval.core.errors import InputError, explain

__all__ = ["ArrayHeader", "npz_headers", "read_npz"]


@dataclass(frozen=True)
class ArrayHeader:
    """One array of an ``.npz``: its declared shape and dtype (nothing of its data read)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _unreadable(path: Path, who: str, error: BaseException) -> InputError:
    return InputError(
        explain(
            f"cannot read {who} {path}",
            expected="a complete NumPy .npz archive (numpy.savez)",
            got=f"{type(error).__name__}: {error}",
            fix="re-save the file with numpy.savez (a copy cut short, or a file of another format, reads like this)",
        )
    )


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[ArrayHeader, int]:
    """The array's header and the byte count its data occupies in the archive."""
    fmt = np.lib.format
    with archive.open(info) as member:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        offset = member.tell()
    return ArrayHeader(tuple(int(s) for s in shape), np.dtype(dtype)), info.file_size - offset


def npz_headers(path: str | Path, who: str = "file") -> dict[str, ArrayHeader]:
    """Every array's declared shape and dtype, by key (as ``numpy.load(path).files`` names them), validated:
    no object arrays, and each array's declared size equal to the bytes the archive holds for it."""
    path = Path(path)
    headers: dict[str, ArrayHeader] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                header, held = _header(archive, info)
                if header.dtype.hasobject:
                    raise InputError(
                        explain(
                            f"{who} {path}: array {key!r} holds Python objects ({header.dtype})",
                            expected="numeric arrays (object arrays are pickles, and pickles are never loaded)",
                            got=f"dtype {header.dtype}, shape {header.shape}",
                            fix="save plain numeric arrays, e.g. numpy.savez(path, mu=mu.astype(float), ...)",
                        )
                    )
                if header.nbytes != held:
                    raise InputError(
                        explain(
                            f"{who} {path}: array {key!r} does not hold what its header declares",
                            expected=f"{header.nbytes:,} bytes of data for shape {header.shape} of {header.dtype}",
                            got=f"{held:,} bytes",
                            fix="re-save the file with numpy.savez (its header was cut or edited)",
                        )
                    )
                headers[key] = header
    except InputError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, RuntimeError) as error:
        raise _unreadable(path, who, error) from None
    return headers


def read_npz(path: str | Path, keys: list[str] | None = None, who: str = "file") -> dict[str, np.ndarray]:
    """The arrays ``keys`` (default: all) of a validated ``.npz`` (:func:`npz_headers` first), loaded without pickle."""
    path = Path(path)
    headers = npz_headers(path, who)
    wanted = list(headers) if keys is None else [k for k in keys if k in headers]
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in wanted}
    except (OSError, EOFError, ValueError, MemoryError, zipfile.BadZipFile, zlib.error, RuntimeError) as error:
        raise _unreadable(path, who, error) from None

"""Image sources: folders, ADM-style ``.npz`` batches, tensors and registered data sets, read as uint8 NCHW batches.

A source has a length and loads any subset by index, so a reference with more
images than the generated set can be subsampled (seeded) to a matched count.

:func:`open_source` is the one place a *spec* becomes images: an image folder, an
``.npz`` image batch (``arr_0``), ``.npz`` statistics (``mu``, ``sigma``, ``n``), or a
data set registered in :data:`DATASETS` as ``name`` or ``name:split`` (plugins register
theirs; the bundled demo registers ``digits``). Relative paths are resolved against a
base folder (a config's folder).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from diffeval.core.errors import InputError, explain
from diffeval.core.log import note
from diffeval.core.npz import npz_headers, read_npz
from diffeval.core.quantize import to_uint8
from diffeval.core.registry import Registry
from diffeval.stats.moments import COUNT_OPTION, FeatureMoments

__all__ = [
    "ImageSource",
    "TensorSource",
    "NpzImageSource",
    "FolderSource",
    "DATASETS",
    "open_input",
    "open_source",
    "open_images",
    "read_prompts",
    "iter_batches",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "PIXELS_ENV",
    "max_image_pixels",
    "seeded_subset",
]

DATASETS: Registry[Any] = Registry("data set")  # name -> opener(split: str | None) -> ImageSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")  # any case
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height of one image file, checked from its header before decoding
PIXELS_ENV = "DIFFEVAL_MAX_IMAGE_PIXELS"  # overrides MAX_IMAGE_PIXELS


def max_image_pixels() -> int:
    """The largest image (width x height) a folder may hold: ``$DIFFEVAL_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS` (16.8 M: 4096 x 4096; a batch of 64 RGB images at the cap is 3.2 GB decoded)."""
    text = os.environ.get(PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(
            explain(
                f"${PIXELS_ENV} is not a pixel count",
                expected="a positive integer (width x height of the largest image allowed)",
                got=repr(text),
                fix=f"unset it (default {MAX_IMAGE_PIXELS:,}) or set e.g. {PIXELS_ENV}={8192 * 8192}",
            )
        )
    return value


def _too_large(file: Path, got: str, cap: int) -> InputError:
    return InputError(
        explain(
            f"image {file} is too large to decode",
            expected=f"at most {cap:,} pixels per image (${PIXELS_ENV}, default {MAX_IMAGE_PIXELS:,} = 4096 x 4096)",
            got=got,
            fix=(
                f"resize the images first, or raise ${PIXELS_ENV} if the size is real (every batch decodes"
                " batch_size such images at once; beyond PIL's own limit, PIL.Image.MAX_IMAGE_PIXELS must be raised"
                " too)"
            ),
        )
    )


@runtime_checkable
class ImageSource(Protocol):
    name: str

    def __len__(self) -> int: ...

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (len(indices), C, H, W)."""
        ...


class TensorSource:
    """Images already in memory: uint8 NCHW, or float NCHW in [-1, 1] (quantized on load)."""

    def __init__(self, images: torch.Tensor, name: str = "tensor") -> None:
        self.images = to_uint8(images)
        self.name = name

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(list(indices), dtype=torch.long)]


class NpzImageSource:
    """An ADM-style reference batch: ``arr_0`` uint8 (N, H, W, C) (or (N, H, W) grayscale)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        header = npz_headers(self.path, "image batch").get("arr_0")
        if header is None or header.dtype != np.uint8 or len(header.shape) not in (3, 4):
            raise InputError(
                explain(
                    f"{path}: arr_0 is not an image batch",
                    expected="uint8 (N, H, W, C) or (N, H, W)",
                    got="no arr_0" if header is None else f"{header.dtype} {header.shape}",
                    fix="save images as np.savez(path, arr_0=uint8_nhwc)",
                )
            )
        array = read_npz(self.path, ["arr_0"], "image batch")["arr_0"]
        if array.ndim == 3:
            array = array[..., None]
        self.images = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(list(indices), dtype=torch.long)]


_GRAY_MODES = ("L", "1")
_COLOUR_MODES = ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV")  # converted to RGB by PIL without loss of meaning
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _image_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``root`` (recursive, sorted by path) and the symlinked folders skipped on the way."""
    files, links = [], []
    for folder, subfolders, names in os.walk(root):  # followlinks=False: a symlinked folder is not entered
        links += [Path(folder, d) for d in subfolders if os.path.islink(os.path.join(folder, d))]
        files += [Path(folder, f) for f in names if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files), sorted(links)


class FolderSource:
    """Every image file under a folder (recursive, sorted by path); all must share one size.

    Every file's header is read up front (sizes, colour modes, unreadable files), so a bad
    file is an error before any work. The colour mode is decided per file: a folder of
    grayscale files stays 1-channel; a folder with any colour file is read as RGB, and
    grayscale or palette files in it are converted (gray repeated to 3 channels) — stated
    in :attr:`notes` and on stderr, never silently. Alpha channels, transparency (a palette or
    colour key marked transparent) and 16-bit or float images are refused (as the ``.npz`` path
    refuses 4 channels), with the fix. An image larger than :func:`max_image_pixels` is refused
    from its header, before anything is decoded. Symlinked subfolders are not followed (they could
    loop or leave the folder): each one skipped is said in :attr:`notes` and on stderr; symlinked
    files are read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.max_pixels = max_image_pixels()
        self.files, links = _image_files(self.path)
        skipped = ""
        if links:
            names = ", ".join(str(link.relative_to(self.path)) for link in links[:5]) + (
                ", ..." if len(links) > 5 else ""
            )
            skipped = (
                f"{self.path}: skipped {len(links)} symlinked subfolder(s) ({names}):"
                " symlinks to folders are not followed; pass the target folder, or copy the images in"
            )
            note(skipped)
        if not self.files:
            raise InputError(
                explain(
                    f"no images in folder {path}",
                    expected=f"files ending in {', '.join(IMAGE_SUFFIXES)}",
                    got="none",
                    fix="point to a folder of image files",
                )
            )
        modes: dict[str, list[Path]] = {}
        self.size: tuple[int, int] | None = None
        for file in self.files:
            mode, size = self._header(file)
            if self.size is None:
                self.size = size
            elif size != self.size:
                raise InputError(
                    explain(
                        f"image {file} has another size than the rest of {self.path}",
                        expected=f"{self.size[0]}x{self.size[1]} (the size of {self.files[0].name})",
                        got=f"{size[0]}x{size[1]}",
                        fix="resize all images to one size first",
                    )
                )
            modes.setdefault(mode, []).append(file)
        self.mode = "L" if set(modes) <= set(_GRAY_MODES) else "RGB"
        converted = {m: f for m, f in modes.items() if m != self.mode}
        self.notes = skipped
        if converted:
            counts = ", ".join(f"{len(f)} {m}" for m, f in sorted(converted.items()))
            conversion = (
                f"{self.path}: read as {self.mode}; converted {counts} file(s) (e.g."
                f" {next(iter(converted.values()))[0].name})"
            )
            note(conversion)
            self.notes = "; ".join(n for n in (skipped, conversion) if n)

    def _header(self, file: Path) -> tuple[str, tuple[int, int]]:
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():  # the size is judged below, against max_image_pixels
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(file) as image:  # reads the header only: nothing is decoded here
                    mode, size, transparent = image.mode, image.size, "transparency" in image.info
        except Image.DecompressionBombError as error:
            raise _too_large(file, f"PIL refused it: {str(error).rstrip('.')}", self.max_pixels) from None
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise InputError(
                explain(
                    f"cannot read image {file}",
                    expected="a readable image file",
                    got=f"{type(error).__name__}: {error}",
                    fix="remove or re-export the file",
                )
            ) from None
        if size[0] * size[1] > self.max_pixels:
            raise _too_large(file, f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels", self.max_pixels)
        if transparent and mode not in _ALPHA_MODES:
            raise InputError(
                explain(
                    f"image {file} has transparency ({mode} with a colour marked transparent)",
                    expected="grayscale or RGB images without transparency",
                    got=f"mode {mode} with a transparency entry",
                    fix="drop the transparency (composite onto a background) before evaluating",
                )
            )
        if mode in _ALPHA_MODES:
            raise InputError(
                explain(
                    f"image {file} has an alpha channel ({mode})",
                    expected="grayscale or RGB images",
                    got=f"mode {mode}",
                    fix="drop the alpha channel (composite onto a background) before evaluating",
                )
            )
        if mode not in _GRAY_MODES + _COLOUR_MODES:
            raise InputError(
                explain(
                    f"image {file} is not an 8-bit image ({mode})",
                    expected="8-bit grayscale or RGB images",
                    got=f"mode {mode}",
                    fix=(
                        "convert the images to 8 bits per channel first (16-bit and float images are not quantized"
                        " here)"
                    ),
                )
            )
        return mode, size

    def __len__(self) -> int:
        return len(self.files)

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        from PIL import Image

        arrays = []
        for i in indices:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(self.files[i]) as image:
                        if image.size != self.size:  # changed since its header was read: never decode blind
                            raise InputError(
                                explain(
                                    f"image {self.files[i]} changed while it was being read",
                                    expected=f"{self.size[0]}x{self.size[1]}, as its header said",  # type: ignore[index]
                                    got=f"{image.size[0]}x{image.size[1]}",
                                    fix="do not modify the folder during an evaluation",
                                )
                            )
                        array = np.asarray(image.convert(self.mode))
            except Image.DecompressionBombError as error:
                raise _too_large(self.files[i], f"PIL refused it: {str(error).rstrip('.')}", self.max_pixels) from None
            except OSError as error:  # a file whose header read fine but whose data is broken
                raise InputError(
                    explain(
                        f"cannot decode image {self.files[i]}",
                        expected="a complete image file",
                        got=f"{type(error).__name__}: {error}",
                        fix="remove or re-export the file",
                    )
                ) from None
            arrays.append(array[..., None] if array.ndim == 2 else array)
        return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())


def open_input(
    path: str | Path, stats_n: int | None = None, count_option: str = COUNT_OPTION
) -> ImageSource | FeatureMoments:
    """A folder or ``.npz`` image batch as an :class:`ImageSource`, or ``.npz`` statistics as
    :class:`FeatureMoments` (``stats_n``: their count when the file records none; ``count_option``: the option an
    error about a missing count names). The suffix is matched in any case (``.npz``, ``.NPZ``).
    """
    path = Path(path)
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise InputError(
            explain(
                f"input {path} does not exist",
                expected="an image folder or an .npz file",
                got="nothing at that path",
                fix="check the path",
            )
        )
    if path.suffix.lower() != ".npz":
        raise InputError(
            explain(
                f"unsupported input {path}",
                expected="an image folder, an .npz image batch (arr_0) or .npz statistics (mu, sigma)",
                got=f"a {path.suffix or 'suffix-less'} file",
                fix="convert it to one of those",
            )
        )
    keys = set(npz_headers(path, "input"))  # headers only: not a zip, object arrays, forged shapes are errors here
    if "arr_0" in keys:
        return NpzImageSource(path)
    if {"mu", "sigma"} & keys:
        return FeatureMoments.load(path, n=stats_n, count_option=count_option)
    raise InputError(
        explain(
            f"{path} holds neither images nor statistics",
            expected="key arr_0 (images) or mu and sigma (statistics)",
            got=f"keys {sorted(keys)}",
            fix="save images as arr_0 or statistics as mu/sigma/n",
        )
    )


def open_source(
    spec: str | Path, base_dir: str | Path | None = None, stats_n: int | None = None, count_option: str = COUNT_OPTION
) -> ImageSource | FeatureMoments:
    """A spec → images or statistics: an existing path (folder, .npz images, .npz statistics), else a registered data
    set
    ``name[:split]``.
    """
    text = str(spec)
    path = Path(text)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.exists():
        return open_input(path, stats_n, count_option)
    name, _, split = text.partition(":")
    if name in DATASETS:
        return DATASETS.get(name)(split or None)
    if ":" in text or not path.suffix:
        sets = ", ".join(DATASETS.names()) or "(none registered)"
        raise InputError(
            explain(
                f"input {text!r} is neither an existing path nor a registered data set",
                expected=f"an image folder, an .npz file, or one of the data sets {sets} (as name or name:split)",
                got=f"no file or folder at {path}",
                fix="check the path (relative paths are resolved against the config's folder)",
            )
        )
    return open_input(path, stats_n, count_option)


def open_images(spec: str | Path, base_dir: str | Path | None = None, who: str = "this input") -> ImageSource:
    """:func:`open_source`, refusing statistics (for data and reference images)."""
    source = open_source(spec, base_dir)
    if isinstance(source, FeatureMoments):
        raise InputError(
            explain(
                f"{spec} holds statistics, not images",
                expected=f"images for {who} (a folder, an .npz image batch or a data set)",
                got="mu/sigma statistics",
                fix="point to the images themselves",
            )
        )
    return source


def seeded_subset(n_total: int, n: int, seed: int) -> list[int]:
    """``n`` distinct indices of ``range(n_total)``, drawn with a seeded generator, in ascending order."""
    if n > n_total:
        raise InputError(
            explain(
                "subset larger than the source", expected=f"n <= {n_total}", got=f"n = {n}", fix="ask for fewer images"
            )
        )
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(perm.tolist())


def iter_batches(
    source: ImageSource, batch_size: int, indices: Sequence[int] | None = None
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, uint8 images)`` batches of a source, in index order."""
    order = list(range(len(source))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, source.load(chunk)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (blank lines are errors: they would silently shift the pairing).

    Lines end at ``\\n`` only (a ``\\r`` before it is dropped): a caption holding U+2028, U+0085, a form feed or
    another character that :meth:`str.splitlines` would break at stays one prompt.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")  # no newline translation: a lone \r is not a line end
        lines = [line.removesuffix("\r") for line in text.split("\n")]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(
            explain(
                f"cannot read prompts file {path}",
                expected="a UTF-8 text file, one prompt per line",
                got=f"{type(error).__name__}: {error}",
                fix="check the path",
            )
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise InputError(
            explain(
                f"prompts file {path} has blank lines",
                expected="one non-empty prompt per line",
                got=f"blank line(s) {blank[:5]}",
                fix="remove the blank lines so prompt i pairs with image i",
            )
        )
    return lines

"""One way to write a file, and one lock per output folder.

Every output diffeval writes (reports, statistics, figures, sample grids, checkpoints, JUnit) goes through
:func:`atomic_write`: the content goes to a temporary file in the target's folder
(``.NAME.diffeval-tmp-HOST-PID-RANDOM``), is flushed and fsynced, then ``os.replace``\\ d over the target. A
failed or killed write therefore never leaves a partial file under the final name, and an older file there stays
as it was. An ``OSError`` becomes an :class:`~diffeval.core.errors.OutputError` that says which file, what was
expected and the fix (a full disk names the folder and the bytes needed). Temporaries left by a process that
died (``kill -9``, power loss) are removed by the next write of that name and by the next run in that folder
(:func:`clean_stale_temporaries`).

:class:`FolderLock` makes one output folder one run's: a second run into it is refused, naming the holder
(pid, host, start time); a lock left by a process that no longer runs is taken over, with a note.

Example::

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_text(folder / "a.txt", "hello\\n").read_text()
    'hello\\n'
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from diffeval.core.errors import OutputError, explain
from diffeval.core.log import note

__all__ = [
    "TMP_MARK",
    "LOCK_NAME",
    "atomic_write",
    "write_text",
    "write_bytes",
    "save_npz",
    "torch_save",
    "save_figure",
    "save_image",
    "append_text",
    "clean_stale_temporaries",
    "is_temporary",
    "FolderLock",
    "pid_alive",
]

TMP_MARK = ".diffeval-tmp-"
LOCK_NAME = ".diffeval.lock"
_STALE_FOREIGN_S = 3600.0  # a temporary of another host is only removed once this old (its pid says nothing here)

Content = bytes | str | Callable[[BinaryIO], Any]


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write`'s temporaries."""
    return name.startswith(".") and TMP_MARK in name


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of the file ``name`` only, if given) left by processes that died;
    returns what was removed. Temporaries of live processes (a write in progress) are kept."""
    folder = Path(folder)
    prefix = f".{name}{TMP_MARK}" if name is not None else "."
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        if not entry.name.startswith(prefix) or not is_temporary(entry.name):
            continue
        tail = entry.name.rsplit(TMP_MARK, 1)[1].split("-")
        try:
            tag, pid = tail[0], int(tail[1])
        except (IndexError, ValueError):
            continue
        try:
            if tag == host:
                stale = pid != os.getpid() and not pid_alive(pid)
            else:
                stale = time.time() - entry.stat().st_mtime > _STALE_FOREIGN_S
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _write_error(path: Path, error: OSError, needed: int | None, written: int, existed: bool, fix: str) -> OutputError:
    folder = Path(os.path.abspath(path.parent))  # "." says nothing in a message
    kept = (
        f"the older {path.name} there is unchanged" if existed else f"no partial {path.name} was left under that name"
    )
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        try:
            free = f"; {_size(shutil.disk_usage(folder).free)} free there"
        except OSError:
            free = ""
        full = "full" if error.errno == errno.ENOSPC else "over its quota"
        need = (
            f"room for {_size(needed)}"
            if needed is not None
            else f"room for more than {_size(written)} (written before the disk filled)"
        )
        return OutputError(
            explain(
                f"cannot write {path}: the disk holding {folder} is {full}",
                expected=f"{need} in {folder}",
                got=f"OSError [Errno {error.errno}] {error.strerror}{free}",
                fix=f"free space in {folder} (or {fix}) and run the command again; {kept}",
            )
        )
    return OutputError(
        explain(
            f"cannot write {path}",
            expected="a writable file in an existing folder",
            got=f"{type(error).__name__}: {error}",
            fix=f"make {folder} writable (or {fix}); {kept}",
        )
    )


def atomic_write(path: str | Path, content: Content, *, fix: str = "write to another folder") -> Path:
    """Write ``content`` (bytes, text as UTF-8, or ``write(handle)`` filling a binary handle) to ``path`` atomically.

    A temporary file in the same folder is written, flushed, fsynced and renamed over ``path``. On failure the
    temporary is removed, an older ``path`` is left as it was, and an ``OSError`` is raised as an
    :class:`~diffeval.core.errors.OutputError` (what, expected, got, fix — ``fix`` names the alternative to offer,
    e.g. "pass --out elsewhere"). Returns ``path``.
    """
    path = Path(path)
    folder = path.parent
    data = content.encode("utf-8") if isinstance(content, str) else content
    existed = path.exists()
    clean_stale_temporaries(folder, path.name)
    tmp = _temporary(path)
    try:
        mode = (path.stat().st_mode & 0o777) if existed else None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            written = tmp.stat().st_size
        except OSError:
            written = 0
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(error, OSError):
            needed = len(data) if isinstance(data, bytes) else None
            raise _write_error(path, error, needed, written, existed, fix) from None
        raise
    _sync_folder(folder)
    return path


def write_text(path: str | Path, text: str, **kw: Any) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, text.encode("utf-8"), **kw)


def write_bytes(path: str | Path, data: bytes, **kw: Any) -> Path:
    """:func:`atomic_write` of bytes."""
    return atomic_write(path, bytes(data), **kw)


def save_npz(path: str | Path, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)`` atomically (like NumPy, ``.npz`` is appended to a path without it)."""
    import numpy as np

    path = Path(path)
    if not path.name.endswith(".npz"):
        path = path.with_name(path.name + ".npz")
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def torch_save(path: str | Path, obj: Any, **kw: Any) -> Path:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle), **kw)


def save_figure(fig: Any, path: str | Path, **savefig_kw: Any) -> Path:
    """``fig.savefig(path)`` (Matplotlib) atomically; the format follows the extension (default PNG)."""
    path = Path(path)
    fmt = savefig_kw.pop("format", None) or (path.suffix[1:].lower() or "png")
    return atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, **savefig_kw))


def save_image(image: Any, path: str | Path) -> Path:
    """A PIL image's ``save(path)`` atomically; the format follows the extension (default PNG)."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda handle: image.save(handle, format=fmt))


def append_text(path: str | Path, text: str, *, fix: str = "write to another file") -> Path:
    """Append ``text`` to ``path``; on failure the file is cut back to its old length (no partial line is left)."""
    path = Path(path)
    data = text.encode("utf-8")
    with open(path, "ab") as handle:
        start = handle.tell()
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as error:
            try:
                os.ftruncate(handle.fileno(), start)
            except OSError:
                pass
            raise _write_error(path, error, len(data), 0, True, fix) from None
    return path


# -- one run per folder ---------------------------------------------------------------------------------------
try:  # POSIX: an advisory lock the kernel drops when its holder dies, however it dies
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that left no details (its lock file is empty or being written)"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}", f"since {holder.get('started', '?')}"]
    if holder.get("command"):
        parts.append(f"running `{holder['command']}`")
    return ", ".join(parts)


class FolderLock:
    """``folder/.diffeval.lock``: held by one process at a time (``with FolderLock(folder, "--out"):``).

    A second holder is refused with an :class:`~diffeval.core.errors.OutputError` naming the first (pid, host,
    start time). A lock file left by a process that no longer runs (killed, crashed) is taken over, with a note.
    """

    def __init__(self, folder: str | Path, option: str = "--out") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.option = option
        self._fd: int | None = None

    def _info(self) -> bytes:
        command = " ".join(["diffeval", *sys.argv[1:]])[:300] if sys.argv else ""
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
        }
        return (json.dumps(info) + "\n").encode()

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            holder = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _read(self) -> dict[str, Any]:
        try:
            return self._parse(self.path.read_bytes())
        except OSError:
            return {}

    def _busy(self, holder: dict[str, Any]) -> OutputError:
        return OutputError(
            explain(
                f"another diffeval process is writing into {self.folder}",
                expected=f"an output folder no other run is using (one run per {self.option})",
                got=f"the lock {self.path} held by {_holder_text(holder)}",
                fix=(
                    f"wait for that run to finish, or pass another {self.option}"
                    f" (if that process is gone, delete {self.path})"
                ),
            )
        )

    def _took_over(self, previous: dict[str, Any]) -> None:
        note("took over the stale lock in %s left by %s, which no longer runs", self.folder, _holder_text(previous))

    def acquire(self) -> FolderLock:
        if _fcntl is None:  # pragma: no cover - Windows
            return self._acquire_exclusive()
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise _write_error(self.path, error, None, 0, False, f"pass another {self.option}") from None
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(self._read()) from None
            except OSError:  # a file system without flock: fall back to create-exclusive + pid check
                os.close(fd)
                return self._acquire_exclusive()
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if not same:  # the holder removed the file while we opened it: try the new one
                os.close(fd)
                continue
            previous = self._parse(os.pread(fd, 1 << 16, 0)) if hasattr(os, "pread") else {}
            if previous or os.fstat(fd).st_size:
                self._took_over(previous)
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._info(), 0)
            self._fd = fd
            return self
        raise self._busy(self._read())

    def _acquire_exclusive(self) -> FolderLock:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self._read()
                if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid", -1)):
                    self._took_over(holder)
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                raise self._busy(holder) from None
            os.write(fd, self._info())
            self._fd = fd
            return self
        raise self._busy(self._read())

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

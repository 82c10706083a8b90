r"""TOML in and out: configs and gate rules read with line-numbered errors; flat option tables written back.

Example::

    >>> to_toml({"name": "fid", "blocks": 10, "label": None}, "[[metrics]]")
    '[[metrics]]\nname = "fid"\nblocks = 10\n'
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffeval.core.errors import ConfigError, explain

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib

__all__ = ["read_toml", "loads", "to_toml"]


def loads(text: str) -> dict[str, Any]:
    """TOML text as a dict (``tomllib.loads``; tomli on Python 3.10)."""
    return tomllib.loads(text)


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict; unreadable or invalid files are a :class:`ConfigError` with the line."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            explain(
                f"cannot read {what} {path}",
                expected="a readable TOML file",
                got=f"{type(error).__name__}: {error}",
                fix="check the path",
            )
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            explain(
                f"{what} {path} is not valid TOML",
                expected="TOML syntax",
                got=str(error),
                fix="fix the line named above",
            )
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            explain(
                f"{what} {path} is not text", expected="a UTF-8 TOML file", got=str(error), fix="point to the TOML file"
            )
        ) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(
        explain(
            "value cannot be written as TOML",
            expected="bool, int, float, str or a list of them",
            got=type(value).__name__,
            fix="use plain values in options",
        )
    )


def to_toml(table: Mapping[str, Any], header: str | None = None) -> str:
    """A flat TOML table of plain values under ``header`` (a line such as ``[[metrics]]``); None values are left out
    (absent = default).
    """
    lines = [header] if header else []
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None]
    return "\n".join(lines) + "\n"

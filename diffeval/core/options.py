"""Declared options: what a metric or a check accepts, validated in one place.

A metric or check lists its options as :class:`Option` objects; config validation
and the conformance round-trip (:func:`diffeval.core.toml.to_toml`) are driven by that list, so an option
cannot be accepted in one place and refused in another. Unknown keys are errors
with a "did you mean".

Example::

    >>> spec = (Option("splits", int, 10, "number of splits", minimum=1),)
    >>> validate_options({"splits": 4}, spec, "inception_score")
    {'splits': 4}
    >>> validate_options({}, spec, "inception_score")
    {'splits': 10}
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diffeval.core.errors import ConfigError, explain

__all__ = ["Option", "REQUIRED", "validate_options", "reject_unknown"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
_TYPE_NAMES = {
    bool: "true/false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


@dataclass(frozen=True)
class Option:
    """One accepted option: name, type (``bool``, ``int``, ``float``, ``str`` or ``list``), default, documentation and
    bounds.

    ``nullable`` accepts None (absent in TOML); ``choices`` restricts values; ``minimum`` /
    ``maximum`` bound numbers (inclusive; for a list of numbers, each item); ``item`` is the element type
    of a list and ``length`` its exact length; ``attr`` is the attribute of an instance that holds the
    option's value (default: the option's name), from which the instance's ``config_options()`` is generated.
    """

    name: str
    type: type
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    item: type | None = None
    length: int | None = None
    attr: str | None = None
    finite: bool = True  # False: +inf / -inf are values (NaN never is)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any, where: str, error: type[Exception] = ConfigError) -> Any:
        """``value`` converted (int → float for float options) and validated; raises ``error`` (a
        :class:`ConfigError` unless the caller names its own, e.g. a sampler's ``SamplerError``)."""
        if value is None and (self.nullable or self.default is None):
            return None
        value = _coerce(value, self.type, f"{where} option {self.name!r}", self._hint(), error)
        if self.type is list and self.item is not None:
            value = [_coerce(v, self.item, f"{where} option {self.name!r} item", self._hint(), error) for v in value]
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            raise error(
                explain(
                    f"invalid value for {where} option {self.name!r}",
                    expected=f"one of {', '.join(map(repr, self.choices))}",
                    got=repr(value),
                    fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(map(repr, self.choices))}",
                )
            )
        if self.type is list and self.length is not None and len(value) != self.length:
            raise error(
                explain(
                    f"{where} option {self.name!r} has the wrong length",
                    expected=f"{self.length} items",
                    got=f"{len(value)} items: {value!r}",
                    fix=self._hint(),
                )
            )
        for number in [value] if self.type in (int, float) else value if self.item in (int, float) else []:
            self._bounds(number, where, error)
        return value

    def _bounds(self, value: float, where: str, error: type[Exception]) -> None:
        if math.isnan(value) or (self.finite and math.isinf(value)):
            raise error(
                explain(
                    f"{where} option {self.name!r} must be " + ("finite" if self.finite else "a number, not NaN"),
                    expected="a finite number" if self.finite else "a number (not NaN)",
                    got=repr(value),
                    fix=self._hint(),
                )
            )
        if self.minimum is not None and value < self.minimum:
            raise error(
                explain(
                    f"{where} option {self.name!r} is too small",
                    expected=f">= {self.minimum:g}",
                    got=repr(value),
                    fix=self._hint(),
                )
            )
        if self.maximum is not None and value > self.maximum:
            raise error(
                explain(
                    f"{where} option {self.name!r} is too large",
                    expected=f"<= {self.maximum:g}",
                    got=repr(value),
                    fix=self._hint(),
                )
            )

    def _hint(self) -> str:
        return (
            f"set {self.name} = {self.default!r}"
            if not self.required and self.default is not None
            else f"set {self.name} to {_TYPE_NAMES.get(self.type, self.type.__name__)}"
        )

    def help(self) -> str:
        """One line for ``--help`` and docs: name, type, default, doc."""
        default = "required" if self.required else f"default {self.default!r}"
        extra = f"; one of {', '.join(map(repr, self.choices))}" if self.choices else ""
        return f"{self.name} ({_TYPE_NAMES.get(self.type, self.type.__name__)}, {default}{extra}): {self.doc}"


def _coerce(value: Any, kind: type, where: str, hint: str, error: type[Exception] = ConfigError) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        dict: isinstance(value, Mapping),
    }.get(kind, isinstance(value, kind))
    if not ok:
        raise error(
            explain(
                f"{where} has the wrong type",
                expected=_TYPE_NAMES.get(kind, kind.__name__),
                got=f"{value!r} ({type(value).__name__})",
                fix=hint,
            )
        )
    if kind is float:
        return float(value)
    if kind is list:
        return list(value)
    if kind is dict:
        return dict(value)
    return value


def reject_unknown(
    given: Any, known: Sequence[str], where: str, noun: str = "option", error: type[Exception] = ConfigError
) -> None:
    """A :class:`ConfigError` naming every key of ``given`` not in ``known``, with a "did you mean" for each."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        close = {u: difflib.get_close_matches(u, list(known), n=1) for u in unknown}
        hints = "; ".join(f"{u!r}: did you mean {c[0]!r}?" for u, c in close.items() if c)
        raise error(
            explain(
                f"unknown {noun}(s) {', '.join(map(repr, unknown))} for {where}",
                expected=f"{noun}s among: {', '.join(sorted(known)) or '(none)'}",
                got=", ".join(unknown),
                fix=hints or "remove or correct them",
            )
        )


def validate_options(
    given: Mapping[str, Any], spec: Sequence[Option], where: str, error: type[Exception] = ConfigError
) -> dict[str, Any]:
    """Validate ``given`` against ``spec``: unknown keys are errors (with a "did you mean"), defaults are filled in."""
    reject_unknown(given, [o.name for o in spec], where, error=error)
    out: dict[str, Any] = {}
    for option in spec:
        if option.name in given:
            out[option.name] = option.check(given[option.name], where, error)
        elif option.required:
            raise error(
                explain(
                    f"{where} needs option {option.name!r}",
                    expected=option.help(),
                    got="nothing",
                    fix=f"add {option.name} = ...",
                )
            )
        else:
            out[option.name] = option.default
    return out

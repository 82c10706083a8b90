"""Check results: a named verdict with its number, its threshold and the fix.

A failing check is a result (``status == "fail"``); bad input to a check is an
exception. ``worst(results)`` gives the overall verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from diffeval.errors import InputError, explain

__all__ = ["CheckResult", "STATUSES", "worst"]

STATUSES = ("skip", "pass", "warn", "fail")


@dataclass(frozen=True)
class CheckResult:
    """``name``, ``status`` in {skip, pass, warn, fail}, the measured ``value``, the ``threshold`` it was held to, and a ``message`` that says what it means and the fix.

    ``skip`` means the check could not apply (its reason is the message); it is never a pass.
    """

    name: str
    status: str
    value: float
    threshold: str
    message: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise InputError(explain("invalid check status", expected=" / ".join(STATUSES), got=repr(self.status), fix="use skip, pass, warn or fail"))

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_row(self, **extra: Any) -> dict[str, Any]:
        """A report row of kind ``check``."""
        from diffeval.report import make_row

        value = self.value if isinstance(self.value, (int, float)) and not isinstance(self.value, bool) else float("nan")
        return make_row(self.name, "check", value, status=self.status, details={"threshold": self.threshold, "message": self.message, **extra})

    def __str__(self) -> str:
        value = "" if isinstance(self.value, float) and math.isnan(self.value) else f"{self.value:.6g}"
        return f"[{self.status.upper():4s}] {self.name} = {value} ({self.threshold}): {self.message}"


def worst(results: Iterable[CheckResult]) -> str:
    """The most severe status among ``results`` (``pass`` when empty; skips count as passes here)."""
    order = {s: i for i, s in enumerate(STATUSES)}
    return max((r.status for r in results if r.status != "skip"), key=order.__getitem__, default="pass")

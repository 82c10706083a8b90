"""The check contract: named verdicts with a value, a threshold and the fix — and the self-describing Check class.

A :class:`CheckResult` is one verdict: ``status`` in {skip, pass, warn, fail}; a failing
check is a result, bad input to a check is an exception. ``worst(results)`` gives the
overall verdict.

A :class:`Check` class declares, as data, its ``name``, the ``options`` it accepts in a
config, and what it ``needs`` from the evaluated subject (:data:`NEEDS`: a schedule, a
prediction type, a model, a sampler to draw from, guidance). The runner reads ``needs``:
when the subject cannot provide one, the check is reported as *skipped* with the
reason, never run and never passed. ``run(ctx)`` returns a :class:`CheckOutcome`: the
results and any figures (drawn into the report folder).

Adding a check is one module: subclass :class:`Check` and decorate it with
:func:`register_check`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from diffeval.core.errors import ConfigError, InputError, explain
from diffeval.core.options import Option, validate_options
from diffeval.core.registry import Registry

__all__ = [
    "CheckResult",
    "STATUSES",
    "worst",
    "Check",
    "CheckContext",
    "CheckOutcome",
    "Figure",
    "CHECKS",
    "NEEDS",
    "register_check",
    "run_check",
]

STATUSES = ("skip", "pass", "warn", "fail")
NEEDS = ("schedule", "prediction", "model", "sampler", "guidance")
CHECKS: Registry[type[Check]] = Registry("check", builtins="diffeval.checks")


@dataclass(frozen=True)
class CheckResult:
    """``name``, ``status`` in {skip, pass, warn, fail}, the measured ``value``, the ``threshold`` it was held to, and a
    ``message`` that says what it means and the fix.

    ``skip`` means the check could not apply (its reason is the message); it is never a pass.
    """

    name: str
    status: str
    value: float
    threshold: str
    message: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise InputError(
                explain(
                    "invalid check status",
                    expected=" / ".join(STATUSES),
                    got=repr(self.status),
                    fix="use skip, pass, warn or fail",
                )
            )

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def __str__(self) -> str:
        value = "" if isinstance(self.value, float) and math.isnan(self.value) else f"{self.value:.6g}"
        return f"[{self.status.upper():4s}] {self.name} = {value} ({self.threshold}): {self.message}"


def worst(results: Iterable[CheckResult]) -> str:
    """The most severe status among ``results`` (``pass`` when empty; skips count as passes here)."""
    order = {s: i for i, s in enumerate(STATUSES)}
    return max((r.status for r in results if r.status != "skip"), key=order.__getitem__, default="pass")


@dataclass(frozen=True)
class Figure:
    """A plot a check contributes to the report: ``draw(path)`` writes ``<name>.png``."""

    name: str
    draw: Callable[[Path], Path]


@dataclass
class CheckOutcome:
    results: list[CheckResult]
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class CheckContext:
    """What a check may use: the subject's declaration and the run's settings.

    ``info`` is the :class:`~diffeval.samplers.SamplerInfo` of the evaluated sampler (or of a
    bare schedule in a checks-only run); ``open_data(spec)`` opens images;
    ``make_sampler(overrides)`` builds the run's sampler with knobs changed (None when
    there is no sampler); ``cond_fn(seeds)`` is the run's condition (None: unconditional).
    """

    info: Any
    seed: int = 0
    device: str = "cpu"
    open_data: Callable[[str], Any] | None = None
    make_sampler: Callable[[dict[str, Any]], Any] | None = None
    image_shape: tuple[int, ...] | None = None
    cond_fn: Callable[[list[int]], Any] | None = None

    def missing(self, need: str) -> str | None:
        """Why ``need`` cannot be met (None when it can)."""
        who = getattr(self.info, "name", "the subject")
        if need == "schedule" and getattr(self.info, "schedule", None) is None:
            return f"{who} exposes no schedule (e.g. a scheduler without alphas_cumprod)"
        if need == "prediction" and getattr(self.info, "prediction", None) is None:
            return f"{who} declares no prediction type"
        if need == "model" and getattr(self.info, "model", None) is None:
            return f"{who} exposes no model"
        if need == "sampler" and (self.make_sampler is None or self.image_shape is None):
            return (
                "there is no sampler to draw from (a checks-only run)"
                if self.make_sampler is None
                else "the image shape is unknown ([run] image_shape)"
            )
        if need == "guidance" and not getattr(self.info, "guidance", False):
            return f"{who} has no guidance scale to sweep"
        return None


class Check(ABC):
    """Base class of every check; see the module docstring for the contract."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.settings = validate_options(options, self.options, f"check {self.name!r}")

    @abstractmethod
    def run(self, ctx: CheckContext) -> CheckOutcome: ...


def register_check(cls: type[Check]) -> type[Check]:
    """Class decorator: check the declaration and register ``cls`` under ``cls.name``."""
    bad_needs = sorted(set(getattr(cls, "needs", ())) - set(NEEDS))
    if not isinstance(getattr(cls, "name", None), str) or not cls.name or bad_needs:
        raise ConfigError(
            explain(
                f"check class {cls.__name__} is not fully declared",
                expected=f"a name and needs among {NEEDS}",
                got=f"name={getattr(cls, 'name', None)!r}, unknown needs {bad_needs}",
                fix="declare them on the class",
            )
        )
    CHECKS.register(cls.name, cls)
    return cls


def run_check(check: Check, ctx: CheckContext) -> CheckOutcome:
    """Run ``check`` if the subject meets its needs; otherwise one ``skip`` result naming what is missing."""
    for need in check.needs:
        reason = ctx.missing(need)
        if reason is not None:
            return CheckOutcome(
                [
                    CheckResult(
                        check.name, "skip", float("nan"), f"needs {need}", f"skipped: {reason}; nothing was checked"
                    )
                ]
            )
    return check.run(ctx)

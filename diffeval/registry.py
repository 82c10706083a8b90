"""Name → factory registries with "did you mean" errors.

Schedules, feature extractors, metrics and checks are looked up by name from the CLI
and from configs; a mistyped name must be an error that lists the valid names, never a
silent default.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from diffeval.errors import ConfigError, explain

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to factories, for one kind of thing (``kind``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name`` (names are unique)."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; an unknown name is a :class:`ConfigError`."""
        if name in self._factories:
            return self._factories[name]
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(self.names())}"
        raise ConfigError(
            explain(
                f"unknown {self.kind} {name!r}",
                expected=f"one of {', '.join(self.names())}",
                got=repr(name),
                fix=hint,
            )
        )

    def create(self, name: str, **kwargs: object) -> T:
        """Build the thing registered as ``name`` with ``kwargs`` (unknown keywords are errors)."""
        factory = self.get(name)
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(kwargs) - set(params))
        if unknown and not takes_any:
            valid = ", ".join(params) or "none"
            raise ConfigError(
                explain(
                    f"unknown option(s) {', '.join(map(repr, unknown))} for {self.kind} {name!r}",
                    expected=f"options among: {valid}",
                    got=", ".join(unknown),
                    fix="remove or correct the option names",
                )
            )
        return factory(**kwargs)

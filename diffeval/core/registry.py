"""Name → object registries with "did you mean" errors, built-ins loaded lazily, and plugins.

Schedules, feature extractors, metrics, checks, sampler factories, data sets, named
configs and CLI commands are looked up by name; a mistyped name is an error that lists
the valid names, never a silent default.

A registry imports its built-in module (``builtins``) the first time it is read, and
every registry loads the installed *plugins* then: modules named by the entry-point
group ``diffeval.plugins`` (and by ``$DIFFEVAL_PLUGINS``, comma-separated, for code
that is not installed). A plugin registers its things when imported — the bundled demo
is one (``diffeval/demo/plugin.py``); no core module imports it.

Plugins are code: importing one runs it with your rights (as a config's ``factory`` does). A module named
in ``$DIFFEVAL_PLUGINS`` that fails to import is an error of every ``diffeval`` command
(:func:`require_plugins`, exit 2); an installed entry point that fails is a note, and any lookup that
misses names it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from diffeval.core.errors import ConfigError, explain
from diffeval.core.log import note

__all__ = ["Registry", "load_plugins", "require_plugins", "PLUGIN_GROUP", "PLUGINS_ENV"]

T = TypeVar("T")
PLUGIN_GROUP = "diffeval.plugins"
PLUGINS_ENV = "DIFFEVAL_PLUGINS"

_plugins_loaded = False
_plugin_failures: dict[str, str] = {}
_env_plugins: list[str] = []  # the modules $DIFFEVAL_PLUGINS named


def load_plugins() -> dict[str, str]:
    """Import every plugin once (entry points, then ``$DIFFEVAL_PLUGINS``); returns ``{plugin: error}`` of those that
    failed.

    A plugin that fails to import is reported in the error of any lookup that misses, never
    silently dropped.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return _plugin_failures
    _plugins_loaded = True
    from importlib.metadata import entry_points

    names = [ep.value for ep in entry_points(group=PLUGIN_GROUP)]
    _env_plugins[:] = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    names += _env_plugins
    for module in dict.fromkeys(names):
        try:
            importlib.import_module(module.split(":", 1)[0])
        except Exception as error:  # a broken plugin must not hide the others; lookups name it
            _plugin_failures[module] = f"{type(error).__name__}: {error}"
            note(f"plugin {module!r} failed to load: {type(error).__name__}: {error}")
    return _plugin_failures


def require_plugins() -> None:
    """Load the plugins; a module named in ``$DIFFEVAL_PLUGINS`` that failed to import is a :class:`ConfigError`
    (asked for by name, so running without it would quietly run something else)."""
    failures = load_plugins()
    failed = {m: failures[m] for m in _env_plugins if m in failures}
    if failed:
        raise ConfigError(
            explain(
                f"${PLUGINS_ENV} names module(s) that failed to import: {', '.join(map(repr, failed))}",
                expected="importable modules (comma-separated), each registering its plugins",
                got="; ".join(f"{m}: {e}" for m, e in failed.items()),
                fix=f"install the module or put it on PYTHONPATH, correct its name, or unset ${PLUGINS_ENV}",
            )
        )


class Registry(Generic[T]):
    """A mapping from names to objects (classes or factories) of one ``kind``.

    ``builtins`` is the module whose import registers the built-in entries; it is
    imported on first read, after which installed plugins are loaded too.
    """

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._builtins = builtins
        self._ready = False
        self._items: dict[str, T] = {}

    def _ensure(self) -> None:
        if self._ready:
            return
        self._ready = True
        if self._builtins is not None:
            importlib.import_module(self._builtins)
        load_plugins()

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name`` (or use as a decorator: ``@REG.register("x")``); names are unique."""

        def add(item: T) -> T:
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    explain(f"invalid {self.kind} name", expected="a non-empty string", got=repr(name), fix="name it")
                )
            if name in self._items and not replace and self._items[name] is not item:
                raise ConfigError(
                    explain(
                        f"{self.kind} {name!r} is registered twice",
                        expected="unique names",
                        got=f"{self._items[name]!r} and {item!r}",
                        fix="rename one, or pass replace=True",
                    )
                )
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a no-op when absent); for tests and plugins that replace an entry."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._ensure()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is a :class:`ConfigError` with a "did you mean"."""
        self._ensure()
        if isinstance(name, str) and name in self._items:
            return self._items[name]
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(names) or '(none registered)'}"
        failures = load_plugins()
        if failures:
            hint += "; note: plugin(s) failed to load: " + "; ".join(f"{k} ({v})" for k, v in failures.items())
        raise ConfigError(
            explain(
                f"unknown {self.kind} {name!r}",
                expected=f"one of {', '.join(names) or '(none registered)'}",
                got=repr(name),
                fix=hint,
            )
        )

    def create(self, name: str, **kwargs: object) -> Any:
        """Call the factory registered as ``name`` with ``kwargs`` (unknown keywords are errors)."""
        factory: Callable[..., Any] = self.get(name)
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

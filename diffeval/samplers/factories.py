"""Sampler factories: how a config names the sampler it evaluates.

``factory`` in a config is either a registered name (plugins register theirs, e.g. the
bundled demo's ``demo``) or an import path ``pkg.module:function``; the function is
called with the config's ``[sampler.kwargs]`` (plus ``device`` when it takes one) and
must return a sampler (a plain function ``fn(noise, cond) -> images`` is wrapped).
A module next to the config file is importable: the config's folder is searched first.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffeval.core.errors import ConfigError, explain
from diffeval.core.registry import Registry
from diffeval.samplers.base import Sampler, describe
from diffeval.samplers.callable import as_sampler

__all__ = ["SAMPLER_FACTORIES", "import_factory", "build_sampler"]

SAMPLER_FACTORIES: Registry[Callable[..., Any]] = Registry("sampler factory")


def import_factory(spec: str, search_path: str | Path | None = None) -> Callable[..., Any]:
    """A registered factory name, or ``pkg.module:function`` (importable from ``search_path`` too) → the callable."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(
            explain(
                "sampler factory must be a name or an import path",
                expected="'pkg.module:function' or a registered name",
                got=repr(spec),
                fix="set factory = 'mypkg.models:make_sampler'",
            )
        )
    if ":" not in spec:
        if spec in SAMPLER_FACTORIES:
            return SAMPLER_FACTORIES.get(spec)
        names = ", ".join(SAMPLER_FACTORIES.names()) or "(none registered)"
        raise ConfigError(
            explain(
                f"sampler factory {spec!r} is neither an import path nor a registered name",
                expected=f"'pkg.module:function' or one of {names}",
                got=repr(spec),
                fix=(
                    "write module and function separated by a colon, e.g. factory = 'mymodels:make_sampler' for"
                    " mymodels.py next to the config"
                ),
            )
        )
    module_name, attr = spec.split(":", 1)
    where = [] if search_path is None else [str(Path(search_path).resolve())]
    added = [p for p in where if p not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        looked = f"sys.path with the config's folder {where[0]}" if where else "sys.path"
        raise ConfigError(
            explain(
                f"cannot import {module_name!r} for sampler factory {spec!r}",
                expected=f"a module importable from {looked}",
                got=f"{type(error).__name__}: {error}",
                fix="install the package, put the module next to the config file, or fix the module path",
            )
        ) from None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(
            explain(
                f"{module_name} has no callable {attr!r}",
                expected="a function that returns a sampler",
                got=type(fn).__name__,
                fix="check the name after the colon",
            )
        )
    return fn


def build_sampler(
    spec: str, kwargs: dict[str, Any], *, device: str | None = None, search_path: str | Path | None = None
) -> Sampler:
    """Call the factory with ``kwargs`` (and ``device`` if it takes one); the result is checked to follow the sampler
    contract.
    """
    factory = import_factory(spec, search_path)
    kwargs = dict(kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if device is not None and "device" in params and "device" not in kwargs:
        kwargs["device"] = device
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params)) if params and not takes_any else []
    if unknown:
        raise ConfigError(
            explain(
                f"sampler factory {spec!r} takes no option(s) {unknown}",
                expected=f"keyword arguments among {', '.join(params) or '(none)'}",
                got=", ".join(unknown),
                fix="correct [sampler.kwargs] (or the swept knob)",
            )
        )
    try:
        sampler = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as error:
        from diffeval.core.errors import DiffevalError

        if isinstance(error, DiffevalError):
            raise
        raise ConfigError(
            explain(
                f"sampler factory {spec!r} raised",
                expected="a sampler",
                got=f"{type(error).__name__}: {error}",
                fix="fix the factory or its [sampler.kwargs]",
            )
        ) from error
    sampler = as_sampler(sampler)
    describe(sampler)  # the declaration must be readable before any work
    return sampler

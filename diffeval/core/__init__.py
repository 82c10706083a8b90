"""The foundation every room stands on: errors, registries, declared options, seeds, the 8-bit grid, signals,
sweep points and TOML.

Owns :mod:`~diffeval.core.errors` (exception types, ``explain``, exit codes), :mod:`~diffeval.core.registry`
(name → object with "did you mean", plugins), :mod:`~diffeval.core.options` (declared options, validated in one
place), :mod:`~diffeval.core.seeds` (one generator per sample), :mod:`~diffeval.core.quantize` (the 8-bit grid),
:mod:`~diffeval.core.signals` (SIGTERM as a stop request), :mod:`~diffeval.core.points` (sweep points as rows carry
them), :mod:`~diffeval.core.files` (atomic writes, one lock per output folder),
:mod:`~diffeval.core.npz` (``.npz`` read as data, headers checked first), :mod:`~diffeval.core.text` (names made
safe for Markdown, HTML, XML and the terminal) and :mod:`~diffeval.core.toml` (TOML
in and out). May import nothing of diffeval but ``diffeval.version``.
"""

"""The run layer: a TOML config becomes subject, metrics, checks and sweeps, executed into a report.

Owns :mod:`~diffeval.run.config` (strict TOML configs, ``[run]`` declared like metric options),
:mod:`~diffeval.run.subjects` (the sampler or bare schedule a config names), :mod:`~diffeval.run.runner`
(``diffeval run``: stages, checkpoints, partial reports), :mod:`~diffeval.run.sweeps` (``[sweep]`` grids),
:mod:`~diffeval.run.bench` (latency) and :mod:`~diffeval.run.diagnose` (checks-only runs). May import everything
below it, ``report`` included; never ``gate``, ``api`` or the CLI.
"""

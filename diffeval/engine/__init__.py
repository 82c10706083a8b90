"""The engine: the one batch loop, references built once per run, the distributed merge and checkpoints.

Owns :mod:`~diffeval.engine.loop` (``evaluate`` samples, ``measure`` reads stored images; features once per batch,
fanned out to every metric; CUDA OOM retry), :mod:`~diffeval.engine.references` (every metric asks for its
reference, each (source, extractor) is extracted in one pass), :mod:`~diffeval.engine.distributed` (seed sharding
and metric-state gathering under torchrun) and :mod:`~diffeval.engine.checkpoint` (resumable loop state). May
import everything below it (``core`` … ``metrics``, ``checks``); never the report, the run layer or the CLI.
"""

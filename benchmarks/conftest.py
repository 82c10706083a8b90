"""Benchmark fixtures: the device (CUDA synchronized around every timed call), sizes, and a test-only slowdown knob.

Options: ``--bench-device cpu|cuda`` (default: cuda when available), ``--bench-size small|full``
(small: CPU-friendly; full: the H100 table of the sampler-speed issue). The environment
variable ``DIFFEVAL_BENCH_SLOWDOWN_MS`` adds a sleep to every model call — only to show
that ``--benchmark-compare-fail`` catches a regression.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.addoption(
        "--bench-size", default="full" if torch.cuda.is_available() else "small", choices=("small", "full")
    )


@pytest.fixture(scope="session")
def device(request):
    name = request.config.getoption("--bench-device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(
            f"--bench-device {name} requested but no CUDA device is available (torch {torch.__version__}); run with"
            " --bench-device cpu"
        )
    return torch.device(name)


@pytest.fixture(scope="session")
def bench_size(request):
    return request.config.getoption("--bench-size")


def synchronize(device: torch.device) -> None:
    """pytest-benchmark does not synchronize CUDA: every timed target ends with this."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SlowedModel(torch.nn.Module):
    """Test-only: sleeps ``delay_ms`` per call (the deliberate slowdown of the regression demo)."""

    def __init__(self, model: torch.nn.Module, delay_ms: float) -> None:
        super().__init__()
        self.model, self.delay_s = model, delay_ms / 1e3

    def forward(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return self.model(*args, **kwargs)


@pytest.fixture(scope="session")
def slowdown_ms() -> float:
    return float(os.environ.get("DIFFEVAL_BENCH_SLOWDOWN_MS", "0"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Validate a --benchmark-compare baseline before pytest-benchmark reads it: a corrupted file is a clear error."""
    import json

    compare = config.getoption("benchmark_compare", default=None)
    storage = config.getoption("benchmark_storage", default=None)
    if not compare or not storage or not str(storage).startswith("file://"):
        return
    root = Path(str(storage)[len("file://") :])
    candidates = sorted(root.glob(f"*/{compare}*.json")) if compare is not True else sorted(root.glob("*/*.json"))[-1:]
    if not candidates:
        raise pytest.UsageError(
            f"benchmark baseline {compare!r} not found under {root}: expected a file like"
            f" {root}/<machine>/{compare}_<name>.json; save one first with --benchmark-save=<name>"
        )
    for path in candidates:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "benchmarks" not in data:
                raise ValueError("no 'benchmarks' list")
        except ValueError as error:
            raise pytest.UsageError(
                f"benchmark baseline {path} is corrupted ({type(error).__name__}: {error}); expected a pytest-benchmark"
                " JSON file. Fix: restore it from git, or re-save a baseline with --benchmark-save=<name>"
            ) from None

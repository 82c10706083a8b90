"""Stop requests: SIGTERM ends work at the next batch boundary, like Ctrl-C but never mid-batch.

:func:`install` (done by the ``diffeval`` command) makes the first SIGTERM a *request*:
the batch loop finishes the batch in hand, writes a checkpoint when it keeps one, and
raises :class:`KeyboardInterrupt`, so the run ends as Ctrl-C ends it — a partial report
marked interrupted, exit 130 — and ``diffeval run --resume`` continues it. A second
SIGTERM stops at once. Ctrl-C (SIGINT) keeps Python's immediate ``KeyboardInterrupt``;
a run then resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["install", "requested", "clear", "stop_if_requested", "request"]

_state = {"requested": False, "signal": ""}


def request(name: str = "a stop request") -> None:
    """Ask running work to stop at its next batch boundary."""
    _state["requested"], _state["signal"] = True, name


def requested() -> bool:
    return bool(_state["requested"])


def clear() -> None:
    _state["requested"], _state["signal"] = False, ""


def stop_if_requested() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop was requested (called at batch boundaries)."""
    if _state["requested"]:
        raise KeyboardInterrupt(f"stopped by {_state['signal']} at a batch boundary")


def _handler(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _state["requested"]:
        raise KeyboardInterrupt(f"stopped by a second {name}")
    request(name)


def install() -> None:
    """Route SIGTERM to a stop request (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    clear()
    signal.signal(signal.SIGTERM, _handler)

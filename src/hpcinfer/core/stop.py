"""A stop request a caller hands to a run, a fleet or a benchmark: the library never installs
signal handlers (they raise off the main thread: Jupyter, a Ray actor, a Parsl app).

The first request drains (no new work; what is in flight finishes and is kept), a second
one aborts. The CLI feeds it from SIGINT/SIGTERM with `signals_feed`; a notebook or a
workflow calls `drain()`/`abort()` from any thread.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    """Thread-safe: `drain()` then `abort()`; readers poll `requested`/`aborted` or wait."""

    def __init__(self) -> None:
        self._drain = threading.Event()
        self._abort = threading.Event()
        self._lock = threading.RLock()  # a signal handler may run while this thread holds it
        self.reason = ""

    def drain(self, reason: str = "stop requested") -> None:
        """Take no new work; finish and keep what is in flight."""
        with self._lock:
            if not self._drain.is_set():
                self.reason = reason
                self._drain.set()

    def abort(self, reason: str = "abort requested") -> None:
        """Stop now; work in flight is lost (committed work is kept)."""
        with self._lock:
            if not self._drain.is_set():
                self.reason = reason
                self._drain.set()
            self._abort.set()

    def request(self, reason: str) -> None:
        """What a repeated Ctrl-C means: the first drains, the next aborts."""
        if self._drain.is_set():
            self.abort(reason)
        else:
            self.drain(reason)

    @property
    def requested(self) -> bool:
        return self._drain.is_set()

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a stop is requested (True) or `timeout_s` passes (False)."""
        return self._drain.wait(timeout_s)


@contextmanager
def signals_feed(stop: StopSignal) -> Iterator[StopSignal]:
    """For the command line: SIGINT/SIGTERM request a stop (first drain, then abort) while
    the block runs; the previous handlers come back after. Off the main thread (where Python
    allows no handlers) it installs nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.request(f"signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)

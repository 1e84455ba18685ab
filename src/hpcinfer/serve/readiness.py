"""Is a just-started server ready? Poll it, and never wait on a server that is gone.

The Aurora vLLM server scripts (Aurora-Inferencing) waited
`until curl -sf http://host:8000/health` with no timeout and no look at the
server process, so a server that crashed at start-up held the node until walltime. Here
every poll first asks whether the process still runs (a crash is reported within one poll
interval, with the log's tail), every request has its own timeout, and the whole wait has a
deadline. A server is ready when `/health` answers and `/v1/models` lists its model (the
API key, if any, is accepted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hpcinfer.core.server_probe import check_server

POLL_S = 0.5
REQUEST_TIMEOUT_S = 5.0


class Watched(Protocol):
    """What readiness and the health monitor need of a server process."""

    def alive(self) -> bool: ...

    def exit_text(self) -> str: ...


@dataclass(frozen=True)
class Readiness:
    ready: bool
    error: str | None = None


def await_ready(
    process: Watched,
    url: str,
    deadline: Callable[[], float],
    *,
    model: str | None = None,
    api_key: str | None = None,
    stop: threading.Event | None = None,
    poll_s: float = POLL_S,
) -> Readiness:
    """Poll until the server answers, its process ends, `deadline()` (a monotonic time; it
    may move) passes, or `stop` is set."""
    stop = stop or threading.Event()
    started = time.monotonic()
    last_error = "no answer yet"
    while not stop.is_set():
        if not process.alive():
            return Readiness(False, f"{process.exit_text()} before it was ready")
        left = deadline() - time.monotonic()
        if left <= 0:
            waited = time.monotonic() - started
            return Readiness(
                False,
                f"not ready after {waited:.0f}s (last check: {last_error}); raise "
                "--ready-timeout for a large model, or read the log",
            )
        check = check_server(url, min(REQUEST_TIMEOUT_S, max(left, 0.1)), api_key, model)
        if check.up:
            return Readiness(True)
        last_error = check.error or last_error
        stop.wait(poll_s)
    return Readiness(False, "stopped before it was ready")

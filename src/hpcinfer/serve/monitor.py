"""Keep a ready server's registry state current: exited -> dead, /health failing ->
unhealthy, answering again -> ready.

One watcher per server (a thread), so a server that hangs on /health delays no other
server's check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from hpcinfer.core.endpoints_registry import DEAD, READY, UNHEALTHY
from hpcinfer.core.server_probe import check_health
from hpcinfer.serve.readiness import Watched

INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 5.0

StateSink = Callable[[str, str | None], None]


def health_state(
    process: Watched, url: str, timeout_s: float = HEALTH_TIMEOUT_S
) -> tuple[str, str | None]:
    """(state, why) of a server that was ready: the process first, then /health."""
    if not process.alive():
        return DEAD, process.exit_text()
    check = check_health(url, timeout_s)
    return (READY, None) if check.up else (UNHEALTHY, check.error)


def watch_health(
    process: Watched,
    url: str,
    on_state: StateSink,
    stop: threading.Event,
    interval_s: float = INTERVAL_S,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> None:
    """Report the server's state every `interval_s` until it is dead or `stop` is set; the
    sink decides what a repeat of the same state means (usually nothing)."""
    while not stop.wait(interval_s):
        state, why = health_state(process, url, timeout_s)
        if stop.is_set():
            return  # a shutdown in progress is not a death
        on_state(state, why)
        if state == DEAD:
            return

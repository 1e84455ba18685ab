"""What a person sees of a fleet: one line per state change, and a table of endpoints.

Plain text (log tails hold brackets, which rich would read as markup); tables are rich
tables built from `Text` cells for the same reason.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from rich.table import Table
from rich.text import Text

from hpcinfer.core.endpoints_registry import (
    DEAD,
    FAILED,
    READY,
    STARTING,
    STOPPED,
    UNHEALTHY,
    Endpoint,
)
from hpcinfer.core.terminal import unclipped, wide_console
from hpcinfer.serve.fleet import FleetEvent

__all__ = ["EventPrinter", "endpoints_table", "event_line", "wide_console"]


def event_line(event: FleetEvent) -> str:
    """'server 0 (core0, http://127.0.0.1:8000): ready in 31.2s', with a log tail on failure."""
    entry, launch = event.endpoint, event.launch
    where = f"server {launch.index} ({','.join(entry.devices) or '-'}, {entry.url})"
    state = entry.state
    if state == STARTING:
        text = f"starting ({event.detail}), log {launch.log}"
    elif state == READY and event.previous == UNHEALTHY:
        text = "healthy again"
    elif state == READY:
        took = f" in {event.seconds:.1f}s" if event.seconds is not None else ""
        text = f"ready{took}" + startup_note(entry.startup)
    elif state == UNHEALTHY:
        text = f"unhealthy: {event.detail}"
    elif state in (FAILED, DEAD):
        text = f"{state}: {event.detail} (log {launch.log})"
        if event.tail:
            text += f"\n  last log lines:\n{event.tail}"
    elif state == STOPPED:
        text = "stopped"
    else:
        text = state
    return f"{where}: {text}"


def startup_note(phases: dict[str, float | None] | None) -> str:
    """' (model load 1.2 s, KV cache 2.5 s, compilation 0.0 s)': what vLLM reported."""
    names = (
        ("model_load_s", "model load"),
        ("kv_cache_s", "KV cache"),
        ("compile_s", "compilation"),
    )
    parts = [
        f"{label} {phases[key]:.1f} s"
        for key, label in names
        if phases and phases.get(key) is not None
    ]
    return f" ({', '.join(parts)})" if parts else ""


class EventPrinter:
    """An `on_event` sink printing lines to stderr; a lock keeps watcher threads' lines whole."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._lock = threading.Lock()

    def __call__(self, event: FleetEvent) -> None:
        self.print(event_line(event))

    def print(self, line: str) -> None:
        if self._quiet:
            return
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


def endpoints_table(endpoints: Sequence[Endpoint], title: str = "endpoints") -> Table:
    table = Table(title=title)
    for column in ("url", "model", "node", "devices", "state", "pid"):
        table.add_column(column)
    for entry in endpoints:
        table.add_row(
            *(
                Text(value)
                for value in (
                    entry.url,
                    entry.model,
                    entry.node,
                    ",".join(entry.devices),
                    entry.state,
                    str(entry.pid or "-"),
                )
            )
        )
    return unclipped(table)

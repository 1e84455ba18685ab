"""`hpcinfer serve` on one node (one serve rank): start the fleet, say what happens, keep the
registry current, and stop the servers on SIGTERM/SIGINT or at the deadline.

Exit codes: 0 after a signal or the deadline (the servers were stopped); 1 when no server
became ready, or every server died; 2 for a bad spec or flags (nothing started).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from hpcinfer.cluster.allocation import RankInfo, remaining_walltime_s, short_hostname
from hpcinfer.run.job import effective_time_limit
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.fleet import Fleet
from hpcinfer.serve.parts import PartsMerger
from hpcinfer.serve.plan import plan_fleet
from hpcinfer.serve.registry import DEAD, FAILED, READY, STOPPED, part_path
from hpcinfer.serve.report import EventPrinter, endpoints_table, wide_console
from hpcinfer.spec import JobSpec

TICK_S = 0.5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class ServeOptions:
    cwd: Path
    json_out: bool = False


def registry_path(spec: JobSpec, cwd: Path) -> Path:
    path = Path(spec.serve.registry).expanduser()
    return path if path.is_absolute() else cwd / path


class _StopRequest:
    """SIGTERM/SIGINT set an event the serve loop watches (handlers only in the main thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.event.is_set():
            self.reason = signal.Signals(signum).name
        self.event.set()


def serve_node(spec: JobSpec, options: ServeOptions, rank: RankInfo | None = None) -> int:
    """Serve until a signal or the deadline; see the module docstring for the exit codes."""
    started_at = time.time()
    registry = registry_path(spec, options.cwd)
    multi = rank is not None and rank.world_size > 1
    node = short_hostname(socket.gethostname())
    write_to = part_path(registry, node, rank.rank) if multi and rank else registry
    printer = EventPrinter()
    fleet = plan_fleet(spec, options.cwd, registry, rank, write_to=write_to, on_event=printer)
    merger = None
    if multi and rank is not None and rank.rank == 0:
        merger = PartsMerger(registry, rank.world_size)
        merger.remove_stale(started_at)
    limit, source = effective_time_limit(
        spec, remaining_walltime_s() if spec.time_limit is None else None
    )
    deadline = time.monotonic() + limit if limit is not None else None
    for note in fleet.notes:
        printer.print(f"warning: {note}")
    loop = _NodeLoop(fleet, registry, options, printer, deadline, source, merger, multi, rank)
    loop.stop.install()
    clean = False
    try:
        fleet.start()
        fleet.start_monitor()
        loop.run()
        clean = True
    finally:
        fleet.stop()
        if merger is not None:
            # On a clean stop every rank was signalled too: wait for their last states.
            merger.finish(wait_s=None if clean else 0.0)
        loop.stop.restore()
    stopped = sum(1 for e in fleet.endpoints if e.state == STOPPED)
    printer.print(f"stopped {stopped} server(s); registry {registry}")
    return 0


@dataclass
class _NodeLoop:
    """The watch loop of one serve rank (its state, so the steps stay short)."""

    fleet: Fleet
    registry: Path
    options: ServeOptions
    printer: EventPrinter
    deadline: float | None
    source: str
    merger: PartsMerger | None
    multi: bool
    rank: RankInfo | None
    stop: _StopRequest = field(default_factory=_StopRequest)
    announced: bool = False

    def run(self) -> None:
        """Announce once every server is ready or failed, then watch until told to stop;
        raises ServeError when nothing is left to serve."""
        while not self._should_stop():
            if self.multi:
                self.fleet.rewrite_if_missing()
            if self.merger is not None:
                self.merger.merge_if_changed()
            if self.fleet.all_down():
                ever_ready = any(e.ready for e in self.fleet.endpoints)
                what = (
                    "every server has stopped working" if ever_ready else "no server became ready"
                )
                report = self.fleet.failure_report(tails=False)
                raise ServeError(f"{what} (log tails above):\n{report}")
            if not self.announced and self.fleet.resolved():
                self._announce()
                self.announced = True
            self.stop.event.wait(TICK_S)

    def _should_stop(self) -> bool:
        if self.stop.event.is_set():
            self.printer.print(f"{self.stop.reason}: stopping the servers")
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            what = "walltime (less a margin)" if self.source == "walltime" else "time limit"
            self.printer.print(f"{what} reached: stopping the servers")
            return True
        return False

    def _announce(self) -> None:
        """The endpoints table (stderr) and, with --json, one JSON line on stdout."""
        endpoints = self.fleet.endpoints
        ready = [e for e in endpoints if e.state == READY]
        failed = [e for e in endpoints if e.state in (FAILED, DEAD)]
        if failed:
            self.printer.print(
                f"warning: {len(failed)} of {len(endpoints)} servers failed; serving with "
                f"{len(ready)} (the registry lists the failed ones with their error)"
            )
        title = f"endpoints (registry {self.registry})"
        if self.multi and self.rank is not None:
            title = f"endpoints of rank {self.rank.rank} (merged by rank 0 into {self.registry})"
        wide_console(stderr=True).print(endpoints_table(endpoints, title))
        if self.options.json_out:
            document = {
                "registry": str(self.registry),
                "rank": self.rank.rank if self.rank else 0,
                "endpoints": [e.as_dict() for e in endpoints],
            }
            print(json.dumps(document), flush=True)
        self.printer.print("serving; Ctrl-C or SIGTERM stops the servers")
        sys.stderr.flush()

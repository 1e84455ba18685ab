"""`hpcinfer serve` on one node (one serve rank): start the fleet, say what happens, keep the
registry current, and stop the servers on a stop request (the CLI feeds SIGTERM/SIGINT into
it) or at the deadline.

Returns what was served after a stop or the deadline (the servers were stopped); raises
ServeError when no server became ready, or every server died; SpecError for a bad spec
(nothing started). The CLI maps these to exit codes 0, 1 and 2.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hpcinfer.cluster import resolve_profile
from hpcinfer.cluster.allocation import RankInfo, remaining_walltime_s, short_hostname
from hpcinfer.core.endpoints_registry import DEAD, FAILED, READY, STOPPED, Endpoint, part_path
from hpcinfer.core.stop import StopSignal
from hpcinfer.core.time_limits import effective_time_limit
from hpcinfer.launch.rank_env import LAUNCH_ID_ENV
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.failed_entry import failure_recorded
from hpcinfer.serve.fleet import Fleet
from hpcinfer.serve.layout import nodes_of, plan_layout
from hpcinfer.serve.parts import PartsMerger
from hpcinfer.serve.plan import plan_fleet
from hpcinfer.serve.report import EventPrinter, endpoints_table, wide_console
from hpcinfer.serve.span_node import plan_span_leader, run_follower, span_rank
from hpcinfer.serve.stop_file import watch_for_stop
from hpcinfer.spec import JobSpec

TICK_S = 0.5


@dataclass
class ServeOptions:
    cwd: Path
    stop: StopSignal = field(default_factory=StopSignal)
    """Set it (from any thread; the CLI does from SIGTERM/SIGINT) to stop the servers."""
    on_ready: Callable[[ServingDocument], None] | None = None
    """Called once, when every server is ready or failed (`hpcinfer serve --json` prints it)."""
    quiet: bool = False
    """No event lines or endpoints table on stderr (failures still raise)."""


class ServingDocument(BaseModel):
    """The fleet one serve rank announces: where its registry is and its endpoints."""

    registry: str
    rank: int
    endpoints: list[dict[str, Any]]


@dataclass(frozen=True)
class ServeOutcome:
    """How a serve rank ended: its registry, its servers' last states, and why it stopped."""

    registry: Path
    endpoints: list[Endpoint]
    reason: str


def registry_path(spec: JobSpec, cwd: Path) -> Path:
    path = Path(spec.serve.registry).expanduser()
    return path if path.is_absolute() else cwd / path


def serve_node(spec: JobSpec, options: ServeOptions, rank: RankInfo | None = None) -> ServeOutcome:
    """Serve until a stop request or the deadline; see the module docstring. A rank that
    `hpcinfer serve --launcher ...` started also stops on its launch's stop file."""
    registry = registry_path(spec, options.cwd)
    launch = os.environ.get(LAUNCH_ID_ENV) if rank is not None else None
    watching = watch_for_stop(registry, launch, options.stop) if launch else None
    try:
        return _serve_node(spec, options, registry, rank)
    finally:
        if watching is not None:
            watching.set()


def _serve_node(
    spec: JobSpec, options: ServeOptions, registry: Path, rank: RankInfo | None
) -> ServeOutcome:
    started_at = time.time()
    multi = rank is not None and rank.world_size > 1
    node = short_hostname(socket.gethostname())
    write_to = part_path(registry, node, rank.rank) if multi and rank else registry
    printer = EventPrinter(quiet=options.quiet)
    # Rank 0 (or the only rank) writes the registry: a failure before any server starts is
    # listed there, so `hpcinfer endpoints --wait` ends at once instead of at its deadline.
    with failure_recorded(spec, registry, record=rank is None or rank.rank == 0):
        if spec.serve.backend == "ray":
            planned = _plan_ray(spec, options, registry, rank, write_to, printer)
        else:
            planned = _plan_mp(spec, options, registry, rank, write_to, printer)
    if isinstance(planned, str):  # a node that runs no API server, done
        return ServeOutcome(registry, [], planned)
    fleet, servers = planned
    merger = None
    if multi and rank is not None and rank.rank == 0:
        # Parts come from the ranks that run API servers: every rank, or each server's first.
        merger = PartsMerger(registry, servers)
        merger.remove_stale(started_at)
    limit, source = effective_time_limit(
        spec, remaining_walltime_s() if spec.time_limit is None else None
    )
    deadline = time.monotonic() + limit if limit is not None else None
    for note in fleet.notes:
        printer.print(f"warning: {note}")
    loop = _NodeLoop(fleet, registry, options, printer, deadline, source, merger, multi, rank)
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
    stopped = sum(1 for e in fleet.endpoints if e.state == STOPPED)
    printer.print(f"stopped {stopped} server(s); registry {registry}")
    return ServeOutcome(registry, fleet.endpoints, loop.reason)


def _plan_mp(
    spec: JobSpec,
    options: ServeOptions,
    registry: Path,
    rank: RankInfo | None,
    write_to: Path,
    printer: EventPrinter,
) -> tuple[Fleet, int] | str:
    """This rank's fleet and how many ranks run API servers; or, on a node of a server
    spanning nodes after its first, the headless rank run to its end (why it ended)."""
    layout = plan_layout(spec, resolve_profile(spec.workers.profile), nodes_of(rank))
    parts = rank.world_size // layout.nodes if rank else 1
    seat = span_rank(spec, layout, rank, registry) if layout.spans_nodes else None
    if seat is None:
        fleet = plan_fleet(spec, options.cwd, registry, rank, write_to=write_to, on_event=printer)
        return fleet, parts
    if seat.node_rank > 0:
        reason = run_follower(spec, options.cwd, registry, seat, options.stop, printer.print)
        printer.print(f"server {seat.server} node rank {seat.node_rank}: {reason}; stopped")
        return reason
    printer.print(
        f"server {seat.server}: {layout.describe()}, this node ({seat.node}, "
        f"{seat.network.address}) is node rank 0"
    )
    fleet = plan_span_leader(
        spec, options.cwd, registry, seat, options.stop, write_to=write_to, on_event=printer
    )
    return fleet, parts


def _plan_ray(
    spec: JobSpec,
    options: ServeOptions,
    registry: Path,
    rank: RankInfo | None,
    write_to: Path,
    printer: EventPrinter,
) -> tuple[Fleet, int] | str:
    """Backend ray: the first node of each server runs its API process (Ray's driver); the
    others run nothing (Ray places their ranks). Without ranks the placement is checked here
    (a launch checks it before starting the ranks)."""
    from hpcinfer.serve import ray_backend

    cluster = ray_backend.load_ray_cluster(spec)
    layout, groups = ray_backend.ray_layout(spec, cluster)
    server, node_rank = ray_backend.ray_seat(layout, groups, rank)
    if rank is None:
        ray_backend.check_placement(cluster, layout, groups)
    if node_rank > 0:
        reason = f"server {server} node rank {node_rank}: Ray places this node's ranks"
        printer.print(reason)
        return reason
    printer.print(f"server {server}: {layout.describe()} on the Ray cluster {cluster.name}")
    fleet = ray_backend.plan_ray_server(
        spec,
        options.cwd,
        registry,
        cluster,
        layout,
        server,
        rank=rank.rank if rank else 0,
        write_to=write_to,
        on_event=printer,
    )
    return fleet, len(groups)


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
    announced: bool = False
    reason: str = ""

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
            self.options.stop.wait(TICK_S)

    def _should_stop(self) -> bool:
        if self.options.stop.requested:
            self.reason = self.options.stop.reason
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            what = "walltime (less a margin)" if self.source == "walltime" else "time limit"
            self.reason = f"{what} reached"
        if self.reason:
            self.printer.print(f"{self.reason}: stopping the servers")
        return bool(self.reason)

    def _announce(self) -> None:
        """The endpoints table (stderr) and the caller's `on_ready` (`--json` prints it)."""
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
        if not self.options.quiet:
            wide_console(stderr=True).print(endpoints_table(endpoints, title))
        if self.options.on_ready is not None:
            self.options.on_ready(
                ServingDocument(
                    registry=str(self.registry),
                    rank=self.rank.rank if self.rank else 0,
                    endpoints=[e.as_dict() for e in endpoints],
                )
            )
        self.printer.print("serving; Ctrl-C or SIGTERM stops the servers")
        sys.stderr.flush()

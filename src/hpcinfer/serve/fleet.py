"""A fleet of vLLM servers on this node: start, readiness, health, registry, shutdown.

Library use (what `hpcinfer run --engine vllm-server` does)::

    from hpcinfer.serve.plan import plan_fleet

    fleet = plan_fleet(spec, cwd, registry_path)   # nothing started yet
    with fleet:                                    # always stops what it started
        fleet.start()                              # from the main thread (see process.py)
        ready = fleet.wait_ready()                 # ServeError when no server came up
        fleet.start_monitor()                      # registry follows deaths/recoveries
        ...  # send requests to [e.url for e in ready], or follow the registry file
    # leaving the block: SIGTERM to every server group, SIGKILL after the grace period

Every state change is written to the registry at once (atomically) and passed to
`on_event`, so a reader (the dispatcher, `hpcinfer endpoints`) and a person (progress
lines) see the same facts. One watcher thread per server does the readiness polling and
then, once `start_monitor()` was called, the health checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from hpcinfer.core.endpoints_registry import (
    DEAD,
    FAILED,
    LIVE_STATES,
    READY,
    STARTING,
    STOPPED,
    UNHEALTHY,
    Endpoint,
    now_iso,
    write_registry,
)
from hpcinfer.core.server_probe import verify_completion
from hpcinfer.core.startup_phases import server_startup
from hpcinfer.errors import SpecError
from hpcinfer.logtail import log_tail
from hpcinfer.serve.errors import ServeError
from hpcinfer.serve.monitor import INTERVAL_S, watch_health
from hpcinfer.serve.process import ServerProcess, stop_all
from hpcinfer.serve.readiness import Watched, await_ready

STOP_GRACE_S = 30.0
FAILED_SERVER_GRACE_S = 10.0


@dataclass(frozen=True)
class ServerLaunch:
    """Everything needed to start one server, decided before anything starts."""

    index: int  # the server's number on its node (its log is named after it)
    argv: list[str]
    env: dict[str, str]
    log: Path
    url: str
    model: str
    node: str = ""
    devices: tuple[str, ...] = ()
    cores: frozenset[int] | None = None
    rank: int = 0
    nodes: tuple[dict[str, Any], ...] = ()  # a server spanning nodes: each node it spans
    peers: Callable[[], str | None] | None = field(default=None, compare=False)
    """A server spanning nodes: why its other nodes' ranks cannot serve (None while they
    run); checked with the process, so a dead headless rank fails or kills the server."""
    verify: bool = False  # end readiness with a temperature-0 completion


class _WithPeers:
    """The server process as readiness and the monitor see it: alive only while its peers
    on other nodes are too."""

    def __init__(self, process: ServerProcess, peers: Callable[[], str | None]) -> None:
        self._process = process
        self._peers = peers
        self._why: str | None = None

    def alive(self) -> bool:
        if not self._process.alive():
            return False
        self._why = self._why or self._peers()
        return self._why is None

    def exit_text(self) -> str:
        """Its peers' failure first (a server may die of it, after it): that is the cause."""
        why = self._why or self._peers()
        if why is None:
            return self._process.exit_text()
        if self._process.alive():
            return why
        return f"{why}; then the server {self._process.exit_text()}"


VERIFY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FleetEvent:
    """A server changed state; `detail` says why (an error, a latency), `tail` is the end of
    its log for failures."""

    launch: ServerLaunch
    endpoint: Endpoint
    previous: str | None
    detail: str | None = None
    tail: str = ""
    seconds: float | None = None  # since start, for 'ready in N s'


EventSink = Callable[[FleetEvent], None]


@dataclass
class _Server:
    launch: ServerLaunch
    endpoint: Endpoint
    process: ServerProcess | None = None
    started: float = 0.0
    deadline: float = 0.0
    thread: threading.Thread | None = None


class Fleet:
    """The servers of one node (or one serve rank); see the module docstring."""

    def __init__(
        self,
        launches: list[ServerLaunch],
        registry: Path,
        *,
        api_key: str | None = None,
        ready_timeout_s: float = 900.0,
        on_event: EventSink | None = None,
        monitor_interval_s: float = INTERVAL_S,
        notes: list[str] | None = None,
    ) -> None:
        self.registry = registry
        self.notes = list(notes or [])  # placement warnings, skipped ports: shown at start
        self._api_key = api_key
        self._ready_timeout_s = ready_timeout_s
        self._on_event = on_event
        self._interval_s = monitor_interval_s
        self._servers = [
            _Server(
                launch=launch,
                endpoint=Endpoint(
                    url=launch.url,
                    model=launch.model,
                    node=launch.node,
                    devices=list(launch.devices),
                    log=str(launch.log),
                    rank=launch.rank,
                    nodes=[dict(n) for n in launch.nodes],
                ),
            )
            for launch in launches
        ]
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._monitoring = threading.Event()
        self._started = False
        self._stopped = False

    # --- what callers read ------------------------------------------------------------

    @property
    def launches(self) -> list[ServerLaunch]:
        return [s.launch for s in self._servers]

    @property
    def endpoints(self) -> list[Endpoint]:
        """A snapshot of every server's registry entry."""
        with self._lock:
            return [_copy(s.endpoint) for s in self._servers]

    def ready(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.state == READY]

    def resolved(self) -> bool:
        """No server is still starting (each is ready, or failed)."""
        return all(e.state != STARTING for e in self.endpoints)

    def all_down(self) -> bool:
        """No server is starting, ready or unhealthy: nothing left to serve or wait for."""
        return self._started and all(e.state not in LIVE_STATES for e in self.endpoints)

    def failure_report(self, tails: bool = True) -> str:
        """Every failed or dead server with its error, its log and (`tails`) the log's end."""
        parts = []
        for server in self._servers:
            entry = server.endpoint
            if entry.state in (FAILED, DEAD):
                tail = log_tail(server.launch.log) if tails else ""
                parts.append(
                    f"server {server.launch.index} ({entry.url}) {entry.state}: {entry.error}; "
                    f"log: {server.launch.log}" + (f"\n  last log lines:\n{tail}" if tail else "")
                )
        return "\n".join(parts)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start every server and its watcher; returns at once (readiness is polled in the
        watchers). Call it from the thread that outlives the servers (the main thread)."""
        if self._started:
            return
        try:
            self.write()
        except OSError as exc:
            raise SpecError(
                f"cannot write the endpoints registry {self.registry}: {exc}; pass --endpoints "
                "a path in a writable folder (on a file system every node sees, across nodes)"
            ) from None
        self._started = True
        for server in self._servers:
            self._spawn(server)

    def wait_ready(
        self, timeout_s: float | None = None, return_when: Literal["all", "first"] = "all"
    ) -> list[Endpoint]:
        """Wait until every server is ready or failed ("all"), or for the first ready one
        ("first"; the others go on starting). `timeout_s` shortens the ready timeout of
        servers still starting. Returns the ready endpoints; ServeError when none is."""
        if not self._started:
            raise ServeError("Fleet.wait_ready() before Fleet.start()")
        if timeout_s is not None:
            limit = time.monotonic() + timeout_s
            with self._lock:
                for server in self._servers:
                    server.deadline = min(server.deadline, limit)
        with self._lock:
            while not self._closing.is_set():
                states = [s.endpoint.state for s in self._servers]
                if return_when == "first" and READY in states:
                    break
                if STARTING not in states:
                    break
                self._lock.wait(0.5)
        ready = self.ready()
        if not ready:
            report = self.failure_report() or "the fleet was stopped before a server was ready"
            raise ServeError(f"no server became ready:\n{report}")
        return ready

    def start_monitor(self) -> None:
        """From now on ready servers are health-checked every interval (registry kept
        current: dead, unhealthy, ready again)."""
        self._monitoring.set()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every server this fleet started (SIGTERM to each group, SIGKILL after
        `grace_s`); live ones become 'stopped'. Safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._closing.set()
            self._lock.notify_all()
        processes = [s.process for s in self._servers if s.process is not None]
        stop_all(processes, grace_s)
        with self._lock:
            for server in self._servers:
                if server.endpoint.state in LIVE_STATES:
                    self._transition(server, STOPPED, None, force=True)
        for server in self._servers:
            if server.thread is not None:
                server.thread.join(timeout=10)

    def write(self) -> None:
        """Write the registry now (every state change does this by itself)."""
        with self._lock:
            write_registry(self.registry, [s.endpoint for s in self._servers])

    def rewrite_if_missing(self) -> None:
        """Across nodes rank 0 removes parts left by an earlier launch; a part of this
        launch removed by mistake comes back on the next call."""
        if not self.registry.exists():
            self.write()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- inside -----------------------------------------------------------------------

    def _spawn(self, server: _Server) -> None:
        launch = server.launch
        server.started = time.monotonic()
        server.deadline = server.started + self._ready_timeout_s
        try:
            server.process = ServerProcess(launch.argv, launch.env, launch.log, launch.cores)
        except OSError as exc:
            with self._lock:
                self._transition(server, FAILED, f"cannot start {launch.argv[0]}: {exc}")
            return
        with self._lock:
            server.endpoint.pid = server.process.pid
            server.endpoint.started = now_iso()
            self._transition(server, STARTING, f"pid {server.process.pid}", force=True)
        server.thread = threading.Thread(
            target=self._watch, args=(server,), name=f"serve-{launch.index}", daemon=True
        )
        server.thread.start()

    def _watch(self, server: _Server) -> None:
        assert server.process is not None
        peers = server.launch.peers
        process: Watched = server.process if peers is None else _WithPeers(server.process, peers)
        result = await_ready(
            process,
            server.launch.url,
            lambda: server.deadline,
            model=server.launch.model,
            api_key=self._api_key,
            stop=self._closing,
        )
        if self._closing.is_set():
            return
        error = result.error if not result.ready else self._verify(server)
        if self._closing.is_set():
            return
        if error is not None:
            with self._lock:
                self._transition(server, FAILED, error)
            # A server that never came up still holds its devices (or left an EngineCore).
            stop_all([server.process], FAILED_SERVER_GRACE_S)
            return
        phases = server_startup(server.launch.log, time.monotonic() - server.started)
        with self._lock:
            server.endpoint.ready = now_iso()
            server.endpoint.startup = phases.model_dump()
            self._transition(server, READY, None)
        while not (self._monitoring.wait(0.5) or self._closing.is_set()):
            pass
        if self._closing.is_set():
            return

        def on_state(state: str, why: str | None) -> None:
            with self._lock:
                self._transition(server, state, why)
            if state == DEAD:
                assert server.process is not None
                server.process.reap_group()  # its EngineCore (or its peers' work) may outlive it

        watch_health(process, server.launch.url, on_state, self._closing, self._interval_s)

    def _verify(self, server: _Server) -> str | None:
        """The verification request of a ready server that asks for one: None when it
        answered (the answer goes into its registry entry), else why not."""
        if not server.launch.verify:
            return None
        left = max(1.0, min(VERIFY_TIMEOUT_S, server.deadline - time.monotonic()))
        check = verify_completion(server.launch.url, server.launch.model, left, self._api_key)
        if not check.ok:
            return f"{check.error} (it answered /health and /v1/models)"
        with self._lock:
            server.endpoint.verified = check.as_dict()
        return None

    def _transition(
        self, server: _Server, state: str, why: str | None, force: bool = False
    ) -> None:
        """Record a state change (caller holds the lock): registry first, then the event.
        While the fleet stops, only 'stopped' is recorded (an exit then is no death)."""
        entry = server.endpoint
        previous = entry.state
        if not force and (previous == state or self._closing.is_set()):
            return
        entry.state = state
        if state in (FAILED, DEAD, UNHEALTHY):
            entry.error = why
        elif state in (READY, STOPPED):
            entry.error = None
        # A failed write (a full disk, a file system hiccup) loses nothing: the next change
        # writes every server's state again.
        with contextlib.suppress(OSError):
            write_registry(self.registry, [s.endpoint for s in self._servers])
        self._lock.notify_all()
        if self._on_event is not None:
            seconds = time.monotonic() - server.started if server.started else None
            tail = log_tail(server.launch.log) if state in (FAILED, DEAD) else ""
            self._on_event(FleetEvent(server.launch, _copy(entry), previous, why, tail, seconds))


def _copy(entry: Endpoint) -> Endpoint:
    return dataclasses.replace(
        entry, devices=list(entry.devices), nodes=[dict(n) for n in entry.nodes]
    )

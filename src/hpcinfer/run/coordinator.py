"""The coordinator: hands work units to workers on demand and watches them.

Work is pulled, never split up front: a worker asks when its engine runs low and gets as many
units as keep it busy but no more than its fair share of what is left (guided
self-scheduling: the share shrinks as the job ends), so a slow worker never holds the job's
tail. A worker that dies loses only its uncommitted units, which go back to the queue.
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

from hpcinfer.run.plan import WorkUnit

ABORT_GRACE_S = 10.0


def grant_target(*, unassigned: int, alive: int, unit_size: int, max_inflight: int) -> int:
    """Records a worker may hold: as many as keep its engine full, but with other workers
    alive no more than half its even share of what is left (guided self-scheduling), so the
    job's tail is spread over every worker. A lone worker has no one to balance with."""
    share = unassigned if alive <= 1 else math.ceil(unassigned / (2 * alive))
    return max(unit_size, min(max_inflight, share))


@dataclass
class WorkerHandle:
    index: int
    proc: subprocess.Popen[bytes]
    conn: Connection
    log: Path
    assigned: dict[str, WorkUnit] = field(default_factory=dict)
    alive: bool = True
    clean_exit: bool = False
    error: str | None = None
    startup_s: float | None = None
    waiting: bool = False
    committed_units: int = 0
    stats: dict[str, int] = field(
        default_factory=lambda: {"records": 0, "errors": 0, "prompt_tokens": 0, "output_tokens": 0}
    )


@dataclass
class CoordinatorResult:
    stopped_early: bool
    stop_reason: str | None
    generation_s: float | None
    """From the first worker ready to the last unit committed: the generation window, free of
    engine start-up and shutdown."""


class Coordinator:
    def __init__(
        self,
        workers: list[WorkerHandle],
        units: Iterator[WorkUnit],
        unassigned_records: int,
        *,
        unit_size: int,
        max_inflight: int,
        on_progress: Callable[[dict[str, int]], None],
        time_limit_s: float | None = None,
    ) -> None:
        self.workers = workers
        self.units = units
        self.requeued: deque[WorkUnit] = deque()
        self.unassigned = unassigned_records
        self.unit_size = unit_size
        self.max_inflight = max_inflight
        self.on_progress = on_progress
        self.time_limit_s = time_limit_s
        self.exhausted = False
        self.stop_reason: str | None = None
        self.aborting_since: float | None = None
        self.started = time.monotonic()
        self.first_ready: float | None = None
        self.last_commit: float | None = None

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> Callable[[], None]:
        """First SIGINT/SIGTERM: stop taking new units and drain; second: abort."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(f"signal {signal.Signals(signum).name}")

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            for worker in self._alive():
                _send(worker, ("stop", {}))
        elif self.aborting_since is None:
            self.aborting_since = time.monotonic()
            for worker in self._alive():
                _send(worker, ("abort", {}))

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> CoordinatorResult:
        while self._alive():
            self._check_deadlines()
            conns = [w.conn for w in self._alive()]
            for conn in wait(conns, timeout=0.5):
                worker = next(w for w in self.workers if w.conn is conn)
                self._receive(worker)
        window = None
        if self.first_ready is not None and self.last_commit is not None:
            window = round(self.last_commit - self.first_ready, 3)
        return CoordinatorResult(self.stop_reason is not None, self.stop_reason, window)

    def _alive(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.alive]

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        limit = self.time_limit_s
        if limit is not None and self.stop_reason is None and now - self.started >= limit:
            self.request_stop(f"time limit of {self.time_limit_s:g}s reached")
        if self.aborting_since is not None and now - self.aborting_since > ABORT_GRACE_S:
            for worker in self._alive():
                worker.proc.kill()

    def _receive(self, worker: WorkerHandle) -> None:
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        if kind == "ready":
            worker.startup_s = payload.get("startup_s")
            if self.first_ready is None:
                self.first_ready = time.monotonic()
        elif kind == "want":
            self._grant(worker, int(payload["inflight"]))
        elif kind == "progress":
            for key, value in payload.items():
                worker.stats[key] = worker.stats.get(key, 0) + value
            self.on_progress(payload)
        elif kind == "committed":
            worker.assigned.pop(payload["unit"], None)
            worker.committed_units += 1
            self.last_commit = time.monotonic()
            if self.exhausted and not self.requeued and not self._someone_else_holds_work(None):
                self._wake_waiting()
        elif kind == "failed":
            worker.error = payload.get("error")
        elif kind == "bye":
            # Done: everything it held is committed. Its exit is reaped after the exports,
            # so engine shutdown overlaps them instead of delaying them.
            worker.clean_exit = True
            worker.alive = False

    def _next_unit(self) -> WorkUnit | None:
        if self.requeued:
            return self.requeued.popleft()
        if self.exhausted:
            return None
        unit = next(self.units, None)
        if unit is None:
            self.exhausted = True
        return unit

    def _grant(self, worker: WorkerHandle, inflight: int) -> None:
        if self.stop_reason is not None:
            _send(worker, ("units", {"units": [], "more": False}))
            return
        target = grant_target(
            unassigned=self.unassigned,
            alive=len(self._alive()),
            unit_size=self.unit_size,
            max_inflight=self.max_inflight,
        )
        granted: list[WorkUnit] = []
        held = inflight
        while held < target or (not granted and held == 0):
            unit = self._next_unit()
            if unit is None:
                break
            granted.append(unit)
            worker.assigned[unit.id] = unit
            held += unit.size
            self.unassigned -= unit.size
        more = bool(self.requeued) or not self.exhausted
        # Work may come back from a worker that dies later: keep idle workers asking while
        # another worker still holds units.
        if not granted and not more and self._someone_else_holds_work(worker):
            more = True
        worker.waiting = not granted and more
        _send(worker, ("units", {"units": granted, "more": more}))

    def _wake_waiting(self) -> None:
        """Workers granted nothing wait for a wake-up before asking again."""
        for worker in self._alive():
            if worker.waiting:
                worker.waiting = False
                _send(worker, ("wake", {}))

    def _someone_else_holds_work(self, worker: WorkerHandle | None) -> bool:
        return any(w.assigned for w in self._alive() if w is not worker)

    def _lost(self, worker: WorkerHandle) -> None:
        """A worker's connection closed: collect its exit and requeue its uncommitted units."""
        worker.alive = False
        try:
            code = worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            code = worker.proc.wait()
        if code != 0 or not worker.clean_exit:
            worker.clean_exit = False
            worker.error = worker.error or f"exited with code {code}"
        for unit in worker.assigned.values():
            self.requeued.append(unit)
            self.unassigned += unit.size
        worker.assigned.clear()
        if self.requeued or not self._someone_else_holds_work(None):
            self._wake_waiting()


def _send(worker: WorkerHandle, message: tuple[str, Any]) -> None:
    with contextlib.suppress(OSError, ValueError):
        worker.conn.send(message)

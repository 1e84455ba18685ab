"""The coordinator: hands work units to workers on demand and watches them.

Work is pulled, never split up front: a worker asks when its engine runs low and gets as many
units as keep it busy but no more than its fair share of what is left (guided
self-scheduling: the share shrinks as the job ends), so a slow worker never holds the job's
tail. A worker that dies loses only its uncommitted units, which go back to the queue.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from hpcinfer.core.processes import Child
from hpcinfer.core.stop import StopSignal
from hpcinfer.run.joins import Joined, JoinListener, decline
from hpcinfer.run.plan import WorkUnit
from hpcinfer.run.schedule import Scheduler

ABORT_GRACE_S = 10.0
"""After an abort, this node's workers still alive this long after their SIGKILL (and any
other rank's worker met since) are ended again."""
SILENT_AFTER_S = 60.0
"""A ready worker holding units that sent nothing for this long is shown as silent (a
working one reports at least every few seconds: progress or a heartbeat)."""


@dataclass
class WorkerHandle:
    index: int
    proc: Child | None  # None: a worker of another rank (its rank reaps it)
    conn: Connection
    log: Path
    rank: int = 0
    host: str = ""
    devices: list[str] = field(default_factory=list)
    assigned: dict[str, WorkUnit] = field(default_factory=dict)
    alive: bool = True
    clean_exit: bool = False
    error: str | None = None
    startup_s: float | None = None
    startup: dict[str, Any] | None = None  # the engine's start-up phases (StartupPhases)
    waiting: bool = False
    committed_units: int = 0
    ready: bool = False
    stopped_by_us: bool = False  # ended while loading its engine, on a stop request
    last_heard: float = field(default_factory=time.monotonic)
    last_error: str | None = None  # the latest error row's message it reported
    stats: dict[str, int] = field(
        default_factory=lambda: {"records": 0, "errors": 0, "prompt_tokens": 0, "output_tokens": 0}
    )


@dataclass(frozen=True)
class WorkerState:
    """What `hpcinfer status` and the progress line show of one worker."""

    worker: int
    rank: int
    host: str
    state: str
    """loading | generating | waiting | silent | done | failed"""
    records: int
    errors: int
    output_tokens: int
    silent_s: float
    error: str | None


class Observer(Protocol):
    """Who watches the coordinator (the progress view): told of readiness, a stop, and
    called at every turn of the loop (at least every half second)."""

    def workers_ready(self, ready: int, total: int) -> None: ...

    def stopping(self, reason: str, units_held: int, aborting: bool) -> None: ...

    def tick(self, coordinator: Coordinator) -> None: ...


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
        time_limit_name: str = "time limit",
        owner_of: Callable[[WorkUnit], int] | None = None,
        batch: int = 0,
        joins: JoinListener | None = None,
        on_join: Callable[[Joined], WorkerHandle | None] | None = None,
        on_ready: Callable[[], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.workers = workers
        # O(1) per message at 24,576 workers: the sender by connection, and the alive count.
        self._owner = {id(w.conn): w for w in workers}
        self.n_alive = sum(w.alive for w in workers)
        self.scheduler = Scheduler(
            units,
            unassigned_records,
            unit_size=unit_size,
            max_inflight=max_inflight,
            owner_of=owner_of,
            batch=batch,
        )
        self.on_progress = on_progress
        self.time_limit_s = time_limit_s
        self.time_limit_name = time_limit_name
        self.joins = joins
        self.on_join = on_join
        self.on_ready = on_ready  # the first worker is ready: generation starts
        self.observer = observer
        self.stop_reason: str | None = None
        self.aborting_since: float | None = None
        self.started = time.monotonic()
        self.first_ready: float | None = None
        self.last_commit: float | None = None

    # -- stopping --------------------------------------------------------------------------
    def _follow(self, stop: StopSignal | None) -> None:
        """The caller's stop request: the first drains (no new units), an abort aborts."""
        if stop is None or not stop.requested:
            return
        if self.stop_reason is None:
            self.request_stop(stop.reason)
        if stop.aborted and self.aborting_since is None:
            self.request_stop(stop.reason)

    def request_stop(self, reason: str) -> None:
        """The first request drains: ready workers finish and commit the units they hold,
        workers still loading their engine hold nothing and are ended now. The second
        aborts: this node's workers are killed at once (commits are atomic renames: a unit
        is in or out), other ranks' are told to abort and cut off, not waited for. A worker
        of another rank still starting its engine ends on either (`worker._EndsOnStop`)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            for worker in self._alive():
                _send(worker, ("stop", {}))
                if not worker.ready and worker.proc is not None:
                    worker.stopped_by_us = True
                    worker.proc.signal_group(signal.SIGKILL)
            self._tell_stopping(aborting=False)
        elif self.aborting_since is None:
            self.aborting_since = time.monotonic()
            for worker in self._alive():
                _send(worker, ("abort", {}))
                if worker.proc is not None:
                    worker.stopped_by_us = True
                    worker.proc.signal_group(signal.SIGKILL)
                else:
                    self._cut_off(worker)
            self._tell_stopping(aborting=True)

    def _tell_stopping(self, aborting: bool) -> None:
        if self.observer is not None:
            held = sum(len(w.assigned) for w in self._alive())
            self.observer.stopping(self.stop_reason or "", held, aborting)

    def worker_states(self) -> list[WorkerState]:
        """Every worker's state now, for the progress line and the status file."""
        now = time.monotonic()
        states = []
        for w in self.workers:
            quiet_s = now - w.last_heard
            if not w.alive:
                state = "done" if w.clean_exit else "failed"
            elif not w.ready:
                state = "loading"
            elif w.assigned and quiet_s > SILENT_AFTER_S:
                state = "silent"
            else:
                state = "generating" if w.assigned else "waiting"
            states.append(
                WorkerState(
                    worker=w.index,
                    rank=w.rank,
                    host=w.host,
                    state=state,
                    records=w.stats.get("records", 0),
                    errors=w.stats.get("errors", 0),
                    output_tokens=w.stats.get("output_tokens", 0),
                    silent_s=round(quiet_s, 1),
                    error=w.error or w.last_error,
                )
            )
        return states

    def units_held(self) -> int:
        return sum(len(w.assigned) for w in self._alive())

    # -- main loop -------------------------------------------------------------------------
    def run(self, stop: StopSignal | None = None) -> CoordinatorResult:
        """Until every unit is committed, or the workers have drained after a stop (the time
        limit, or `stop` from the caller, polled every half second)."""
        while self._alive() or self._awaiting_joins():
            self._follow(stop)
            self._check_deadlines()
            if self.observer is not None:
                self.observer.tick(self)
            conns: list[Any] = [w.conn for w in self._alive()]
            if self.joins is not None:
                conns.append(self.joins.doorbell)
            for conn in wait(conns, timeout=0.5):
                if self.joins is not None and conn is self.joins.doorbell:
                    self._admit()
                    continue
                self._receive(self._owner[id(conn)])
        window = None
        if self.first_ready is not None and self.last_commit is not None:
            window = round(self.last_commit - self.first_ready, 3)
        return CoordinatorResult(self.stop_reason is not None, self.stop_reason, window)

    def _awaiting_joins(self) -> bool:
        """Nobody is working but work is left and other ranks' workers may still join."""
        return (
            self.joins is not None
            and self.stop_reason is None
            and self.scheduler.has_work()
            and self.joins.pending()
        )

    def _admit(self) -> None:
        """Configure workers that joined from other ranks; they ask for work like any other."""
        assert self.joins is not None and self.on_join is not None
        for joined in self.joins.take():
            if self.stop_reason is not None or not self.scheduler.has_work():
                decline(joined.conn)
                continue
            handle = self.on_join(joined)
            if handle is not None:
                self.workers.append(handle)
                self._owner[id(handle.conn)] = handle
                self.n_alive += 1

    def _mark_gone(self, worker: WorkerHandle) -> None:
        if worker.alive:
            worker.alive = False
            self.n_alive -= 1

    def _alive(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.alive]

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        limit = self.time_limit_s
        if limit is not None and self.stop_reason is None and now - self.started >= limit:
            self.request_stop(f"{self.time_limit_name} of {self.time_limit_s:g}s reached")
        if self.aborting_since is not None and now - self.aborting_since > ABORT_GRACE_S:
            for worker in self._alive():
                if worker.proc is not None:
                    worker.proc.signal_group(signal.SIGKILL)
                else:
                    self._cut_off(worker)

    def _cut_off(self, worker: WorkerHandle) -> None:
        """Another rank's worker, on an abort: not waited for. Closing its connection makes
        it exit (it reads EOF, also while its engine starts) and its rank reaps it."""
        self._mark_gone(worker)
        worker.conn.close()

    def _receive(self, worker: WorkerHandle) -> None:
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        worker.last_heard = time.monotonic()
        if kind == "ready":
            worker.startup_s = payload.get("startup_s")
            worker.startup = payload.get("startup")
            worker.ready = True
            if self.first_ready is None:
                self.first_ready = time.monotonic()
                if self.on_ready is not None:
                    self.on_ready()
            if self.observer is not None:
                ready = sum(w.ready for w in self.workers)
                self.observer.workers_ready(ready, len(self.workers))
        elif kind == "startup":  # the phases again, with the first token's time
            worker.startup = payload
        elif kind == "want":
            self._grant(worker, int(payload["inflight"]))
        elif kind == "progress":
            if not payload:
                return  # a heartbeat: alive, nothing finished since the last report
            last_error = payload.pop("last_error", None)
            if last_error:
                worker.last_error = last_error
            for key, value in payload.items():
                worker.stats[key] = worker.stats.get(key, 0) + value
            self.on_progress(payload)
        elif kind == "committed":
            done = worker.assigned.pop(payload["unit"], None)
            if done is not None:
                self.scheduler.committed(done.size)
            worker.committed_units += 1
            self.last_commit = time.monotonic()
            if not self._work_left_unheld() and not self._someone_else_holds_work(None):
                self._wake_waiting()
        elif kind == "failed":
            worker.error = payload.get("error")
        elif kind == "bye":
            # Done: everything it held is committed. Its exit is reaped after the exports,
            # so engine shutdown overlaps them instead of delaying them.
            worker.clean_exit = True
            self._mark_gone(worker)

    def _grant(self, worker: WorkerHandle, inflight: int) -> None:
        if self.stop_reason is not None:
            _send(worker, ("units", {"units": [], "more": False}))
            return
        granted = self.scheduler.grant(worker.index, inflight, alive=self.n_alive)
        for unit in granted:
            worker.assigned[unit.id] = unit
        more = self.scheduler.more_for(worker.index)
        # Work may come back from a worker that dies later: keep idle workers asking while
        # another worker still holds units.
        if not granted and not more and self._someone_else_holds_work(worker):
            more = True
        worker.waiting = not granted and more
        reply: dict[str, Any] = {"units": granted, "more": more}
        if worker.waiting:
            # Ask again once holding less than the target; with nothing left to hand out,
            # only when woken (work requeued, or the job done). Without this hint a refused
            # worker asked at every finished record: 88% of requests at 24,576 workers.
            reply["ask_below"] = (
                self.scheduler.last_target if self.scheduler.more_for(worker.index) else 0
            )
        _send(worker, ("units", reply))

    def _work_left_unheld(self) -> bool:
        return bool(self.scheduler.requeued) or not self.scheduler.exhausted

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
        self._mark_gone(worker)
        if worker.proc is None:
            if not worker.clean_exit:
                worker.error = worker.error or (
                    f"lost (rank {worker.rank} on {worker.host}: killed, or its node failed)"
                )
        else:
            worker.proc.stop(30.0, first_signal=None)  # it exits by itself, or is killed
            code = worker.proc.returncode
            if code != 0 or not worker.clean_exit:
                worker.clean_exit = False
                worker.error = worker.error or f"exited with code {code}"
        self.scheduler.requeue(list(worker.assigned.values()), owner_died=worker.index)
        worker.assigned.clear()
        if worker.stopped_by_us:
            worker.clean_exit, worker.error = True, None  # ended on request, holding nothing
        if self.scheduler.requeued or not self._someone_else_holds_work(None):
            self._wake_waiting()


def _send(worker: WorkerHandle, message: tuple[str, Any]) -> None:
    with contextlib.suppress(OSError, ValueError):
        worker.conn.send(message)

"""A worker: one engine, fed work units by the coordinator, committing each unit it finishes.

Started as `python -m hpcinfer.run.worker FD` (a socket to a coordinator on this node) or
`python -m hpcinfer.run.worker --connect HOST:PORT` (a coordinator on another rank; the key
that authenticates the connection comes in $HPCINFER_COORDINATOR_KEY, and what the worker
tells the coordinator about itself in $HPCINFER_WORKER_HELLO), with its placement's binding
environment already in its environment (so devices are bound before vLLM or torch is
imported). It asks for more work while its engine holds fewer than `max_inflight` records,
so the next unit's requests are queued before the current unit drains: a unit is the grain
of commit, not a barrier. It commits units itself, so committed work survives the
coordinator's death.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, NoReturn

from hpcinfer.core.startup_phases import StartupClock
from hpcinfer.engines.base import Engine
from hpcinfer.engines.factory import start_engine
from hpcinfer.engines.kinds import ENGINE_KIND_ENV, engine_kind, engine_kind_names
from hpcinfer.engines.vllm_offline import EngineSetup
from hpcinfer.outputs.buffer import UnitMover
from hpcinfer.outputs.store import OutputStore
from hpcinfer.records import Record, Result
from hpcinfer.run.plan import WorkUnit
from hpcinfer.run.retry import merge_rows
from hpcinfer.run.rows import make_row

PROGRESS_INTERVAL_S = 0.5
PROGRESS_MESSAGES_PER_S = 2000
HEARTBEAT_EVERY = 10
HEARTBEAT_MAX_S = 20.0
START_WATCH_S = 0.2
"""How often the start-up watch looks at the connection (and how long the engine, once
started, may wait for the watch to end)."""
"""A worker with units but nothing finished reports (an empty message) every
HEARTBEAT_EVERY progress intervals, at most HEARTBEAT_MAX_S apart, so the coordinator
can tell a slow batch from a hung worker (SILENT_AFTER_S there)."""


def progress_interval_s(workers: int) -> float:
    """Seconds between a worker's periodic progress reports: 0.5 s on a node, longer at
    scale so one coordinator hears about 2,000 a second in all (at 24,576 workers, 0.5 s
    took 43-46% of its time in bench/scale_sim.py). Commits report progress anyway."""
    return max(PROGRESS_INTERVAL_S, workers / PROGRESS_MESSAGES_PER_S)


COORDINATOR_KEY_ENV = "HPCINFER_COORDINATOR_KEY"
WORKER_HELLO_ENV = "HPCINFER_WORKER_HELLO"


@dataclass(frozen=True)
class WorkerConfig:
    """What the coordinator sends a worker first."""

    worker: int
    setup: EngineSetup
    out_dir: str
    max_inflight: int
    local_dir: str | None = None  # node-local commit buffer (output.local_dir)
    progress_interval_s: float = PROGRESS_INTERVAL_S


@dataclass
class _UnitState:
    unit: WorkUnit
    results: dict[int, Result] = field(default_factory=dict)

    def complete(self) -> bool:
        return len(self.results) >= self.unit.size


@dataclass
class _Tally:
    records: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    last_error: str = ""

    def add(self, result: Result) -> None:
        self.records += 1
        self.errors += result.status != "ok"
        self.prompt_tokens += result.prompt_tokens or 0
        self.output_tokens += result.output_tokens or 0
        if result.status != "ok" and result.error:
            self.last_error = result.error[:500]

    def take(self) -> dict[str, Any]:
        """The counts since the last report (and the latest error's text, if any)."""
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if v or k != "last_error"}
        self.records = self.errors = self.prompt_tokens = self.output_tokens = 0
        self.last_error = ""
        return out


class Worker:
    def __init__(
        self,
        conn: Connection,
        config: WorkerConfig,
        engine: Engine,
        clock: StartupClock | None = None,
    ) -> None:
        self.conn = conn
        self.config = config
        self.engine = engine
        self.clock = clock  # start-up phases, completed by the first token
        self.store = OutputStore(Path(config.out_dir))
        self.units: dict[str, _UnitState] = {}
        self.owner: dict[str, tuple[_UnitState, int]] = {}
        self.tally = _Tally()
        self.last_progress = time.monotonic()
        self.asked = False
        self.asked_inflight = 0
        # In-flight count at which the coordinator last granted nothing: ask again once the
        # worker holds less (something finished since), or when woken. Tracking the count,
        # not "wait for the next commit", avoids a deadlock when units commit while the
        # refusal is on its way.
        self.refused_at: int | None = None
        self.no_more = False
        self.stopping = False
        self._send_lock = threading.Lock()  # the unit mover's thread sends too
        self.mover: UnitMover | None = None
        if config.local_dir:
            self.mover = UnitMover(Path(config.local_dir), self.store, self._moved)
            self.mover.move_leftovers()

    def _send(self, message: tuple[str, dict[str, Any]]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def inflight_records(self) -> int:
        return sum(s.unit.size - len(s.results) for s in self.units.values())

    def serve(self) -> None:
        """Run until the coordinator has no more work (or says stop) and every unit is in."""
        while True:
            self._maybe_ask()
            if (self.no_more or self.stopping) and not self.units:
                break
            block = self.engine.inflight() == 0
            if not self._read_messages(block=block):
                return
            if self.engine.inflight():
                self._accept(self.engine.poll())
                self._send_first_token()
            self._send_progress()
        self._send_progress(force=True)
        if self.mover is not None:
            self.mover.close()  # every unit in the shared store (and reported) before bye
        self._send(("bye", {}))

    def _maybe_ask(self) -> None:
        if self.no_more or self.stopping or self.asked:
            return
        inflight = self.inflight_records()
        if self.refused_at is not None and inflight >= self.refused_at:
            return
        if inflight < self.config.max_inflight:
            self._send(("want", {"inflight": inflight}))
            self.asked = True
            self.asked_inflight = inflight

    def _read_messages(self, block: bool) -> bool:
        """Handle coordinator messages; False when told to abort."""
        timeout: float | None = None if block else 0.0
        while self.conn.poll(timeout):
            kind, payload = self.conn.recv()
            timeout = 0.0
            if kind == "units":
                self.asked = False
                units: list[WorkUnit] = payload["units"]
                self.no_more = not payload["more"]
                refused = not units and not self.no_more
                hint = int(payload.get("ask_below", self.asked_inflight))
                self.refused_at = min(self.asked_inflight, hint) if refused else None
                for unit in units:
                    self._start(unit)
            elif kind == "wake":
                self.refused_at = None
            elif kind == "stop":
                self.stopping = True
            elif kind == "abort":
                return False
        return True

    def _start(self, unit: WorkUnit) -> None:
        # Requests are keyed by unit and position, not record id: ids may repeat (a duplicate
        # id is an error row beside the record that owns the id).
        state = _UnitState(unit)
        self.units[unit.id] = state
        keyed = []
        for position, record in enumerate(unit.records):
            key = f"{unit.index}/{position}"
            self.owner[key] = (state, position)
            keyed.append(replace(record, id=key))
        self._accept(self.engine.submit(keyed))

    def _accept(self, results: list[Result]) -> None:
        for result in results:
            owner = self.owner.pop(result.id, None)
            if owner is None:
                continue
            state, position = owner
            result.id = state.unit.records[position].id
            state.results[position] = result
            self.tally.add(result)
        for unit_id in [u for u, s in self.units.items() if s.complete()]:
            self._commit(self.units.pop(unit_id))

    def _commit(self, state: _UnitState) -> None:
        ordered = _in_record_order(state)
        rows = [
            make_row(record, result, worker=self.config.worker, model=self.engine.model_name)
            for record, result in ordered
        ]
        if state.unit.kept:  # --retry-errors: the unit's kept ok rows around the new ones
            rows = merge_rows(state.unit.kept, rows)
        if self.mover is not None:
            self.mover.commit(state.unit.id, rows)  # reported committed once moved
            self._send_progress(force=True)
            return
        self.store.commit(state.unit.id, rows)
        self._send_progress(force=True)
        self._send(("committed", {"unit": state.unit.id}))

    def _moved(self, unit_id: str) -> None:
        self._send(("committed", {"unit": unit_id}))

    def _send_first_token(self) -> None:
        """Once the engine timed its first token: the start-up phases, now complete."""
        seconds = getattr(self.engine, "first_token_s", None)
        if self.clock is None or seconds is None:
            return
        self.clock.first_token(seconds)
        self._send(("startup", self.clock.phases().model_dump()))
        self.clock = None

    def _send_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        due = now - self.last_progress >= self.config.progress_interval_s
        if self.tally.records and (force or due):
            self._send(("progress", self.tally.take()))
            self.last_progress = now
        elif self.units and due and now - self.last_progress >= self._heartbeat_s():
            self._send(("progress", {}))  # alive: nothing finished since the last report
            self.last_progress = now

    def _heartbeat_s(self) -> float:
        return min(self.config.progress_interval_s * HEARTBEAT_EVERY, HEARTBEAT_MAX_S)


def _in_record_order(state: _UnitState) -> list[tuple[Record, Result]]:
    return [(record, state.results[i]) for i, record in enumerate(state.unit.records)]


def _preload_engine(clock: StartupClock) -> None:
    """Do the kind's slow imports (vLLM: about 10 s) while the coordinator still plans the
    job, not after; a dispatcher worker needs none."""
    name = os.environ.get(ENGINE_KIND_ENV, "")
    if name in engine_kind_names():
        with clock.imports():
            engine_kind(name).preload()


def _startup(clock: StartupClock, engine: Engine) -> dict[str, Any] | None:
    """The start-up phases so far, for engines that time their first token (an in-process
    engine; a dispatcher's start is no engine's)."""
    return clock.phases().model_dump() if hasattr(engine, "first_token_s") else None


class _EndsOnStop:
    """While the engine starts (minutes, for a large model) the worker reads no messages, so
    a thread watches the connection meanwhile and ends the worker at once on a stop or an
    abort (it holds no units yet) or when the coordinator is gone: Ctrl-C reaches other
    ranks' workers, which rank 0 cannot signal, through their connection. The thread is
    done before the worker uses the connection itself."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hpcinfer-start-watch")

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._started.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._started.is_set():
            try:
                if not self._conn.poll(START_WATCH_S):
                    continue
                kind, _ = self._conn.recv()
            except (EOFError, OSError):
                _exit_now(1)  # the coordinator is gone
            if kind in ("stop", "abort"):
                print(f"hpcinfer worker: {kind} while starting the engine: ending", flush=True)
                _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """Leave without the interpreter's teardown of torch and vLLM (seconds, and nothing left
    to save: every unit is committed and the engine is closed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _connect(argv: list[str]) -> Connection:
    """The coordinator connection: an inherited socket, or an authenticated TCP connection
    to a coordinator rank (HMAC challenge before any message is unpickled)."""
    if argv[0] != "--connect":
        return Connection(socket.socket(fileno=int(argv[0])).detach())
    host, _, port = argv[1].rpartition(":")
    key = bytes.fromhex(os.environ.pop(COORDINATOR_KEY_ENV))
    conn = Client((host, int(port)), authkey=key)
    conn.send(("hello", json.loads(os.environ.pop(WORKER_HELLO_ENV, "{}"))))
    return conn


def main(argv: list[str]) -> int:
    # The coordinator decides when to stop (drain on the first signal, abort on the second);
    # a Ctrl-C reaching the whole process group must not kill workers mid-commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        conn = _connect(argv)
    except (OSError, EOFError, ValueError, KeyError) as exc:
        print(f"hpcinfer worker: cannot reach the coordinator at {argv[-1]}: {exc}", flush=True)
        return 1
    clock = StartupClock()  # vLLM logs to this worker's log file: stdout
    _preload_engine(clock)
    try:
        config: WorkerConfig | None = conn.recv()
    except EOFError:
        return 1
    if config is None:  # more workers were started than the job has work for
        return 0
    try:
        with _EndsOnStop(conn), clock.engine():
            engine = start_engine(config.setup)
        startup = _startup(clock, engine)
        conn.send(("ready", {"startup_s": clock.engine_s, "startup": startup}))
        Worker(conn, config, engine, clock if startup is not None else None).serve()
        engine.close()
        _exit_now(0)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 1
    except BaseException as exc:  # report, then fail: the coordinator names this log
        detail: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send(("failed", detail))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

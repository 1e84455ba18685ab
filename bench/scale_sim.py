"""The real scheduling policy at 2,048 nodes x 12 workers, on a virtual clock.

    .venv/bin/python bench/scale_sim.py [--nodes 2048] [--workers-per-node 12]
        [--records 10000000] [--seed 0] [--quick] [--variants] [--out bench/scale_sim.json]

`hpcinfer.run.schedule.Scheduler` (imported, not copied) hands units to simulated workers in
a discrete-event simulation: one heap of events, no sleeping, no processes. Each worker is a
continuous-batching engine: up to `max_num_seqs` sequences decode together, every step
emits one token per running sequence and takes `a + b * batch` seconds, plus the prefill of
the prompts admitted in it. A record enters a batch when a slot frees (FIFO), a unit commits
when its last record finishes. Workers ask as `worker.py` does: with the records they hold,
whenever they hold fewer than `max_inflight`; a refused worker asks again once it holds less
than when refused, or when woken. Requests cross an RPC round trip and queue at one
coordinator that serves messages one at a time (wants, commits, periodic progress), so its
utilisation shows when 24,576 workers saturate it.

The engine is advanced from record finish to record finish (decode steps in bulk), and ahead
of the global clock up to the next moment the coordinator could reach it, so the cost is a
few heap operations per record and per request, never per token or step: the default run
(10 million records) takes about 2 minutes on one core, 5 with --variants.

Both policies run the same records, cut the same way: simple_test.py's layout, one input file per
worker (`{rank}.in`, contiguous slices of the job). `dynamic` is the default policy,
`static` is simple_test.py's split (`owner_of` from `static_owners`). Each is compared with the
ideal lower bound (see `ideal_bound`). Prints one table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import platform
import random
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any
from unittest import mock

from hpcinfer.records import Record
from hpcinfer.run import schedule
from hpcinfer.run.plan import WorkUnit
from hpcinfer.run.policy import ENGINE_DEFAULT_MAX_NUM_SEQS
from hpcinfer.run.schedule import Scheduler, static_owners
from hpcinfer.run.worker import progress_interval_s
from hpcinfer.spec import WorkersSpec

UNIT_SIZE = WorkersSpec().unit_size
QUANTILES = 1 << 14  # resolution of the length distributions (inverse-CDF tables)

# --- The models -------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineModel:
    """A continuous-batching engine. Defaults: an 8B-class model on one GPU tile (assumed):
    35 ms per decode step at batch 1, 73 ms at 256 (3,500 tokens/s), prefill 20k tokens/s."""

    max_num_seqs: int = ENGINE_DEFAULT_MAX_NUM_SEQS
    step_base_s: float = 0.035
    step_per_seq_s: float = 0.00015
    prefill_per_token_s: float = 50e-6

    def step_s(self, batch: int) -> float:
        return self.step_base_s + self.step_per_seq_s * batch


@dataclass(frozen=True)
class WorkloadModel:
    """Lengths in tokens: lognormal (median, sigma), rounded, at least 1, capped.

    Output lengths are long-tailed (sigma 1: mean 1.6 x median, 1% hit max_tokens). With
    skew > 1 the first half of the input, in file order, has output medians `skew` times
    longer (hard questions in the first files)."""

    records: int
    out_median: float = 200.0
    out_sigma: float = 1.0
    max_tokens: int = 2048
    prompt_median: float = 300.0
    prompt_sigma: float = 0.7
    max_prompt: int = 4096
    skew: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class CoordinatorModel:
    """One coordinator serving messages one at a time. Periodic progress messages (each busy
    worker every `progress_interval_s(workers)`, as hpcinfer sets it) take a share `rho` of
    its time; other messages are
    served FIFO in the rest, each taking `service / (1 - rho)`."""

    rpc_round_trip_s: float = 200e-6
    want_s: float = 30e-6
    message_s: float = 10e-6
    progress_interval_s: float | None = None  # None: as hpcinfer sets it for the job
    max_background: float = 0.9


Target = Callable[..., int]  # called as schedule.grant_target is


@dataclass(frozen=True)
class Variant:
    """A policy variant tried in the bench; the default is the policy as it ships."""

    name: str
    policy: str = "dynamic"  # or "static"
    max_inflight: int | None = None  # None: max_num_seqs + 2 units (the job default)
    target: Target | None = None  # replaces schedule.grant_target
    reask_below_target: bool = True  # refused: ask again below the target (as shipped)


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 2048
    workers_per_node: int = 12
    unit_size: int = UNIT_SIZE
    engine: EngineModel = field(default_factory=EngineModel)
    coordinator: CoordinatorModel = field(default_factory=CoordinatorModel)

    @property
    def workers(self) -> int:
        return self.nodes * self.workers_per_node

    def max_inflight(self, variant: Variant) -> int:
        default = self.engine.max_num_seqs + 2 * self.unit_size  # as hpcinfer.run.job
        return variant.max_inflight or default


# --- The workload ------------------------------------------------------------------------


def _length_table(median: float, sigma: float, cap: int) -> list[int]:
    """Inverse-CDF table: a uniform index into it draws from the capped lognormal."""
    normal = NormalDist()
    return [
        min(cap, max(1, round(median * math.exp(sigma * normal.inv_cdf((i + 0.5) / QUANTILES)))))
        for i in range(QUANTILES)
    ]


def _draw(rng: random.Random, table: list[int], n: int) -> array[int]:
    lengths: array[int] = array("H")
    for start in range(0, n, 1 << 20):
        lengths.extend(rng.choices(table, k=min(1 << 20, n - start)))
    return lengths


@dataclass
class Workload:
    """Per-record lengths, one input file per worker and the units cut from them."""

    out: array[int]
    prompt: array[int]
    files: int
    unit_first: array[int]  # by unit index: first record, end record, input file
    unit_end: array[int]
    unit_file: array[int]

    @property
    def records(self) -> int:
        return len(self.out)

    @property
    def units(self) -> int:
        return len(self.unit_first)


def make_workload(model: WorkloadModel, files: int, unit_size: int) -> Workload:
    """Records split into `files` contiguous files (file i -> `{i}.in`, as simple_test.py), each cut
    into units of `unit_size` as `cut_units` does (a unit never spans two files)."""
    if model.max_tokens > 0xFFFF or model.max_prompt > 0xFFFF:
        raise ValueError("lengths above 65,535 tokens do not fit the simulation's arrays")
    rng = random.Random(model.seed)
    half = model.records // 2 if model.skew != 1.0 else 0
    long_median = model.out_median * model.skew
    out = _draw(rng, _length_table(long_median, model.out_sigma, model.max_tokens), half)
    table = _length_table(model.out_median, model.out_sigma, model.max_tokens)
    out.extend(_draw(rng, table, model.records - half))
    prompt_table = _length_table(model.prompt_median, model.prompt_sigma, model.max_prompt)
    prompt = _draw(rng, prompt_table, model.records)
    first, end, owner = array("q"), array("q"), array("q")
    for i in range(files):
        lo, hi = model.records * i // files, model.records * (i + 1) // files
        for start in range(lo, hi, unit_size):
            first.append(start)
            end.append(min(hi, start + unit_size))
            owner.append(i)
    return Workload(out, prompt, files, first, end, owner)


def unit_stream(workload: Workload) -> Iterator[WorkUnit]:
    """Real WorkUnits for the Scheduler, in input order; their records are shared
    placeholders (the policy reads only sizes and ids; lengths live in the arrays)."""
    placeholder = Record(id="", source="", line=0, prompt="")
    shared: dict[int, tuple[Record, ...]] = {}
    files = workload.unit_file
    for u, (lo, hi) in enumerate(zip(workload.unit_first, workload.unit_end, strict=True)):
        size = hi - lo
        records = shared.setdefault(size, (placeholder,) * size)
        base = workload.records * files[u] // workload.files
        yield WorkUnit(f"{files[u]}.in:{lo - base + 1}-{hi - base}", u, records)


# --- The ideal ---------------------------------------------------------------------------


def ideal_bound(workload: Workload, engine: EngineModel, workers: int) -> dict[str, float]:
    """No schedule can beat either of:
    - capacity: every output token costs at least step_s(max_num_seqs) / max_num_seqs (the
      cheapest per-token step time is at full batch), every prompt token its prefill time;
      spread perfectly over all workers;
    - the longest record alone: its prefill plus one step per output token at batch 1.
    The ideal is the larger of the two."""
    full = engine.max_num_seqs
    per_token = engine.step_s(full) / full
    prefill = engine.prefill_per_token_s
    work = sum(workload.out) * per_token + sum(workload.prompt) * prefill
    solo = engine.step_s(1)
    pairs = zip(workload.out, workload.prompt, strict=True)
    longest = max(p * prefill + o * solo for o, p in pairs)
    capacity = work / workers
    return {"ideal_s": max(capacity, longest), "capacity_s": capacity, "longest_s": longest}


# --- One simulated worker: protocol state and engine -------------------------------------


class SimWorker:
    """A worker (its side of worker.py's protocol) and its engine. Running sequences are heap
    keys `finish_step << shift | unit`; the engine jumps from one finish to the next."""

    __slots__ = (
        "asked",
        "asked_inflight",
        "clock",
        "heap",
        "index",
        "no_more",
        "prompt_tokens",
        "queue",
        "queued",
        "refused_at",
        "sim",
        "step",
    )

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.heap: list[int] = []
        self.step = 0  # steps run so far
        self.clock = 0.0  # end of the last step (or when the engine went idle)
        self.prompt_tokens = 0  # prefill carried by the next step
        self.queue: deque[list[int]] = deque()  # [unit, next record, end record]
        self.queued = 0
        self.asked = False
        self.asked_inflight = 0
        self.refused_at: int | None = None
        self.no_more = False

    def inflight(self) -> int:
        return len(self.heap) + self.queued

    def deliver(self, units: list[WorkUnit], now: float) -> None:
        """New units join the queue; free slots take them at the next step boundary."""
        sim = self.sim
        for unit in units:
            u = unit.index
            self.queue.append([u, sim.workload.unit_first[u], sim.workload.unit_end[u]])
            self.queued += unit.size
        batch = len(self.heap)
        if not batch:
            self.clock = now
            self.prompt_tokens += self._admit(self.step)
        elif batch < sim.batch_max:
            step_s = sim.step_base_s + sim.step_per_seq_s * batch
            begin = self.clock + self.prompt_tokens * sim.prefill_per_token_s
            steps = max(1, math.ceil((now - begin) / step_s))
            if self.step + steps < self.heap[0] >> sim.shift:  # else that finish admits them
                self.step += steps
                self.clock = begin + steps * step_s
                self.prompt_tokens = self._admit(self.step)

    def _admit(self, step: int) -> int:
        """Fill free slots from the queue (FIFO) for the step after `step`; its prompt tokens."""
        sim = self.sim
        free = sim.batch_max - len(self.heap)
        heap, queue, shift, seen = self.heap, self.queue, sim.shift, sim.seen
        out, prompt, push = sim.workload.out, sim.workload.prompt, heapq.heappush
        tokens = 0
        while free and queue:
            item = queue[0]
            u, lo, hi = item
            take = min(free, hi - lo)
            for r in range(lo, lo + take):
                push(heap, ((step + out[r]) << shift) | u)
                tokens += prompt[r]
            if seen is not None:
                for r in range(lo, lo + take):
                    seen[r] += 1
            if lo + take == hi:
                queue.popleft()
            else:
                item[1] = lo + take
            free -= take
            self.queued -= take
        return tokens

    def advance(self, limit: float, ask_below: int) -> float | None:
        """Run the engine up to `limit`; stop at the first finish after which the worker holds
        fewer than `ask_below` records (it asks then) and return that time."""
        heap = self.heap
        if not heap:
            return None
        sim = self.sim
        a, b, c = sim.step_base_s, sim.step_per_seq_s, sim.prefill_per_token_s
        shift, mask, left, pop = sim.shift, sim.mask, sim.unit_left, heapq.heappop
        step, clock, tokens = self.step, self.clock, self.prompt_tokens
        asks_at = None
        while heap:
            finish = heap[0] >> shift
            at = clock + (finish - step) * (a + b * len(heap)) + c * tokens
            if at > limit:
                break
            step, clock, tokens = finish, at, 0
            while heap and heap[0] >> shift == finish:
                u = pop(heap) & mask
                left[u] -= 1
                if not left[u]:
                    sim.commit(self.index, u, at)
            if self.queued:
                tokens = self._admit(step)
            if len(heap) + self.queued < ask_below:
                asks_at = at
                break
        self.step, self.clock, self.prompt_tokens = step, clock, tokens
        return asks_at


# --- The simulation ----------------------------------------------------------------------

ASK, COMMIT, BYE, WAKE = range(4)


@dataclass
class CoordinatorStats:
    requests: int = 0
    refusals: int = 0
    units_granted: int = 0
    busy_s: float = 0.0  # discrete messages, at their own service time
    background_s: float = 0.0  # periodic progress messages
    wait_s_total: float = 0.0
    wait_s_max: float = 0.0
    grant_cpu_s: float = 0.0  # wall time of the real Scheduler.grant calls (this machine)


class Simulation:
    """Workers, one coordinator around the real Scheduler (its bookkeeping as in
    coordinator.py), and one heap of timed events."""

    def __init__(
        self, config: SimConfig, workload: Workload, variant: Variant, check: bool = False
    ) -> None:
        self.config, self.workload, self.variant = config, workload, variant
        engine, coordinator = config.engine, config.coordinator
        self.batch_max = engine.max_num_seqs
        self.step_base_s, self.step_per_seq_s = engine.step_base_s, engine.step_per_seq_s
        self.prefill_per_token_s = engine.prefill_per_token_s
        self.shift = max(1, workload.units.bit_length())
        self.mask = (1 << self.shift) - 1
        bounds = zip(workload.unit_first, workload.unit_end, strict=True)
        self.unit_left = array("l", (end - first for first, end in bounds))
        self.max_inflight = config.max_inflight(variant)
        self.scheduler = Scheduler(
            unit_stream(workload),
            workload.records,
            unit_size=config.unit_size,
            max_inflight=self.max_inflight,
            owner_of=self._owner_of() if variant.policy == "static" else None,
            batch=engine.max_num_seqs,
        )
        self.workers = [SimWorker(self, i) for i in range(config.workers)]
        self.events: list[tuple[float, int, int, int, Any]] = []
        self.seq = itertools.count().__next__
        self.half_rpc = coordinator.rpc_round_trip_s / 2
        self.want_s, self.message_s = coordinator.want_s, coordinator.message_s
        interval = coordinator.progress_interval_s or progress_interval_s(config.workers)
        self.background_per_holder = coordinator.message_s / interval
        self.background_max = coordinator.max_background
        # the coordinator's state, as in coordinator.py
        self.alive = config.workers
        self.assigned = [0] * config.workers  # units held, per worker
        self.holders = 0  # workers holding units
        self.waiting: set[int] = set()
        self.busy_until = 0.0
        self.background_since = 0.0
        self.stats = CoordinatorStats()
        # the outcome
        self.commits = 0
        self.last_commit = 0.0
        self.dispatch_end = 0.0
        self.seen: bytearray | None = bytearray(workload.records) if check else None
        self.commit_count: bytearray | None = bytearray(workload.units) if check else None

    def _owner_of(self) -> Callable[[WorkUnit], int]:
        """simple_test.py: `{rank}.in` belongs to rank; ownership through the real static_owners."""
        names = [f"{i}.in" for i in range(self.workload.files)]
        owners = static_owners(names, self.config.workers)
        by_file = [owners[name] for name in names]
        files = self.workload.unit_file
        return lambda unit: by_file[files[unit.index]]

    def push(self, at: float, kind: int, worker: int, payload: Any = None) -> None:
        heapq.heappush(self.events, (at, self.seq(), kind, worker, payload))

    def run(self) -> None:
        with self._target():
            self._run()

    @contextmanager
    def _target(self) -> Iterator[None]:
        """A variant's grant target replaces the shipped one for this run only."""
        if self.variant.target is None:
            yield
            return
        with mock.patch.object(schedule, "grant_target", self.variant.target):
            yield

    def _run(self) -> None:
        for worker in self.workers:
            self.ask(worker, 0.0, 0)
        handlers = (self.on_ask, self.on_commit, self.on_bye, self.on_wake)
        events, pop = self.events, heapq.heappop
        while events:
            at, _, kind, index, payload = pop(events)
            handlers[kind](at, index, payload)

    # -- the worker's side (worker.py) -----------------------------------------------------
    def ask(self, worker: SimWorker, at: float, inflight: int) -> None:
        worker.asked = True
        worker.asked_inflight = inflight
        heapq.heappush(self.events, (at + self.half_rpc, self.seq(), ASK, worker.index, inflight))

    def on_reply(
        self, worker: SimWorker, now: float, units: list[WorkUnit], more: bool, hint: int
    ) -> None:
        """The reply reaches the worker at `now`. Handled when the coordinator sends it:
        nothing else reaches the worker in between (a wake comes after the reply)."""
        worker.asked = False
        worker.no_more = not more
        worker.refused_at = None
        if units:
            worker.deliver(units, now)
        elif more:  # refused: ask again once holding less (or below the hint), or when woken
            worker.refused_at = min(worker.asked_inflight, hint)
        self.next_move(worker, now)

    def next_move(self, worker: SimWorker, now: float) -> None:
        """Ask now, or run the engine to the finish that makes the worker ask (nothing can
        reach it before), or to its last record and say bye."""
        if worker.no_more:
            worker.advance(math.inf, 0)
            self.push(max(now, worker.clock) + self.half_rpc, BYE, worker.index)
            return
        threshold = self.max_inflight
        if worker.refused_at is not None and worker.refused_at < threshold:
            threshold = worker.refused_at
        inflight = len(worker.heap) + worker.queued
        if inflight < threshold:
            self.ask(worker, now, inflight)
            return
        at = worker.advance(math.inf, threshold)
        if at is not None:
            self.ask(worker, at, len(worker.heap) + worker.queued)
        # else: refused with nothing in flight; the coordinator wakes it

    def on_wake(self, now: float, index: int, _payload: object) -> None:
        worker = self.workers[index]
        worker.refused_at = None
        if not worker.asked:
            self.next_move(worker, now)

    def commit(self, index: int, unit: int, at: float) -> None:
        self.commits += 1
        if at > self.last_commit:
            self.last_commit = at
        if self.commit_count is not None:
            self.commit_count[unit] += 1
        heapq.heappush(self.events, (at + self.half_rpc, self.seq(), COMMIT, index, unit))

    # -- the coordinator's side (coordinator.py) -------------------------------------------
    def queue_message(self, now: float, service_s: float) -> float:
        """A message waits for the coordinator, then takes `service_s` of the time left by
        periodic progress messages; returns when its handling starts."""
        rho = self.holders * self.background_per_holder
        if rho > self.background_max:
            rho = self.background_max
        stats = self.stats
        stats.background_s += (now - self.background_since) * rho
        self.background_since = now
        start = now if now > self.busy_until else self.busy_until
        self.busy_until = start + service_s / (1.0 - rho)
        stats.busy_s += service_s
        return start

    def on_ask(self, now: float, index: int, inflight: int) -> None:
        stats = self.stats
        wait = self.queue_message(now, self.want_s) - now
        stats.requests += 1
        stats.wait_s_total += wait
        if wait > stats.wait_s_max:
            stats.wait_s_max = wait
        began = time.perf_counter()
        units = self.scheduler.grant(index, inflight, alive=self.alive)
        stats.grant_cpu_s += time.perf_counter() - began
        held = self.assigned[index]
        more = self.scheduler.more_for(index)
        if units:
            self.holders += not held
            self.assigned[index] = held + len(units)
            stats.units_granted += len(units)
            self.dispatch_end = self.busy_until
        elif not more and self.holders - (held > 0) > 0:
            more = True  # work may come back from a worker that dies: keep it asking
        hint = self.max_inflight
        if not units and more:
            stats.refusals += 1
            self.waiting.add(index)
            if self.variant.reask_below_target:
                hint = self.reask_hint()
        else:
            self.waiting.discard(index)
        reply_at = self.busy_until + self.half_rpc
        worker = self.workers[index]
        worker.advance(reply_at, 0)  # it asked: it only runs its engine until the reply
        self.on_reply(worker, reply_at, units, more, hint)

    def reask_hint(self) -> int:
        """Variant: a refused worker asks again only below the current grant target, and
        once the queue is empty only when woken (work requeued, or the job done)."""
        if self.scheduler.exhausted and not self.scheduler.requeued:
            return 0
        return self.scheduler.last_target

    def on_commit(self, now: float, index: int, unit: int) -> None:
        self.queue_message(now, 2 * self.message_s)  # progress + committed
        self.scheduler.committed(self.workload.unit_end[unit] - self.workload.unit_first[unit])
        self.assigned[index] -= 1
        if not self.assigned[index]:
            self.holders -= 1
        work_left = bool(self.scheduler.requeued) or not self.scheduler.exhausted
        if not work_left and not self.holders:
            for waiting in sorted(self.waiting):
                self.push(self.busy_until + self.half_rpc, WAKE, waiting)
            self.waiting.clear()

    def on_bye(self, now: float, _index: int, _payload: object) -> None:
        self.queue_message(now, self.message_s)
        self.alive -= 1


# --- Running and reporting ---------------------------------------------------------------


def simulate(
    config: SimConfig, workload: Workload, variant: Variant, check: bool = False
) -> dict[str, Any]:
    """Run one policy to the last commit; its figures."""
    began = time.perf_counter()
    sim = Simulation(config, workload, variant, check=check)
    sim.run()
    if sim.commits != workload.units or any(sim.unit_left):
        raise AssertionError(f"{variant.name}: {sim.commits} of {workload.units} units done")
    return _figures(sim, time.perf_counter() - began)


def _figures(sim: Simulation, wall_s: float) -> dict[str, Any]:
    stats, makespan = sim.stats, sim.last_commit
    steps = sum(w.step for w in sim.workers)
    utilisation = (stats.busy_s + stats.background_s) / makespan if makespan else 0.0
    figures: dict[str, Any] = {
        "policy": sim.variant.name,
        "makespan_s": makespan,
        "dispatch_end_s": sim.dispatch_end,
        "coordinator_utilisation": utilisation,
        "coordinator_background_share": stats.background_s / makespan if makespan else 0.0,
        "requests": stats.requests,
        "refusals": stats.refusals,
        "units_granted": stats.units_granted,
        "request_wait_mean_ms": 1e3 * stats.wait_s_total / max(1, stats.requests),
        "request_wait_max_ms": 1e3 * stats.wait_s_max,
        "grant_cpu_us_mean": 1e6 * stats.grant_cpu_s / max(1, stats.requests),
        "mean_batch": sum(sim.workload.out) / steps if steps else 0.0,
        "sim_wall_s": wall_s,
    }
    if sim.seen is not None and sim.commit_count is not None:
        figures["records_simulated_once"] = sim.seen.count(1)
        figures["units_committed_once"] = sim.commit_count.count(1)
    return figures


# --- The real coordinator's cost per message ---------------------------------------------


class _FakeConn:
    """Stands in for a worker's pipe: hands the coordinator one message, swallows replies."""

    def __init__(self) -> None:
        self.inbox: tuple[str, dict[str, Any]] = ("want", {})

    def recv(self) -> tuple[str, dict[str, Any]]:
        return self.inbox

    def send(self, _message: object) -> None:
        pass


def measure_coordinator(workers: int, messages: int = 300) -> dict[str, float]:
    """Microseconds the real `Coordinator` spends per want and per commit with `workers`
    handles (no sockets, no pickling: its own bookkeeping only), and the sender lookup its
    run loop does per message (`_owner[id(conn)]`)."""
    from hpcinfer.run.coordinator import Coordinator, WorkerHandle

    conns = [_FakeConn() for _ in range(workers)]
    handles = [WorkerHandle(i, None, conns[i], Path("w.log")) for i in range(workers)]  # type: ignore[arg-type]
    model = WorkloadModel(records=messages * UNIT_SIZE)
    jobs = make_workload(model, 1, UNIT_SIZE)
    coordinator = Coordinator(
        handles,
        unit_stream(jobs),
        jobs.records,
        unit_size=UNIT_SIZE,
        max_inflight=ENGINE_DEFAULT_MAX_NUM_SEQS + 2 * UNIT_SIZE,
        on_progress=lambda _payload: None,
    )
    picks = [handles[(i * 7919) % workers] for i in range(messages)]

    def per_message(kind: str, payload: Callable[[WorkerHandle], dict[str, Any]]) -> float:
        began = time.perf_counter()
        for handle in picks:
            handle.conn.inbox = (kind, payload(handle))  # type: ignore[attr-defined]
            coordinator._receive(handle)
        return 1e6 * (time.perf_counter() - began) / messages

    want = per_message("want", lambda _h: {"inflight": ENGINE_DEFAULT_MAX_NUM_SEQS})
    commit = per_message("committed", lambda h: {"unit": next(iter(h.assigned), "")})
    began = time.perf_counter()
    for handle in picks:
        coordinator._owner[id(handle.conn)]
    lookup = 1e6 * (time.perf_counter() - began) / messages
    return {"workers": workers, "want_us": want, "commit_us": commit, "lookup_us": lookup}


# --- Policy variants (proposals; the shipped policy is the default row) ------------------

SHIPPED_TARGET = schedule.grant_target


def batch_floor_target(batch: int) -> Target:
    """Never cap a worker below a full batch while work is left, even at the job's end (the
    shipped floor falls to the even share there). The first askers may take a small job."""

    def target(*, unassigned: int, alive: int, unit_size: int, max_inflight: int, **_: int) -> int:
        shipped = SHIPPED_TARGET(
            unassigned=unassigned, alive=alive, unit_size=unit_size, max_inflight=max_inflight
        )
        return min(max_inflight, max(shipped, batch))

    return target


def no_floor_target(
    *, unassigned: int, alive: int, unit_size: int, max_inflight: int, **_: int
) -> int:
    """The policy before the batch floor: guided self-scheduling alone."""
    return SHIPPED_TARGET(
        unassigned=unassigned, alive=alive, unit_size=unit_size, max_inflight=max_inflight
    )


def variants(config: SimConfig) -> list[Variant]:
    """The shipped policy first, then the alternatives this bench evaluates."""
    floor = batch_floor_target(config.engine.max_num_seqs)
    return [
        Variant("dynamic"),
        Variant("dynamic-no-floor", target=no_floor_target),
        Variant("dynamic-no-reask", reask_below_target=False),
        Variant("dynamic+full-floor", target=floor),
    ]


VARIANT_NAMES = [v.name for v in variants(SimConfig())[1:]]

# --- Command line ------------------------------------------------------------------------


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=2048)
    parser.add_argument("--workers-per-node", type=int, default=12)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skew", type=float, default=1.0, help="first half's output medians x")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--rpc-us", type=float, default=200.0, help="request round trip")
    parser.add_argument("--want-us", type=float, default=30.0, help="coordinator time per want")
    parser.add_argument("--message-us", type=float, default=10.0, help="per other message")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 64 nodes x 12, 200,000 records"
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        metavar="NAME",
        help="also run policy variants: all, or those named (" + ", ".join(VARIANT_NAMES) + ")",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("scale_sim.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.records = 64, 200_000
    return args


def _row(figures: dict[str, Any], ideal: float) -> str:
    return (
        f"| {figures['policy']} | {figures['makespan_s']:,.1f} s | {ideal:,.1f} s "
        f"| {figures['makespan_s'] / ideal:.3f} | {figures['coordinator_utilisation']:.0%} "
        f"| {figures['units_granted']:,} | {figures['requests']:,} "
        f"| {figures['dispatch_end_s']:,.1f} s | {figures['mean_batch']:.0f} "
        f"| {figures['sim_wall_s']:.0f} s |"
    )


def print_table(
    config: SimConfig, workload: Workload, ideal: dict[str, float], rows: list[dict[str, Any]]
) -> None:
    print(
        f"{config.nodes:,} nodes x {config.workers_per_node} workers, {workload.records:,} "
        f"records in {workload.units:,} units; ideal {ideal['ideal_s']:.1f} s = max(capacity "
        f"{ideal['capacity_s']:.1f} s, longest record {ideal['longest_s']:.1f} s)\n"
    )
    print(
        "| policy | makespan | ideal | ratio | coordinator | units granted | requests "
        "| last grant | mean batch | sim time |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for figures in rows:
        print(_row(figures, ideal["ideal_s"]))


def _measured_coordinator(workers: int) -> dict[str, float] | None:
    """The measurement reaches into the coordinator's internals, which may change under it:
    a failure is reported, not fatal (the simulation does not depend on it)."""
    try:
        return measure_coordinator(workers)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        print(f"could not time the real Coordinator: {exc!r}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    began = time.perf_counter()
    config = SimConfig(
        nodes=args.nodes,
        workers_per_node=args.workers_per_node,
        coordinator=CoordinatorModel(
            rpc_round_trip_s=args.rpc_us * 1e-6,
            want_s=args.want_us * 1e-6,
            message_s=args.message_us * 1e-6,
        ),
    )
    model = WorkloadModel(
        records=args.records, max_tokens=args.max_tokens, skew=args.skew, seed=args.seed
    )
    workload = make_workload(model, config.workers, config.unit_size)
    ideal = ideal_bound(workload, config.engine, config.workers)
    todo = [Variant("dynamic"), Variant("static", policy="static")]
    if args.variants is not None:
        wanted = set(args.variants)
        todo += [v for v in variants(config)[1:] if not wanted or v.name in wanted]
    results = []
    for variant in todo:
        results.append(simulate(config, workload, variant))
        print(f"  {variant.name}: simulated in {results[-1]['sim_wall_s']:.0f} s", file=sys.stderr)
    print_table(config, workload, ideal, results)
    measured = _measured_coordinator(config.workers)
    if measured is not None:
        print(
            f"\nThe real Coordinator with {config.workers:,} handles (this machine): "
            f"{measured['want_us']:,.0f} us per want, {measured['commit_us']:,.0f} us per "
            f"commit, plus {measured['lookup_us']:,.0f} us per message to find its sender; "
            f"the simulation assumes {args.want_us:g} / {args.message_us:g} us."
        )
    report = {
        "command": " ".join(["bench/scale_sim.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": asdict(config) | {"workers": config.workers},
        "workload": asdict(model) | {"units": workload.units},
        "ideal": ideal,
        "results": [r | {"ratio": r["makespan_s"] / ideal["ideal_s"]} for r in results],
        "real_coordinator_us": measured,
        "run_wall_s": time.perf_counter() - began,
        "python": platform.python_version(),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

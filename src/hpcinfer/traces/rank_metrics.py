"""One rank's figures per step: wall time, the unions of compute, communication and memory
time inside it, exposed communication, overlap, idle time and collective calls.

On a device trace the kernels are the work: communication kernels are comm, the others
compute. On a CPU trace (no kernels) the CPU operators are: the collective operators are
comm, every other operator compute where no collective runs (a wrapper operator that holds
a collective is not computing while it waits).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcinfer.traces.collective_names import BACKEND_ANNOTATIONS, classify, looks_like_comm
from hpcinfer.traces.intervals import Floats, IntervalSet
from hpcinfer.traces.models import FileQuality, StepKinds, TopOp
from hpcinfer.traces.rank_identity import identify
from hpcinfer.traces.reader import TraceReader
from hpcinfer.traces.steps import Step, choose_steps
from hpcinfer.traces.timeline import Call, Intervals, Timeline, read_timeline

TOP_OPS = 10
NOT_COUNTED = ("wait",)  # communication time, but no collective call of its own


@dataclass
class RankResult:
    """What one file gives the cross-rank analysis (built in a worker process)."""

    file: str
    rank: int | None
    world_size: int | None
    rank_source: str
    quality: FileQuality
    figures: dict[str, Any] = field(default_factory=dict)  # RankAnalysis fields
    step_rows: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[float, float, str, int, str]] = field(default_factory=list)
    # (start us, duration us, op, step index, process group or "") of each collective call;
    # starts are on the
    # trace's clock, which begins at base_time_ns (ranks are compared on the shared clock)
    base_time_ns: int = 0
    known_comm_calls: int = 0
    unknown_comm: dict[str, int] = field(default_factory=dict)


def analyze_file(path: Path) -> RankResult:
    """Read one trace and measure it (never raises on a damaged file: see `quality`)."""
    reader = TraceReader(path)
    line = read_timeline(reader.events())
    quality = FileQuality(**vars(reader.quality))
    quality.events_skipped = line.skipped
    if not reader.metadata.has_trace_events:
        quality.notes.append("no `traceEvents` array at the start: is this a Kineto trace?")
    identity = identify(path, reader.metadata.distributed_info)
    if identity.note:
        quality.notes.append(identity.note)
    result = RankResult(path.name, identity.rank, identity.world_size, identity.source, quality)
    device = line.has_kernels
    steps, note = choose_steps(line.gpu_marks if device and line.gpu_marks else line.cpu_marks)
    if note:
        quality.notes.append(note)
    if quality.truncated:
        steps = _read_through(steps, line, quality)
    calls = line.kernel_calls if device else _outermost(line.operator_calls)
    counted = calls if device else _one_per_collective(calls)
    _measure(result, line, steps, calls, counted, device)
    result.base_time_ns = reader.metadata.base_time_ns
    result.calls = [
        (c.start, c.end - c.start, c.op, i, c.group)
        for c, i in _in_steps(counted, steps)
        if c.op not in NOT_COUNTED
    ]
    result.known_comm_calls = len(line.kernel_calls if device else line.operator_calls)
    totals = line.kernel_totals if device else line.operator_totals
    kind = "kernel" if device else "operator"
    result.unknown_comm = {
        name: int(calls_and_time[0])
        for name, calls_and_time in totals.items()
        if classify(name, kind) is None and looks_like_comm(name)
    }
    result.figures["top_ops"] = _top(totals)
    return result


def _measure(
    result: RankResult,
    line: Timeline,
    steps: list[Step],
    calls: list[Call],
    counted: list[Call],
    device: bool,
) -> None:
    """Fill `result`: time from every communication call in `calls`, counts from `counted`."""
    memory = IntervalSet.of(line.memory.pair())
    comm = IntervalSet.of(_pairs(calls))
    work = IntervalSet.of((line.compute_kernels if device else line.cpu_ops).pair())
    both = work | comm
    every = both | memory
    if steps:
        starts = np.array([s.start for s in steps])
        ends = np.array([s.end for s in steps])
    else:  # the whole trace as one window
        starts, ends = _span(every)
    wall = ends - starts
    comm_in = comm.within(starts, ends)
    work_in = work.within(starts, ends)
    both_in = both.within(starts, ends)
    if device:
        compute_in, exposed_in = work_in, both_in - work_in
    else:  # CPU: an operator holding a collective waits, it does not compute
        compute_in, exposed_in = both_in - comm_in, comm_in
    overlap_in = comm_in - exposed_in
    memory_in = memory.within(starts, ends)
    idle_in = wall - every.within(starts, ends)
    per_step = _count_per_step(counted, steps)
    for i in range(len(starts)):
        step = steps[i] if steps else Step(float(starts[i]), float(ends[i]), "trace", "unknown")
        result.step_rows.append(
            {
                "step": i,
                "name": step.name,
                "kind": step.kind,
                "start_us": round(float(starts[i]), 3),
                "wall_ms": _ms(wall[i]),
                "compute_ms": _ms(compute_in[i]),
                "comm_ms": _ms(comm_in[i]),
                "memcpy_ms": _ms(memory_in[i]),
                "exposed_comm_ms": _ms(exposed_in[i]),
                "overlap_ms": _ms(overlap_in[i]),
                "idle_ms": _ms(idle_in[i]),
                "comm_overhead_pct": _pct(comm_in[i], wall[i]),
                "exposed_comm_pct": _pct(exposed_in[i], wall[i]),
                "collectives": dict(sorted(per_step[i].items())),
            }
        )
    ops = Counter(c.op for c, _ in _in_steps(counted, steps) if c.op not in NOT_COUNTED)
    libraries = Counter(c.library for c, _ in _in_steps(counted, steps))
    n = len(steps)
    total_wall, total_comm = float(wall.sum()), float(comm_in.sum())
    result.figures.update(
        timeline="device" if device else "cpu",
        steps=n,
        step_kinds=StepKinds(**Counter(s.kind for s in steps)),
        step_ms=_ms(_mean(wall)),
        comm_ms=_ms(_mean(comm_in)),
        compute_ms=_ms(_mean(compute_in)),
        memcpy_ms=_ms(_mean(memory_in)),
        exposed_comm_ms=_ms(_mean(exposed_in)),
        overlap_ms=_ms(_mean(overlap_in)),
        idle_ms=_ms(_mean(idle_in)),
        comm_overhead_pct=_pct(total_comm, total_wall),
        exposed_comm_pct=_pct(float(exposed_in.sum()), total_wall),
        overlap_pct=_pct(float(overlap_in.sum()), total_comm),
        total_step_ms=_ms(total_wall),
        total_comm_ms=_ms(total_comm),
        total_compute_ms=_ms(float(compute_in.sum())),
        total_memcpy_ms=_ms(float(memory_in.sum())),
        total_idle_ms=_ms(float(idle_in.sum())),
        collectives=dict(sorted(ops.items())),
        collectives_per_step={op: round(c / max(n, 1), 3) for op, c in sorted(ops.items())},
        collective_libraries=dict(sorted(libraries.items())),
    )


def _read_through(steps: list[Step], line: Timeline, quality: FileQuality) -> list[Step]:
    """The steps of a truncated file that end before the last event read: the later ones
    lost their events to the cut and would read as idle."""
    ends = [
        max(intervals.ends)
        for intervals in (line.compute_kernels, line.comm_kernels, line.memory, line.cpu_ops)
        if intervals.ends
    ]
    last = max(ends, default=-np.inf)
    kept = [s for s in steps if s.end <= last]
    if len(kept) < len(steps):
        quality.notes.append(
            f"{len(steps) - len(kept)} step(s) after the last event read were left out"
        )
    return kept


def _outermost(calls: list[Call]) -> list[Call]:
    """One call per collective on a CPU timeline: `c10d::allreduce_` holding
    `gloo:all_reduce` is one all-reduce, not two."""
    kept: list[Call] = []
    by_lane: dict[str, list[Call]] = {}
    for call in calls:
        by_lane.setdefault(call.lane, []).append(call)
    for lane_calls in by_lane.values():
        lane_calls.sort(key=lambda c: (c.start, -c.end))
        reach = -np.inf
        for call in lane_calls:
            if call.end > reach:
                kept.append(call)
                reach = max(reach, call.end)
    kept.sort(key=lambda c: c.start)
    return kept


def _one_per_collective(calls: list[Call]) -> list[Call]:
    """The calls to count on a CPU timeline: where c10d operators record the collectives,
    the backend's own annotations of them (`gloo:all_reduce` on gloo's thread) are the same
    calls again."""
    if any(c.library == "c10d" for c in calls):
        return [c for c in calls if c.library not in BACKEND_ANNOTATIONS]
    return calls


def _in_steps(calls: list[Call], steps: list[Step]) -> list[tuple[Call, int]]:
    """The calls that start inside an analysed step, with that step's index."""
    if not steps:
        return [(c, 0) for c in calls]
    starts = np.array([s.start for s in steps])
    ends = np.array([s.end for s in steps])
    ordered = sorted(calls, key=lambda c: c.start)
    at = np.array([c.start for c in ordered])
    index = np.searchsorted(starts, at, side="right") - 1
    return [
        (call, int(i))
        for call, i in zip(ordered, index, strict=True)
        if i >= 0 and call.start < ends[i]
    ]


def _count_per_step(calls: list[Call], steps: list[Step]) -> list[Counter[str]]:
    per_step: list[Counter[str]] = [Counter() for _ in range(max(len(steps), 1))]
    for call, i in _in_steps(calls, steps):
        if call.op not in NOT_COUNTED:
            per_step[i][call.op] += 1
    return per_step


def _pairs(calls: list[Call]) -> tuple[Floats, Floats]:
    return np.array([c.start for c in calls]), np.array([c.end for c in calls])


def _span(every: IntervalSet) -> tuple[Floats, Floats]:
    if every.total == 0:
        return np.zeros(1), np.zeros(1)
    return every.starts[:1].copy(), every.ends[-1:].copy()


def _top(totals: dict[str, list[float]]) -> list[TopOp]:
    ranked = sorted(totals.items(), key=lambda kv: kv[1][1], reverse=True)[:TOP_OPS]
    return [
        TopOp(name=name, calls=int(c), total_ms=_ms(us), mean_us=round(us / c, 3))
        for name, (c, us) in ranked
    ]


def _mean(values: Floats) -> float:
    return float(values.mean()) if len(values) else 0.0


def _ms(us: float) -> float:
    return round(float(us) / 1000.0, 6)


def _pct(part: float, whole: float) -> float:
    return round(100.0 * float(part) / float(whole), 4) if whole > 0 else 0.0


__all__ = ["Intervals", "RankResult", "analyze_file"]

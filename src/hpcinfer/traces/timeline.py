"""One pass over a trace's events into compact per-category intervals.

Only what the analysis reads is kept: start and end of each kernel, memory copy and CPU
operator (two doubles each), the communication calls, the step marks, and per-name call
counts and times. Which of them are "compute" is decided after the pass, when it is known
whether the trace has device kernels at all (the events come in no guaranteed order).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hpcinfer.traces.collective_names import classify, op_type
from hpcinfer.traces.steps import Step, is_step_name, vllm_step_kind


class Call(NamedTuple):
    """One communication kernel or operator: where it ran and what it was."""

    start: float
    end: float
    op: str
    library: str
    name: str
    lane: str  # the stream (kernels) or thread (operators) it ran on
    group: str = ""  # the process group, where the trace names it


class Intervals:
    """Starts and ends as two arrays of doubles (16 bytes an interval)."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: array[float] = array("d")
        self.ends: array[float] = array("d")

    def add(self, start: float, end: float) -> None:
        self.starts.append(start)
        self.ends.append(end)

    def pair(self) -> tuple[array[float], array[float]]:
        return self.starts, self.ends


@dataclass
class Timeline:
    """Everything one rank's analysis needs from its trace."""

    compute_kernels: Intervals = field(default_factory=Intervals)
    comm_kernels: Intervals = field(default_factory=Intervals)
    memory: Intervals = field(default_factory=Intervals)  # gpu_memcpy and gpu_memset
    cpu_ops: Intervals = field(default_factory=Intervals)  # every cpu_op but communication
    kernel_calls: list[Call] = field(default_factory=list)
    operator_calls: list[Call] = field(default_factory=list)
    cpu_marks: list[Step] = field(default_factory=list)
    gpu_marks: list[Step] = field(default_factory=list)
    kernel_totals: dict[str, list[float]] = field(default_factory=dict)  # name -> [calls, us]
    operator_totals: dict[str, list[float]] = field(default_factory=dict)
    skipped: int = 0

    @property
    def has_kernels(self) -> bool:
        return len(self.compute_kernels.starts) + len(self.comm_kernels.starts) > 0


def read_timeline(events: Iterable[dict[str, Any]]) -> Timeline:
    """Sort each complete event ("ph": "X") of the trace into the timeline."""
    line = Timeline()
    for event in events:
        if event.get("ph") != "X":
            continue
        name, start, duration = event.get("name"), event.get("ts"), event.get("dur")
        if (
            not isinstance(name, str)
            or not isinstance(start, float | int)
            or not isinstance(duration, float | int)
            or duration < 0
        ):
            line.skipped += 1
            continue
        end = start + duration
        category = event.get("cat")
        if category == "kernel":
            _tally(line.kernel_totals, name, duration)
            found = classify(name, "kernel")
            if found is None:
                line.compute_kernels.add(start, end)
            else:
                line.comm_kernels.add(start, end)
                stream = _lane(event, "stream")
                op = _op_from_args(event) or found.op  # `ncclDevKernel_Generic` says in args
                group = _group(event)
                line.kernel_calls.append(Call(start, end, op, found.library, name, stream, group))
        elif category in ("cpu_op", "user_annotation"):
            if is_step_name(name):
                line.cpu_marks.append(Step(start, end, name, vllm_step_kind(name) or "unknown"))
                continue
            found = classify(name, "operator")
            if found is not None:
                op = found.op
                if op == "from_args":
                    op = _op_from_args(event) or "unknown"
                lane = str(event.get("tid", ""))
                line.operator_calls.append(
                    Call(start, end, op, found.library, name, lane, _group(event))
                )
            elif category == "cpu_op":
                line.cpu_ops.add(start, end)
            if category == "cpu_op":
                _tally(line.operator_totals, name, duration)
        elif category in ("gpu_memcpy", "gpu_memset"):
            line.memory.add(start, end)
            _tally(line.kernel_totals, name, duration)
        elif category == "gpu_user_annotation" and is_step_name(name):
            line.gpu_marks.append(Step(start, end, name, vllm_step_kind(name) or "unknown"))
    return line


def _tally(totals: dict[str, list[float]], name: str, duration: float) -> None:
    entry = totals.get(name)
    if entry is None:
        totals[name] = [1, duration]
    else:
        entry[0] += 1
        entry[1] += duration


def _lane(event: dict[str, Any], key: str) -> str:
    args = event.get("args")
    value = args.get(key) if isinstance(args, dict) else None
    return str(value if value is not None else event.get("tid", ""))


def _op_from_args(event: dict[str, Any]) -> str | None:
    """The collective `record_param_comms` and torch's NCCL kernels name in
    args["Collective name"] (a generic kernel name such as `ncclDevKernel_Generic` does not
    say); None where the event has none."""
    args = event.get("args")
    name = args.get("Collective name") if isinstance(args, dict) else None
    return op_type(name) if isinstance(name, str) and name else None


def _group(event: dict[str, Any]) -> str:
    """The process group torch records as args["Process Group Name"]; "" where absent."""
    args = event.get("args")
    name = args.get("Process Group Name") if isinstance(args, dict) else None
    return str(name) if name is not None and name != "" else ""

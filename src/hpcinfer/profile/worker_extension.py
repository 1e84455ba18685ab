"""What `profile run` does inside every vLLM worker (each TP/PP rank), reached by name through
`LLM.collective_rpc` (vLLM mixes this class into its worker class via `worker_extension_cls`).

vLLM's own torch profiler writes each worker's Kineto trace; this adds what it does not: the
rank's operator summary and step times (from the profiler it just stopped, so no trace has
to be parsed again) and a PyTorch execution trace where the installed torch records one.
Every file name carries the worker's global rank, the one its trace's `distributedInfo`
holds. Runs in vLLM's process: imports only the standard library and torch, lazily.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

STEP_PREFIXES = ("execute_context", "ProfilerStep#")
"""The annotations that mark one engine step: vLLM's `execute_context_<n>(<tokens>)_
generation_<m>(<tokens>)` ranges, or `ProfilerStep#N` when a profiler schedule is used."""

OPERATOR_COLUMNS = (
    "name",
    "calls",
    "self_cpu_us",
    "total_cpu_us",
    "self_device_us",
    "total_device_us",
)


def _global_rank(worker: Any) -> int:
    rank = getattr(worker, "rank", None)
    if isinstance(rank, int):
        return rank
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def operator_rows(averages: Any) -> list[dict[str, Any]]:
    """One row per operator of a profiler's `key_averages()`, the costliest (self CPU +
    self device time) first."""
    rows = []
    for event in averages:
        rows.append(
            {
                "name": event.key,
                "calls": int(event.count),
                "self_cpu_us": round(float(event.self_cpu_time_total), 3),
                "total_cpu_us": round(float(event.cpu_time_total), 3),
                "self_device_us": round(float(getattr(event, "self_device_time_total", 0)), 3),
                "total_device_us": round(float(getattr(event, "device_time_total", 0)), 3),
            }
        )
    rows.sort(key=lambda r: -(r["self_cpu_us"] + r["self_device_us"]))
    return rows


def step_times_ms(events: Any) -> list[float]:
    """Wall time of each engine step the profiler recorded, in order of start: the
    `ProfilerStep#N` windows when there are any, else vLLM's annotations (as the analysis
    chooses them, so neither counts a step twice)."""
    marks = [(str(e.name), e.time_range.start, e.time_range.elapsed_us()) for e in events]
    for prefix in ("ProfilerStep#", "execute_context"):
        steps = sorted((start, us) for name, start, us in marks if name.startswith(prefix))
        if steps:
            return [round(us / 1000.0, 4) for _, us in steps]
    return []


def timing_stats(rank: int, steps_ms: list[float]) -> dict[str, Any]:
    """`timing_stats_<rank>.json`: every step, and the mean over the steps `profile analyze`
    keeps. The profiler starts and stops inside the first and last steps, so the analysis
    drops them (when there are at least three); they stay listed here, marked."""
    dropped = [0, len(steps_ms) - 1] if len(steps_ms) >= 3 else []
    kept = [ms for index, ms in enumerate(steps_ms) if index not in dropped]
    return {
        "rank": rank,
        "pid": os.getpid(),
        "steps": len(steps_ms),
        "step_ms": steps_ms,
        "dropped_steps": dropped,
        "mean_step_ms": _mean(kept),
        "mean_step_ms_all": _mean(steps_ms),
        "source": "vLLM's step annotations in this rank's torch profiler",
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


class ProfileWorkerExtension:
    """Methods `profile run` calls on every worker (named `hpcinfer_*`: vLLM refuses an
    extension whose names clash with the worker's)."""

    def hpcinfer_rank(self) -> int:
        return _global_rank(self)

    def hpcinfer_start_execution_trace(self, out_dir: str) -> str | None:
        """Start torch's ExecutionTraceObserver into `torch_et_<rank>.json`; None when this
        torch has none (the reason is returned by `hpcinfer_stop_execution_trace`)."""
        try:
            from torch.profiler import ExecutionTraceObserver
        except ImportError:
            return None
        path = Path(out_dir) / f"torch_et_{_global_rank(self)}.json"
        observer = ExecutionTraceObserver()
        observer.register_callback(str(path))
        observer.start()
        self._hpcinfer_et = observer
        return str(path)

    def hpcinfer_stop_execution_trace(self) -> str | None:
        observer = getattr(self, "_hpcinfer_et", None)
        if observer is None:
            return None
        observer.stop()
        observer.unregister_callback()
        self._hpcinfer_et = None
        return str(observer.get_output_file_path())

    def hpcinfer_write_rank_files(self, out_dir: str) -> dict[str, Any]:
        """After vLLM's profiler stopped: `operators_<rank>.csv` from its key_averages and
        `timing_stats_<rank>.json` with the step times it recorded."""
        rank = _global_rank(self)
        wrapper = getattr(self, "profiler", None)
        profiler = getattr(wrapper, "profiler", None)
        if profiler is None:
            return {"rank": rank, "error": "vLLM's profiler did not run in this worker"}
        out = Path(out_dir)
        operators = out / f"operators_{rank}.csv"
        with operators.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=OPERATOR_COLUMNS)
            writer.writeheader()
            writer.writerows(operator_rows(profiler.key_averages()))
        steps = step_times_ms(profiler.events())
        timing = out / f"timing_stats_{rank}.json"
        timing.write_text(json.dumps(timing_stats(rank, steps), indent=1))
        return {"rank": rank, "operators": operators.name, "timing_stats": timing.name}

"""`analyze_traces`: every rank's trace in a folder -> `analysis.json` and CSV tables.

Each file is read by its own worker process (one per core, at most one per file), so the
folder takes about as long as its largest trace; a worker holds two numbers per event, never
the JSON (about 190 MB for a 500 MB trace).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hpcinfer.traces.collective_names import TABLE_VERSION
from hpcinfer.traces.files import (
    ANALYSIS_JSON,
    COLLECTIVES_CSV,
    RANKS_CSV,
    STEPS_CSV,
    trace_files,
    write_csv,
    write_json,
)
from hpcinfer.traces.models import RankAnalysis, TraceAnalysis
from hpcinfer.traces.rank_metrics import RankResult, analyze_file
from hpcinfer.traces.stragglers import CallTuple, match_collectives

STEP_COLUMNS = [
    "rank", "step", "name", "kind", "start_us", "wall_ms", "compute_ms", "comm_ms", "memcpy_ms",
    "exposed_comm_ms", "overlap_ms", "idle_ms", "comm_overhead_pct", "exposed_comm_pct",
    "collectives",
]  # fmt: skip
RANK_COLUMNS = [
    "rank", "world_size", "file", "rank_source", "timeline", "steps", "step_ms", "compute_ms",
    "comm_ms", "memcpy_ms", "exposed_comm_ms", "overlap_ms", "idle_ms", "comm_overhead_pct",
    "exposed_comm_pct", "overlap_pct", "arrival_skew_ms", "wait_ms", "last_arrivals",
    "collectives_per_step",
]  # fmt: skip
COLLECTIVE_COLUMNS = [
    "call", "step", "op", "group", "rank", "arrival_us", "skew_us", "wait_us", "duration_us",
    "last",
]  # fmt: skip


def analyze_traces(
    trace_dir: Path | str, out_dir: Path | str | None = None, *, workers: int | None = None
) -> TraceAnalysis:
    """Analyse every Kineto trace (`*.json`, `*.json.gz`) in `trace_dir` and write
    `analysis.json`, `analysis_ranks.csv`, `analysis_steps.csv` and
    `analysis_collectives.csv` into `out_dir` (default: `trace_dir`). A damaged file is
    analysed as far as it can be read and reported in `data_quality`; InputError only when
    the folder holds no trace at all."""
    where = Path(trace_dir)
    files, notes = trace_files(where)
    results = _read_all(files, workers)
    ranks, order_notes = _assign_ranks(results)
    notes += order_notes
    arrivals = match_collectives([r.rank or 0 for r in ranks], _on_one_clock(ranks))
    notes += arrivals.notes
    world = max((r.world_size or 0 for r in ranks), default=0) or len(ranks)
    missing = _missing(ranks)
    if missing:
        notes.append(
            f"distributedInfo says world_size {world}, but no trace was found for rank(s) "
            f"{', '.join(map(str, missing))}: the figures cover the ranks found"
        )
    entries = []
    for i, result in enumerate(ranks):
        entries.append(
            RankAnalysis(
                rank=result.rank or 0,
                world_size=result.world_size or world,
                file=result.file,
                rank_source=result.rank_source,
                arrival_skew_ms=arrivals.skew_ms[i],
                wait_ms=arrivals.wait_ms[i],
                last_arrivals=arrivals.last_arrivals[i],
                **result.figures,
            )
        )
    known = sum(r.known_comm_calls for r in ranks)
    unknown_names: dict[str, int] = {}
    for result in ranks:
        for name, count in result.unknown_comm.items():
            unknown_names[name] = unknown_names.get(name, 0) + count
    unknown = sum(unknown_names.values())
    analysis = TraceAnalysis(
        trace_dir=str(where),
        ranks=entries,
        straggler=arrivals.straggler,
        straggler_wait_ms=arrivals.straggler_wait_ms,
        straggler_last_share=arrivals.straggler_last_share,
        straggler_p_value=arrivals.straggler_p_value,
        matched_collectives=arrivals.matched,
        collective_table_version=TABLE_VERSION,
        unknown_comm_share=round(unknown / (known + unknown), 6) if known + unknown else 0.0,
        unknown_comm_names=sorted(unknown_names, key=lambda n: -unknown_names[n])[:20],
        data_quality={r.file: r.quality for r in results},
        notes=notes,
        missing_ranks=missing,
    )
    _write(Path(out_dir) if out_dir is not None else where if where.is_dir() else where.parent,
           analysis, ranks, arrivals.rows)  # fmt: skip
    return analysis


def _read_all(files: list[Path], workers: int | None) -> list[RankResult]:
    count = min(len(files), workers or os.cpu_count() or 1)
    if count <= 1:
        return [analyze_file(path) for path in files]
    # fork, named (Python 3.14 defaults to forkserver, which re-runs `python -m hpcinfer`'s
    # __main__ in each worker); the workers only parse and count, they start no threads
    with ProcessPoolExecutor(max_workers=count, mp_context=get_context("fork")) as pool:
        return list(pool.map(analyze_file, files))


def _on_one_clock(ranks: list[RankResult]) -> list[list[CallTuple]]:
    """Each rank's calls with starts moved onto one clock: traces count microseconds from
    their own baseTimeNanoseconds (shifted by the difference, not added whole, which would
    cost float precision)."""
    first = min((r.base_time_ns for r in ranks), default=0)
    shifted = []
    for result in ranks:
        offset = (result.base_time_ns - first) / 1000.0
        shifted.append(
            [(start + offset, dur, op, step, group) for start, dur, op, step, group in result.calls]
        )
    return shifted


def _assign_ranks(results: list[RankResult]) -> tuple[list[RankResult], list[str]]:
    """Ranks in order; of two files that claim one rank the one whose distributedInfo says
    so is kept (the other is named). A file with no rank beside files with one is not a
    worker's (vLLM's frontend writes one) and is left out, noted; where no file has a rank
    (a single trace, say), they are numbered in file order."""
    notes: list[str] = []
    chosen: dict[int, RankResult] = {}
    for result in sorted(results, key=lambda r: r.rank_source != "distributedInfo"):
        if result.rank is None:
            continue
        held = chosen.get(result.rank)
        if held is None:
            chosen[result.rank] = result
            continue
        note = (
            f"{result.file} and {held.file} are both rank {result.rank}; {held.file} is "
            f"analysed ({held.rank_source}), {result.file} is not"
        )
        notes.append(note)
        result.quality.notes.append(note)
    workers_named = bool(chosen)
    for result in (r for r in results if r.rank is None):
        if workers_named:  # e.g. vLLM's frontend: its trace is not one of the workers'
            note = "no distributedInfo rank: not a worker's trace, left out"
            result.quality.notes.append(note)
            notes.append(f"{result.file}: {note}")
            continue
        # no file names a rank (a single trace, say): number them in file order
        result.rank = max(chosen, default=-1) + 1
        chosen[result.rank] = result
        note = f"{result.file}: rank unknown, numbered {result.rank} in file order"
        notes.append(note)
        result.quality.notes.append(note)
    return [chosen[r] for r in sorted(chosen)], notes


def _missing(ranks: list[RankResult]) -> list[int]:
    """The ranks below the world size distributedInfo states that have no trace here."""
    world = max((r.world_size or 0 for r in ranks if r.rank_source == "distributedInfo"),
                default=0)  # fmt: skip
    found = {r.rank for r in ranks}
    return [r for r in range(world) if r not in found]


def _write(
    out: Path, analysis: TraceAnalysis, ranks: list[RankResult], rows: Iterable[dict[str, Any]]
) -> None:
    write_json(out / ANALYSIS_JSON, analysis.model_dump(mode="json"))
    write_csv(out / RANKS_CSV, (e.model_dump() for e in analysis.ranks), RANK_COLUMNS)
    write_csv(
        out / STEPS_CSV,
        ({"rank": r.rank, **row} for r in ranks for row in r.step_rows),
        STEP_COLUMNS,
    )
    write_csv(out / COLLECTIVES_CSV, rows, COLLECTIVE_COLUMNS)

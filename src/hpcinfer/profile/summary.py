"""`profile summary`: the experiments of a study side by side, as `results_summary.csv`, a
scaling plot and `profile_summary.json` (what `hpcinfer report` shows).

Each row comes from one run folder: latency and throughput from profile.json (the
unprofiled timed iterations, tokens actually processed), communication from analysis.json
(`profile analyze`): comm overhead and exposed comm averaged over the ranks, collective calls
per step, the straggler. Speedup and efficiency compare each run with the run of the same
model and data on the fewest devices. A run without analysis.json keeps empty comm columns
and says so in its note, rather than failing the whole summary.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hpcinfer.errors import InputError
from hpcinfer.profile.result import ProfileResult, read_profile_result

ANALYSIS_FILE = "analysis.json"
CSV_FILE = "results_summary.csv"
PLOT_FILE = "scaling.png"
SUMMARY_FILE = "profile_summary.json"


class SummaryRow(BaseModel):
    """One experiment's figures (None: not measured, e.g. no analysis.json)."""

    model_config = ConfigDict(extra="forbid")

    experiment: str
    model: str
    tp: int
    pp: int
    dp: int
    ep: int
    devices: int
    batch_size: int
    seq_len: int
    max_tokens: int
    throughput_tokens_per_s: float
    output_tokens_per_s: float
    ttft_ms: float | None
    tpot_ms: float | None
    step_ms: float
    speedup: float | None = None
    efficiency: float | None = None
    comm_overhead_pct: float | None = None
    exposed_comm_pct: float | None = None
    collectives_per_step_total: float | None = None
    collectives_per_step: str = ""
    compute_ms: float | None = Field(None, description="mean over ranks, per profiled step")
    comm_ms: float | None = None
    memcpy_ms: float | None = None
    idle_ms: float | None = None
    profiled_step_ms: float | None = None
    straggler_rank: int | None = None
    straggler_wait_ms: float | None = None
    straggler_last_pct: float | None = Field(
        None, description="share of the matched collectives the straggler arrived last at"
    )
    profiler_overhead_pct: float
    startup_s: float | None = Field(None, description="engine start-up to the first token")
    run_dir: str
    note: str = ""


class ProfileSummary(BaseModel):
    """profile_summary.json: the rows, in the order of the CSV."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "profile_summary"
    rows: list[SummaryRow]


CSV_COLUMNS = [name for name in SummaryRow.model_fields if name != "run_dir"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mean(ranks: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [v for r in ranks if (v := _num(r.get(key))) is not None]
    return round(fmean(values), 3) if values else None


def read_analysis(run_dir: Path) -> dict[str, Any] | None:
    """analysis.json of a run folder, None if there is none; InputError if it is unreadable."""
    path = run_dir / ANALYSIS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path}: not a readable analysis ({exc}); rerun `hpcinfer profile analyze "
            f"{run_dir} -o {run_dir}`"
        ) from None
    ranks = data.get("ranks") if isinstance(data, dict) else None
    if not isinstance(ranks, list) or not all(isinstance(r, dict) for r in ranks):
        raise InputError(
            f"{path}: 'ranks' must be a list of per-rank objects; rerun `hpcinfer profile "
            f"analyze {run_dir} -o {run_dir}`"
        )
    return data


def _collectives(ranks: Sequence[Mapping[str, Any]]) -> tuple[float | None, str, str]:
    """(total calls per step, 'all_reduce=64 all_gather=1', note) from the ranks' tables."""
    tables: list[dict[str, Any]] = [
        t for r in ranks if isinstance(t := r.get("collectives_per_step"), dict)
    ]
    if not tables:
        return None, "", ""
    names = sorted({str(name) for table in tables for name in table})
    means = {n: fmean(_num(t.get(n)) or 0.0 for t in tables) for n in names}
    note = "" if all(t == tables[0] for t in tables) else "ranks differ in collectives per step"
    text = " ".join(f"{n}={means[n]:g}" for n in names)
    return round(sum(means.values()), 3), text, note


def summary_row(
    run_dir: Path, result: ProfileResult, analysis: Mapping[str, Any] | None
) -> SummaryRow:
    """One run's row (speedup and efficiency are filled in across rows)."""
    experiment, timing = result.experiment, result.timing
    plan = experiment.parallelism
    row = SummaryRow(
        experiment=experiment.experiment_id,
        model=experiment.model.name,
        tp=plan.tp,
        pp=plan.pp,
        dp=plan.dp_replicate,
        ep=plan.ep,
        devices=plan.world_size,
        batch_size=experiment.data.batch_size,
        seq_len=experiment.data.seq_len,
        max_tokens=experiment.data.max_tokens,
        throughput_tokens_per_s=timing.total_tokens_per_s,
        output_tokens_per_s=timing.output_tokens_per_s,
        ttft_ms=timing.ttft_ms,
        tpot_ms=timing.tpot_ms,
        step_ms=timing.step_ms,
        profiler_overhead_pct=round(result.profiler.overhead_pct, 2),
        startup_s=result.startup.total_s,
        run_dir=str(run_dir),
    )
    if analysis is None:
        row.note = f"no {ANALYSIS_FILE}: comm columns empty (run `hpcinfer profile analyze`)"
        return row
    ranks: list[dict[str, Any]] = analysis["ranks"]
    total, text, note = _collectives(ranks)
    straggler = analysis.get("straggler")
    return row.model_copy(
        update={
            "comm_overhead_pct": _mean(ranks, "comm_overhead_pct"),
            "exposed_comm_pct": _mean(ranks, "exposed_comm_pct"),
            "collectives_per_step_total": total,
            "collectives_per_step": text,
            "compute_ms": _mean(ranks, "compute_ms"),
            "comm_ms": _mean(ranks, "comm_ms"),
            "memcpy_ms": _mean(ranks, "memcpy_ms"),
            "idle_ms": _mean(ranks, "idle_ms"),
            "profiled_step_ms": _mean(ranks, "step_ms"),
            "straggler_rank": straggler if isinstance(straggler, int) else None,
            "straggler_wait_ms": _num(analysis.get("straggler_wait_ms")),
            "straggler_last_pct": None
            if not isinstance(straggler, int)
            or (share := _num(analysis.get("straggler_last_share"))) is None
            else round(100 * share, 1),
            "note": note,
        }
    )


def _scaling(rows: list[SummaryRow]) -> None:
    """Speedup and efficiency against the run of the same model and data on fewest devices."""
    groups: dict[tuple[Any, ...], list[SummaryRow]] = {}
    for row in rows:
        key = (row.model, row.batch_size, row.seq_len, row.max_tokens)
        groups.setdefault(key, []).append(row)
    for group in groups.values():
        base = min(group, key=lambda r: r.devices)
        if base.throughput_tokens_per_s <= 0:
            continue
        for row in group:
            row.speedup = round(row.throughput_tokens_per_s / base.throughput_tokens_per_s, 3)
            row.efficiency = round(row.speedup * base.devices / row.devices, 3)


def build_summary(run_dirs: Sequence[Path]) -> ProfileSummary:
    """The rows of `run_dirs`, ordered by model and device count."""
    if not run_dirs:
        raise InputError("give at least one run folder (the output_dir of `hpcinfer profile run`)")
    rows = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise InputError(f"{run_dir} is not a run folder: give output_dirs of `profile run`")
        rows.append(summary_row(run_dir, read_profile_result(run_dir), read_analysis(run_dir)))
    seen: dict[str, str] = {}
    for row in rows:
        if row.experiment in seen:
            raise InputError(
                f"{row.run_dir} and {seen[row.experiment]} are both experiment "
                f"{row.experiment!r}; give each run folder once"
            )
        seen[row.experiment] = row.run_dir
    _scaling(rows)
    rows.sort(key=lambda r: (r.model, r.devices, r.tp, r.experiment))
    return ProfileSummary(rows=rows)


def summary_csv(summary: ProfileSummary) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in summary.rows:
        values = row.model_dump(include=set(CSV_COLUMNS))
        writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return buffer.getvalue()


def write_summary(run_dirs: Sequence[Path], out_dir: Path) -> ProfileSummary:
    """results_summary.csv, scaling.png and profile_summary.json into `out_dir`."""
    from hpcinfer.outputs.atomic import atomic_writer, write_text_atomic
    from hpcinfer.profile.scaling_plot import scaling_png

    summary = build_summary(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / CSV_FILE, summary_csv(summary))
    with atomic_writer(out_dir / PLOT_FILE, "wb") as handle:
        handle.write(scaling_png(summary.rows))
    write_text_atomic(out_dir / SUMMARY_FILE, summary.model_dump_json(indent=1) + "\n")
    return summary

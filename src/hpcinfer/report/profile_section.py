"""The profiling study's part of the report: the scaling plot, the summary table, and a
plain-language reading of how throughput scales, where a step's time goes and which rank
holds the others back.

It reads `profile_summary.json`, which `hpcinfer profile summary -o DIR` writes beside
results_summary.csv; the plot is drawn again from its rows so the page stands alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpcinfer.core.documents import read_document
from hpcinfer.profile.scaling_plot import DPI, scaling_png
from hpcinfer.profile.summary import SUMMARY_FILE, ProfileSummary, SummaryRow
from hpcinfer.report.page import Plot, Section, Table
from hpcinfer.report.values import NA, fmt

PLOT_SIZE = (11, 7.5)  # inches, as profile.scaling_plot draws it


def profile_section(directory: Path) -> Section | None:
    """The section for `directory`'s profile_summary.json; None when there is none."""
    path = directory / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = read_document(path, ProfileSummary, "profile summary")
    rows = summary.rows
    plot = Plot(
        title="Scaling: throughput, speedup and efficiency against devices; communication "
        "overhead (solid) and exposed communication (dashed) against TP",
        png=scaling_png(rows),
        alt="Scaling plot of the profiled experiments",
        width=round(PLOT_SIZE[0] * DPI),
        height=round(PLOT_SIZE[1] * DPI),
    )
    return Section(
        kind="profile",
        title="Parallelism profiling",
        source=path.name,
        reading=read_profile(rows),
        blocks=(plot, _table(rows)),
    )


def _pct(value: float | None) -> str:
    return NA if value is None else f"{fmt(value)}%"


def _table(rows: Sequence[SummaryRow]) -> Table:
    body = tuple(
        (
            r.experiment,
            r.model,
            f"{r.tp}/{r.pp}/{r.dp}/{r.ep}",
            str(r.devices),
            fmt(r.throughput_tokens_per_s),
            fmt(r.speedup),
            _pct(None if r.efficiency is None else 100 * r.efficiency),
            fmt(r.ttft_ms),
            fmt(r.tpot_ms),
            _pct(r.comm_overhead_pct),
            _pct(r.exposed_comm_pct),
            r.collectives_per_step or NA,
            NA if r.straggler_rank is None else f"rank {r.straggler_rank}",
        )
        for r in rows
    )
    return Table(
        title="Experiments",
        columns=(
            "experiment",
            "model",
            "TP/PP/DP/EP",
            "devices",
            "tokens/s",
            "speedup",
            "efficiency",
            "TTFT ms",
            "TPOT ms",
            "comm overhead",
            "exposed comm",
            "collectives per step",
            "straggler",
        ),
        rows=body,
        note="Throughput, TTFT and TPOT come from the unprofiled timed iterations (all tokens "
        "processed over the iteration's wall time). Comm overhead is the union of "
        "communication time over the step, exposed comm the part not hidden behind compute, "
        "both averaged over the ranks; speedup and efficiency compare with the same model "
        "and data on the fewest devices.",
        text_columns=(0, 1, 2, 11, 12),
    )


def read_profile(rows: Sequence[SummaryRow]) -> tuple[str, ...]:
    """What the study says, in sentences: scaling, where the time goes, stragglers."""
    sentences: list[str] = []
    models: dict[str, list[SummaryRow]] = {}
    for row in rows:
        models.setdefault(row.model, []).append(row)
    for model, group in models.items():
        group = sorted(group, key=lambda r: r.devices)
        first, last = group[0], group[-1]
        if last.devices > first.devices and last.speedup is not None:
            sentences.append(
                f"{model}: from {first.devices} to {last.devices} devices throughput goes "
                f"from {fmt(first.throughput_tokens_per_s)} to "
                f"{fmt(last.throughput_tokens_per_s)} tokens/s, {fmt(last.speedup)}x "
                f"({_pct(100 * (last.efficiency or 0))} efficiency)."
            )
        else:
            sentences.append(
                f"{model}: {fmt(first.throughput_tokens_per_s)} tokens/s on "
                f"{first.devices} device(s)."
            )
    analysed = [r for r in rows if r.profiled_step_ms is not None]
    if analysed:
        widest = max(analysed, key=lambda r: (r.devices, r.tp))
        sentences.append(_where_time_goes(widest))
    for row in rows:
        if row.straggler_rank is not None:
            wait = (
                f"; the other ranks spent {fmt(row.straggler_wait_ms)} ms in all waiting for it"
                if row.straggler_wait_ms
                else ""
            )
            share = (
                f" ({_pct(row.straggler_last_pct)} of those matched across ranks)"
                if row.straggler_last_pct is not None
                else ""
            )
            sentences.append(
                f"In {row.experiment}, rank {row.straggler_rank} holds the others back: it "
                f"arrives last at the collectives{share}{wait}."
            )
    if analysed and not any(r.straggler_rank is not None for r in rows):
        sentences.append("No rank holds the others back: no straggler was found.")
    missing = [r.experiment for r in rows if r.profiled_step_ms is None]
    if missing:
        sentences.append(
            f"No trace analysis for {', '.join(missing)}: its communication figures are "
            "empty (run `hpcinfer profile analyze` on its folder)."
        )
    return tuple(sentences)


def _where_time_goes(row: SummaryRow) -> str:
    parts = [f"compute {fmt(row.compute_ms)} ms", f"communication {fmt(row.comm_ms)} ms"]
    if row.memcpy_ms:
        parts.append(f"memory copies {fmt(row.memcpy_ms)} ms")
    if row.idle_ms:
        parts.append(f"idle {fmt(row.idle_ms)} ms")
    return (
        f"Where the time goes at TP={row.tp} ({row.experiment}, {row.devices} device(s)): a "
        f"profiled step takes {fmt(row.profiled_step_ms)} ms on average over the ranks: "
        f"{', '.join(parts)}. Communication covers {_pct(row.comm_overhead_pct)} of the step, "
        f"and {_pct(row.exposed_comm_pct)} of the step is communication not hidden behind "
        "compute."
    )

"""CLI command `hpcinfer profile analyze TRACE_DIR`: every rank's Kineto trace -> where the
time goes, per rank and step, and which rank holds the others back.

Thin: arguments -> `hpcinfer.traces.analyze_traces`, then a short table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from hpcinfer.cli import flags
from hpcinfer.core.terminal import wide_console

if TYPE_CHECKING:
    from hpcinfer.traces import TraceAnalysis

err = wide_console(stderr=True)

ANALYZE_EPILOG = (
    "Example: hpcinfer profile analyze experiments/E1.2_llama8b_tp2 (the folder `hpcinfer "
    "profile run` wrote, or vLLM's torch_profiler_dir) writes analysis.json and "
    "analysis_{ranks,steps,collectives}.csv there (-o DIR for elsewhere). Traces may be "
    "gzipped, truncated or damaged: what was read is analysed and the damage reported. Exit "
    "codes: 0 written; 2 TRACE_DIR missing or holding no trace."
)


@flags.takes(
    "out",
    *flags.OUTPUT_MODE,
    helps={
        "out": "Folder for analysis.json and the analysis_*.csv tables, created if missing "
        "(default: TRACE_DIR, or the folder of the one trace file)."
    },
)
def analyze(
    trace_dir: Annotated[
        Path,
        typer.Argument(
            metavar="TRACE_DIR",
            help="Folder of per-rank Kineto traces (*.json, *.json.gz), or one trace file.",
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes reading traces at once (default: one per core)."),
    ] = None,
    *,
    flags: flags.Flags,
) -> None:
    """Analyse every rank's trace: per step the wall time, the union of compute, of
    communication and of memory-copy time, exposed communication, overlap and idle time;
    collective calls by type; arrival skew and the straggler."""
    from hpcinfer.traces import analyze_traces
    from hpcinfer.traces.files import ANALYSIS_JSON

    out = Path(flags["out"]) if flags["out"] else None
    analysis = analyze_traces(trace_dir, out, workers=workers)
    written = (out or (trace_dir if trace_dir.is_dir() else trace_dir.parent)) / ANALYSIS_JSON
    if flags.json_out:
        print(json.dumps(analysis.model_dump(mode="json"), indent=1))
        return
    if not flags.quiet:
        print(summary_text(analysis))
        _warn_data_quality(analysis)
    print(written)


def summary_text(analysis: TraceAnalysis) -> str:
    """A table of the ranks and one line on the straggler."""
    from hpcinfer.traces.stragglers import MAX_P_VALUE, MIN_CALLS, MIN_WAIT_US

    header = ("rank", "steps", "step ms", "comm %", "exposed %", "overlap %", "idle ms",
              "collectives/step")  # fmt: skip
    rows = [header]
    for rank in analysis.ranks:
        per_step = ", ".join(f"{op} {n:g}" for op, n in rank.collectives_per_step.items())
        rows.append(
            (
                str(rank.rank),
                str(rank.steps),
                f"{rank.step_ms:.3f}",
                f"{rank.comm_overhead_pct:.1f}",
                f"{rank.exposed_comm_pct:.1f}",
                f"{rank.overlap_pct:.1f}",
                f"{rank.idle_ms:.3f}",
                per_step or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    if analysis.straggler is not None:
        lines.append(
            f"straggler: rank {analysis.straggler} arrived last at "
            f"{analysis.straggler_last_share:.0%} of its matched collectives (p = "
            f"{analysis.straggler_p_value:.2g} by chance; {analysis.matched_collectives} matched "
            f"in all); the others waited {analysis.straggler_wait_ms:.3f} ms for it"
        )
    elif analysis.matched_collectives:
        lines.append(
            f"no straggler: no rank arrived last at the {analysis.matched_collectives} matched "
            f"collectives more often than chance allows (at least {MIN_CALLS} calls, "
            f"p < {MAX_P_VALUE}) with the others waiting at least {MIN_WAIT_US:g} us a call"
        )
    if analysis.missing_ranks:
        lines.append(
            "missing ranks (no trace found): "
            + ", ".join(str(r) for r in analysis.missing_ranks)
        )
    if analysis.unknown_comm_share:
        lines.append(
            f"{analysis.unknown_comm_share:.1%} of communication-like calls have names the "
            f"collective table does not know: {', '.join(analysis.unknown_comm_names[:5])}"
        )
    return "\n".join(lines)


def _warn_data_quality(analysis: TraceAnalysis) -> None:
    for name, quality in analysis.data_quality.items():
        for note in quality.notes:
            err.print(f"{escape(name)}: {escape(note)}", highlight=False)
        if quality.huge_ints or quality.invalid_utf8:
            err.print(
                f"{escape(name)}: read with repairs ({quality.huge_ints} integer(s) above "
                f"int64 read as text, {quality.invalid_utf8} invalid UTF-8 byte(s) replaced)",
                highlight=False,
            )
    for note in analysis.notes:
        err.print(escape(note), highlight=False)


def register(group: typer.Typer) -> None:
    """Add `analyze` to the `hpcinfer profile` group."""
    group.command(epilog=ANALYZE_EPILOG)(analyze)

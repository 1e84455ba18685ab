"""The serving benchmark's part of the report: reading, tables, curve and percentile bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcinfer.bench.metrics import LATENCY_METRICS
from hpcinfer.report import plots
from hpcinfer.report.page import Plot, Section, Table
from hpcinfer.report.serve_points import (
    ServePoint,
    percentile_names,
    read_points,
    top_percentile,
)
from hpcinfer.report.serve_reading import WAIT_RATIO, load_order, read_serve
from hpcinfer.report.server_table import server_table
from hpcinfer.report.values import NA, fmt, fmt_count

_LATENCY_NOTE = {
    "scheduled": "counted from each request's scheduled send time, so time a request spent "
    "waiting to be sent counts, as a user would feel it",
    "sent": "counted from the moment each request was actually sent (as vLLM counts)",
}


def serve_section(path: Path, document: Mapping[str, Any]) -> Section:
    points = read_points(path, document)
    ordered = load_order(points)
    tail = top_percentile(points)
    blocks: list[Table | Plot] = [_throughput_table(ordered, tail), _latency_table(ordered, tail)]
    if any(p.output_throughput is not None and p.stat("ttft", "mean") is not None for p in points):
        blocks.append(plots.throughput_latency(ordered, tail))
    names = percentile_names(points)
    if names and ordered:
        blocks.append(plots.percentile_bars(ordered, names))
    errors = _errors_table(ordered)
    if errors is not None:
        blocks.append(errors)
    blocks += [server_table(p.label, p.server_metrics) for p in ordered if p.server_metrics]
    sweep = document.get("sweep")
    reading = read_serve(points, sweep if isinstance(sweep, Mapping) else None)
    if len(points) > 1:
        reading += (
            f"(Kept up: median TTFT at most {WAIT_RATIO:g}x the lightest load's, or within "
            "20 ms of it.)",
        )
    return Section(
        kind="serve",
        title="Serving benchmark",
        source=path.name,
        reading=reading,
        blocks=tuple(blocks),
    )


def _throughput_table(points: Sequence[ServePoint], tail: str | None) -> Table:
    lag = tail or "max"
    columns = (
        "load",
        "schedule",
        "completed",
        "failed",
        "duration (s)",
        "req/s",
        "output tok/s",
        "total tok/s",
        "goodput (req/s)",
        "send lag mean (ms)",
        f"send lag {lag} (ms)",
    )
    rows = tuple(
        (
            p.label,
            p.description,
            fmt_count(p.completed),
            fmt_count(p.failed),
            fmt(p.value("duration")),
            fmt(p.request_throughput),
            fmt(p.output_throughput),
            fmt(p.value("total_token_throughput")),
            fmt(p.value("request_goodput")),
            fmt(p.stat("send_lag", "mean")),
            fmt(p.stat("send_lag", lag)),
        )
        for p in points
    )
    return Table(
        title="Throughput per load point",
        columns=columns,
        rows=rows,
        text_columns=(0, 1),
        note="Throughputs divide by the run's wall-clock duration; goodput counts requests "
        "meeting every SLO bound per second (n/a without an SLO); send lag is how far the "
        "load generator fell behind its schedule.",
    )


def _latency_table(points: Sequence[ServePoint], tail: str | None) -> Table:
    stats = ["mean", "median", *([tail] if tail else [])]
    columns = ("load", *(f"{m.upper()} {s}" for m in LATENCY_METRICS for s in stats))
    rows = tuple(
        (p.label, *(fmt(p.stat(m, s)) for m in LATENCY_METRICS for s in stats)) for p in points
    )
    origins = {str(p.metrics.get("latency_origin")) for p in points}
    origin = next(iter(origins)) if len(origins) == 1 else ""
    note = "Milliseconds. TTFT and E2EL are " + _LATENCY_NOTE.get(
        origin, "counted from the send time the file records"
    )
    note += (
        ". TPOT is per output token after the first; ITL is the gap between streamed chunks. "
        f"{NA}: no sample (e.g. TPOT when every answer had a single token)."
    )
    return Table(title="Latency per load point", columns=columns, rows=rows, note=note)


def _errors_table(points: Sequence[ServePoint]) -> Table | None:
    rows = tuple(
        (p.label, message, str(count))
        for p in points
        for message, count in sorted(p.errors.items(), key=lambda item: -item[1])
    )
    if not rows:
        return None
    return Table(
        title="Errors", columns=("load", "error", "requests"), rows=rows, text_columns=(0, 1)
    )

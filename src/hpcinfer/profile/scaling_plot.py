"""The scaling plot of a profiling study: throughput, speedup and efficiency against devices,
and communication overhead against TP, one line per model.

Drawn with matplotlib's Agg renderer through `matplotlib.figure.Figure` (never pyplot, so no
global backend state changes), imported only when drawing. Lines use fixed saturated colours
the rest of the report does not use, so a screenshot test can find the plot by its pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpcinfer.errors import HpcinferError

if TYPE_CHECKING:  # summary imports this module to draw; the rows are only annotations here
    from hpcinfer.profile.summary import SummaryRow

DPI = 100
MODEL_COLOURS = ("#0b6e4f", "#c51b7d", "#3f007d", "#b35806", "#01665e", "#8e0152")
IDEAL_COLOUR = "#999999"
EXPOSED_COLOUR = "#4d9221"


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HpcinferError(
            "the scaling plot is drawn with matplotlib, which is not installed here: "
            "pip install matplotlib"
        ) from None
    return Figure(figsize=(11, 7.5), dpi=DPI, layout="constrained")


def _by_model(rows: Sequence[SummaryRow]) -> dict[str, list[SummaryRow]]:
    groups: dict[str, list[SummaryRow]] = {}
    for row in sorted(rows, key=lambda r: (r.devices, r.tp)):
        groups.setdefault(row.model, []).append(row)
    return groups


def scaling_png(rows: Sequence[SummaryRow]) -> bytes:
    """The 2 x 2 scaling plot as PNG bytes."""
    fig = _figure()
    (throughput, speedup), (efficiency, comm) = fig.subplots(2, 2)
    groups = _by_model(rows)
    for index, (model, group) in enumerate(groups.items()):
        colour = MODEL_COLOURS[index % len(MODEL_COLOURS)]
        devices = [r.devices for r in group]
        style = {"color": colour, "linewidth": 3, "markersize": 9, "label": model}
        throughput.plot(devices, [r.throughput_tokens_per_s for r in group], "o-", **style)
        speedup.plot(devices, [_nan(r.speedup) for r in group], "o-", **style)
        efficiency.plot(devices, [_nan(r.efficiency) for r in group], "o-", **style)
        by_tp = sorted(group, key=lambda r: r.tp)
        tps = [r.tp for r in by_tp]
        comm.plot(tps, [_nan(r.comm_overhead_pct) for r in by_tp], "o-", **style)
        comm.plot(
            tps,
            [_nan(r.exposed_comm_pct) for r in by_tp],
            "s--",
            color=colour,
            linewidth=2,
            markersize=7,
            label=f"{model} (exposed)",
        )
    fewest = min((r.devices for r in rows), default=1)
    ideal = sorted({r.devices for r in rows})
    speedup.plot(
        ideal, [d / fewest for d in ideal], ":", color=IDEAL_COLOUR, label="ideal (linear)"
    )
    for axes in (throughput, speedup, efficiency):
        axes.set_xticks(ideal)
    comm.set_xticks(sorted({r.tp for r in rows}))
    efficiency.axhline(1.0, linestyle=":", color=IDEAL_COLOUR, label="ideal")
    titles = (
        (throughput, "Throughput", "devices", "tokens/s (input + output)"),
        (speedup, "Speedup over the fewest devices", "devices", "x"),
        (efficiency, "Efficiency (speedup / device ratio)", "devices", "fraction"),
        (comm, "Communication overhead against TP", "tensor parallel size", "% of a step"),
    )
    for axes, title, xlabel, ylabel in titles:
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, color="#dddddd")
        axes.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value

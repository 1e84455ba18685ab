"""The report's PNG plots, drawn with matplotlib's Agg renderer (imported only when drawing).

Figures are made with `matplotlib.figure.Figure`, never pyplot, so drawing touches no global
backend state of a program that imports hpcinfer. Colours are fixed per meaning (a metric, a
percentile, a FOM case) so plots read alike across reports; they are saturated colours and
the page around them is grey, which lets a screenshot test find the plots by their pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from hpcinfer.errors import HpcinferError
from hpcinfer.report.page import Plot
from hpcinfer.report.serve_points import ServePoint

DPI = 100
METRIC_COLOURS = {"ttft": "#1f77b4", "tpot": "#ff7f0e", "itl": "#2ca02c", "e2el": "#d62728"}
METRIC_NAMES = {
    "ttft": "TTFT (time to first token)",
    "tpot": "TPOT (time per output token)",
    "itl": "ITL (inter-token latency)",
    "e2el": "E2EL (end-to-end latency)",
}
PERCENTILE_COLOURS = ("#9467bd", "#e377c2", "#8c564b", "#bcbd22", "#17becf", "#393b79")
CASE_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
ITERATION_COLOUR = "#17becf"
GRID = "#dddddd"
NAN = math.nan


def _figure(width_in: float, height_in: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HpcinferError(
            "the HTML report draws its plots with matplotlib, which is not installed here: "
            "pip install matplotlib"
        ) from None
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _plot(fig: Any, title: str, alt: str) -> Plot:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (round(v * DPI) for v in fig.get_size_inches())
    return Plot(title=title, png=buffer.getvalue(), alt=alt, width=width, height=height)


def _value(x: float | None) -> float:
    return NAN if x is None else x


def throughput_latency(points: Sequence[ServePoint], tail: str | None) -> Plot:
    """TTFT and E2EL (mean and tail) against achieved output tokens/s, one marker per load
    point, labelled with its load: where the curve turns up, the servers are saturated."""
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    drawn = [p for p in points if p.output_throughput is not None]
    xs = [p.output_throughput or 0.0 for p in drawn]
    for ax, name in zip(axes, ("ttft", "e2el"), strict=True):
        colour = METRIC_COLOURS[name]
        means = [_value(p.stat(name, "mean")) for p in drawn]
        ax.plot(xs, means, "o-", color=colour, linewidth=2.5, markersize=8, label="mean")
        tails = means
        if tail is not None:
            tails = [_value(p.stat(name, tail)) for p in drawn]
            ax.plot(xs, tails, "s--", color=colour, linewidth=2, markersize=7, label=tail)
        for x, y, point in zip(xs, tails, drawn, strict=True):
            if not math.isnan(y):
                ax.annotate(
                    point.label, (x, y), textcoords="offset points", xytext=(5, 7), fontsize=8
                )
        ax.set_title(METRIC_NAMES[name])
        ax.set_xlabel("output tokens/s (achieved)")
        ax.set_ylabel("milliseconds")
        ax.margins(x=0.15)
        highest = max((y for y in [*means, *tails] if not math.isnan(y)), default=0.0)
        ax.set_ylim(0, highest * 1.2 or 1.0)  # room above for the labels
        ax.grid(True, color=GRID)
        ax.legend(loc="lower right")  # the curves sit above it: the axis starts at 0
    alt = "Latency against throughput: " + "; ".join(
        f"{p.label}: {p.output_throughput:.4g} tok/s" for p in drawn
    )
    return _plot(fig, "Latency against throughput across the sweep", alt)


def percentile_bars(points: Sequence[ServePoint], names: Sequence[str]) -> Plot:
    """TTFT, TPOT, ITL and E2EL at each reported percentile, grouped by load point."""
    fig = _figure(11, 6.4)
    axes = fig.subplots(2, 2).flatten()
    count = len(names)
    width = 0.8 / max(count, 1)
    positions = range(len(points))
    for ax, name in zip(axes, METRIC_COLOURS, strict=True):
        highest = 0.0
        for j, percentile in enumerate(names):
            offset = (j - (count - 1) / 2) * width
            heights = [_value(p.stat(name, percentile)) for p in points]
            highest = max([highest, *(h for h in heights if not math.isnan(h))])
            ax.bar(
                [i + offset for i in positions],
                heights,
                width,
                color=PERCENTILE_COLOURS[j % len(PERCENTILE_COLOURS)],
                label=percentile,
            )
        ax.set_xticks(
            list(positions),
            labels=[p.label for p in points],
            rotation=20 if len(points) > 4 else 0,
            ha="right" if len(points) > 4 else "center",
            fontsize=8,
        )
        ax.set_title(METRIC_NAMES[name])
        ax.set_ylabel("milliseconds")
        ax.grid(True, axis="y", color=GRID)
        ax.set_axisbelow(True)
        ax.set_ylim(0, highest * 1.25 or 1.0)  # headroom for the legend, clear of the bars
    axes[0].legend(loc="upper left", ncol=count, fontsize=8)
    alt = "Latency percentiles (" + ", ".join(names) + ") per load point"
    return _plot(fig, "Latency percentiles per load point", alt)


def offline_latency(percentiles: Sequence[tuple[str, float]], mean: float | None,
                    iterations: Sequence[float]) -> Plot:  # fmt: skip
    """The iteration latency at each percentile (bars, mean as a line) and, when recorded,
    every iteration in order, which shows warm-up and drift."""
    panels = 2 if len(iterations) >= 2 else 1
    fig = _figure(11 if panels == 2 else 6, 3.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    labels = [name for name, _ in percentiles]
    ax.bar(
        labels,
        [value for _, value in percentiles],
        color=[PERCENTILE_COLOURS[i % len(PERCENTILE_COLOURS)] for i in range(len(labels))],
    )
    if mean is not None:
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.4g} s")
        ax.legend(loc="lower right")
    ax.set_title("Latency per iteration, percentiles")
    ax.set_ylabel("seconds")
    ax.grid(True, axis="y", color=GRID)
    ax.set_axisbelow(True)
    if panels == 2:
        ax = axes[1]
        ax.bar(range(1, len(iterations) + 1), iterations, color=ITERATION_COLOUR)
        ax.set_title("Latency of each iteration, in order")
        ax.set_xlabel("iteration")
        ax.set_ylabel("seconds")
        ax.grid(True, axis="y", color=GRID)
        ax.set_axisbelow(True)
    alt = "Offline latency: " + ", ".join(f"{n} {v:.4g} s" for n, v in percentiles)
    return _plot(fig, "Offline latency", alt)


def _flop_unit(value: float) -> tuple[float, str]:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return scale, prefix
    return 1.0, ""


def fom_breakdown(
    names: Sequence[str], throughputs: Sequence[float], flops: Sequence[float] | None
) -> Plot:
    """Each case's throughput beside the FOM, their sum drawn as a stack of the same colours,
    so each case's share of the FOM is visible; the same in TFLOP/s when known."""
    panels: list[tuple[str, Sequence[float], str]] = [
        ("FOM, throughput", throughputs, "tokens/s (input + output)")
    ]
    if flops is not None:
        scale, prefix = _flop_unit(math.fsum(flops))
        panels.append(("FOM, FLOP form", [f / scale for f in flops], f"{prefix}FLOP/s (estimate)"))
    fig = _figure(5.5 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, values, unit) in zip(axes, panels, strict=True):
        colours = [CASE_COLOURS[i % len(CASE_COLOURS)] for i in range(len(names))]
        ax.bar(list(names), list(values), color=colours)
        bottom = 0.0
        for name, value, colour in zip(names, values, colours, strict=True):
            ax.bar(["FOM (sum)"], [value], bottom=bottom, color=colour, edgecolor="white")
            if value > 0:
                ax.annotate(name, (len(names), bottom + value / 2), ha="center", va="center",
                            fontsize=8, color="white")  # fmt: skip
            bottom += value
        for i, value in enumerate([*values, bottom]):
            ax.annotate(f"{value:.4g}", (i, value), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=8)  # fmt: skip
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.margins(y=0.12)
        ax.grid(True, axis="y", color=GRID)
        ax.set_axisbelow(True)
    alt = "FOM breakdown: " + ", ".join(
        f"{n} {v:.4g} tok/s" for n, v in zip(names, throughputs, strict=True)
    )
    return _plot(fig, "FOM breakdown", alt)

"""A plain-language reading of a serving sweep, derived from its numbers.

It says what a person would say looking at the table: whether the servers kept up as load
grew (median TTFT staying near the lightest load's), where requests started to wait, where
throughput peaked, what failed, the goodput under the SLO, and whether the load generator
itself fell behind. "Kept up" is a rule of thumb stated in the page: median TTFT at most
twice the lightest load's (or within 20 ms of it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hpcinfer.report.serve_points import ServePoint, top_percentile
from hpcinfer.report.values import fmt, fmt_count, fmt_pct, num

WAIT_RATIO = 2.0
"""Median TTFT above this multiple of the lightest load's means requests waited..."""
WAIT_MARGIN_MS = 20.0
"""...and above it by at least this much (a 5 ms -> 11 ms change is noise, not queueing)."""
LAG_NOTE_MS = 10.0
"""Client send lag worth mentioning."""


def _load_key(point: ServePoint) -> float | None:
    """Rate or concurrency; in a sweep to saturation the synchronous run is the lightest
    load and the throughput run the heaviest."""
    if point.role == "synchronous":
        return 0.0
    if point.role == "throughput":
        return math.inf
    return point.rate if point.rate is not None else point.concurrency


def load_order(points: Sequence[ServePoint]) -> list[ServePoint]:
    """Lightest load first: by rate or concurrency when every point has one, else sweep order."""
    keys = [_load_key(point) for point in points]
    if all(key is not None for key in keys):
        return [point for _, _, point in sorted(zip(keys, range(len(points)), points, strict=True))]
    return list(points)


def waited(point: ServePoint, base_median: float) -> bool:
    median = point.stat("ttft", "median")
    if median is None:
        return False
    return median > WAIT_RATIO * base_median and median - base_median > WAIT_MARGIN_MS


def read_serve(
    points: Sequence[ServePoint], sweep: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Sentences that read the sweep for a person, most important first; `sweep` is the
    document's sweep to saturation (its knee named second)."""
    if not points:
        return ("The file lists no sweep points: nothing was measured.",)
    tail = top_percentile(points)
    sentences = [_overview(points), *_knee(points, sweep)]
    sentences += _latency(load_order(points), tail)
    if len(points) > 1:
        sentences += _peak(load_order(points))
    sentences += _failures(points)
    sentences += _goodput(points)
    sentences += _send_lag(points, tail)
    return tuple(s for s in sentences if s)


def _knee(points: Sequence[ServePoint], sweep: Mapping[str, Any] | None) -> list[str]:
    from hpcinfer.bench.sweep import describe_knee

    knee = sweep.get("knee") if isinstance(sweep, Mapping) else None
    if not isinstance(knee, Mapping):
        return []
    rated = [p for p in points if p.role == "rate" and p.rate is not None]
    top = max(rated, key=lambda p: p.rate or 0.0).label if rated else None
    return [describe_knee(knee, top)]


def _overview(points: Sequence[ServePoint]) -> str:
    if len(points) == 1:
        point = points[0]
        failed = point.failed or 0
        return (
            f"One load point ({point.description}): {fmt_count(point.completed)} requests "
            f"completed{f' and {fmt_count(failed)} failed' if failed else ''} in "
            f"{fmt(point.value('duration'))} s, {fmt(point.request_throughput)} req/s and "
            f"{fmt(point.output_throughput)} output tokens/s."
        )
    ordered = load_order(points)
    return (
        f"The sweep ran {len(points)} load points, from {ordered[0].label} to {ordered[-1].label}."
    )


def _tail_text(point: ServePoint, tail: str | None, name: str = "ttft") -> str:
    if tail is None:
        return ""
    return f", {tail} {fmt(point.stat(name, tail))} ms"


def _latency(ordered: list[ServePoint], tail: str | None) -> list[str]:
    measured = [p for p in ordered if p.stat("ttft", "median") is not None]
    if not measured:
        return ["No request completed, so there is no latency to report."]
    base = measured[0]
    base_median = base.stat("ttft", "median") or 0.0
    if len(measured) == 1:
        return [_single_latency(base, tail)]
    first_wait = next((i for i, p in enumerate(measured) if waited(p, base_median)), None)
    medians = [p.stat("ttft", "median") or 0.0 for p in measured]
    if first_wait is None:
        worst_tail = max((p.stat("ttft", tail) or 0.0 for p in measured), default=0.0)
        return [
            f"Latency stayed close to the lightest load's at every point (median TTFT "
            f"{fmt(min(medians))} to {fmt(max(medians))} ms"
            + (f", {tail} at most {fmt(worst_tail)} ms" if tail else "")
            + f"): the servers kept up with every load, up to {measured[-1].label}."
        ]
    kept, waiting = measured[:first_wait], measured[first_wait:]
    first = waiting[0]
    first_median = first.stat("ttft", "median") or 0.0
    ratio = f"{first_median / base_median:.1f}x" if base_median > 0 else "far above"
    if len(kept) == 1:
        before = f"At {base.label} median TTFT was {fmt(base_median)} ms{_tail_text(base, tail)}"
    else:
        kept_tail = max((p.stat("ttft", tail) or 0.0 for p in kept), default=0.0)
        before = (
            f"Up to {kept[-1].label} the servers kept up (median TTFT at most "
            f"{fmt(max(medians[:first_wait]))} ms"
            + (f", {tail} at most {fmt(kept_tail)} ms" if tail else "")
            + ")"
        )
    text = (
        f"{before}; at {first.label} requests waited: median TTFT rose to "
        f"{fmt(first_median)} ms ({ratio} the lightest load's){_tail_text(first, tail)}."
    )
    last = waiting[-1]
    if last is not first:
        text += (
            f" At {last.label} median TTFT was {fmt(last.stat('ttft', 'median'))} ms"
            f"{_tail_text(last, tail)} and median E2EL {fmt(last.stat('e2el', 'median'))} ms."
        )
    return [text]


def _single_latency(point: ServePoint, tail: str | None) -> str:
    median = point.stat("ttft", "median") or 0.0
    tail_value = point.stat("ttft", tail) if tail else None
    if tail_value is not None and median > 0 and tail_value > 3 * median:
        ttft = (
            f"The {tail} TTFT ({fmt(tail_value)} ms) is {tail_value / median:.1f}x the median "
            f"({fmt(median)} ms): some requests waited before their first token"
        )
    else:
        ttft = f"TTFT was steady: median {fmt(median)} ms{_tail_text(point, tail)}"
    tpot = point.stat("tpot", "mean")
    return (
        f"{ttft}; median end-to-end latency {fmt(point.stat('e2el', 'median'))} ms"
        + (f", {fmt(tpot)} ms per output token after the first (mean TPOT)" if tpot else "")
        + "."
    )


def _peak(ordered: list[ServePoint]) -> list[str]:
    rated = [p for p in ordered if p.output_throughput is not None]
    if not rated:
        return []
    best = max(rated, key=lambda p: p.output_throughput or 0.0)
    text = (
        f"Output throughput peaked at {fmt(best.output_throughput)} tokens/s "
        f"({fmt(best.request_throughput)} req/s) at {best.label}"
    )
    if best.rate is not None and best.request_throughput is not None:
        text += f", {fmt_pct(best.request_throughput / best.rate)} of the offered rate"
    heavier = rated[rated.index(best) + 1 :]
    if heavier:
        text += f"; heavier loads ({', '.join(p.label for p in heavier)}) did not raise it"
    return [text + "."]


def _failures(points: Sequence[ServePoint]) -> list[str]:
    failing = [p for p in points if (p.failed or 0) > 0]
    if not failing:
        return ["No request failed."] if any(p.completed for p in points) else []
    total = sum(p.failed or 0 for p in failing)
    errors: Counter[str] = Counter()
    for point in failing:
        errors.update(point.errors)
    text = f"{fmt_count(total)} requests failed (at {', '.join(p.label for p in failing)})"
    if errors:
        message, count = errors.most_common(1)[0]
        short = message if len(message) <= 160 else message[:157] + "..."
        text += f"; the most frequent error, {count} times: “{short}”"
    return [text + "."]


def slo_text(slo: Any) -> str:
    """{'ttft_ms': 2000} -> 'TTFT ≤ 2000 ms'."""
    if not isinstance(slo, Mapping) or not slo:
        return ""
    parts = []
    for key, bound in slo.items():
        value = num(bound)
        name = str(key).removesuffix("_ms").upper()
        parts.append(f"{name} ≤ {value:g} ms" if value is not None else f"{name} ≤ {bound}")
    return ", ".join(parts)


def _goodput(points: Sequence[ServePoint]) -> list[str]:
    scored = [p for p in points if p.value("request_goodput") is not None]
    if not scored:
        return []
    best = max(scored, key=lambda p: p.value("request_goodput") or 0.0)
    goodput = best.value("request_goodput") or 0.0
    text = f"Under the SLO ({slo_text(best.metrics.get('slo')) or 'as configured'})"
    if len(points) == 1:
        text += f" goodput was {fmt(goodput)} req/s"
    else:
        text += f" goodput peaked at {fmt(goodput)} req/s at {best.label}"
    if best.request_throughput:
        there = "" if len(points) == 1 else " there"
        text += f", {fmt_pct(goodput / best.request_throughput)} of the requests completed{there}"
    return [text + "."]


def _send_lag(points: Sequence[ServePoint], tail: str | None) -> list[str]:
    stat = tail or "mean"
    lags = [(p.stat("send_lag", stat), p) for p in points]
    known = [(lag, p) for lag, p in lags if lag is not None]
    if not known:
        return []
    lag, point = max(known, key=lambda item: item[0])
    if lag < LAG_NOTE_MS:
        return []
    origin = points[0].metrics.get("latency_origin")
    consequence = (
        "latencies count from the actual send, so that delay is not in TTFT and E2EL"
        if origin == "sent"
        else "latencies count from the scheduled send time, so that delay is part of TTFT "
        "and E2EL, as users would feel it"
    )
    return [
        f"The load generator fell behind its schedule by up to {fmt(lag)} ms ({stat} send "
        f"lag at {point.label}); {consequence}."
    ]

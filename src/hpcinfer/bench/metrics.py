"""Serving-benchmark metrics (TTFT, TPOT, ITL, E2EL, throughput, goodput) as `vllm bench serve`
defines them, so a figure from `hpcinfer bench serve` can be set beside one from vLLM.

The definitions follow `vllm.benchmarks.serve.calculate_metrics` (vLLM 0.32):

- TTFT: send -> first streamed chunk that carries tokens.
- E2EL: send -> last streamed chunk that carries tokens (not the `[DONE]` or usage chunk).
- TPOT, per request: `(E2EL - TTFT) / (output_tokens - 1)`, left out of the TPOT statistics
  when `output_tokens <= 1` (counted as 0 for goodput, as vLLM does).
- ITL: every gap between consecutive token-carrying chunks of every request, pooled.
- mean, median, std (population, numpy's `ddof=0`) and percentiles (numpy's default
  "linear" interpolation), in milliseconds; an empty sample gives 0.0, as in vLLM.
- throughputs and goodput divide by the benchmark's wall-clock duration; failed requests
  count only in `failed`.

One deliberate difference: by default TTFT and E2EL count from the *scheduled* send time,
not from the moment the client actually sent. vLLM starts its clock inside the request
function, after any wait for a concurrency slot and after any lag of its own event loop, so
a client that falls behind its arrival schedule hides the queueing its users would see
(coordinated omission). `from_scheduled=False` gives vLLM's figures. TPOT and ITL are
differences of token times and do not depend on the origin. The mean, median and sums are
computed the way numpy computes them (pairwise summation), so figures agree with vLLM's to
the last bit where numpy's algorithm is unchanged, without numpy being a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
"""The latencies a goodput SLO may bound, in milliseconds (vLLM's `--goodput` names + `_ms`)."""

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
"""The per-token and per-request latencies every summary reports, in vLLM's order."""

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class RequestTiming:
    """What the load generator saw of one request; every time on one monotonic clock, seconds.

    `scheduled_s` is when the arrival schedule said to send, `sent_s` when the request really
    left (later when the client lagged or waited for a concurrency slot). `chunk_times_s` holds
    the arrival time of every streamed chunk that carried tokens, the first included, so ITL is
    its gaps; `first_token_s` and `end_s` are the first and last of them for a streamed
    response (use `from_chunks`). A request whose stream never carried a token is a failure
    (`ok=False`), as in vLLM: there is no TTFT to report.
    """

    scheduled_s: float
    sent_s: float
    first_token_s: float | None = None
    chunk_times_s: Sequence[float] = field(default_factory=tuple)
    end_s: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    ok: bool = True
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.ok:
            return
        if self.first_token_s is None or self.end_s is None:
            raise ValueError(
                "a successful request needs first_token_s and end_s; a response that carried "
                "no token is a failure (ok=False, error=...)"
            )
        if self.end_s < self.first_token_s:
            raise ValueError(
                f"end_s ({self.end_s}) is before first_token_s ({self.first_token_s}): "
                "end_s is the time of the last token chunk"
            )
        if self.prompt_tokens < 0 or self.output_tokens < 0:
            raise ValueError("prompt_tokens and output_tokens count tokens: use 0 or more")

    @classmethod
    def from_chunks(
        cls,
        scheduled_s: float,
        sent_s: float,
        chunk_times_s: Sequence[float],
        prompt_tokens: int,
        output_tokens: int,
    ) -> RequestTiming:
        """A streamed request: first token and end are its first and last token chunks,
        exactly where vLLM's request function stops its TTFT and latency clocks."""
        chunks = tuple(chunk_times_s)
        if not chunks:
            return cls(
                scheduled_s=scheduled_s,
                sent_s=sent_s,
                prompt_tokens=prompt_tokens,
                ok=False,
                error="the stream carried no token",
            )
        return cls(
            scheduled_s=scheduled_s,
            sent_s=sent_s,
            first_token_s=chunks[0],
            chunk_times_s=chunks,
            end_s=chunks[-1],
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
        )

    @classmethod
    def failed(cls, scheduled_s: float, sent_s: float, error: str) -> RequestTiming:
        """A request that failed (HTTP error, broken stream, timeout): data, not an exception."""
        return cls(scheduled_s=scheduled_s, sent_s=sent_s, ok=False, error=error)


# ---------------------------------------------------------------------------------------
# numpy's statistics, in plain Python (numpy is not a dependency of hpcinfer's core)

_PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE


def _pairwise_sum(values: Sequence[float], start: int, count: int) -> float:
    """numpy's pairwise summation of float64 (`DOUBLE_pairwise_sum`): 8 accumulators up to
    128 values, halving above, so sums round as np.sum's do."""
    if count < 8:
        total = -0.0
        for i in range(start, start + count):
            total += values[i]
        return total
    if count <= _PAIRWISE_BLOCK:
        acc = [values[start + j] for j in range(8)]
        i = 8
        stop = count - count % 8
        while i < stop:
            for j in range(8):
                acc[j] += values[start + i + j]
            i += 8
        total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        while i < count:
            total += values[start + i]
            i += 1
        return total
    half = count // 2
    half -= half % 8
    return _pairwise_sum(values, start, half) + _pairwise_sum(values, start + half, count - half)


def _sum(values: Sequence[float]) -> float:
    return 0.0 + _pairwise_sum(values, 0, len(values))


def _mean(values: Sequence[float]) -> float:
    """np.mean: the pairwise sum divided by the count."""
    return _sum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    """np.std with ddof=0 (population): sqrt(mean((x - mean)^2)), as vLLM reports it."""
    mean = _mean(values)
    return math.sqrt(_sum([(x - mean) * (x - mean) for x in values]) / len(values))


def _median(ordered: Sequence[float]) -> float:
    """np.median: the middle value, or the mean of the two middle values."""
    n = len(ordered)
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(ordered: Sequence[float], p: float) -> float:
    """np.percentile(method="linear") on sorted values: index (n-1)*p/100, interpolated with
    numpy's `_lerp` (which computes from the upper neighbour when the fraction >= 0.5)."""
    n = len(ordered)
    virtual = (n - 1) * (p / 100)
    if virtual >= n - 1:
        return ordered[-1]
    if virtual < 0:
        return ordered[0]
    below = math.floor(virtual)
    t = virtual - below
    a, b = ordered[below], ordered[below + 1]
    diff = b - a
    if t >= 0.5:
        return b - diff * (1 - t)
    return a + diff * t


def percentile_key(p: float) -> str:
    """'p99' for 99, 'p99.9' for 99.9: the suffix vLLM uses in its result JSON."""
    return f"p{int(p)}" if int(p) == p else f"p{p}"


def describe(values: Sequence[float], percentiles: Sequence[float], name: str) -> dict[str, float]:
    """mean/median/std/percentiles of `values` (seconds) as `{stat}_{name}_ms` keys.

    An empty sample reports 0.0 for everything, as vLLM's `np.mean(values or 0)` does; the
    `{name}_count` key says how many values there were, so a 0.0 cannot pass for a figure.
    """
    sample = list(values) if values else [0.0]
    ordered = sorted(sample)
    out = {
        f"mean_{name}_ms": _mean(sample) * 1000,
        f"median_{name}_ms": _median(ordered) * 1000,
        f"std_{name}_ms": _std(sample) * 1000,
    }
    for p in percentiles:
        out[f"{percentile_key(p)}_{name}_ms"] = percentile(ordered, p) * 1000
    out[f"{name}_count"] = len(values)
    return out


# ---------------------------------------------------------------------------------------
# the summary


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    chosen = tuple(float(p) for p in percentiles)
    for p in chosen:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p:g} is outside 0..100")
    return chosen


def _check_slo(slo: Mapping[str, float] | None) -> dict[str, float]:
    if not slo:
        return {}
    checked: dict[str, float] = {}
    for key, value in slo.items():
        if key not in SLO_KEYS:
            raise ValueError(f"unknown SLO {key!r}: use {', '.join(SLO_KEYS)}")
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"SLO {key} must be a finite number of milliseconds >= 0, not {value}")
        checked[key] = number
    return checked


def summarize(
    timings: Iterable[RequestTiming],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slo: Mapping[str, float] | None = None,
    *,
    from_scheduled: bool = True,
) -> dict[str, Any]:
    """The figures of one benchmark run, keyed as vLLM's result JSON keys them.

    `duration_s` is the run's wall-clock time (first scheduled send to last response), the
    denominator of every throughput and of goodput. `slo` bounds some of ttft_ms, tpot_ms,
    e2el_ms; a request is good when it meets every bound given (value <= bound), and
    `request_goodput` is good requests per second (None without an SLO, as in vLLM).
    `from_scheduled` picks the origin of TTFT and E2EL (see the module docstring); the
    `send_lag` statistics (sent - scheduled) show how far the client fell behind.
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, not {duration_s}")
    chosen = _check_percentiles(percentiles)
    bounds = _check_slo(slo)

    ttfts: list[float] = []
    tpots: list[float] = []
    goodput_tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    send_lags: list[float] = []
    completed = failed = total_input = total_output = 0
    for timing in timings:
        if not timing.ok:
            failed += 1
            continue
        assert timing.first_token_s is not None and timing.end_s is not None  # __post_init__
        origin = timing.scheduled_s if from_scheduled else timing.sent_s
        ttft = timing.first_token_s - origin
        e2el = timing.end_s - origin
        tpot = 0.0
        if timing.output_tokens > 1:
            tpot = (e2el - ttft) / (timing.output_tokens - 1)
            tpots.append(tpot)
        goodput_tpots.append(tpot)
        chunks = timing.chunk_times_s
        itls.extend(chunks[i] - chunks[i - 1] for i in range(1, len(chunks)))
        ttfts.append(ttft)
        e2els.append(e2el)
        send_lags.append(timing.sent_s - timing.scheduled_s)
        completed += 1
        total_input += timing.prompt_tokens
        total_output += timing.output_tokens

    goodput: float | None = None
    if bounds:
        measured = {"ttft_ms": ttfts, "tpot_ms": goodput_tpots, "e2el_ms": e2els}
        # compare in seconds against bound/1000, exactly as vLLM does, so ties agree
        limits = [(measured[key], bound / 1000) for key, bound in bounds.items()]
        good = sum(all(limit >= values[i] for values, limit in limits) for i in range(completed))
        goodput = good / duration_s

    summary: dict[str, Any] = {
        "latency_origin": "scheduled" if from_scheduled else "sent",
        "duration": duration_s,
        "completed": completed,
        "failed": failed,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": completed / duration_s,
        "request_goodput": goodput,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "percentiles": list(chosen),
        "slo": dict(bounds) or None,
    }
    for name, values in zip(LATENCY_METRICS, (ttfts, tpots, itls, e2els), strict=True):
        summary.update(describe(values, chosen, name))
    summary.update(describe(send_lags, chosen, "send_lag"))
    return summary


# ---------------------------------------------------------------------------------------
# option parsing (the CLI's --slo and --percentiles)


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text!r} must be finite")
    return value


def parse_slo(text: str) -> dict[str, float]:
    """'ttft=2000,tpot=100' -> {'ttft_ms': 2000.0, 'tpot_ms': 100.0}; values in milliseconds.

    Accepts vLLM's `ttft:2000` spelling too, an optional `ms` suffix on a value and `_ms` on
    a name, and pairs separated by commas or spaces.
    """
    pairs = [part for part in text.replace(",", " ").split() if part]
    if not pairs:
        raise ValueError("empty SLO: give e.g. ttft=2000,tpot=100 (milliseconds)")
    names = ", ".join(key.removesuffix("_ms") for key in SLO_KEYS)
    slo: dict[str, float] = {}
    for pair in pairs:
        sep = "=" if "=" in pair else ":"
        name, found, raw = pair.partition(sep)
        if not found or not name or not raw:
            raise ValueError(f"SLO {pair!r}: write NAME=MILLISECONDS, e.g. ttft=2000 ({names})")
        key = name.strip().lower().removesuffix("_ms") + "_ms"
        if key not in SLO_KEYS:
            raise ValueError(f"SLO {pair!r}: unknown name {name!r}; use {names}")
        if key in slo:
            raise ValueError(f"SLO {pair!r}: {name} is given twice")
        value = _number(raw.strip().lower().removesuffix("ms"), f"SLO {pair!r}")
        if value < 0:
            raise ValueError(f"SLO {pair!r}: a latency bound cannot be negative")
        slo[key] = value
    return slo


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'50,90,99' -> (50.0, 90.0, 99.0), in the order given; each in 0..100, no repeats."""
    parts = [part for part in text.replace(",", " ").split() if part]
    if not parts:
        raise ValueError("no percentiles: give e.g. 50,90,99")
    chosen: list[float] = []
    for part in parts:
        p = _number(part.strip().lower().removeprefix("p"), f"percentile {part!r}")
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {part!r} is outside 0..100")
        if p in chosen:
            raise ValueError(f"percentile {part!r} is given twice")
        chosen.append(p)
    return tuple(chosen)

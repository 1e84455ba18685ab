"""A sweep to saturation, as GuideLLM's `sweep` profile runs one, and where latency turns.

The sweep measures two loads first: one request at a time (synchronous: the latency of an
idle server, and its rate) and everything at once (throughput: the most the servers
complete per second). It then runs `count` request rates evenly spaced between the two
(the last one the throughput rate) and finds the knee: the highest rate up to which every
point kept TTFT and TPOT at p50 and p99 within `factor` times the synchronous run's (plus
KNEE_MARGIN_MS, for timer noise), or within the SLO bounds when the user gave some, with no
request failed. The rates depend on the first two measurements, so the plan is made after
them (`sweep_rates`); the knee is found from the figures alone (`find_knee`), so a report
can explain it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcinfer.bench.metrics import percentile_key

SYNCHRONOUS = "synchronous"
THROUGHPUT = "throughput"
RATE = "rate"
DEFAULT_RATES = 5
KNEE_FACTOR = 2.0
KNEE_MARGIN_MS = 2.0
KNEE_METRICS = ("ttft", "tpot")
_STATS = (("p50", "median"), ("p99", percentile_key(99)))


def sweep_rates(synchronous_rate: float, throughput_rate: float, count: int) -> list[float]:
    """`count` request rates evenly spaced above the synchronous rate up to the throughput
    rate (3 significant digits, duplicates dropped: a server that gains nothing from
    concurrency gives one rate)."""
    if count < 1:
        raise ValueError(f"a sweep needs 1 or more rates between its ends, not {count}")
    for name, value in (("synchronous", synchronous_rate), ("throughput", throughput_rate)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"the {name} run measured no request rate ({value}): no request completed"
            )
    low, high = synchronous_rate, max(throughput_rate, synchronous_rate)
    rates = [float(f"{low + (high - low) * i / count:.3g}") for i in range(1, count + 1)]
    return list(dict.fromkeys(rates))


@dataclass(frozen=True)
class Excess:
    """One figure of a point above its limit."""

    key: str
    """The summarize() key, e.g. p99_ttft_ms, or 'failed'."""
    value: float
    limit: float

    def describe(self) -> str:
        if self.key == "failed":
            return f"{self.value:g} requests failed"
        name, stat = _key_name(self.key)
        return f"{name} {stat} {self.value:.1f} ms (limit {self.limit:.1f} ms)"


def _key_name(key: str) -> tuple[str, str]:
    stat, metric, _ = key.split("_")
    return metric.upper(), "p50" if stat == "median" else stat


def limits(
    base: Mapping[str, Any] | None, slo: Mapping[str, float] | None, factor: float = KNEE_FACTOR
) -> dict[str, float]:
    """The bound of each figure the knee watches: {'median_ttft_ms': 104.0, ...}. From the
    SLO when given (its metrics, at p50 and p99), else `factor` times the synchronous run's
    figures (`base`, summarize() keys) plus KNEE_MARGIN_MS; figures it lacks are not watched."""
    bounds: dict[str, float] = {}
    if slo:
        for name, bound in slo.items():
            metric = name.removesuffix("_ms")
            for _, stat in _STATS:
                bounds[f"{stat}_{metric}_ms"] = float(bound)
        return bounds
    for metric in KNEE_METRICS:
        if base is None or base.get(f"{metric}_count") == 0:
            continue
        for _, stat in _STATS:
            value = base.get(f"{stat}_{metric}_ms")
            if isinstance(value, int | float):
                bounds[f"{stat}_{metric}_ms"] = factor * float(value) + KNEE_MARGIN_MS
    return bounds


def excesses(metrics: Mapping[str, Any], bounds: Mapping[str, float]) -> list[Excess]:
    """The figures of one point above their bounds, and its failures."""
    found = []
    failed = metrics.get("failed") or 0
    if failed:
        found.append(Excess("failed", float(failed), 0.0))
    for key, limit in bounds.items():
        value = metrics.get(key)
        metric = key.split("_")[1]
        if metrics.get(f"{metric}_count") == 0 or not isinstance(value, int | float):
            continue
        if value > limit:
            found.append(Excess(key, float(value), limit))
    return found


def criterion(slo: Mapping[str, float] | None, factor: float = KNEE_FACTOR) -> str:
    """The knee's rule in words, for the result file and the report."""
    if slo:
        bounds = ", ".join(
            f"{name.removesuffix('_ms').upper()} ≤ {bound:g} ms" for name, bound in slo.items()
        )
        return f"p50 and p99 within the SLO ({bounds}), no request failed"
    return (
        f"TTFT and TPOT p50 and p99 within {factor:g}x the synchronous run's "
        f"(+{KNEE_MARGIN_MS:g} ms), no request failed"
    )


def find_knee(
    points: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None,
    slo: Mapping[str, float] | None = None,
    factor: float = KNEE_FACTOR,
) -> dict[str, Any]:
    """The knee of a sweep from its rate points (`{"label", "rate", "metrics"}`, any order)
    and the synchronous run's metrics (`base`).

    Returns `{"rate", "label"}` of the highest rate before the first (lowest) rate that
    broke the rule (None when the lowest did), `"turned_at"`: that rate's label, rate and
    the figures over their limits (None when every rate kept to the rule), and the rule
    itself (`"criterion"`)."""
    bounds = limits(base, slo, factor)
    ordered = sorted(points, key=lambda point: float(point["rate"]))
    knee: Mapping[str, Any] | None = None
    turned: dict[str, Any] | None = None
    for point in ordered:
        over = excesses(point["metrics"], bounds)
        if over:
            turned = {
                "label": point["label"],
                "rate": point["rate"],
                "over": [
                    {"key": e.key, "value": e.value, "limit": e.limit, "text": e.describe()}
                    for e in over
                ],
            }
            break
        knee = point
    return {
        "rate": None if knee is None else knee["rate"],
        "label": None if knee is None else knee["label"],
        "turned_at": turned,
        "criterion": criterion(slo, factor),
        "limits": bounds,
    }


def describe_knee(knee: Mapping[str, Any], top_label: str | None = None) -> str:
    """One plain sentence naming the knee, for the console and the report."""
    turned = knee.get("turned_at")
    rule = knee.get("criterion") or "latency within its limits"
    if turned is None:
        where = f" up to {knee['label']}" if knee.get("label") else ""
        top = f" (the highest rate measured{f', {top_label}' if top_label else ''})"
        return (
            f"Latency did not turn: every rate of the sweep kept {rule}{where}{top}; the knee "
            "is at or beyond the servers' measured throughput."
        )
    why = "; ".join(str(over.get("text")) for over in turned.get("over", [])) or "over its limit"
    if knee.get("label") is None:
        return (
            f"Latency turned already at the lowest rate of the sweep, {turned['label']} "
            f"({why}): no rate kept {rule}."
        )
    return (
        f"The knee is at {knee['label']}: the highest rate that kept {rule}; at "
        f"{turned['label']} latency turned ({why})."
    )

"""The points of a serving sweep, read from `serve.json`, with the names people use for loads.

A point's metrics are the dict `hpcinfer.bench.metrics.summarize` writes. A statistic whose
sample was empty (e.g. TPOT when every answer had one token) is stored as 0.0 with a
`{name}_count` of 0; here it reads as None, so the page says "n/a" instead of "0 ms".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinfer.bench.metrics import percentile_key
from hpcinfer.report.page import malformed
from hpcinfer.report.values import get_num, num

_PERCENTILE_KEY = re.compile(r"^p(\d+(?:\.\d+)?)_ttft_ms$")


@dataclass(frozen=True)
class ServePoint:
    """One point of a sweep: its load and its figures (None where not measured)."""

    label: str
    description: str
    mode: str | None
    rate: float | None
    concurrency: int | None
    metrics: Mapping[str, Any]
    server_metrics: Mapping[str, Any] | None = None
    errors: Mapping[str, int] = field(default_factory=dict)
    role: str | None = None
    """In a sweep to saturation: synchronous, throughput or rate."""

    def value(self, key: str) -> float | None:
        return get_num(self.metrics, key)

    def stat(self, name: str, stat: str | None) -> float | None:
        """`stat` ('mean', 'median', 'std', 'p99') of latency `name` in ms; None when the
        sample was empty, the key is missing or no stat is given."""
        if stat is None or get_num(self.metrics, f"{name}_count") == 0:
            return None
        return self.value(f"{stat}_{name}_ms")

    @property
    def completed(self) -> float | None:
        return self.value("completed")

    @property
    def failed(self) -> float | None:
        return self.value("failed")

    @property
    def request_throughput(self) -> float | None:
        return self.value("request_throughput")

    @property
    def output_throughput(self) -> float | None:
        return self.value("output_throughput")


def load_label(load: Mapping[str, Any], fallback: str) -> str:
    """'8 req/s', 'concurrency 4', 'all at once': what a person calls the load."""
    mode = load.get("mode")
    if load.get("role") == "synchronous":
        return "synchronous (one at a time)"
    if load.get("role") == "throughput":
        return "throughput (all at once)"
    rate = num(load.get("rate"))
    limit = num(load.get("max_concurrency"))
    if mode == "concurrency" and limit is not None:
        return f"concurrency {limit:g}"
    if rate is not None and mode != "all-at-once":
        return f"{rate:g} req/s"
    if mode == "all-at-once" or (mode == "rate" and load.get("rate") is None):
        return "all at once" + (f" (max {limit:g})" if limit is not None else "")
    return fallback


def read_points(path: Path, document: Mapping[str, Any]) -> list[ServePoint]:
    """The sweep points of a serve document, in sweep order; a structural error names the
    file and field."""
    runs = document.get("runs")
    if not isinstance(runs, list):
        raise malformed(path, "'runs'", "a list of sweep points", runs)
    points: list[ServePoint] = []
    seen: dict[str, int] = {}
    for index, run in enumerate(runs):
        where = f"runs[{index}]"
        if not isinstance(run, Mapping):
            raise malformed(path, where, "an object", run)
        metrics = run.get("metrics")
        if not isinstance(metrics, Mapping):
            raise malformed(
                path, f"{where}.metrics", "an object (the summarize() figures)", metrics
            )
        load = run.get("load") if isinstance(run.get("load"), Mapping) else {}
        assert isinstance(load, Mapping)
        given = run.get("label")
        fallback = str(given) if given not in (None, "") else f"point {index + 1}"
        label = load_label(load, fallback)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} (#{seen[label]})"
        server = run.get("server_metrics")
        errors = run.get("errors")
        limit = num(load.get("max_concurrency"))
        points.append(
            ServePoint(
                label=label,
                description=str(load.get("description") or fallback),
                mode=str(load["mode"]) if load.get("mode") is not None else None,
                rate=num(load.get("rate")),
                concurrency=int(limit) if limit is not None else None,
                metrics=metrics,
                server_metrics=server if isinstance(server, Mapping) else None,
                errors={str(k): int(v) for k, v in errors.items() if num(v) is not None}
                if isinstance(errors, Mapping)
                else {},
                role=str(load["role"]) if load.get("role") is not None else None,
            )
        )
    return points


def percentile_names(points: Sequence[ServePoint]) -> list[str]:
    """The percentiles the run reported ('p50', 'p90', 'p99'), in ascending order."""
    values: set[float] = set()
    for point in points:
        listed = point.metrics.get("percentiles")
        if isinstance(listed, list):
            values.update(p for p in (num(x) for x in listed) if p is not None)
        else:
            for key in point.metrics:
                match = _PERCENTILE_KEY.match(str(key))
                if match:
                    values.add(float(match.group(1)))
    return [percentile_key(p) for p in sorted(values)]


def top_percentile(points: Sequence[ServePoint]) -> str | None:
    """The tail percentile to quote: p99 when reported, else the highest one."""
    names = percentile_names(points)
    if "p99" in names:
        return "p99"
    return names[-1] if names else None

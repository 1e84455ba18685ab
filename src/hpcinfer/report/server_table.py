"""The servers' own figures for one load point (Prometheus /metrics before and after), as a
table a person can read: the queue, KV-cache use, token counters and the servers' own mean
latencies.

`hpcinfer.bench.prometheus.server_metrics` writes `{"before"|"after": {"total": {...},
"endpoints": {url: {...} | None}}, "delta": {"total": {...}, "endpoints": {...}}}`; the
fleet totals are shown. A flat `{"before": {...}, "after": {...}, "delta": {...}}` (what
results.py documents in general) is shown key by key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcinfer.report.page import Table
from hpcinfer.report.values import fmt, fmt_count, fmt_pct, num

NAMES = {
    "num_requests_waiting": "requests waiting (the queue)",
    "num_requests_running": "requests running",
    "kv_cache_usage_perc": "KV-cache use",
    "prompt_tokens_total": "prompt tokens (counter)",
    "generation_tokens_total": "generated tokens (counter)",
    "request_success_total": "requests finished (counter)",
    "num_preemptions_total": "preemptions (counter)",
    "server_mean_ttft_ms": "servers' own mean TTFT (ms)",
    "server_mean_itl_ms": "servers' own mean ITL (ms)",
    "server_mean_e2el_ms": "servers' own mean E2EL (ms)",
}
"""Known keys in the order people read them; others follow under their own names."""
_SHARES = frozenset({"kv_cache_usage_perc"})
_RAW_HISTOGRAM = ("_seconds_sum", "_seconds_count")  # summarised by the server_mean_* keys


def _flat(mapping: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(mapping, Mapping):
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                out.update(_flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{str(key).removeprefix('vllm:')}"] = value
    return out


def _show(key: str, value: Any) -> str:
    """A share as a percentage, a latency as a figure, a count (requests, tokens) exactly."""
    if key in _SHARES and num(value) is not None:
        return fmt_pct(num(value))
    return fmt(value) if key.endswith("_ms") else fmt_count(value)


def server_table(label: str, server: Mapping[str, Any]) -> Table:
    """The table of one load point's server metrics."""
    parts = {k: server.get(k) for k in ("before", "after", "delta")}
    fleet = any(
        isinstance(p, Mapping) and isinstance(p.get("total"), Mapping) for p in parts.values()
    )
    note = "Scraped from the servers just before and just after this load point."
    if fleet:
        endpoints = {}
        for part in (parts["before"], parts["after"]):
            if isinstance(part, Mapping) and isinstance(part.get("endpoints"), Mapping):
                endpoints.update(part["endpoints"])
        answered = sum(1 for v in endpoints.values() if isinstance(v, Mapping))
        note += (
            f" Fleet totals over the {answered} of {len(endpoints)} endpoint(s) that answered "
            "/metrics (KV-cache use averaged); serve.json holds each endpoint's figures."
        )
        before, after, delta = (
            _flat(p.get("total")) if isinstance(p, Mapping) else {} for p in parts.values()
        )
    else:
        before, after, delta = (_flat(p) for p in parts.values())
    keys = [key for key in NAMES if key in before or key in after or key in delta]
    keys += [
        key
        for key in dict.fromkeys([*before, *after, *delta])
        if key not in NAMES and not key.endswith(_RAW_HISTOGRAM)
    ]
    rows = []
    for key in keys:
        change = delta.get(key)
        old, new = num(before.get(key)), num(after.get(key))
        if change is None and old is not None and new is not None and key not in NAMES:
            change = new - old  # an unknown flat metric: show how it moved
        rows.append(
            (
                NAMES.get(key, key),
                _show(key, before.get(key)) if key in before else "",
                _show(key, after.get(key)) if key in after else "",
                _show(key, change) if change is not None else "",
            )
        )
    return Table(
        title=f"Server metrics at {label}",
        columns=("metric (Prometheus /metrics)", "before", "after", "during the point"),
        rows=tuple(rows),
        note=note + " During the point: how much a counter grew, or the servers' own mean.",
    )

"""The servers' own view of a benchmark: vLLM's Prometheus `/metrics`, scraped before and after.

A client-side benchmark sees latencies; only the server sees its queue, its KV-cache use and
the tokens it really processed. `hpcinfer bench serve` scrapes every endpoint's `/metrics`
before and after each sweep point and keeps the vLLM metrics that explain a result:

- gauges: `num_requests_running`, `num_requests_waiting` (the queue), `kv_cache_usage_perc`
  (0..1; vLLM 0.6 called it `gpu_cache_usage_perc`);
- counters: `prompt_tokens_total`, `generation_tokens_total`, `request_success_total`,
  `num_preemptions_total`, and the `_sum`/`_count` of the histograms
  `time_to_first_token_seconds`, `inter_token_latency_seconds` (older
  `time_per_output_token_seconds`) and `e2e_request_latency_seconds`.

Values are summed over a server's label sets (engines of a data-parallel server, finish
reasons) and over the fleet, except `kv_cache_usage_perc`, a share, which is averaged. The
delta of the counters between the two scrapes is what the servers did during the point (a
counter that went down was reset by a server restart: its delta is the value after, as
Prometheus's `increase()` counts it), with the servers' own mean TTFT/ITL/E2EL over it.
A server without `/metrics`, or one that does not answer within the short timeout, gives
None: the benchmark does not fail for it.
"""

from __future__ import annotations

import http.client
import math
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

SCRAPE_TIMEOUT_S = 2.0
_MAX_BYTES = 16 << 20
_MAX_THREADS = 32
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via http_proxy


@dataclass(frozen=True)
class Sample:
    """One line of the text exposition format: `name{labels} value`."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Kept:
    """A metric the benchmark keeps: its key in the result and its exposition names, newest
    first (the first name a server exposes is used, so a server exposing an old and a new
    name at once is not counted twice)."""

    key: str
    names: tuple[str, ...]
    kind: Literal["gauge", "counter"]
    combine: Literal["sum", "mean"] = "sum"


def _histogram(key: str, *names: str) -> tuple[Kept, Kept]:
    return (
        Kept(f"{key}_sum", tuple(f"vllm:{n}_sum" for n in names), "counter"),
        Kept(f"{key}_count", tuple(f"vllm:{n}_count" for n in names), "counter"),
    )


KEPT: tuple[Kept, ...] = (
    Kept("num_requests_running", ("vllm:num_requests_running",), "gauge"),
    Kept("num_requests_waiting", ("vllm:num_requests_waiting",), "gauge"),
    Kept(
        "kv_cache_usage_perc",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "gauge",
        "mean",
    ),
    Kept("prompt_tokens_total", ("vllm:prompt_tokens_total",), "counter"),
    Kept("generation_tokens_total", ("vllm:generation_tokens_total",), "counter"),
    Kept("request_success_total", ("vllm:request_success_total",), "counter"),
    Kept("num_preemptions_total", ("vllm:num_preemptions_total",), "counter"),
    *_histogram("time_to_first_token_seconds", "time_to_first_token_seconds"),
    *_histogram(
        "inter_token_latency_seconds",
        "inter_token_latency_seconds",
        "time_per_output_token_seconds",
    ),
    *_histogram("e2e_request_latency_seconds", "e2e_request_latency_seconds"),
)
_BY_KEY = {kept.key: kept for kept in KEPT}
_SERVER_MEANS = (
    ("server_mean_ttft_ms", "time_to_first_token_seconds"),
    ("server_mean_itl_ms", "inter_token_latency_seconds"),
    ("server_mean_e2el_ms", "e2e_request_latency_seconds"),
)


# ---------------------------------------------------------------------------------------
# the text exposition format

_NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"
_LINE = re.compile(rf"^({_NAME})(\{{.*\}})?\s+(\S+)(?:\s+\S+)*\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(text: str) -> dict[str, str] | None:
    """`{a="1",b="x\\"y"}` -> {'a': '1', 'b': 'x"y'}; None when it is not a label set."""
    body = text[1:-1]
    labels: dict[str, str] = {}
    position = 0
    while position < len(body):
        match = _LABEL.match(body, position)
        if match is None:
            return None if body[position:].strip() else labels
        raw = match.group(2)
        labels[match.group(1)] = re.sub(r"\\.", lambda m: _ESCAPES.get(m.group(0), m.group(0)), raw)
        position = match.end()
    return labels


def _value(text: str) -> float | None:
    try:
        return float(text)  # float() reads NaN, +Inf, -Inf as the format writes them
    except ValueError:
        return None


def parse_exposition(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (0.0.4, and OpenMetrics' subset of it):
    comments, `# HELP`/`# TYPE` and lines that do not parse are skipped, not fatal, so one
    odd metric of a newer server cannot cost the others. Exemplars and timestamps are
    dropped."""
    samples: list[Sample] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exemplar = line.find(" # ")  # OpenMetrics: `value # {trace_id="..."} 1.0`
        if exemplar != -1 and "}" in line[:exemplar]:
            line = line[:exemplar]
        match = _LINE.match(line)
        if match is None:
            continue
        name, label_text, value_text = match.groups()
        labels = _labels(label_text) if label_text else {}
        value = _value(value_text)
        if labels is None or value is None:
            continue
        samples.append(Sample(name, labels, value))
    return samples


# ---------------------------------------------------------------------------------------
# what one server says, and the fleet


def _combine(values: Sequence[float], how: str) -> float:
    total = math.fsum(values)
    return total / len(values) if how == "mean" else total


def kept_metrics(samples: Sequence[Sample]) -> dict[str, float]:
    """The kept vLLM metrics of one server: each summed (or averaged) over its label sets;
    metrics the server does not expose are left out."""
    by_name: dict[str, list[float]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample.value)
    found: dict[str, float] = {}
    for kept in KEPT:
        for name in kept.names:
            if name in by_name:
                found[kept.key] = _combine(by_name[name], kept.combine)
                break
    return found


@dataclass(frozen=True)
class Scrape:
    """One scrape of every endpoint: its kept metrics, or None when it gave none."""

    per_endpoint: Mapping[str, Mapping[str, float] | None]

    @property
    def any(self) -> bool:
        """Whether at least one endpoint answered /metrics."""
        return any(values is not None for values in self.per_endpoint.values())

    def total(self) -> dict[str, float]:
        """The fleet's figures: summed over endpoints (kv_cache_usage_perc averaged) over
        those that expose each metric."""
        values: dict[str, list[float]] = {}
        for metrics in self.per_endpoint.values():
            for key, value in (metrics or {}).items():
                values.setdefault(key, []).append(value)
        return {
            kept.key: _combine(values[kept.key], kept.combine)
            for kept in KEPT
            if kept.key in values
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total(),
            "endpoints": {
                url: None if m is None else dict(m) for url, m in self.per_endpoint.items()
            },
        }


def counter_delta(
    before: Mapping[str, float] | None, after: Mapping[str, float] | None
) -> dict[str, float] | None:
    """What the counters grew by (a reset counts from zero), plus the servers' own mean
    latencies over the interval in ms when their histograms moved; None without both."""
    if before is None or after is None:
        return None
    delta: dict[str, float] = {}
    for key, value in after.items():
        if _BY_KEY[key].kind != "counter" or key not in before:
            continue
        grown = value - before[key]
        delta[key] = value if grown < 0 else grown
    for out_key, histogram in _SERVER_MEANS:
        count = delta.get(f"{histogram}_count")
        total = delta.get(f"{histogram}_sum")
        if count and total is not None:
            delta[out_key] = total / count * 1000
    return delta


def server_metrics(before: Scrape, after: Scrape) -> dict[str, Any] | None:
    """The `server_metrics` entry of a serve result: both scrapes and their delta, total and
    per endpoint; None when no endpoint exposed /metrics at all."""
    if not (before.any or after.any):
        return None
    return {
        "before": before.as_dict(),
        "after": after.as_dict(),
        "delta": {
            "total": counter_delta(before.total(), after.total()) or {},
            "endpoints": {
                url: counter_delta(before.per_endpoint.get(url), metrics)
                for url, metrics in after.per_endpoint.items()
            },
        },
    }


# ---------------------------------------------------------------------------------------
# fetching


def fetch_metrics(
    base_url: str, timeout_s: float = SCRAPE_TIMEOUT_S, api_key: str | None = None
) -> dict[str, float] | None:
    """GET {base_url}/metrics and keep the vLLM metrics; None when there is no answer."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics", method="GET")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            body: bytes = response.read(_MAX_BYTES)
    except (OSError, ValueError, http.client.HTTPException, urllib.error.URLError):
        return None
    return kept_metrics(parse_exposition(body.decode("utf-8", errors="replace")))


def scrape(
    urls: Sequence[str], timeout_s: float = SCRAPE_TIMEOUT_S, api_key: str | None = None
) -> Scrape:
    """Every endpoint's /metrics at once (a hung server costs one timeout, not one each)."""
    if not urls:
        return Scrape({})
    with ThreadPoolExecutor(max_workers=min(len(urls), _MAX_THREADS)) as pool:
        found = list(pool.map(lambda url: fetch_metrics(url, timeout_s, api_key), urls))
    return Scrape(dict(zip(urls, found, strict=True)))

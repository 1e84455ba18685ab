"""Realistic benchmark result documents for the report tests, made with the real code that
benchmarks use (`summarize`, `case_result`, `fom_sum`, `result_document`), so the report is
tested against the documented shapes, not hand-typed JSON."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hpcinfer.bench import prometheus
from hpcinfer.bench.fom import FOM_PRESETS, ModelShape, case_result, fom_sum
from hpcinfer.bench.metrics import RequestTiming, summarize
from hpcinfer.bench.results import result_document, write_result

COMMAND = ["hpcinfer", "bench", "serve", "--rates", "1,4,8,16", "--api-key", "sk-SECRET-1"]
CAPACITY = 9.0  # req/s the simulated server sustains: 16 req/s overloads it
SLO = {"ttft_ms": 500.0, "tpot_ms": 50.0}


def _server_metrics(rate: float, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """What `bench serve` records from two servers' /metrics around a point (the second
    server gave no answer the first time)."""
    tokens = float(metrics["total_output_tokens"])
    before = {
        "num_requests_running": 0.0,
        "num_requests_waiting": 0.0,
        "kv_cache_usage_perc": 0.0,
        "generation_tokens_total": 5000.0,
        "time_to_first_token_seconds_sum": 10.0,
        "time_to_first_token_seconds_count": 100.0,
    }
    after = {
        "num_requests_running": 1.0,
        "num_requests_waiting": 3.0 if rate >= 16 else 0.0,
        "kv_cache_usage_perc": 0.25,
        "generation_tokens_total": 5000.0 + tokens / 2,
        "time_to_first_token_seconds_sum": 10.0 + 0.9 * metrics["completed"] / 2,
        "time_to_first_token_seconds_count": 100.0 + metrics["completed"] / 2,
    }
    urls = ("http://127.0.0.1:8000", "http://127.0.0.1:8001")
    return prometheus.server_metrics(
        prometheus.Scrape({urls[0]: before, urls[1]: None}),
        prometheus.Scrape({urls[0]: after, urls[1]: after}),
    )


def _sweep_point(rate: float, requests: int = 40, output_tokens: int = 24) -> dict[str, Any]:
    """One rate of a sweep against a server that starts a request at most every
    1/CAPACITY s: below capacity TTFT stays ~40 ms, above it requests queue."""
    timings: list[RequestTiming] = []
    free_at = 0.0
    for i in range(requests):
        scheduled = i / rate
        lag = 0.0005 if rate < 16 else 0.002 * i  # the client falls behind at 16 req/s
        sent = scheduled + lag
        if rate >= 16 and i % 20 == 7:
            timings.append(RequestTiming.failed(scheduled, sent, "HTTP 503: Service Unavailable"))
            continue
        start = max(sent, free_at)
        free_at = start + 1 / CAPACITY
        first = start + 0.040 + 0.001 * (i % 5)
        chunks = [first + 0.012 * k for k in range(output_tokens)]
        timings.append(RequestTiming.from_chunks(scheduled, sent, chunks, 100 + i, output_tokens))
    duration = max(t.end_s for t in timings if t.end_s is not None)
    metrics = summarize(timings, duration, (50, 90, 99), SLO)
    failed = metrics["failed"]
    return {
        "label": f"rate={rate:g}",
        "load": {
            "mode": "rate",
            "rate": rate,
            "burstiness": 1.0,
            "max_concurrency": None,
            "requests": requests,
            "description": f"{requests} requests at {rate:g} req/s, Poisson arrivals, seed 0",
        },
        "metrics": metrics,
        "server_metrics": None if rate < 8 else _server_metrics(rate, metrics),
        "errors": {"HTTP 503: Service Unavailable": failed} if failed else {},
    }


def serve_document(model: str = "tiny", rates: tuple[float, ...] = (1, 4, 8, 16)) -> dict[str, Any]:
    config = {
        "model": model,
        "urls": ["http://127.0.0.1:8000"],
        "percentiles": [50, 90, 99],
        "slo": SLO,
        "api_key": "sk-SECRET-2",
        "input_len": 100,
        "output_len": 24,
    }
    document = result_document("serve", config, {"runs": [_sweep_point(r) for r in rates]})
    document["command"] = list(COMMAND)
    return document


ITERATIONS_S = [1.92, 1.21, 1.18, 1.20, 1.19, 1.22]
"""Offline iteration latencies: a slow first (warm-up) iteration, then steady."""


STARTUP = {
    "imports_s": 2.917,
    "model_load_s": 0.131,
    "kv_cache_s": 2.52,
    "compile_s": 0.0,
    "first_token_s": 0.103,
    "total_s": 12.124,
}
"""An engine's start-up phases as `hpcinfer run` recorded them on the CPU build here."""


def offline_document(model: str = "tiny") -> dict[str, Any]:
    ordered = sorted(ITERATIONS_S)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    input_tokens, output_tokens = 4096, 1024
    mean = statistics.fmean(ITERATIONS_S)
    result = {
        "latency_s": {
            "mean": mean,
            "median": statistics.median(ordered),
            "std": statistics.pstdev(ITERATIONS_S),
            "p50": cut[49],
            "p90": cut[89],
            "p99": cut[98],
        },
        "throughput": (input_tokens + output_tokens) / mean,
        "prefill_tokens_per_s": 61000.0,
        "decode_tokens_per_s": 880.5,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "flops_per_s": 3.2e12,
        "mfu": None,
        "iterations_s": ITERATIONS_S,
    }
    config = {"model": model, "batch_size": 8, "engine_startup": STARTUP}
    document = result_document("offline", config, {"result": result})
    document["command"] = ["hpcinfer", "bench", "offline", "--batch-size", "8"]
    return document


FOM_LATENCIES_S = {"FOM1": 0.61, "FOM2": 2.45, "FOM3": 1.33}


def fom_document(model: str = "tiny", peak_tflops: float | None = None) -> dict[str, Any]:
    preset = FOM_PRESETS["cpu-tiny"]
    results = [
        case_result(case, FOM_LATENCIES_S[case.name], ModelShape(2, 128), peak_tflops=peak_tflops)
        for case in preset.cases
    ]
    total = fom_sum(results)
    cases = [
        {
            "name": r.case.name,
            "input_len": r.case.input_len,
            "output_len": r.case.output_len,
            "batch_size": r.case.batch_size,
            "max_model_len": r.case.max_model_len,
            "latency_s": r.latency_s,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "throughput": r.throughput,
            "flops_per_s": r.flops_per_s,
            "mfu": r.mfu,
        }
        for r in results
    ]
    body = {
        "cases": cases,
        "fom": {"throughput": total.throughput, "flops_per_s": total.flops_per_s},
        "engines": [
            {"max_model_len": 512, "cases": ["FOM1", "FOM2"], "startup": STARTUP},
            {"max_model_len": 2048, "cases": ["FOM3"], "startup": {"total_s": 9.5}},
        ],
    }
    document = result_document("fom", {"model": model, "preset": "cpu-tiny"}, body)
    document["command"] = ["hpcinfer", "bench", "fom", "--preset", "cpu-tiny"]
    return document


def write_documents(directory: Path, *kinds: str, model: str = "tiny") -> Path:
    """Write the named kinds' documents (default: all three) into `directory`."""
    makers = {"serve": serve_document, "offline": offline_document, "fom": fom_document}
    for kind in kinds or tuple(makers):
        write_result(directory, makers[kind](model))
    return directory

"""Serving metrics: hand-computed figures, numpy's statistics, and vLLM's calculate_metrics."""

from __future__ import annotations

import importlib.util
import math
import random
from typing import Any

import pytest

from hpcinfer.bench.metrics import (
    RequestTiming,
    describe,
    parse_percentiles,
    parse_slo,
    percentile_key,
    summarize,
)
from tests.conftest import require

PCTS = (50, 90, 99)


def three_requests() -> list[RequestTiming]:
    """A: on time, 4 tokens; B: sent 0.25 s late, 2 tokens; C: 1 token; D: failed."""
    return [
        RequestTiming.from_chunks(
            0.0, 0.0, [0.5, 0.75, 1.0, 1.5], prompt_tokens=10, output_tokens=4
        ),
        RequestTiming.from_chunks(0.0, 0.25, [1.0, 2.0], prompt_tokens=20, output_tokens=2),
        RequestTiming.from_chunks(1.0, 1.0, [1.25], prompt_tokens=30, output_tokens=1),
        RequestTiming.failed(1.5, 1.5, "HTTP 500"),
    ]


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def test_counts_and_throughputs() -> None:
    s = summarize(three_requests(), duration_s=4.0, percentiles=PCTS)
    assert s["completed"] == 3
    assert s["failed"] == 1
    assert s["total_input_tokens"] == 60
    assert s["total_output_tokens"] == 7
    assert s["request_throughput"] == 0.75
    assert s["output_throughput"] == 1.75
    assert s["total_token_throughput"] == 16.75
    assert s["request_goodput"] is None
    assert s["slo"] is None
    assert s["latency_origin"] == "scheduled"


def test_ttft_and_e2el_from_the_scheduled_send() -> None:
    s = summarize(three_requests(), duration_s=4.0, percentiles=PCTS)
    # TTFT [0.5, 1.0 (B waited 0.25 s before sending), 0.25]
    assert s["mean_ttft_ms"] == approx(1750 / 3)
    assert s["median_ttft_ms"] == approx(500)
    assert s["std_ttft_ms"] == approx(1000 * math.sqrt(7 / 72))
    assert s["p50_ttft_ms"] == approx(500)
    assert s["p90_ttft_ms"] == approx(900)  # index 1.8: 0.5 + 0.8 * (1.0 - 0.5)
    assert s["p99_ttft_ms"] == approx(990)
    assert s["ttft_count"] == 3
    # E2EL [1.5, 2.0, 0.25]
    assert s["mean_e2el_ms"] == approx(1250)
    assert s["median_e2el_ms"] == approx(1500)
    assert s["std_e2el_ms"] == approx(1000 * math.sqrt(13 / 24))
    assert s["p90_e2el_ms"] == approx(1900)
    assert s["p99_e2el_ms"] == approx(1990)
    # how late the client was
    assert s["mean_send_lag_ms"] == approx(250 / 3)
    assert s["p99_send_lag_ms"] == approx(245)


def test_tpot_leaves_out_single_token_requests_and_itl_pools_every_gap() -> None:
    s = summarize(three_requests(), duration_s=4.0, percentiles=PCTS)
    # TPOT: A (1.5 - 0.5) / 3, B (2.0 - 1.0) / 1; C has one token and is left out
    assert s["tpot_count"] == 2
    assert s["mean_tpot_ms"] == approx(2000 / 3)
    assert s["median_tpot_ms"] == approx(2000 / 3)
    assert s["std_tpot_ms"] == approx(1000 / 3)
    assert s["p90_tpot_ms"] == approx(1000 / 3 + 0.9 * 2000 / 3)
    assert s["p99_tpot_ms"] == approx(1000 / 3 + 0.99 * 2000 / 3)
    # ITL: A's gaps 0.25, 0.25, 0.5 and B's 1.0
    assert s["itl_count"] == 4
    assert s["mean_itl_ms"] == approx(500)
    assert s["median_itl_ms"] == approx(375)
    assert s["std_itl_ms"] == approx(1000 * math.sqrt(0.09375))
    assert s["p90_itl_ms"] == approx(850)
    assert s["p99_itl_ms"] == approx(985)


def test_from_sent_is_vllms_clock_and_leaves_tpot_and_itl_alone() -> None:
    scheduled = summarize(three_requests(), duration_s=4.0, percentiles=PCTS)
    sent = summarize(three_requests(), 4.0, PCTS, from_scheduled=False)
    assert sent["latency_origin"] == "sent"
    assert sent["mean_ttft_ms"] == approx(500)  # [0.5, 0.75, 0.25]
    assert sent["mean_e2el_ms"] == approx(3500 / 3)  # [1.5, 1.75, 0.25]
    for key in ("mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms"):
        assert sent[key] == scheduled[key]


def test_goodput_counts_requests_meeting_every_slo() -> None:
    s = summarize(three_requests(), 4.0, PCTS, slo={"ttft_ms": 600, "tpot_ms": 500})
    # A meets both; B misses TTFT (1.0 s); C meets both (one token counts as TPOT 0)
    assert s["request_goodput"] == 0.5
    assert s["slo"] == {"ttft_ms": 600.0, "tpot_ms": 500.0}
    # a bound is met when equal: A's TTFT is exactly 500 ms
    assert summarize(three_requests(), 4.0, slo={"ttft_ms": 500})["request_goodput"] == 0.5
    assert summarize(three_requests(), 4.0, slo={"e2el_ms": 1500})["request_goodput"] == 0.5


def test_goodput_sees_the_queueing_that_the_sent_clock_hides() -> None:
    slo = {"ttft_ms": 800.0}
    assert summarize(three_requests(), 4.0, slo=slo)["request_goodput"] == 0.5
    assert (
        summarize(three_requests(), 4.0, slo=slo, from_scheduled=False)["request_goodput"] == 0.75
    )


def test_an_empty_sample_reports_zero_like_vllm_with_its_count() -> None:
    only_failures = [RequestTiming.failed(0.0, 0.0, "refused")] * 2
    s = summarize(only_failures, duration_s=1.0, slo={"ttft_ms": 1})
    assert (s["completed"], s["failed"]) == (0, 2)
    assert s["request_goodput"] == 0.0
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert s[f"mean_{name}_ms"] == 0.0
        assert s[f"p99_{name}_ms"] == 0.0
        assert s[f"{name}_count"] == 0


def test_a_stream_without_tokens_is_a_failure() -> None:
    timing = RequestTiming.from_chunks(0.0, 0.0, [], prompt_tokens=5, output_tokens=0)
    assert not timing.ok
    assert timing.error == "the stream carried no token"
    with pytest.raises(ValueError, match="needs first_token_s and end_s"):
        RequestTiming(scheduled_s=0.0, sent_s=0.0)
    with pytest.raises(ValueError, match="before first_token_s"):
        RequestTiming(0.0, 0.0, first_token_s=2.0, end_s=1.0)


def test_summarize_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        summarize(three_requests(), 0.0)
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        summarize(three_requests(), 1.0, percentiles=(101,))
    with pytest.raises(ValueError, match="unknown SLO 'ttft'"):
        summarize(three_requests(), 1.0, slo={"ttft": 10})
    with pytest.raises(ValueError, match="milliseconds >= 0"):
        summarize(three_requests(), 1.0, slo={"tpot_ms": -1})


def test_percentile_keys_follow_vllm() -> None:
    assert percentile_key(99) == "p99"
    assert percentile_key(99.0) == "p99"
    assert percentile_key(99.9) == "p99.9"
    assert "p99.9_ttft_ms" in summarize(three_requests(), 1.0, percentiles=(99.9,))


def test_statistics_match_numpy_to_the_last_bit() -> None:
    require("numpy", importlib.util.find_spec("numpy") is not None, "pip install numpy")
    import numpy as np

    rng = random.Random(7)
    pcts = (0, 1, 25, 50, 66.6, 90, 99, 99.9, 100)
    for size in (1, 2, 3, 7, 8, 9, 16, 100, 128, 129, 300, 2049):
        values = [rng.expovariate(4.0) for _ in range(size)]
        got = describe(values, pcts, "x")
        array = np.array(values)
        assert got["mean_x_ms"] == float(np.mean(array)) * 1000
        assert got["median_x_ms"] == float(np.median(array)) * 1000
        assert got["std_x_ms"] == float(np.std(array)) * 1000
        for p in pcts:
            assert got[f"{percentile_key(p)}_x_ms"] == float(np.percentile(array, p)) * 1000


def synthetic_run(seed: int, count: int) -> list[RequestTiming]:
    """Requests with varied lengths, late sends, single-token outputs and failures."""
    rng = random.Random(seed)
    timings: list[RequestTiming] = []
    for i in range(count):
        scheduled = i * 0.05
        sent = scheduled + rng.choice([0.0, 0.0, rng.uniform(0, 0.2)])
        if rng.random() < 0.1:
            timings.append(RequestTiming.failed(scheduled, sent, "HTTP 503"))
            continue
        tokens = rng.choice([1, 2, rng.randint(3, 64)])
        chunks = [sent + rng.uniform(0.01, 0.5)]
        chunk_count = max(1, tokens - rng.randint(0, tokens // 4))  # some chunks carry 2 tokens
        for _ in range(chunk_count - 1):
            chunks.append(chunks[-1] + rng.expovariate(50.0))
        timings.append(
            RequestTiming.from_chunks(scheduled, sent, chunks, rng.randint(1, 512), tokens)
        )
    return timings


@pytest.mark.integration  # imports vLLM (seconds): with the integration tier
def test_agrees_with_vllm_calculate_metrics() -> None:
    """The same synthetic run through vLLM's own calculate_metrics (no server needed)."""
    present = importlib.util.find_spec("vllm") is not None
    require("vLLM", present, "pip install 'hpcinfer[cpu]'")
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    timings = synthetic_run(seed=3, count=400)
    outputs = []
    for t in timings:
        output = RequestFuncOutput()
        output.start_time = t.sent_s
        if t.ok:
            assert t.first_token_s is not None and t.end_s is not None
            chunks = t.chunk_times_s
            output.success = True
            output.prompt_len = t.prompt_tokens
            output.output_tokens = t.output_tokens
            output.ttft = t.first_token_s - t.sent_s
            output.latency = t.end_s - t.sent_s
            output.itl = [chunks[i] - chunks[i - 1] for i in range(1, len(chunks))]
        else:
            output.error = t.error or ""
        outputs.append(output)
    pcts = [50.0, 90.0, 99.0, 99.9]
    goodput = {"ttft": 300.0, "tpot": 25.0, "e2el": 900.0}
    theirs, _ = calculate_metrics(
        input_requests=[],
        outputs=outputs,
        dur_s=21.5,
        tokenizer=None,
        selected_percentiles=pcts,
        goodput_config_dict=goodput,
    )
    ours = summarize(
        timings,
        21.5,
        pcts,
        slo={f"{k}_ms": v for k, v in goodput.items()},
        from_scheduled=False,
    )
    assert ours["completed"] == theirs.completed
    assert ours["failed"] == theirs.failed
    assert ours["total_input_tokens"] == theirs.total_input
    assert ours["total_output_tokens"] == theirs.total_output
    assert 0 < theirs.request_goodput < theirs.request_throughput  # the SLOs bite
    for key in (
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
    ):
        assert ours[key] == approx(getattr(theirs, key)), key
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            key = f"{stat}_{name}_ms"
            assert ours[key] == approx(getattr(theirs, key)), key
        for p, value in getattr(theirs, f"percentiles_{name}_ms"):
            key = f"{percentile_key(p)}_{name}_ms"
            assert ours[key] == approx(value), key


def test_parse_slo() -> None:
    assert parse_slo("ttft=2000,tpot=100") == {"ttft_ms": 2000.0, "tpot_ms": 100.0}
    assert parse_slo("ttft:2000 e2el_ms=5000ms") == {"ttft_ms": 2000.0, "e2el_ms": 5000.0}
    assert parse_slo(" TPOT=12.5 ") == {"tpot_ms": 12.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty SLO"),
        ("ttft", "write NAME=MILLISECONDS"),
        ("ttft=", "write NAME=MILLISECONDS"),
        ("itl=5", "unknown name 'itl'; use ttft, tpot, e2el"),
        ("ttft=fast", "'fast' is not a number"),
        ("ttft=-1", "cannot be negative"),
        ("ttft=nan", "must be finite"),
        ("ttft=1,ttft=2", "given twice"),
    ],
)
def test_parse_slo_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_slo(text)


def test_parse_percentiles() -> None:
    assert parse_percentiles("50,90,99") == (50.0, 90.0, 99.0)
    assert parse_percentiles("99.9, p50") == (99.9, 50.0)
    for text, message in [
        ("", "no percentiles"),
        ("50,abc", "not a number"),
        ("101", r"outside 0\.\.100"),
        ("-1", r"outside 0\.\.100"),
        ("50,50", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_percentiles(text)

"""The sweep to saturation's rate plan and knee, on synthetic figures: rates evenly spaced
between the synchronous and the throughput run, and the knee at the last rate before TTFT or
TPOT (p50 or p99) left its bound, a request failed, or the SLO was broken."""

from __future__ import annotations

from typing import Any

import pytest

from hpcinfer.bench.sweep import describe_knee, find_knee, limits, sweep_rates


def test_rates_are_evenly_spaced_up_to_the_throughput_rate() -> None:
    assert sweep_rates(10.0, 40.0, 3) == [20.0, 30.0, 40.0]
    assert sweep_rates(1.0, 2.0, 4) == [1.25, 1.5, 1.75, 2.0]
    assert sweep_rates(3.14159, 10.0, 1) == [10.0]
    # a server that gains nothing from concurrency: one rate, not N copies
    assert sweep_rates(5.0, 4.0, 5) == [5.0]
    with pytest.raises(ValueError, match="no request completed"):
        sweep_rates(0.0, 40.0, 3)
    with pytest.raises(ValueError, match="1 or more rates"):
        sweep_rates(1.0, 2.0, 0)


def metrics(
    ttft: tuple[float, float], tpot: tuple[float, float], failed: int = 0
) -> dict[str, Any]:
    """summarize()-keyed figures: (p50, p99) of TTFT and TPOT in ms."""
    return {
        "failed": failed,
        "ttft_count": 10,
        "tpot_count": 10,
        "median_ttft_ms": ttft[0],
        "p99_ttft_ms": ttft[1],
        "median_tpot_ms": tpot[0],
        "p99_tpot_ms": tpot[1],
    }


BASE = metrics((50.0, 55.0), (10.0, 11.0))


def point(rate: float, **figures: Any) -> dict[str, Any]:
    return {"label": f"{rate:g} req/s", "rate": rate, "metrics": metrics(**figures)}


def test_the_knee_is_the_last_rate_before_latency_turns() -> None:
    points = [
        point(40.0, ttft=(300.0, 900.0), tpot=(10.0, 11.0)),
        point(10.0, ttft=(50.0, 56.0), tpot=(10.0, 11.0)),
        point(20.0, ttft=(52.0, 100.0), tpot=(10.5, 20.0)),  # within 2x + 2 ms
        point(30.0, ttft=(55.0, 80.0), tpot=(10.0, 24.5)),  # TPOT p99 over 24 ms
    ]
    assert limits(BASE, None)["p99_tpot_ms"] == pytest.approx(24.0)
    knee = find_knee(points, BASE)
    assert (knee["rate"], knee["label"]) == (20.0, "20 req/s")
    turned = knee["turned_at"]
    assert turned["rate"] == 30.0
    assert [over["key"] for over in turned["over"]] == ["p99_tpot_ms"]
    text = describe_knee(knee)
    assert text.startswith("The knee is at 20 req/s: the highest rate that kept TTFT and TPOT")
    assert "at 30 req/s latency turned (TPOT p99 24.5 ms (limit 24.0 ms))" in text


def test_failures_and_the_slo_decide_when_given() -> None:
    points = [
        point(10.0, ttft=(50.0, 56.0), tpot=(10.0, 11.0)),
        point(20.0, ttft=(50.0, 56.0), tpot=(10.0, 11.0), failed=2),
    ]
    knee = find_knee(points, BASE)
    assert knee["rate"] == 10.0
    assert knee["turned_at"]["over"][0]["text"] == "2 requests failed"

    # an SLO replaces the factor: p99 TTFT 400 ms is fine under ttft=500
    points = [
        point(10.0, ttft=(100.0, 300.0), tpot=(10.0, 11.0)),
        point(20.0, ttft=(200.0, 400.0), tpot=(10.0, 11.0)),
        point(30.0, ttft=(450.0, 700.0), tpot=(10.0, 11.0)),
    ]
    knee = find_knee(points, BASE, slo={"ttft_ms": 500.0})
    assert knee["rate"] == 20.0 and knee["turned_at"]["rate"] == 30.0
    assert "within the SLO (TTFT ≤ 500 ms)" in knee["criterion"]
    assert find_knee(points, BASE)["rate"] is None  # 2x the synchronous run's: none kept


def test_a_sweep_that_never_turns_or_turns_at_once_says_so() -> None:
    calm = [point(r, ttft=(50.0, 55.0), tpot=(10.0, 11.0)) for r in (10.0, 20.0)]
    knee = find_knee(calm, BASE)
    assert knee["rate"] == 20.0 and knee["turned_at"] is None
    assert describe_knee(knee).startswith("Latency did not turn")

    at_once = find_knee([point(10.0, ttft=(500.0, 900.0), tpot=(10.0, 11.0))], BASE)
    assert at_once["rate"] is None and at_once["label"] is None
    assert describe_knee(at_once).startswith(
        "Latency turned already at the lowest rate of the sweep, 10 req/s"
    )


def test_a_metric_without_samples_is_not_watched() -> None:
    one_token = {**BASE, "tpot_count": 0}
    assert set(limits(one_token, None)) == {"median_ttft_ms", "p99_ttft_ms"}
    figures = {**metrics(ttft=(50.0, 55.0), tpot=(0.0, 0.0)), "tpot_count": 0}
    assert find_knee([{"label": "5 req/s", "rate": 5.0, "metrics": figures}], BASE)["rate"] == 5.0

"""Arrival schedules: deterministic, vLLM's rescaling, the right rate and burstiness."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from hpcinfer.bench.arrivals import (
    Schedule,
    all_at_once,
    fixed_concurrency,
    fixed_rate,
    parse_concurrencies,
    parse_rates,
)


def gaps(schedule: Schedule) -> list[float]:
    offsets = (0.0, *schedule.offsets_s)
    return [offsets[i] - offsets[i - 1] for i in range(1, len(offsets))]


def test_all_at_once() -> None:
    schedule = all_at_once(5)
    assert schedule.offsets_s == (0.0,) * 5
    assert len(schedule) == 5
    assert math.isinf(schedule.rate)
    assert schedule.max_concurrency is None
    assert not schedule.closed_loop
    assert schedule.describe() == "5 requests, all at once"


def test_fixed_concurrency_is_a_closed_loop_that_carries_its_limit() -> None:
    schedule = fixed_concurrency(64, 8)
    assert schedule.max_concurrency == 8
    assert schedule.closed_loop
    assert schedule.describe() == "64 requests, all at once, at most 8 in flight"
    # a finite rate with a limit stays open-loop: slot waits count as latency
    limited = fixed_rate(10, 2.0, max_concurrency=4)
    assert limited.max_concurrency == 4
    assert not limited.closed_loop


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    first = fixed_rate(200, 5.0, burstiness=0.5, seed=11)
    assert fixed_rate(200, 5.0, burstiness=0.5, seed=11) == first
    assert fixed_rate(200, 5.0, burstiness=0.5, seed=12).offsets_s != first.offsets_s


def test_offsets_rise_and_the_last_send_is_rescaled_to_n_over_rate() -> None:
    for burstiness in (0.25, 1.0, 4.0):
        schedule = fixed_rate(50, 4.0, burstiness=burstiness, seed=1)
        offsets = schedule.offsets_s
        assert all(b >= a for a, b in itertools.pairwise(offsets))
        assert offsets[0] > 0  # as in vLLM, the first request waits one sampled gap
        assert offsets[-1] == pytest.approx(50 / 4.0, rel=1e-12)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gaps_have_mean_one_over_rate_and_cv_one_over_sqrt_burstiness(burstiness: float) -> None:
    # a gamma(k, theta) gap has coefficient of variation 1/sqrt(k): 1 for Poisson
    rate = 8.0
    schedule = fixed_rate(20_000, rate, burstiness=burstiness, seed=5)
    sample = gaps(schedule)
    mean = statistics.fmean(sample)
    assert mean == pytest.approx(1 / rate, rel=1e-9)  # exact after rescaling
    assert len(schedule) / schedule.offsets_s[-1] == pytest.approx(rate, rel=1e-12)
    cv = statistics.pstdev(sample) / mean
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_infinite_burstiness_spaces_requests_evenly() -> None:
    schedule = fixed_rate(4, 2.0, burstiness=math.inf)
    assert schedule.offsets_s == (0.5, 1.0, 1.5, 2.0)
    assert schedule.describe() == "4 requests at 2 req/s, evenly spaced, seed 0"


def test_infinite_rate_is_all_at_once() -> None:
    assert fixed_rate(3, math.inf).offsets_s == (0.0, 0.0, 0.0)


def test_describe_names_the_arrival_process() -> None:
    assert fixed_rate(10, 2.0).describe() == "10 requests at 2 req/s, Poisson arrivals, seed 0"
    assert (
        fixed_rate(1, 0.5, burstiness=0.5, seed=3, max_concurrency=2).describe()
        == "1 request at 0.5 req/s, gamma arrivals (burstiness 0.5), seed 3, at most 2 in flight"
    )


def test_send_times_shift_offsets_to_the_clock() -> None:
    schedule = fixed_rate(3, 1.0, burstiness=math.inf)
    assert schedule.send_times(100.0) == (101.0, 102.0, 103.0)


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        all_at_once(0)
    with pytest.raises(ValueError, match="above 0 req/s"):
        fixed_rate(5, 0.0)
    with pytest.raises(ValueError, match="above 0 req/s"):
        fixed_rate(5, math.nan)
    with pytest.raises(ValueError, match="burstiness must be above 0"):
        fixed_rate(5, 1.0, burstiness=0.0)
    with pytest.raises(ValueError, match="max_concurrency must be 1 or more"):
        fixed_concurrency(5, 0)


def test_parse_rates() -> None:
    assert parse_rates("1,2,inf") == [1.0, 2.0, math.inf]
    assert parse_rates(" 0.5 4 ") == [0.5, 4.0]
    for text, message in [
        ("", "no request rates"),
        ("1,fast", "'fast' is not a number"),
        ("0", "must be above 0"),
        ("-2", "must be above 0"),
        ("nan", "must be above 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rates(text)


def test_parse_concurrencies() -> None:
    assert parse_concurrencies("1,4,16") == [1, 4, 16]
    for text, message in [
        ("", "no concurrencies"),
        ("2.5", "not a whole number"),
        ("0", "1 or more"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_concurrencies(text)

"""Least-outstanding routing, per-endpoint bounds, ejection and return of failing endpoints."""

from __future__ import annotations

from hpcinfer.engines.endpoint_pool import EndpointPool


def _pool(limit: int = 2, eject_after: int = 2) -> EndpointPool:
    pool = EndpointPool(limit=limit, eject_after=eject_after)
    pool.add("http://a", "m")
    pool.add("http://b", "m")
    return pool


def test_least_outstanding_spreads_and_bounds() -> None:
    pool = _pool(limit=2)
    picked = [pool.pick() for _ in range(5)]
    urls = [p.url if p else None for p in picked]
    assert urls[:4].count("http://a") == 2 and urls[:4].count("http://b") == 2
    assert urls[4] is None  # both endpoints at their bound: the request waits
    a = pool.endpoints["http://a"]
    pool.release(a, ok=True)
    assert pool.pick() is a  # the endpoint with a free slot takes the next one


def test_a_slow_endpoint_gets_fewer_requests() -> None:
    pool = _pool(limit=10)
    a, b = pool.endpoints["http://a"], pool.endpoints["http://b"]
    for _ in range(6):
        pool.pick()
    for _ in range(3):  # b is fast: its requests finish, a's do not
        pool.release(b, ok=True)
    assert [pool.pick() for _ in range(3)] == [b, b, b]
    assert a.outstanding == 3


def test_a_retry_prefers_another_endpoint() -> None:
    pool = _pool(limit=4)
    assert pool.pick(avoid=["http://a"]).url == "http://b"  # type: ignore[union-attr]
    assert pool.pick(avoid=["http://b"]).url == "http://a"  # type: ignore[union-attr]


def test_retry_waits_for_a_busy_untried_endpoint_rather_than_resending() -> None:
    pool = _pool(limit=1)
    b = pool.pick(avoid=["http://a"])
    assert b is not None and b.url == "http://b"
    assert pool.pick(avoid=["http://a"]) is None  # b busy: wait for it, not a again
    assert pool.pick(avoid=["http://a", "http://b"]).url == "http://a"  # type: ignore[union-attr]


def test_ejection_after_consecutive_failures_and_restore() -> None:
    pool = _pool(limit=4, eject_after=2)
    a = pool.endpoints["http://a"]
    pool.pick(avoid=["http://b"])
    pool.pick(avoid=["http://b"])
    assert pool.release(a, ok=False, error="HTTP 500") is False
    assert pool.release(a, ok=False, error="HTTP 500") is True
    assert not a.usable and pool.any_usable()
    assert all(pool.pick().url == "http://b" for _ in range(4))  # type: ignore[union-attr]
    assert pool.next_recheck_delay(a) < pool.next_recheck_delay(a)  # backoff grows
    pool.restore(a)
    assert a.usable and a.consecutive_failures == 0


def test_a_success_resets_the_failure_streak() -> None:
    pool = _pool(limit=4, eject_after=2)
    a = pool.endpoints["http://a"]
    for ok in (False, True, False):
        pool.pick(avoid=["http://b"])
        pool.release(a, ok=ok)
    assert a.usable and (a.ok, a.failed) == (1, 2)


def test_retired_endpoints_take_nothing_until_they_return() -> None:
    pool = _pool()
    pool.retire("http://a")
    assert {pool.pick().url for _ in range(2)} == {"http://b"}  # type: ignore[union-attr]
    pool.add("http://a", "m")
    assert pool.pick().url == "http://a"  # type: ignore[union-attr]
    assert pool.counts() == {"http://a": 0, "http://b": 0}

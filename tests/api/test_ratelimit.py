"""Token buckets per key name, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from k2.api.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    decisions = [limiter.acquire("a") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    refused = limiter.acquire("a")
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == pytest.approx(0.5)
    assert refused.retry_after_header == "1"
    clock.now += 0.5  # one token back at 2/s
    assert limiter.acquire("a").allowed
    assert not limiter.acquire("a").allowed


def test_buckets_are_per_name() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.acquire("a").allowed
    assert not limiter.acquire("a").allowed
    assert limiter.acquire("b").allowed


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 2, clock=clock)
    limiter.acquire("a")
    clock.now += 3600
    assert [limiter.acquire("a").allowed for _ in range(3)] == [True, True, False]


def test_retry_after_rounds_up_slow_rates() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.1, 1, clock=clock)  # one request per 10 s
    limiter.acquire("a")
    refused = limiter.acquire("a")
    assert refused.retry_after_s == pytest.approx(10.0)
    clock.now += 2.5
    assert limiter.acquire("a").retry_after_header == "8"


def test_clock_going_backwards_does_not_add_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    limiter.acquire("a")
    clock.now -= 100
    assert not limiter.acquire("a").allowed


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0, 1)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1, 0)

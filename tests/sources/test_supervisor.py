"""The shared reconnect/retry supervisor, driven by a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from k2.errors import ConnectionLost, RateLimited, TerminalError, TransientError
from k2.sources.supervisor import AttemptLimiter, Backoff, RateLimiter, retry


class FakeTime:
    """A monotonic clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# --- Backoff ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_and_is_capped() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, multiplier=2.0, rng=random.Random(7))
    ceilings = []
    for _ in range(200):
        ceilings.append(backoff.ceiling_s)
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceilings[-1]
    assert ceilings[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert max(ceilings) == 30.0  # never doubles past the cap, however many failures


def test_backoff_jitter_spreads_delays_and_reset_starts_over() -> None:
    backoff = Backoff(initial_s=1.0, max_s=1.0, rng=random.Random(1))
    delays = {backoff.next_delay() for _ in range(50)}
    assert len(delays) == 50  # full jitter: no two clients wait the same
    assert backoff.failures == 50
    grown = Backoff(initial_s=0.1, max_s=10.0, rng=random.Random(2))
    for _ in range(10):
        grown.next_delay()
    grown.reset()
    assert grown.ceiling_s == 0.1
    assert grown.failures == 0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=0)
    with pytest.raises(ValueError, match="max_s"):
        Backoff(initial_s=2.0, max_s=1.0)


# --- AttemptLimiter ----------------------------------------------------------------------


async def test_attempt_limiter_allows_a_budget_per_sliding_window() -> None:
    t = FakeTime()
    limiter = AttemptLimiter(300, 300.0, clock=t.clock, sleep=t.sleep)
    for _ in range(300):
        assert await limiter.acquire() == 0.0
    assert t.sleeps == []
    t.now += 10.0
    waited = await limiter.acquire()  # the 301st waits for the first to leave the window
    assert waited == pytest.approx(290.0)
    assert t.now == pytest.approx(1300.0)
    assert limiter.in_window() == 1  # the first 300 all left the window together


async def test_attempt_limiter_serves_waiters_in_order() -> None:
    t = FakeTime()
    limiter = AttemptLimiter(2, 10.0, clock=t.clock, sleep=t.sleep)
    order: list[int] = []

    async def attempt(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    await asyncio.gather(*(attempt(i) for i in range(6)))
    assert order == list(range(6))
    assert t.now == pytest.approx(1020.0)  # pairs at t=0, 10, 20


# --- RateLimiter -------------------------------------------------------------------------


async def test_rate_limiter_spaces_messages_evenly() -> None:
    t = FakeTime()
    limiter = RateLimiter(5.0, burst=1, clock=t.clock, sleep=t.sleep)
    stamps = []
    for _ in range(12):
        await limiter.acquire()
        stamps.append(t.now)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps == pytest.approx([0.2] * 11)
    assert stamps[-1] - stamps[0] == pytest.approx(2.2)


async def test_rate_limiter_burst_then_rate() -> None:
    t = FakeTime()
    limiter = RateLimiter(5.0, burst=5, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        assert await limiter.acquire() == 0.0
    assert await limiter.acquire() == pytest.approx(0.2)


# --- retry -------------------------------------------------------------------------------


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def quick() -> Backoff:
    return Backoff(initial_s=0.1, max_s=1.0, rng=random.Random(3))


async def test_retry_retries_transient_errors_then_succeeds() -> None:
    t = FakeTime()
    op = Flaky(ConnectionLost("a"), ConnectionLost("b"))
    seen: list[tuple[int, str, float]] = []
    result = await retry(
        op,
        backoff=quick(),
        attempts=5,
        sleep=t.sleep,
        on_retry=lambda n, exc, d: seen.append((n, str(exc), d)),
    )
    assert result == "ok"
    assert op.calls == 3
    assert [(n, e) for n, e, _ in seen] == [(1, "a"), (2, "b")]
    assert [d for *_, d in seen] == t.sleeps


async def test_retry_reraises_terminal_errors_at_once() -> None:
    t = FakeTime()
    op = Flaky(TerminalError("bad symbol"))
    with pytest.raises(TerminalError, match="bad symbol"):
        await retry(op, backoff=quick(), attempts=5, sleep=t.sleep)
    assert op.calls == 1
    assert t.sleeps == []


async def test_retry_raises_the_last_error_after_the_attempt_limit() -> None:
    t = FakeTime()
    op = Flaky(*(ConnectionLost(f"e{i}") for i in range(10)))
    with pytest.raises(ConnectionLost, match="e2"):
        await retry(op, backoff=quick(), attempts=3, sleep=t.sleep)
    assert op.calls == 3
    assert len(t.sleeps) == 2


async def test_retry_honours_retry_after_when_longer_than_backoff() -> None:
    t = FakeTime()
    op = Flaky(RateLimited("slow down", retry_after=7.0), RateLimited("again", retry_after=0.0))
    assert await retry(op, backoff=quick(), attempts=5, sleep=t.sleep) == "ok"
    assert t.sleeps[0] == 7.0
    assert t.sleeps[1] <= 0.2  # a shorter Retry-After does not shorten the backoff


async def test_retry_waits_out_a_ban() -> None:
    t = FakeTime()
    op = Flaky(
        RateLimited("banned", retry_after=120.0, banned=True), RateLimited("b2", banned=True)
    )
    assert await retry(op, backoff=quick(), attempts=5, sleep=t.sleep) == "ok"
    assert t.sleeps[0] == 120.0
    assert t.sleeps[1] == 1.0  # no stated length: the backoff's cap


async def test_retry_stops_at_the_deadline() -> None:
    t = FakeTime()
    op = Flaky(*(ConnectionLost(f"e{i}") for i in range(100)))
    with pytest.raises(ConnectionLost):
        await retry(
            op,
            backoff=Backoff(initial_s=1.0, max_s=1.0, rng=random.Random(4)),
            deadline_s=5.0,
            sleep=t.sleep,
            clock=t.clock,
        )
    assert sum(t.sleeps) <= 5.0
    assert op.calls >= 2


async def test_retry_without_limits_keeps_going() -> None:
    t = FakeTime()
    op = Flaky(*(TransientError(f"e{i}") for i in range(50)))
    assert await retry(op, backoff=quick(), sleep=t.sleep) == "ok"
    assert op.calls == 51


async def test_retry_lets_foreign_exceptions_through() -> None:
    t = FakeTime()
    op = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        await retry(op, backoff=quick(), attempts=5, sleep=t.sleep)
    assert op.calls == 1

"""Circuit breakers, driven by a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from k2.errors import ConnectionLost, ExchangeError, TerminalError, TransientError
from k2.ops.breaker import (
    BreakerRegistry,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Transition,
)
from k2.sources.supervisor import Backoff, retry

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Dependency:
    """A fake remote: raises ``failure`` while it is set, counts the calls it gets."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.calls = 0

    def __call__(self, value: int = 1) -> int:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return value

    async def async_call(self, value: int = 1) -> int:
        await asyncio.sleep(0)
        return self(value)


def trip(breaker: CircuitBreaker, times: int) -> None:
    dep = Dependency(ConnectionLost("refused"))
    for _ in range(times):
        with pytest.raises(ConnectionLost):
            breaker.call(dep)


def test_trips_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=3, clock=clock)
    dep = Dependency(ConnectionLost("refused"))
    for expected in (1, 2):
        with pytest.raises(ConnectionLost):
            breaker.call(dep)
        assert breaker.state is CLOSED
        assert breaker.stats().failures == expected
    with pytest.raises(TimeoutError):  # OS-level errors count too
        breaker.call(Dependency(TimeoutError("read timed out")))
    assert breaker.state is OPEN
    stats = breaker.stats()
    assert (stats.failures, stats.total_failures, stats.transitions) == (3, 3, 1)
    assert stats.opened_at == 100.0
    assert stats.retry_at == 130.0
    assert "TimeoutError" in (stats.last_error or "")


def test_a_success_resets_the_run_of_failures() -> None:
    breaker = CircuitBreaker("log", failure_threshold=3, clock=FakeClock())
    trip(breaker, 2)
    assert breaker.call(Dependency(), 7) == 7
    trip(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.stats().total_failures == 4


def test_rejects_at_once_while_open_naming_breaker_and_retry_time() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("catalog", failure_threshold=2, reset_timeout_s=30.0, clock=clock)
    trip(breaker, 2)
    clock.now += 12.0
    dep = Dependency()
    for _ in range(3):
        with pytest.raises(CircuitOpen) as err:
            breaker.call(dep)
    assert dep.calls == 0  # rejected without being made
    assert isinstance(err.value, TransientError)
    assert err.value.breaker == "catalog"
    assert err.value.retry_after == pytest.approx(18.0)
    assert "'catalog'" in str(err.value)
    assert "18.0 s" in str(err.value)
    assert breaker.stats().rejections == 3
    assert not breaker.allow()
    assert breaker.stats().rejections == 4


def test_half_open_trial_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("object-store", failure_threshold=1, reset_timeout_s=10.0, clock=clock)
    trip(breaker, 1)
    clock.now += 9.999
    assert breaker.state is OPEN
    clock.now += 0.001
    assert breaker.state is HALF_OPEN
    assert breaker.call(Dependency(), 5) == 5
    assert breaker.state is CLOSED
    stats = breaker.stats()
    assert (stats.failures, stats.opened_at, stats.retry_at) == (0, None, None)
    assert breaker.transitions == (
        Transition(100.0, CLOSED, OPEN),
        Transition(110.0, OPEN, HALF_OPEN),
        Transition(110.0, HALF_OPEN, CLOSED),
    )


def test_half_open_lets_only_the_configured_trials_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "exchange", failure_threshold=1, reset_timeout_s=5.0, half_open_max_calls=2, clock=clock
    )
    trip(breaker, 1)
    clock.now += 5.0
    assert breaker.allow()
    assert breaker.allow()
    with pytest.raises(CircuitOpen, match="half-open") as err:
        breaker.check()
    assert err.value.retry_after is None
    breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.allow()


def test_half_open_trial_failure_reopens_with_capped_growing_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "exchange", failure_threshold=2, reset_timeout_s=10.0, clock=clock, max_reset_timeout_s=35.0
    )
    trip(breaker, 2)
    periods = []
    for _ in range(4):
        stats = breaker.stats()
        assert stats.retry_at is not None
        assert stats.opened_at is not None
        periods.append(stats.retry_at - stats.opened_at)
        clock.now = stats.retry_at
        assert breaker.state is HALF_OPEN
        trip(breaker, 1)  # the single trial fails
        assert breaker.state is OPEN
    assert periods == [10.0, 20.0, 35.0, 35.0]
    clock.now = breaker.stats().retry_at or 0.0
    breaker.call(Dependency())
    assert breaker.state is CLOSED
    trip(breaker, 2)  # closing started the periods over
    stats = breaker.stats()
    assert stats.retry_at is not None and stats.opened_at is not None
    assert stats.retry_at - stats.opened_at == 10.0


def test_without_a_cap_the_open_period_stays_fixed() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("log", failure_threshold=1, reset_timeout_s=7.0, clock=clock)
    trip(breaker, 1)
    for _ in range(3):
        clock.now += 7.0
        trip(breaker, 1)
        assert breaker.stats().retry_at == clock.now + 7.0


@pytest.mark.parametrize(
    "error",
    [TerminalError("bad setting"), ExchangeError("Invalid symbol", code=-1121), ValueError("bug")],
)
def test_terminal_and_unexpected_errors_pass_through_without_tripping(error: Exception) -> None:
    breaker = CircuitBreaker("exchange", failure_threshold=1, clock=FakeClock())
    for _ in range(5):
        with pytest.raises(type(error)):
            breaker.call(Dependency(error))
    stats = breaker.stats()
    assert (stats.state, stats.failures, stats.total_failures) == (CLOSED, 0, 0)


def test_neutral_outcome_of_a_trial_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    trip(breaker, 1)
    clock.now += 1.0
    with pytest.raises(ExchangeError):
        breaker.call(Dependency(ExchangeError("rejected")))
    assert breaker.state is HALF_OPEN
    assert breaker.allow()  # another trial may go


def test_failure_predicate_is_configurable() -> None:
    breaker = CircuitBreaker(
        "store",
        failure_threshold=2,
        clock=FakeClock(),
        counts_as_failure=lambda exc: isinstance(exc, KeyError),
    )
    with pytest.raises(ConnectionLost):
        breaker.call(Dependency(ConnectionLost("no")))
    for _ in range(2):
        with pytest.raises(KeyError):
            breaker.call(Dependency(KeyError("gone")))
    assert breaker.state is OPEN
    assert breaker.stats().total_failures == 2


def test_manual_trio_for_calls_that_cannot_be_wrapped() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("sink", failure_threshold=2, reset_timeout_s=3.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(OSError("disk gone"))
    assert not breaker.allow()
    clock.now += 3.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert breaker.stats().successes == 1


def test_listeners_see_every_transition_and_a_failing_listener_is_contained() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=1, reset_timeout_s=2.0, clock=clock)
    seen: list[tuple[str, BreakerState, BreakerState, BreakerState]] = []

    def record(name: str, old: BreakerState, new: BreakerState) -> None:
        seen.append((name, old, new, breaker.stats().state))  # may read the breaker

    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics backend down")

    breaker.on_change(broken)
    breaker.on_change(record)
    trip(breaker, 1)
    clock.now += 2.0
    breaker.call(Dependency())
    assert seen == [
        ("exchange", CLOSED, OPEN, OPEN),
        ("exchange", OPEN, HALF_OPEN, HALF_OPEN),
        ("exchange", HALF_OPEN, CLOSED, CLOSED),
    ]


def test_counts_stay_exact_under_threads() -> None:
    threads, per_thread = 8, 500
    counting = CircuitBreaker("log", failure_threshold=10**9, clock=FakeClock())
    guarded = CircuitBreaker("catalog", failure_threshold=50, clock=FakeClock())
    barrier = threading.Barrier(threads)
    dep = Dependency(ConnectionLost("down"))

    def hammer() -> None:
        barrier.wait()
        for _ in range(per_thread):
            counting.record_failure(ConnectionLost("down"))
            with contextlib.suppress(ConnectionLost, CircuitOpen):
                guarded.call(dep)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = threads * per_thread
    assert counting.stats().failures == total
    assert counting.stats().total_failures == total
    stats = guarded.stats()
    assert stats.state is OPEN
    assert stats.transitions == 1
    assert stats.total_failures + stats.rejections == total
    assert stats.total_failures >= 50


async def test_async_calls_trip_reject_and_recover() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=2, reset_timeout_s=4.0, clock=clock)
    dep = Dependency(ConnectionLost("reset by peer"))
    for _ in range(2):
        with pytest.raises(ConnectionLost):
            await breaker.acall(dep.async_call)
    with pytest.raises(CircuitOpen):
        await breaker.acall(dep.async_call)
    assert dep.calls == 2
    clock.now += 4.0
    dep.failure = None
    assert await breaker.acall(dep.async_call, value=9) == 9
    assert breaker.state is CLOSED


async def test_cancellation_is_neutral() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    trip(breaker, 1)
    clock.now += 1.0
    with pytest.raises(asyncio.CancelledError):
        await breaker.acall(Dependency(asyncio.CancelledError()).async_call)
    assert breaker.state is HALF_OPEN
    assert breaker.allow()


async def test_composes_with_the_shared_retry_supervisor() -> None:
    """retry() treats CircuitOpen as transient: it keeps waiting until the breaker lets a
    trial through and the dependency has recovered."""
    clock = FakeClock()
    breaker = CircuitBreaker("exchange", failure_threshold=3, reset_timeout_s=10.0, clock=clock)
    dep = Dependency(ConnectionLost("down"))
    recover_at = clock.now + 25.0

    async def op() -> int:
        if clock.now >= recover_at:
            dep.failure = None
        return await breaker.acall(dep.async_call, 42)

    backoff = Backoff(initial_s=1.0, max_s=4.0, rng=random.Random(3))
    assert await retry(op, backoff=backoff, sleep=clock.sleep, clock=clock) == 42
    assert breaker.state is CLOSED
    assert breaker.stats().rejections > 0
    assert dep.calls < 10  # the breaker, not the dependency, absorbed most attempts


def test_registry_creates_each_breaker_once_with_its_settings() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(
        BreakerSettings(failure_threshold=4),
        overrides={"exchange": BreakerSettings(failure_threshold=1, reset_timeout_s=5.0)},
        clock=clock,
    )
    seen: list[tuple[str, BreakerState]] = []
    registry.on_change(lambda name, old, new: seen.append((name, new)))
    exchange = registry.get("exchange")
    assert registry.get("exchange") is exchange
    log = registry.get("log")
    assert (exchange.failure_threshold, log.failure_threshold) == (1, 4)
    assert len(registry) == 2
    trip(exchange, 1)
    assert seen == [("exchange", OPEN)]
    clock.now += 2.0
    snapshot = registry.snapshot()
    json.dumps(snapshot)  # plain values only
    assert [s["name"] for s in snapshot] == ["exchange", "log"]
    assert snapshot[0] | {"last_error": None} == {
        "name": "exchange",
        "state": "open",
        "failures": 1,
        "total_failures": 1,
        "successes": 0,
        "rejections": 0,
        "transitions": 1,
        "opened_at": 100.0,
        "retry_at": 105.0,
        "retry_in_s": 3.0,
        "last_error": None,
    }
    assert snapshot[1]["state"] == "closed"
    assert snapshot[1]["retry_at"] is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CircuitBreaker("x", failure_threshold=0), "failure_threshold"),
        (lambda: CircuitBreaker("x", half_open_max_calls=0), "half_open_max_calls"),
        (lambda: CircuitBreaker("x", reset_timeout_s=0), "initial_s"),
        (lambda: CircuitBreaker("x", reset_timeout_s=10, max_reset_timeout_s=5), "max_s"),
    ],
)
def test_rejects_nonsense_arguments(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_settings_cap_must_not_be_below_the_first_period() -> None:
    with pytest.raises(ValidationError, match="max_reset_timeout_s"):
        BreakerSettings(reset_timeout_s=60.0, max_reset_timeout_s=30.0)

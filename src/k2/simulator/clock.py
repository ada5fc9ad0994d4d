"""The simulator's notion of time, injectable so tests can drive it.

Two readings are kept apart on purpose: ``time_us`` is the wall clock that lands in event
payloads (UTC microseconds since the epoch), ``monotonic`` measures intervals (seconds,
never goes back). ``sleep`` waits on the same clock as ``monotonic``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

from k2.ops.clock import utc_now_us


class Clock(Protocol):
    """What the simulator needs from a clock."""

    def time_us(self) -> int:
        """Wall-clock time, UTC microseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (arbitrary origin)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` have passed on :meth:`monotonic`."""
        ...


class SystemClock:
    """The real clock: ``time.time_ns``, ``time.monotonic`` and ``asyncio.sleep``."""

    def time_us(self) -> int:
        """Wall-clock time, UTC microseconds since the Unix epoch."""
        return utc_now_us()

    def monotonic(self) -> float:
        """Seconds from ``time.monotonic``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` (a zero or negative delay still yields to the loop once)."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when a test calls :meth:`advance`.

    Sleepers wake, in deadline order, when ``advance`` carries the clock past their
    deadline. ``time_us`` moves in step with ``monotonic`` from ``start_us``.
    """

    def __init__(self, start_us: int = 1_700_000_000_000_000) -> None:
        self._start_us = start_us
        self._now = 0.0
        self._order = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def time_us(self) -> int:
        """``start_us`` plus the time advanced so far, in UTC microseconds."""
        return self._start_us + round(self._now * 1_000_000)

    def monotonic(self) -> float:
        """Seconds advanced so far."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds`` (yields once if <= 0)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many coroutines are currently waiting in :meth:`sleep`."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

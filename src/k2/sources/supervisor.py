"""Reconnect and retry machinery shared by every source and client.

- :class:`Backoff` — capped exponential delays with full jitter; it never grows past
  its cap, however many failures in a row.
- :class:`AttemptLimiter` — at most *n* attempts in any sliding window (an exchange's
  connection-attempt budget).
- :class:`RateLimiter` — a token bucket for outgoing messages (control-message rate).
- :func:`retry` — runs an async operation, retrying :class:`~k2.errors.TransientError`
  with backoff, re-raising :class:`~k2.errors.TerminalError` at once.

Time is injected everywhere (a monotonic ``clock`` in seconds and an async ``sleep``)
so tests drive time without waiting. Nothing here knows about any exchange.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from k2.errors import RateLimited, TerminalError, TransientError
from k2.ops.log import get_logger

T = TypeVar("T")

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.monotonic``)."""

Sleep = Callable[[float], Awaitable[None]]
"""An async sleep taking seconds (``asyncio.sleep``)."""

OnRetry = Callable[[int, TransientError, float], None]
"""Called before each retry wait with (failed attempt number, error, delay seconds)."""

_log = get_logger(__name__)


class Backoff:
    """Capped exponential backoff with full jitter.

    The *n*-th delay (``n`` counting from 0 since the last :meth:`reset`) is drawn
    uniformly from ``[0, min(max_s, initial_s * multiplier**n)]``: jitter spreads
    reconnecting clients apart, and the cap keeps a long outage from turning into
    hour-long waits.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0:
            raise ValueError(f"initial_s must be > 0, got {initial_s}")
        if max_s < initial_s:
            raise ValueError(f"max_s ({max_s}) must be >= initial_s ({initial_s})")
        if multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {multiplier}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self._rng = rng if rng is not None else random.Random()
        self._ceiling = initial_s
        self._failures = 0

    @property
    def failures(self) -> int:
        """Delays handed out since the last reset."""
        return self._failures

    @property
    def ceiling_s(self) -> float:
        """The upper bound of the next delay, in seconds."""
        return self._ceiling

    def next_delay(self) -> float:
        """The next delay in seconds, in ``[0, ceiling]``; then raise the ceiling (capped)."""
        delay = self._rng.uniform(0.0, self._ceiling)
        # Multiply-then-cap keeps the ceiling finite however many failures accumulate.
        self._ceiling = min(self.max_s, self._ceiling * self.multiplier)
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (call once the operation has proved healthy)."""
        self._ceiling = self.initial_s
        self._failures = 0


class AttemptLimiter:
    """Allows at most ``max_attempts`` attempts in any window of ``window_s`` seconds.

    :meth:`acquire` returns at once while the budget allows, else waits until the
    oldest attempt in the window expires. Waiters are served in arrival order.
    """

    def __init__(
        self,
        max_attempts: int,
        window_s: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._stamps: deque[float] = deque()
        self._lock = asyncio.Lock()

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._stamps and self._stamps[0] <= horizon:
            self._stamps.popleft()

    def in_window(self) -> int:
        """Attempts counted in the current window."""
        self._expire(self._clock())
        return len(self._stamps)

    async def acquire(self) -> float:
        """Wait until an attempt is allowed, record it, and return the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                self._expire(now)
                if len(self._stamps) < self.max_attempts:
                    self._stamps.append(now)
                    return waited
                delay = self._stamps[0] + self.window_s - now
                _log.warning(
                    "attempt budget exhausted; waiting",
                    max_attempts=self.max_attempts,
                    window_s=self.window_s,
                    wait_s=round(delay, 3),
                )
                await self._sleep(delay)
                waited += delay


class RateLimiter:
    """A token bucket: ``rate_per_s`` tokens a second, holding at most ``burst``.

    With ``burst=1`` messages are spaced evenly at ``1/rate_per_s`` seconds, so no
    rolling one-second window ever sees more than ``rate_per_s + 1`` of them.
    Waiters are served in arrival order.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now

    async def acquire(self) -> float:
        """Wait for a token, take it, and return the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                delay = (1.0 - self._tokens) / self.rate_per_s
                await self._sleep(delay)
                waited += delay


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    attempts: int | None = None,
    deadline_s: float | None = None,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    what: str = "operation",
) -> T:
    """Run ``op`` until it succeeds, retrying transient failures.

    - :class:`~k2.errors.TerminalError` is re-raised at once.
    - :class:`~k2.errors.TransientError` is retried after ``backoff.next_delay()``; a
      :class:`~k2.errors.RateLimited` with a larger ``retry_after`` waits that long
      instead. ``RateLimited(banned=True)`` is logged as an error and waits
      ``retry_after`` (or the backoff cap when the server gave none).
    - ``attempts`` caps the total number of calls; ``deadline_s`` stops retrying when
      the next wait would end later than ``deadline_s`` seconds after the first call.
      With neither, it retries forever. When a limit is reached the last error is
      raised.
    - Any other exception propagates unchanged (libraries' errors should have been
      translated into K2 errors by ``op``).

    ``retry`` never resets ``backoff``: callers reset it once the operation has proved
    healthy, so a peer that accepts and immediately fails still backs off.
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except TerminalError:
            raise
        except TransientError as exc:
            if attempts is not None and attempt >= attempts:
                _log.error("giving up", what=what, attempts=attempt, error=repr(exc))
                raise
            delay = _delay_for(exc, backoff)
            if deadline_s is not None and clock() + delay - started > deadline_s:
                _log.error(
                    "giving up: deadline reached",
                    what=what,
                    attempts=attempt,
                    deadline_s=deadline_s,
                    error=repr(exc),
                )
                raise
            if isinstance(exc, RateLimited) and exc.banned:
                _log.error(
                    "BANNED by the remote side; waiting before any further request",
                    what=what,
                    attempt=attempt,
                    wait_s=round(delay, 3),
                    error=str(exc),
                )
            else:
                _log.warning(
                    "retrying after transient error",
                    what=what,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=repr(exc),
                )
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)


def _delay_for(exc: TransientError, backoff: Backoff) -> float:
    delay = backoff.next_delay()
    if isinstance(exc, RateLimited):
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        elif exc.banned:
            # A ban without a stated length: the longest wait we are configured for.
            delay = max(delay, backoff.max_s)
    return delay

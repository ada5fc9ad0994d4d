"""Circuit breakers around K2's calls to things outside the process.

When an exchange, the log, the catalog or the object store is down, retrying every
call just piles up timeouts. A breaker notices a run of failures and fails fast
instead, then probes now and again until the dependency answers.

States (their int values are what a gauge exports):

- ``CLOSED`` (0): calls pass. ``failure_threshold`` counted failures in a row → OPEN.
- ``OPEN`` (2): calls are rejected at once with :class:`CircuitOpen` until the open
  period ends → HALF_OPEN. The first period is ``reset_timeout_s``; each re-open from
  HALF_OPEN doubles it, capped at ``max_reset_timeout_s`` (the shared
  :class:`~k2.sources.supervisor.Backoff` arithmetic; its ceiling is used without
  jitter, because a jittered period could be near zero and defeat the breaker, and an
  exact ``retry_at`` is what ``k2 status`` should show).
- ``HALF_OPEN`` (1): up to ``half_open_max_calls`` trial calls pass, the rest are
  rejected. A trial success closes the breaker; a trial failure re-opens it.

What counts as a failure is a predicate; by default :class:`~k2.errors.TransientError`
and ``OSError`` (which includes ``TimeoutError``). Anything else — a
:class:`~k2.errors.TerminalError`, a bug, a cancellation — is raised to the caller
unchanged and is neutral: it neither trips nor resets the breaker.

Use :meth:`CircuitBreaker.call` / :meth:`CircuitBreaker.acall` to wrap a call, or the
trio :meth:`~CircuitBreaker.allow`, :meth:`~CircuitBreaker.record_success`,
:meth:`~CircuitBreaker.record_failure` where a call can't be wrapped: every ``allow()``
that returns true must be followed by exactly one ``record_*``. Breakers are
thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel, Field, model_validator

from k2.errors import TransientError
from k2.ops.log import get_logger
from k2.sources.supervisor import Backoff, Clock

__all__ = [
    "BreakerRegistry",
    "BreakerSettings",
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitOpen",
    "FailurePredicate",
    "Listener",
    "Transition",
    "counts_as_failure",
]

P = ParamSpec("P")
T = TypeVar("T")
_log = get_logger(__name__)


class BreakerState(IntEnum):
    """A breaker's state; the value is the gauge reading."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


Listener = Callable[[str, BreakerState, BreakerState], None]
"""Called with (breaker name, old state, new state) on every transition."""

FailurePredicate = Callable[[BaseException], bool]
"""Decides whether an exception raised by a guarded call counts against the breaker."""


def counts_as_failure(exc: BaseException) -> bool:
    """The default predicate: transient K2 errors and OS-level errors (refused, reset,
    timed out) count; everything else is neutral."""
    return isinstance(exc, TransientError | OSError)


class CircuitOpen(TransientError):
    """A breaker rejected the call without making it.

    ``breaker`` is the breaker's name; ``retry_after`` the seconds until it lets a
    trial call through, or ``None`` while trial calls are already in flight.
    """

    def __init__(self, message: str, *, breaker: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change at ``at`` (seconds on the breaker's clock)."""

    at: float
    old: BreakerState
    new: BreakerState


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """One consistent reading of a breaker; times are seconds on its clock."""

    name: str
    state: BreakerState
    failures: int  # counted failures in a row; reset by a success or by closing
    total_failures: int  # counted failures since the breaker was created
    successes: int
    rejections: int  # calls refused without being made
    transitions: int  # state changes
    opened_at: float | None  # when it last opened; None while CLOSED
    retry_at: float | None  # when the open period ends; None while CLOSED
    last_error: str | None  # repr of the last counted failure


class BreakerSettings(BaseModel):
    """Tuning for one breaker (or the defaults of a :class:`BreakerRegistry`)."""

    failure_threshold: int = Field(5, ge=1, description="counted failures in a row that open")
    reset_timeout_s: float = Field(30.0, gt=0, description="first open period")
    max_reset_timeout_s: float = Field(300.0, gt=0, description="cap on a grown open period")
    half_open_max_calls: int = Field(1, ge=1, description="trial calls let through")

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> BreakerSettings:
        if self.max_reset_timeout_s < self.reset_timeout_s:
            raise ValueError(
                f"max_reset_timeout_s ({self.max_reset_timeout_s}) must be >= "
                f"reset_timeout_s ({self.reset_timeout_s})"
            )
        return self


class CircuitBreaker:
    """One breaker around one dependency; see the module docstring for the states.

    ``max_reset_timeout_s`` of ``None`` keeps every open period at ``reset_timeout_s``.
    ``clock`` is monotonic seconds; every time the breaker reports is on it.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Clock = time.monotonic,
        *,
        max_reset_timeout_s: float | None = None,
        counts_as_failure: FailurePredicate = counts_as_failure,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if half_open_max_calls < 1:
            raise ValueError(f"half_open_max_calls must be >= 1, got {half_open_max_calls}")
        cap = reset_timeout_s if max_reset_timeout_s is None else max_reset_timeout_s
        # Backoff validates reset_timeout_s > 0 and cap >= reset_timeout_s.
        self._backoff = Backoff(initial_s=reset_timeout_s, max_s=cap, multiplier=2.0)
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._counts = counts_as_failure
        # Re-entrant so a listener may read this breaker while a transition notifies it.
        self._lock = threading.RLock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._total_failures = 0
        self._successes = 0
        self._rejections = 0
        self._trials = 0
        self._opened_at: float | None = None
        self._retry_at: float | None = None
        self._last_error: str | None = None
        self._transitions: deque[Transition] = deque(maxlen=256)
        self._transition_count = 0
        self._listeners: list[Listener] = []

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: BreakerSettings,
        clock: Clock = time.monotonic,
        *,
        counts_as_failure: FailurePredicate = counts_as_failure,
    ) -> CircuitBreaker:
        """A breaker tuned by ``settings``."""
        return cls(
            name,
            settings.failure_threshold,
            settings.reset_timeout_s,
            settings.half_open_max_calls,
            clock,
            max_reset_timeout_s=settings.max_reset_timeout_s,
            counts_as_failure=counts_as_failure,
        )

    # --- observing ----------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker whose period is over reads HALF_OPEN."""
        with self._lock:
            self._poll(self._clock())
            return self._state

    @property
    def transitions(self) -> tuple[Transition, ...]:
        """The most recent state changes (up to 256), oldest first."""
        with self._lock:
            return tuple(self._transitions)

    def stats(self) -> BreakerStats:
        """The counters and times, read together."""
        with self._lock:
            self._poll(self._clock())
            return BreakerStats(
                self.name, self._state, self._consecutive, self._total_failures,
                self._successes, self._rejections, self._transition_count,
                self._opened_at, self._retry_at, self._last_error,
            )  # fmt: skip

    def on_change(self, callback: Listener) -> None:
        """Call ``callback(name, old, new)`` on every transition, in order. It runs while
        the breaker's lock is held: keep it quick; an exception from it is logged."""
        with self._lock:
            self._listeners.append(callback)

    def snapshot(self) -> dict[str, Any]:
        """:meth:`stats` as a plain, JSON-ready dict for ``k2 status``, with the state's
        name and ``retry_in_s`` (seconds until a trial call, or ``None``)."""
        stats = self.stats()
        now = self._clock()
        return {
            **{f.name: getattr(stats, f.name) for f in fields(stats)},
            "state": stats.state.name.lower(),
            "retry_in_s": None if stats.retry_at is None else max(0.0, stats.retry_at - now),
        }

    # --- the trio -----------------------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go ahead now (counting a rejection if not)."""
        return self._admit() is None

    def check(self) -> None:
        """Like :meth:`allow`, but raise :class:`CircuitOpen` when the call may not go."""
        rejection = self._admit()
        if rejection is not None:
            raise rejection

    def record_success(self) -> None:
        """Report that an allowed call succeeded."""
        with self._lock:
            self._successes += 1
            if self._state is BreakerState.HALF_OPEN:
                self._close(self._clock())
            elif self._state is BreakerState.CLOSED:
                self._consecutive = 0
            # OPEN: a call admitted before the breaker opened; it says nothing about now.

    def record_failure(self, exc: BaseException) -> None:
        """Report that an allowed call raised ``exc``; neutral if the predicate says so."""
        with self._lock:
            if not self._counts(exc):
                if self._state is BreakerState.HALF_OPEN and self._trials > 0:
                    self._trials -= 1  # no verdict from this trial: let another try
                return
            self._total_failures += 1
            self._consecutive += 1
            self._last_error = repr(exc)
            if self._state is BreakerState.HALF_OPEN or (
                self._state is BreakerState.CLOSED and self._consecutive >= self.failure_threshold
            ):
                self._open(self._clock())

    # --- wrapping -----------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` through the breaker; raises :class:`CircuitOpen` when
        rejected, else whatever ``fn`` raises."""
        self.check()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(exc)
            raise
        self.record_success()
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` through the breaker, like :meth:`call`."""
        self.check()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(exc)
            raise
        self.record_success()
        return result

    # --- internals (lock held) ----------------------------------------------------

    def _admit(self) -> CircuitOpen | None:
        with self._lock:
            now = self._clock()
            self._poll(now)
            if self._state is BreakerState.CLOSED:
                return None
            if self._state is BreakerState.HALF_OPEN and self._trials < self.half_open_max_calls:
                self._trials += 1
                return None
            self._rejections += 1
            if self._state is BreakerState.HALF_OPEN:
                return CircuitOpen(
                    f"circuit breaker {self.name!r} is half-open: {self._trials} trial "
                    f"call(s) are testing whether {self.name} has recovered; retry once "
                    "they finish",
                    breaker=self.name,
                    retry_after=None,
                )
            assert self._retry_at is not None
            wait = max(0.0, self._retry_at - now)
            return CircuitOpen(
                f"circuit breaker {self.name!r} is open after {self._consecutive} failures "
                f"in a row (last: {self._last_error}); calls are rejected for {wait:.1f} s "
                f"more, then a trial call goes through. Check that {self.name} is reachable",
                breaker=self.name,
                retry_after=wait,
            )

    def _poll(self, now: float) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._retry_at is not None
            and now >= self._retry_at
        ):
            self._set(BreakerState.HALF_OPEN, now)

    def _open(self, now: float) -> None:
        period = self._backoff.ceiling_s
        self._backoff.next_delay()  # only to raise the ceiling; its jittered value is unused
        self._opened_at = now
        self._retry_at = now + period
        _log.warning(
            "circuit breaker opened",
            breaker=self.name,
            failures=self._consecutive,
            open_s=round(period, 3),
            error=self._last_error,
        )
        self._set(BreakerState.OPEN, now)

    def _close(self, now: float) -> None:
        self._consecutive = 0
        self._backoff.reset()
        self._opened_at = None
        self._retry_at = None
        _log.info("circuit breaker closed", breaker=self.name)
        self._set(BreakerState.CLOSED, now)

    def _set(self, new: BreakerState, now: float) -> None:
        old, self._state, self._trials = self._state, new, 0
        self._transitions.append(Transition(now, old, new))
        self._transition_count += 1
        for listener in self._listeners:
            try:
                listener(self.name, old, new)
            except Exception:
                _log.exception("circuit breaker listener failed", breaker=self.name)


class BreakerRegistry:
    """Named breakers, each created once on first :meth:`get`.

    ``settings`` tunes every breaker; ``overrides`` tunes named ones differently.
    Listeners added with :meth:`on_change` observe every breaker, present and future.
    """

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        overrides: Mapping[str, BreakerSettings] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings if settings is not None else BreakerSettings()
        self._overrides = dict(overrides or {})
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[Listener] = []

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``, created on first use."""
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                settings = self._overrides.get(name, self._settings)
                breaker = CircuitBreaker.from_settings(name, settings, self._clock)
                for listener in self._listeners:
                    breaker.on_change(listener)
                self._breakers[name] = breaker
            return breaker

    def on_change(self, callback: Listener) -> None:
        """Call ``callback(name, old, new)`` on every transition of every breaker."""
        with self._lock:
            self._listeners.append(callback)
            for breaker in self._breakers.values():
                breaker.on_change(callback)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        with self._lock:
            return iter(sorted(self._breakers.values(), key=lambda b: b.name))

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every breaker's :meth:`CircuitBreaker.snapshot`, sorted by name."""
        return [breaker.snapshot() for breaker in self]

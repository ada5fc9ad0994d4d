"""Per-key rate limits: one token bucket per API key name.

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a request takes
one token or is refused with the time until one will be there. The clock is injected
(seconds, monotonic) so tests drive time without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request against its bucket.

    ``limit`` is the bucket size (``burst``); ``remaining`` the whole tokens left after
    this request; ``retry_after_s`` (when refused) the seconds until one token is back.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter:
    """Token buckets keyed by API key name; thread-safe.

    ``clock`` returns seconds from any fixed origin (default :func:`time.monotonic`).
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        # name -> (tokens, time of last update)
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, name: str) -> Decision:
        """Take one token from ``name``'s bucket (a new bucket starts full)."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)
            if tokens >= 1.0:
                tokens -= 1.0
                self._buckets[name] = (tokens, now)
                return Decision(True, self.burst, int(tokens))
            self._buckets[name] = (tokens, now)
            return Decision(False, self.burst, 0, (1.0 - tokens) / self.rate_per_s)

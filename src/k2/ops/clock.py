"""K2's wall clock: UTC microseconds since the Unix epoch.

Components take a ``clock_us`` callable so tests can drive time; this is the default
they all share.
"""

from __future__ import annotations

import time


def utc_now_us() -> int:
    """The current time, UTC microseconds since the epoch (integer)."""
    return time.time_ns() // 1000

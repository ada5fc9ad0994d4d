"""Waiting on a condition with a deadline: how the tests synchronise with real
processes and servers (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def until(
    condition: Callable[[], object], what: str, deadline_s: float = 60.0, poll_s: float = 0.1
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(poll_s)  # polling a condition, with a deadline


async def until_async(
    condition: Callable[[], object], what: str, deadline_s: float = 60.0, poll_s: float = 0.02
) -> None:
    """:func:`until` for a running event loop: waits without blocking it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(poll_s)  # polling a condition, with a deadline

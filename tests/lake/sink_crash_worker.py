"""Crash-test worker: run the lake sink from ``K2_*`` settings, and kill itself on cue.

``K2TEST_CRASH_POINT`` names a sink crash point (``mid_batch``, ``before_append``,
``after_append``); the worker sends itself SIGKILL the ``K2TEST_CRASH_AT``-th time the
sink reaches it. ``K2TEST_UNTIL_IDLE=1`` makes a clean run that stops once the log is
drained. Exit status 0 after a clean run.
"""

from __future__ import annotations

import os
import signal
import sys

from k2.config import load_settings
from k2.lake.sink import SinkHooks, run_sink


def main() -> int:
    point = os.environ.get("K2TEST_CRASH_POINT")
    remaining = int(os.environ.get("K2TEST_CRASH_AT", "1"))

    def crash_point(name: str) -> None:
        nonlocal remaining
        if name != point:
            return
        remaining -= 1
        if remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

    stats = run_sink(
        load_settings(),
        max_seconds=float(os.environ.get("K2TEST_MAX_SECONDS", "60")),
        until_idle=os.environ.get("K2TEST_UNTIL_IDLE") == "1",
        hooks=SinkHooks(crash_point=crash_point),
    )
    print(f"sink wrote {stats.total} records in {stats.commits} commits", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

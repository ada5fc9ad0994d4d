"""Exclusive per-stage locks in the run directory (``fcntl.flock``).

One ``k2 ingest`` may write a given embedded log at a time: two would both repair the
same outage and put trades in the log twice. The lock is a kernel ``flock`` on
``<run_dir>/<name>.lock``, so it is released the moment its process dies, SIGKILL
included; a successor started by ``k2 up`` right after a crash waits for the old
process to finish its shutdown instead of racing it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from types import TracebackType

from k2.errors import TransientError
from k2.ops.log import get_logger

log = get_logger(__name__)


class StageLock:
    """An exclusive lock on ``path``; :meth:`acquire` waits up to ``timeout_s``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free; ``False`` if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid written by the holder (best effort, for messages)."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    async def acquire(self, timeout_s: float = 60.0, poll_s: float = 0.1) -> None:
        """Wait for the lock; :class:`TransientError` naming the holder after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        warned = False
        while not self.try_acquire():
            if not warned:
                log.warning("waiting for the previous holder to stop", lock=str(self.path),
                            pid=self.holder())  # fmt: skip
                warned = True
            if loop.time() > deadline:
                raise TransientError(
                    f"{self.path} is held by pid {self.holder()} (another k2 ingest on this "
                    "log?); stop it first"
                )
            await asyncio.sleep(poll_s)  # polling a kernel lock: there is no wait handle

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    async def __aenter__(self) -> StageLock:
        await self.acquire()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

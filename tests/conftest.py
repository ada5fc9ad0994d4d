"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.captures import hft_frames

_LOGGING_AT_START = structlog.get_config()


@pytest.fixture(autouse=True)
def _logging_as_configured_at_start() -> Iterator[None]:
    """Undo any logging set-up a test did (a CLI run configures structlog globally:
    its level and stream must not leak into the tests after it)."""
    yield
    structlog.configure(**_LOGGING_AT_START)


@pytest.fixture(scope="session")
def hft() -> tuple[list[bytes], list[int]]:
    """(frames, receive µs) of the real hftbacktest BTCUSDT capture."""
    return hft_frames()


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process here, with pytest's exit status, without tearing the
    interpreter down.

    Once in a while (one CI run in many) the process aborted after the summary was
    printed ("terminate called after throwing an instance of ''", "FATAL: exception
    not rethrown"): a C++ thread or destructor of a native library (DuckDB's Python
    binding is known to, duckdb/duckdb#13904) touching the interpreter while it is
    being finalized. Every test has run and been reported by then; nothing K2 does is
    left to check, so the runner skips the finalization rather than let it turn a
    green run red. K2's own processes are checked for clean exits by the tests that
    start them.
    """
    if not _EXIT_STATUS:
        return
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])

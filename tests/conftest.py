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

"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.captures import hft_frames


@pytest.fixture(scope="session")
def hft() -> tuple[list[bytes], list[int]]:
    """(frames, receive µs) of the real hftbacktest BTCUSDT capture."""
    return hft_frames()

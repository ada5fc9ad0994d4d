"""Paths to and facts about the real Binance captures shipped under tests/data."""

from __future__ import annotations

import gzip
from pathlib import Path

DATA = Path(__file__).parent / "data" / "binance"
HFT_CAPTURE = DATA / "hftbacktest_spot_btcusdt_20230405.dat.gz"
FUTURES_CAPTURE = DATA / "cryptofeed_BINANCE_FUTURES.ws.1.0.txt"
SPOT_CF_CAPTURE = DATA / "cryptofeed_BINANCE.ws.1.0.txt"

#: Facts about the hftbacktest capture, from tests/data/binance/PROVENANCE.md.
HFT_TRADES = 3144
HFT_QUOTES = 8015
HFT_FIRST_TRADE_ID = 3071245454
HFT_LAST_TRADE_ID = 3071248597


def hft_frames() -> tuple[list[bytes], list[int]]:
    """(frames, receive µs) of the hftbacktest capture, in file order."""
    frames: list[bytes] = []
    received: list[int] = []
    with gzip.open(HFT_CAPTURE) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        ts, frame = line.split(b" ", 1)
        frames.append(frame)
        received.append(int(ts))
    return frames, received

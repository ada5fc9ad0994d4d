"""cryptofeed's Binance parsing, timed: the decode benchmark's peer.

Runs in its own virtual environment (``make bench`` makes ``.bench/peers`` with
cryptofeed from PyPI), so it imports nothing of K2 and only the standard library
besides cryptofeed. Usage::

    .bench/peers/bin/python benchmarks/cryptofeed_peer.py FRAMES --runs 5

``FRAMES`` holds one combined-stream frame per line (``aggTrade`` and ``bookTicker``
of BTCUSDT: cryptofeed's Binance trades channel is ``aggTrade``). Every frame goes
through ``Binance.message_handler``, as cryptofeed's WebSocket loop hands it over: JSON
decode with ``Decimal`` prices, symbol normalisation, a ``Trade`` or ``Ticker`` object,
then the user callback (here: a counter). One warm-up pass, then ``--runs`` timed
passes; prints one JSON object: ``{"version", "runs" (frames/s), "trades", "quotes"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from importlib import metadata
from typing import Any

#: exchangeInfo's answer for the one symbol, so that no request leaves the machine.
_EXCHANGE_INFO = {
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "status": "TRADING",
            "filters": [{"tickSize": "0.01"}],
        }
    ]
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("frames")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from cryptofeed.defines import BINANCE, TICKER, TRADES  # type: ignore[import-not-found,import-untyped,unused-ignore]
    from cryptofeed.exchanges import Binance  # type: ignore[import-not-found,import-untyped,unused-ignore]
    from cryptofeed.symbols import Symbols  # type: ignore[import-not-found,import-untyped,unused-ignore]

    Symbols.set(BINANCE, *Binance._parse_symbol_data(_EXCHANGE_INFO))
    counts = {"trades": 0, "quotes": 0}

    async def on_trade(trade: Any, receipt: float) -> None:
        counts["trades"] += 1

    async def on_ticker(ticker: Any, receipt: float) -> None:
        counts["quotes"] += 1

    feed = Binance(
        symbols=["BTC-USDT"],
        channels=[TRADES, TICKER],
        callbacks={TRADES: on_trade, TICKER: on_ticker},
    )
    with open(args.frames) as fh:
        frames = fh.read().splitlines()

    async def one_pass() -> float:
        start = time.perf_counter()
        for frame in frames:
            await feed.message_handler(frame, None, 1_680_652_800.0)
        return len(frames) / (time.perf_counter() - start)

    asyncio.run(one_pass())
    per_pass = {k: v for k, v in counts.items()}
    rates = [asyncio.run(one_pass()) for _ in range(args.runs)]
    print(
        json.dumps(
            {
                "version": metadata.version("cryptofeed"),
                "runs": rates,
                "trades": per_pass["trades"],
                "quotes": per_pass["quotes"],
            }
        )
    )


if __name__ == "__main__":
    main()

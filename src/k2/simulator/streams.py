"""Binance stream names: ``<lower-case symbol>@<kind>``, e.g. ``btcusdt@depth@100ms``.

The simulator accepts any well-formed name of a documented per-symbol kind (a stream
with no data source simply stays quiet, as a quiet market would); it produces
``trade`` and ``bookTicker`` itself and passes any kind through from a replay.
"""

from __future__ import annotations

import re

__all__ = ["SERVER_SHUTDOWN_STREAM", "is_valid_stream", "stream_symbol", "stream_type"]

#: The pseudo-stream name Binance uses to wrap ``serverShutdown`` on combined streams.
SERVER_SHUTDOWN_STREAM = "!serverShutdown"

_STREAM = re.compile(
    r"^[a-z0-9]{2,30}@(?:"
    r"trade|aggTrade|bookTicker|avgPrice|miniTicker|ticker|ticker_(?:1h|4h|1d)"
    r"|depth(?:5|10|20)?(?:@(?:100|1000)ms)?"
    r"|kline_(?:1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)(?:@\+08:00)?"
    r")$"
)


def is_valid_stream(name: str) -> bool:
    """True if ``name`` is a well-formed per-symbol Binance spot stream name."""
    return _STREAM.match(name) is not None


def stream_symbol(name: str) -> str:
    """The upper-case symbol of a stream name (``btcusdt@trade`` -> ``BTCUSDT``)."""
    return name.partition("@")[0].upper()


def stream_type(name: str) -> str:
    """The kind of a stream without its speed suffix (``btcusdt@depth@100ms`` -> ``depth``)."""
    return name.split("@", 2)[1]

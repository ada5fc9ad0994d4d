"""Binance spot: facts as data, the WebSocket stream, the REST client, reference data.

- ``spec`` — endpoints, limits and stream naming, declared as data;
- ``ws`` — :class:`BinanceStream`, supervised sharded combined streams → raw frame batches;
- ``rest`` — :class:`BinanceRest`, exchangeInfo / trades / server time as raw JSON;
- ``reference`` — exchangeInfo JSON → canonical reference records (pure);
- ``wire`` / ``parse`` — Binance's JSON shapes and pure frame → record parsers.
"""

from k2.sources.binance import spec  # first: the modules below import it
from k2.sources.binance.reference import parse_exchange_info, symbol_quote_assets
from k2.sources.binance.rest import BinanceRest
from k2.sources.binance.spec import (
    DEFAULT_SYMBOLS,
    LIVE_REST_URL,
    LIVE_WS_URL,
    MARKET_DATA_WS_URL,
    TESTNET_REST_URL,
    TESTNET_WS_URL,
    combined_stream_url,
    stream_name,
    stream_names,
)
from k2.sources.binance.ws import BinanceStream, FrameBatch, StreamStats

__all__ = [
    "DEFAULT_SYMBOLS",
    "LIVE_REST_URL",
    "LIVE_WS_URL",
    "MARKET_DATA_WS_URL",
    "TESTNET_REST_URL",
    "TESTNET_WS_URL",
    "BinanceRest",
    "BinanceStream",
    "FrameBatch",
    "StreamStats",
    "combined_stream_url",
    "parse_exchange_info",
    "spec",
    "stream_name",
    "stream_names",
    "symbol_quote_assets",
]

"""Binance spot facts, declared as data.

Sources (checked against Binance's spot API documentation, "WebSocket Streams" and
"REST API / LIMITS"):

- endpoints: ``wss://stream.binance.com:9443`` (also :443), market-data only
  ``wss://data-stream.binance.vision``, REST ``https://api.binance.com``; testnet
  ``wss://stream.testnet.binance.vision`` and ``https://testnet.binance.vision``;
- combined streams live at ``/stream?streams=a/b/c``, frames arrive wrapped as
  ``{"stream": "<name>", "data": <payload>}``; stream names use lower-case symbols;
- ``timeUnit=MICROSECOND`` switches every time field to microseconds;
- a connection carries at most 1024 streams, accepts at most 5 incoming messages a
  second (pings, pongs and JSON control messages all count), lives at most 24 h, and
  an IP may make at most 300 connection attempts every 5 minutes;
- the server pings every 20 s and disconnects a client that has not answered a ping
  within a minute; a ``serverShutdown`` event precedes a server's shutdown;
- REST: HTTP 429 means a rate limit was broken (``Retry-After`` says for how many
  seconds to back off), 418 means the IP is banned for ignoring 429s, 5xx means the
  problem is on Binance's side; error bodies are ``{"code": -1121, "msg": "..."}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

from k2.errors import ConfigError

EXCHANGE = "binance"

LIVE_WS_URL = "wss://stream.binance.com:9443"
LIVE_REST_URL = "https://api.binance.com"
TESTNET_WS_URL = "wss://stream.testnet.binance.vision"
TESTNET_REST_URL = "https://testnet.binance.vision"
MARKET_DATA_WS_URL = "wss://data-stream.binance.vision"
"""Market data only (no user data streams); same protocol as :data:`LIVE_WS_URL`."""


@dataclass(frozen=True)
class Endpoints:
    """A pair of base URLs that belong together (no trailing slash)."""

    ws_url: str
    rest_url: str


LIVE = Endpoints(LIVE_WS_URL, LIVE_REST_URL)
TESTNET = Endpoints(TESTNET_WS_URL, TESTNET_REST_URL)

# --- WebSocket limits -------------------------------------------------------------
MAX_STREAMS_PER_CONNECTION = 1024
MAX_CONTROL_MESSAGES_PER_S = 5
"""Incoming messages per second per connection; pings and pongs count too."""
MAX_CONNECTION_ATTEMPTS = 300
CONNECTION_ATTEMPT_WINDOW_S = 300.0
MAX_CONNECTION_AGE_S = 24 * 3600.0
SERVER_PING_INTERVAL_S = 20.0
PONG_DEADLINE_S = 60.0
"""The server disconnects a client that has not answered its ping within this time."""

SERVER_SHUTDOWN_EVENT = "serverShutdown"
SERVER_SHUTDOWN_STREAM = "!serverShutdown"
"""The ``stream`` name Binance uses when it wraps ``serverShutdown`` on combined streams."""

# --- REST ---------------------------------------------------------------------------
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
RECENT_TRADES_PATH = "/api/v3/trades"
SERVER_TIME_PATH = "/api/v3/time"
MAX_TRADES_LIMIT = 1000
"""Largest ``limit`` accepted by ``/api/v3/trades`` and ``/api/v3/historicalTrades``."""
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
ERROR_INVALID_SYMBOL = -1121

# --- Streams ------------------------------------------------------------------------
DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")

STREAM_SUFFIXES: Mapping[str, str] = MappingProxyType({"trade": "@trade", "quote": "@bookTicker"})
"""K2 data type → Binance stream-name suffix."""

DATA_TYPES: tuple[str, ...] = tuple(STREAM_SUFFIXES)

# Characters that would break the combined-stream path or query string.
_FORBIDDEN = re.compile(r"[\s/?&#=%]")


def _check_symbol(symbol: str) -> None:
    if not symbol or _FORBIDDEN.search(symbol) or "@" in symbol:
        raise ConfigError(f"invalid Binance symbol {symbol!r}")


def validate_stream(name: str) -> str:
    """Return ``name`` if it can be put in a combined-stream URL; else raise ConfigError.

    Binance stream names look like ``btcusdt@trade`` or ``!miniTicker@arr``; they must
    be non-empty and free of whitespace and URL delimiters.
    """
    if not name or _FORBIDDEN.search(name):
        raise ConfigError(f"invalid Binance stream name {name!r}")
    return name


def stream_name(symbol: str, data_type: str) -> str:
    """The stream carrying ``data_type`` for ``symbol``.

    ``stream_name("BTCUSDT", "trade")`` is ``"btcusdt@trade"``. Raises ConfigError for an
    unknown data type or a malformed symbol.
    """
    suffix = STREAM_SUFFIXES.get(data_type)
    if suffix is None:
        raise ConfigError(f"unknown data type {data_type!r}; expected one of {list(DATA_TYPES)}")
    _check_symbol(symbol)
    return f"{symbol.lower()}{suffix}"


def stream_names(symbols: Iterable[str], data_types: Iterable[str]) -> list[str]:
    """Every (symbol, data type) stream, symbol-major, without duplicates, order kept."""
    types = list(data_types)
    names: dict[str, None] = {}
    for symbol in symbols:
        for data_type in types:
            names[stream_name(symbol, data_type)] = None
    return list(names)


def combined_stream_url(base: str, streams: Sequence[str], micros: bool = False) -> str:
    """The combined-stream URL ``{base}/stream?streams=a/b/c`` (+ ``&timeUnit=MICROSECOND``).

    ``base`` is a WebSocket base URL such as :data:`LIVE_WS_URL`; non-ASCII symbols
    are percent-encoded. Raises ConfigError for a malformed stream name.
    """
    path = "/".join(quote(validate_stream(s), safe="@!_-.") for s in streams)
    url = f"{base.rstrip('/')}/stream?streams={path}"
    if micros:
        url += "&timeUnit=MICROSECOND"
    return url

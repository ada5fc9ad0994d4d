"""Parsing the query parameters the API and ``k2 query`` share.

Each parser turns text into what :class:`k2.query.engine.QueryEngine` takes and raises
:class:`k2.query.base.QueryError` (400, with a code the problem ``type`` names) saying
what was wrong and what would be accepted.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from k2.query.base import QueryError

#: Symbols as exchanges spell them (Binance: BTCUSDT); upper-cased before the check.
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9_.\-/]{0,31}$")
_EXCHANGE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,31}$")
_INT = re.compile(r"^-?[0-9]{1,40}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")

#: Most symbols one request may name.
MAX_SYMBOLS = 100


def parse_symbol(text: str) -> str:
    """One symbol, upper-cased (``btcusdt`` → ``BTCUSDT``); 400 ``bad-symbol`` if malformed."""
    symbol = text.strip().upper()
    if not _SYMBOL.match(symbol):
        raise QueryError(
            f"bad symbol {text[:40]!r}: expected an exchange symbol such as BTCUSDT "
            "(letters and digits, at most 32 characters)",
            code="bad-symbol",
        )
    return symbol


def parse_symbols(text: str | None) -> list[str] | None:
    """A comma-separated symbol list (``BTCUSDT,ETHUSDT``); ``None`` when not given.

    Duplicates are removed, order kept. 400 ``bad-symbol`` for a malformed or empty list
    or more than :data:`MAX_SYMBOLS` symbols.
    """
    if text is None:
        return None
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise QueryError(
            "symbol is empty: give one or more symbols, e.g. BTCUSDT,ETHUSDT", code="bad-symbol"
        )
    if len(parts) > MAX_SYMBOLS:
        raise QueryError(
            f"{len(parts)} symbols given; at most {MAX_SYMBOLS} per request", code="bad-symbol"
        )
    return list(dict.fromkeys(parse_symbol(p) for p in parts))


def parse_exchange(text: str | None) -> str | None:
    """An exchange name, lower-cased (``binance``); 400 ``bad-request`` if malformed."""
    if text is None:
        return None
    exchange = text.strip().lower()
    if not _EXCHANGE.match(exchange):
        raise QueryError(
            f"bad exchange {text[:40]!r}: expected a name such as binance", code="bad-request"
        )
    return exchange


def parse_time(name: str, text: str | None) -> datetime | None:
    """An ISO-8601 time with a zone (``2024-01-01T00:00:00Z``, ``...+02:00``) as aware UTC.

    ``None`` when not given. 400 ``bad-time`` for text that is not ISO-8601, a time
    without ``Z`` or an offset (K2 will not guess a zone), or one outside years 1-9999.
    """
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(
            f"{name} {text[:60]!r} is not an ISO-8601 time; use e.g. 2024-01-01T00:00:00Z",
            code="bad-time",
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(
            f"{name} {text[:60]!r} has no time zone: add Z (UTC) or an offset such as "
            "+00:00, e.g. 2024-01-01T00:00:00Z",
            code="bad-time",
        )
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise QueryError(
            f"{name} {text[:60]!r} is outside years 1-9999 in UTC", code="bad-time"
        ) from None


def parse_as_of(text: str | None) -> int | datetime | None:
    """``as_of``: a snapshot id (integer) or an ISO-8601 time with a zone; ``None`` if absent.

    400 ``bad-time`` for anything else.
    """
    if text is None:
        return None
    text = text.strip()
    if _INT.match(text):
        value = int(text)
        if not -(2**63) <= value < 2**63:
            raise QueryError(
                f"as_of {text!r} is not a snapshot id (64-bit integer)",
                code="unknown-snapshot",
                status=404,
            )
        return value
    try:
        return parse_time("as_of", text)
    except QueryError:
        raise QueryError(
            f"as_of {text[:60]!r} is neither a snapshot id (see /v1/snapshots) nor an "
            "ISO-8601 time with a zone such as 2024-01-01T00:00:00Z",
            code="bad-time",
        ) from None


def parse_date(text: str | None) -> date | None:
    """A UTC calendar day ``YYYY-MM-DD``; ``None`` if absent; 400 ``bad-time`` otherwise."""
    if text is None:
        return None
    text = text.strip()
    try:
        if not _DATE.match(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"date {text[:40]!r} is not a day YYYY-MM-DD, e.g. 2024-01-01", code="bad-time"
        ) from None

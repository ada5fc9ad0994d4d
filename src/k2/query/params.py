"""Checking the arguments of a question before any work is done.

Each function returns the normalised value or raises :class:`~k2.query.base.QueryError`
with a stable code naming what was wrong: symbols are upper-cased, exchanges
lower-cased, datetimes must be timezone-aware and become UTC µs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from k2.config import QuerySettings
from k2.query.base import DataType, QueryError
from k2.query.scan import EXCHANGE_RE, SCHEMAS, SYMBOL_RE, Order

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def aware(value: datetime, name: str) -> datetime:
    """``value`` in UTC; QueryError for a naive datetime or a non-datetime."""
    if not isinstance(value, datetime):
        raise QueryError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def to_us(value: datetime) -> int:
    """µs since the epoch of an aware datetime."""
    return (value - EPOCH) // US


def times(start: datetime | None, end: datetime | None) -> tuple[int | None, int | None]:
    """``start``/``end`` as UTC µs; ``start`` must be before ``end`` (end exclusive)."""
    start_us = None if start is None else to_us(aware(start, "start"))
    end_us = None if end is None else to_us(aware(end, "end"))
    if start_us is not None and end_us is not None and end_us <= start_us:
        raise QueryError(f"start ({start}) must be before end ({end}); end is exclusive")
    return start_us, end_us


def window(
    settings: QuerySettings, start: datetime | None, end: datetime | None
) -> tuple[int | None, int | None]:
    """:func:`times`, and window-too-large when both are given further apart than
    ``max_window_days``."""
    start_us, end_us = times(start, end)
    longest = int(settings.max_window_days * 86_400_000_000)
    if start_us is not None and end_us is not None and end_us - start_us > longest:
        raise QueryError(
            f"window {start} to {end} is longer than {settings.max_window_days:g} days; "
            "page through shorter windows",
            code="window-too-large",
        )
    return start_us, end_us


def limit(settings: QuerySettings, value: int | None) -> int:
    """``value`` (default ``default_limit``); limit-too-large above ``max_limit``."""
    if value is None:
        return settings.default_limit
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QueryError(f"limit must be a positive integer, not {value!r}")
    if value > settings.max_limit:
        raise QueryError(
            f"limit {value} is larger than {settings.max_limit}; page with the cursor",
            code="limit-too-large",
        )
    return value


def symbols(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Upper-cased, de-duplicated symbols (None: all); bad-symbol for malformed ones."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise QueryError("give at least one symbol, or none for all symbols")
    out: list[str] = []
    for s in items:
        norm = s.strip().upper() if isinstance(s, str) else ""
        if SYMBOL_RE.match(norm) is None:
            raise QueryError(
                f"{s!r} is not a symbol (letters, digits and . _ - : /)", code="bad-symbol"
            )
        out.append(norm)
    return tuple(dict.fromkeys(out))


def exchange(value: str | None) -> str | None:
    """Lower-cased exchange name (None: any)."""
    if value is None:
        return None
    norm = value.strip().lower() if isinstance(value, str) else ""
    if EXCHANGE_RE.match(norm) is None:
        raise QueryError(f"{value!r} is not an exchange name")
    return norm


def order(value: str) -> Order:
    """``asc`` or ``desc``."""
    if value == "asc":
        return "asc"
    if value == "desc":
        return "desc"
    raise QueryError(f"order must be 'asc' or 'desc', not {value!r}")


def columns(data_type: DataType, value: Sequence[str] | None) -> list[str]:
    """Requested output columns (default: all, canonical order); bad-column otherwise."""
    names = SCHEMAS[data_type].names
    if value is None:
        return list(names)
    cols = [value] if isinstance(value, str) else list(value)
    bad = [c for c in cols if c not in names]
    if bad or not cols:
        raise QueryError(
            f"unknown {data_type} column(s) {', '.join(map(repr, bad)) or '(none given)'}; "
            f"columns are {', '.join(names)}",
            code="bad-column",
        )
    return list(dict.fromkeys(cols))

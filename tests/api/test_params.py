"""Query parameter parsing shared by the API and the CLI."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from k2.api.params import (
    MAX_SYMBOLS,
    parse_as_of,
    parse_date,
    parse_exchange,
    parse_symbols,
    parse_time,
)
from k2.query.base import QueryError


def test_symbols_are_split_upper_cased_and_deduplicated() -> None:
    assert parse_symbols(None) is None
    assert parse_symbols("btcusdt, ETHUSDT,,BTCUSDT") == ["BTCUSDT", "ETHUSDT"]


@pytest.mark.parametrize("text", ["", " , ", "BTC USDT", "BTC;DROP", "X" * 33, "é"])
def test_bad_symbols(text: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_symbols(text)
    assert err.value.code == "bad-symbol" and err.value.status == 400


def test_too_many_symbols() -> None:
    with pytest.raises(QueryError, match="at most"):
        parse_symbols(",".join(f"S{i}" for i in range(MAX_SYMBOLS + 1)))


def test_times_need_a_zone_and_become_utc() -> None:
    assert parse_time("start", None) is None
    assert parse_time("start", "2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    got = parse_time("start", "2024-01-01T02:00:00.5+02:00")
    assert got == datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC) and got.tzinfo is UTC
    with pytest.raises(QueryError, match=r"no time zone.*Z") as err:
        parse_time("start", "2024-01-01T00:00:00")
    assert err.value.code == "bad-time"
    with pytest.raises(QueryError, match="not an ISO-8601"):
        parse_time("end", "yesterday")
    with pytest.raises(QueryError, match="years 1-9999"):
        parse_time("end", "0001-01-01T00:00:00+14:00")


def test_as_of_is_snapshot_id_or_time() -> None:
    assert parse_as_of(None) is None
    assert parse_as_of("1234567890123") == 1234567890123
    assert parse_as_of("2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(QueryError) as err:
        parse_as_of("latest")
    assert err.value.code == "bad-time"
    with pytest.raises(QueryError) as err:
        parse_as_of("99999999999999999999")
    assert err.value.code == "unknown-snapshot"


def test_dates_and_exchanges() -> None:
    assert parse_date("2024-02-29") == date(2024, 2, 29)
    assert parse_date(None) is None
    for bad in ("2023-02-29", "20240101", "2024-1-1"):
        with pytest.raises(QueryError):
            parse_date(bad)
    assert parse_exchange("Binance") == "binance"
    with pytest.raises(QueryError):
        parse_exchange("bin ance")

"""Builders of small TRADE / QUOTE batches and an in-memory trade history for the
quality tests (shared by the test modules of this directory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import TransientError, UnknownSymbol
from k2.records import QUOTE, TRADE, message_id

#: 2024-01-01T00:00:00Z in µs.
T0 = 1_704_067_200_000_000


class Clock:
    """A settable clock in µs, for injecting into the code under test."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _spread(value: object, n: int) -> list[Any]:
    """``value`` per row: a list or tuple as is (one per row), anything else repeated."""
    if isinstance(value, (list, tuple)):
        assert len(value) == n
        return list(value)
    return [value] * n


def _decimals(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.string()).cast(pa.decimal128(18, 8))


def _column(schema: pa.Schema, name: str, values: list[object]) -> pa.Array:
    kind = schema.field(name).type
    if pa.types.is_decimal(kind):
        return _decimals(values)  # type: ignore[arg-type]
    return pa.array(values, kind)


def trades(
    ids: Sequence[int],
    *,
    symbol: str | Sequence[str] = "BTCUSDT",
    exchange: str | Sequence[str] = "binance",
    price: str | Sequence[str | None] | None = "100.5",
    quantity: str | Sequence[str | None] | None = "0.1",
    timestamp_us: int | Sequence[int] | None = None,
    event_time_us: int | Sequence[int] | None = None,
    ingestion_us: int | Sequence[int] | None = None,
) -> pa.RecordBatch:
    """A TRADE batch, one row per id; scalars apply to every row. Times default to
    ``T0 + id`` µs (trade time), +1 µs (event), +2 µs (ingestion)."""
    n = len(ids)
    symbols = _spread(symbol, n)
    exchanges = _spread(exchange, n)
    ts = _spread(timestamp_us, n) if timestamp_us is not None else [T0 + i for i in ids]
    ev = _spread(event_time_us, n) if event_time_us is not None else [t + 1 for t in ts]
    ing = _spread(ingestion_us, n) if ingestion_us is not None else [t + 2 for t in ts]
    prices = _spread(price, n)
    quantities = _spread(quantity, n)
    values: dict[str, list[object]] = {
        "message_id": [
            message_id(e, s, i) for e, s, i in zip(exchanges, symbols, ids, strict=True)
        ],
        "trade_id": list(ids),
        "exchange": list(exchanges),
        "symbol": list(symbols),
        "asset_class": ["crypto"] * n,
        "timestamp": list(ts),
        "event_time": list(ev),
        "price": list(prices),
        "quantity": list(quantities),
        "quote_quantity": ["10.05"] * n,
        "currency": ["USDT"] * n,
        "side": ["BUY"] * n,
        "is_buyer_maker": [False] * n,
        "source_sequence": list(ids),
        "ingestion_timestamp": list(ing),
        "vendor_data": [None] * n,
    }
    schema = TRADE.arrow_schema()
    return pa.RecordBatch.from_arrays(
        [_column(schema, name, values[name]) for name in schema.names], schema=schema
    )


def quotes(
    ids: Sequence[int],
    *,
    symbol: str | Sequence[str] = "BTCUSDT",
    bid_price: str | Sequence[str | None] | None = "100",
    bid_quantity: str | Sequence[str | None] | None = "1",
    ask_price: str | Sequence[str | None] | None = "100.01",
    ask_quantity: str | Sequence[str | None] | None = "2",
    timestamp_us: int | Sequence[int] | None = None,
    ingestion_us: int | Sequence[int] | None = None,
) -> pa.RecordBatch:
    """A QUOTE batch, one row per update id; scalars apply to every row."""
    n = len(ids)
    symbols = _spread(symbol, n)
    ts = _spread(timestamp_us, n) if timestamp_us is not None else [T0 + i for i in ids]
    ing = _spread(ingestion_us, n) if ingestion_us is not None else [t + 2 for t in ts]
    values: dict[str, list[object]] = {
        "message_id": [message_id("binance", s, i) for s, i in zip(symbols, ids, strict=True)],
        "exchange": ["binance"] * n,
        "symbol": list(symbols),
        "asset_class": ["crypto"] * n,
        "timestamp": list(ts),
        "update_id": list(ids),
        "bid_price": _spread(bid_price, n),
        "bid_quantity": _spread(bid_quantity, n),
        "ask_price": _spread(ask_price, n),
        "ask_quantity": _spread(ask_quantity, n),
        "ingestion_timestamp": list(ing),
        "vendor_data": [None] * n,
    }
    schema = QUOTE.arrow_schema()
    return pa.RecordBatch.from_arrays(
        [_column(schema, name, values[name]) for name in schema.names], schema=schema
    )


def frames(batch: pa.RecordBatch, id_column: str = "trade_id") -> list[bytes]:
    """Stand-in raw frames, one per row, naming the row's id and position."""
    return [f"frame {i}:{v}".encode() for i, v in enumerate(batch.column(id_column).to_pylist())]


def ids_of(batch: pa.RecordBatch, column: str = "trade_id") -> list[int]:
    values: list[int] = batch.column(column).to_pylist()
    return values


class History:
    """An in-memory stand-in for an exchange's REST trade history (``fetch``).

    ``trades_by_symbol`` maps a symbol to its trades sorted by id; ids absent from it
    are trades the exchange no longer has. ``transient_failures`` makes the next that
    many calls raise ``TransientError``. Every call is recorded in ``calls``.
    """

    def __init__(self, trades_by_symbol: dict[str, pa.RecordBatch]) -> None:
        self._trades = trades_by_symbol
        self.calls: list[tuple[str, int, int]] = []
        self.transient_failures = 0

    async def fetch(self, symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
        self.calls.append((symbol, from_id, limit))
        assert 1 <= limit <= 1000, limit
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransientError("503 from the history endpoint")
        batch = self._trades.get(symbol)
        if batch is None:
            raise UnknownSymbol(f"Invalid symbol {symbol!r}", code=-1121, status=400)
        start = pc.search_sorted(batch.column("trade_id"), pa.scalar(from_id)).as_py()
        return batch.slice(start, limit)

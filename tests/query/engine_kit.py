"""Rows with known answers for the query engine's tests, and a fixed in-test tail.

Tests compute what the engine should return from the plain Python rows built here
(:class:`Trade`, :class:`Quote`), never through K2's query code.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

import pyarrow as pa

from k2.lake.tables import TABLE_DEFS, sort_for
from k2.query.base import DataType, TailView
from k2.records import QUOTE, TRADE

if TYPE_CHECKING:
    from pyiceberg.table import Table

#: 2024-01-01T00:00:00Z in µs.
T0 = 1_704_067_200_000_000
DAY = 86_400_000_000
HOUR = 3_600_000_000
EIGHT = Decimal("0.00000001")

#: Symbols in three different buckets (13, 14, 11) plus one sharing BTCUSDT's (13).
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


def dt(us: int) -> datetime:
    """UTC datetime of µs since the epoch."""
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


@dataclass(frozen=True)
class Trade:
    symbol: str
    trade_id: int
    ts: int
    price: Decimal
    quantity: Decimal
    side: str = "BUY"
    exchange: str = "binance"

    @property
    def message_id(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.trade_id}"

    @property
    def key(self) -> tuple[int, str, str, int]:
        return (self.ts, self.exchange, self.symbol, self.trade_id)


@dataclass(frozen=True)
class Quote:
    symbol: str
    update_id: int
    ts: int
    bid: Decimal
    ask: Decimal
    exchange: str = "binance"

    @property
    def key(self) -> tuple[int, str, str, int]:
        return (self.ts, self.exchange, self.symbol, self.update_id)


def trades_table(trades: Sequence[Trade]) -> pa.Table:
    """Canonical trade rows for ``trades`` (input order)."""
    ts = pa.array([t.ts for t in trades], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    dec = pa.decimal128(18, 8)
    notional = [(t.price * t.quantity).quantize(EIGHT, ROUND_HALF_EVEN) for t in trades]
    columns = {
        "message_id": pa.array([t.message_id for t in trades]),
        "trade_id": pa.array([t.trade_id for t in trades], pa.int64()),
        "exchange": pa.array([t.exchange for t in trades]),
        "symbol": pa.array([t.symbol for t in trades]),
        "asset_class": pa.array(["crypto"] * len(trades)),
        "timestamp": ts,
        "event_time": ts,
        "price": pa.array([t.price for t in trades], dec),
        "quantity": pa.array([t.quantity for t in trades], dec),
        "quote_quantity": pa.array(notional, dec),
        "currency": pa.array(["USDT"] * len(trades)),
        "side": pa.array([t.side for t in trades]),
        "is_buyer_maker": pa.array([t.side == "SELL" for t in trades]),
        "source_sequence": pa.array([t.trade_id for t in trades], pa.int64()),
        "ingestion_timestamp": ts,
        "vendor_data": pa.nulls(len(trades), pa.string()),
    }
    schema = TRADE.arrow_schema()
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def quotes_table(quotes: Sequence[Quote]) -> pa.Table:
    """Canonical quote rows for ``quotes`` (input order)."""
    ts = pa.array([q.ts for q in quotes], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    dec = pa.decimal128(18, 8)
    columns = {
        "message_id": pa.array([f"{q.exchange}:{q.symbol}:{q.update_id}" for q in quotes]),
        "exchange": pa.array([q.exchange for q in quotes]),
        "symbol": pa.array([q.symbol for q in quotes]),
        "asset_class": pa.array(["crypto"] * len(quotes)),
        "timestamp": ts,
        "update_id": pa.array([q.update_id for q in quotes], pa.int64()),
        "bid_price": pa.array([q.bid for q in quotes], dec),
        "bid_quantity": pa.array([Decimal("1")] * len(quotes), dec),
        "ask_price": pa.array([q.ask for q in quotes], dec),
        "ask_quantity": pa.array([Decimal("2")] * len(quotes), dec),
        "ingestion_timestamp": ts,
        "vendor_data": pa.nulls(len(quotes), pa.string()),
    }
    schema = QUOTE.arrow_schema()
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def market(
    *, days: int = 3, per_symbol_day: int = 60, seed: int = 7, symbols: Sequence[str] = SYMBOLS
) -> list[Trade]:
    """Trades of ``symbols`` over ``days`` days from :data:`T0`, with deliberate ties:
    some trades of one symbol share a timestamp, and symbols share timestamps."""
    rng = random.Random(seed)
    out: list[Trade] = []
    next_id = {s: 1000 * (i + 1) for i, s in enumerate(symbols)}
    for day in range(days):
        for s in symbols:
            # Whole seconds, so symbols often share a timestamp; plus forced ties: two
            # trades of the symbol at one time, and every symbol at 12:00:00.
            times = [rng.randrange(0, DAY // 1_000_000) * 1_000_000 for _ in range(per_symbol_day)]
            times[1] = times[0]
            times[2] = 12 * HOUR
            for t in sorted(times):
                out.append(
                    Trade(
                        s,
                        next_id[s],
                        T0 + day * DAY + t,
                        Decimal(rng.randrange(100_000_000, 9_000_000_000_000)) * EIGHT,
                        Decimal(rng.randrange(1, 500_000_000)) * EIGHT,
                        rng.choice(("BUY", "SELL")),
                    )
                )
                next_id[s] += 1
    return out


def append(table: Table, rows: pa.Table) -> int:
    """Append ``rows`` sorted as the sink would; return the new snapshot id."""
    table.append(sort_for(TABLE_DEFS[table.name()[-1]], rows))
    snap = table.current_snapshot()
    assert snap is not None
    return int(snap.snapshot_id)


def append_by_day(table: Table, trades: Iterable[Trade]) -> list[int]:
    """One append per UTC day of ``trades``; the snapshot ids, in order."""
    by_day: dict[int, list[Trade]] = {}
    for t in trades:
        by_day.setdefault((t.ts - T0) // DAY, []).append(t)
    return [append(table, trades_table(by_day[d])) for d in sorted(by_day)]


def key_of(row: dict[str, object], seq: str = "trade_id") -> tuple[int, str, str, int]:
    """The ordering key of a result row (``timestamp`` as µs)."""
    ts = row["timestamp"]
    seq_value = row[seq]
    assert isinstance(ts, datetime) and isinstance(seq_value, int)
    us = (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return (us, str(row["exchange"]), str(row["symbol"]), seq_value)


class FixedTail:
    """A :class:`~k2.query.base.Tail` returning the views it was given (an empty view at
    the table's current snapshot for a data type without one)."""

    def __init__(self, tables: dict[str, Table], views: dict[DataType, TailView] | None = None):
        self.tables = tables
        self.views: dict[DataType, TailView] = dict(views or {})
        self.calls = 0

    def view(self, data_type: DataType) -> TailView:
        self.calls += 1
        if data_type in self.views:
            return self.views[data_type]
        table = self.tables[data_type]
        table.refresh()
        snap = table.current_snapshot()
        empty = trades_table([]) if data_type == "trades" else quotes_table([])
        return TailView(None if snap is None else snap.snapshot_id, {}, empty)

    def peek(self, data_type: DataType) -> TailView | None:
        return self.views.get(data_type)

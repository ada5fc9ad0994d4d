"""Minute partials: a trades data file's trades summarised per (symbol, exchange, minute).

K2's writer stores them beside each trades data file it writes, as a Parquet file named
after it (:func:`minutes_path`: ``<file>.parquet.minutes``), written *before* the data
file: data file names are unique, so a partials file can only belong to the data file of
its name (one whose write failed never reaches a snapshot), and a data file without one
(the sink's, written by pyiceberg, until compaction rewrites them) simply has none. Data
files never change, so a file's partials stay true as long as the file is live in any
snapshot: time travel, compaction and snapshot expiry need nothing more, and
:func:`~k2.lake.maintenance.remove_orphan_files` keeps partials whose data file a
retained snapshot references.

One row per (symbol, exchange, minute) with trades: first and last trade (time, id,
price), high, low, count, and the exact sums bars need (volume, quote volume, buy and
sell volume, Σ price × quantity) — see :class:`k2.query.bars.Partials`. Bars at any
whole number of minutes are made from them (:func:`k2.query.bars.combine`), equal to
the bars computed from the trades to the last decimal; a one-symbol day of 1-minute
bars reads ~1,440 rows instead of every trade of the day.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from k2.query.bars import Partials

# k2.query.bars is imported where used: k2.query's engine imports this module.

#: The interval partials are kept at.
MINUTE_US = 60_000_000
#: Trade columns the partials are made from; a data file without them gets none.
SOURCE_COLUMNS = ("symbol", "exchange", "timestamp", "trade_id", "price", "quantity",
                  "quote_quantity", "side")  # fmt: skip
_SUFFIX = ".minutes"
_DELTA = dict.fromkeys(("minute", "first_trade_at", "first_trade_id", "last_trade_at",
                        "last_trade_id", "trade_count"), "DELTA_BINARY_PACKED")  # fmt: skip
_TS = pa.timestamp("us", tz="UTC")
_PRICE = pa.decimal128(18, 8)
_SUM = pa.decimal128(38, 8)
_PQ = pa.decimal128(38, 16)
_SUMS = ("volume", "quote_volume", "buy_volume", "sell_volume")
#: Largest unscaled decimal(38, s) value.
_DEC38_MAX = 10**38 - 1

#: The partials file's columns, sorted by symbol, exchange, minute.
SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("minute", _TS, nullable=False),
        pa.field("first_trade_at", _TS, nullable=False),
        pa.field("first_trade_id", pa.int64(), nullable=False),
        pa.field("open", _PRICE, nullable=False),
        pa.field("last_trade_at", _TS, nullable=False),
        pa.field("last_trade_id", pa.int64(), nullable=False),
        pa.field("close", _PRICE, nullable=False),
        pa.field("high", _PRICE, nullable=False),
        pa.field("low", _PRICE, nullable=False),
        pa.field("trade_count", pa.int64(), nullable=False),
        *(pa.field(name, _SUM, nullable=False) for name in _SUMS),
        pa.field("price_quantity", _PQ, nullable=False),
    ]
)


def minutes_path(data_path: str) -> str:
    """Where the partials of the data file at ``data_path`` are (or would be) stored:
    beside it, its name plus ``.minutes`` (a Parquet file, but not ``*.parquet``, so a
    glob over the table's data files does not pick it up)."""
    return data_path + _SUFFIX


def minutes_table(rows: pa.Table) -> pa.Table | None:
    """The partials of trade ``rows`` as :data:`SCHEMA`; ``None`` when they cannot be
    kept exactly (see :func:`~k2.query.bars.partials_from_rows`; a sum of 10**38 units
    or more) or ``rows`` lack a column of :data:`SOURCE_COLUMNS`."""
    from k2.query.bars import _decimal, partials_from_rows

    if not set(SOURCE_COLUMNS) <= set(rows.column_names):
        return None
    parts = partials_from_rows(rows.select(list(SOURCE_COLUMNS)), MINUTE_US)
    if parts is None:
        return None
    sums = {name: getattr(parts, name) for name in (*_SUMS, "pq")}
    if any(len(v) and int(np.max(v)) > _DEC38_MAX for v in sums.values()):
        return None
    order = np.lexsort((parts.bucket, parts.exchange.astype(str), parts.symbol.astype(str)))
    ts = pa.array(parts.bucket * MINUTE_US, _TS)
    columns = [
        pa.array(parts.symbol, pa.string()),
        pa.array(parts.exchange, pa.string()),
        ts,
        pa.array(parts.first_ts, _TS),
        pa.array(parts.first_id, pa.int64()),
        _decimal(parts.open, _PRICE),
        pa.array(parts.last_ts, _TS),
        pa.array(parts.last_id, pa.int64()),
        _decimal(parts.close, _PRICE),
        _decimal(parts.high, _PRICE),
        _decimal(parts.low, _PRICE),
        pa.array(parts.count, pa.int64()),
        *(_decimal(getattr(parts, name), _SUM) for name in _SUMS),
        _decimal(parts.pq, _PQ),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA).take(order)


def write_minutes(io: Any, data_path: str, rows: pa.Table) -> bool:
    """Write the partials of ``rows`` (the trades of the data file about to be written
    at ``data_path``) with pyiceberg FileIO ``io``; False when there are none to keep
    (:func:`minutes_table`). Integers and times delta-encoded: ~30% smaller than plain."""
    table = minutes_table(rows)
    if table is None:
        return False
    with io.new_output(minutes_path(data_path)).create(overwrite=False) as stream:
        pq.write_table(
            table,
            stream,
            compression="zstd",
            use_dictionary=["symbol", "exchange"],
            column_encoding=_DELTA,
            store_decimal_as_integer=True,
            row_group_size=65_536,
        )
    return True


def partials_of(table: pa.Table) -> Partials | None:
    """:class:`~k2.query.bars.Partials` at one minute from rows of a partials file
    (:data:`SCHEMA`; any subset of its rows, any order, kept: :func:`~k2.query.bars.combine`
    orders them); ``None`` when the table is not of that schema or holds values
    :class:`Partials` cannot (negative ones)."""
    from k2.query.bars import Partials, _units

    if not table.schema.equals(SCHEMA, check_metadata=False):
        return None
    prices = [_units(table.column(c)) for c in ("open", "close", "high", "low")]
    sums = [_wide(table.column(c)) for c in (*_SUMS, "price_quantity")]
    if any(v is None for v in prices) or any(v is None for v in sums):
        return None
    open_, close, high, low = (v for v in prices if v is not None)
    volume, quote, buy, sell, pq_ = (v for v in sums if v is not None)

    def ints(name: str) -> np.ndarray:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        return np.asarray(column.to_numpy(), dtype=np.int64)

    return Partials(
        interval_us=MINUTE_US,
        bucket=ints("minute") // MINUTE_US,
        exchange=np.asarray(table.column("exchange").to_numpy(), dtype=object),
        symbol=np.asarray(table.column("symbol").to_numpy(), dtype=object),
        first_ts=ints("first_trade_at"),
        first_id=ints("first_trade_id"),
        open=open_,
        last_ts=ints("last_trade_at"),
        last_id=ints("last_trade_id"),
        close=close,
        high=high,
        low=low,
        count=ints("trade_count"),
        volume=volume,
        quote_volume=quote,
        buy_volume=buy,
        sell_volume=sell,
        pq=pq_,
    )


def _wide(column: pa.ChunkedArray) -> np.ndarray | None:
    """A decimal128 column's unscaled values: int64 where every one fits, else Python
    integers (an object array); ``None`` with a null or a negative value."""
    from k2.query.bars import decimal_words

    if column.null_count or not isinstance(column.type, pa.Decimal128Type):
        return None
    low, high = decimal_words(column)
    if high.size and int(high.min()) < 0:
        return None
    if not high.any():
        if low.size and int(low.min()) < 0:  # 2**63 <= value < 2**64
            return (low.view(np.uint64)).astype(object)
        return low
    out: np.ndarray = (high.astype(object) << 64) + low.view(np.uint64).astype(object)
    return out

"""OHLCV bars from trades, exact to the last decimal.

A bar covers ``[bar_start, bar_end)``, epoch-aligned: ``bar_start`` is a multiple of the
interval since 1970-01-01T00:00:00Z (so ``1d`` bars are UTC days, ``4h`` bars start at
00:00, 04:00 ... UTC). Only intervals with at least one trade produce a bar.

Per bar, over its trades:

- ``open``/``close``: the price of the first/last trade by ``(timestamp, trade_id)``;
- ``high``/``low``: the largest/smallest price;
- ``volume`` = Σ quantity; ``quote_volume`` = Σ quote_quantity;
- ``buy_volume``/``sell_volume`` = Σ quantity of trades whose aggressor ``side`` is
  BUY/SELL; ``trade_count`` = number of trades;
- ``vwap`` = Σ(price × quantity) / Σ quantity, computed **exactly** and rounded
  **half-even to 8 decimal places**. The products are summed as decimal(38,16) (no
  rounding: price and quantity have 8 places each), both sums are turned into integers
  (units of 1e-16 and 1e-8) and divided in 128-bit integer arithmetic with the
  remainder deciding the rounding. It is *not* Σ quote_quantity / Σ quantity, because
  each quote_quantity was already rounded to 8 places.

Types: open/high/low/close/vwap ``decimal(18,8)``; the sums ``decimal(38,8)`` (a day's
volume can exceed decimal(18,8)); times ``timestamp[us, UTC]``; ``trade_count`` int64.
Everything runs in DuckDB: no per-bar Python.
"""

from __future__ import annotations

import re

import pyarrow as pa

from k2.query.base import QueryError

#: Interval text accepted by :func:`parse_interval`.
ACCEPTED_INTERVALS = "Ns, Nm or Nh (N ≥ 1, at most one day), or 1d"

_INTERVAL_RE = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
DAY_US = _UNIT_US["d"]

#: Columns of a bar, in order.
BAR_COLUMNS = (
    "symbol",
    "exchange",
    "bar_start",
    "bar_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "vwap",
    "trade_count",
    "buy_volume",
    "sell_volume",
)

_PRICE = pa.decimal128(18, 8)
_SUM = pa.decimal128(38, 8)
_TS = pa.timestamp("us", tz="UTC")

#: The Arrow schema of bars (and, with the two extra columns, of a summary).
BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("bar_start", _TS, nullable=False),
        pa.field("bar_end", _TS, nullable=False),
        pa.field("open", _PRICE, nullable=False),
        pa.field("high", _PRICE, nullable=False),
        pa.field("low", _PRICE, nullable=False),
        pa.field("close", _PRICE, nullable=False),
        pa.field("volume", _SUM, nullable=False),
        pa.field("quote_volume", _SUM, nullable=False),
        pa.field("vwap", _PRICE),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("buy_volume", _SUM, nullable=False),
        pa.field("sell_volume", _SUM, nullable=False),
    ]
)
SUMMARY_SCHEMA = BAR_SCHEMA.append(pa.field("first_trade_at", _TS, nullable=False)).append(
    pa.field("last_trade_at", _TS, nullable=False)
)


def parse_interval(text: str) -> int:
    """The length in µs of bar interval ``text`` (``1s`` ... ``1d``).

    Raises ``QueryError(code="bad-interval")`` naming the accepted forms for anything
    else (``0m``, ``2d``, ``25h``, ``1w``, ``90`` ...).
    """
    match = _INTERVAL_RE.match(text.strip()) if isinstance(text, str) else None
    if match is not None:
        us = int(match.group(1)) * _UNIT_US[match.group(2)]
        if us <= DAY_US and (match.group(2) != "d" or match.group(1) == "1"):
            return us
    raise QueryError(
        f"bad bar interval {text!r}: use {ACCEPTED_INTERVALS} (e.g. 1s, 15s, 1m, 5m, 1h, 4h, 1d)",
        code="bad-interval",
    )


def bars_sql(source: str, where: str, interval_us: int) -> str:
    """SQL computing the bars (plus ``first_trade_at``/``last_trade_at``) of the trades
    in ``source`` (a FROM item) matching ``where``, ordered by bar_start, exchange,
    symbol."""
    iv = int(interval_us)
    # 128-bit integer forms: pq_i in 1e-16 units (its integer and fractional parts are
    # converted separately so neither overflows decimal(38,16)), q_i in 1e-8 units.
    return f"""
WITH agg AS (
  SELECT symbol, exchange, epoch_us(timestamp) // {iv} AS b,
    arg_min(price, epoch_us(timestamp)::HUGEINT * 18446744073709551616 + trade_id) AS open,
    max(price) AS high,
    min(price) AS low,
    arg_max(price, epoch_us(timestamp)::HUGEINT * 18446744073709551616 + trade_id) AS close,
    sum(quantity) AS volume,
    sum(quote_quantity) AS quote_volume,
    sum(CAST(price AS DECIMAL(38, 8)) * quantity) AS pq,
    count(*) AS trade_count,
    coalesce(sum(quantity) FILTER (WHERE side = 'BUY'), 0) AS buy_volume,
    coalesce(sum(quantity) FILTER (WHERE side = 'SELL'), 0) AS sell_volume,
    min(timestamp) AS first_trade_at,
    max(timestamp) AS last_trade_at
  FROM {source}
  WHERE {where}
  GROUP BY ALL
), ints AS (
  SELECT *,
    CAST(floor(pq) AS HUGEINT) * 10000000000000000::HUGEINT
      + CAST((pq - floor(pq)) * 10000000000000000 AS HUGEINT) AS pq_i,
    NULLIF(CAST(volume * 100000000 AS HUGEINT), 0) AS q_i
  FROM agg
), quot AS (
  SELECT *, pq_i // q_i AS d, pq_i % q_i AS r FROM ints
)
SELECT symbol, exchange,
  make_timestamptz(b * {iv}) AS bar_start,
  make_timestamptz(b * {iv} + {iv}) AS bar_end,
  open, high, low, close,
  CAST(volume AS DECIMAL(38, 8)) AS volume,
  CAST(quote_volume AS DECIMAL(38, 8)) AS quote_volume,
  CAST(
    CAST(d + CASE WHEN 2 * r > q_i OR (2 * r = q_i AND d % 2 = 1) THEN 1 ELSE 0 END
         AS DECIMAL(18, 0)) * 0.00000001::DECIMAL(9, 8)
    AS DECIMAL(18, 8)) AS vwap,
  trade_count,
  CAST(buy_volume AS DECIMAL(38, 8)) AS buy_volume,
  CAST(sell_volume AS DECIMAL(38, 8)) AS sell_volume,
  first_trade_at, last_trade_at
FROM quot
ORDER BY bar_start, exchange, symbol
"""


def conform_bars(table: pa.Table, *, summary: bool = False) -> pa.Table:
    """DuckDB's bar rows with :data:`BAR_SCHEMA` (or :data:`SUMMARY_SCHEMA`) types."""
    schema = SUMMARY_SCHEMA if summary else BAR_SCHEMA
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in schema], schema=schema)

"""Benchmark inputs shared by several benchmarks, built from the real capture."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from k2.records import TRADE
from k2.sources.binance.parse import FrameParser
from tests.captures import hft_frames

FIVE_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")


def realistic_trades(
    total: int, batch: int, *, symbols: tuple[str, ...] = FIVE_SYMBOLS, first_id: int = 0
) -> list[pa.RecordBatch]:
    """``total`` canonical trades in batches of ``batch`` rows.

    The real BTCUSDT trades of the hftbacktest capture (real prices, quantities and
    timestamps), tiled to ``total`` rows, dealt round-robin over ``symbols`` with fresh,
    unique trade ids from ``first_id`` and matching message ids: the key mix of a
    multi-symbol capture.
    """
    frames, received = hft_frames()
    real = FrameParser().parse(frames, received).trades
    rows = real.take(pa.array([i % real.num_rows for i in range(total)], pa.int64()))
    keys = pa.array([symbols[i % len(symbols)] for i in range(total)], pa.string())
    ids = pa.array(range(first_id, first_id + total), pa.int64())
    message_ids = pc.binary_join_element_wise("binance", keys, ids.cast(pa.string()), ":")
    columns = {"symbol": keys, "trade_id": ids, "source_sequence": ids, "message_id": message_ids}
    schema = TRADE.arrow_schema()
    table = pa.Table.from_arrays(
        [columns.get(f.name, rows.column(f.name)) for f in schema], schema=schema
    ).combine_chunks()
    out: list[pa.RecordBatch] = table.to_batches(max_chunksize=batch)
    return out

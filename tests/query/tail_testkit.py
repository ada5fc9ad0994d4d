"""Helpers for the live-tail tests: trades to produce, sink-like lake commits, and the
ground truth a tail's view is checked against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from k2.lake.sink_offsets import encode_offsets, lake_offsets, offsets_key
from k2.lake.tables import TABLE_DEFS, sort_for
from k2.log.base import Log, Produced, TopicPartition
from k2.log.topics import TopicLayout
from k2.query.base import TailView
from k2.records import TRADE

if TYPE_CHECKING:
    from pyiceberg.table import Table

#: The topics the live-tail tests use (few partitions, so every one gets records).
TAIL_LAYOUT = TopicLayout(trade_partitions=3, quote_partitions=2)

#: 2024-01-01T00:00:00Z in µs.
T0_US = 1_704_067_200_000_000
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT", "XRPUSDT")


def make_trades(symbol: str, first_id: int, count: int, *, step_us: int = 1000) -> pa.RecordBatch:
    """``count`` trades of ``symbol`` with consecutive ids from ``first_id``."""
    n = count
    ids = pa.array(range(first_id, first_id + n), pa.int64())
    ts = pa.array([T0_US + i * step_us for i in range(first_id, first_id + n)], pa.int64())
    ts = ts.cast(pa.timestamp("us", tz="UTC"))
    dec = pa.decimal128(18, 8)
    prices = [Decimal(42000) + Decimal(i % 1000) / 100 for i in range(first_id, first_id + n)]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f"binance:{symbol}:{i}" for i in range(first_id, first_id + n)]),
            ids,
            pa.array(["binance"] * n),
            pa.array([symbol] * n),
            pa.array(["crypto"] * n),
            ts,
            ts,
            pa.array(prices, dec),
            pa.array([Decimal("0.00100000")] * n, dec),
            pa.array([p * Decimal("0.001") for p in prices], dec),
            pa.array(["USDT"] * n),
            pa.array(["BUY" if i % 2 else "SELL" for i in range(n)]),
            pa.array([bool(i % 2) for i in range(n)]),
            ids,
            ts,
            pa.nulls(n, pa.string()),
        ],
        schema=TRADE.arrow_schema(),
    )


class TradeFeed:
    """Produces trades with consecutive ids per symbol; remembers what it produced."""

    def __init__(self, log: Log, topic: str, symbols: Sequence[str] = SYMBOLS) -> None:
        self.log = log
        self.topic = topic
        self.symbols = tuple(symbols)
        self.next_id = dict.fromkeys(self.symbols, 1)
        self.ends: dict[int, int] = {}

    def produce(self, per_symbol: int | Mapping[str, int]) -> Produced:
        """One produce call with ``per_symbol`` new trades of each symbol (or a count
        per symbol); returns where they landed."""
        if isinstance(per_symbol, Mapping):
            counts = dict(per_symbol)
        else:
            counts = dict.fromkeys(self.symbols, per_symbol)
        batches = []
        for symbol, n in counts.items():
            if n:
                batches.append(make_trades(symbol, self.next_id[symbol], n))
                self.next_id[symbol] += n
        table = pa.Table.from_batches(batches, schema=TRADE.arrow_schema())
        produced = self.log.produce(self.topic, table.combine_chunks().to_batches()[0])
        for p, (first, n) in produced.ranges.items():
            self.ends[p] = max(self.ends.get(p, 0), first + n)
        return produced


def commit(log: Log, table: Table, topic: str, upto: Mapping[int, int]) -> int:
    """Append to the lake the records of ``topic`` from the lake's offsets up to
    ``upto`` (per partition, exclusive), storing the merged offsets in the snapshot
    summary exactly as :mod:`k2.lake.sink` does. Returns the records appended."""
    table.refresh()
    lake = lake_offsets(table, topic)
    begins = log.begin_offsets(topic)
    merged = dict(lake)
    batches: list[pa.RecordBatch] = []
    for p, end in sorted(upto.items()):
        start = lake.get(p, begins.get(p, 0))
        if end <= start:
            continue
        batches += [b.records for b in log.read(TopicPartition(topic, p), start, end)]
        merged[p] = end
    if merged == lake:
        return 0
    table_def = TABLE_DEFS[table.name()[-1]]
    data = sort_for(table_def, pa.Table.from_batches(batches, table_def.record_type.arrow_schema()))
    table.append(data, snapshot_properties={offsets_key(topic): encode_offsets(merged)})
    return int(data.num_rows)


def log_records(log: Log, topic: str, ends: Mapping[int, int]) -> pa.Table:
    """``message_id``, ``partition``, ``offset`` of every record of ``topic`` below
    ``ends`` (per partition), read straight from the log: the ground truth."""
    ids: list[pa.Array] = []
    parts: list[pa.Array] = []
    offsets: list[pa.Array] = []
    for p, end in sorted(ends.items()):
        for batch in log.read(TopicPartition(topic, p), 0, end):
            ids.append(batch.records.column("message_id"))
            offsets.append(batch.offsets())
            parts.append(pa.repeat(pa.scalar(p, pa.int64()), batch.records.num_rows))
    if not ids:
        return pa.table({"message_id": pa.array([], pa.string()),
                         "partition": pa.array([], pa.int64()),
                         "offset": pa.array([], pa.int64())})  # fmt: skip
    return pa.table(
        {
            "message_id": pa.concat_arrays(ids),
            "partition": pa.concat_arrays(parts),
            "offset": pa.concat_arrays(offsets),
        }
    )


def lake_rows(table: Table, snapshot_id: int | None) -> pa.Table:
    """The table at ``snapshot_id`` (no snapshot: no rows)."""
    if snapshot_id is None:
        return pa.Table.from_batches([], TRADE.arrow_schema())
    table.refresh()
    return table.scan(snapshot_id=snapshot_id).to_arrow()


def check_union(log: Log, table: Table, topic: str, view: TailView) -> tuple[set[str], set[str]]:
    """Assert the tail invariant for a complete ``view``: lake at its snapshot ∪ its
    rows = every record of ``topic`` below ``view.log_end``, no duplicate on either
    side, and a record on both sides is the same row. Returns (lake ids, tail ids)."""
    lake = lake_rows(table, view.snapshot_id)
    lake_ids = lake.column("message_id").to_pylist()
    tail_ids = view.rows.column("message_id").to_pylist()
    assert len(set(lake_ids)) == len(lake_ids), "duplicate in the lake"
    assert len(set(tail_ids)) == len(tail_ids), "duplicate in the tail"
    truth = set(log_records(log, topic, view.log_end).column("message_id").to_pylist())
    union = set(lake_ids) | set(tail_ids)
    assert not truth - union, f"{len(truth - union)} records missing (a gap)"
    assert not union - truth, f"{len(union - truth)} records beyond the view's log_end"
    both = pa.array(sorted(set(lake_ids) & set(tail_ids)), pa.string())
    if len(both):
        key = [("message_id", "ascending")]
        in_lake = lake.filter(pc.is_in(lake["message_id"], both)).sort_by(key)
        in_tail = view.rows.filter(pc.is_in(view.rows["message_id"], both)).sort_by(key)
        assert in_lake.select(in_tail.column_names).equals(in_tail)
    return set(lake_ids), set(tail_ids)


def tail_ids_expected(
    log: Log, topic: str, view: TailView, floor: Mapping[int, int] | None = None
) -> set[str]:
    """The ids a view must hold exactly: records at or after the lake's offset (or
    ``floor`` where the lake has none, default 0) and below ``log_end``."""
    truth = log_records(log, topic, view.log_end)
    starts = [view.offsets.get(p, (floor or {}).get(p, 0)) for p in truth["partition"].to_pylist()]
    keep = pc.greater_equal(truth["offset"], pa.array(starts, pa.int64()))
    return set(truth.filter(keep).column("message_id").to_pylist())

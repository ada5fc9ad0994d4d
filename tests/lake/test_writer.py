"""K2's Parquet writer: the partition split it uses must equal pyiceberg's, row for row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiceberg.io.pyarrow import _determine_partitions

from k2.lake.tables import TABLE_DEFS, partition_spec
from k2.lake.writer import _contiguous_runs, partitions
from k2.records import TRADE

TRADES = TABLE_DEFS["trades"]
SPEC = partition_spec(TRADES)
SCHEMA = TRADE.iceberg_schema()
START = datetime(2024, 1, 1, 22, tzinfo=UTC)


def trades(symbols: list[str], offsets_s: list[int]) -> pa.Table:
    """Minimal trade rows: only the partition sources vary, the rest is filler."""
    n = len(symbols)
    ts = [START + timedelta(seconds=s) for s in offsets_s]
    columns = {f.name: pa.nulls(n, f.type) for f in TRADE.arrow_schema()}
    columns |= {
        "symbol": pa.array(symbols, pa.string()),
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "trade_id": pa.array(range(n), pa.int64()),
    }
    return pa.table(columns, schema=TRADE.arrow_schema())


def split(parts: object) -> dict[str, list[int]]:
    return {
        key.to_path(): sorted(rows["trade_id"].to_pylist())
        for key, rows in parts  # type: ignore[attr-defined]
    }


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    symbols=st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT"]), min_size=1, max_size=1)
    | st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT"]), min_size=1, max_size=40),
    offsets=st.lists(st.integers(0, 3 * 86_400), min_size=1, max_size=40),
    ordered=st.booleans(),
)
def test_partitions_equal_pyiceberg_split(
    symbols: list[str], offsets: list[int], ordered: bool
) -> None:
    n = min(len(offsets), 40)
    offsets = sorted(offsets) if ordered else offsets
    symbols = (symbols * n)[:n]
    data = trades(symbols, (offsets * n)[:n])
    expected = {
        p.partition_key.to_path(): sorted(p.arrow_table_partition["trade_id"].to_pylist())
        for p in _determine_partitions(SPEC, SCHEMA, data)
    }
    assert split(partitions(SPEC, SCHEMA, data)) == expected


def test_contiguous_runs_apply_only_where_they_are_right() -> None:
    """One symbol over ascending time across three days: three runs, cut at midnight."""
    day = 86_400
    midnight = 7_200  # START is 22:00
    times = [0, midnight - 1, midnight, midnight + day - 1, midnight + day, midnight + day + 5]
    one_symbol = trades(["BTCUSDT"] * 6, times)
    assert _contiguous_runs(SPEC, SCHEMA, one_symbol) == [(0, 2), (2, 4), (4, 6)]
    # Two symbols: the bucket varies, so the general split is used.
    assert _contiguous_runs(SPEC, SCHEMA, trades(["BTCUSDT", "ETHUSDT"], [0, 1])) is None
    # Time out of order: the general split.
    assert _contiguous_runs(SPEC, SCHEMA, trades(["BTCUSDT"] * 2, [9_000, 0])) is None


@pytest.mark.parametrize("rows", [0, 1])
def test_tiny_inputs(rows: int) -> None:
    data = trades(["BTCUSDT"] * rows, [0] * rows)
    assert len(list(partitions(SPEC, SCHEMA, data))) == rows

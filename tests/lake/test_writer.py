"""K2's Parquet writer: the partition split it uses must equal pyiceberg's, row for row."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiceberg.io.pyarrow import _determine_partitions

from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.tables import TABLE_DEFS, ensure_tables, partition_spec
from k2.lake.writer import (
    _contiguous_runs,
    _in_order,
    partitions,
    sorted_order_id,
    write_partitioned,
)
from k2.records import TRADE
from tests.lake.conftest import make_trades

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


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["A", "B", "BB", "C"]), st.integers(0, 5), st.integers(0, 3)),
        min_size=0,
        max_size=30,
    ),
    descending=st.booleans(),
)
def test_in_order_agrees_with_python(rows: list[tuple[str, int, int]], descending: bool) -> None:
    """The vectorised order test says what comparing each pair of key tuples says."""
    if not rows:
        return
    symbols, times, ids = (list(c) for c in zip(*rows, strict=True))
    columns = [
        (pa.chunked_array([pa.array(symbols, pa.string())]), True),
        (pa.chunked_array([pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC"))]), True),
        (pa.chunked_array([pa.array(ids, pa.int64())]), not descending),
    ]
    keys = [(s, t, -i if descending else i) for s, t, i in rows]
    expected = all(a <= b for a, b in itertools.pairwise(keys))
    assert _in_order(columns) == expected


def test_files_claim_the_sort_order_only_when_sorted(tmp_path: Path) -> None:
    """A data file K2 writes names the table's sort order (symbol, timestamp) only when
    its rows follow it; the query engine relies on the claim."""
    catalog = catalog_from(LakeSettings(), tmp_path)
    table = ensure_tables(catalog)["trades"]
    order_id = table.metadata.default_sort_order_id
    assert order_id != 0  # the table is sorted: 0 is Iceberg's "unsorted"
    ordered = trades(["BTCUSDT", "BTCUSDT", "ETHUSDT"], [5, 9, 1])
    assert sorted_order_id(table, ordered) == order_id
    assert sorted_order_id(table, trades(["BTCUSDT", "BTCUSDT"], [9, 5])) is None
    assert sorted_order_id(table, trades(["ETHUSDT", "BTCUSDT"], [1, 5])) is None
    assert sorted_order_id(table, trades(["BTCUSDT"], [1])) == order_id
    rows = pa.Table.from_batches([make_trades("BTCUSDT", 1, 3), make_trades("ETHUSDT", 1, 2)]).cast(
        TRADE.arrow_schema()
    )
    written = write_partitioned(table, rows, prefix="t")
    assert [f.sort_order_id for f in written] == [order_id, order_id]  # two buckets
    backwards = rows.take(pa.array([2, 1, 0, 4, 3]))
    assert [f.sort_order_id for f in write_partitioned(table, backwards, prefix="t")] == [
        None,
        None,
    ]


def test_trade_files_carry_their_minute_partials(tmp_path: Path) -> None:
    """Each trades file K2 writes has minute partials beside it that summarise exactly
    that file's rows; trades they cannot hold exactly (a negative price here) get a
    data file without partials, never a wrong one."""
    import pyarrow.parquet as pq

    from k2.lake.minutes import minutes_path, minutes_table

    table = ensure_tables(catalog_from(LakeSettings(), tmp_path))["trades"]
    minute = 60_000_000
    rows = pa.Table.from_batches(
        [make_trades("BTCUSDT", 1, 300, step_us=minute // 97), make_trades("ETHUSDT", 1, 5)]
    ).cast(TRADE.arrow_schema())
    written = write_partitioned(table, rows, prefix="t")
    assert len(written) == 2
    counted = 0
    for f in written:
        path = f.file_path.removeprefix("file://")
        assert minutes_path(path) == path + ".minutes"
        stored, own = pq.read_table(minutes_path(path)), pq.read_table(path)
        assert stored.equals(minutes_table(own))
        minutes = Counter(
            (r["symbol"], int(r["timestamp"].timestamp() * 1e6) // minute)
            for r in own.select(["symbol", "timestamp"]).to_pylist()
        )
        assert stored["trade_count"].to_pylist() == [minutes[k] for k in sorted(minutes)]
        counted += sum(stored["trade_count"].to_pylist())
    assert counted == rows.num_rows
    odd = pa.Table.from_batches([make_trades("BTCUSDT", 1, 2)]).cast(TRADE.arrow_schema())
    negative = pa.array([Decimal("-1"), Decimal("1")], odd.schema.field("price").type)
    odd = odd.set_column(odd.schema.get_field_index("price"), "price", negative)
    (unheld,) = write_partitioned(table, odd, prefix="t")
    path = unheld.file_path.removeprefix("file://")
    assert Path(path).is_file() and not Path(minutes_path(path)).exists()


def test_files_say_when_their_message_ids_can_be_built(tmp_path: Path) -> None:
    """Asked to (compaction), the footer names the native id column only when every
    row's message_id is ``exchange:SYMBOL:trade_id``; an archive's own ids
    (``...:agg:<id>``) or one wrong row leave it out."""
    import pyarrow.parquet as pq

    from k2.lake import message_ids

    table = ensure_tables(catalog_from(LakeSettings(), tmp_path))["trades"]
    rows = pa.Table.from_batches([make_trades("BTCUSDT", 7, 40)]).cast(TRADE.arrow_schema())

    def footer(data: pa.Table) -> dict[bytes, bytes]:
        (f,) = write_partitioned(table, data, prefix="t", message_id_rule=rule)
        meta = pq.read_metadata(f.file_path.removeprefix("file://"))
        return dict(meta.metadata or {})

    rule = True
    assert footer(rows).get(message_ids.FOOTER_KEY) == b"trade_id"
    ids = rows.column("message_id").to_pylist()
    column = rows.schema.get_field_index("message_id")
    agg = [i.replace("BTCUSDT:", "BTCUSDT:agg:") for i in ids]
    one_off = [*ids[:-1], ids[-1] + "0"]
    for other in (agg, one_off):
        changed = rows.set_column(column, "message_id", pa.array(other, pa.string()))
        assert message_ids.FOOTER_KEY not in footer(changed)
    rule = False  # the import path does not check: no rule, whatever the ids
    assert message_ids.FOOTER_KEY not in footer(rows)

""" "First/last N" over large files (several row groups), where the engine narrows the
read with row-group statistics and the n-th timestamp before decoding full rows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.query import scan
from k2.query.files import FileIndexer, RowGroup
from k2.query.scan import RowFilter, stats_bound
from k2.records import TRADE
from tests.query.conftest import EngineFactory, Lake
from tests.query.engine_kit import DAY, T0, append, dt, key_of

PER_SYMBOL = 200_000


def big_trades() -> tuple[pa.Table, list[tuple[int, str, str, int]]]:
    """200k trades each of BTCUSDT and XRPUSDT (one bucket: one 400k-row file of four
    row groups), with repeated timestamps; and their keys, sorted."""
    rng = np.random.default_rng(11)
    parts = []
    for k, symbol in enumerate(("BTCUSDT", "XRPUSDT")):
        ts = np.sort(rng.integers(T0, T0 + DAY, PER_SYMBOL // 2)).repeat(2)  # pairs tie
        ids = np.arange(PER_SYMBOL, dtype=np.int64) + k * 10_000_000
        ids[0::2], ids[1::2] = ids[1::2].copy(), ids[0::2].copy()  # ties out of id order
        parts.append((symbol, ts, ids))
    n = 2 * PER_SYMBOL
    symbols = pa.array([s for s, _, _ in parts for _ in range(PER_SYMBOL)])
    ts = pa.array(np.concatenate([p[1] for p in parts])).cast(pa.timestamp("us", tz="UTC"))
    ids = pa.array(np.concatenate([p[2] for p in parts]))
    dec = pa.decimal128(18, 8)
    price = pa.array([Decimal("123.45"), Decimal("123.46")] * (n // 2), dec)
    columns = {
        "message_id": pc.binary_join_element_wise("binance", symbols, ids.cast(pa.string()), ":"),
        "trade_id": ids,
        "exchange": pa.array(["binance"] * n),
        "symbol": symbols,
        "asset_class": pa.array(["crypto"] * n),
        "timestamp": ts,
        "event_time": ts,
        "price": price,
        "quantity": pa.array([Decimal(1)] * n, dec),
        "quote_quantity": pa.array([Decimal(123)] * n, dec),
        "currency": pa.array(["USDT"] * n),
        "side": pa.array(["BUY", "SELL"] * (n // 2)),
        "is_buyer_maker": pa.array([False, True] * (n // 2)),
        "source_sequence": ids,
        "ingestion_timestamp": ts,
        "vendor_data": pa.nulls(n, pa.string()),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in TRADE.arrow_schema()],
                                 schema=TRADE.arrow_schema())  # fmt: skip
    keys = sorted(
        zip(
            (t.value for t in table.column("timestamp")),
            table.column("exchange").to_pylist(),
            table.column("symbol").to_pylist(),
            table.column("trade_id").to_pylist(),
            strict=True,
        )
    )
    return table, keys


@pytest.fixture(scope="module")
def big() -> tuple[pa.Table, list[tuple[int, str, str, int]]]:
    return big_trades()


@pytest.mark.parametrize("direct", [True, False], ids=["row-groups", "duckdb"])
def test_first_and_last_n_on_large_files(
    make_engine: EngineFactory,
    lake: Lake,
    big: tuple[pa.Table, list[tuple[int, str, str, int]]],
    monkeypatch: pytest.MonkeyPatch,
    direct: bool,
) -> None:
    """Both ways of reading "first/last n" (row groups with pyarrow; DuckDB narrowed by
    statistics, which cursors always take) give the exact keys."""
    bounds: list[int | None] = []
    answered: list[bool] = []

    def spy(*args: Any) -> int | None:
        bound = stats_bound(*args)
        bounds.append(bound)
        return bound

    real_direct = scan._read_top_groups

    def direct_spy(*args: Any) -> pa.Table | None:
        got = real_direct(*args)
        answered.append(got is not None)
        return got

    monkeypatch.setattr(scan, "stats_bound", spy)
    monkeypatch.setattr(scan, "_read_top_groups", direct_spy)
    if not direct:
        monkeypatch.setattr(scan, "DIRECT_MAX_N", 0)
    table, keys = big
    append(lake.tables["trades"], table)
    engine = make_engine()
    assert engine.trades(None, limit=1).meta.files_total == 1
    for symbols in (["BTCUSDT"], ["XRPUSDT"], None):
        mine = [k for k in keys if symbols is None or k[2] in symbols]
        last = engine.trades(symbols, order="desc", limit=100)
        assert [key_of(r) for r in last.table.to_pylist()] == mine[-100:][::-1]
        first = engine.trades(symbols, order="asc", limit=100, start=dt(T0 + DAY // 3))
        after = [k for k in mine if k[0] >= T0 + DAY // 3]
        assert [key_of(r) for r in first.table.to_pylist()] == after[:100]
        page2 = engine.trades(symbols, order="desc", limit=50, cursor=last.meta.next_cursor)
        assert [key_of(r) for r in page2.table.to_pylist()] == mine[-150:-100][::-1]
    window = engine.trades("BTCUSDT", order="desc", limit=30, end=dt(T0 + DAY // 2))
    want = [k for k in keys if k[2] == "BTCUSDT" and k[0] < T0 + DAY // 2][-30:][::-1]
    assert [key_of(r) for r in window.table.to_pylist()] == want
    if direct:  # every question without a cursor was read from row groups
        assert answered.count(True) >= 7
    else:  # the statistics narrowed reads (stats_bound's cases: its own tests below)
        assert not any(answered) and any(b is not None for b in bounds)


@pytest.mark.parametrize("writer", ["pyiceberg", "k2"])
@pytest.mark.parametrize("coarse", [False, True], ids=["times", "coarse-times"])
def test_row_group_reads_equal_duckdb_on_random_questions(
    make_engine: EngineFactory,
    lake: Lake,
    big: tuple[pa.Table, list[tuple[int, str, str, int]]],
    monkeypatch: pytest.MonkeyPatch,
    coarse: bool,
    writer: str,
) -> None:
    """The row-group way and DuckDB's way give the same rows for random symbols,
    windows, limits and orders over several files (two commits of the same day);
    ``coarse``: a few distinct times only, so equal times span row groups and files
    and the order is decided by exchange, symbol and id. ``k2``: files written by K2's
    writer (16k-row groups, sort order recorded), so one-symbol questions walk a
    file's groups of the symbol as a chain; ``pyiceberg``: no sort order recorded."""
    import random

    import pyarrow.parquet as pq

    from k2.lake import message_ids
    from k2.lake.writer import append_partitioned

    table, keys = big
    if coarse:
        step = DAY // 6
        us = pc.multiply(pc.divide(table["timestamp"].cast(pa.int64()), step), step)
        coarse_ts = us.cast(pa.timestamp("us", tz="UTC"))
        at = table.schema.get_field_index("timestamp")
        table = table.set_column(at, table.schema.field(at), coarse_ts)
        # Ids descend within a time: at equal times, a file's earlier rows sort first
        # in key order (what a chained group must not skip).
        table = table.sort_by(
            [("symbol", "ascending"), ("timestamp", "ascending"), ("trade_id", "descending")]
        )
        keys = sorted((T0 + (k[0] - T0) // step * step, *k[1:]) for k in keys)
    half = table.num_rows // 2
    for part in (table.slice(0, half), table.slice(half)):
        if writer == "k2":
            append_partitioned(lake.tables["trades"], part, prefix="test", message_id_rule=True)
        else:
            append(lake.tables["trades"], part)
    engine = make_engine(cache_rows=0)
    trades = lake.tables["trades"].refresh()
    snap = trades.current_snapshot()
    assert snap is not None
    index = FileIndexer().index(trades.metadata, trades.io, snap.snapshot_id)
    assert len(index.files) == 2
    assert all(f.symbol_sorted == (writer == "k2") for f in index.files)
    # K2's files say their message ids can be built (the row-group way then builds
    # them rather than decoding them; the comparison with DuckDB's below checks them).
    footers = [pq.read_metadata(f.read_path).metadata or {} for f in index.files]
    assert all((message_ids.FOOTER_KEY in m) == (writer == "k2") for m in footers)
    rng = random.Random(5)
    names = sorted({k[2] for k in keys})
    for _ in range(40):
        symbols = rng.sample(names, rng.randint(1, 2)) if rng.random() < 0.8 else None
        a, b = sorted(rng.randrange(0, DAY) for _ in range(2))
        start = dt(T0 + a) if rng.random() < 0.5 else None
        end = dt(T0 + b + 1) if rng.random() < 0.5 else None
        n = rng.choice([1, 7, 100, 2_500])
        order = rng.choice(["asc", "desc"])
        ask = {"start": start, "end": end, "limit": n, "order": order}
        monkeypatch.setattr(scan, "DIRECT_MAX_N", 10_000)
        direct = engine.trades(symbols, **ask).table  # type: ignore[arg-type]
        monkeypatch.setattr(scan, "DIRECT_MAX_N", 0)
        duck = engine.trades(symbols, **ask).table  # type: ignore[arg-type]
        assert direct.equals(duck), (symbols, ask)
        lo, hi = (T0 + a if start else -1), (T0 + b + 1 if end else 2**62)
        want = [k for k in keys if (symbols is None or k[2] in symbols) and lo <= k[0] < hi]
        want = want[:n] if order == "asc" else want[::-1][:n]
        assert [key_of(r) for r in direct.to_pylist()] == want


def _group(symbol: str, lo: int, hi: int, rows: int = 10) -> RowGroup:
    return RowGroup(rows, symbol, symbol, "binance", "binance", lo, hi)


def test_stats_bound() -> None:
    btc = RowFilter("trades", ("BTCUSDT",))
    groups = [_group("BTCUSDT", 0, 100), _group("BTCUSDT", 100, 200), _group("ETHUSDT", 150, 300)]
    assert stats_bound(groups, btc, "desc", 10) == 100  # the newest BTC group suffices
    assert stats_bound(groups, btc, "desc", 11) == 0
    assert stats_bound(groups, btc, "desc", 21) is None  # not enough proven rows
    assert stats_bound(groups, btc, "asc", 10) == 100
    mixed = [RowGroup(1000, "BTCUSDT", "XRPUSDT", "binance", "binance", 0, 100)]
    assert stats_bound(mixed, btc, "desc", 5) is None  # rows of BTC there: unknown count
    assert stats_bound(mixed, RowFilter("trades"), "desc", 5) == 0  # any symbol: all count
    no_stats = [*groups, RowGroup(5, None, None, None, None, None, None)]
    assert stats_bound(no_stats, btc, "desc", 1) is None
    # A group straddling the window's end or the cursor is not counted as sure.
    windowed = RowFilter("trades", ("BTCUSDT",), end_us=150)
    assert stats_bound(groups, windowed, "desc", 10) == 0
    paged = RowFilter("trades", ("BTCUSDT",), after=(200, "binance", "BTCUSDT", 7),
                      after_order="desc")  # fmt: skip
    assert stats_bound(groups, paged, "desc", 10) == 0
    other_exchange = RowFilter("trades", ("BTCUSDT",), exchange="kraken")
    assert stats_bound(groups, other_exchange, "desc", 1) is None


def test_row_group_reads_skip_constant_columns_and_keep_values(tmp_path: Any) -> None:
    """A row group read without decoding its constant string columns (made from the
    statistics) and with dictionary columns as dictionaries holds, once cast, exactly
    what a plain pyarrow read of the group holds; a column with nulls or two values is
    never taken for a constant."""
    import pyarrow.parquet as pq

    from k2.query.files import DataFile, FooterCache

    n = 3_000
    table = pa.table(
        {
            "exchange": pa.array(["binance"] * n),
            "symbol": pa.array(["BTCUSDT"] * 1_000 + ["ETHUSDT"] * 2_000),
            "side": pa.array(["BUY", "SELL", "BUY"] * 1_000),
            "vendor_data": pa.array([None] + ['{"x":1}'] * (n - 1)),
            "message_id": pa.array([f"binance:{i}" for i in range(n)]),
            "trade_id": pa.array(range(n), pa.int64()),
        }
    )
    path = tmp_path / "f.parquet"
    pq.write_table(
        table,
        path,
        row_group_size=1_000,
        use_dictionary=["exchange", "symbol", "side", "vendor_data"],
    )
    f = DataFile(str(path), str(path), n, path.stat().st_size, None, None,
                 None, None, None, None, None, None)  # fmt: skip
    footers = FooterCache()
    groups = footers.get(f)
    assert [dict(g.constants) for g in groups] == [
        {"exchange": "binance", "symbol": "BTCUSDT"},
        {"exchange": "binance", "symbol": "ETHUSDT", "vendor_data": '{"x":1}'},
        {"exchange": "binance", "symbol": "ETHUSDT", "vendor_data": '{"x":1}'},
    ]  # the first group's vendor_data has a null: not constant
    assert set(groups[0].dictionaries) == {"side", "vendor_data"}  # not message_id: plain
    plain = pq.ParquetFile(path)
    columns = ["trade_id", "symbol", "side", "vendor_data", "exchange", "message_id"]
    for i in range(3):
        got = footers.read_group(f, i, columns)
        assert got is not None and got.column_names == columns
        assert pa.types.is_dictionary(got.schema.field("exchange").type)
        want = plain.read_row_group(i, columns=columns)
        assert scan.conform(got, "trades", columns).equals(scan.conform(want, "trades", columns))


def test_rows_read_from_groups_build_the_message_ids_stored(
    lake: Lake, big: tuple[pa.Table, list[tuple[int, str, str, int]]]
) -> None:
    """``read_rows`` over a K2-written file (its footer: ids buildable) returns every
    column as stored, message ids included, though it never decodes them; the group
    read alone lacks them and says how to build them."""
    import pyarrow.parquet as pq

    from k2.lake import message_ids
    from k2.lake.writer import append_partitioned
    from k2.query.files import FooterCache

    table, _ = big
    trades = lake.tables["trades"]
    append_partitioned(trades, table, prefix="test", message_id_rule=True)
    snap = trades.refresh().current_snapshot()
    assert snap is not None
    (f,) = FileIndexer().index(trades.metadata, trades.io, snap.snapshot_id).files
    footers = FooterCache()
    columns = list(TRADE.arrow_schema().names)
    group = footers.read_group(f, 1, columns)
    assert group is not None and "message_id" not in group.column_names
    assert message_ids.rule(group.schema.metadata) == "trade_id"
    flt = RowFilter("trades", ("XRPUSDT",), start_us=T0 + DAY // 3, end_us=T0 + DAY // 2)
    got = scan.read_rows([f], flt, columns, footers, max_rows=1_000_000)
    assert got is not None and got.num_rows > 1_000
    stored = pq.read_table(f.read_path).filter(
        (pc.field("symbol") == "XRPUSDT")
        & (pc.field("timestamp") >= pa.scalar(T0 + DAY // 3, pa.timestamp("us", tz="UTC")))
        & (pc.field("timestamp") < pa.scalar(T0 + DAY // 2, pa.timestamp("us", tz="UTC")))
    )
    assert scan.conform(got, "trades", columns).equals(scan.conform(stored, "trades", columns))


def test_the_refresh_thread_reads_the_newest_footers_ahead(
    make_engine: EngineFactory, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a question asked, an engine refreshing in the background reads the
    footers of the newest data files (at most ``READ_AHEAD_FILES``), so "the last N"
    does not pay for them; older files are left for the questions that need them."""
    from k2.query import engine as engine_module
    from tests.query.engine_kit import append_by_day, market
    from tests.waiting import until

    append_by_day(lake.tables["trades"], market(days=3, symbols=("BTCUSDT",)))
    trades = lake.tables["trades"].refresh()
    snap = trades.current_snapshot()
    assert snap is not None
    files = FileIndexer().index(trades.metadata, trades.io, snap.snapshot_id).files
    assert len(files) == 3  # one a day
    newest = sorted(files, key=lambda f: f.ts_hi or 0)
    monkeypatch.setattr(engine_module, "READ_AHEAD_FILES", 2)
    engine = make_engine(background_refresh=True)
    footers = engine._footers

    def held() -> set[str]:
        with footers._lock:  # the refresh thread adds to it
            return set(footers._by_path)

    until(lambda: {f.read_path for f in newest[1:]} <= held(), "the newest footers", 30)
    assert newest[0].read_path not in held()


def test_the_refresh_thread_waits_for_start(lake: Lake) -> None:
    """A background ``LakeTables`` hands nothing to ``on_index`` until its owner calls
    ``start`` (the engine does once its footer cache exists: before, the hand-off ran
    into an engine still being built)."""
    import threading

    from k2.config import QuerySettings
    from k2.query.lake import LakeTables
    from tests.waiting import until

    handed: list[str] = []
    ready = threading.Event()

    def on_index(data_type: str, _index: object) -> None:
        assert ready.is_set(), "on_index before start()"
        handed.append(data_type)

    tables = LakeTables(lake.catalog, lake.settings.namespace, QuerySettings(refresh_ms=10),
                        on_index=on_index, background=True)  # fmt: skip
    try:
        assert tables._thread is None and not handed
        ready.set()
        tables.start()
        until(lambda: {"trades", "quotes"} <= set(handed), "the hand-off after start", 30)
    finally:
        tables.close()

"""QueryEngine trades/quotes on a real tmp_path lake: filters, order, last N, pagination,
pruning, errors, the hybrid lake + tail path, coverage, refresh and S3.

Expected rows come from the plain Python trades the lake was loaded with.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from k2.config import LakeSettings, QuerySettings
from k2.query.base import QueryError, TailView
from k2.query.engine import QueryEngine
from k2.query.files import UnsupportedSnapshot, _BoundsDecoder, _data_file
from k2.records import REFERENCE
from tests.lake.conftest import S3_BUCKET
from tests.query.conftest import EngineFactory, Lake, open_lake
from tests.query.engine_kit import (
    DAY,
    EIGHT,
    HOUR,
    T0,
    FixedTail,
    Quote,
    Trade,
    append,
    append_by_day,
    dt,
    key_of,
    market,
    quotes_table,
    trades_table,
)


@pytest.fixture
def loaded(lake: Lake) -> list[Trade]:
    """Three days of four symbols, one append per day."""
    trades = market()
    append_by_day(lake.tables["trades"], trades)
    return trades


def keys(result_table: pa.Table, seq: str = "trade_id") -> list[tuple[int, str, str, int]]:
    return [key_of(r, seq) for r in result_table.to_pylist()]


def expected(
    trades: list[Trade],
    symbols: set[str] | None = None,
    start: int | None = None,
    end: int | None = None,
) -> list[tuple[int, str, str, int]]:
    return sorted(
        t.key
        for t in trades
        if (symbols is None or t.symbol in symbols)
        and (start is None or t.ts >= start)
        and (end is None or t.ts < end)
    )


@pytest.mark.parametrize(
    ("symbols", "start", "end"),
    [
        (["BTCUSDT"], None, None),
        (["BTCUSDT", "SOLUSDT"], T0 + DAY // 2, T0 + 2 * DAY + HOUR),
        (None, T0 + DAY, T0 + 2 * DAY),
        (["XRPUSDT"], T0 + 12 * HOUR, T0 + 12 * HOUR + 1),
    ],
)
def test_trades_match_an_independent_selection(
    make_engine: EngineFactory,
    loaded: list[Trade],
    symbols: list[str] | None,
    start: int | None,
    end: int | None,
) -> None:
    engine = make_engine()
    result = engine.trades(
        symbols,
        start=None if start is None else dt(start),
        end=None if end is None else dt(end),
        limit=100_000,
    )
    want = expected(loaded, None if symbols is None else set(symbols), start, end)
    assert keys(result.table) == want
    assert result.meta.rows == len(want) and result.meta.next_cursor is None
    assert result.table.schema.field("price").type == pa.decimal128(18, 8)
    assert result.table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    first = result.table.slice(0, 1).to_pylist()[0]
    source = next(t for t in loaded if t.key == want[0])
    assert first["price"] == source.price and first["quantity"] == source.quantity
    assert first["message_id"] == source.message_id and first["side"] == source.side


def test_start_is_inclusive_and_end_exclusive(
    make_engine: EngineFactory, loaded: list[Trade]
) -> None:
    btc = sorted(t.key for t in loaded if t.symbol == "BTCUSDT")
    start, end = btc[10][0], btc[20][0]
    result = make_engine().trades("BTCUSDT", start=dt(start), end=dt(end))
    got = keys(result.table)
    assert got[0][0] == start and all(k[0] < end for k in got)
    assert got == [k for k in btc if start <= k[0] < end]


def test_last_n_desc_is_the_tail_of_a_full_ascending_scan(
    make_engine: EngineFactory, loaded: list[Trade]
) -> None:
    engine = make_engine()
    for symbols in (["BTCUSDT"], ["ETHUSDT", "XRPUSDT"], None):
        full = keys(engine.trades(symbols, limit=100_000).table)
        last = engine.trades(symbols, order="desc", limit=25)
        assert keys(last.table) == list(reversed(full[-25:]))
        assert last.meta.next_cursor is not None


def test_last_n_reads_only_the_newest_file(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    result = make_engine().trades("ETHUSDT", order="desc", limit=10)
    assert result.meta.files_scanned == 1
    assert result.meta.files_total >= 9  # 3 days x at least 3 buckets


def test_one_symbol_query_prunes_files(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine()
    result = engine.trades("SOLUSDT", start=dt(T0 + DAY), end=dt(T0 + 2 * DAY))
    assert 0 < result.meta.files_scanned < result.meta.files_total
    assert result.meta.files_scanned == 1  # one day, one bucket
    everything = engine.trades(None, limit=100_000)
    assert everything.meta.files_scanned == everything.meta.files_total


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pagination_walks_the_whole_result_without_gap_or_duplicate(
    make_engine: EngineFactory, loaded: list[Trade], order: str
) -> None:
    engine = make_engine()
    want = expected(loaded, {"BTCUSDT", "XRPUSDT"}, T0 + 6 * HOUR, T0 + 2 * DAY)
    if order == "desc":
        want.reverse()
    pages: list[tuple[int, str, str, int]] = []
    cursor = None
    for _ in range(1000):
        page = engine.trades(
            ["BTCUSDT", "XRPUSDT"],
            start=dt(T0 + 6 * HOUR),
            end=dt(T0 + 2 * DAY),
            limit=7,
            order=order,
            cursor=cursor,
        )
        pages.extend(keys(page.table))
        cursor = page.meta.next_cursor
        if cursor is None:
            break
        assert page.meta.rows == 7
    assert pages == want
    assert len(set(pages)) == len(pages)


def test_cursor_errors(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine()
    page = engine.trades("BTCUSDT", limit=3)
    assert page.meta.next_cursor is not None
    with pytest.raises(QueryError) as bad:
        engine.trades("BTCUSDT", cursor="not-a-cursor")
    assert bad.value.code == "bad-cursor"
    with pytest.raises(QueryError) as wrong_order:
        engine.trades("BTCUSDT", order="desc", cursor=page.meta.next_cursor)
    assert wrong_order.value.code == "bad-cursor"
    with pytest.raises(QueryError) as wrong_type:
        engine.quotes("BTCUSDT", cursor=page.meta.next_cursor)
    assert wrong_type.value.code == "bad-cursor"


def test_limits_windows_and_times(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine(settings=QuerySettings(default_limit=5, max_limit=50, max_window_days=1))
    default = engine.trades("BTCUSDT")
    assert default.meta.rows == 5 and default.meta.next_cursor is not None
    cases: list[tuple[dict[str, object], str]] = [
        ({"limit": 51}, "limit-too-large"),
        ({"limit": 0}, "bad-request"),
        ({"start": dt(T0), "end": dt(T0 + DAY + 1)}, "window-too-large"),
        ({"start": dt(T0 + 5), "end": dt(T0 + 5)}, "bad-request"),
        ({"start": datetime(2024, 1, 1)}, "bad-request"),  # naive
        ({"order": "sideways"}, "bad-request"),
        ({"columns": ["price", "nope"]}, "bad-column"),
    ]
    for kwargs, code in cases:
        with pytest.raises(QueryError) as err:
            engine.trades("BTCUSDT", **kwargs)  # type: ignore[arg-type]
        assert err.value.code == code, kwargs
        assert err.value.status == 400
    # A window of exactly max_window_days is fine; only start or only end is unbounded.
    assert engine.trades("BTCUSDT", start=dt(T0), end=dt(T0 + DAY)).meta.rows == 5
    assert engine.trades("BTCUSDT", start=dt(T0)).meta.rows == 5


def test_columns_selection(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine()
    result = engine.trades("ETHUSDT", columns=["price", "timestamp"], limit=3, order="desc")
    assert result.table.column_names == ["price", "timestamp"]
    assert result.table.schema.field("price").type == pa.decimal128(18, 8)
    eth = sorted((t for t in loaded if t.symbol == "ETHUSDT"), key=lambda t: t.key)
    assert result.table.column("price").to_pylist() == [t.price for t in reversed(eth[-3:])]
    # The cursor still works: it is built from the key, not the selected columns.
    assert result.meta.next_cursor is not None
    more = engine.trades(
        "ETHUSDT", columns=["price"], limit=3, order="desc", cursor=result.meta.next_cursor
    )
    assert more.table.column("price").to_pylist() == [t.price for t in reversed(eth[-6:-3])]


def test_unknown_symbols_and_known_but_quiet_ones(
    make_engine: EngineFactory, lake: Lake, loaded: list[Trade]
) -> None:
    reference = pa.Table.from_pylist(
        [
            {
                "symbol": "LISTEDUSDT",
                "exchange": "binance",
                "base_asset": "LISTED",
                "quote_asset": "USDT",
                "status": "TRADING",
                "tick_size": Decimal("0.01"),
                "step_size": Decimal("0.001"),
                "min_notional": Decimal("5"),
                "valid_from": dt(T0),
            }
        ],
        schema=REFERENCE.arrow_schema(),
    )
    lake.tables["reference_data"].append(reference)
    engine = make_engine()
    with pytest.raises(QueryError) as err:
        engine.trades("NOPEUSDT")
    assert (err.value.code, err.value.status) == ("unknown-symbol", 404)
    assert "NOPEUSDT" in str(err.value)
    # A symbol whose bucket and bounds a multi-symbol file allows (BTCUSDT..XRPUSDT, bucket
    # 13) but which it does not hold: decided by reading that file's symbols once.
    hidden = _symbol_in_bucket(13, between=("BTCUSDT", "XRPUSDT"))
    with pytest.raises(QueryError) as err2:
        engine.trades(hidden)
    assert err2.value.code == "unknown-symbol"
    with pytest.raises(QueryError) as err3:
        engine.trades(["BTCUSDT", "NOPEUSDT"], limit=5)
    assert err3.value.code == "unknown-symbol" and "BTCUSDT" not in str(err3.value)
    # Known symbols with nothing to return are empty answers, not errors.
    assert engine.trades("LISTEDUSDT").meta.rows == 0
    assert engine.trades("BTCUSDT", start=dt(T0 + 10 * DAY)).meta.rows == 0
    assert engine.quotes("BTCUSDT").meta.rows == 0  # it has trades, no quotes
    assert engine.bars("LISTEDUSDT").table.num_rows == 0
    with pytest.raises(QueryError) as err4:
        engine.bars("NOPEUSDT")
    assert err4.value.code == "unknown-symbol"
    with pytest.raises(QueryError) as bad:
        engine.trades("BTC'; DROP TABLE trades; --")
    assert bad.value.code == "bad-symbol"


def _symbol_in_bucket(bucket: int, between: tuple[str, str]) -> str:
    from pyiceberg.transforms import BucketTransform
    from pyiceberg.types import StringType

    hash_of = BucketTransform(16).transform(StringType())
    for i in range(10_000):
        candidate = f"C{i}USDT"
        if hash_of(candidate) == bucket and between[0] < candidate < between[1]:
            return candidate
    raise AssertionError("no candidate symbol")


def test_quotes(make_engine: EngineFactory, lake: Lake) -> None:
    quotes = [
        Quote(s, uid, T0 + (uid % 50) * 1_000_000, Decimal(100 + uid) * EIGHT, Decimal(200) * EIGHT)
        for s in ("BTCUSDT", "ETHUSDT")
        for uid in range(1, 120)
    ]
    append(lake.tables["quotes"], quotes_table(quotes))
    engine = make_engine()
    result = engine.quotes("ETHUSDT", start=dt(T0 + 10_000_000), end=dt(T0 + 20_000_000))
    want = sorted(q.key for q in quotes if q.symbol == "ETHUSDT" and 10 <= q.update_id % 50 < 20)
    assert keys(result.table, "update_id") == want
    last = engine.quotes(None, order="desc", limit=4)
    every = sorted(q.key for q in quotes)
    assert keys(last.table, "update_id") == list(reversed(every[-4:]))
    # Known from its quotes: no trades is an empty answer, not an unknown symbol.
    assert engine.trades("ETHUSDT").meta.rows == 0


def test_delete_files_are_refused() -> None:
    stub = SimpleNamespace(content=1, file_path="s3://b/x-deletes.parquet")
    with pytest.raises(UnsupportedSnapshot, match="delete file"):
        _data_file(stub, _BoundsDecoder(SimpleNamespace(column_names=[])), {}, 42)


# -- hybrid -------------------------------------------------------------------------------


def test_hybrid_adds_tail_rows_and_keeps_the_lake_copy_of_duplicates(
    make_engine: EngineFactory, lake: Lake
) -> None:
    trades = market(days=3, per_symbol_day=20)
    day0_1 = [t for t in trades if t.ts < T0 + 2 * DAY]
    day2 = [t for t in trades if t.ts >= T0 + 2 * DAY]
    snapshot = append_by_day(lake.tables["trades"], day0_1)[-1]
    duplicates = [t for t in day0_1 if t.symbol == "BTCUSDT"][-3:]
    # The tail's copies of lake rows differ in a non-key column: the lake copy must win.
    tail_rows = trades_table([*day2, *duplicates, day2[0]])
    tail_rows = tail_rows.set_column(
        tail_rows.schema.get_field_index("asset_class"),
        tail_rows.schema.field("asset_class"),
        pa.array(["from-tail"] * tail_rows.num_rows),
    )
    tail = FixedTail(
        lake.tables, {"trades": TailView(snapshot, {0: 10}, tail_rows, complete=False)}
    )
    engine = make_engine(tail=tail)
    result = engine.trades(None, limit=100_000)
    assert keys(result.table) == sorted(t.key for t in trades)
    assert result.meta.sources == ["lake", "tail"]
    assert result.meta.rows_tail == len(day2) and result.meta.rows_lake == len(day0_1)
    assert result.meta.duplicates_removed == 3
    assert result.meta.tail_complete is False
    assert result.meta.snapshot_id == snapshot
    by_id = {r["message_id"]: r["asset_class"] for r in result.table.to_pylist()}
    assert all(by_id[t.message_id] == "crypto" for t in duplicates)
    assert all(by_id[t.message_id] == "from-tail" for t in day2)
    # Last N across the seam, and as_of ignores the tail.
    last = engine.trades("BTCUSDT", order="desc", limit=5)
    assert keys(last.table) == sorted(t.key for t in trades if t.symbol == "BTCUSDT")[-5:][::-1]
    assert engine.trades(None, limit=100_000, as_of=snapshot).meta.rows == len(day0_1)
    # Bars over the seam count each trade once.
    bars = engine.bars("BTCUSDT", interval="1d")
    assert bars.table.column("trade_count").to_pylist() == [20, 20, 20]
    assert bars.meta.rows_tail == 20 and bars.meta.duplicates_removed == 3
    # A symbol only the tail has is known.
    fresh = trades_table([Trade("NEWUSDT", 1, T0 + 2 * DAY + 5, Decimal(1), Decimal(1))])
    tail.views["trades"] = TailView(snapshot, {}, fresh)
    assert engine.trades("NEWUSDT").meta.rows == 1


def test_hybrid_reads_the_lake_at_the_views_snapshot(
    make_engine: EngineFactory, lake: Lake
) -> None:
    trades = market(days=2, per_symbol_day=10)
    first, second = append_by_day(lake.tables["trades"], trades)
    day1 = [t for t in trades if t.ts >= T0 + DAY]
    # The tail still holds day 1 (its view predates the second commit): no double count.
    tail = FixedTail(lake.tables, {"trades": TailView(first, {}, trades_table(day1))})
    engine = make_engine(tail=tail)
    engine.refresh()
    result = engine.trades(None, limit=100_000)
    assert keys(result.table) == sorted(t.key for t in trades)
    assert result.meta.snapshot_id == first and result.meta.rows_tail == len(day1)
    assert second != first


def test_recent_trades_uses_the_clock_and_the_tail(make_engine: EngineFactory, lake: Lake) -> None:
    trades = market(days=1, per_symbol_day=200)
    lake_part = [t for t in trades if t.ts < T0 + 13 * HOUR]
    tail_part = [t for t in trades if t.ts >= T0 + 13 * HOUR]
    snapshot = append(lake.tables["trades"], trades_table(lake_part))
    tail = FixedTail(lake.tables, {"trades": TailView(snapshot, {}, trades_table(tail_part))})
    now = T0 + 13 * HOUR + 20 * 60_000_000
    engine = make_engine(tail=tail, clock=lambda: dt(now))
    result = engine.recent_trades(["BTCUSDT", "SOLUSDT"], window_minutes=60, limit=1000)
    want = sorted(
        (t.key for t in trades if t.symbol in {"BTCUSDT", "SOLUSDT"} and now - HOUR <= t.ts <= now),
        reverse=True,
    )
    assert want and keys(result.table) == want
    assert result.meta.sources == ["lake", "tail"] and result.meta.rows_tail > 0
    with pytest.raises(QueryError) as err:
        engine.recent_trades("BTCUSDT", window_minutes=10**9)
    assert err.value.code == "window-too-large"


# -- coverage, refresh, S3 ----------------------------------------------------------------


def test_symbols_coverage(make_engine: EngineFactory, lake: Lake, loaded: list[Trade]) -> None:
    quotes = [Quote("ETHUSDT", i, T0 + 5 * DAY + i, Decimal(1), Decimal(2)) for i in range(7)]
    append(lake.tables["quotes"], quotes_table(quotes))
    result = make_engine().symbols()
    rows = {r["symbol"]: r for r in result.table.to_pylist()}
    assert sorted(rows) == sorted({t.symbol for t in loaded})
    for symbol, row in rows.items():
        mine = [t.ts for t in loaded if t.symbol == symbol]
        assert row["trades"] == len(mine) and row["exchange"] == "binance"
        assert row["first_timestamp"] == dt(min(mine))
        last = max(mine) if symbol != "ETHUSDT" else T0 + 5 * DAY + 6
        assert row["last_timestamp"] == dt(last)
    assert rows["ETHUSDT"]["quotes"] == 7 and rows["BTCUSDT"]["quotes"] == 0


def test_background_refresh_sees_new_snapshots(make_engine: EngineFactory, lake: Lake) -> None:
    engine = make_engine(background_refresh=True, settings=QuerySettings(refresh_ms=20))
    assert engine.trades(None).meta.rows == 0
    append(lake.tables["trades"], trades_table(market(days=1, per_symbol_day=5)))
    deadline = time.monotonic() + 20
    while engine.trades(None).meta.rows != 20:
        assert time.monotonic() < deadline, "the engine never saw the new snapshot"
        time.sleep(0.01)


def test_inline_refresh_waits_for_refresh_ms(make_engine: EngineFactory, lake: Lake) -> None:
    engine = make_engine(settings=QuerySettings(refresh_ms=60_000))
    append(lake.tables["trades"], trades_table(market(days=1, per_symbol_day=5)))
    assert engine.trades(None).meta.rows == 0  # not looked yet: no catalog I/O per query
    engine.refresh()
    assert engine.trades(None).meta.rows == 20


def test_s3_warehouse(make_engine: EngineFactory, s3_endpoint: str, tmp_path: Path) -> None:
    settings = LakeSettings(
        warehouse=f"s3://{S3_BUCKET}/query-{time.time_ns()}",
        s3_endpoint=s3_endpoint,
        s3_access_key_id="k2test",
        s3_secret_access_key="k2secret",
        s3_path_style=True,
    )
    s3_lake = open_lake(settings, tmp_path / "s3")
    trades = market(days=2, per_symbol_day=30)
    append_by_day(s3_lake.tables["trades"], trades)
    engine = make_engine(s3_lake)
    result = engine.trades("BTCUSDT", limit=1000)
    assert keys(result.table) == sorted(t.key for t in trades if t.symbol == "BTCUSDT")
    last = engine.trades(None, order="desc", limit=3)
    assert keys(last.table) == sorted(t.key for t in trades)[-3:][::-1]
    bars = engine.bars("ETHUSDT", interval="1d")
    assert bars.table.column("trade_count").to_pylist() == [30, 30]
    sql = engine.sql("SELECT count(*) AS n FROM trades WHERE symbol = 'SOLUSDT'")
    assert sql.table.column("n").to_pylist() == [60]
    assert engine.symbols().table.num_rows == 4


def test_open_from_settings(tmp_path: Path) -> None:
    from k2.config import Settings

    settings = Settings(data_dir=tmp_path)
    lake = open_lake(settings.lake, tmp_path)
    append(lake.tables["trades"], trades_table(market(days=1, per_symbol_day=3)))
    with QueryEngine.open(settings) as engine:
        assert engine.trades(None).meta.rows == 12
        assert engine.snapshots("trades")[-1].is_current
        with pytest.raises(QueryError):
            engine.snapshots("nope")


def test_naive_as_of_and_day_types(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine()
    with pytest.raises(QueryError):
        engine.trades("BTCUSDT", as_of=datetime(2030, 1, 1))
    with pytest.raises(QueryError):
        engine.trades("BTCUSDT", as_of=True)
    aware = datetime.now(UTC) + timedelta(days=1)
    assert engine.trades("BTCUSDT", as_of=aware, limit=5).meta.rows == 5


def test_concurrent_queries_from_a_threadpool(
    make_engine: EngineFactory, loaded: list[Trade]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = make_engine()
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    want = {s: keys(engine.trades(s, order="desc", limit=20).table) for s in symbols}

    def ask(i: int) -> bool:
        s = symbols[i % 4]
        bars = engine.bars(s, interval="1h")
        return keys(engine.trades(s, order="desc", limit=20).table) == want[s] and (
            sum(bars.table.column("trade_count").to_pylist()) == 180
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(ask, range(40)))


def test_lake_answers_are_cached_per_snapshot(make_engine: EngineFactory, lake: Lake) -> None:
    trades = market(days=2, per_symbol_day=10)
    append_by_day(lake.tables["trades"], trades[:40])
    engine = make_engine()
    first = engine.trades("BTCUSDT", order="desc", limit=3)
    again = engine.trades("BTCUSDT", order="desc", limit=3)
    assert keys(again.table) == keys(first.table)
    assert first.meta.files_scanned == 1 and "lake_cached" not in first.meta.extra
    assert again.meta.files_scanned == 0 and again.meta.extra["lake_cached"] is True
    bars = [engine.bars("BTCUSDT", interval="1h") for _ in range(2)]
    assert bars[1].meta.extra["lake_cached"] is True
    assert bars[1].table.equals(bars[0].table)
    # A new snapshot is a new key: nothing stale is served.
    append_by_day(lake.tables["trades"], trades[40:])
    engine.refresh()
    newest = engine.trades("BTCUSDT", order="desc", limit=3)
    assert keys(newest.table) == sorted(t.key for t in trades if t.symbol == "BTCUSDT")[-3:][::-1]
    assert "lake_cached" not in newest.meta.extra
    assert engine.bars("BTCUSDT", interval="1h").table.num_rows > bars[0].table.num_rows


def test_a_tail_that_is_not_ready_degrades_to_the_lake(
    make_engine: EngineFactory, loaded: list[Trade]
) -> None:
    from k2.errors import TransientError
    from k2.query.base import DataType

    class NotReady:
        def view(self, data_type: DataType) -> TailView:
            raise TransientError("no cut yet")

        def peek(self, data_type: DataType) -> TailView | None:
            return None

    engine = make_engine(tail=NotReady())
    result = engine.trades("BTCUSDT", limit=100_000)
    assert keys(result.table) == expected(loaded, {"BTCUSDT"})
    assert result.meta.tail_complete is False and result.meta.rows_tail == 0

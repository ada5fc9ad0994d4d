"""Bars, VWAP and summaries, checked to the last decimal against an independent
computation: Python ``Decimal`` straight from the raw frames of the real hftbacktest
BTCUSDT capture (3,144 trades, many sharing a millisecond), not through K2's code."""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2.config import QuerySettings
from k2.lake.tables import TABLE_DEFS, sort_for
from k2.lake.writer import append_partitioned
from k2.query import engine as engine_module
from k2.query.bars import BAR_COLUMNS, parse_interval
from k2.query.base import QueryError
from k2.sources.binance.parse import FrameParser
from tests.captures import HFT_CAPTURE, HFT_TRADES, hft_frames
from tests.query import engine_kit
from tests.query.conftest import EngineFactory, Lake
from tests.query.engine_kit import DAY, EIGHT, T0, Trade, append, append_by_day, dt, market
from tests.query.engine_kit import trades_table as make_trades_table

if TYPE_CHECKING:
    from pyiceberg.table import Table

EPOCH_DAY = 86_400_000_000
ZERO = Decimal("0E-8")


@dataclass(frozen=True)
class RawTrade:
    trade_id: int
    ts_us: int
    price: Decimal
    quantity: Decimal
    side: str


def raw_trades() -> list[RawTrade]:
    """The capture's trades read from the raw JSON frames."""
    out = []
    with gzip.open(HFT_CAPTURE, "rt") as fh:
        for line in fh:
            frame = json.loads(line.split(" ", 1)[1])
            if frame["stream"] != "btcusdt@trade":
                continue
            d = frame["data"]
            out.append(
                RawTrade(
                    int(d["t"]),
                    int(d["T"]) * 1000,
                    Decimal(d["p"]),
                    Decimal(d["q"]),
                    "SELL" if d["m"] else "BUY",
                )
            )
    assert len(out) == HFT_TRADES
    return out


def expected_bars(trades: list[RawTrade], interval_us: int) -> list[dict[str, Any]]:
    """Bars by the documented rules, in Decimal with ample precision."""
    groups: dict[int, list[RawTrade]] = defaultdict(list)
    for t in trades:
        groups[t.ts_us // interval_us].append(t)
    out = []
    with localcontext() as ctx:
        ctx.prec = 80
        for bucket in sorted(groups):
            g = groups[bucket]
            first = min(g, key=lambda t: (t.ts_us, t.trade_id))
            last = max(g, key=lambda t: (t.ts_us, t.trade_id))
            volume = sum((t.quantity for t in g), ZERO)
            notional = sum((t.price * t.quantity for t in g), ZERO)
            out.append(
                {
                    "symbol": "BTCUSDT",
                    "exchange": "binance",
                    "bar_start": dt(bucket * interval_us),
                    "bar_end": dt((bucket + 1) * interval_us),
                    "open": first.price,
                    "high": max(t.price for t in g),
                    "low": min(t.price for t in g),
                    "close": last.price,
                    "volume": volume,
                    "quote_volume": sum(
                        ((t.price * t.quantity).quantize(EIGHT, ROUND_HALF_EVEN) for t in g),
                        Decimal(0),
                    ),
                    "vwap": (notional / volume).quantize(EIGHT, ROUND_HALF_EVEN),
                    "trade_count": len(g),
                    "buy_volume": sum((t.quantity for t in g if t.side == "BUY"), ZERO),
                    "sell_volume": sum((t.quantity for t in g if t.side == "SELL"), ZERO),
                    "first_trade_at": dt(first.ts_us),
                    "last_trade_at": dt(last.ts_us),
                }
            )
    return out


def exact(value: Any) -> Any:
    """Decimals as their text, so the number of places must match too."""
    return str(value) if isinstance(value, Decimal) else value


def k2_append(table: Table, rows: pa.Table) -> int:
    """:func:`append` through K2's own writer: its trades files carry minute partials."""
    append_partitioned(table, sort_for(TABLE_DEFS[table.name()[-1]], rows), prefix="test")
    snap = table.current_snapshot()
    assert snap is not None
    return int(snap.snapshot_id)


@pytest.fixture(autouse=True, params=["numpy", "duckdb", "partials"])
def bars_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs each way the engine computes bars from the lake: numpy over
    rows read from the row groups, DuckDB's SQL, and the minute partials of files K2's
    writer wrote (appends go through it; ``real_lake`` mixes both kinds of file)."""
    if request.param == "duckdb":
        monkeypatch.setattr(engine_module, "BARS_DIRECT_MAX_ROWS", 0)
    if request.param == "partials":
        monkeypatch.setattr(engine_kit, "append", k2_append)
        monkeypatch.setattr(sys.modules[__name__], "append", k2_append)
    return str(request.param)


@pytest.fixture(scope="module")
def raw() -> list[RawTrade]:
    return raw_trades()


@pytest.fixture
def real_lake(lake: Lake, bars_way: str) -> Lake:
    """The capture's trades in the lake, in two appends (several files); the first
    through K2's writer when bars come from minute partials (so files of both kinds)."""
    frames, received = hft_frames()
    trades = pa.Table.from_batches([FrameParser().parse(frames, received).trades])
    half = trades.num_rows // 2
    table = lake.tables["trades"]
    for n, part in enumerate((trades.slice(0, half), trades.slice(half))):
        if n == 0 and bars_way == "partials":
            k2_append(table, part)
        else:
            table.append(sort_for(TABLE_DEFS["trades"], part))
    return lake


@pytest.mark.parametrize("interval", ["1s", "15s", "1m", "5m", "1h", "1d"])
def test_bars_equal_an_independent_decimal_computation(
    make_engine: EngineFactory, real_lake: Lake, raw: list[RawTrade], interval: str, bars_way: str
) -> None:
    result = make_engine().bars("BTCUSDT", interval=interval)
    want = expected_bars(raw, parse_interval(interval))
    got = result.table.to_pylist()
    assert result.table.column_names == list(BAR_COLUMNS)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for column in BAR_COLUMNS:
            assert exact(g[column]) == exact(w[column]), (interval, g["bar_start"], column)
    assert sum(g["trade_count"] for g in got) == HFT_TRADES
    assert result.meta.rows == len(want) and result.meta.extra["interval"] == interval
    way = result.meta.extra.get("bars_read", "duckdb")
    whole_minutes = parse_interval(interval) % 60_000_000 == 0
    if bars_way == "partials" and whole_minutes:
        assert way == "minute-partials+row-groups"
    else:
        assert way == {"numpy": "row-groups", "duckdb": "duckdb"}.get(bars_way, "row-groups")


def test_bars_window_is_start_inclusive_end_exclusive(
    make_engine: EngineFactory, real_lake: Lake, raw: list[RawTrade]
) -> None:
    start_us = 1_680_652_860_000_000  # 2023-04-05T00:01:00Z
    end_us = start_us + 180_000_000
    inside = [t for t in raw if start_us <= t.ts_us < end_us]
    result = make_engine().bars("BTCUSDT", interval="1m", start=dt(start_us), end=dt(end_us))
    got = result.table.to_pylist()
    want = expected_bars(inside, 60_000_000)
    assert [g["bar_start"] for g in got] == [dt(start_us + i * 60_000_000) for i in range(3)]
    assert [(g["vwap"], g["trade_count"]) for g in got] == [
        (w["vwap"], w["trade_count"]) for w in want
    ]


def test_summary_is_the_daily_bar_with_first_and_last_times(
    make_engine: EngineFactory, real_lake: Lake, raw: list[RawTrade]
) -> None:
    engine = make_engine()
    day = [t for t in raw if t.ts_us >= 1_680_652_800_000_000]
    (want,) = expected_bars(day, EPOCH_DAY)
    result = engine.summary("btcusdt")  # default: the day of the newest trade
    (got,) = result.table.to_pylist()
    for column, value in want.items():
        assert exact(got[column]) == exact(value), column
    assert result.meta.extra["day"] == "2023-04-05"
    # The one trade stamped 23:59:59.999 the day before is a day of its own.
    (before,) = engine.summary("BTCUSDT", day=date(2023, 4, 4)).table.to_pylist()
    assert before["trade_count"] == 1 and before["first_trade_at"] == before["last_trade_at"]
    assert engine.summary("BTCUSDT", day=date(2023, 4, 6)).table.num_rows == 0


def test_vwap_rounds_half_even_and_open_close_break_ties_by_trade_id(
    make_engine: EngineFactory, lake: Lake
) -> None:
    one = Decimal(1)
    trades = [
        # Bar 1: vwap 1.000000015 exactly -> half-even 1.00000002 (half-up agrees).
        Trade("TIEUSDT", 10, T0, Decimal("1.00000001"), one),
        Trade("TIEUSDT", 11, T0 + 1, Decimal("1.00000002"), one),
        # Bar 2: vwap 1.000000025 -> half-even 1.00000002 (half-up would say ...03).
        Trade("TIEUSDT", 21, T0 + 60_000_000, Decimal("1.00000003"), one),
        Trade("TIEUSDT", 20, T0 + 60_000_000, Decimal("1.00000002"), one),
        # Bar 3: three trades at one µs; open/close by trade id, not by arrival.
        Trade("TIEUSDT", 32, T0 + 120_000_000, Decimal("7"), Decimal("0.5"), "SELL"),
        Trade("TIEUSDT", 30, T0 + 120_000_000, Decimal("5"), Decimal("0.25")),
        Trade("TIEUSDT", 31, T0 + 120_000_000, Decimal("9"), Decimal("0.25")),
    ]
    append(lake.tables["trades"], make_trades_table(trades))
    rows = make_engine().bars("TIEUSDT", interval="1m").table.to_pylist()
    assert [str(r["vwap"]) for r in rows] == ["1.00000002", "1.00000002", "7.00000000"]
    assert (rows[1]["open"], rows[1]["close"]) == (Decimal("1.00000002"), Decimal("1.00000003"))
    assert (rows[2]["open"], rows[2]["close"]) == (Decimal(5), Decimal(7))
    assert (rows[2]["buy_volume"], rows[2]["sell_volume"]) == (Decimal("0.5"), Decimal("0.5"))


def test_bars_count_only_the_window_on_whole_minutes(
    make_engine: EngineFactory, lake: Lake, bars_way: str
) -> None:
    """Trades on both edges of a window that starts and ends on a minute: only
    ``[start, end)`` counts, at one and at several minutes a bar, whichever way."""
    m = 60_000_000
    at = [(0, m - 1), (1, 0), (1, 5), (2, m - 1), (3, 0), (3, 7), (4, 0)]
    trades = [Trade("EDGEUSDT", i, T0 + k * m + off, Decimal(10 + i), Decimal(1))
              for i, (k, off) in enumerate(at)]  # fmt: skip
    append(lake.tables["trades"], make_trades_table(trades))
    engine = make_engine()
    one = engine.bars("EDGEUSDT", interval="1m", start=dt(T0 + m), end=dt(T0 + 3 * m))
    got = [(r["bar_start"], r["trade_count"], r["open"], r["close"]) for r in one.table.to_pylist()]
    assert got == [(dt(T0 + m), 2, 11, 12), (dt(T0 + 2 * m), 1, 13, 13)]
    two = engine.bars("EDGEUSDT", interval="2m", start=dt(T0), end=dt(T0 + 4 * m))
    got = [(r["bar_start"], r["trade_count"], r["open"], r["close"]) for r in two.table.to_pylist()]
    assert got == [(dt(T0), 3, 10, 12), (dt(T0 + 2 * m), 3, 13, 15)]
    if bars_way == "partials":
        assert one.meta.extra["bars_read"] == two.meta.extra["bars_read"] == "minute-partials"


def test_bars_as_of_a_snapshot_count_only_its_files(make_engine: EngineFactory, lake: Lake) -> None:
    first = market(days=1, per_symbol_day=10)
    later = [Trade(t.symbol, t.trade_id + 1000, t.ts + 60_000_000, t.price, t.quantity)
             for t in first]  # fmt: skip
    snapshot = append(lake.tables["trades"], make_trades_table(first))
    append(lake.tables["trades"], make_trades_table(later))
    engine = make_engine()
    then = engine.bars("BTCUSDT", interval="1d", as_of=snapshot)
    now = engine.bars("BTCUSDT", interval="1d")
    assert then.table.column("trade_count").to_pylist() == [10]
    assert now.table.column("trade_count").to_pylist() == [20]


def test_bars_of_several_symbols(make_engine: EngineFactory, lake: Lake) -> None:
    trades = market(days=2, per_symbol_day=25)
    append_by_day(lake.tables["trades"], trades)
    result = make_engine().bars(["BTCUSDT", "SOLUSDT"], interval="1d")
    got = [(r["bar_start"], r["symbol"], r["trade_count"]) for r in result.table.to_pylist()]
    assert got == [(dt(T0 + d * DAY), s, 25) for d in range(2) for s in ("BTCUSDT", "SOLUSDT")]
    all_symbols = make_engine().bars(None, interval="12h")
    assert sum(all_symbols.table.column("trade_count").to_pylist()) == len(trades)
    assert result.meta.files_scanned < result.meta.files_total


@pytest.mark.parametrize(
    "interval", ["0m", "2d", "25h", "1441m", "86401s", "1w", "90", "1.5m", "", "m", "-1m"]
)
def test_bad_intervals_name_the_accepted_forms(interval: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_interval(interval)
    assert err.value.code == "bad-interval"
    assert "Ns, Nm or Nh" in str(err.value) and "1d" in str(err.value)


def test_interval_lengths() -> None:
    assert parse_interval("1s") == 1_000_000
    assert parse_interval("86400s") == parse_interval("1440m") == parse_interval("24h")
    assert parse_interval("24h") == parse_interval("1d") == EPOCH_DAY


def test_too_many_bars_is_refused(make_engine: EngineFactory, real_lake: Lake) -> None:
    engine = make_engine(settings=QuerySettings(max_limit=100))
    start = datetime(2023, 4, 5, tzinfo=dt(0).tzinfo)
    with pytest.raises(QueryError) as err:
        engine.bars("BTCUSDT", interval="1s", start=start, end=start + timedelta(minutes=2))
    assert err.value.code == "window-too-large"
    with pytest.raises(QueryError) as unbounded:
        engine.bars("BTCUSDT", interval="1s")  # 415 bars with trades > 100
    assert unbounded.value.code == "window-too-large"
    assert engine.bars("BTCUSDT", interval="1m").table.num_rows == 8


_DEC = pa.decimal128(18, 8)
_UNITS = st.one_of(
    st.integers(0, 10**6),
    st.integers(0, 10**18 - 1),  # decimal(18, 8) at its largest: sums beyond int64
    st.sampled_from([0, 1, 5 * 10**7, 10**8]),
)


_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["BTCUSDT", "ETHUSDT", "ÄUSDT"]),
        st.sampled_from(["binance", "kraken"]),
        st.integers(0, 3 * 60_000_000),  # three minutes: ties and bar edges
        _UNITS,
        _UNITS,
        st.sampled_from(["BUY", "SELL", None]),
    ),
    min_size=1,
    max_size=40,
)
Row = tuple[str, str, int, int, int, str | None]


def _trades(rows: list[Row]) -> pa.Table:
    symbol, exchange, ts, price, qty, side = (list(c) for c in zip(*rows, strict=True))
    # Unique ids (as a market's are), not in time order: open/close ties need them.
    ids = [k * 37 % 1009 for k in range(len(rows))]
    pairs = list(zip(price, qty, strict=True))

    def units(values: list[int]) -> pa.Array:
        return pa.array([Decimal(v).scaleb(-8) for v in values], _DEC)

    return pa.table(
        {
            "symbol": pa.array(symbol),
            "exchange": pa.array(exchange),
            "timestamp": pa.array([T0 + t for t in ts]).cast(pa.timestamp("us", tz="UTC")),
            "trade_id": pa.array(ids, pa.int64()),
            "price": units(price),
            "quantity": units(qty),
            "quote_quantity": units([min(p * q // 10**8, 10**18 - 1) for p, q in pairs]),
            "side": pa.array(side, pa.string()),
        }
    )


def _sql_bars(table: pa.Table, interval: int, summary: bool) -> pa.Table | None:
    """The SQL's bars of ``table``; None where decimal(38, 8) overflows in SQL."""
    import duckdb

    from k2.query.bars import bars_sql, conform_bars

    conn = duckdb.connect()
    conn.register("rows_in", table)
    try:
        return conform_bars(conn.sql(bars_sql("rows_in", "true", interval)).to_arrow_table(),
                            summary=summary)  # fmt: skip
    except duckdb.OutOfRangeException:
        return None


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    rows=_ROWS,
    interval=st.sampled_from([1, 1_000_000, 60_000_000, 86_400_000_000]),
    summary=st.booleans(),
)
def test_numpy_bars_equal_the_sql_to_the_last_decimal(
    rows: list[Row], interval: int, summary: bool
) -> None:
    """:func:`bars_from_rows` gives the SQL's table exactly, whatever the order of the
    rows, equal times (decided by trade id), sides, zero volumes (null VWAP) and
    values up to decimal(18, 8)'s largest (sums beyond int64: decimal(38, 8))."""
    from k2.query.bars import bars_from_rows

    table = _trades(rows)
    want = _sql_bars(table, interval, summary)
    if want is None:
        return  # nothing to compare against
    got = bars_from_rows(table, interval, summary=summary)
    assert got is not None
    assert got.equals(want), (got.to_pylist()[:3], want.to_pylist()[:3])


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    rows=_ROWS,
    where=st.lists(st.integers(0, 2), min_size=40, max_size=40),
    intervals=st.sampled_from(
        [
            (1, 1),
            (1, 60_000_000),
            (1_000_000, 60_000_000),
            (60_000_000, 60_000_000),
            (60_000_000, 180_000_000),
            (60_000_000, 86_400_000_000),
        ]
    ),
    summary=st.booleans(),
    key_major=st.booleans(),
)
def test_partials_of_parts_combine_to_the_sql_bars(
    rows: list[Row], where: list[int], intervals: tuple[int, int], summary: bool, key_major: bool
) -> None:
    """Trades split at random over three parts (files), each summarised at a base
    interval, then combined at a multiple of it give the SQL's bars of all the trades
    exactly: opens and closes across parts (ties by trade id), sums across parts. With
    ``key_major`` each part is sorted as a data file is (exchange, symbol, time, id);
    partials at one minute go through the partials file's table and back."""
    from k2.lake.minutes import minutes_table, partials_of
    from k2.query.bars import bars_from_partials, combine, partials_from_rows

    base, interval = intervals
    table = _trades(rows)
    want = _sql_bars(table, interval, summary)
    if want is None:
        return
    part_of = pa.array(where[: table.num_rows])
    keys = [(k, "ascending") for k in ("exchange", "symbol", "timestamp", "trade_id")]
    parts = []
    for k in range(3):
        rows_k = table.filter(pc.equal(part_of, k))
        if key_major:
            rows_k = rows_k.take(pc.sort_indices(rows_k, sort_keys=keys))
        part = partials_from_rows(rows_k, base)
        assert part is not None
        if base == 60_000_000 and len(part):
            stored = minutes_table(rows_k)
            if stored is None:  # a sum of 10**38 units or more: not kept
                return
            part = partials_of(stored.take(pa.array(range(stored.num_rows))[::-1]))
            assert part is not None
        parts.append(part)
    got = bars_from_partials(combine(parts, interval), summary=summary)
    assert got is not None
    assert got.equals(want), (got.to_pylist()[:3], want.to_pylist()[:3])


def test_numpy_bars_decline_what_they_cannot_do_exactly() -> None:
    from k2.query.bars import bars_from_rows

    one = {
        "symbol": ["X"],
        "exchange": ["binance"],
        "timestamp": pa.array([T0]).cast(pa.timestamp("us", tz="UTC")),
        "trade_id": [1],
        "side": ["BUY"],
    }
    ok = pa.array([Decimal(1)], _DEC)
    negative = pa.array([Decimal(-1)], _DEC)
    huge = pa.array([Decimal(10**12)], pa.decimal128(38, 8))  # beyond int64 units
    for price, qty in ((negative, ok), (ok, huge), (ok, pa.nulls(1, _DEC))):
        table = pa.table({**one, "price": price, "quantity": qty, "quote_quantity": ok})
        assert bars_from_rows(table, 60_000_000) is None
    fine = pa.table({**one, "price": ok, "quantity": ok, "quote_quantity": ok})
    assert bars_from_rows(fine, 60_000_000) is not None

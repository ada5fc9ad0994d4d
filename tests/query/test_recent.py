"""The tail's recent window: recent questions answered from memory, never wrongly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from k2.config import LakeSettings, QuerySettings
from k2.lake.catalog import catalog_from
from k2.log.embedded import EmbeddedLog
from k2.query.engine import QueryEngine
from k2.query.recent import RecentStore
from k2.query.tail import LiveTail
from tests.query.tail_testkit import T0_US, TAIL_LAYOUT, TradeFeed, commit, make_trades

if TYPE_CHECKING:
    from pyiceberg.table import Table

LAYOUT = TAIL_LAYOUT
TRADES = LAYOUT.data_topic("trade")
MS = 1000
NOW_US = T0_US + 10 * 60 * 1_000_000  # ten minutes after the first trade


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _engine(tmp_path: Path, tail: LiveTail) -> QueryEngine:
    return QueryEngine(
        catalog_from(LakeSettings(), tmp_path / "data"),
        tail=tail,
        clock=lambda: _dt(NOW_US),
        background_refresh=False,
    )


def _tail(log: EmbeddedLog, tables: dict[str, Table], window_s: float) -> LiveTail:
    settings = QuerySettings(recent_window_s=window_s)
    # Trades only: an unknown-symbol check must not need the quotes tail.
    return LiveTail(log, LAYOUT, tables, settings=settings, data_types=("trades",),
                    wall_clock_us=lambda: NOW_US)  # fmt: skip


def test_recent_questions_come_from_memory_and_equal_the_lake_path(
    tmp_path: Path, log: EmbeddedLog, tables: dict[str, Table]
) -> None:
    feed = TradeFeed(log, TRADES)
    feed.produce(100)  # ids 1..100 per symbol, 1 ms apart from T0
    commit(log, tables["trades"], TRADES, feed.ends)  # in the lake before the tail starts
    feed.produce(50)  # 101..150: the tail reads them, then the lake commits them
    with_memory = _tail(log, tables, 900)
    plain = _tail(log, tables, 0)
    with_memory.step()
    plain.step()
    commit(log, tables["trades"], TRADES, feed.ends)
    feed.produce(30)  # 151..180: only in the log
    with_memory.step()
    plain.step()

    cut = with_memory.view("trades").recent
    assert cut is not None
    # Newest trade the lake held when the tail started: id 100 of every symbol.
    assert cut.floor_us == T0_US + 100 * MS + 1
    assert plain.view("trades").recent is None

    fast, slow = _engine(tmp_path, with_memory), _engine(tmp_path, plain)
    lo, hi = _dt(cut.floor_us), _dt(NOW_US)
    got = fast.trades("BTCUSDT", start=lo, end=hi, order="desc", limit=500)
    assert got.meta.extra.get("recent_window") is True and got.meta.files_scanned == 0
    ids = got.table.column("trade_id").to_pylist()
    assert ids == list(range(180, 100, -1))  # committed and uncommitted, once each
    want = slow.trades("BTCUSDT", start=lo, end=hi, order="desc", limit=500)
    assert "recent_window" not in want.meta.extra
    assert got.table.equals(want.table)

    # A window reaching below the floor is not answered from memory, and is whole.
    wide = fast.trades("BTCUSDT", start=_dt(T0_US), end=_dt(NOW_US), limit=500)
    assert "recent_window" not in wide.meta.extra
    assert wide.table.column("trade_id").to_pylist() == list(range(1, 181))

    # Paging a recent answer continues seamlessly on the lake + tail path.
    pair = ["BTCUSDT", "ETHUSDT"]
    first = fast.trades(pair, start=lo, end=hi, order="desc", limit=70)
    rest = fast.trades(pair, start=lo, end=hi, order="desc", limit=500,
                       cursor=first.meta.next_cursor)  # fmt: skip
    both = (
        first.table.column("message_id").to_pylist() + rest.table.column("message_id").to_pylist()
    )
    assert len(both) == len(set(both)) == 160
    for engine in (fast, slow):
        engine.close()


def test_a_message_logged_twice_falls_back_to_the_deduplicating_path(
    tmp_path: Path, log: EmbeddedLog, tables: dict[str, Table]
) -> None:
    feed = TradeFeed(log, TRADES, symbols=("BTCUSDT",))
    feed.produce(20)
    tail = _tail(log, tables, 900)
    tail.step()
    log.produce(TRADES, make_trades("BTCUSDT", 5, 1))  # a producer retry: id 5 again
    tail.step()
    engine = _engine(tmp_path, tail)
    got = engine.trades("BTCUSDT", start=_dt(T0_US), end=_dt(NOW_US), limit=100)
    assert "recent_window" not in got.meta.extra
    assert got.table.column("trade_id").to_pylist() == list(range(1, 21))
    engine.close()


def test_store_eviction_and_the_row_cap_raise_the_floor() -> None:
    store = RecentStore(window_us=60_000 * MS, max_rows=250)
    assert store.needs_floor and store.cut() is None
    store.set_floor(T0_US)
    store.add(make_trades("BTCUSDT", 1, 100))  # T0+1ms .. T0+100ms
    store.add(make_trades("ETHUSDT", 1, 100))
    store.evict(T0_US + 1000 * MS)
    cut = store.cut()
    assert cut is not None and cut.floor_us == T0_US  # nothing old enough to go
    assert sorted(cut.by_symbol) == ["BTCUSDT", "ETHUSDT"]

    store.add(make_trades("BTCUSDT", 101, 100))  # 300 rows > cap 250: the oldest goes
    store.evict(T0_US + 1000 * MS)
    assert store.rows == 200
    cut = store.cut()
    assert cut is not None and cut.floor_us == T0_US + 100 * MS + 1
    assert "BTCUSDT" in cut.by_symbol

    store.evict(T0_US + 200 * MS + 60_000 * MS + 1)  # everything is now out of the window
    cut = store.cut()
    assert cut is not None and cut.by_symbol == {}
    assert cut.floor_us == T0_US + 200 * MS + 1

    store.invalidate()  # the tail skipped records: no promise until a new floor
    assert store.cut() is None


def test_quiet_symbols_are_answered_from_memory_and_typos_are_404(
    tmp_path: Path, log: EmbeddedLog, tables: dict[str, Table]
) -> None:
    from k2.query.base import QueryError

    feed = TradeFeed(log, TRADES, symbols=("BTCUSDT", "ETHUSDT"))
    feed.produce(10)
    commit(log, tables["trades"], TRADES, feed.ends)  # ETHUSDT trades only in the lake
    tail = _tail(log, tables, 900)
    tail.step()
    feed.produce({"BTCUSDT": 5})
    tail.step()
    engine = _engine(tmp_path, tail)
    cut = tail.view("trades").recent
    assert cut is not None and "ETHUSDT" not in cut.by_symbol
    quiet = engine.trades("ETHUSDT", start=_dt(cut.floor_us), end=_dt(NOW_US))
    assert quiet.meta.extra.get("recent_window") is True and quiet.table.num_rows == 0
    mixed = engine.trades(["ETHUSDT", "BTCUSDT"], start=_dt(cut.floor_us), end=_dt(NOW_US))
    assert mixed.table.column("trade_id").to_pylist() == [11, 12, 13, 14, 15]
    with pytest.raises(QueryError) as err:
        engine.trades("BTCUSDX", start=_dt(cut.floor_us), end=_dt(NOW_US))
    assert err.value.code == "unknown-symbol"
    engine.close()


def _keys(table: object) -> list[tuple[int, int]]:
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    ts = table.column("timestamp").cast(pa.int64()).to_pylist()
    return list(zip(ts, table.column("trade_id").to_pylist(), strict=True))


@settings(max_examples=150, deadline=None, derandomize=True)
@example(plan=[(30, "next"), (30, "next")], window=(5, 40), k=7, descending=True, in_order=True)
@example(plan=[(30, "next"), (20, "next")], window=(10, 3000), k=9, descending=False, in_order=True)
@example(plan=[(30, "next"), (10, "repair"), (5, "again")], window=(0, 3000), k=50,
         descending=True, in_order=False)  # fmt: skip
@given(
    plan=st.lists(
        st.tuples(st.integers(5, 40), st.sampled_from(["next", "next", "next", "repair", "again"])),
        min_size=1,
        max_size=60,
    ),
    window=st.tuples(st.integers(0, 3000), st.integers(1, 3000)),
    k=st.integers(1, 120),
    descending=st.booleans(),
    in_order=st.booleans(),
)
def test_newest_and_top_equal_a_full_sort(
    plan: list[tuple[int, str]],
    window: tuple[int, int],
    k: int,
    descending: bool,
    in_order: bool,
) -> None:
    """Whatever order the log delivers a symbol in (in order, a late repair of older
    ids, a message twice), the fast paths answer exactly what sorting the window would,
    or step aside (None)."""
    from k2.query import recent
    from k2.query.scan import KEYS, SCHEMAS

    store = RecentStore(window_us=10**12, max_rows=10**9)
    store.set_floor(T0_US)
    next_id, held = 1, 0
    for size, how in plan:
        if how == "next" or held == 0 or in_order:
            store.add(make_trades("BTCUSDT", next_id, size))
            next_id, held = next_id + size, held + size
        elif how == "repair":  # older ids, delivered late (a gap repair)
            first = max(1, next_id - size - 5)
            store.add(make_trades("BTCUSDT", first, min(size, next_id - first)))
        else:  # the same messages again
            first = max(1, next_id - size)
            store.add(make_trades("BTCUSDT", first, next_id - first))
    cut = store.cut()
    assert cut is not None
    start = T0_US + window[0] * MS
    end = start + window[1] * MS
    way = "descending" if descending else "ascending"
    keys = [(c, way) for c in KEYS["trades"]]
    everything = recent.answer(cut, ("BTCUSDT",), start, end, None, SCHEMAS["trades"])
    fast = recent.newest(cut, "BTCUSDT", start, end, k, descending)
    assert (fast is not None) == (in_order or all(how == "next" for _, how in plan[1:]))
    if fast is not None:
        assert everything is not None, "an ordered symbol holds each message once"
        assert _keys(fast) == _keys(everything.sort_by(keys).slice(0, k))
    found = recent.answer(
        cut, ("BTCUSDT",), start, end, None, SCHEMAS["trades"], check_unique=False
    )
    assert found is not None
    picked = recent.top(found, keys, k)
    if picked is not None:
        unique = found.sort_by(keys)  # the reference: sorted, each message once
        reference = _keys(unique)[:k]
        assert _keys(picked) == reference
        assert len(set(reference)) == len(reference)

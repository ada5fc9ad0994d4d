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
    # The tail started with the lake's last 15 minutes (ids 1..100 of every symbol) in
    # memory: the floor is the start of that window, not the lake's newest trade.
    assert cut.floor_us == NOW_US - 900 * 1_000_000 < T0_US
    assert plain.view("trades").recent is None

    fast, slow = _engine(tmp_path, with_memory), _engine(tmp_path, plain)
    lo, hi = _dt(cut.floor_us), _dt(NOW_US)
    got = fast.trades("BTCUSDT", start=lo, end=hi, order="desc", limit=500)
    assert got.meta.extra.get("recent_window") is True and got.meta.files_scanned == 0
    ids = got.table.column("trade_id").to_pylist()
    # Seeded from the lake, read then committed, only in the log: each once.
    assert ids == list(range(180, 0, -1))
    want = slow.trades("BTCUSDT", start=lo, end=hi, order="desc", limit=500)
    assert "recent_window" not in want.meta.extra
    assert got.table.equals(want.table)

    # A window reaching below the floor is not answered from memory, and is whole.
    below = _dt(cut.floor_us - 1)
    wide = fast.trades("BTCUSDT", start=below, end=_dt(NOW_US), limit=500)
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
    assert len(both) == len(set(both)) == 360
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
    # The window starts between the lake's last trade (T0 + 10 ms) and the log's first:
    # nothing is seeded from the lake, and ETHUSDT has no recent rows.
    tail = _tail(log, tables, 600 - 0.0105)
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


def test_recent_trades_now_answers_from_memory_or_declines(
    tmp_path: Path, log: EmbeddedLog, tables: dict[str, Table]
) -> None:
    """The event-loop variant: the same answer as recent_trades when memory holds it;
    None (never a lake read, never a wrong answer) when it does not; the same errors."""
    from k2.query.base import QueryError

    feed = TradeFeed(log, TRADES, symbols=("BTCUSDT", "ETHUSDT"))
    feed.produce(100)
    commit(log, tables["trades"], TRADES, feed.ends)
    now_us = T0_US + 60_000_000 + 110 * MS  # a 1-minute window starts at id 110's time
    # A 60 s recent window starts after the lake's trades: nothing seeded from the lake.
    tail = LiveTail(log, LAYOUT, tables, data_types=("trades",), wall_clock_us=lambda: now_us,
                    settings=QuerySettings(recent_window_s=60))  # fmt: skip
    # No inline refresh falls due during the test (memory answers only from a loaded
    # state; a slow machine must not turn that into a decline).
    engine = QueryEngine(catalog_from(LakeSettings(), tmp_path / "data"), tail=tail,
                         settings=QuerySettings(refresh_ms=3_600_000),
                         clock=lambda: _dt(now_us), background_refresh=False)  # fmt: skip
    # No cut published yet: declines without waiting for one.
    assert engine.recent_trades_now("BTCUSDT", window_minutes=1) is None
    tail.step()
    feed.produce({"BTCUSDT": 40})  # only in the log: ETHUSDT is quiet in memory
    tail.step()
    engine.recent_trades("BTCUSDT", window_minutes=1, limit=1)  # loads the snapshot's index

    for order in ("desc", "asc"):
        now = engine.recent_trades_now("BTCUSDT", window_minutes=1, limit=25, order=order)
        assert now is not None and now.meta.extra.get("recent_window") is True
        slow = engine.recent_trades("BTCUSDT", window_minutes=1, limit=25, order=order)
        assert now.table.num_rows == 25 and now.table.equals(slow.table)
        assert now.meta.next_cursor == slow.meta.next_cursor is not None
    newest = engine.recent_trades_now("BTCUSDT", window_minutes=1, limit=25)
    assert newest is not None
    assert newest.table.column("trade_id").to_pylist() == list(range(140, 115, -1))

    # A quiet symbol needs a lake read to tell it from a typo: declined, then answered.
    assert engine.recent_trades_now("ETHUSDT", window_minutes=1) is None
    assert engine.recent_trades("ETHUSDT", window_minutes=1).table.num_rows == 0
    # A window below the recent store's floor: declined (the lake must answer).
    assert engine.recent_trades_now("BTCUSDT", window_minutes=2) is None
    # A snapshot whose file index is not loaded yet: declined, no manifest read.
    commit(log, tables["trades"], TRADES, feed.ends)
    tail.step()
    assert engine.recent_trades_now("BTCUSDT", window_minutes=1) is None
    for bad, code in ((0, "bad-request"), (10**9, "window-too-large")):
        with pytest.raises(QueryError) as err:
            engine.recent_trades_now("BTCUSDT", window_minutes=bad)
        assert err.value.code == code
    engine.close()
    without_tail = QueryEngine(catalog_from(LakeSettings(), tmp_path / "data"))
    assert without_tail.recent_trades_now("BTCUSDT") is None
    without_tail.close()


def test_a_starting_tail_loads_the_window_from_the_lake(
    tmp_path: Path, log: EmbeddedLog, tables: dict[str, Table]
) -> None:
    """A tail started after the sink committed everything answers recent questions from
    memory at once (the lake's last window was loaded), equal to the lake's answer; too
    many rows to hold and it starts from the lake's end instead."""
    feed = TradeFeed(log, TRADES, symbols=("BTCUSDT", "ETHUSDT"))
    feed.produce(100)
    commit(log, tables["trades"], TRADES, feed.ends)  # all in the lake, none in the tail
    tail = _tail(log, tables, 900)
    tail.step()
    cut = tail.view("trades").recent
    assert cut is not None and cut.floor_us == NOW_US - 900 * 1_000_000
    assert {s: t.num_rows for s, t in cut.by_symbol.items()} == {"BTCUSDT": 100, "ETHUSDT": 100}
    assert cut.ordered == {"BTCUSDT", "ETHUSDT"}  # seeded in key order: the fast read
    engine = _engine(tmp_path, tail)
    lake_only = QueryEngine(catalog_from(LakeSettings(), tmp_path / "data"))
    for symbol in ("BTCUSDT", "ETHUSDT"):
        got = engine.recent_trades(symbol, window_minutes=15, limit=30)
        assert got.meta.extra.get("recent_window") is True and got.meta.files_scanned == 0
        want = lake_only.trades(symbol, start=_dt(cut.floor_us), order="desc", limit=30)
        assert got.table.equals(want.table)
    engine.close()
    lake_only.close()
    # Inline (recent_trades_now) only the cheap way: one symbol read off the window's
    # end. Two symbols take the general way, whose cost grows with the window.
    inline = QueryEngine(catalog_from(LakeSettings(), tmp_path / "data"), tail=tail,
                         settings=QuerySettings(refresh_ms=3_600_000),
                         clock=lambda: _dt(NOW_US), background_refresh=False)  # fmt: skip
    inline.recent_trades("BTCUSDT", window_minutes=15, limit=1)  # loads the file index
    one = inline.recent_trades_now("BTCUSDT", window_minutes=15, limit=5)
    assert one is not None and one.table.num_rows == 5
    assert inline.recent_trades_now(["BTCUSDT", "ETHUSDT"], window_minutes=15) is None
    both = inline.recent_trades(["BTCUSDT", "ETHUSDT"], window_minutes=15, limit=5)
    assert both.meta.extra.get("recent_window") is True  # still from memory, in the pool
    inline.close()

    small = LiveTail(log, LAYOUT, tables, data_types=("trades",), wall_clock_us=lambda: NOW_US,
                     settings=QuerySettings(recent_window_s=900, recent_max_rows=1000))  # fmt: skip
    small.step()
    # 200 rows fit in 1000: seeded. Shrink the cap below them and a fresh tail does not.
    assert small.view("trades").recent is not None
    feed.produce(500)
    commit(log, tables["trades"], TRADES, feed.ends)  # 1200 rows now
    fresh = LiveTail(log, LAYOUT, tables, data_types=("trades",), wall_clock_us=lambda: NOW_US,
                     settings=QuerySettings(recent_window_s=900, recent_max_rows=1000))  # fmt: skip
    fresh.step()
    cut = fresh.view("trades").recent
    assert cut is not None and cut.by_symbol == {}
    assert cut.floor_us == T0_US + 600 * MS + 1  # the lake's end: the old way


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

"""Time travel: a query as of a snapshot (by id or by time) returns exactly that
snapshot's rows, through appends, a copy-on-write delete and a compaction."""

from __future__ import annotations

from datetime import timedelta

import pytest

from k2.lake.maintenance import compact
from k2.query.base import QueryError
from tests.query.conftest import EngineFactory, Lake
from tests.query.engine_kit import DAY, T0, Trade, append_by_day, dt, key_of, market


def keys_at(rows: list[Trade]) -> list[tuple[int, str, str, int]]:
    return sorted(t.key for t in rows)


@pytest.fixture
def history(lake: Lake) -> tuple[list[Trade], list[int]]:
    """Three appends, one per day: snapshot i holds days 0..i."""
    trades = market(days=3, per_symbol_day=15)
    return trades, append_by_day(lake.tables["trades"], trades)


def test_as_of_snapshot_id_returns_exactly_that_snapshot(
    make_engine: EngineFactory, history: tuple[list[Trade], list[int]]
) -> None:
    trades, snapshots = history
    engine = make_engine()
    for i, sid in enumerate(snapshots):
        result = engine.trades(None, as_of=sid, limit=10_000)
        want = keys_at([t for t in trades if t.ts < T0 + (i + 1) * DAY])
        assert [key_of(r) for r in result.table.to_pylist()] == want
        assert result.meta.snapshot_id == sid
        assert result.meta.files_total == len({(d, b) for d in range(i + 1) for b in (11, 13, 14)})
        last = engine.trades("BTCUSDT", as_of=sid, order="desc", limit=2)
        assert [key_of(r) for r in last.table.to_pylist()] == [
            k for k in reversed(want) if k[2] == "BTCUSDT"
        ][:2]
    current = engine.trades(None, limit=10_000)
    assert current.meta.snapshot_id == snapshots[-1] and current.meta.rows == len(trades)


def test_as_of_time_uses_the_snapshot_current_then(
    make_engine: EngineFactory, history: tuple[list[Trade], list[int]]
) -> None:
    trades, snapshots = history
    engine = make_engine()
    infos = engine.snapshots("trades")
    assert [s.snapshot_id for s in infos] == snapshots
    for i, info in enumerate(infos):
        at = engine.trades(None, as_of=info.committed_at, limit=10_000)
        assert at.meta.snapshot_id == info.snapshot_id
        assert at.meta.rows == len([t for t in trades if t.ts < T0 + (i + 1) * DAY])
    bars = engine.bars("SOLUSDT", interval="1d", as_of=infos[0].committed_at)
    assert bars.table.column("trade_count").to_pylist() == [15]
    assert bars.meta.snapshot_id == snapshots[0]
    with pytest.raises(QueryError) as before:
        engine.trades(None, as_of=infos[0].committed_at - timedelta(seconds=1))
    assert (before.value.code, before.value.status) == ("unknown-snapshot", 404)


def test_unknown_snapshot_id(
    make_engine: EngineFactory, history: tuple[list[Trade], list[int]]
) -> None:
    engine = make_engine()
    with pytest.raises(QueryError) as err:
        engine.trades("BTCUSDT", as_of=42)
    assert (err.value.code, err.value.status) == ("unknown-snapshot", 404)
    with pytest.raises(QueryError) as err2:
        engine.bars("BTCUSDT", as_of=42)
    assert err2.value.code == "unknown-snapshot"


def test_snapshot_committed_after_the_engine_last_looked_is_found(
    make_engine: EngineFactory, lake: Lake
) -> None:
    trades = market(days=2, per_symbol_day=5)
    first = append_by_day(lake.tables["trades"], trades[:20])
    engine = make_engine()
    engine.trades(None)  # state loaded before the next commit
    second = append_by_day(lake.tables["trades"], trades[20:])
    assert engine.trades(None, as_of=second[-1], limit=100).meta.rows == 40
    assert engine.trades(None, as_of=first[-1], limit=100).meta.rows == 20


def test_time_travel_across_delete_and_compaction(
    make_engine: EngineFactory, lake: Lake, history: tuple[list[Trade], list[int]]
) -> None:
    trades, snapshots = history
    table = lake.tables["trades"]
    # A second file in each partition of the last day, so compaction has work to do.
    extra = [
        Trade(t.symbol, t.trade_id + 1_000_000, t.ts + 1, t.price, t.quantity)
        for t in trades
        if t.ts >= T0 + 2 * DAY
    ]
    snapshots += append_by_day(table, extra)
    trades = trades + extra
    table.delete("symbol == 'SOLUSDT'")  # copy-on-write: an overwrite snapshot
    after_delete = table.current_snapshot()
    report = compact(table, small_file_bytes=1 << 30)
    assert report.snapshot_id is not None
    engine = make_engine()
    engine.refresh()
    everything = keys_at(trades)
    no_sol = keys_at([t for t in trades if t.symbol != "SOLUSDT"])
    assert [
        key_of(r) for r in engine.trades(None, as_of=snapshots[-1], limit=10_000).table.to_pylist()
    ] == everything
    assert after_delete is not None
    at_delete = engine.trades(None, as_of=after_delete.snapshot_id, limit=10_000)
    assert [key_of(r) for r in at_delete.table.to_pylist()] == no_sol
    now = engine.trades(None, limit=10_000)
    assert [key_of(r) for r in now.table.to_pylist()] == no_sol
    assert now.meta.snapshot_id == report.snapshot_id
    assert now.meta.files_total < at_delete.meta.files_total  # compaction merged files
    assert engine.trades("SOLUSDT", as_of=snapshots[0], limit=100).meta.rows == 15
    # SOLUSDT has no rows now but had some: the current lake no longer knows it.
    with pytest.raises(QueryError):
        engine.trades("SOLUSDT")


def test_pagination_is_stable_as_of_a_snapshot(
    make_engine: EngineFactory, history: tuple[list[Trade], list[int]]
) -> None:
    trades, snapshots = history
    engine = make_engine()
    seen: list[tuple[int, str, str, int]] = []
    cursor = None
    while True:
        page = engine.trades(
            ["BTCUSDT", "ETHUSDT"], as_of=snapshots[1], limit=8, cursor=cursor, start=dt(T0)
        )
        seen.extend(key_of(r) for r in page.table.to_pylist())
        cursor = page.meta.next_cursor
        if cursor is None:
            break
    assert seen == keys_at(
        [t for t in trades if t.symbol in {"BTCUSDT", "ETHUSDT"} and t.ts < T0 + 2 * DAY]
    )

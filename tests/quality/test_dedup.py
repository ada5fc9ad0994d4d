"""Sliding-window dedup: order, windows, the cap, late ids, memory and speed."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2.quality.dedup import Deduplicator, instrument_groups
from tests.quality.quality_testkit import Clock, frames, ids_of, quotes, trades

WINDOW = 60_000_000


def dedup(clock: Clock | None = None, **kwargs: int) -> Deduplicator:
    return Deduplicator(window_us=WINDOW, clock_us=clock or Clock(0), **kwargs)


def test_a_batch_without_duplicates_comes_back_unchanged() -> None:
    d = dedup()
    batch = trades([1, 2, 3, 7, 8])
    raw = frames(batch)
    kept, kept_raw, dropped = d.filter(batch, raw, "trade_id")
    assert kept is batch
    assert kept_raw is raw
    assert dropped == 0


def test_duplicates_within_a_batch_keep_the_first_in_order() -> None:
    d = dedup()
    batch = trades([5, 3, 5, 4, 3, 6])
    kept, kept_raw, dropped = d.filter(batch, frames(batch), "trade_id")
    assert ids_of(kept) == [5, 3, 4, 6]
    assert kept_raw == [b"frame 0:5", b"frame 1:3", b"frame 3:4", b"frame 5:6"]
    assert dropped == 2
    assert kept.schema == batch.schema


def test_duplicates_across_batches() -> None:
    d = dedup()
    d.filter(trades([1, 2, 3]), None, "trade_id")
    kept, kept_raw, dropped = d.filter(trades([3, 4, 2, 5]), None, "trade_id")
    assert ids_of(kept) == [4, 5]
    assert kept_raw is None
    assert dropped == 2
    assert d.stats().duplicates == 2
    assert d.stats().seen == 7


def test_an_all_duplicate_batch_leaves_nothing() -> None:
    d = dedup()
    d.filter(trades([1, 2]), None, "trade_id")
    batch = trades([2, 1, 2])
    kept, kept_raw, dropped = d.filter(batch, frames(batch), "trade_id")
    assert (kept.num_rows, kept_raw, dropped) == (0, [], 3)


def test_the_key_is_exchange_symbol_and_id() -> None:
    d = dedup()
    batch = trades(
        [1, 1, 1, 1, 2],
        symbol=["BTCUSDT", "ETHUSDT", "BTCUSDT", "BTCUSDT", "ETHUSDT"],
        exchange=["binance", "binance", "kraken", "binance", "binance"],
    )
    kept, kept_raw, dropped = d.filter(batch, frames(batch), "trade_id")
    assert dropped == 1
    assert kept_raw == [b"frame 0:1", b"frame 1:1", b"frame 2:1", b"frame 4:2"]
    # Interleaved instruments, one duplicate each, keep batch order.
    batch = trades([3, 2, 3, 2, 4], symbol=["ETHUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT", "BTCUSDT"])
    kept, _, dropped = d.filter(batch, None, "trade_id")
    assert ids_of(kept) == [3, 2, 4]
    assert kept.column("symbol").to_pylist() == ["ETHUSDT", "BTCUSDT", "BTCUSDT"]
    assert dropped == 2


def test_quotes_dedup_on_update_id() -> None:
    d = dedup()
    d.filter(quotes([10, 20, 35]), None, "update_id")
    kept, _, dropped = d.filter(quotes([20, 36, 35, 50]), None, "update_id")
    assert ids_of(kept, "update_id") == [36, 50]
    assert dropped == 2


def test_runs_merge_so_reordered_ids_cost_one_interval() -> None:
    d = dedup()
    d.filter(trades([1, 2, 3, 10, 11]), None, "trade_id")
    assert d.stats().intervals == 2
    d.filter(trades([7, 5, 4, 6, 9, 8]), None, "trade_id")  # fills the hole
    assert d.stats().intervals == 1
    kept, _, dropped = d.filter(trades(list(range(1, 13))), None, "trade_id")
    assert ids_of(kept) == [12]
    assert dropped == 11


def test_a_run_is_kept_for_the_window_then_evicted() -> None:
    clock = Clock(0)
    d = dedup(clock)
    d.filter(trades([1, 2, 3]), None, "trade_id")
    clock.now = WINDOW - 1
    assert d.filter(trades([2]), None, "trade_id")[2] == 1
    clock.now = WINDOW + WINDOW // 16 + 1  # past the window and the next sweep
    d.filter(trades([100]), None, "trade_id")  # any call sweeps
    stats = d.stats()
    assert (stats.evicted_aged, stats.intervals) == (1, 1)
    # Forgotten: passed through as new, and counted as late.
    kept, _, dropped = d.filter(trades([2]), None, "trade_id")
    assert (ids_of(kept), dropped, d.stats().late) == ([2], 0, 1)


def test_extending_a_run_keeps_it_alive() -> None:
    clock = Clock(0)
    d = dedup(clock)
    for step in range(40):
        clock.now = step * WINDOW // 8
        d.filter(trades([step]), None, "trade_id")
    # One run, extended every 1/8 window: never evicted, so id 0 is still known.
    assert d.stats().intervals == 1
    assert d.filter(trades([0]), None, "trade_id")[2] == 1
    assert d.stats().evicted_aged == 0


def test_the_cap_evicts_the_oldest_runs_first() -> None:
    clock = Clock(0)
    d = dedup(clock, max_entries=10)
    for i in range(12):  # sparse ids: one run each
        clock.now = i
        d.filter(trades([i * 10]), None, "trade_id")
        assert d.stats().intervals <= 10
    stats = d.stats()
    # Cap 10 exceeded at the 11th run: evicted down to 9; the 12th makes 10.
    assert (stats.intervals, stats.evicted_early) == (10, 2)
    # The two oldest (ids 0 and 10) are forgotten: late, passed through.
    kept, _, dropped = d.filter(trades([0, 10, 110]), None, "trade_id")
    assert ids_of(kept) == [0, 10]
    assert dropped == 1
    assert d.stats().late == 2


def test_an_id_above_the_watermark_is_new_not_late() -> None:
    d = dedup(max_entries=2)
    d.filter(trades([10, 20, 30]), None, "trade_id")  # 3 runs > cap: oldest (10) goes
    kept, _, _ = d.filter(trades([40]), None, "trade_id")
    assert ids_of(kept) == [40]
    assert d.stats().late == 0


def test_memory_stays_tiny_for_two_million_in_order_trades() -> None:
    """2M contiguous trade ids over 5 symbols, in 10k-row batches: 5 intervals."""
    clock = Clock(0)
    d = dedup(clock)
    names = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"]
    template = trades(list(range(10_000)), symbol=[names[i % 5] for i in range(10_000)])
    started = time.perf_counter()
    for b in range(200):
        ids = pa.array([b * 2_000 + i // 5 for i in range(10_000)], pa.int64())
        batch = template.set_column(1, "trade_id", ids)
        clock.now += 50_000
        kept, _, dropped = d.filter(batch, None, "trade_id")
        assert dropped == 0
        assert kept is batch
    elapsed = time.perf_counter() - started
    assert d.stats().intervals == 5
    assert d.stats().seen == 2_000_000
    # Measured ~15M rows/s; this only guards against falling off the vectorised path
    # (the batch building above is included in the time).
    assert 2_000_000 / elapsed > 200_000


def test_memory_stays_under_the_cap_for_sparse_ids() -> None:
    clock = Clock(0)
    d = dedup(clock, max_entries=5_000)
    for b in range(40):  # 200k quote-like ids, every third
        clock.now += 10_000
        ids = list(range(b * 15_000, (b + 1) * 15_000, 3))
        d.filter(quotes(ids), None, "update_id")
        assert d.stats().intervals <= 5_000
    assert d.stats().evicted_early > 0
    # The most recent ids are still known.
    assert d.filter(quotes([599_997]), None, "update_id")[2] == 1


def test_groups_are_in_first_appearance_order_with_batch_order_rows() -> None:
    batch = trades([1, 2, 3, 4], symbol=["B", "A", "B", "A"], exchange=["x", "x", "x", "y"])
    groups = [
        (key, None if rows is None else rows.to_pylist()) for key, rows in instrument_groups(batch)
    ]
    assert groups == [(("x", "B"), [0, 2]), (("x", "A"), [1]), (("y", "A"), [3])]
    assert instrument_groups(trades([1, 2])) == [(("binance", "BTCUSDT"), None)]


def test_misaligned_raw_and_null_ids_are_bugs() -> None:
    d = dedup()
    with pytest.raises(ValueError, match="raw has 1 frames"):
        d.filter(trades([1, 2]), [b"x"], "trade_id")
    batch = trades([1, 2])
    batch = batch.set_column(1, "trade_id", pa.array([1, None], pa.int64()))
    with pytest.raises(ValueError, match="trade_id holds 1 null"):
        d.filter(batch, None, "trade_id")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 40)), max_size=30),
        max_size=8,
    )
)
def test_matches_a_set_based_model(batches: list[list[tuple[str, int]]]) -> None:
    """Without eviction, output equals 'first occurrence of each (symbol, id)'."""
    d = dedup()
    seen: set[tuple[str, int]] = set()
    for rows in batches:
        expected: list[tuple[str, int]] = []
        expected_raw: list[bytes] = []
        for position, row in enumerate(rows):
            if row not in seen:
                seen.add(row)
                expected.append(row)
                expected_raw.append(f"frame {position}:{row[1]}".encode())
        batch = trades([i for _, i in rows], symbol=[s for s, _ in rows])
        kept, kept_raw, dropped = d.filter(batch, frames(batch), "trade_id")
        assert list(zip(kept.column("symbol").to_pylist(), ids_of(kept), strict=True)) == expected
        assert kept_raw == expected_raw
        assert dropped == len(rows) - len(expected)
    # Runs are disjoint and never adjacent: one per maximal block of consecutive ids.
    blocks = 0
    for symbol in ("A", "B"):
        ids = sorted(i for s, i in seen if s == symbol)
        blocks += sum(1 for k, i in enumerate(ids) if k == 0 or ids[k - 1] != i - 1)
    assert d.stats().intervals == blocks

"""Gap detection (grace, reordering, hand-over) and repair from REST history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from k2.errors import RateLimited, TransientError
from k2.quality.gaps import GapDetector, GapRange, GapRepairer, gap_record
from k2.records import GAP, rows
from tests.captures import HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID, HFT_TRADES
from tests.quality.quality_testkit import T0, Clock, History, ids_of, trades

GRACE = 5_000_000


def gap(first: int, last: int, at: int = T0, symbol: str = "BTCUSDT") -> GapRange:
    return GapRange("binance", symbol, first, last, at)


class TestDetector:
    def test_contiguous_trades_open_no_gap(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([100, 101, 102]))
        detector.observe(trades([103]))
        detector.observe(trades(list(range(104, 200))))
        clock.now += 10 * GRACE
        assert detector.due() == []
        assert detector.pending() == []
        assert detector.tail("binance", "BTCUSDT") == 199
        assert detector.stats().opened == 0

    def test_the_first_batch_sets_the_baseline(self) -> None:
        detector = GapDetector(grace_us=GRACE, clock_us=Clock())
        detector.observe(trades([503, 501, 502]))  # reordered, starting mid-stream
        assert detector.pending() == []
        detector.observe(trades([400]))  # older than anything seen: nothing to say
        assert detector.pending() == []
        assert detector.stats().stale == 1
        assert detector.tail("binance", "BTCUSDT") == 503

    def test_reordering_within_grace_is_not_a_gap(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([1, 2, 5, 6]))
        assert detector.pending() == [gap(3, 4)]
        clock.now += GRACE - 1
        detector.observe(trades([4, 3]))
        clock.now += GRACE
        assert detector.due() == []
        stats = detector.stats()
        assert (stats.opened, stats.filled_late, stats.late_ids, stats.pending) == (1, 1, 2, 0)

    def test_a_real_gap_is_due_after_grace_only_and_once(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([1, 2]))
        clock.now = T0 + 100
        detector.observe(trades([10, 11]))
        clock.now = T0 + 100 + GRACE - 1
        assert detector.due() == []
        clock.now = T0 + 100 + GRACE
        assert detector.due() == [gap(3, 9, T0 + 100)]
        assert detector.due() == []
        assert detector.stats().handed_over == 1

    def test_a_partly_filled_gap_splits_and_keeps_its_stamp(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([1, 10]))
        clock.now += 1_000
        detector.observe(trades([5, 2]))
        assert detector.pending() == [gap(3, 4), gap(6, 9)]
        clock.now = T0 + 1_000
        detector.observe(trades([14]))  # a second, younger gap
        clock.now = T0 + GRACE
        assert detector.due() == [gap(3, 4), gap(6, 9)]
        assert detector.pending() == [gap(11, 13, T0 + 1_000)]

    def test_force_hands_over_everything_pending(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([1, 3, 6]))
        assert detector.due() == []
        assert detector.due(force=True) == [gap(2, 2), gap(4, 5)]
        assert detector.pending() == []
        assert detector.due(force=True) == []

    def test_instruments_are_tracked_apart(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([1, 50, 3, 51, 53], symbol=["AAA", "BBB", "AAA", "BBB", "BBB"]))
        assert detector.pending() == [gap(2, 2, symbol="AAA"), gap(52, 52, symbol="BBB")]
        assert detector.tails() == {("binance", "AAA"): 3, ("binance", "BBB"): 53}
        assert detector.tail("binance", "CCC") is None

    def test_repaired_trades_fed_back_are_stale_and_reopen_nothing(self) -> None:
        clock = Clock()
        detector = GapDetector(grace_us=GRACE, clock_us=clock)
        detector.observe(trades([1, 5]))
        clock.now += GRACE
        assert detector.due() == [gap(2, 4)]
        detector.observe(trades([2, 3, 4]))  # the repair, or late live trades
        assert detector.pending() == []
        assert detector.due() == []
        assert detector.stats().stale == 3

    def test_null_trade_id_is_a_bug(self) -> None:
        batch = trades([1, 2])
        batch = batch.set_column(1, "trade_id", pa.array([None, 2], pa.int64()))
        with pytest.raises(ValueError, match="trade_id holds 1 null"):
            GapDetector(grace_us=GRACE, clock_us=Clock()).observe(batch)

    def test_the_real_capture_has_no_gap_until_trades_are_dropped(
        self, hft: tuple[list[bytes], list[int]]
    ) -> None:
        ids: list[int] = []
        for frame in hft[0]:
            message = json.loads(frame)
            if message["stream"].endswith("@trade"):
                ids.append(message["data"]["t"])
        assert (len(ids), ids[0], ids[-1]) == (HFT_TRADES, HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID)
        clock = Clock()
        whole = GapDetector(grace_us=0, clock_us=clock)
        holed = GapDetector(grace_us=0, clock_us=clock)
        dropped = {ids[100], ids[101], ids[2000]}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            whole.observe(trades(chunk))
            holed.observe(trades([i for i in chunk if i not in dropped]))
        assert whole.due() == []
        assert [(g.first_missing_id, g.last_missing_id) for g in holed.due()] == [
            (ids[100], ids[101]),
            (ids[2000], ids[2000]),
        ]


def history(ids: list[int], symbol: str = "BTCUSDT") -> History:
    return History({symbol: trades(sorted(ids), symbol=symbol)})


def repairer(source: History, clock: Clock | None = None, **kwargs: Any) -> GapRepairer:
    return GapRepairer(source.fetch, clock_us=clock or Clock(T0 + 42), **kwargs)


def as_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


class TestRepairer:
    async def test_repairs_a_gap_from_history(self) -> None:
        source = history(list(range(1, 101)))
        fixed, record = await repairer(source).repair(gap(10, 14))
        assert ids_of(fixed) == [10, 11, 12, 13, 14]
        assert record == {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "first_missing_id": 10,
            "last_missing_id": 14,
            "detected_at": as_datetime(T0),
            "status": "repaired",
            "repaired_count": 5,
            "resolved_at": as_datetime(T0 + 42),
            "reason": None,
        }
        assert source.calls == [("BTCUSDT", 10, 5)]
        # The record is in GAP form: it loads into the GAP schema and reads back equal.
        table = pa.RecordBatch.from_pylist([record], schema=GAP.arrow_schema())
        assert list(rows(table)) == [record]

    async def test_pages_over_more_than_a_thousand_ids(self) -> None:
        source = history(list(range(1, 3_001)))
        fixed, record = await repairer(source).repair(gap(100, 2_599))
        assert ids_of(fixed) == list(range(100, 2_600))
        assert source.calls == [
            ("BTCUSDT", 100, 1000),
            ("BTCUSDT", 1100, 1000),
            ("BTCUSDT", 2100, 500),
        ]
        assert (record["status"], record["repaired_count"]) == ("repaired", 2_500)

    async def test_truncated_history_is_unrepairable_and_names_the_missing_ids(self) -> None:
        source = history([1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 16, 20])
        fixed, record = await repairer(source).repair(gap(5, 15))
        assert ids_of(fixed) == [5, 6, 7, 8, 9, 14]
        assert record["status"] == "unrepairable"
        assert record["repaired_count"] == 6
        assert record["reason"] == "exchange returned 6 of 11 trades; missing ids 10-13, 15"

    async def test_history_that_ends_before_the_gap(self) -> None:
        source = history([1, 2, 3])
        fixed, record = await repairer(source).repair(gap(5, 7))
        assert fixed.num_rows == 0
        assert fixed.schema == trades([]).schema
        assert record["reason"] == "exchange returned 0 of 3 trades; missing ids 5-7"

    async def test_an_unknown_symbol_is_recorded_not_raised(self) -> None:
        source = history([1, 2, 3])
        _, record = await repairer(source).repair(gap(5, 7, symbol="NOPEUSDT"))
        assert record["status"] == "unrepairable"
        assert record["symbol"] == "NOPEUSDT"
        assert record["reason"] == (
            "terminal error: UnknownSymbol: Invalid symbol 'NOPEUSDT'; recovered 0 of 3 trades"
        )

    async def test_transient_errors_are_retried_with_backoff(self) -> None:
        source = history(list(range(1, 20)))
        source.transient_failures = 2
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        fixer = repairer(source, max_attempts=3, sleep=sleep, retry_delay_s=0.5)
        fixed, record = await fixer.repair(gap(3, 4))
        assert record["status"] == "repaired"
        assert ids_of(fixed) == [3, 4]
        assert delays == [0.5, 1.0]

    async def test_transient_errors_beyond_the_attempts_are_recorded(self) -> None:
        source = history(list(range(1, 3_000)))
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        async def first_page_only(symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
            if source.calls:
                raise TransientError("503 from the history endpoint")
            return await source.fetch(symbol, from_id, limit)

        fixer = GapRepairer(first_page_only, max_attempts=2, clock_us=Clock(), sleep=sleep)
        fixed, record = await fixer.repair(gap(1, 1_500))
        assert ids_of(fixed) == list(range(1, 1_001))  # kept what came back before
        assert record["status"] == "unrepairable"
        assert record["repaired_count"] == 1_000
        assert record["reason"] == (
            "transient error: TransientError: 503 from the history endpoint "
            "(gave up after 2 attempt(s)); recovered 1000 of 1500 trades"
        )
        assert delays == [0.5]

    async def test_a_ban_is_not_retried(self) -> None:
        async def banned(symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
            raise RateLimited("418 I'm a teapot", retry_after=120.0, banned=True)

        async def sleep(seconds: float) -> None:
            raise AssertionError("must not wait out a ban")

        fixer = GapRepairer(banned, max_attempts=5, clock_us=Clock(), sleep=sleep)
        _, record = await fixer.repair(gap(1, 2))
        assert record["reason"] == (
            "transient error: RateLimited: 418 I'm a teapot (gave up after 1 attempt(s)); "
            "recovered 0 of 2 trades"
        )

    async def test_retry_after_is_honoured(self) -> None:
        calls = 0
        source = history([1, 2])

        async def limited(symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RateLimited("429", retry_after=7.0)
            return await source.fetch(symbol, from_id, limit)

        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        fixer = GapRepairer(limited, max_attempts=2, clock_us=Clock(), sleep=sleep)
        _, record = await fixer.repair(gap(1, 2))
        assert record["status"] == "repaired"
        assert delays == [7.0]

    async def test_fetch_after_pages_to_the_end_of_history(self) -> None:
        source = history(list(range(1, 2_501)))
        tail = await repairer(source).fetch_after("BTCUSDT", 700, None)
        assert ids_of(tail) == list(range(701, 2_501))
        assert source.calls == [
            ("BTCUSDT", 701, 1000),
            ("BTCUSDT", 1701, 1000),  # returns 800 < 1000: the end
        ]

    async def test_fetch_after_stops_at_until(self) -> None:
        source = history(list(range(1, 5_001)))  # trade time is T0 + id µs
        tail = await repairer(source).fetch_after("BTCUSDT", 10, until_us=T0 + 1_500)
        assert ids_of(tail) == list(range(11, 1_501))
        assert len(source.calls) == 2

    async def test_fetch_after_nothing_new(self) -> None:
        source = history([1, 2, 3])
        tail = await repairer(source).fetch_after("BTCUSDT", 3, None)
        assert tail.num_rows == 0

    async def test_fetch_after_raises_k2_errors(self) -> None:
        source = history([1])
        source.transient_failures = 1
        fixer = repairer(source, max_attempts=1)
        with pytest.raises(TransientError, match="gave up after 1 attempt"):
            await fixer.fetch_after("BTCUSDT", 0, None)


def test_a_detected_gap_record_loads_into_the_gap_schema() -> None:
    record = gap_record(gap(3, 9, T0 + 5))
    assert record["status"] == "detected"
    assert (record["repaired_count"], record["resolved_at"], record["reason"]) == (0, None, None)
    batch = pa.RecordBatch.from_pylist([record], schema=GAP.arrow_schema())
    assert list(rows(batch)) == [record]
    assert list(record) == GAP.field_names

"""The live tail on a real embedded log and a real SQLite-catalog lake (and once on
Kafka-on-Tansu): what it holds, what it drops, and the union invariant the engine
relies on — lake at the view's snapshot ∪ the view's rows = the log up to the view,
no gap, no duplicate."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from structlog.testing import capture_logs

from k2.config import LakeSettings, QuerySettings, Settings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink, SinkOptions
from k2.lake.sink_offsets import lake_offsets
from k2.lake.tables import ensure_tables
from k2.log.base import Log, LogBatch, TopicPartition
from k2.log.embedded import EmbeddedLog, LogBusy
from k2.log.factory import open_log, topic_layout
from k2.log.topics import TopicLayout
from k2.query.tail import LiveTail, TailNotReady
from k2.query.tail_rows import PartitionRows
from k2.records import QUOTE, TRADE
from k2.sources.binance.parse import FrameParser
from tests.captures import HFT_QUOTES, HFT_TRADES, hft_frames
from tests.log.tansu import tansu  # noqa: F401 (the session's broker fixture)
from tests.query.tail_testkit import (
    TAIL_LAYOUT,
    TradeFeed,
    check_union,
    commit,
    lake_rows,
    log_records,
    tail_ids_expected,
)

if TYPE_CHECKING:
    from pyiceberg.table import Table

LAYOUT = TAIL_LAYOUT
TRADES = LAYOUT.data_topic("trade")
QUOTES = LAYOUT.data_topic("quote")


@pytest.fixture
def feed(log: EmbeddedLog) -> TradeFeed:
    return TradeFeed(log, TRADES)


def _ids(table: pa.Table) -> set[str]:
    return set(table.column("message_id").to_pylist())


def test_rows_appear_after_step_as_canonical_arrow(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed
) -> None:
    frames, received = hft_frames()
    parsed = FrameParser().parse(frames, received)
    assert parsed.trades.num_rows == HFT_TRADES and parsed.quotes.num_rows == HFT_QUOTES
    log.produce(TRADES, parsed.trades)
    log.produce(QUOTES, parsed.quotes)
    feed.produce(50)
    tail = LiveTail(log, LAYOUT, tables)

    before = tail.view("trades")  # first call reads the lake's position only
    assert before.snapshot_id is None and before.rows.num_rows == 0
    assert before.log_end == {0: 0, 1: 0, 2: 0}

    assert tail.step() == HFT_TRADES + 300 + HFT_QUOTES
    trades, quotes = tail.view("trades"), tail.view("quotes")
    assert trades.rows.schema.equals(TRADE.arrow_schema())
    assert quotes.rows.schema.equals(QUOTE.arrow_schema())
    assert trades.complete and trades.snapshot_id is None and trades.offsets == {}
    assert trades.log_end == log.end_offsets(TRADES)
    assert quotes.log_end == log.end_offsets(QUOTES)
    # The real capture's rows come back exactly (exact decimals, UTC µs timestamps).
    btc = trades.rows.filter(pc.greater(trades.rows["trade_id"], 1_000_000))
    key = [("trade_id", "ascending")]
    assert btc.sort_by(key).equals(pa.Table.from_batches([parsed.trades]).sort_by(key))
    assert quotes.rows.sort_by([("update_id", "ascending")]).equals(
        pa.Table.from_batches([parsed.quotes]).sort_by([("update_id", "ascending")])
    )
    check_union(log, tables["trades"], TRADES, trades)

    stats = tail.stats()
    assert stats.streams["trades"].rows_held == HFT_TRADES + 300
    assert stats.streams["trades"].lag == {p: n for p, n in log.end_offsets(TRADES).items()}
    assert stats.polls == 1 and stats.read_errors == 0 and stats.last_poll_at is not None


def test_commits_drop_exactly_the_covered_rows_and_the_union_holds_at_every_step(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed
) -> None:
    """Random produce / commit / step interleavings, including commits past what the
    tail has read (the lake ahead: it jumps) and steps with nothing new."""
    rng = random.Random(20240101)
    table = tables["trades"]
    tail = LiveTail(log, LAYOUT, tables, data_types=("trades",))
    snapshots_seen = set()
    jumped = False
    for _ in range(25):
        action = rng.random()
        if action < 0.6:
            feed.produce({s: rng.randint(0, 40) for s in feed.symbols})
        if rng.random() < 0.35:  # the sink commits some prefix of each partition
            table.refresh()
            lake = lake_offsets(table, TRADES)
            upto = {p: rng.randint(lake.get(p, 0), end) for p, end in feed.ends.items()}
            before = tail.view("trades").log_end
            jumped |= any(o > before.get(p, 0) for p, o in upto.items())
            commit(log, table, TRADES, upto)
        tail.step()
        view = tail.view("trades")
        snapshots_seen.add(view.snapshot_id)
        assert view.complete
        assert view.log_end == {p: feed.ends.get(p, 0) for p in range(3)}
        lake_ids, tail_ids = check_union(log, table, TRADES, view)
        # After a step the tail holds exactly what its snapshot lacks: no overlap left.
        assert tail_ids == tail_ids_expected(log, TRADES, view)
        assert not lake_ids & tail_ids
    assert len(snapshots_seen) >= 5 and jumped
    # Everything committed: the tail is empty and the lake has it all.
    commit(log, table, TRADES, feed.ends)
    tail.step()
    view = tail.view("trades")
    assert view.rows.num_rows == 0 and view.offsets == feed.ends
    assert len(lake_rows(table, view.snapshot_id)) == sum(n - 1 for n in feed.next_id.values())


def test_a_view_taken_before_a_commit_stays_consistent_after_it(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed
) -> None:
    """The engine reads the lake AT the view's snapshot: a commit after the view was
    taken changes nothing for that view (rows in both are removed as duplicates)."""
    tail = LiveTail(log, LAYOUT, tables, data_types=("trades",))
    feed.produce(30)
    tail.step()
    old = tail.view("trades")
    commit(log, tables["trades"], TRADES, feed.ends)
    lake_ids, tail_ids = check_union(log, tables["trades"], TRADES, old)
    assert not lake_ids and len(tail_ids) == 180
    tail.step()
    new = tail.view("trades")
    assert new is not old and new.rows.num_rows == 0 and new.snapshot_id is not None
    assert old.rows.num_rows == 180  # views are immutable


@pytest.mark.parametrize("lake", ["empty", "behind", "ahead"])
def test_start_positions_follow_the_lake(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed, lake: str
) -> None:
    feed.produce(40)
    table = tables["trades"]
    if lake == "behind":
        commit(log, table, TRADES, {p: end // 2 for p, end in feed.ends.items()})
    elif lake == "ahead":
        commit(log, table, TRADES, feed.ends)
    tail = LiveTail(log, LAYOUT, tables, data_types=("trades",))
    read = tail.step()
    view = tail.view("trades")
    expected = tail_ids_expected(log, TRADES, view)
    assert _ids(view.rows) == expected
    assert read == len(expected)  # it read from the lake's offsets, nothing below
    assert view.offsets == ({} if lake == "empty" else lake_offsets(table, TRADES))
    assert len(expected) == {"empty": 240, "behind": 240 - sum(e // 2 for e in feed.ends.values()),
                             "ahead": 0}[lake]  # fmt: skip
    check_union(log, table, TRADES, view)

    # The lake moves past what the tail has read: it jumps instead of re-reading.
    feed.produce(10)
    commit(log, table, TRADES, feed.ends)
    assert tail.step() == 0
    view = tail.view("trades")
    assert view.rows.num_rows == 0 and view.offsets == feed.ends
    assert view.log_end == _positions(feed.ends, 3)
    check_union(log, table, TRADES, view)


def test_memory_cap_drops_the_oldest_rows_says_so_and_recovers(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed
) -> None:
    table = tables["trades"]
    tail = LiveTail(
        log, LAYOUT, tables, settings=QuerySettings(tail_max_rows=1000), data_types=("trades",)
    )
    tail.step()
    for _ in range(4):  # the sink is down: 4 polls of 300 records
        feed.produce(50)
        with capture_logs() as logs:
            tail.step()
    view = tail.view("trades")
    assert view.rows.num_rows == 1000 and not view.complete
    stats = tail.stats().streams["trades"]
    assert stats.dropped_rows == 200 and not stats.complete
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "tail_memory_cap_dropping_rows"
    ]
    # What is missing is exactly the oldest 200 records; the rest is held.
    truth = log_records(log, TRADES, view.log_end)
    missing = truth.filter(pc.invert(pc.is_in(truth["message_id"], view.rows["message_id"])))
    assert missing.num_rows == 200
    dropped_upto: dict[int, int] = {}
    for p, o in zip(missing["partition"].to_pylist(), missing["offset"].to_pylist(), strict=True):
        dropped_upto[p] = max(dropped_upto.get(p, 0), o + 1)
    for p in dropped_upto:  # oldest: per partition, a prefix of the log
        offsets = missing.filter(pc.equal(missing["partition"], p))["offset"].to_pylist()
        assert sorted(offsets) == list(range(dropped_upto[p]))

    # The sink catches up past what was dropped: complete again, nothing re-read.
    commit(log, table, TRADES, dropped_upto)
    with capture_logs() as logs:
        assert tail.step() == 0
    view = tail.view("trades")
    assert view.complete and view.rows.num_rows == 1000
    assert any(e["event"] == "tail_complete_again" for e in logs)
    check_union(log, table, TRADES, view)


def test_a_second_tail_resumes_from_the_lake_and_neither_joins_the_sink_group(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed, tmp_path: Path
) -> None:
    feed.produce(100)
    first = LiveTail(log, LAYOUT, tables, data_types=("trades",))
    first.step()
    sink = LakeSink(log, catalog_from(LakeSettings(), tmp_path / "data"), LAYOUT,
                    options=SinkOptions(max_records=250))  # fmt: skip
    stats = sink.run(until_idle=True, max_seconds=60)
    sink.close()
    assert stats.records["trades"] == 600  # the tail took no partition from the group
    assert log.lag("k2-lake-sink", TRADES) == dict.fromkeys(range(3), 0)
    feed.produce(20)

    # Another "process": its own log handle and catalog, no state shared with `first`.
    other_log = EmbeddedLog(tmp_path / "log", durability="normal")
    other_tables = ensure_tables(catalog_from(LakeSettings(), tmp_path / "data"))
    second = LiveTail(other_log, LAYOUT, other_tables, data_types=("trades",))
    assert second.step() == 120  # from the lake's offsets: only what it lacks
    first.step()
    a, b = first.view("trades"), second.view("trades")
    tables["trades"].refresh()  # the tails refresh their own copies, not ours
    assert a.snapshot_id == b.snapshot_id and a.offsets == b.offsets == lake_offsets(
        tables["trades"], TRADES
    )
    assert _ids(a.rows) == _ids(b.rows) and len(_ids(b.rows)) == 120
    check_union(log, tables["trades"], TRADES, b)
    other_log.close()


def test_background_thread_publishes_within_a_deadline(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed
) -> None:
    settings = QuerySettings(tail_poll_ms=20, refresh_ms=20)
    with LiveTail(log, LAYOUT, tables, settings=settings) as tail:
        assert tail.running
        produced = feed.produce(25)
        assert tail.wait_until(produced, timeout_s=10)
        assert len(_ids(tail.view("trades").rows)) == 150
        commit(log, tables["trades"], TRADES, feed.ends)
        table = tables["trades"]
        table.refresh()
        snapshot = table.current_snapshot()
        assert snapshot is not None
        assert tail.wait_until(
            lambda: tail.view("trades").snapshot_id == snapshot.snapshot_id, timeout_s=10
        )
        assert tail.view("trades").rows.num_rows == 0
        assert not tail.wait_until({0: 10**9}, timeout_s=0.05)  # never read that far
    assert not tail.running and tail.stats().polls >= 2


class FlakyLog:
    """The real log, except that :meth:`read` fails while ``failures`` is positive (the
    log being busy, a transient error)."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self.failures = 0

    def read(self, partition: TopicPartition, start: int, end: int | None = None,
             max_records: int = 50_000) -> Iterator[LogBatch]:  # fmt: skip
        if self.failures > 0:
            self.failures -= 1
            raise LogBusy(f"{partition}: database is locked")
        return self._log.read(partition, start, end, max_records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def test_read_errors_are_counted_retried_and_the_last_cut_served(
    log: EmbeddedLog, tables: dict[str, Table], feed: TradeFeed
) -> None:
    flaky = FlakyLog(log)
    tail = LiveTail(flaky, LAYOUT, tables, data_types=("trades",))
    feed.produce(10)
    tail.step()
    good = tail.view("trades")
    feed.produce(10)
    flaky.failures = 1
    with capture_logs() as logs:
        assert tail.step() == 0
    assert tail.view("trades") is good  # nothing read: the same cut
    assert tail.stats().read_errors == 1 and "locked" in (tail.stats().last_error or "")
    assert any(e["event"] == "tail_read_failed" for e in logs)
    assert tail.step() == 60
    check_union(log, tables["trades"], TRADES, tail.view("trades"))

    # In the background: errors back off and the tail recovers on its own.
    flaky.failures = 3
    with LiveTail(flaky, LAYOUT, tables, data_types=("trades",),
                  settings=QuerySettings(tail_poll_ms=10)) as background:  # fmt: skip
        produced = feed.produce(5)
        assert background.wait_until(produced, timeout_s=20)
        assert background.stats().read_errors == 3
        check_union(log, tables["trades"], TRADES, background.view("trades"))


def test_a_topic_that_does_not_exist_yet_is_followed_once_created(
    tmp_path: Path, tables: dict[str, Table]
) -> None:
    """The API may start before anything was captured."""
    log = EmbeddedLog(tmp_path / "empty-log", durability="normal")
    tail = LiveTail(log, LAYOUT, tables, data_types=("trades",))
    tail.step()
    assert tail.view("trades").rows.num_rows == 0 and tail.view("trades").log_end == {}
    for spec in LAYOUT.specs():
        log.create_topic(spec)
    feed = TradeFeed(log, TRADES)
    feed.produce(5)
    tail.step()  # the topic is found at the refresh, read at the poll
    assert tail.view("trades").rows.num_rows == 30
    log.close()


def test_an_unreadable_lake_means_not_ready_rather_than_an_empty_answer(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    """Without the lake's position the tail cannot say where the lake ends: a first
    view must fail (the API answers 503), never claim an empty lake."""
    catalog = catalog_from(LakeSettings(), tmp_path / "data")
    tables = ensure_tables(catalog)
    catalog.drop_table("market_data.trades")
    tail = LiveTail(log, LAYOUT, tables, data_types=("trades",))
    with pytest.raises(TailNotReady):
        tail.view("trades")
    tail.step()
    assert tail.stats().refresh_errors == 1


def test_on_kafka_tansu(tansu: str, tables: dict[str, Table]) -> None:  # noqa: F811
    """The same tail on a Kafka-protocol broker. Tansu reports a wrong high watermark
    (the last batch's base offset + 1), so nothing here relies on end offsets: the
    tail reads each partition to the end the fetch reports, and the expected
    positions come from what produce returned, not from ``end_offsets``."""
    from k2.log.codec import CompactCodec
    from k2.log.kafka import KafkaLog

    layout = TopicLayout(exchange=f"tail{uuid.uuid4().hex[:8]}", trade_partitions=2,
                         quote_partitions=1)  # fmt: skip
    topic = layout.data_topic("trade")
    kafka = KafkaLog(tansu, codec=CompactCodec())
    try:
        for spec in layout.specs():
            kafka.create_topic(spec)
        feed = TradeFeed(kafka, topic, symbols=("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT"))
        feed.produce(30)
        tail = LiveTail(kafka, layout, tables, data_types=("trades",))
        assert tail.step() == 120
        view = tail.view("trades")
        assert view.log_end == _positions(feed.ends, 2)
        check_union(kafka, tables["trades"], topic, view)

        commit(kafka, tables["trades"], topic, {p: e - 5 for p, e in feed.ends.items()})
        feed.produce(5)
        assert tail.step() == 20
        view = tail.view("trades")
        assert view.rows.num_rows == 10 + 20 and view.log_end == _positions(feed.ends, 2)
        assert _ids(view.rows) == tail_ids_expected(kafka, topic, view)
        check_union(kafka, tables["trades"], topic, view)
    finally:
        kafka.close()


def _positions(ends: Mapping[int, int], partitions: int) -> dict[int, int]:
    return {p: ends.get(p, 0) for p in range(partitions)}


def _chunk(first: int, n: int) -> tuple[pa.RecordBatch, pa.Array]:
    offsets = pa.array(range(first, first + n), pa.int64())
    return pa.RecordBatch.from_arrays([offsets], names=["offset"]), offsets


def test_held_rows_stay_in_few_chunks_and_drop_by_offset() -> None:
    """Many small polls: chunks merge like a binary counter (O(log n) of them), rows
    stay in offset order; drops slice exactly at an offset."""
    rng = random.Random(5)
    part = PartitionRows(start=100)
    position = 100
    for seq in range(2000):
        n = rng.randint(1, 40)
        assert part.append(*_chunk(position, n), seq=seq) == 0
        position += n
    total = position - 100
    assert part.rows == total and part.position == position and part.start == 100
    assert len(part.batches()) <= 2 * total.bit_length()
    held = pa.concat_arrays([b.column(0) for b in part.batches()]).to_pylist()
    assert held == list(range(100, position))

    assert part.drop_below(12_345) == 12_345 - 100
    assert part.start == 12_345 and part.rows == position - 12_345
    assert part.batches()[0].column(0)[0].as_py() == 12_345
    assert part.drop_oldest(10) == 10 and part.start == 12_355
    assert part.drop_below(position + 50) == position - 12_355  # the lake is ahead: jump
    assert part.rows == 0 and part.start == part.position == position + 50
    # Retention deleted offsets before the tail read them: counted, start unchanged.
    assert part.append(*_chunk(position + 60, 5), seq=9999) == 10
    assert part.start == position + 50 and part.position == position + 65


def test_open_from_settings_follows_the_configured_log_and_lake(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log={"trade_partitions": 2, "quote_partitions": 2})
    layout = topic_layout(settings)
    log = open_log(settings)
    for spec in layout.specs():
        log.create_topic(spec)
    produced = TradeFeed(log, layout.data_topic("trade")).produce(3)
    tail = LiveTail.open(settings)
    with tail:
        assert tail.wait_until(produced, timeout_s=10)
        assert tail.view("trades").rows.num_rows == 18
        assert tail.view("quotes").rows.num_rows == 0
    tail.close()
    log.close()

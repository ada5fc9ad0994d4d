"""The lake sink: every record once, positions in snapshot summaries, fenced commits."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink, SinkOptions
from k2.lake.sink_offsets import lake_offsets, offsets_key
from k2.lake.tables import ensure_tables
from k2.log.base import TopicPartition
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout
from k2.ops.breaker import BreakerRegistry, BreakerSettings, BreakerState

LAYOUT = TopicLayout(trade_partitions=4, quote_partitions=4)
TRADES_TOPIC = LAYOUT.data_topic("trade")
SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT", "XRPUSDT"]


def _fill(log: EmbeddedLog, trades: Callable[..., pa.RecordBatch], first: int, n: int) -> None:
    for spec in LAYOUT.specs():
        log.create_topic(spec)
    for symbol in SYMBOLS:
        # Several produce calls per symbol so partitions hold several log segments.
        for start in range(first, first + n, 700):
            log.produce(TRADES_TOPIC, trades(symbol, start, min(700, first + n - start)))


def _sink(log: EmbeddedLog, lake: LakeSettings, tmp_path: Path, **options: float) -> LakeSink:
    catalog = catalog_from(lake, tmp_path / "data")
    opts = SinkOptions(**options) if options else SinkOptions(max_records=1500)  # type: ignore[arg-type]
    return LakeSink(log, catalog, LAYOUT, namespace=lake.namespace, options=opts)


def _lake_trades(lake: LakeSettings, tmp_path: Path) -> pa.Table:
    table = ensure_tables(catalog_from(lake, tmp_path / "data"), lake.namespace)["trades"]
    return table.scan(selected_fields=("symbol", "trade_id", "timestamp")).to_arrow()


def _assert_exactly(lake_rows: pa.Table, first: int, last: int) -> None:
    for symbol in SYMBOLS:
        ids = lake_rows.filter(pc.equal(lake_rows["symbol"], symbol))["trade_id"].to_pylist()
        assert sorted(ids) == list(range(first, last + 1)), symbol


def test_sink_lands_every_trade_once_and_resumes(
    lake_variant: LakeSettings, tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 2000)
    sink = _sink(log, lake_variant, tmp_path)
    stats = sink.run(until_idle=True, max_seconds=120)
    sink.close()
    assert stats.records["trades"] == 2000 * len(SYMBOLS)
    assert stats.commits >= 2  # batched by count: 12,000 records, 1,500 per batch
    _assert_exactly(_lake_trades(lake_variant, tmp_path), 1, 2000)

    table = ensure_tables(catalog_from(lake_variant, tmp_path / "data"), lake_variant.namespace)
    assert lake_offsets(table["trades"], TRADES_TOPIC) == log.end_offsets(TRADES_TOPIC)
    snapshot = table["trades"].current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert offsets_key(TRADES_TOPIC) in snapshot.summary.additional_properties

    # The group's own position is only for lag: rewinding it must not duplicate.
    consumer = log.consumer("k2-lake-sink", [TRADES_TOPIC])
    consumer.poll(timeout_s=0)
    consumer.commit({tp: 0 for tp in consumer.assignment()})
    consumer.close()
    _fill(log, trades, 2001, 500)
    sink = _sink(log, lake_variant, tmp_path)
    stats = sink.run(until_idle=True, max_seconds=120)
    sink.close()
    assert stats.records["trades"] == 500 * len(SYMBOLS)
    _assert_exactly(_lake_trades(lake_variant, tmp_path), 1, 2500)
    log.close()


def test_batches_are_sorted_by_symbol_then_timestamp(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 1000)
    lake = LakeSettings()
    sink = _sink(log, lake, tmp_path, max_records=100_000)
    sink.run(until_idle=True, max_seconds=60)
    sink.close()
    table = ensure_tables(catalog_from(lake, tmp_path / "data"))["trades"]
    files = [t.file.file_path for t in table.scan().plan_files()]
    assert len(files) > 1  # partitioned by symbol bucket
    for path in files:
        data = pq.read_table(path.removeprefix("file://"), columns=["symbol", "timestamp"])
        keys = list(zip(data["symbol"].to_pylist(), data["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys)
        meta = pq.ParquetFile(path.removeprefix("file://")).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
    log.close()


def test_two_sinks_in_one_group_share_the_work_exactly_once(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 3000)
    lake = LakeSettings()
    sinks = [_sink(log, lake, tmp_path, max_records=1000) for _ in range(2)]
    done = threading.Barrier(2, timeout=120)

    def work(sink: LakeSink) -> None:
        sink.run(max_seconds=3)
        done.wait()

    threads = [threading.Thread(target=work, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    for s in sinks:
        s.close()
    # Whatever the two left, a last run drains; the lake then holds each trade once.
    last = _sink(log, lake, tmp_path)
    last.run(until_idle=True, max_seconds=60)
    last.close()
    rows = _lake_trades(lake, tmp_path)
    _assert_exactly(rows, 1, 3000)
    assert Counter(rows["symbol"].to_pylist()) == dict.fromkeys(SYMBOLS, 3000)
    assert sum(s.stats.total for s in sinks) > 0
    log.close()


def test_a_rewound_consumer_never_writes_twice(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    """A sink whose partitions were written meanwhile by another (a rebalance race)
    drops its stale rows at commit time instead of appending them again."""
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 500)
    lake = LakeSettings()
    stale = _sink(log, lake, tmp_path, max_records=10_000_000, max_seconds=3600)
    stale.step(timeout_s=1)  # buffers everything, does not commit (not due)
    assert stale.buffered == 500 * len(SYMBOLS)
    fresh = _sink(log, lake, tmp_path, max_records=10_000_000)
    # Make ``fresh`` own everything, as after a rebalance the stale member missed.
    fresh._consumer.close()
    fresh._consumer = log.consumer("other-group", [TRADES_TOPIC])
    fresh._assigned = set()
    fresh.run(until_idle=True, max_seconds=60)
    stale.flush()
    stale.close()
    fresh.close()
    rows = _lake_trades(lake, tmp_path)
    _assert_exactly(rows, 1, 500)
    assert stale.stats.records["trades"] == 0  # every stale row was fenced out
    assert fresh.stats.records["trades"] == 500 * len(SYMBOLS)
    log.close()


def test_a_batch_the_lake_refuses_goes_to_the_dead_letter_topic(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 100)
    lake = LakeSettings()
    table = ensure_tables(catalog_from(lake, tmp_path / "data"))["trades"]
    # A codec no Parquet writer knows: every data file is refused (an empty commit,
    # which writes no file, still goes through).
    with table.transaction() as tx:
        tx.set_properties({"write.parquet.compression-codec": "no-such-codec"})
    sink = _sink(log, lake, tmp_path, max_records=100_000, commit_retries=1)
    stats = sink.run(until_idle=True, max_seconds=60)
    sink.close()
    assert stats.dead_lettered == 100 * len(SYMBOLS)
    assert stats.records["trades"] == 0
    dlq = LAYOUT.dead_letter_topic("trade")
    letters = [
        row
        for p, start in log.begin_offsets(dlq).items()
        for b in log.read(TopicPartition(dlq, p), start)
        for row in b.records.to_pylist()
    ]
    assert len(letters) == 100 * len(SYMBOLS)
    assert {(r["reason"], r["source"], r["data_type"]) for r in letters} == {
        ("lake_write_failed", "sink", "trade")
    }
    raw = [json.loads(r["raw"]) for r in letters]
    assert sorted((r["symbol"], r["trade_id"]) for r in raw) == sorted(
        (s, i) for s in SYMBOLS for i in range(1, 101)
    )
    # The lake moved past them: a new sink does not try them again.
    table.refresh()
    assert lake_offsets(table, TRADES_TOPIC) == log.end_offsets(TRADES_TOPIC)
    again = _sink(log, lake, tmp_path)
    assert again.run(until_idle=True, max_seconds=30).dead_lettered == 0
    again.close()
    log.close()


def test_a_lake_behind_the_group_is_filled_from_where_the_lake_ends(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    # The lake is the source of truth: a sink whose group committed further than the
    # lake holds (a lake restored from an older copy, here a fresh one) must start where
    # the lake ends, even with nothing new arriving in the log.
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 800)
    lake = LakeSettings()
    first = _sink(log, lake, tmp_path)
    first.run(until_idle=True, max_seconds=60)
    first.close()
    _assert_exactly(_lake_trades(lake, tmp_path), 1, 800)

    fresh = tmp_path / "restored"
    sink = _sink(log, lake, fresh)
    stats = sink.run(until_idle=True, max_seconds=60)
    sink.close()
    assert stats.records["trades"] == 800 * len(SYMBOLS)
    _assert_exactly(_lake_trades(lake, fresh), 1, 800)
    log.close()


def test_a_storage_outage_holds_records_instead_of_dead_lettering_them(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    """Data files cannot be written (the warehouse path is blocked): nothing is
    dead-lettered, the circuit breaker opens, and once the storage is back the same
    sink commits every record exactly once."""
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1, 300)
    lake = LakeSettings()
    table = ensure_tables(catalog_from(lake, tmp_path / "data"))["trades"]
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("data files cannot go under a file")
    good = table.metadata.properties.get("write.data.path")
    with table.transaction() as tx:
        tx.set_properties({"write.data.path": (blocker / "data").as_uri()})
    breakers = BreakerRegistry(BreakerSettings(failure_threshold=2, reset_timeout_s=0.1,
                                               max_reset_timeout_s=0.2))  # fmt: skip
    catalog = catalog_from(lake, tmp_path / "data")
    sink = LakeSink(log, catalog, LAYOUT, options=SinkOptions(max_records=1500),
                    breakers=breakers)  # fmt: skip
    stop = threading.Event()
    runner = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while breakers.get("object_store").state is not BreakerState.OPEN:
        assert time.monotonic() < deadline, "the object-store breaker never opened"
        time.sleep(0.02)  # polling a condition, with a deadline
    assert sink.outage_since is not None and sink.stats.dead_lettered == 0
    assert 0 < sink.buffered <= 1500  # held, and no more read than one batch
    with table.transaction() as tx:  # the storage is back
        if good is None:
            tx.remove_properties("write.data.path")
        else:
            tx.set_properties({"write.data.path": good})
    while sink.stats.records["trades"] < 300 * len(SYMBOLS):
        assert time.monotonic() < deadline, f"only {sink.stats.records['trades']} committed"
        time.sleep(0.02)  # polling a condition, with a deadline
    stop.set()
    runner.join(30)
    sink.close()
    assert sink.stats.dead_lettered == 0 and sink.outage_since is None
    assert breakers.get("object_store").state is BreakerState.CLOSED
    _assert_exactly(_lake_trades(lake, tmp_path), 1, 300)
    log.close()

"""The lake sink's metrics: commits by outcome, rows, commit time, log lag, dead letters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink, SinkOptions
from k2.lake.tables import ensure_tables
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout
from k2.ops.metrics import Metrics

LAYOUT = TopicLayout(trade_partitions=4, quote_partitions=4)
SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
WALL_S = 1_750_000_000.0


def _fill(log: EmbeddedLog, trades: Callable[..., pa.RecordBatch], n: int) -> None:
    for spec in LAYOUT.specs():
        log.create_topic(spec)
    for symbol in SYMBOLS:
        log.produce(LAYOUT.data_topic("trade"), trades(symbol, 1, n))


def _ticking() -> Callable[[], float]:
    """A monotonic clock that moves 10 s per reading: every step is past the lag
    interval and every buffered batch is due."""
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0
        return now[0]

    return clock


def test_sink_records_commits_rows_and_log_lag(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 1000)
    metrics = Metrics(stages=("sink",), wall_clock=lambda: WALL_S)
    catalog = catalog_from(LakeSettings(), tmp_path / "data")
    sink = LakeSink(log, catalog, LAYOUT, options=SinkOptions(max_records=1000),
                    clock=_ticking(), metrics=metrics)  # fmt: skip
    sink.step()
    written = sink.stats.records["trades"]
    assert 0 < written < 3000
    assert metrics.value("k2_sink_log_lag_records", data_type="trade") == 3000 - written
    assert metrics.value("k2_sink_log_lag_records", data_type="quote") == 0

    sink.run(until_idle=True)
    sink.close()
    log.close()
    stats = sink.stats
    assert stats.records["trades"] == 3000
    assert metrics.value("k2_sink_rows_written_total", table="trades") == 3000
    assert metrics.value("k2_sink_commits_total", table="trades", outcome="ok") == stats.commits
    assert metrics.value("k2_sink_commit_duration_seconds", table="trades") == stats.commits
    assert metrics.value("k2_sink_last_commit_timestamp_seconds", table="trades") == WALL_S
    assert metrics.value("k2_sink_log_lag_records", data_type="trade") == 0
    assert metrics.value("k2_sink_commits_total", table="trades", outcome="error") == 0
    assert metrics.value("k2_metric_label_errors_total", metric="k2_sink_commits_total") is None


def test_refused_batches_count_as_errors_and_dead_letters(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    _fill(log, trades, 100)
    lake = LakeSettings()
    table = ensure_tables(catalog_from(lake, tmp_path / "data"))["trades"]
    # A codec no Parquet writer knows: the lake refuses every data file.
    with table.transaction() as tx:
        tx.set_properties({"write.parquet.compression-codec": "no-such-codec"})
    metrics = Metrics(stages=("sink",))
    sink = LakeSink(log, catalog_from(lake, tmp_path / "data"), LAYOUT,
                    options=SinkOptions(commit_retries=1), metrics=metrics)  # fmt: skip
    stats = sink.run(until_idle=True, max_seconds=60)
    sink.close()
    log.close()
    assert stats.dead_lettered == 300
    assert metrics.value("k2_sink_dead_lettered_total") == 300
    assert metrics.value("k2_sink_commits_total", table="trades", outcome="error") == 2
    # The empty append that moves the lake past the dead letters is a commit of 0 rows.
    assert metrics.value("k2_sink_commits_total", table="trades", outcome="ok") == 1
    assert metrics.value("k2_sink_rows_written_total", table="trades") == 0

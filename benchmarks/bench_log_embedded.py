"""Embedded log throughput: produce (durability full and normal) and consume, records/s.

Input: the real BTCUSDT trades of the hftbacktest capture (tests/data), parsed by K2's
own parser, tiled to batches of ``BATCH`` rows spread round-robin over 5 symbols with
fresh trade ids and message ids — real prices, quantities and timestamps, the key mix
of a 5-symbol capture. A topic of 4 partitions, so each produce writes 4 segments.

- produce: ``TOTAL`` records in ``produce`` calls of ``BATCH`` rows into a fresh topic;
  each call returns only once its batch is durable (full: fsync'ed). Once more with
  calls of ``SMALL_BATCH`` rows, to show the fixed cost per call (no goal).
- consume: one consumer group member polls the ``TOTAL`` records back
  (``poll(max_records=50_000)``), decoding every segment; commit once at the end.
Also reported: bytes stored per record (zstd-compressed segment payloads) and the
database file size per record.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyarrow as pa

from benchmarks.datasets import realistic_trades
from benchmarks.harness import Result, dataset_result, repeat
from k2.log.base import Retention, TopicSpec
from k2.log.embedded import Durability, EmbeddedLog
from k2.records import TRADE

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
BATCH = 10_000
#: A capture flushing every few milliseconds: shows the fixed cost per produce call.
SMALL_BATCH = 500
TOTAL = 300_000
PARTITIONS = 4


def trade_batches(total: int = TOTAL, batch: int = BATCH) -> list[pa.RecordBatch]:
    """``total`` realistic trades over :data:`SYMBOLS` in batches of ``batch`` rows."""
    return realistic_trades(total, batch, symbols=SYMBOLS, first_id=0)


def run(runs: int = 5, *, total: int = TOTAL) -> list[Result]:
    """Produce (full, normal) and consume throughput over ``runs`` runs each."""
    batches = trade_batches(total)
    small = trade_batches(total, batch=SMALL_BATCH)
    results: list[Result] = [
        dataset_result(
            f"{total:,} real BTCUSDT trades (the capture in tests/data, parsed by K2) "
            f"re-keyed round-robin over {len(SYMBOLS)} symbols with fresh ids; a topic of "
            f"{PARTITIONS} partitions. No peer: the Kafka block below is the other log."
        )
    ]
    with tempfile.TemporaryDirectory(prefix="k2-bench-log-") as tmp:
        for durability in ("full", "normal"):
            results.append(_produce(Path(tmp) / durability, durability, batches, runs))
        small_result = _produce(Path(tmp) / "small", "full", small, runs)
        small_result.goal = None
        results.append(small_result)
        results.append(_consume(Path(tmp) / "consume", batches, runs))
    return results


def _topic(log: EmbeddedLog, counter: list[int]) -> str:
    counter[0] += 1
    name = f"market.crypto.trades.binance.bench{counter[0]}"
    log.create_topic(TopicSpec(name, TRADE, PARTITIONS, Retention(None, None)))
    return name


def _produce(
    directory: Path, durability: Durability, batches: list[pa.RecordBatch], runs: int
) -> Result:
    counter = [0]
    total = int(sum(b.num_rows for b in batches))
    with EmbeddedLog(directory, durability=durability) as log:

        def measure() -> float:
            name = _topic(log, counter)
            start = time.perf_counter()
            for b in batches:
                log.produce(name, b)
            return total / (time.perf_counter() - start)

        rates = repeat(measure, runs)
        stored = _stored_bytes(log, directory, batches)
    size = batches[0].num_rows
    sync = "fsync per commit" if durability == "full" else "no fsync per commit"
    return Result(
        f"embedded log produce, durability={durability}, batches of {size:,}",
        "records/s",
        rates,
        goal=300_000,
        notes=(
            f"{total:,} trades, produce() calls of "
            f"{size:,} rows into 4 partitions (4 segments per call), each durable on "
            f"return ({sync}); {stored}."
        ),
    )


def _consume(directory: Path, batches: list[pa.RecordBatch], runs: int) -> Result:
    counter = [0]
    total = int(sum(b.num_rows for b in batches))
    with EmbeddedLog(directory) as log:
        name = _topic(log, counter)
        for b in batches:
            log.produce(name, b)

        def measure() -> float:
            counter[0] += 1
            consumer = log.consumer(f"bench-{counter[0]}", [name])
            start = time.perf_counter()
            rows = 0
            while rows < total:
                rows += sum(b.records.num_rows for b in consumer.poll(max_records=50_000))
            consumer.commit()
            elapsed = time.perf_counter() - start
            consumer.close()
            assert rows == total, rows
            return total / elapsed

        rates = repeat(measure, runs)
    return Result(
        "embedded log consume (consumer group poll)",
        "records/s",
        rates,
        goal=500_000,
        notes=(
            f"one member polls {total:,} records (segments of ~2,500 rows) with "
            "max_records=50,000, decoding every segment to Arrow; one commit at the end."
        ),
    )


def _stored_bytes(log: EmbeddedLog, directory: Path, batches: list[pa.RecordBatch]) -> str:
    """Bytes per record: the segment payloads (all topics), the Arrow IPC they
    compress, and the database files (with the WAL)."""
    topics = [t.name for t in log.list_topics()]
    payload = sum(sum(log.stored_bytes(t).values()) for t in topics)
    records = sum(sum(log.end_offsets(t).values()) for t in topics)
    ipc = sum(b.serialize().size for b in batches) / sum(b.num_rows for b in batches)
    files = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return (
        f"stored {payload / records:.1f} B/record zstd ({ipc:.0f} B/record as Arrow "
        f"IPC), database files incl. WAL {files / records:.1f} B/record"
    )


if __name__ == "__main__":
    from benchmarks.harness import render

    print(render(run(), "python -m benchmarks.bench_log_embedded"))

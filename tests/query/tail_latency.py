"""Produce → visible latency of the live tail (a measurement, not a test).

Run from the project root::

    .venv/bin/python -m tests.query.tail_latency [--batches 300] [--poll-ms 100]

Set-up: the embedded log (``full`` durability, as deployed) with 40 + 40 partitions, an
SQLite-catalog lake with the real lake sink committing in a background thread (every
second), and a :class:`~k2.query.tail.LiveTail` with the default settings running in
its own thread. A producer sends batches of trades over 10 symbols at random moments
(0-100 ms apart, so the produce times fall at random phases of the poll cycle) and, for
each, waits on the tail's condition until the view holds the whole batch. Reported:
the time from the produce call returning (the log has the records) to the view
holding them, and from the produce call starting.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from k2.config import LakeSettings, QuerySettings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink, SinkOptions
from k2.lake.tables import ensure_tables
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout
from k2.ops.log import configure_logging
from k2.query.tail import LiveTail
from tests.query.tail_testkit import TradeFeed

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT", "XRPUSDT", "SOLUSDT",
           "DOTUSDT", "LTCUSDT", "TRXUSDT")  # fmt: skip


def measure(batches: int, per_symbol: int, poll_ms: int, work: Path) -> dict[str, float]:
    """Run the set-up in ``work``; returns latency statistics in milliseconds."""
    layout = TopicLayout()  # 40 trade + 40 quote partitions, the defaults
    log = EmbeddedLog(work / "log")
    for spec in layout.specs():
        log.create_topic(spec)
    lake = LakeSettings()
    tables = ensure_tables(catalog_from(lake, work / "data"))
    sink = LakeSink(log, catalog_from(lake, work / "data"), layout,
                    options=SinkOptions(max_seconds=1.0))  # fmt: skip
    stop = threading.Event()
    sinker = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    sinker.start()
    feed = TradeFeed(log, layout.data_topic("trade"), symbols=SYMBOLS)
    rng = random.Random(7)
    from_return: list[float] = []
    from_call: list[float] = []
    pause = threading.Event()
    settings = QuerySettings(tail_poll_ms=poll_ms)
    with LiveTail(log, layout, tables, settings=settings) as tail:
        tail.view("trades")
        for _ in range(batches):
            pause.wait(rng.uniform(0, 0.1))  # pacing, not synchronisation
            called = time.perf_counter()
            produced = feed.produce(per_symbol)
            returned = time.perf_counter()
            if not tail.wait_until(produced, timeout_s=10):
                raise RuntimeError("a batch did not become visible within 10 s")
            seen = time.perf_counter()
            from_return.append((seen - returned) * 1000)
            from_call.append((seen - called) * 1000)
        stats = tail.stats()
    stop.set()
    sinker.join(30)
    sink.close()
    log.close()
    snapshots = stats.streams["trades"].snapshot_id is not None
    return {
        "batches": batches,
        "records": batches * per_symbol * len(SYMBOLS),
        "median_ms": statistics.median(from_return),
        "p90_ms": statistics.quantiles(from_return, n=10)[-1],
        "max_ms": max(from_return),
        "median_from_call_ms": statistics.median(from_call),
        "max_from_call_ms": max(from_call),
        "sink_commits": sink.stats.commits,
        "lake_snapshot_seen": float(snapshots),
        "tail_polls": stats.polls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--per-symbol", type=int, default=20)
    parser.add_argument("--poll-ms", type=int, default=100)
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.batches, args.per_symbol, args.poll_ms, Path(tmp))
    for key, value in result.items():
        print(f"{key:>22}: {value:.1f}" if isinstance(value, float) else f"{key:>22}: {value}")


if __name__ == "__main__":
    main()

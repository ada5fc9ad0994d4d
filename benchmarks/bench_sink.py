"""Lake sink throughput, log → Iceberg, records/s, and bytes per trade on disk.

Input: ``TOTAL`` realistic trades (real BTCUSDT prices, quantities and timestamps of the
hftbacktest capture, dealt round-robin over ``SYMBOLS`` with fresh ids; see
:mod:`benchmarks.datasets`) produced once into an embedded log (K2's default layout:
40 trade partitions, durability normal).

Each run: a fresh embedded lake (SQLite catalog, local warehouse) and a fresh consumer
group; one :class:`~k2.lake.sink.LakeSink` with default options (batches of 100,000
records or 5 s) runs until the log is drained. The rate is ``TOTAL`` over the wall time
of that run, from first poll to last commit: reading and decoding the log, sorting,
Parquet (zstd) writing partitioned by day and symbol bucket, and the Iceberg commits
with their offsets. Bytes per trade: the data files' total size over the rows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.datasets import realistic_trades
from benchmarks.harness import Result, repeat
from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout

TOTAL = 1_000_000
SYMBOLS = tuple(
    f"{base}USDT"
    for base in ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "TRX", "LINK", "DOT")
)
GOAL = 300_000.0


def run(runs: int = 5) -> list[Result]:
    """Sink throughput over ``runs`` runs (after one warm-up run)."""
    layout = TopicLayout()
    sizes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="k2-bench-sink-") as tmp:
        root = Path(tmp)
        log = EmbeddedLog(root / "log", durability="normal")
        for spec in layout.specs():
            log.create_topic(spec)
        for batch in realistic_trades(TOTAL, 50_000, symbols=SYMBOLS):
            log.produce(layout.data_topic("trade"), batch)
        counter = [0]

        def measure() -> float:
            counter[0] += 1
            lake_dir = root / f"lake-{counter[0]}"
            catalog = catalog_from(LakeSettings(), lake_dir)
            sink = LakeSink(log, catalog, layout, group=f"bench-{counter[0]}")
            began = time.perf_counter()
            stats = sink.run(until_idle=True)
            seconds = time.perf_counter() - began
            sink.close()
            if stats.records["trades"] != TOTAL:
                raise RuntimeError(f"sink wrote {stats.records['trades']} of {TOTAL} trades")
            files = sorted((lake_dir / "lake" / "warehouse").rglob("*.parquet"))
            sizes.append(sum(f.stat().st_size for f in files) / TOTAL)
            return TOTAL / seconds

        rates = repeat(measure, runs)
        log.close()
    return [
        Result(
            name=f"lake sink log→Iceberg ({TOTAL:,} trades, embedded catalog)",
            unit="records/s",
            runs=rates,
            goal=GOAL,
            notes=(
                f"default batches (100k records / 5 s), {len(SYMBOLS)} symbols, zstd; "
                f"{sizes[-1]:.1f} bytes/trade in Parquet"
            ),
            extra={"bytes_per_trade": f"{sizes[-1]:.1f}"},
        )
    ]


if __name__ == "__main__":
    for result in run(runs=3):
        print(result.name, f"{result.median:,.0f} {result.unit}", result.runs, result.notes)

"""Lake sink throughput, log → Iceberg, records/s, and bytes per trade on disk, against
pyiceberg's own append of the same trades.

Input: ``total`` realistic trades (real BTCUSDT prices, quantities and timestamps of the
hftbacktest capture, dealt round-robin over ``SYMBOLS`` with fresh ids; see
:mod:`benchmarks.datasets`) produced once into an embedded log (K2's default layout:
40 trade partitions, durability normal).

Each run: a fresh embedded lake (SQLite catalog, local warehouse) and a fresh consumer
group; one :class:`~k2.lake.sink.LakeSink` with default options (batches of 100,000
records or 5 s) runs until the log is drained. The rate is ``total`` over the wall time
of that run, from first poll to last commit: reading and decoding the log, sorting,
Parquet (zstd) writing partitioned by day and symbol bucket, and the Iceberg commits
with their offsets. Bytes per trade: the data files' total size over the rows.

The peer: pyiceberg's default writer, ``Table.append``, of the same trades in the same
100,000-row batches into a fresh table of the same definition (schema, partitioning),
straight from memory: no log to read, no sort, no offsets, default write properties.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyarrow as pa

from benchmarks.datasets import realistic_trades
from benchmarks.harness import Result, dataset_result
from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink
from k2.lake.tables import ensure_tables
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout

TOTAL = 1_000_000
SYMBOLS = tuple(
    f"{base}USDT"
    for base in ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "TRX", "LINK", "DOT")
)
GOAL = 300_000.0
#: The sink's default batch (``SinkOptions.max_records``), also the peer's append size.
SINK_BATCH = 100_000
#: Trades generated and produced at a time when filling the log (bounds memory).
FILL_CHUNK = 1_000_000


def fill_log(directory: Path, total: int, symbols: tuple[str, ...]) -> EmbeddedLog:
    """An embedded log in K2's default layout holding ``total`` realistic trades."""
    layout = TopicLayout()
    log = EmbeddedLog(directory, durability="normal")
    for spec in layout.specs():
        log.create_topic(spec)
    for first in range(0, total, FILL_CHUNK):
        size = min(FILL_CHUNK, total - first)
        for batch in realistic_trades(size, 50_000, symbols=symbols, first_id=first):
            log.produce(layout.data_topic("trade"), batch)
    return log


def lake_bytes(lake_dir: Path) -> int:
    """Bytes of every Parquet data file under a lake directory."""
    return sum(f.stat().st_size for f in lake_dir.rglob("*.parquet"))


def sink_once(log: EmbeddedLog, lake_dir: Path, group: str, total: int) -> tuple[float, float]:
    """Drain ``log`` into a fresh lake at ``lake_dir``: (records/s, bytes/trade)."""
    catalog = catalog_from(LakeSettings(), lake_dir)
    sink = LakeSink(log, catalog, TopicLayout(), group=group)
    began = time.perf_counter()
    stats = sink.run(until_idle=True)
    seconds = time.perf_counter() - began
    sink.close()
    if stats.records["trades"] != total:
        raise RuntimeError(f"sink wrote {stats.records['trades']} of {total} trades")
    return total / seconds, lake_bytes(lake_dir) / total


def append_once(batches: list[pa.Table], lake_dir: Path) -> tuple[float, float]:
    """pyiceberg ``Table.append`` of ``batches`` into a fresh trades table:
    (records/s, bytes/trade)."""
    table = ensure_tables(catalog_from(LakeSettings(), lake_dir))["trades"]
    total = sum(b.num_rows for b in batches)
    began = time.perf_counter()
    for batch in batches:
        table.append(batch)
    seconds = time.perf_counter() - began
    return total / seconds, lake_bytes(lake_dir) / total


def run(runs: int = 5, *, total: int = TOTAL) -> list[Result]:
    """Sink and peer throughput over ``runs`` runs each (after one warm-up run each),
    taking turns."""
    k2_sizes: list[float] = []
    peer_sizes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="k2-bench-sink-") as tmp:
        root = Path(tmp)
        log = fill_log(root / "log", total, SYMBOLS)
        trades = pa.Table.from_batches(realistic_trades(total, SINK_BATCH, symbols=SYMBOLS))
        batches = [trades.slice(i, SINK_BATCH) for i in range(0, total, SINK_BATCH)]
        counter = [0]

        def k2() -> float:
            counter[0] += 1
            rate, size = sink_once(log, root / f"lake-{counter[0]}", f"bench-{counter[0]}", total)
            k2_sizes.append(size)
            return rate

        def peer() -> float:
            counter[0] += 1
            rate, size = append_once(batches, root / f"lake-{counter[0]}")
            peer_sizes.append(size)
            return rate

        k2(), peer()  # warm-up, not counted
        k2_runs, peer_runs = [], []
        for _ in range(runs):
            k2_runs.append(k2())
            peer_runs.append(peer())
        log.close()
    name = f"lake sink log→Iceberg ({total:,} trades, embedded catalog)"
    return [
        dataset_result(
            f"{total:,} realistic trades (real BTCUSDT prices, sizes and times of the "
            f"capture in tests/data, dealt over {len(SYMBOLS)} symbols with fresh ids), "
            "pre-filled into an embedded log (40 partitions); a fresh lake per run."
        ),
        Result(
            name=name,
            unit="records/s",
            runs=k2_runs,
            goal=GOAL,
            notes=(
                f"default batches (100k records / 5 s), zstd, sorted by symbol and time; "
                f"{k2_sizes[-1]:.1f} bytes/trade in Parquet"
            ),
            extra={"bytes_per_trade": f"{k2_sizes[-1]:.1f}"},
        ),
        Result(
            name="pyiceberg Table.append of the same trades (default writer)",
            unit="records/s",
            runs=peer_runs,
            peer_of=name,
            notes=(
                f"the same trades from memory in {SINK_BATCH:,}-row appends, same table "
                f"definition, no log read, no sort; {peer_sizes[-1]:.1f} bytes/trade in Parquet"
            ),
        ),
    ]


if __name__ == "__main__":
    for result in run(runs=3):
        print(result.name, f"{result.median:,.0f} {result.unit}", result.runs, result.notes)

"""Backfill throughput, bytes per trade after compaction, files per partition.

Input: one synthetic BTCUSDT trades archive for 2024-01-01 in Binance's format (zip of a
headerless CSV, ms timestamps), generated once with a fixed seed:

- ``TRADES`` trades (default 1.2M, a typical 2024 BTCUSDT spot day is 1-3M);
- arrivals: Poisson, ~14 per second on average, with "sweeps" (a taker order filled
  against 1-8 makers: same millisecond, consecutive ids, same side, prices stepping by
  the 0.01 tick), so ~40% of trades share their millisecond with another;
- price: a random walk in 0.01 ticks around 42,000 USDT;
- size: log-uniform between 0.00001 and ~2 BTC on the 0.00001 step, so most trades are
  small and a few are large, as on the real book;
- ``is_buyer_maker`` in runs (sweeps share it), ``is_best_match`` always true.

Real days are noisier (price jumps, size clustering at round numbers), so bytes/trade
here is an estimate, not a promise.

Measured, each the median of ``runs`` after a warm-up:

1. ``k2.lake.backfill.backfill`` of the archive into a fresh SQLite-catalog lake
   (read zip, parse, canonicalise, anti-join, write Parquet, commit): trades/s, with
   the default two writer threads and with one.
2. The same day written as a sink would, in ``SINK_BATCHES`` appends, then compacted:
   files in the day's partition before and after, and bytes per trade on disk after.

The peer, in turns with K2's runs: the same archive read by K2's own parser
(:func:`k2.lake.archives.read_archive`: zip, CSV, canonical columns) and written by
pyiceberg's default writer, one ``Table.append`` into a fresh table of the same
definition: no anti-join against the lake, no sort, one writer. The ratio isolates
what K2's import path (parallel partitioned writes, one fast-append) adds or saves.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.harness import Result, dataset_result
from k2.config import LakeSettings
from k2.lake.archives import read_archive
from k2.lake.backfill import backfill
from k2.lake.catalog import catalog_from
from k2.lake.maintenance import compact, files_per_partition
from k2.lake.tables import TABLE_DEFS, ensure_tables, sort_for

if TYPE_CHECKING:
    from pyiceberg.table import Table

TRADES = 1_200_000
SINK_BATCHES = 96  # one append every 15 minutes of the day
DAY_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def generate_day(path: Path, trades: int = TRADES, seed: int = 20240101) -> Path:
    """Write the synthetic day archive described in the module doc to ``path`` (a dir)."""
    rng = random.Random(seed)
    mean_gap_ms = 86_400_000 / trades * 2.2  # sweeps average ~2.2 fills
    lines: list[str] = []
    t = float(DAY_START_MS)
    ticks = 4_200_000  # price in 0.01 ticks
    trade_id = 3_300_000_000
    log_lo, log_hi = math.log(1), math.log(200_000)
    while len(lines) < trades:
        t += rng.expovariate(1 / mean_gap_ms)
        ticks += rng.choice((-2, -1, -1, 0, 0, 0, 1, 1, 2))
        maker = rng.random() < 0.5
        fills = 1 if rng.random() < 0.55 else rng.randint(2, 8)
        step = 1 if maker else -1
        ms = min(int(t), DAY_START_MS + 86_399_999)
        for k in range(fills):
            lots = int(math.exp(rng.uniform(log_lo, log_hi)))
            price = ticks + step * k
            p = f"{price // 100}.{price % 100:02d}000000"
            q = f"{lots // 100_000}.{lots % 100_000:05d}000"
            quote = price * lots  # in 1e-7 units (0.01 × 0.00001)
            qq = f"{quote // 10_000_000}.{quote % 10_000_000:07d}0"
            lines.append(f"{trade_id},{p},{q},{qq},{ms},{maker},True")
            trade_id += 1
        ticks += step * (fills - 1)
    name = "BTCUSDT-trades-2024-01-01"
    archive = path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{name}.csv", "\n".join(lines[:trades]) + "\n")
    return archive


def run(runs: int = 5, *, trades: int = TRADES) -> list[Result]:
    """Backfill trades/s (K2 with 2 and 1 writers, and the peer, taking turns),
    bytes/trade after compaction, files/partition before → after."""
    with tempfile.TemporaryDirectory(prefix="k2-bench-backfill-") as tmp:
        root = Path(tmp)
        archive = generate_day(root, trades)
        lakes = iter(range(10_000))

        def fresh_table() -> Table:
            return ensure_tables(catalog_from(LakeSettings(), root / f"lake{next(lakes)}"))[
                "trades"
            ]

        def measure(workers: int) -> float:
            report = backfill(fresh_table(), [archive], workers=workers)
            assert report.rows_added == trades, report
            return report.rows_added / report.seconds

        def peer() -> float:
            table = fresh_table()
            began = time.perf_counter()
            day = read_archive(archive, ingestion_us=time.time_ns() // 1000).trades
            table.append(day)
            assert day.num_rows == trades, day.num_rows
            return trades / (time.perf_counter() - began)

        measure(2), measure(1), peer()  # warm-up, not counted
        rates: list[float] = []
        serial: list[float] = []
        peers: list[float] = []
        for _ in range(runs):
            rates.append(measure(2))
            serial.append(measure(1))
            peers.append(peer())
        before, after, bytes_per_trade = _compaction(root / "sink-lake", archive)
    name = "backfill: archive → trades table (one day, fresh table)"
    return [
        dataset_result(
            f"one synthetic BTCUSDT day of {trades:,} trades in Binance's trades-archive "
            "format (zip of CSV; seeded, see benchmarks/bench_backfill.py)."
        ),
        Result(
            name,
            "trades/s",
            rates,
            goal=1_000_000,
            notes=(
                "zip inflate + CSV parse + canonical columns + anti-join + Parquet (zstd) "
                "write + one Iceberg commit."
            ),
        ),
        Result(
            "backfill, one thread (workers=1)",
            "trades/s",
            serial,
            notes="the same import with one Parquet writer thread, for comparison",
        ),
        Result(
            "K2's archive parser + pyiceberg Table.append (default writer)",
            "trades/s",
            peers,
            peer_of=name,
            notes=(
                "the same archive through read_archive, then one pyiceberg append into a "
                "fresh table of the same definition: no anti-join, no sort."
            ),
        ),
        Result(
            "bytes per trade on disk after compaction",
            "B/trade",
            [bytes_per_trade],
            notes=(
                "goal ≤ 15 B/trade (lower is better, so the 'met' column does not apply); "
                "Parquet data files only, one compacted day; synthetic data is smoother "
                "than a real day, so treat this as a lower bound."
            ),
        ),
        Result(
            "files in the day partition: before compaction",
            "files",
            [float(before)],
            notes=f"the day appended in {SINK_BATCHES} sink-sized batches",
        ),
        Result("files in the day partition: after compaction", "files", [float(after)]),
    ]


def _compaction(lake: Path, archive: Path) -> tuple[int, int, float]:
    """Files in the day's partition before and after compacting a day appended in
    :data:`SINK_BATCHES` batches, and bytes per trade after."""
    table = ensure_tables(catalog_from(LakeSettings(), lake))["trades"]
    trades = read_archive(archive, ingestion_us=time.time_ns() // 1000).trades
    size = math.ceil(trades.num_rows / SINK_BATCHES)
    for i in range(SINK_BATCHES):
        table.append(sort_for(TABLE_DEFS["trades"], trades.slice(i * size, size)))
    before = max(files_per_partition(table).values())
    compact(table)
    after = max(files_per_partition(table).values())
    total = sum(t.file.file_size_in_bytes for t in table.scan().plan_files())
    return before, after, total / trades.num_rows


if __name__ == "__main__":
    from benchmarks.harness import render

    print(render(run(), "python -m benchmarks.bench_backfill"))

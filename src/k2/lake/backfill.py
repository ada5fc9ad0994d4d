"""Load data.binance.vision archives into the trades table, idempotently.

Archives are read in parallel threads (:func:`k2.lake.archives.read_archive`: zip
inflate, CSV parse and the Arrow kernels all release the GIL) while the calling thread
commits them one by one, in the order given. Each archive becomes exactly one Iceberg
append, so an archive is either wholly in the lake or not at all; the snapshot summary
names it (``k2.backfill.archive``, ``k2.backfill.sha256``, ``k2.backfill.kind``).

Idempotence: before committing, the rows the table already holds for the archive's
symbol, days and id range are scanned (``row_filter`` prunes to the archive's day
and symbol bucket) and every row whose ``message_id`` is already there is dropped. So a
second import of the same archive adds nothing, and an archive overlapping live-captured
trades adds only what the sink did not write (the live parser gives the same trade the
same ``message_id``). Two writers importing the *same* archive at the same instant can
still race (scan, then commit); run one backfill per table at a time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from k2.lake.archives import Archive, ArchiveError, read_archive
from k2.lake.sink_offsets import offsets_properties
from k2.lake.writer import append_partitioned
from k2.ops.clock import utc_now_us

if TYPE_CHECKING:
    from pyiceberg.table import Table

#: Snapshot summary keys a backfill commit carries.
PROP_ARCHIVE = "k2.backfill.archive"
PROP_SHA256 = "k2.backfill.sha256"
PROP_KIND = "k2.backfill.kind"
PROP_SKIPPED = "k2.backfill.rows-skipped"


@dataclass(frozen=True)
class ArchiveResult:
    """What happened to one archive.

    ``rows_added + rows_skipped == rows_read``; ``snapshot_id`` is ``None`` when nothing
    was new (no commit was made).
    """

    path: Path
    kind: str
    symbol: str
    rows_read: int
    rows_added: int
    rows_skipped: int
    sha256: str
    checksum_verified: bool
    snapshot_id: int | None


@dataclass(frozen=True)
class BackfillReport:
    """All archives of one :func:`backfill` call, in input order, and the wall time."""

    archives: list[ArchiveResult]
    seconds: float

    @property
    def rows_read(self) -> int:
        """Trades read from every archive."""
        return sum(a.rows_read for a in self.archives)

    @property
    def rows_added(self) -> int:
        """Trades newly committed to the table."""
        return sum(a.rows_added for a in self.archives)

    @property
    def rows_per_second(self) -> float:
        """Trades read per wall-clock second (0 for an instant, empty run)."""
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def find_archives(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories to the trades/aggTrades archives inside (recursively, sorted).

    Plain files are kept as given (and fail later, by name, if they are not archives);
    ``.CHECKSUM`` side files are skipped.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and f.suffix.lower() in (".zip", ".csv")
                    and ("-trades-" in f.name or "-aggTrades-" in f.name)
                )
            )
        else:
            out.append(p)
    return out


def backfill(
    table: Table,
    paths: Sequence[str | Path],
    *,
    workers: int = 2,
    verify: bool = True,
    clock_us: Callable[[], int] | None = None,
    quote_assets: Mapping[str, str] | None = None,
) -> BackfillReport:
    """Import ``paths`` (archives; see :func:`find_archives`) into ``table`` (trades).

    ``workers`` threads read archives ahead of the committing thread (at most
    ``workers`` archives are held in memory). ``clock_us`` gives the ingestion time in
    UTC µs (default: the wall clock). Raises :class:`~k2.lake.archives.ArchiveError`
    naming the file for the first archive that cannot be read; archives before it in
    ``paths`` are already committed (each commit stands alone, so re-running is safe).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    now_us = clock_us or utc_now_us
    started = time.perf_counter()
    results: list[ArchiveResult] = []
    todo = deque(Path(p) for p in paths)
    pending: deque[Future[Archive]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k2-backfill") as pool:
        try:
            while todo or pending:
                while todo and len(pending) < workers:
                    pending.append(
                        pool.submit(
                            read_archive,
                            todo.popleft(),
                            ingestion_us=now_us(),
                            quote_assets=quote_assets,
                            verify=verify,
                        )
                    )
                archive = pending.popleft().result()
                results.append(load_archive(table, archive, writers=workers))
        finally:
            for f in pending:
                f.cancel()
    return BackfillReport(results, time.perf_counter() - started)


def load_archive(table: Table, archive: Archive, *, writers: int = 2) -> ArchiveResult:
    """Append the rows of ``archive`` that ``table`` does not already hold (one commit).

    ``writers`` threads write the Parquet files side by side; the commit is one
    Iceberg append of all of them.
    """
    trades = archive.trades
    read = trades.num_rows
    if read:
        known = existing_message_ids(table, archive)
        if len(known):
            trades = trades.filter(pc.invert(pc.is_in(trades["message_id"], value_set=known)))
    snapshot_id: int | None = None
    if trades.num_rows:
        props = {
            # The sink's log position, carried forward (see k2.lake.sink_offsets).
            **offsets_properties(table),
            PROP_ARCHIVE: archive.path.name,
            PROP_SHA256: archive.sha256,
            PROP_KIND: archive.name.kind.value,
            PROP_SKIPPED: str(read - trades.num_rows),
        }
        append_partitioned(table, trades, prefix="backfill", properties=props, threads=writers)
        snap = table.current_snapshot()
        snapshot_id = snap.snapshot_id if snap is not None else None
    return ArchiveResult(
        path=archive.path,
        kind=archive.name.kind.value,
        symbol=archive.name.symbol,
        rows_read=read,
        rows_added=trades.num_rows,
        rows_skipped=read - trades.num_rows,
        sha256=archive.sha256,
        checksum_verified=archive.checksum_verified,
        snapshot_id=snapshot_id,
    )


def existing_message_ids(table: Table, archive: Archive) -> pa.Array:
    """``message_id`` s ``table`` already holds in ``archive``'s symbol, time and id range.

    Refreshes ``table`` first so commits by other processes (the sink) are seen.
    """
    table.refresh()
    if table.current_snapshot() is None:
        return pa.array([], pa.string())
    ts = archive.trades["timestamp"]
    lo_ts, hi_ts = pc.min(ts).as_py(), pc.max(ts).as_py()
    if not isinstance(lo_ts, datetime) or not isinstance(hi_ts, datetime):
        raise ArchiveError(f"{archive.path}: archive has no timestamps")
    # The symbol is [A-Z0-9]+ (checked by the file-name pattern), so quoting is safe.
    # A day of slack on each side: the id range does the real selecting (files carry
    # trade_id bounds, so it prunes too); the window only limits which day partitions
    # are opened, and must not depend on the archive and the live feed agreeing on a
    # trade's time to the day.
    row_filter = (
        f"symbol == '{archive.name.symbol}'"
        f" and timestamp >= '{_iso(_day_start(lo_ts) - timedelta(days=1))}'"
        f" and timestamp < '{_iso(_day_start(hi_ts) + timedelta(days=2))}'"
        f" and trade_id >= {archive.min_id} and trade_id <= {archive.max_id}"
    )
    found = table.scan(row_filter=row_filter, selected_fields=("message_id",)).to_arrow()
    return found["message_id"].combine_chunks()


def _day_start(ts: datetime) -> datetime:
    # Whole days: the same pruning as the day partitions, and no trade is missed for
    # carrying a slightly different time in the live feed than in the archive.
    return ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()

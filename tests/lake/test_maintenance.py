"""Compaction (also under concurrent appends), expiry, orphan cleanup, schema evolution."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest
from pyiceberg.types import StringType

from k2.config import LakeSettings
from k2.errors import TransientError
from k2.lake.archives import ArchiveKind, ArchiveName, parse_csv, to_trades
from k2.lake.catalog import catalog_from
from k2.lake.maintenance import (
    PROP_MAINTENANCE,
    compact,
    expire_snapshots,
    files_per_partition,
    maintain,
    remove_orphan_files,
)
from k2.lake.snapshots import list_snapshots, read_as_of
from k2.lake.tables import TRADES, ensure_tables
from tests.lake.test_archives import MS_2024, trade_rows

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = catalog_from(LakeSettings(), tmp_path / "lake")
    ensure_tables(cat)
    return cat


def _trades(first_id: int, count: int) -> pa.Table:
    """Trades ``first_id`` .. ``first_id + count - 1``, trade n at MS_2024 + n ms."""
    text = "\n".join(trade_rows(first_id, count, MS_2024 + first_id)).encode() + b"\n"
    raw = parse_csv(text, ArchiveKind.TRADES, source="test")
    return to_trades(raw, ArchiveName("BTCUSDT", ArchiveKind.TRADES, "2024-01-01"), ingestion_us=0)


def _all_ids(table: Table) -> list[int]:
    table.refresh()
    return sorted(table.scan(selected_fields=("trade_id",)).to_arrow()["trade_id"].to_pylist())


def test_compaction_rewrites_small_files_sorted_in_one_commit(catalog: Catalog) -> None:
    table = catalog.load_table(TRADES)
    for i in reversed(range(6)):  # newest first, so file order is not time order
        table.append(_trades(1 + 10 * i, 10))
    assert list(files_per_partition(table).values()) == [6]
    report = compact(table)
    assert (report.partitions, report.files_before, report.files_after) == (1, 6, 1)
    assert report.rows == 60
    assert list(files_per_partition(table).values()) == [1]
    data = table.scan().to_arrow()
    assert data["trade_id"].to_pylist() == list(range(1, 61))  # sorted by timestamp
    last = list_snapshots(table)[-1]
    assert last.operation == "overwrite" and last.k2[PROP_MAINTENANCE] == "compaction"
    assert (last.added_records, last.deleted_records, last.total_records) == (60, 60, 60)
    assert compact(table).snapshot_id is None  # nothing left to do
    # The rewritten file carries stats, so filters still prune and select exactly.
    assert table.scan(row_filter="trade_id >= 55").to_arrow().num_rows == 6
    (task,) = table.scan().plan_files()
    assert task.file.record_count == 60 and task.file.lower_bounds and task.file.upper_bounds
    # Compaction checks the message ids: K2's engine may build them (k2.lake.message_ids).
    import pyarrow.parquet as pq

    from k2.lake import message_ids

    footer = pq.read_metadata(task.file.file_path.removeprefix("file://")).metadata or {}
    assert footer.get(message_ids.FOOTER_KEY) == b"trade_id"


def test_compaction_while_appends_run_loses_nothing(catalog: Catalog) -> None:
    batches = 12
    appended = threading.Event()
    errors: list[BaseException] = []

    def sink() -> None:
        table = catalog.load_table(TRADES)
        try:
            for i in range(batches):
                table.append(_trades(1 + 20 * i, 20))
                appended.set()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
            appended.set()

    writer = threading.Thread(target=sink)
    writer.start()
    assert appended.wait(timeout=30)
    compactor = catalog.load_table(TRADES)
    attempts = 0
    while writer.is_alive():
        attempts += 1
        # A sink commit may win the race; the compaction then replans next time round.
        with contextlib.suppress(TransientError):
            compact(compactor, min_files=2, attempts=1)
    writer.join(timeout=60)
    assert not errors and attempts >= 1
    final = compact(compactor, min_files=2)
    assert final.snapshot_id is not None or len(files_per_partition(compactor)) == 1
    assert list(files_per_partition(compactor).values()) == [1]
    assert _all_ids(compactor) == list(range(1, 20 * batches + 1))


def test_schema_evolution_old_files_read_with_new_schema(catalog: Catalog) -> None:
    table = catalog.load_table(TRADES)
    table.append(_trades(1, 5))
    with table.update_schema() as update:
        update.add_column("venue_note", StringType(), doc="added later")
    old_rows = table.scan().to_arrow()
    assert old_rows.column_names[-1] == "venue_note"
    assert old_rows["venue_note"].to_pylist() == [None] * 5
    new = _trades(6, 5)
    new = new.append_column(
        pa.field("venue_note", pa.string(), nullable=True), pa.array(["x"] * 5, pa.string())
    )
    table.append(new)
    compact(table)  # rewrites old and new files together under the new schema
    notes = dict(
        zip(
            table.scan().to_arrow()["trade_id"].to_pylist(),
            table.scan().to_arrow()["venue_note"].to_pylist(),
            strict=True,
        )
    )
    assert notes == {**dict.fromkeys(range(1, 6)), **dict.fromkeys(range(6, 11), "x")}
    first = list_snapshots(table)[0]
    as_before = read_as_of(table, snapshot_id=first.snapshot_id)
    # Time travel reads with the schema of that snapshot (Iceberg's rule).
    assert as_before.num_rows == 5 and "venue_note" not in as_before.column_names


def test_expiry_keeps_the_time_travel_window(catalog: Catalog) -> None:
    table = catalog.load_table(TRADES)
    for i in range(3):
        table.append(_trades(1 + 10 * i, 10))
    s1, s2, s3 = list_snapshots(table)
    assert s2.committed_at < s3.committed_at
    now = s3.committed_at + timedelta(hours=2)
    report = expire_snapshots(table, keep=now - s3.committed_at, now=lambda: now)
    # s1 and s2 are older than the window; s2 was current at its start and is kept.
    assert report.expired == [s1.snapshot_id]
    assert [s.snapshot_id for s in list_snapshots(table)] == [s2.snapshot_id, s3.snapshot_id]
    assert read_as_of(table, as_of=report.cutoff - timedelta(milliseconds=1)).num_rows == 20
    assert expire_snapshots(table, keep=timedelta(days=7)).expired == []


def test_maintain_runs_every_step(catalog: Catalog) -> None:
    table = catalog.load_table(TRADES)
    for i in range(3):
        table.append(_trades(1 + 10 * i, 10))
    later = datetime.now(UTC) + timedelta(days=2)
    report = maintain(table, keep=timedelta(hours=1), now=lambda: later)
    assert report.table == "market_data.trades"
    assert report.compaction.files_before == 3 and report.compaction.files_after == 1
    assert len(report.expiry.expired) == 3  # the 3 appends; the compaction is current
    assert sum(p.endswith(".parquet") for p in report.orphans.paths) == 3
    assert _all_ids(table) == list(range(1, 31))


def test_minute_partials_live_and_go_with_their_data_file(catalog: Catalog) -> None:
    """Compaction writes a file with minute partials; orphan cleanup keeps them while a
    retained snapshot references the file and deletes them with it afterwards."""
    from k2.lake.minutes import minutes_path

    table = catalog.load_table(TRADES)
    for i in range(3):
        table.append(_trades(1 + 10 * i, 10))
    compact(table)

    def live() -> list[str]:
        table.refresh()
        return [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]

    (first,) = live()
    assert Path(minutes_path(first)).is_file()
    for i in range(3, 5):
        table.append(_trades(1 + 10 * i, 10))
    compact(table)
    (second,) = live()
    later = datetime.now(UTC) + timedelta(days=2)
    kept = remove_orphan_files(table, older_than=timedelta(hours=1), now=lambda: later)
    assert not any(p.endswith(".minutes") for p in kept.paths)  # all retained
    report = maintain(table, keep=timedelta(hours=1), now=lambda: later)
    assert minutes_path(first) in report.orphans.paths
    assert not Path(minutes_path(first)).exists() and not Path(first).exists()
    assert Path(minutes_path(second)).is_file()
    assert _all_ids(table) == list(range(1, 51))


def test_orphan_cleanup_spares_referenced_and_young_files(catalog: Catalog) -> None:
    table = catalog.load_table(TRADES)
    for i in range(4):
        table.append(_trades(1 + 10 * i, 10))
    compact(table)
    stray = Path(table.location().removeprefix("file://")) / "data" / "stray.parquet"
    stray.write_bytes(b"not referenced")
    real_now = datetime.now(UTC)
    # Every snapshot still retained: only the stray is unreferenced, and it is young.
    assert remove_orphan_files(table, older_than=timedelta(hours=1)).paths == []
    later = real_now + timedelta(hours=2)
    dry = remove_orphan_files(table, older_than=timedelta(hours=1), now=lambda: later, dry_run=True)
    assert dry.paths == [str(stray)] and stray.exists()
    expire_snapshots(table, keep=timedelta(0), now=lambda: later)
    removed = remove_orphan_files(table, older_than=timedelta(hours=1), now=lambda: later)
    names = [Path(p).name for p in removed.paths]
    assert "stray.parquet" in names
    assert sum(n.endswith(".parquet") for n in names) == 5  # 4 compacted away + stray
    assert _all_ids(table) == list(range(1, 41))


def test_the_sink_position_survives_compaction_and_expiry(catalog: Catalog) -> None:
    # The sink resumes from offsets stored in snapshot summaries; compaction must carry
    # them forward, or expiring the sink's own snapshots would lose its position and it
    # would re-read (and duplicate) the log.
    from k2.lake.sink_offsets import encode_offsets, lake_offsets, offsets_key

    table = catalog.load_table(TRADES)
    topic = "market.crypto.trades.binance"
    table.append(_trades(1, 10), snapshot_properties={offsets_key(topic): encode_offsets({0: 10})})
    table.append(_trades(11, 10), snapshot_properties={offsets_key(topic): encode_offsets({0: 20})})
    compact(table)
    assert list_snapshots(table)[-1].k2[offsets_key(topic)] == encode_offsets({0: 20})
    later = datetime.now(UTC) + timedelta(days=30)
    expire_snapshots(table, keep=timedelta(hours=1), now=lambda: later)
    table.refresh()
    assert len(table.metadata.snapshots) == 1  # only the compaction snapshot is left
    assert lake_offsets(table, topic) == {0: 20}

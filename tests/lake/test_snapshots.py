"""Snapshot listing and time travel on a real tmp_path lake."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from k2.config import LakeSettings
from k2.lake.backfill import PROP_ARCHIVE, backfill
from k2.lake.catalog import catalog_from
from k2.lake.snapshots import SnapshotNotFound, list_snapshots, read_as_of, snapshot_at
from k2.lake.tables import ensure_tables
from tests.lake.test_archives import MS_2024, trade_rows, write_archive

if TYPE_CHECKING:
    from pyiceberg.table import Table


@pytest.fixture
def trades(tmp_path: Path) -> Table:
    return ensure_tables(catalog_from(LakeSettings(), tmp_path / "lake"))["trades"]


def _load_two_days(trades: Table, tmp_path: Path) -> None:
    day = 86_400_000
    for d in range(2):
        path = write_archive(
            tmp_path,
            f"BTCUSDT-trades-2024-01-0{d + 1}",
            trade_rows(1 + 10 * d, 10, MS_2024 + d * day),
        )
        backfill(trades, [path])


def test_list_snapshots_with_summary(trades: Table, tmp_path: Path) -> None:
    assert list_snapshots(trades) == []
    _load_two_days(trades, tmp_path)
    snaps = list_snapshots(trades)
    assert [s.operation for s in snaps] == ["append", "append"]
    assert [s.added_records for s in snaps] == [10, 10]
    assert [s.total_records for s in snaps] == [10, 20]
    assert [s.is_current for s in snaps] == [False, True]
    assert snaps[1].parent_id == snaps[0].snapshot_id
    assert snaps[0].k2[PROP_ARCHIVE] == "BTCUSDT-trades-2024-01-01.zip"
    assert snaps[0].committed_at <= snaps[1].committed_at
    assert snaps[0].to_json_dict()["k2"][PROP_ARCHIVE] == "BTCUSDT-trades-2024-01-01.zip"


def test_read_as_of_snapshot_id_and_time(trades: Table, tmp_path: Path) -> None:
    _load_two_days(trades, tmp_path)
    first, second = list_snapshots(trades)
    old = read_as_of(trades, snapshot_id=first.snapshot_id)
    assert sorted(old["trade_id"].to_pylist()) == list(range(1, 11))
    assert read_as_of(trades, snapshot_id=second.snapshot_id).num_rows == 20
    assert snapshot_at(trades, first.committed_at) == first.snapshot_id
    at_first = read_as_of(trades, as_of=first.committed_at, columns=("message_id",))
    assert at_first.column_names == ["message_id"] and at_first.num_rows == 10
    filtered = read_as_of(trades, snapshot_id=second.snapshot_id, row_filter="trade_id > 15")
    assert filtered.num_rows == 5


def test_unknown_snapshot_and_time_before_history(trades: Table, tmp_path: Path) -> None:
    _load_two_days(trades, tmp_path)
    first = list_snapshots(trades)[0]
    with pytest.raises(SnapshotNotFound, match="no snapshot 42"):
        read_as_of(trades, snapshot_id=42)
    with pytest.raises(SnapshotNotFound, match="no snapshot at or before"):
        read_as_of(trades, as_of=first.committed_at - timedelta(seconds=1))
    with pytest.raises(ValueError, match="exactly one"):
        read_as_of(trades)
    with pytest.raises(ValueError, match="timezone-aware"):
        snapshot_at(trades, first.committed_at.replace(tzinfo=None))

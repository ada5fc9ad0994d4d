"""Backfill into a real (tmp_path) SQLite-catalog lake: idempotence, overlap, summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.config import LakeSettings
from k2.lake.archives import ArchiveError
from k2.lake.backfill import PROP_ARCHIVE, PROP_SHA256, backfill, find_archives
from k2.lake.catalog import catalog_from
from k2.lake.tables import TABLE_DEFS, ensure_tables, sort_for
from k2.sources.binance.parse import parse_rest_trades
from tests.lake.test_archives import MS_2024, trade_rows, write_archive

if TYPE_CHECKING:
    from pyiceberg.table import Table


@pytest.fixture
def trades(tmp_path: Path) -> Table:
    catalog = catalog_from(LakeSettings(), tmp_path / "lake")
    return ensure_tables(catalog)["trades"]


def _ids(table: Table) -> list[str]:
    table.refresh()
    return sorted(table.scan(selected_fields=("message_id",)).to_arrow()["message_id"].to_pylist())


def test_same_archive_twice_lands_once(trades: Table, tmp_path: Path) -> None:
    path = write_archive(
        tmp_path, "BTCUSDT-trades-2024-01-01", trade_rows(1, 500, MS_2024), checksum=True
    )
    first = backfill(trades, [path])
    assert first.rows_added == 500 and first.archives[0].checksum_verified
    snaps_before = len(trades.metadata.snapshots)
    second = backfill(trades, [path])
    assert (second.rows_read, second.rows_added) == (500, 0)
    assert second.archives[0].snapshot_id is None
    assert len(trades.metadata.snapshots) == snaps_before
    ids = _ids(trades)
    assert len(ids) == len(set(ids)) == 500


def test_commit_summary_names_archive_and_checksum(trades: Table, tmp_path: Path) -> None:
    path = write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", trade_rows(1, 10, MS_2024))
    report = backfill(trades, [path])
    snap = trades.snapshot_by_id(report.archives[0].snapshot_id or -1)
    assert snap is not None and snap.summary is not None
    assert snap.summary[PROP_ARCHIVE] == path.name
    assert snap.summary[PROP_SHA256] == report.archives[0].sha256
    assert snap.summary["added-records"] == "10"


def test_overlap_with_live_captured_trades_is_not_duplicated(trades: Table, tmp_path: Path) -> None:
    # The sink has already written trades 41..60 as the live (REST/WS) parser builds them.
    live_json = json.dumps(
        [
            {"id": i, "price": "42000.00000000", "qty": "0.00100000", "quoteQty": "42",
             "time": MS_2024 + i, "isBuyerMaker": False, "isBestMatch": True}
            for i in range(41, 61)
        ]
    ).encode()  # fmt: skip
    live, rejects = parse_rest_trades(live_json, "BTCUSDT", received_us=1)
    assert not rejects
    trades.append(sort_for(TABLE_DEFS["trades"], pa.Table.from_batches([live])))
    path = write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", trade_rows(1, 50, MS_2024))
    report = backfill(trades, [path])
    assert (report.rows_added, report.archives[0].rows_skipped) == (40, 10)
    ids = _ids(trades)
    assert len(ids) == len(set(ids)) == 60


def test_parallel_archives_trades_and_aggtrades(trades: Table, tmp_path: Path) -> None:
    day = 86_400_000
    for d in range(3):
        write_archive(
            tmp_path,
            f"BTCUSDT-trades-2024-01-0{d + 1}",
            trade_rows(1 + d * 100, 100, MS_2024 + d * day),
        )
    write_archive(tmp_path, "ETHUSDT-aggTrades-2024-01-01", [f"1,2300,1,1,4,{MS_2024},true,true"])
    paths = find_archives([tmp_path])
    assert len(paths) == 4
    report = backfill(trades, paths, workers=2)
    assert report.rows_added == 301
    assert len(_ids(trades)) == 301
    again = backfill(trades, paths, workers=2)
    assert again.rows_added == 0
    eth = trades.scan(row_filter="symbol == 'ETHUSDT'").to_arrow()
    assert eth["message_id"].to_pylist() == ["binance:ETHUSDT:agg:1"]


def test_bad_archive_stops_with_its_name_after_earlier_commits(
    trades: Table, tmp_path: Path
) -> None:
    good = write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", trade_rows(1, 5, MS_2024))
    bad = write_archive(tmp_path, "BTCUSDT-trades-2024-01-02", ["1,2,3"])
    with pytest.raises(ArchiveError, match=r"BTCUSDT-trades-2024-01-02\.zip"):
        backfill(trades, [good, bad], workers=1)
    assert len(_ids(trades)) == 5
    assert pc.sum(pc.equal(trades.scan().to_arrow()["symbol"], "BTCUSDT")).as_py() == 5

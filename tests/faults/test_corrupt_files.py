"""Fault: a Parquet data file of the lake is damaged — bytes overwritten, or truncated.

A small lake (embedded catalog, local warehouse) holds three symbols, each in its own
partition (``bucket(16, symbol)``) of two files. One file of one symbol is then
damaged the way a bad disk, a botched copy or a half-finished upload would: data pages
overwritten, the footer overwritten, or the file cut in half.

Expected outcome: *stopped with a clear error and nothing lost*. A query that reads the
damaged file fails with an error naming it — :class:`QueryError` ``lake-file-unreadable``
from the engine, ``error: …`` and exit code 2 from ``k2 query``, a 500 problem document
from the REST API — never a stack trace; queries of the other partitions answer in full.
``k2 maintain`` on the table stops naming the file and changes nothing: the snapshot is
the same, every other file and row is still there.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.exceptions import StarletteDeprecationWarning
from typer.testing import CliRunner, Result

from k2.api.app import create_app
from k2.api.auth import KeyStore, key_entry
from k2.cli import app
from k2.config import Settings, load_settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import TABLE_DEFS, ensure_tables, sort_for
from k2.query.base import QueryError
from k2.query.engine import QueryEngine
from tests.lake.conftest import make_trades

with warnings.catch_warnings():
    # As in tests/api: Starlette prefers httpx2 for its TestClient; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

DAMAGED, INTACT = "ETHUSDT", ("BTCUSDT", "BNBUSDT")
ROWS_PER_FILE = 5000
START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
KEY = "fault-test-key-0123456789abcdef"


def _overwrite_pages(path: Path, rng: random.Random) -> None:
    with path.open("r+b") as fh:
        fh.seek(path.stat().st_size // 3)
        fh.write(rng.randbytes(4096))


def _overwrite_footer(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    footer = int.from_bytes(data[-8:-4], "little")  # Parquet: <footer><len:4><PAR1>
    start = len(data) - 8 - footer
    with path.open("r+b") as fh:
        fh.seek(start + footer // 4)
        fh.write(rng.randbytes(footer // 2))


def _truncate(path: Path, rng: random.Random) -> None:
    os.truncate(path, path.stat().st_size // 2)


DAMAGE: dict[str, Callable[[Path, random.Random], None]] = {
    "overwritten-pages": _overwrite_pages,
    "overwritten-footer": _overwrite_footer,
    "truncated": _truncate,
}


@dataclass
class DamagedLake:
    """The lake, the damaged file, and the files per symbol."""

    settings: Settings
    damaged: Path
    files: dict[str, list[Path]]


def _build(tmp_path: Path, damage: str) -> DamagedLake:
    settings = load_settings(data_dir=tmp_path / "data")
    table = ensure_tables(open_catalog(settings))["trades"]
    files: dict[str, list[Path]] = {}
    partitions = set()
    for symbol in (DAMAGED, *INTACT):
        before = {t.file.file_path for t in table.scan().plan_files()}
        for first in (1, ROWS_PER_FILE + 1):
            batch = make_trades(symbol, first, ROWS_PER_FILE)
            table.append(sort_for(TABLE_DEFS["trades"], pa.Table.from_batches([batch])))
        new = [t.file for t in table.scan().plan_files() if t.file.file_path not in before]
        assert len(new) == 2, new
        partitions.add(repr(new[0].partition))
        files[symbol] = sorted(Path(f.file_path.removeprefix("file://")) for f in new)
    assert len(partitions) == 3, "the symbols should land in three partitions"
    damaged = files[DAMAGED][0]
    DAMAGE[damage](damaged, random.Random(damage))
    return DamagedLake(settings, damaged, files)


@pytest.fixture(params=sorted(DAMAGE))
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> DamagedLake:
    return _build(tmp_path, str(request.param))


def _engine(lake: DamagedLake) -> QueryEngine:
    return QueryEngine(open_catalog(lake.settings), background_refresh=False)


def test_a_query_reading_the_damaged_file_names_it_and_others_answer(lake: DamagedLake) -> None:
    with _engine(lake) as engine:
        asks: dict[str, Callable[[], object]] = {
            "trades": lambda: engine.trades(DAMAGED, start=START, end=END, limit=100_000),
            "newest": lambda: engine.trades(DAMAGED, order="desc", limit=10),
            "bars": lambda: engine.bars(DAMAGED, interval="1m", start=START, end=END),
        }
        for what, ask in asks.items():
            with pytest.raises(QueryError) as caught:
                ask()
            assert caught.value.code == "lake-file-unreadable", (what, caught.value)
            assert caught.value.status == 500
            assert str(lake.damaged) in str(caught.value), (what, str(caught.value))
        for symbol in INTACT:
            rows = engine.trades(symbol, start=START, end=END, limit=100_000)
            assert rows.table.num_rows == 2 * ROWS_PER_FILE, symbol
            ids = rows.table.column("trade_id").to_pylist()
            assert sorted(ids) == list(range(1, 2 * ROWS_PER_FILE + 1)), symbol
            bars = engine.bars(symbol, interval="1d", start=START, end=END)
            assert bars.table.column("trade_count").to_pylist() == [2 * ROWS_PER_FILE]


def _k2(monkeypatch: pytest.MonkeyPatch, lake: DamagedLake, *args: str) -> Result:
    """``k2 <args>`` in-process on ``lake``; an uncaught exception fails the test."""
    monkeypatch.setenv("K2_DATA_DIR", str(lake.settings.data_dir))
    monkeypatch.delenv("K2_CONFIG", raising=False)
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_the_cli_and_the_api_say_which_file_is_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = _build(tmp_path, "truncated")
    window = ("--start", "2024-01-01T00:00:00Z", "--end", "2024-01-02T00:00:00Z")
    bad = _k2(monkeypatch, lake, "query", "trades", "-s", DAMAGED, *window)
    assert bad.exit_code == 2, bad.output
    assert str(lake.damaged) in bad.stderr, bad.stderr
    good = _k2(monkeypatch, lake, "query", "trades", "-s", INTACT[0], *window, "--format", "csv")
    assert good.exit_code == 0, good.output
    assert len(good.stdout.strip().splitlines()) == 1 + 1000  # header + the default limit

    with _engine(lake) as engine:
        settings = Settings(data_dir=lake.settings.data_dir, api={"rate_limit_burst": 1000})
        api = create_app(engine, settings, keystore=KeyStore([key_entry("ops", KEY)]))
        with TestClient(api, raise_server_exceptions=False) as client:
            client.headers["X-API-Key"] = KEY
            window_q = {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"}
            problem = client.get("/v1/trades", params={"symbol": DAMAGED, **window_q})
            assert problem.status_code == 500, problem.text
            assert problem.headers["content-type"].startswith("application/problem+json")
            body = problem.json()
            assert body["type"].endswith("/lake-file-unreadable"), body
            assert str(lake.damaged) in body["detail"], body
            fine = client.get("/v1/trades", params={"symbol": INTACT[1], **window_q})
            assert fine.status_code == 200, fine.text
            assert len(fine.json()["data"]) == 1000


def test_compaction_of_a_damaged_partition_stops_clearly_and_changes_nothing(
    lake: DamagedLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = ensure_tables(open_catalog(lake.settings))["trades"]
    snapshot = table.current_snapshot()
    assert snapshot is not None

    done = _k2(monkeypatch, lake, "maintain", "--table", "trades")

    assert done.exit_code == 2, done.output
    assert str(lake.damaged) in done.stderr and "changed nothing" in done.stderr, done.stderr
    table.refresh()
    after = table.current_snapshot()
    assert after is not None and after.snapshot_id == snapshot.snapshot_id
    live = {Path(t.file.file_path.removeprefix("file://")) for t in table.scan().plan_files()}
    assert live == {f for paths in lake.files.values() for f in paths}
    for symbol, paths in lake.files.items():
        for path in paths:
            if path != lake.damaged:  # every other file, and all its rows, still there
                assert pq.read_table(path).num_rows == ROWS_PER_FILE, (symbol, path)

"""Bars from minute partials: what happens when they are missing, damaged or turned off.

(Their values are checked against the trades in ``test_bars``, every test of which runs
on files with partials too.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from k2.config import QuerySettings
from k2.lake.minutes import minutes_path
from k2.lake.tables import TABLE_DEFS, sort_for
from k2.lake.writer import append_partitioned
from tests.query.conftest import EngineFactory, Lake
from tests.query.engine_kit import market, trades_table


@pytest.fixture
def written(lake: Lake) -> list[Path]:
    """Two days of trades written by K2's writer; the partials files."""
    table = lake.tables["trades"]
    rows = sort_for(TABLE_DEFS["trades"], trades_table(market(days=2, per_symbol_day=40)))
    append_partitioned(table, rows, prefix="test")
    files = [Path(t.file.file_path.removeprefix("file://")) for t in table.scan().plan_files()]
    partials = [Path(minutes_path(str(f))) for f in files]
    assert partials and all(p.is_file() for p in partials)
    return partials


def test_bars_come_from_partials_and_equal_the_trades(
    make_engine: EngineFactory, written: list[Path]
) -> None:
    on = make_engine().bars(None, interval="5m")
    off = make_engine(settings=QuerySettings(minute_partials=False)).bars(None, interval="5m")
    assert on.meta.extra["bars_read"] == "minute-partials"
    assert off.meta.extra["bars_read"] == "row-groups"
    assert on.table.equals(off.table) and on.table.num_rows > 0


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bars_read_the_trades_where_partials_are_missing_or_damaged(
    make_engine: EngineFactory, written: list[Path], damage: str
) -> None:
    want = make_engine(settings=QuerySettings(minute_partials=False)).bars(None, interval="1h")
    hurt = written[0]
    if damage == "missing":
        hurt.unlink()
    else:
        hurt.write_bytes(hurt.read_bytes()[:100])
    got = make_engine().bars(None, interval="1h")
    assert got.table.equals(want.table)
    assert got.meta.extra["bars_read"] == "minute-partials+row-groups"


def test_partials_of_many_files_combine_as_they_are_read(
    make_engine: EngineFactory, written: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny bound on the partials held, every file's are combined into the bars
    read so far at once: the same answer."""
    from k2.query import engine as engine_module

    want = make_engine().bars(None, interval="1h")
    monkeypatch.setattr(engine_module, "_PARTIALS_HELD", 1)
    got = make_engine().bars(None, interval="1h")
    assert len(written) > 2 and got.table.equals(want.table)
    assert got.meta.extra["bars_read"] == "minute-partials"

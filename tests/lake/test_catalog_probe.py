"""Looking for new commits without loading tables: the catalog query behind the query
engine's and the live tail's refreshes (several a second)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest

from k2.config import LakeSettings, QuerySettings
from k2.lake.catalog import catalog_from, metadata_locations, refresh_if_changed
from k2.lake.tables import TABLE_DEFS, ensure_tables
from k2.query.lake import ENGINE_TABLES, LakeTables
from tests.lake.conftest import lake_settings_for, make_trades


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeSettings:
    """Both SQL catalogs K2 runs on."""
    return lake_settings_for(request, str(request.param), tmp_path)


def _append(table: Any, first_id: int) -> None:
    table.append(pa.Table.from_batches([make_trades("BTCUSDT", first_id, 10)]))


def test_metadata_locations_follow_commits(sql_lake: LakeSettings, tmp_path: Path) -> None:
    catalog = catalog_from(sql_lake, tmp_path)
    tables = ensure_tables(catalog, sql_lake.namespace)
    names = {n: TABLE_DEFS[n].identifier(sql_lake.namespace) for n in ("trades", "quotes")}
    before = metadata_locations(catalog, [*names.values(), f"{sql_lake.namespace}.nosuch"])
    assert before == {names[n]: tables[n].metadata_location for n in names}

    writer = catalog.load_table(names["trades"])  # another process's view
    _append(writer, 1)
    after = metadata_locations(catalog, list(names.values()))
    assert after is not None
    assert after[names["trades"]] == writer.metadata_location != before[names["trades"]]
    assert after[names["quotes"]] == before[names["quotes"]]


def test_refresh_if_changed_loads_only_after_a_commit(
    sql_lake: LakeSettings, tmp_path: Path
) -> None:
    catalog = catalog_from(sql_lake, tmp_path)
    reader = ensure_tables(catalog, sql_lake.namespace)["trades"]
    assert not refresh_if_changed(reader)
    _append(catalog.load_table(reader.name()), 1)
    assert reader.current_snapshot() is None
    assert refresh_if_changed(reader)
    snapshot = reader.current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    assert snapshot.summary["added-records"] == "10"
    assert not refresh_if_changed(reader)


def test_a_catalog_without_the_query_gives_none() -> None:
    """REST and other catalogs: the caller loads the tables as before."""
    assert metadata_locations(cast(Any, object()), ["market_data.trades"]) is None


def test_engine_refresh_loads_only_what_was_committed(
    sql_lake: LakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that finds nothing new reads no metadata file and calls no hook; one
    after a commit loads that table alone and its snapshot becomes current."""
    catalog = catalog_from(sql_lake, tmp_path)
    ensure_tables(catalog, sql_lake.namespace)
    loads: list[str] = []
    real_load = catalog.load_table

    def counting_load(identifier: Any) -> Any:
        loads.append(str(identifier))
        return real_load(identifier)

    monkeypatch.setattr(catalog, "load_table", counting_load)
    states: list[object] = []
    lake = LakeTables(catalog, sql_lake.namespace, QuerySettings(), on_load=states.append,
                      background=False)  # fmt: skip
    loads.clear()
    states.clear()
    first = lake.refresh()
    second = lake.refresh()
    assert loads == [] and states == []
    assert second.loaded_mono >= first.loaded_mono
    assert all(second.tables[n] is first.tables[n] for n in ENGINE_TABLES)

    _append(real_load(TABLE_DEFS["trades"].identifier(sql_lake.namespace)), 1)
    loads.clear()  # the commit's own
    third = lake.refresh()
    assert loads == [TABLE_DEFS["trades"].identifier(sql_lake.namespace)]
    assert len(states) == 1
    assert third.current("trades") is not None and first.current("trades") is None
    assert third.tables["quotes"] is first.tables["quotes"]
    lake.close()

"""Catalog configuration, K2's tables, and the offsets kept in snapshot summaries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from k2.config import LakeSettings
from k2.errors import ConfigError, TerminalError
from k2.lake.catalog import catalog_from, catalog_properties
from k2.lake.sink_offsets import (
    decode_offsets,
    encode_offsets,
    lake_offsets,
    offsets_key,
    offsets_properties,
)
from k2.lake.tables import GAPS, QUOTES, REFERENCE_DATA, TABLE_DEFS, TRADES, ensure_tables
from k2.records import GAP, QUOTE, REFERENCE, TRADE


def test_ensure_tables_creates_k2s_tables_idempotently(
    lake_variant: LakeSettings, tmp_path: Path
) -> None:
    catalog = catalog_from(lake_variant, tmp_path)
    tables = ensure_tables(catalog, lake_variant.namespace)
    again = ensure_tables(catalog_from(lake_variant, tmp_path), lake_variant.namespace)
    assert set(tables) == set(again) == {"trades", "quotes", "reference_data", "gaps"}
    for name, record_type in (("trades", TRADE), ("quotes", QUOTE),
                              ("reference_data", REFERENCE), ("gaps", GAP)):  # fmt: skip
        table = tables[name]
        assert table.schema().as_struct() == record_type.iceberg_schema().as_struct()
        assert table.properties["write.parquet.compression-codec"] == "zstd"
        assert again[name].metadata.table_uuid == table.metadata.table_uuid
    trades = tables["trades"]
    spec = [(f.name, str(f.transform)) for f in trades.spec().fields]
    assert spec == [("timestamp_day", "day"), ("symbol_bucket", "bucket[16]")]
    sort = [trades.schema().find_column_name(f.source_id) for f in trades.sort_order().fields]
    assert sort == ["symbol", "timestamp"]
    assert tables["reference_data"].spec().fields == ()


def test_default_names() -> None:
    assert (TRADES, QUOTES, REFERENCE_DATA, GAPS) == (
        "market_data.trades", "market_data.quotes", "market_data.reference_data",
        "market_data.gaps",
    )  # fmt: skip
    assert TABLE_DEFS["trades"].identifier("other") == "other.trades"


def test_catalog_properties_per_kind(tmp_path: Path) -> None:
    props = catalog_properties(LakeSettings(), tmp_path)
    assert props["uri"] == f"sqlite:///{(tmp_path / 'lake' / 'catalog.db').resolve()}"
    assert props["warehouse"] == (tmp_path / "lake" / "warehouse").resolve().as_uri()
    s3 = LakeSettings(
        catalog="postgresql",
        uri="postgresql+psycopg2://u@h/db",
        warehouse="s3://b/p",
        s3_endpoint="http://127.0.0.1:9000",
        s3_access_key_id="a",
        s3_secret_access_key="s",
        s3_path_style=True,
    )
    props = catalog_properties(s3, tmp_path)
    assert props["warehouse"] == "s3://b/p"
    assert props["s3.endpoint"] == "http://127.0.0.1:9000"
    assert props["s3.force-virtual-addressing"] == "false"
    assert props["type"] == "sql"
    rest = catalog_properties(LakeSettings(catalog="rest", uri="http://cat:8181"), tmp_path)
    assert rest["type"] == "rest" and rest["uri"] == "http://cat:8181"
    with pytest.raises(ConfigError, match="K2_LAKE__URI"):
        catalog_properties(LakeSettings(catalog="postgresql"), tmp_path)


def test_offsets_round_trip_and_reject_garbage() -> None:
    assert decode_offsets(encode_offsets({3: 10, 0: 7})) == {0: 7, 3: 10}
    with pytest.raises(TerminalError):
        decode_offsets("[1, 2]")


def test_lake_position_is_the_max_over_snapshots_even_without_offsets(
    tmp_path: Path, trades: Callable[..., pa.RecordBatch]
) -> None:
    table = ensure_tables(catalog_from(LakeSettings(), tmp_path))["trades"]
    key = offsets_key("t")
    data = pa.Table.from_batches([trades("BTCUSDT", 1, 10)])
    table.append(data, snapshot_properties={key: encode_offsets({0: 5, 1: 9})})
    # A stale view of partition 1 (as after a lost commit race) must not move it back.
    table.append(data, snapshot_properties={key: encode_offsets({0: 8, 1: 4})})
    table.append(data)  # e.g. a backfill without offsets
    assert lake_offsets(table, "t") == {0: 8, 1: 9}
    assert offsets_properties(table) == {key: encode_offsets({0: 8, 1: 9})}
    assert lake_offsets(table, "other") == {}

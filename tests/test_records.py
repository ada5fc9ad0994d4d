"""The Arrow, Iceberg and Avro forms of each record are derived from one definition."""

from __future__ import annotations

import io
from decimal import Decimal

import fastavro
import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow

from k2.records import RECORD_TYPES, TRADE, RecordType, message_id


def test_trade_has_the_sixteen_canonical_fields() -> None:
    assert TRADE.field_names == [
        "message_id", "trade_id", "exchange", "symbol", "asset_class", "timestamp",
        "event_time", "price", "quantity", "quote_quantity", "currency", "side",
        "is_buyer_maker", "source_sequence", "ingestion_timestamp", "vendor_data",
    ]  # fmt: skip


@pytest.mark.parametrize("rt", list(RECORD_TYPES.values()), ids=lambda r: r.name)
def test_iceberg_schema_converts_back_to_the_arrow_schema(rt: RecordType) -> None:
    from_iceberg = schema_to_pyarrow(rt.iceberg_schema(), include_field_ids=False)
    ours = rt.arrow_schema()
    assert from_iceberg.names == ours.names
    for theirs, mine in zip(from_iceberg, ours, strict=True):
        # pyiceberg renders strings and binaries as their large variants; the logical
        # type must agree.
        large = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
        assert large.get(theirs.type, theirs.type) == mine.type, mine.name
        assert theirs.nullable == mine.nullable, mine.name


@pytest.mark.parametrize("rt", list(RECORD_TYPES.values()), ids=lambda r: r.name)
def test_avro_schema_round_trips_a_row_exactly(rt: RecordType) -> None:
    row = _sample_row(rt)
    batch = pa.RecordBatch.from_pylist([row], schema=rt.arrow_schema())
    buf = io.BytesIO()
    schema = fastavro.parse_schema(rt.avro_schema())
    fastavro.writer(buf, schema, batch.to_pylist())
    buf.seek(0)
    (back,) = list(fastavro.reader(buf))
    assert [f["name"] for f in rt.avro_schema()["fields"]] == rt.field_names
    assert back == batch.to_pylist()[0]


def test_decimals_are_decimal_18_8_and_times_utc_micros() -> None:
    schema = TRADE.arrow_schema()
    assert schema.field("price").type == pa.decimal128(18, 8)
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    avro = {f["name"]: f["type"] for f in TRADE.avro_schema()["fields"]}
    assert avro["price"] == {"type": "bytes", "logicalType": "decimal", "precision": 18,
                             "scale": 8}  # fmt: skip
    assert avro["timestamp"] == {"type": "long", "logicalType": "timestamp-micros"}


def test_message_id_is_deterministic() -> None:
    assert message_id("binance", "BTCUSDT", 3071245454) == "binance:BTCUSDT:3071245454"


def _sample_row(rt: RecordType) -> dict[str, object]:
    from datetime import UTC, datetime

    from k2.records import Kind

    value = {
        Kind.STRING: "x",
        Kind.INT64: 42,
        Kind.BOOL: True,
        Kind.DECIMAL: Decimal("28165.47000000"),
        Kind.TIMESTAMP: datetime(2023, 4, 5, 0, 0, 0, 4107, tzinfo=UTC),
        Kind.BINARY: b"\x00{raw}",
    }
    return {f.name: value[f.kind] for f in rt.fields}

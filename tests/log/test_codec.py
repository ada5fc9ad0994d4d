"""Both Kafka encodings round-trip every canonical record exactly, framed as documented."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fastavro
import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2.errors import TerminalError
from k2.log.codec import (
    AvroCodec,
    Codec,
    CompactCodec,
    _decimal_bytes,
    codec_for,
    default_subject,
)
from k2.log.registry import MemorySchemaStore
from k2.records import (
    DEAD_LETTER,
    QUOTE,
    RECORD_TYPES,
    TRADE,
    Field,
    Kind,
    RecordType,
)
from k2.sources.binance.parse import FrameParser
from tests.captures import HFT_TRADES, hft_frames

MAX_DECIMAL = Decimal("9999999999.99999999")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def sample_rows(rt: RecordType, n: int = 6) -> list[dict[str, Any]]:
    """``n`` rows of ``rt`` covering edge values: extreme and negative decimals, times
    before 1970, empty and non-ASCII strings, binary with NULs, and nulls where allowed."""
    decimals = [Decimal("28165.47000000"), MAX_DECIMAL, -MAX_DECIMAL, Decimal(0),
                Decimal("-0.00000001"), Decimal("0.00000128")]  # fmt: skip
    times = [datetime(2023, 4, 5, 0, 0, 0, 4107, tzinfo=UTC), EPOCH,
             EPOCH - timedelta(microseconds=1), datetime(2262, 1, 1, tzinfo=UTC),
             datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC), EPOCH]  # fmt: skip
    strings = ["binance:BTCUSDT:3071245454", "", "ünïcødé ✓", '{"a":1}', "x" * 300, "SELL"]
    ints = [3071245454, 0, -1, 2**63 - 1, -(2**63), 42]
    raws = [b"\x00{raw}\xff", b"", b"\x00" * 5, bytes(range(256)), b"{}", b"\n"]
    rows = []
    for i in range(n):
        values = {
            Kind.STRING: strings[i % 6],
            Kind.INT64: ints[i % 6],
            Kind.BOOL: i % 2 == 0,
            Kind.DECIMAL: decimals[i % 6],
            Kind.TIMESTAMP: times[i % 6],
            Kind.BINARY: raws[i % 6],
        }
        rows.append(
            {f.name: None if (not f.required and i % 3 == 1) else values[f.kind] for f in rt.fields}
        )
    return rows


def sample_batch(rt: RecordType, n: int = 6) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(sample_rows(rt, n), schema=rt.arrow_schema())


def real_trades() -> pa.RecordBatch:
    frames, received = hft_frames()
    trades = FrameParser().parse(frames, received).trades
    assert trades.num_rows == HFT_TRADES
    return trades


@pytest.fixture(params=["compact", "avro"])
def codec(request: pytest.FixtureRequest) -> Codec:
    if request.param == "compact":
        return CompactCodec()
    return AvroCodec(MemorySchemaStore())


@pytest.mark.parametrize("rt", list(RECORD_TYPES.values()), ids=lambda r: r.name)
def test_every_record_type_round_trips_exactly(codec: Codec, rt: RecordType) -> None:
    batch = sample_batch(rt, 12)
    values = codec.encode(batch)
    assert len(values) == 12
    assert all(isinstance(v, bytes) for v in values)
    back = codec.decode(values, rt)
    assert back.schema.equals(rt.arrow_schema(), check_metadata=True)
    assert back.equals(batch)
    assert back.to_pylist() == batch.to_pylist()


def test_a_sliced_batch_encodes_only_its_rows(codec: Codec) -> None:
    batch = sample_batch(TRADE, 12).slice(5, 4)
    back = codec.decode(codec.encode(batch), TRADE)
    assert back.to_pylist() == batch.to_pylist()


def test_real_binance_trades_round_trip(codec: Codec) -> None:
    trades = real_trades()
    back = codec.decode(codec.encode(trades), TRADE)
    assert back.equals(trades)


def test_an_empty_batch_gives_no_values_and_back(codec: Codec) -> None:
    assert codec.encode(TRADE.empty_batch()) == []
    assert codec.decode([], TRADE).equals(TRADE.empty_batch())


def test_a_batch_without_k2_metadata_needs_the_record_type(codec: Codec) -> None:
    bare = sample_batch(QUOTE)
    bare = bare.replace_schema_metadata(None)
    with pytest.raises(TerminalError, match=r"k2\.record"):
        codec.encode(bare)
    back = codec.decode(codec.encode(bare, QUOTE), QUOTE)
    assert back.to_pylist() == bare.to_pylist()


def test_a_wrong_column_type_is_refused_naming_the_column(codec: Codec) -> None:
    batch = sample_batch(TRADE)
    i = TRADE.field_names.index("price")
    wrong = batch.set_column(i, pa.field("price", pa.float64()), pa.array([1.0] * 6))
    with pytest.raises(TerminalError, match=r"trade\.price must be decimal128\(18, 8\)"):
        codec.encode(wrong, TRADE)


def test_a_null_in_a_required_column_is_refused(codec: Codec) -> None:
    batch = sample_batch(TRADE)
    i = TRADE.field_names.index("symbol")
    schema = TRADE.arrow_schema()
    loose = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
    broken = pa.RecordBatch.from_arrays(
        [*batch.columns[:i], pa.array(["A", None, "B", "C", "D", "E"]), *batch.columns[i + 1 :]],
        schema=loose,
    )
    with pytest.raises(TerminalError, match=r"trade\.symbol is required but has 1 null"):
        codec.encode(broken)


# --- properties ----------------------------------------------------------------------------

_decimals = st.decimals(
    min_value=-MAX_DECIMAL, max_value=MAX_DECIMAL, places=8, allow_nan=False, allow_infinity=False
)
_times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_text = st.text(max_size=40)
_STRATEGIES: dict[Kind, st.SearchStrategy[Any]] = {
    Kind.STRING: _text,
    Kind.INT64: _int64,
    Kind.BOOL: st.booleans(),
    Kind.DECIMAL: _decimals,
    Kind.TIMESTAMP: _times,
    Kind.BINARY: st.binary(max_size=40),
}


def _row(rt: RecordType) -> st.SearchStrategy[dict[str, Any]]:
    def field(f: Field) -> st.SearchStrategy[Any]:
        base = _STRATEGIES[f.kind]
        return base if f.required else st.none() | base

    return st.fixed_dictionaries({f.name: field(f) for f in rt.fields})


_COMPACT = CompactCodec()
_AVRO = AvroCodec(MemorySchemaStore())


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_row(TRADE), max_size=20))
def test_any_trades_round_trip_in_both_encodings(rows: list[dict[str, Any]]) -> None:
    batch = pa.RecordBatch.from_pylist(rows, schema=TRADE.arrow_schema())
    for codec in (_COMPACT, _AVRO):
        back = codec.decode(codec.encode(batch), TRADE)
        assert back.to_pylist() == rows


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(_row(DEAD_LETTER), min_size=1, max_size=10))
def test_any_dead_letters_round_trip_in_both_encodings(rows: list[dict[str, Any]]) -> None:
    batch = pa.RecordBatch.from_pylist(rows, schema=DEAD_LETTER.arrow_schema())
    for codec in (_COMPACT, _AVRO):
        assert codec.decode(codec.encode(batch), DEAD_LETTER).to_pylist() == rows


# --- Confluent framing ---------------------------------------------------------------------


def test_avro_values_are_confluent_framed_and_readable_by_plain_avro() -> None:
    store = MemorySchemaStore()
    store.register("something-else", QUOTE.avro_schema())  # ids are global: trade gets 2
    codec = AvroCodec(store)
    batch = sample_batch(TRADE)
    values = codec.encode(batch)
    assert codec.schema_id(TRADE) == 2
    for value, row in zip(values, batch.to_pylist(), strict=True):
        assert value[0] == 0  # magic byte
        assert int.from_bytes(value[1:5], "big") == 2  # schema id, 4 bytes big-endian
        # A standard Avro reader with the registered schema (logical types and all)
        # reads the body as the same Decimal / datetime values.
        schema = fastavro.parse_schema(store.schema(2))
        decoded = fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
        assert decoded == row


def test_the_canonical_schema_is_registered_under_its_subject_with_backward_compat() -> None:
    store = MemorySchemaStore()
    codec = AvroCodec(store)
    codec.encode(sample_batch(TRADE))
    assert default_subject(TRADE) == "k2.trade-value"
    assert store.compatibility == {"k2.trade-value": "BACKWARD"}
    assert store.schema(codec.schema_id(TRADE)) == TRADE.avro_schema()


def test_avro_decimals_are_minimal_twos_complement_as_java_writes_them() -> None:
    cases = {0: "00", 1: "01", 127: "7f", 128: "0080", -1: "ff", -128: "80", -129: "ff7f",
             255: "00ff", 10**17: "016345785d8a0000"}  # fmt: skip
    for value, expected in cases.items():
        assert _decimal_bytes(value).hex() == expected, value
        assert int.from_bytes(_decimal_bytes(value), "big", signed=True) == value


def test_a_value_with_another_records_schema_id_is_refused() -> None:
    store = MemorySchemaStore()
    codec = AvroCodec(store)
    quotes = codec.encode(sample_batch(QUOTE))
    quote_id = codec.schema_id(QUOTE)
    with pytest.raises(TerminalError, match=rf"schema id {quote_id}, a k2.v2.Quote record"):
        codec.decode(quotes, TRADE)


def test_an_unknown_schema_id_is_refused() -> None:
    codec = AvroCodec(MemorySchemaStore())
    value = codec.encode(sample_batch(TRADE))[0]
    forged = value[:1] + (999).to_bytes(4, "big") + value[5:]
    with pytest.raises(TerminalError, match="schema id 999 is not registered"):
        codec.decode([forged], TRADE)


def test_an_older_schema_version_is_resolved_to_the_canonical_one() -> None:
    # A v1 trade schema without vendor_data, written by an older producer: Avro's
    # resolution fills the new optional field with its default (null).
    store = MemorySchemaStore()
    old = TRADE.avro_schema()
    old = {**old, "namespace": "k2.v1", "fields": [f for f in old["fields"]
                                                   if f["name"] != "vendor_data"]}  # fmt: skip
    old_id = store.register("k2.trade-value", old)
    rows = sample_rows(TRADE)
    writer = fastavro.parse_schema(old)
    values = []
    for row in rows:
        out = io.BytesIO()
        out.write(b"\x00" + old_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(out, writer, row)
        values.append(out.getvalue())
    back = AvroCodec(store).decode(values, TRADE)
    assert back.to_pylist() == [{**row, "vendor_data": None} for row in rows]


def test_a_corrupt_avro_value_is_refused_with_its_index() -> None:
    codec = AvroCodec(MemorySchemaStore())
    values = codec.encode(sample_batch(TRADE))
    with pytest.raises(TerminalError, match="record #2 cannot be decoded"):
        codec.decode([values[0], values[1], values[2][:12]], TRADE)


# --- the compact encoding ------------------------------------------------------------------


def test_compact_values_are_a_header_and_a_msgpack_array() -> None:
    batch = sample_batch(TRADE, 1)
    (value,) = CompactCodec().encode(batch)
    assert value[:3] == b"K\x02\x01"  # magic 'K', schema v2, record tag 1 (trade)
    fields = msgspec.msgpack.decode(value[3:])
    row = batch.to_pylist()[0]
    assert fields[0] == row["message_id"]
    assert fields[TRADE.field_names.index("price")] == 2816547000000  # unscaled, scale 8
    ts = row["timestamp"]
    assert fields[TRADE.field_names.index("timestamp")] == (ts - EPOCH) // timedelta(microseconds=1)


def test_compact_refuses_avro_framed_values_with_a_hint() -> None:
    avro = AvroCodec(MemorySchemaStore()).encode(sample_batch(TRADE))
    with pytest.raises(TerminalError, match=r"Confluent Avro framing.*K2_SCHEMA_REGISTRY_URL"):
        CompactCodec().decode(avro, TRADE)


def test_avro_refuses_compact_values_with_a_hint() -> None:
    compact = CompactCodec().encode(sample_batch(TRADE))
    with pytest.raises(TerminalError, match="compact encoding"):
        AvroCodec(MemorySchemaStore()).decode(compact, TRADE)


def test_compact_refuses_another_record_type_or_version() -> None:
    codec = CompactCodec()
    quotes = codec.encode(sample_batch(QUOTE))
    with pytest.raises(TerminalError, match=r"record #0 .* holds a quote record"):
        codec.decode(quotes, TRADE)
    v3 = [b"K\x03" + q[2:] for q in quotes]
    with pytest.raises(TerminalError, match="schema v3, this K2 reads v2"):
        codec.decode(v3, QUOTE)


def test_compact_refuses_a_field_of_the_wrong_type() -> None:
    good = CompactCodec().encode(sample_batch(TRADE, 1))[0]
    fields = msgspec.msgpack.decode(good[3:])
    fields[TRADE.field_names.index("price")] = "28165.47"
    bad = good[:3] + msgspec.msgpack.encode(fields)
    with pytest.raises(TerminalError, match=r"record #0 cannot be decoded: Expected `int`"):
        CompactCodec().decode([bad], TRADE)


def test_compact_refuses_a_decimal_beyond_18_digits() -> None:
    good = CompactCodec().encode(sample_batch(TRADE, 1))[0]
    fields = msgspec.msgpack.decode(good[3:])
    fields[TRADE.field_names.index("price")] = 10**18
    bad = good[:3] + msgspec.msgpack.encode(fields)
    with pytest.raises(TerminalError, match=r"trade\.price: a value does not fit decimal"):
        CompactCodec().decode([bad], TRADE)


def test_codec_for_picks_avro_only_with_a_registry_url() -> None:
    assert isinstance(codec_for(None), CompactCodec)
    assert isinstance(codec_for(""), CompactCodec)
    avro = codec_for("http://127.0.0.1:1")
    assert isinstance(avro, AvroCodec)

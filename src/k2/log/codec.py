"""How canonical records become Kafka message values, one message per record, and back.

Two encodings, both exact for every type in :mod:`k2.records` (decimals, UTC µs
timestamps, binary payloads, nulls):

- :class:`AvroCodec` — Confluent's wire format: magic byte ``0``, the 4-byte big-endian
  schema id from a Schema Registry, then the record in Avro binary against the
  canonical schema (``RecordType.avro_schema()``: decimals as ``bytes`` with logical
  type ``decimal(18, 8)``, timestamps as ``long`` ``timestamp-micros``). Any Confluent
  deserializer reads it. Used when ``K2_SCHEMA_REGISTRY_URL`` is set.
- :class:`CompactCodec` — K2's own, used without a registry: three header bytes
  (magic ``0x4B`` "K", the record schema version, a record-type tag) then a MessagePack
  array of the fields in canonical order (decimals as their unscaled int64, timestamps
  as int µs, binary as msgpack ``bin``, null as ``nil``). About 5× cheaper to encode
  and to decode than Avro (see BENCHMARKS.md); readable by any MessagePack library.

Both work column-wise from Arrow: values are pulled out of whole columns (decimals as
their unscaled int64, by reading the decimal128 values at scale 0 and casting in Arrow —
never through ``Decimal``) and put back into whole columns the same way. A record that
cannot be decoded raises :class:`~k2.errors.TerminalError` naming the record and what is
wrong with it.
"""

from __future__ import annotations

import io
import typing
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import fastavro
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import TerminalError
from k2.log.registry import SchemaRegistryClient, SchemaStore
from k2.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    RECORD_TYPES,
    SCHEMA_VERSION,
    Kind,
    RecordType,
)

_DECIMAL = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
# The same 16-byte layout read as integers: unscaled value == integer value.
_UNSCALED = pa.decimal128(DECIMAL_PRECISION, 0)
_WIDE_UNSCALED = pa.decimal128(19, 0)  # holds every int64
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_DECIMAL_LIMIT = 10**DECIMAL_PRECISION - 1


class Codec(Protocol):
    """Turns a batch of canonical records into one message value per record, and back."""

    @property
    def name(self) -> str:
        """Short name for logs and benchmarks (``avro``, ``compact``)."""
        ...

    def encode(self, batch: pa.RecordBatch, record_type: RecordType | None = None) -> list[bytes]:
        """One value per row of ``batch``, in row order. ``record_type`` defaults to the
        one named in the batch schema's ``k2.record`` metadata. Raises
        :class:`~k2.errors.TerminalError` if the batch does not have that schema or a
        required column holds a null."""
        ...

    def decode(self, values: Sequence[bytes], record_type: RecordType) -> pa.RecordBatch:
        """A batch with ``record_type.arrow_schema()``, one row per value, in order.
        Raises :class:`~k2.errors.TerminalError` if a value is not a ``record_type``
        record in this encoding."""
        ...


def record_type_of(batch: pa.RecordBatch) -> RecordType:
    """The record type named in ``batch``'s schema metadata (``k2.record``)."""
    name = (batch.schema.metadata or {}).get(b"k2.record")
    record_type = RECORD_TYPES.get(name.decode()) if name else None
    if record_type is None:
        raise TerminalError(
            "the batch's schema names no K2 record type (metadata k2.record); build it "
            "with RecordType.arrow_schema() or pass record_type"
        )
    return record_type


def conform(batch: pa.RecordBatch, record_type: RecordType) -> pa.RecordBatch:
    """``batch`` with exactly ``record_type``'s Arrow schema (metadata included).

    Raises :class:`~k2.errors.TerminalError` naming the first column whose name or type
    differs, or a required column that holds nulls.
    """
    expected = record_type.arrow_schema()
    if batch.schema.names != expected.names:
        raise TerminalError(
            f"batch columns {batch.schema.names} are not the {record_type.name} columns "
            f"{expected.names}"
        )
    for field, have in zip(expected, batch.schema, strict=True):
        if have.type != field.type:
            raise TerminalError(
                f"{record_type.name}.{field.name} must be {field.type}, the batch has {have.type}"
            )
        if not field.nullable:
            nulls = batch.column(field.name).null_count
            if nulls:
                raise TerminalError(
                    f"{record_type.name}.{field.name} is required but has {nulls} null(s)"
                )
    if batch.schema.equals(expected, check_metadata=True):
        return batch
    return pa.RecordBatch.from_arrays(batch.columns, schema=expected)


# --- column-wise conversion between Arrow and plain Python values -----------------------


def _ints(array: pa.Array) -> list[Any]:
    """An int64 array as Python ints (``None`` for nulls), read straight off the buffer."""
    if len(array) == 0:
        return []
    if array.null_count:
        return typing.cast(list[Any], array.to_pylist())
    data = memoryview(array.buffers()[1]).cast("q")
    return data[array.offset : array.offset + len(array)].tolist()


def _unscaled(array: pa.Array) -> pa.Array:
    """decimal128(18, 8) → int64 unscaled values, by reading the same bytes as scale 0."""
    as_integers = pa.Array.from_buffers(
        _UNSCALED, len(array), array.buffers(), null_count=array.null_count, offset=array.offset
    )
    return as_integers.cast(pa.int64())


def _to_columns(batch: pa.RecordBatch, record_type: RecordType) -> list[list[Any]]:
    """Each column as a list of wire values: str, int, bool, bytes, unscaled decimal int,
    timestamp int µs, or ``None``."""
    columns: list[list[Any]] = []
    for i, field in enumerate(record_type.fields):
        column = batch.column(i)
        if field.kind is Kind.DECIMAL:
            columns.append(_ints(_unscaled(column)))
        elif field.kind is Kind.TIMESTAMP:
            columns.append(_ints(column.cast(pa.int64())))
        elif field.kind is Kind.INT64:
            columns.append(_ints(column))
        else:
            columns.append(column.to_pylist())
    return columns


def _array(kind: Kind, values: Sequence[Any], where: str) -> pa.Array:
    try:
        if kind is Kind.DECIMAL:
            integers = pa.array(values, pa.int64())
            low, high = pc.min_max(integers).values()
            if (low.is_valid and low.as_py() < -_DECIMAL_LIMIT) or (
                high.is_valid and high.as_py() > _DECIMAL_LIMIT
            ):
                raise TerminalError(f"{where}: a value does not fit decimal(18, 8)")
            wide = integers.cast(_WIDE_UNSCALED)
            return pa.Array.from_buffers(
                _DECIMAL, len(wide), wide.buffers(), null_count=wide.null_count, offset=wide.offset
            )
        if kind is Kind.TIMESTAMP:
            return pa.array(values, pa.int64()).cast(_TIMESTAMP)
        return pa.array(values, _ARROW_TYPES[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
        raise TerminalError(f"{where}: {exc}") from None


_ARROW_TYPES = {
    Kind.STRING: pa.string(),
    Kind.INT64: pa.int64(),
    Kind.BOOL: pa.bool_(),
    Kind.BINARY: pa.binary(),
}


def _from_columns(columns: Sequence[Sequence[Any]], record_type: RecordType) -> pa.RecordBatch:
    arrays = [
        _array(field.kind, values, f"{record_type.name}.{field.name}")
        for field, values in zip(record_type.fields, columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=record_type.arrow_schema())


# --- K2's compact encoding -----------------------------------------------------------------

#: First byte of every compact value (Confluent's Avro framing starts with 0).
COMPACT_MAGIC = 0x4B
#: Stable one-byte tags of the record types; never renumber.
RECORD_TAGS: dict[str, int] = {
    "trade": 1,
    "quote": 2,
    "reference_data": 3,
    "gap": 4,
    "dead_letter": 5,
}
_TAG_NAMES = {tag: name for name, tag in RECORD_TAGS.items()}

_PY_TYPES: dict[Kind, type] = {
    Kind.STRING: str,
    Kind.INT64: int,
    Kind.BOOL: bool,
    Kind.DECIMAL: int,
    Kind.TIMESTAMP: int,
    Kind.BINARY: bytes,
}


class CompactCodec:
    """K2's compact encoding: ``0x4B``, schema version, record tag, msgpack array."""

    name = "compact"

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}

    @staticmethod
    def header(record_type: RecordType) -> bytes:
        """The three bytes every value of ``record_type`` starts with."""
        return bytes((COMPACT_MAGIC, SCHEMA_VERSION, RECORD_TAGS[record_type.name]))

    def encode(self, batch: pa.RecordBatch, record_type: RecordType | None = None) -> list[bytes]:
        record_type = record_type or record_type_of(batch)
        batch = conform(batch, record_type)
        header = self.header(record_type)
        encode = self._encoder.encode
        return [header + encode(row) for row in zip(*_to_columns(batch, record_type), strict=True)]

    def decode(self, values: Sequence[bytes], record_type: RecordType) -> pa.RecordBatch:
        if not values:
            return record_type.empty_batch()
        header = self.header(record_type)
        decode = self._decoder(record_type).decode
        rows: list[tuple[Any, ...]] = []
        try:
            for value in values:
                if value[:3] != header:
                    raise TerminalError(_compact_mismatch(value, record_type, len(rows)))
                rows.append(decode(memoryview(value)[3:]))
        except msgspec.MsgspecError as exc:
            raise TerminalError(
                f"compact {record_type.name} record #{len(rows)} cannot be decoded: {exc}"
            ) from None
        return _from_columns(list(zip(*rows, strict=True)), record_type)

    def _decoder(self, record_type: RecordType) -> msgspec.msgpack.Decoder[Any]:
        decoder = self._decoders.get(record_type.name)
        if decoder is None:
            types: list[Any] = [
                _PY_TYPES[f.kind] if f.required else typing.Optional[_PY_TYPES[f.kind]]  # noqa: UP045
                for f in record_type.fields
            ]
            row_type: Any = tuple.__class_getitem__(tuple(types))  # tuple[str, int, ...]
            decoder = msgspec.msgpack.Decoder(row_type)
            self._decoders[record_type.name] = decoder
        return decoder


def _compact_mismatch(value: bytes, record_type: RecordType, index: int) -> str:
    where = f"record #{index} is not a compact {record_type.name} record"
    if len(value) < 3:
        return f"{where}: {len(value)} byte(s) long"
    if value[0] == 0:
        schema_id = int.from_bytes(value[1:5], "big")
        return (
            f"{where}: it is in Confluent Avro framing (schema id {schema_id}); this topic "
            "was written with the Avro codec, so read it with K2_SCHEMA_REGISTRY_URL set"
        )
    if value[0] != COMPACT_MAGIC:
        return f"{where}: first byte 0x{value[0]:02x}, expected 0x{COMPACT_MAGIC:02x}"
    if value[1] != SCHEMA_VERSION:
        return f"{where}: written with record schema v{value[1]}, this K2 reads v{SCHEMA_VERSION}"
    other = _TAG_NAMES.get(value[2], f"unknown tag {value[2]}")
    return f"{where}: it holds a {other} record"


# --- Avro in Confluent's wire format -------------------------------------------------------

#: Confluent's magic byte: the first byte of every framed Avro value.
CONFLUENT_MAGIC = 0


def default_subject(record_type: RecordType) -> str:
    """The registry subject of a record type: ``k2.<record>-value`` (e.g. ``k2.trade-value``).

    One subject per record type, stable across schema versions, so the registry's
    compatibility rule is checked whenever K2's canonical schema changes.
    """
    return f"k2.{record_type.name}-value"


def _plain(schema: Any) -> Any:
    """``schema`` without logical types: decimals stay ``bytes`` and timestamps ``long``.

    The binary encoding is the same; K2 converts those columns itself, in bulk, rather
    than have fastavro build a ``Decimal`` or ``datetime`` per value.
    """
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    if isinstance(schema, dict):
        if "logicalType" in schema and isinstance(schema.get("type"), str):
            return schema["type"]
        return {k: _plain(v) for k, v in schema.items()}
    return schema


def _from_twos(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _decimal_bytes(value: int) -> bytes:
    """Avro decimal bytes: minimal big-endian two's complement (as Java's BigInteger)."""
    magnitude = value if value >= 0 else ~value
    return value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


class AvroCodec:
    """Avro in Confluent's wire format, schema ids from ``store``.

    On first use of a record type its canonical schema is registered under
    ``subject(record_type)`` after setting that subject's compatibility to
    ``compatibility`` (``None`` leaves the registry's setting alone). Decoding accepts
    any schema id whose schema is a record of the same name (older or newer versions
    are resolved to the canonical schema by Avro's rules); an id of another record
    raises :class:`~k2.errors.TerminalError`. Registry errors propagate as raised by
    ``store`` (transient or terminal).
    """

    name = "avro"

    def __init__(
        self,
        store: SchemaStore,
        *,
        subject: Callable[[RecordType], str] = default_subject,
        compatibility: str | None = "BACKWARD",
    ) -> None:
        self.store = store
        self._subject = subject
        self._compatibility = compatibility
        self._ids: dict[str, int] = {}
        self._writers: dict[str, Any] = {}
        # (schema id, record type name) → (parsed writer schema, parsed reader or None)
        self._readers: dict[tuple[int, str], tuple[Any, Any]] = {}

    def schema_id(self, record_type: RecordType) -> int:
        """The registry id of ``record_type``'s canonical schema (registered on first use)."""
        schema_id = self._ids.get(record_type.name)
        if schema_id is None:
            subject = self._subject(record_type)
            if self._compatibility is not None:
                self.store.set_compatibility(subject, self._compatibility)
            schema_id = self.store.register(subject, record_type.avro_schema())
            self._ids[record_type.name] = schema_id
        return schema_id

    def header(self, record_type: RecordType) -> bytes:
        """The five bytes every value of ``record_type`` starts with."""
        return bytes((CONFLUENT_MAGIC,)) + self.schema_id(record_type).to_bytes(4, "big")

    def encode(self, batch: pa.RecordBatch, record_type: RecordType | None = None) -> list[bytes]:
        record_type = record_type or record_type_of(batch)
        batch = conform(batch, record_type)
        header = self.header(record_type)
        writer = self._writer(record_type)
        columns = _to_columns(batch, record_type)
        for i, field in enumerate(record_type.fields):
            if field.kind is Kind.DECIMAL:
                columns[i] = [None if v is None else _decimal_bytes(v) for v in columns[i]]
        names = record_type.field_names
        write = fastavro.schemaless_writer
        out: list[bytes] = []
        try:
            for row in zip(*columns, strict=True):
                buffer = io.BytesIO()
                buffer.write(header)
                write(buffer, writer, dict(zip(names, row, strict=True)))
                out.append(buffer.getvalue())
        except (ValueError, TypeError) as exc:
            raise TerminalError(
                f"avro {record_type.name} record #{len(out)} cannot be encoded: {exc}"
            ) from None
        return out

    def decode(self, values: Sequence[bytes], record_type: RecordType) -> pa.RecordBatch:
        if not values:
            return record_type.empty_batch()
        read = fastavro.schemaless_reader
        records: list[dict[str, Any]] = []
        last_header = b""
        writer: Any = None
        reader: Any = None
        for value in values:
            header = value[:5]
            if header != last_header:
                writer, reader = self._reader(header, record_type, len(records))
                last_header = header
            stream = io.BytesIO(value)
            stream.seek(5)
            try:
                records.append(typing.cast(dict[str, Any], read(stream, writer, reader)))
            except Exception as exc:  # fastavro raises many types on malformed input
                raise TerminalError(
                    f"avro {record_type.name} record #{len(records)} cannot be decoded: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        columns: list[list[Any]] = []
        for field in record_type.fields:
            column = [r.get(field.name) for r in records]
            if field.kind is Kind.DECIMAL:
                column = [
                    None if b is None else int.from_bytes(b, "big", signed=True) for b in column
                ]
            columns.append(column)
        return _from_columns(columns, record_type)

    def _writer(self, record_type: RecordType) -> Any:
        writer = self._writers.get(record_type.name)
        if writer is None:
            writer = fastavro.parse_schema(_plain(record_type.avro_schema()))
            self._writers[record_type.name] = writer
        return writer

    def _reader(self, header: bytes, record_type: RecordType, index: int) -> tuple[Any, Any]:
        if len(header) < 5 or header[0] != CONFLUENT_MAGIC:
            first = f"0x{header[0]:02x}" if header else "nothing"
            hint = " (K2's compact encoding)" if header[:1] == bytes((COMPACT_MAGIC,)) else ""
            raise TerminalError(
                f"record #{index} is not in Confluent Avro framing: it starts with "
                f"{first}{hint}, expected magic byte 0 and a schema id"
            )
        schema_id = int.from_bytes(header[1:5], "big")
        key = (schema_id, record_type.name)
        cached = self._readers.get(key)
        if cached is not None:
            return cached
        canonical = record_type.avro_schema()
        written = self.store.schema(schema_id)
        if _full_name(written) != _full_name(canonical):
            if _full_name(written).rsplit(".", 1)[-1] != canonical["name"]:
                raise TerminalError(
                    f"record #{index} has schema id {schema_id}, a {_full_name(written)} "
                    f"record, not {_full_name(canonical)} ({record_type.name})"
                )
            # Another schema version of the same record (k2.v1.Trade → k2.v2.Trade): the
            # namespace carries K2's version, Avro resolution matches on the name.
            written = {**written, "name": canonical["name"], "namespace": canonical["namespace"]}
        writer = fastavro.parse_schema(_plain(written))
        if _plain(written) == _plain(canonical):
            pair: tuple[Any, Any] = (writer, None)
        else:
            pair = (writer, fastavro.parse_schema(_plain(canonical)))
        self._readers[key] = pair
        return pair


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", "?"))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def codec_for(schema_registry_url: str | None) -> Codec:
    """The codec K2 uses: Avro with the registry at ``schema_registry_url``
    (``K2_SCHEMA_REGISTRY_URL``) if set, otherwise the compact encoding."""
    if schema_registry_url:
        return AvroCodec(SchemaRegistryClient(schema_registry_url))
    return CompactCodec()

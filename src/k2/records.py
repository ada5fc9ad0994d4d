"""K2's canonical records, defined once.

Each record type is a tuple of :class:`Field` s. The Arrow schema (K2's in-memory
currency), the Iceberg schema (the lake) and the Avro schema (the log's wire format)
are all *derived* from that one definition, so they cannot drift apart.

Conventions that hold for every record:

- prices and quantities are exact decimals, ``decimal(18, 8)``: ``Decimal`` in Python,
  strings on the wire, never floats;
- timestamps are UTC, microsecond precision (``timestamp[us, tz=UTC]`` in Arrow,
  ``timestamptz`` in Iceberg, ``timestamp-micros`` in Avro);
- ``message_id`` is ``exchange:SYMBOL:native_id``: deterministic, so a replayed or
  duplicated message always carries the same id.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

#: Precision and scale of every price and quantity.
DECIMAL_PRECISION = 18
DECIMAL_SCALE = 8

#: Schema version carried in Avro/Iceberg metadata.
SCHEMA_VERSION = 2


class Kind(enum.Enum):
    """The logical type of a field; each maps to one Arrow, Iceberg and Avro type."""

    STRING = "string"
    INT64 = "int64"
    BOOL = "bool"
    DECIMAL = "decimal"
    TIMESTAMP = "timestamp"
    BINARY = "binary"


@dataclass(frozen=True)
class Field:
    """One column of a canonical record."""

    name: str
    kind: Kind
    doc: str
    required: bool = True


@dataclass(frozen=True)
class RecordType:
    """A canonical record: a name and its ordered fields."""

    name: str
    fields: tuple[Field, ...]
    doc: str

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema; field order is the canonical order."""
        return _ARROW_SCHEMAS[self.name]

    def iceberg_schema(self) -> Any:
        """The Iceberg schema (``pyiceberg.schema.Schema``), field ids 1..n in order."""
        from pyiceberg.schema import Schema
        from pyiceberg.types import NestedField

        return Schema(
            *(
                NestedField(
                    field_id=i,
                    name=f.name,
                    field_type=_iceberg_type(f.kind),
                    required=f.required,
                    doc=f.doc,
                )
                for i, f in enumerate(self.fields, start=1)
            )
        )

    def avro_schema(self) -> dict[str, Any]:
        """The Avro schema as a JSON-able dict (record ``k2.v2.<Name>``)."""
        fields: list[dict[str, Any]] = []
        for f in self.fields:
            avro_type = _avro_type(f.kind)
            if f.required:
                fields.append({"name": f.name, "type": avro_type, "doc": f.doc})
            else:
                fields.append(
                    {"name": f.name, "type": ["null", avro_type], "default": None, "doc": f.doc}
                )
        return {
            "type": "record",
            "name": self.name.title().replace("_", ""),
            "namespace": f"k2.v{SCHEMA_VERSION}",
            "doc": self.doc,
            "fields": fields,
        }

    def empty_batch(self) -> pa.RecordBatch:
        """A batch with this schema and no rows."""
        return pa.RecordBatch.from_pylist([], schema=self.arrow_schema())


def _arrow_type(kind: Kind) -> pa.DataType:
    return {
        Kind.STRING: pa.string(),
        Kind.INT64: pa.int64(),
        Kind.BOOL: pa.bool_(),
        Kind.DECIMAL: pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
        Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
        Kind.BINARY: pa.binary(),
    }[kind]


def _iceberg_type(kind: Kind) -> Any:
    from pyiceberg import types as t

    return {
        Kind.STRING: t.StringType(),
        Kind.INT64: t.LongType(),
        Kind.BOOL: t.BooleanType(),
        Kind.DECIMAL: t.DecimalType(DECIMAL_PRECISION, DECIMAL_SCALE),
        Kind.TIMESTAMP: t.TimestamptzType(),
        Kind.BINARY: t.BinaryType(),
    }[kind]


def _avro_type(kind: Kind) -> Any:
    return {
        Kind.STRING: "string",
        Kind.INT64: "long",
        Kind.BOOL: "boolean",
        Kind.DECIMAL: {
            "type": "bytes",
            "logicalType": "decimal",
            "precision": DECIMAL_PRECISION,
            "scale": DECIMAL_SCALE,
        },
        Kind.TIMESTAMP: {"type": "long", "logicalType": "timestamp-micros"},
        Kind.BINARY: "bytes",
    }[kind]


_S, _I, _B, _D, _T = Kind.STRING, Kind.INT64, Kind.BOOL, Kind.DECIMAL, Kind.TIMESTAMP
_X = Kind.BINARY

TRADE = RecordType(
    "trade",
    (
        Field("message_id", _S, "exchange:SYMBOL:trade_id; deterministic"),
        Field("trade_id", _I, "the exchange's trade id (contiguous per symbol on Binance)"),
        Field("exchange", _S, "exchange name, lower case (binance)"),
        Field("symbol", _S, "exchange symbol, upper case (BTCUSDT)"),
        Field("asset_class", _S, "asset class (crypto)"),
        Field("timestamp", _T, "trade time, UTC µs"),
        Field("event_time", _T, "time the exchange emitted the event, UTC µs"),
        Field("price", _D, "trade price in the quote currency"),
        Field("quantity", _D, "traded quantity in the base asset"),
        Field("quote_quantity", _D, "price × quantity, rounded half-even to 8 places"),
        Field("currency", _S, "quote currency (USDT)"),
        Field("side", _S, "side of the aggressor: BUY or SELL"),
        Field("is_buyer_maker", _B, "true when the buyer was the resting (maker) order"),
        Field("source_sequence", _I, "the exchange's ordering sequence (Binance: trade id)"),
        Field("ingestion_timestamp", _T, "time K2 received the message, UTC µs"),
        Field("vendor_data", _S, "JSON text of exchange fields with no canonical home", False),
    ),
    "One executed trade.",
)

QUOTE = RecordType(
    "quote",
    (
        Field("message_id", _S, "exchange:SYMBOL:update_id; deterministic"),
        Field("exchange", _S, "exchange name, lower case"),
        Field("symbol", _S, "exchange symbol, upper case"),
        Field("asset_class", _S, "asset class (crypto)"),
        Field(
            "timestamp",
            _T,
            "exchange event time where the feed carries one, else receive time; UTC µs",
        ),
        Field("update_id", _I, "the exchange's order-book update id"),
        Field("bid_price", _D, "best bid price"),
        Field("bid_quantity", _D, "quantity at the best bid"),
        Field("ask_price", _D, "best ask price"),
        Field("ask_quantity", _D, "quantity at the best ask"),
        Field("ingestion_timestamp", _T, "time K2 received the message, UTC µs"),
        Field("vendor_data", _S, "JSON text of exchange fields with no canonical home", False),
    ),
    "Best bid and ask (Binance bookTicker).",
)

REFERENCE = RecordType(
    "reference_data",
    (
        Field("symbol", _S, "exchange symbol, upper case"),
        Field("exchange", _S, "exchange name, lower case"),
        Field("base_asset", _S, "base asset (BTC)"),
        Field("quote_asset", _S, "quote asset (USDT)"),
        Field("status", _S, "trading status (TRADING, BREAK, ...)"),
        Field("tick_size", _D, "price increment"),
        Field("step_size", _D, "quantity increment"),
        Field("min_notional", _D, "smallest price × quantity accepted"),
        Field("valid_from", _T, "time this reference row was fetched, UTC µs"),
    ),
    "Symbol reference data (Binance exchangeInfo).",
)

GAP = RecordType(
    "gap",
    (
        Field("exchange", _S, "exchange name"),
        Field("symbol", _S, "exchange symbol"),
        Field("first_missing_id", _I, "first missing trade id"),
        Field("last_missing_id", _I, "last missing trade id (inclusive)"),
        Field("detected_at", _T, "when K2 noticed the gap, UTC µs"),
        Field("status", _S, "detected, repaired, or unrepairable"),
        Field("repaired_count", _I, "trades recovered from the exchange's REST history"),
        Field("resolved_at", _T, "when the repair finished or was abandoned", False),
        Field("reason", _S, "why it could not be repaired (unrepairable only)", False),
    ),
    "A run of missing exchange trade ids and what became of it.",
)

DEAD_LETTER = RecordType(
    "dead_letter",
    (
        Field("data_type", _S, "what the input should have been: trade, quote, ..."),
        Field("reason", _S, "stable reject reason (k2.quality.rejects.RejectReason)"),
        Field("detail", _S, "human explanation naming the field and value at fault"),
        Field("raw", _X, "the exact payload received"),
        Field("received_at", _T, "when K2 received the payload, UTC µs"),
        Field("source", _S, "where it came from (binance.ws, binance.rest, sink, ...)"),
        Field("rejected_at", _T, "when K2 rejected it, UTC µs"),
    ),
    "Input K2 could not accept, kept with the reason so it can be fixed and replayed.",
)

RECORD_TYPES: dict[str, RecordType] = {
    r.name: r for r in (TRADE, QUOTE, REFERENCE, GAP, DEAD_LETTER)
}

_ARROW_SCHEMAS: dict[str, pa.Schema] = {
    r.name: pa.schema(
        [
            pa.field(
                f.name,
                _arrow_type(f.kind),
                nullable=not f.required,
                metadata={"doc": f.doc},
            )
            for f in r.fields
        ],
        metadata={"k2.record": r.name, "k2.schema_version": str(SCHEMA_VERSION)},
    )
    for r in RECORD_TYPES.values()
}


def message_id(exchange: str, symbol: str, native_id: int) -> str:
    """The deterministic id of a message: ``exchange:SYMBOL:native_id``."""
    return f"{exchange}:{symbol}:{native_id}"


def rows(batch: pa.RecordBatch | pa.Table) -> Iterator[dict[str, Any]]:
    """Rows as dicts of Python values: ``Decimal`` prices, UTC ``datetime`` timestamps."""
    yield from batch.to_pylist()

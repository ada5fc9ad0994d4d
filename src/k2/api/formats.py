"""Result formats: JSON, CSV, Parquet and Arrow IPC, and choosing one per request.

JSON is ``{"data": [row objects], "meta": {...}}`` with exact decimals as strings
(``"28165.47000000"``, the column's scale) and UTC timestamps as ISO-8601 with the
column's precision and ``Z`` (``"2023-04-05T00:00:00.004107Z"``). It is built column
by column with Arrow kernels and encoded by msgspec: no per-value Python formatting,
which keeps the hot path (``/v1/trades/recent``) cheap.

CSV carries the same text as JSON (a header row, then one line per row; nested values
as JSON text). Parquet and Arrow IPC (stream format) keep the native types
(``decimal128(18,8)``, ``timestamp[us, UTC]``) and carry the meta object as JSON under
the schema metadata key ``k2.meta``. Shared by the API and ``k2 query``.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal, get_args

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from k2.api.problems import ApiProblem

Format = Literal["json", "csv", "parquet", "arrow"]
FORMATS: tuple[Format, ...] = get_args(Format)

MEDIA_TYPES: dict[Format, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}

#: Media types (lower case, no parameters) a client may ask for, and what they mean.
_ACCEPTED: dict[str, Format] = {
    "application/json": "json",
    "text/json": "json",
    "application/*": "json",
    "*/*": "json",
    "text/csv": "csv",
    "text/*": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
}

#: Schema metadata key under which Parquet and Arrow results carry their meta.
META_KEY = b"k2.meta"

_ENCODER = msgspec.json.Encoder(enc_hook=str)


def negotiate(fmt: str | None, accept: str | None) -> Format:
    """The format to answer in: ``fmt`` (``format=``) if given, else the best of ``accept``.

    ``Accept`` entries are weighed by ``q`` (``q=0`` refuses); a missing or empty header
    means JSON. Raises :class:`ApiProblem` 406 when nothing acceptable is offered.
    """
    if fmt:
        if fmt not in FORMATS:
            raise ApiProblem(
                400, "unsupported-format", f"format {fmt!r} is not one of {', '.join(FORMATS)}"
            )
        return fmt
    if not accept or not accept.strip():
        return "json"
    best: tuple[float, Format] | None = None
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        chosen = _ACCEPTED.get(media.lower())
        if chosen is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and (best is None or q > best[0]):
            best = (q, chosen)
    if best is None:
        offered = ", ".join(dict.fromkeys(v.split(";")[0] for v in MEDIA_TYPES.values()))
        raise ApiProblem(
            406,
            "not-acceptable",
            f"cannot answer in {accept[:200]!r}; offered: {offered} "
            "(or use format=json|csv|parquet|arrow)",
        )
    return best[1]


# --- JSON -----------------------------------------------------------------------------


#: Appending at an index past any string's end: ``binary_replace_slice`` then appends.
_END = 1 << 30


def iso_strings(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Timestamps as ISO-8601 text: UTC with ``Z`` when the type has a time zone.

    The fraction has the unit's digits (6 for µs); nulls stay null.
    """
    ty = col.type
    # A zone-aware timestamp is stored as UTC: read as naive it is the UTC wall time
    # (casting with the zone would consult the tz database for every value).
    text = pc.cast(col.cast(pa.timestamp(ty.unit)), pa.string())
    text = pc.replace_substring(text, pattern=" ", replacement="T", max_replacements=1)
    if ty.tz is not None:
        text = pc.binary_replace_slice(text, start=_END, stop=_END, replacement="Z")
    return text


def decimal_strings(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Decimals as plain text at the column's scale (``0.00000001``, never ``1E-8``).

    Arrow's cast writes values under 10^-6 in scientific notation (Java's rule); those
    few are rewritten through :class:`~decimal.Decimal`, the rest stay vectorised.
    """
    text = pc.cast(col, pa.string())
    if not pc.any(pc.match_substring(text, "E")).as_py():
        return text
    fixed = [v if v is None or "E" not in v else format(Decimal(v), "f") for v in text.to_pylist()]
    return pa.array(fixed, pa.string())


def _text_kind(ty: pa.DataType) -> str | None:
    if pa.types.is_timestamp(ty):
        return "timestamp"
    if pa.types.is_decimal(ty):
        return "decimal"
    if pa.types.is_date(ty):
        return "date"
    return None


def _as_text(kind: str, col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    if kind == "timestamp":
        return iso_strings(col)
    if kind == "decimal":
        return decimal_strings(col)
    return pc.cast(col, pa.string())


def json_columns(table: pa.Table) -> list[list[Any]]:
    """Each column of ``table`` as JSON-ready Python values, in column order.

    Decimals and dates become text, timestamps ISO-8601 text (:func:`iso_strings`).
    Columns of one such type are converted together (one kernel call per step for all
    of them: a trade's three timestamps and three decimals cost what one would), which
    matters for the small pages of the hot path. Everything else is left to msgspec:
    ints, floats (NaN → null), bools, strings, nested values, bytes (base64), UUIDs.
    """
    columns: list[pa.ChunkedArray] = [
        pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c
        for c in table.columns
    ]
    out: list[list[Any] | None] = [None] * len(columns)
    groups: dict[tuple[str, pa.DataType], list[int]] = {}
    for i, col in enumerate(columns):
        kind = _text_kind(col.type)
        if kind is None:
            out[i] = col.to_pylist()
        else:
            groups.setdefault((kind, col.type), []).append(i)
    n = table.num_rows
    for (kind, ty), members in groups.items():
        joined = pa.chunked_array([ch for i in members for ch in columns[i].chunks], ty)
        values = _as_text(kind, joined).to_pylist()
        for j, i in enumerate(members):
            out[i] = values[j * n : (j + 1) * n]
    return [v if v is not None else [] for v in out]


def json_values(col: pa.ChunkedArray) -> list[Any]:
    """One column as JSON-ready Python values (see :func:`json_columns`)."""
    return json_columns(pa.table([col], names=["c"]))[0]


@functools.lru_cache(maxsize=128)
def _row_type(names: tuple[str, ...]) -> type[msgspec.Struct] | None:
    """A msgspec struct whose JSON form is an object with ``names`` (or ``None``).

    Building structs is ~5x cheaper than dicts; names that cannot be struct fields
    (duplicates, quotes, control characters) fall back to dicts.
    """
    fields = [f"f{i}" for i in range(len(names))]
    try:
        return msgspec.defstruct("Row", fields, rename=dict(zip(fields, names, strict=True)))
    except (TypeError, ValueError):
        return None


def json_rows(table: pa.Table) -> list[Any]:
    """``table``'s rows as objects msgspec encodes to JSON (see the module docstring)."""
    names = tuple(table.column_names)
    columns = json_columns(table)
    row_type = _row_type(names)
    if row_type is not None:
        return [row_type(*values) for values in zip(*columns, strict=True)]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def encode_json(rows: list[Any] | pa.Table, meta: Mapping[str, Any]) -> bytes:
    """``{"data": rows, "meta": meta}`` as JSON bytes."""
    data = json_rows(rows) if isinstance(rows, pa.Table) else rows
    return _ENCODER.encode({"data": data, "meta": meta})


def encode_value(value: Any) -> bytes:
    """Any JSON-able value as JSON bytes (msgspec; unknown objects as ``str``)."""
    return _ENCODER.encode(value)


# --- CSV ------------------------------------------------------------------------------


def _csv_native(ty: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(ty)
        or pa.types.is_floating(ty)
        or pa.types.is_boolean(ty)
        or pa.types.is_string(ty)
        or pa.types.is_large_string(ty)
        or pa.types.is_decimal(ty)
        or pa.types.is_date(ty)
        or pa.types.is_null(ty)
    )


def _csv_column(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    ty = col.type
    if pa.types.is_dictionary(ty):
        return _csv_column(pc.cast(col, ty.value_type))
    if pa.types.is_timestamp(ty):
        return iso_strings(col)
    if pa.types.is_decimal(ty):
        return decimal_strings(col)
    if _csv_native(ty):
        return col
    # Nested and exotic values (lists, structs, maps, binary, durations ...): JSON text.
    return pa.array(
        [None if v is None else _ENCODER.encode(v).decode() for v in col.to_pylist()],
        pa.string(),
    )


def encode_csv(table: pa.Table) -> bytes:
    """``table`` as CSV (UTF-8, header row; same text as JSON; empty field for null)."""
    columns = [_csv_column(col) for col in table.columns]
    out = pa.table(columns, names=table.column_names)
    buf = io.BytesIO()
    pacsv.write_csv(out, buf)
    return buf.getvalue()


# --- Parquet and Arrow ----------------------------------------------------------------


def _with_meta(table: pa.Table, meta: Mapping[str, Any] | None) -> pa.Table:
    if meta is None:
        return table
    metadata = dict(table.schema.metadata or {})
    metadata[META_KEY] = _ENCODER.encode(meta)
    return table.replace_schema_metadata(metadata)


def encode_parquet(table: pa.Table, meta: Mapping[str, Any] | None = None) -> bytes:
    """``table`` as one Parquet file (native types; ``meta`` under ``k2.meta``).

    Raises :class:`ApiProblem` 400 ``unsupported-format`` for column types Parquet
    cannot hold (then Arrow IPC or JSON can).
    """
    buf = io.BytesIO()
    try:
        pq.write_table(_with_meta(table, meta), buf)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ApiProblem(
            400,
            "unsupported-format",
            f"this result cannot be written as Parquet ({exc}); use format=arrow or format=json",
        ) from None
    return buf.getvalue()


def encode_arrow(table: pa.Table, meta: Mapping[str, Any] | None = None) -> bytes:
    """``table`` as an Arrow IPC stream (native types; ``meta`` under ``k2.meta``)."""
    table = _with_meta(table, meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def encode(fmt: Format, table: pa.Table, meta: Mapping[str, Any]) -> bytes:
    """``table`` (with ``meta``) in ``fmt``."""
    if fmt == "json":
        return encode_json(table, meta)
    if fmt == "csv":
        return encode_csv(table)
    if fmt == "parquet":
        return encode_parquet(table, meta)
    return encode_arrow(table, meta)

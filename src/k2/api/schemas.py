"""OpenAPI descriptions of the API's responses, derived from the Arrow schemas.

Responses are encoded by :mod:`k2.api.formats`, not by pydantic models (too slow for
the hot path), so their shapes are declared here for ``responses=``: each data route
documents its JSON rows (from the canonical record schema where it has one), the
binary and CSV forms, and the problem documents it may answer with.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from k2.api.formats import MEDIA_TYPES
from k2.api.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"


def json_type(ty: pa.DataType) -> dict[str, Any]:
    """The JSON-schema of one Arrow type as :mod:`k2.api.formats` writes it."""
    if pa.types.is_decimal(ty):
        return {"type": "string", "pattern": DECIMAL_PATTERN, "description": "exact decimal"}
    if pa.types.is_timestamp(ty):
        zone = "UTC, ISO-8601 with Z" if ty.tz else "ISO-8601, no zone"
        return {"type": "string", "format": "date-time", "description": zone}
    if pa.types.is_date(ty):
        return {"type": "string", "format": "date"}
    if pa.types.is_integer(ty):
        return {"type": "integer"}
    if pa.types.is_floating(ty):
        return {"type": "number"}
    if pa.types.is_boolean(ty):
        return {"type": "boolean"}
    if pa.types.is_string(ty) or pa.types.is_large_string(ty):
        return {"type": "string"}
    return {}


def row_schema(schema: pa.Schema) -> dict[str, Any]:
    """The JSON-schema of one row object of a table with ``schema``."""
    props: dict[str, Any] = {}
    for f in schema:
        t = json_type(f.type)
        if f.nullable and "type" in t:
            t = {**t, "type": [t["type"], "null"]}
        doc = (f.metadata or {}).get(b"doc")
        if doc:
            t = {**t, "description": doc.decode()}
        props[f.name] = t
    return {"type": "object", "properties": props, "required": [f.name for f in schema]}


META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "how the result was produced: query window (UTC, end exclusive), lake "
    "snapshot read, sources used (lake, tail), row counts, timing, next_cursor, request_id",
    "properties": {
        "data_type": {"type": "string"},
        "start": {"type": ["string", "null"], "format": "date-time"},
        "end": {"type": ["string", "null"], "format": "date-time"},
        "snapshot_id": {"type": ["integer", "null"]},
        "sources": {"type": "array", "items": {"type": "string", "enum": ["lake", "tail"]}},
        "rows": {"type": "integer"},
        "elapsed_ms": {"type": "number"},
        "next_cursor": {"type": ["string", "null"]},
        "request_id": {"type": "string"},
    },
    "required": ["rows", "request_id"],
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}}}


#: Problem responses of every authenticated route.
AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: _problem("no or unknown X-API-Key"),
    429: _problem("rate limit of this key exceeded (see Retry-After)"),
}


def data_responses(
    rows: dict[str, Any] | None = None, *, extra: tuple[int, ...] = (404,)
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a data route: rows in four formats, and its problems."""
    item = rows or {"type": "object"}
    out: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "rows with meta (JSON), or the rows alone as CSV, Parquet or "
            "Arrow IPC stream (meta in the schema metadata key k2.meta); chosen by format= "
            "or Accept. A Link rel=next header gives the next page when there is one.",
            "content": {
                MEDIA_TYPES["json"]: {
                    "schema": {
                        "type": "object",
                        "required": ["data", "meta"],
                        "properties": {
                            "data": {"type": "array", "items": item},
                            "meta": META_SCHEMA,
                        },
                    }
                },
                "text/csv": {"schema": {"type": "string"}},
                MEDIA_TYPES["parquet"]: {"schema": {"type": "string", "format": "binary"}},
                MEDIA_TYPES["arrow"]: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        400: _problem("bad parameter (symbol, time, interval, window, cursor, SQL ...)"),
        406: _problem("no acceptable format in Accept"),
        **AUTH_PROBLEMS,
        # Every other error is a problem document too (500 names the request id).
        "default": _problem("any other error"),
    }
    for status in extra:
        out[status] = _problem(
            {404: "unknown symbol or snapshot", 408: "SQL query timed out"}.get(status, "error")
        )
    return out

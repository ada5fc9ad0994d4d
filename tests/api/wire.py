"""Reading API responses back, independently of K2's encoders.

Typed values (from Parquet/Arrow) are turned into the wire text the JSON should carry
with plain Python (``format(Decimal, "f")``, ``strftime``), so a test comparing them
with the JSON checks the encoder instead of repeating it.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

META_KEY = b"k2.meta"


def wire(value: Any) -> Any:
    """A typed value as the API's JSON writes it."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        assert value.tzinfo is not None
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    return value


def wire_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of ``table`` with :func:`wire` values."""
    return [{k: wire(v) for k, v in row.items()} for row in table.to_pylist()]


def csv_text(value: Any) -> str | None:
    """What a JSON value looks like in the API's CSV."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def read_csv(data: bytes) -> list[dict[str, str | None]]:
    """CSV rows with every field as text (empty unquoted field → None)."""
    head = data.split(b"\n", 1)[0].decode()
    names = [n.strip('"') for n in head.split(",")]
    opts = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return pacsv.read_csv(io.BytesIO(data), convert_options=opts).to_pylist()  # type: ignore[no-any-return]


def read_table(resp: httpx.Response) -> pa.Table:
    """A Parquet or Arrow IPC stream response as a table."""
    ctype = resp.headers["content-type"]
    if ctype == "application/vnd.apache.parquet":
        return pq.read_table(io.BytesIO(resp.content))
    assert ctype == "application/vnd.apache.arrow.stream", ctype
    return pa.ipc.open_stream(resp.content).read_all()


def table_meta(table: pa.Table) -> dict[str, Any]:
    """The meta object a Parquet/Arrow response carries in its schema metadata."""
    return json.loads(table.schema.metadata[META_KEY])  # type: ignore[no-any-return]

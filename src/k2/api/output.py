"""``k2 query`` output: a readable table, or the API's CSV, JSON and Parquet bytes.

The table shows the same text as the API's JSON (exact decimals at the column's scale,
ISO-8601 UTC times with ``Z``), numbers right-aligned; a one-line summary of the meta
(rows, snapshot, sources, time, next cursor) goes to stderr so stdout stays data.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa

from k2.api.formats import encode_arrow, encode_csv, encode_json, encode_parquet, json_values
from k2.errors import ConfigError

OutputFormat = Literal["table", "csv", "json", "parquet", "arrow"]
OUTPUT_FORMATS: tuple[str, ...] = ("table", "csv", "json", "parquet", "arrow")


def check_output(fmt: str, output: Path | None) -> OutputFormat:
    """Validate ``--format``/``--output`` before any work; :class:`ConfigError` if wrong."""
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if fmt in ("parquet", "arrow") and output is None:
        raise ConfigError(f"--format {fmt} writes a binary file: give --output PATH")
    return fmt  # type: ignore[return-value]


def _numeric(ty: pa.DataType) -> bool:
    return bool(pa.types.is_integer(ty) or pa.types.is_floating(ty) or pa.types.is_decimal(ty))


def render_table(table: pa.Table, *, file: IO[str] | None = None, title: str | None = None) -> None:
    """``table`` as a rich table (no row limit: the query's ``limit`` decides)."""
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title, show_lines=False)
    for f in table.schema:
        out.add_column(f.name, justify="right" if _numeric(f.type) else "left", no_wrap=True)
    columns = [json_values(col) for col in table.columns]
    for values in zip(*columns, strict=True):
        out.add_row(*("" if v is None else str(v) for v in values))
    Console(file=file or sys.stdout, width=max(80, 24 * table.num_columns)).print(out)


def describe_meta(meta: Mapping[str, Any]) -> str:
    """A one-line summary of a result's meta for stderr."""
    parts = [f"{meta.get('rows', 0)} row(s)"]
    if meta.get("snapshot_id") is not None:
        parts.append(f"snapshot {meta['snapshot_id']}")
    if meta.get("sources"):
        parts.append("from " + "+".join(meta["sources"]))
    if meta.get("start") or meta.get("end"):
        parts.append(f"window [{meta.get('start') or '…'}, {meta.get('end') or '…'})")
    if meta.get("elapsed_ms") is not None:
        parts.append(f"{meta['elapsed_ms']:.1f} ms")
    if meta.get("tail_complete") is False:
        parts.append("TAIL INCOMPLETE (rows between lake and tail are missing)")
    if meta.get("next_cursor"):
        parts.append(f"more: --cursor {meta['next_cursor']}")
    return " · ".join(parts)


def write_result(
    table: pa.Table,
    meta: Mapping[str, Any],
    fmt: OutputFormat,
    output: Path | None,
    *,
    json_data: list[Any] | None = None,
) -> None:
    """Write ``table`` in ``fmt`` to ``output`` (stdout when ``None``; binary needs a file).

    ``json_data`` replaces the rows in JSON output (e.g. snapshots with nested objects).
    """
    if fmt == "table":
        if output is None:
            render_table(table)
        else:
            with output.open("w", encoding="utf-8") as fh:
                render_table(table, file=fh)
        return
    if fmt == "csv":
        data = encode_csv(table)
    elif fmt == "json":
        data = encode_json(json_data if json_data is not None else table, meta) + b"\n"
    elif fmt == "parquet":
        data = encode_parquet(table, meta)
    else:
        data = encode_arrow(table, meta)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)

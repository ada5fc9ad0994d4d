"""NDJSON output: one JSON object a line, tagged with its ``type``.

Types: ``trade`` and ``quote`` (canonical records), ``reject`` (with reason and raw
payload) and ``gap`` (a run of missing trade ids and its repair). Decimals are strings
(exact), timestamps ISO-8601 UTC with microseconds (``2023-04-05T00:00:00.004107Z``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from k2.capture.output import OutputBatch
from k2.quality.rejects import Reject

_ENCODER = msgspec.json.Encoder()


def batch_to_json_rows(batch: pa.RecordBatch, record_type: str) -> list[dict[str, Any]]:
    """Rows of ``batch`` as JSON-able dicts: decimals as strings, timestamps ISO-8601 Z."""
    columns: list[pa.Array] = []
    for col in batch.columns:
        if pa.types.is_decimal(col.type):
            col = pc.cast(col, pa.string())
        elif pa.types.is_timestamp(col.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
        columns.append(col)
    as_text = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    rows: list[dict[str, Any]] = as_text.to_pylist()
    for row in rows:
        row["type"] = record_type
    return rows


class NdjsonWriter:
    """Writes records, rejects and gaps to a file (or stdout) as NDJSON.

    ``flush()`` pushes buffered lines to the OS; ``close()`` flushes and, for a file,
    fsyncs and closes it. Counts of each type written are in ``counts``.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._fh: IO[bytes] = path.open("ab") if path else sys.stdout.buffer
        self.counts: dict[str, int] = {"trade": 0, "quote": 0, "reject": 0, "gap": 0}

    def write_batch(self, batch: pa.RecordBatch, record_type: str) -> None:
        """Write every row of ``batch`` as a line of ``type`` ``record_type``."""
        if batch.num_rows == 0:
            return
        self._write_lines(batch_to_json_rows(batch, record_type))
        self.counts[record_type] = self.counts.get(record_type, 0) + batch.num_rows

    def write_rejects(self, rejects: Iterable[Reject]) -> None:
        """Write each reject with its reason, detail and raw payload."""
        rows = [{"type": "reject", **r.to_json_dict()} for r in rejects]
        self._write_lines(rows)
        self.counts["reject"] += len(rows)

    def write_gaps(self, gaps: Iterable[dict[str, Any]]) -> None:
        """Write gap records (k2.records.GAP fields; µs ints become ISO timestamps)."""
        rows = []
        for gap in gaps:
            row = {"type": "gap", **gap}
            for key in ("detected_at", "resolved_at"):
                if isinstance(row.get(key), int):
                    row[key] = _iso_us(row[key])
            rows.append(row)
        self._write_lines(rows)
        self.counts["gap"] += len(rows)

    def _write_lines(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._fh.write(b"\n".join(_ENCODER.encode(r) for r in rows) + b"\n")

    async def write(self, batch: OutputBatch) -> None:
        """The capture pipeline's output interface: write every part of ``batch``."""
        if batch.trades is not None:
            self.write_batch(batch.trades, "trade")
        if batch.quotes is not None:
            self.write_batch(batch.quotes, "quote")
        self.write_rejects(batch.rejects)
        self.write_gaps(batch.gaps)

    async def flush(self) -> None:
        """Push buffered lines to the OS."""
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        if self._path is not None:
            import os

            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _iso_us(us: int) -> str:
    arr = pa.array([us], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return str(pc.strftime(arr, format="%Y-%m-%dT%H:%M:%SZ")[0].as_py())

"""What the query layer hands around: results with their provenance, and the tail's view.

The engine (:mod:`k2.query.engine`) answers from two places. The *lake* is the Iceberg
tables, read at one snapshot. The *tail* (:mod:`k2.query.tail`) is the records the log
holds beyond the offsets that snapshot stored (see :mod:`k2.lake.sink_offsets`): the
kdb+ real-time-database pattern. A :class:`TailView` pairs the two so a query sees one
consistent cut: everything up to the snapshot from the lake, everything after it from
the log, duplicates (a record both committed and still held) removed by ``message_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import pyarrow as pa

from k2.errors import TerminalError

#: The record kinds the engine serves rows of.
DataType = Literal["trades", "quotes"]

#: Where rows of a result came from.
Source = Literal["lake", "tail"]


class QueryError(TerminalError):
    """A question K2 cannot answer as asked (bad symbol, interval, window, snapshot ...).

    ``code`` is stable and machine-readable (the API's problem ``type`` suffix);
    the message says what was wrong and what would be accepted.
    """

    def __init__(self, message: str, *, code: str = "bad-request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class RecentCut:
    """The tail's recent window (see :mod:`k2.query.recent`): per symbol, every record
    the tail has read with ``timestamp >= floor_us`` (UTC µs), possibly more; a record
    may appear twice if the log holds it twice. Rows are in arrival order."""

    floor_us: int
    by_symbol: Mapping[str, pa.Table]
    #: Per symbol, the ``(min, max)`` timestamp (UTC µs) of each chunk of its table, in
    #: chunk order, so a query can skip chunks outside its window.
    bounds: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    #: The symbols whose rows are in key order across their chunks (each message once).
    ordered: frozenset[str] = frozenset()
    #: Per symbol, its table's chunks as record batches (the same buffers), so a query
    #: reads chunk ``i`` without assembling it from the columns.
    batches: Mapping[str, tuple[pa.RecordBatch, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TailView:
    """An immutable cut of the live tail for one data type.

    ``rows`` (the canonical schema of the table) are the log's records at or after
    ``offsets`` (per topic partition), which are exactly the offsets the lake snapshot
    ``snapshot_id`` stored; ``snapshot_id`` is ``None`` while the table has no snapshot.
    ``complete`` is false when the tail had to drop rows to stay within its memory cap
    (then rows between the lake and the tail are missing and the result says so).
    """

    snapshot_id: int | None
    offsets: dict[int, int]
    rows: pa.Table
    complete: bool = True
    log_end: dict[int, int] = field(default_factory=dict)
    recent: RecentCut | None = None


class Tail(Protocol):
    """The live tail as the engine uses it."""

    def view(self, data_type: DataType) -> TailView:
        """The newest consistent cut for ``data_type`` (cheap: no I/O once the first
        cut exists; the first call may wait for it)."""
        ...

    def peek(self, data_type: DataType) -> TailView | None:
        """The newest published cut, or ``None`` before the first: never waits."""
        ...


@dataclass
class QueryMeta:
    """How a result was produced: the API's ``meta`` object.

    Times are UTC; ``start``/``end`` are the query window actually used (end exclusive);
    ``snapshot_id`` is the lake snapshot read; ``sources`` lists where rows came from;
    ``files_scanned``/``files_total`` show pruning; ``elapsed_ms`` is wall time.
    ``next_cursor`` is set when more rows match than were returned.
    """

    data_type: str
    start: datetime | None = None
    end: datetime | None = None
    snapshot_id: int | None = None
    sources: list[Source] = field(default_factory=list)
    rows: int = 0
    rows_lake: int = 0
    rows_tail: int = 0
    duplicates_removed: int = 0
    files_scanned: int = 0
    files_total: int = 0
    elapsed_ms: float = 0.0
    tail_complete: bool = True
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-able form (datetimes ISO-8601 UTC)."""
        out: dict[str, Any] = {
            "data_type": self.data_type,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "snapshot_id": self.snapshot_id,
            "sources": list(self.sources),
            "rows": self.rows,
            "rows_lake": self.rows_lake,
            "rows_tail": self.rows_tail,
            "duplicates_removed": self.duplicates_removed,
            "files_scanned": self.files_scanned,
            "files_total": self.files_total,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "tail_complete": self.tail_complete,
            "next_cursor": self.next_cursor,
        }
        out.update(self.extra)
        return out


@dataclass
class QueryResult:
    """Rows (an Arrow table: exact decimals, UTC µs timestamps) and how they were found."""

    table: pa.Table
    meta: QueryMeta

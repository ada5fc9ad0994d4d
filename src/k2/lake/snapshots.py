"""Snapshots and time travel: what each commit did, and any table as it was.

Every lake commit (sink batch, backfill archive, compaction) is an Iceberg snapshot.
:func:`list_snapshots` describes them from their summaries; :func:`read_as_of` reads a
table as of a snapshot id or a point in time. Properties K2 writes into a summary start
with ``k2.`` (log offsets from the sink, archive name and checksum from backfill,
compaction counts from maintenance) and are returned as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from k2.errors import TerminalError

if TYPE_CHECKING:
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table


class SnapshotNotFound(TerminalError):
    """No snapshot matches the id or time asked for."""


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot: when (UTC), what operation, how many rows, and K2's properties.

    ``added_records``/``deleted_records``/``total_records`` come from the Iceberg summary
    (0 when absent); ``k2`` holds every ``k2.*`` summary property.
    """

    snapshot_id: int
    parent_id: int | None
    committed_at: datetime
    operation: str
    added_records: int
    deleted_records: int
    total_records: int
    added_files: int
    deleted_files: int
    is_current: bool
    k2: dict[str, str] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``committed_at`` as ISO-8601 UTC)."""
        return {
            "snapshot_id": self.snapshot_id,
            "parent_id": self.parent_id,
            "committed_at": self.committed_at.isoformat(),
            "operation": self.operation,
            "added_records": self.added_records,
            "deleted_records": self.deleted_records,
            "total_records": self.total_records,
            "added_files": self.added_files,
            "deleted_files": self.deleted_files,
            "is_current": self.is_current,
            "k2": dict(self.k2),
        }


def list_snapshots(table: Table) -> list[SnapshotInfo]:
    """Every snapshot ``table`` still holds, oldest first (commit time, then id)."""
    table.refresh()
    current = table.current_snapshot()
    current_id = current.snapshot_id if current is not None else None
    out: list[SnapshotInfo] = []
    for snap in table.metadata.snapshots:
        summary = snap.summary
        props: dict[str, str] = dict(summary.additional_properties) if summary else {}
        operation = summary.operation.value if summary is not None else "unknown"
        out.append(
            SnapshotInfo(
                snapshot_id=snap.snapshot_id,
                parent_id=snap.parent_snapshot_id,
                committed_at=datetime.fromtimestamp(snap.timestamp_ms / 1000, tz=UTC),
                operation=operation,
                added_records=_int(props, "added-records"),
                deleted_records=_int(props, "deleted-records"),
                total_records=_int(props, "total-records"),
                added_files=_int(props, "added-data-files"),
                deleted_files=_int(props, "deleted-data-files"),
                is_current=snap.snapshot_id == current_id,
                k2={k: v for k, v in props.items() if k.startswith("k2.")},
            )
        )
    out.sort(key=lambda s: (s.committed_at, s.snapshot_id))
    return out


def snapshot_at(table: Table, as_of: datetime) -> int:
    """The id of the snapshot that was current at ``as_of`` (inclusive; aware datetime).

    Raises :class:`SnapshotNotFound` when ``as_of`` is before the oldest retained
    snapshot (or the table has none), and ``ValueError`` for a naive datetime.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    table.refresh()
    ms = int(as_of.timestamp() * 1000)
    snap = table.snapshot_as_of_timestamp(ms, inclusive=True)
    if snap is None:
        raise SnapshotNotFound(
            f"{table.name()}: no snapshot at or before {as_of.astimezone(UTC).isoformat()}"
        )
    return snap.snapshot_id


def read_as_of(
    table: Table,
    *,
    snapshot_id: int | None = None,
    as_of: datetime | None = None,
    row_filter: str | BooleanExpression | None = None,
    columns: tuple[str, ...] = ("*",),
) -> pa.Table:
    """``table`` as it was at ``snapshot_id`` or at time ``as_of`` (give exactly one).

    The rows come back with the schema the table had at that snapshot (Iceberg's rule;
    a column added later is absent, not null).
    Raises :class:`SnapshotNotFound` for an unknown id or a time before history.
    """
    if (snapshot_id is None) == (as_of is None):
        raise ValueError("give exactly one of snapshot_id and as_of")
    if as_of is not None:
        snapshot_id = snapshot_at(table, as_of)
    else:
        table.refresh()
        if snapshot_id is None or table.snapshot_by_id(snapshot_id) is None:
            raise SnapshotNotFound(f"{table.name()}: no snapshot {snapshot_id}")
    kwargs: dict[str, Any] = {"snapshot_id": snapshot_id, "selected_fields": columns}
    if row_filter is not None:
        kwargs["row_filter"] = row_filter
    return table.scan(**kwargs).to_arrow()


def _int(props: dict[str, str], key: str) -> int:
    try:
        return int(props.get(key, "0"))
    except ValueError:
        return 0

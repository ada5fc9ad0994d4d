"""The live tail's state for one data type: positions, held rows, the lake's cut.

:class:`TailStream` is the bookkeeping half of :class:`k2.query.tail.LiveTail`, with no
I/O: the tail reads the lake and the log and hands the results here. Per partition it
holds a :class:`~k2.query.tail_rows.PartitionRows` (rows ``start <= offset < position``)
and knows the lake's offset; from those it builds immutable
:class:`~k2.query.base.TailView` s and :class:`StreamStats`.

Completeness: a partition's rows are whole when they start at or below the lake's
offset for it (or, where the lake has none, the offset the tail started from — the
log's oldest record then). Only the memory cap makes ``start`` overtake the lake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import TerminalError
from k2.ops.log import get_logger
from k2.query.base import TailView
from k2.query.recent import RecentStore
from k2.query.tail_rows import PartitionRows

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = get_logger(__name__)

#: While the memory cap keeps dropping rows, repeat the warning this often (seconds).
CAP_WARNING_EVERY_S = 60.0


@dataclass(frozen=True)
class StreamStats:
    """The tail of one data type at the last publication.

    ``lag`` is, per partition, records read from the log that the lake had not
    committed (read position − lake offset): what only the tail can answer for.
    ``dropped_rows`` counts rows the memory cap dropped (since start), ``lost_rows``
    offsets the log's retention deleted before the tail read them.
    """

    data_type: str
    topic: str
    snapshot_id: int | None
    rows_held: int
    bytes_held: int
    lake_offsets: dict[int, int]
    positions: dict[int, int]
    lag: dict[int, int]
    complete: bool
    dropped_rows: int
    lost_rows: int


class TailStream:
    """One data type's tail: ``topic`` in the log, ``table`` in the lake (the tail's own
    copy), rows of ``schema``. Not thread-safe: the tail guards it with its step lock."""

    def __init__(
        self,
        data_type: str,
        topic: str,
        table: Table,
        schema: pa.Schema,
        recent: RecentStore | None = None,
    ) -> None:
        self.data_type = data_type
        #: The recent window (every record read lately, committed or not), if kept.
        self.recent = recent
        self.topic = topic
        self.table = table
        self.schema = schema
        self.parts: dict[int, PartitionRows] = {}
        #: Where a partition the lake has no offset for started (its oldest record).
        self._floor: dict[int, int] = {}
        self.snapshot_id: int | None = None
        self.lake: dict[int, int] = {}
        #: The lake's position was read at least once (a view can be published).
        self.refreshed = False
        self.topic_known = False
        #: Something changed since the last view was built.
        self.dirty = True
        self.dropped_rows = 0
        self.lost_rows = 0
        self._seq = 0
        self._capped_since: float | None = None
        self._cap_warned_at = 0.0

    @property
    def rows(self) -> int:
        """Rows held over every partition."""
        return sum(p.rows for p in self.parts.values())

    def lake_floor(self, partition: int) -> int:
        """The offset below which the lake (as this stream knows it) has every record."""
        return self.lake.get(partition, self._floor.get(partition, 0))

    def complete(self) -> bool:
        """True when no rows between the lake and the tail were dropped."""
        return all(part.start <= self.lake_floor(p) for p, part in self.parts.items())

    def new_partitions(self, partitions: int | None) -> list[int]:
        """Partitions of a topic of ``partitions`` this stream does not follow yet."""
        return [p for p in range(partitions or 0) if p not in self.parts]

    # -- changes -------------------------------------------------------------------------

    def apply_lake(
        self,
        snapshot_id: int | None,
        lake: Mapping[int, int],
        partitions: int | None,
        begins: Mapping[int, int],
    ) -> None:
        """Take a new lake cut: ``lake`` are the offsets snapshot ``snapshot_id`` stored;
        ``partitions`` the topic's partition count (``None``: no topic yet); ``begins``
        the log's oldest offsets, where new partitions the lake has no offset for start.
        Rows the lake now has are dropped; where the lake is past the read position,
        the position jumps there."""
        self.snapshot_id, self.lake = snapshot_id, dict(lake)
        self.topic_known = partitions is not None
        self.refreshed = self.dirty = True
        for p in self.new_partitions(partitions):
            start = lake.get(p, begins.get(p, 0))
            self.parts[p] = PartitionRows(start)
            if p not in lake:
                self._floor[p] = start
        for p, part in self.parts.items():
            at = lake.get(p)
            if at is not None and at > part.position and self.recent is not None:
                self.recent.invalidate()  # records skipped: the floor must be set anew
            # at < start: rows between are missing (the memory cap dropped them); the
            # view stays incomplete until the lake gets past them.
            if at is not None and at >= part.start:
                part.drop_below(at)
        if self._capped_since is not None and self.complete():
            log.info("tail_complete_again", data_type=self.data_type,
                     dropped_rows=self.dropped_rows)  # fmt: skip
            self._capped_since = None

    def add(self, partition: int, records: pa.RecordBatch, offsets: pa.Array) -> int:
        """Hold rows just read from ``partition`` (``offsets``: int64, ascending; rows
        below the read position are ignored). Returns the rows added. Raises
        :class:`~k2.errors.TerminalError` for records of another schema."""
        if records.num_rows == 0:
            return 0
        if not records.schema.equals(self.schema):
            raise TerminalError(
                f"{self.topic}[{partition}] holds records that are not {self.data_type}: "
                f"{records.schema.names}"
            )
        part = self.parts[partition]
        if int(offsets[0].as_py()) < part.position:  # never hold a row twice
            skip = int(pc.sum(pc.less(offsets, part.position)).as_py() or 0)
            records, offsets = records.slice(skip), offsets.slice(skip)
            if records.num_rows == 0:
                return 0
        self._seq += 1
        skipped = part.append(records, offsets, self._seq)
        if self.recent is not None:
            self.recent.add(records)
        if skipped:
            self.lost_rows += skipped
            log.warning("tail_records_lost_to_retention", topic=self.topic,
                        partition=partition, offsets=skipped)  # fmt: skip
        self.dirty = True
        return int(records.num_rows)

    def enforce_cap(self, max_rows: int, now: float) -> int:
        """Drop the oldest rows (by arrival) beyond ``max_rows``; the view is incomplete
        until the lake catches up. Warns (again every :data:`CAP_WARNING_EVERY_S`
        seconds of ``now``, monotonic) and counts; returns the rows dropped."""
        excess = self.rows - max_rows
        if excess <= 0:
            return 0
        dropped = 0
        while dropped < excess:
            oldest = min(
                (part for part in self.parts.values() if part.rows),
                key=lambda part: cast(int, part.head_seq),
            )
            dropped += oldest.drop_oldest(min(excess - dropped, oldest.head_rows))
        self.dropped_rows += dropped
        self.dirty = True
        if self._capped_since is None or now - self._cap_warned_at >= CAP_WARNING_EVERY_S:
            log.warning(
                "tail_memory_cap_dropping_rows",
                data_type=self.data_type,
                max_rows=max_rows,
                dropped_now=dropped,
                dropped_total=self.dropped_rows,
                hint="is the lake sink running? queries miss these rows until it catches up",
            )
            self._cap_warned_at = now
        if self._capped_since is None:
            self._capped_since = now
        return dropped

    # -- what readers get ----------------------------------------------------------------

    def view(self) -> TailView:
        """An immutable cut: the rows are zero-copy over the held chunks."""
        batches = [b for p in sorted(self.parts) for b in self.parts[p].batches()]
        return TailView(
            snapshot_id=self.snapshot_id,
            offsets=dict(self.lake),
            rows=pa.Table.from_batches(batches, schema=self.schema),
            complete=self.complete(),
            log_end={p: part.position for p, part in sorted(self.parts.items())},
            recent=self.recent.cut() if self.recent is not None else None,
        )

    def stats(self) -> StreamStats:
        """Counters and positions now."""
        parts = sorted(self.parts.items())
        return StreamStats(
            data_type=self.data_type,
            topic=self.topic,
            snapshot_id=self.snapshot_id,
            rows_held=self.rows,
            bytes_held=sum(p.nbytes for _, p in parts),
            lake_offsets=dict(self.lake),
            positions={p: part.position for p, part in parts},
            lag={p: part.position - self.lake_floor(p) for p, part in parts},
            complete=self.complete(),
            dropped_rows=self.dropped_rows,
            lost_rows=self.lost_rows,
        )

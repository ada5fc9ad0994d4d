"""The rows the live tail holds for one log partition, as Arrow chunks with their offsets.

A :class:`PartitionRows` holds the records of one partition with
``start <= offset < position``: everything the tail has read that the lake had not
committed when it last looked. Rows arrive as the log's record batches and stay Arrow:
no per-record Python objects. Three things shrink it:

- the lake commits (:meth:`PartitionRows.drop_below` the lake's offset),
- the memory cap (:meth:`PartitionRows.drop_oldest`, which leaves ``start`` above the
  lake's offset: rows are then missing until the lake catches up),
- a jump (:meth:`PartitionRows.drop_below` an offset past ``position``: the lake is
  ahead of the tail, which then reads on from there).

Small batches are merged as they arrive, like a binary counter: a chunk is merged into
the one before it while that one is not larger, so each row is copied O(log n) times
and a partition holds O(log n) chunks (plus one per :data:`MAX_CHUNK_ROWS`), however
often the tail polls. Readers get zero-copy batches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

#: Chunks are not merged beyond this many rows (bounds the cost of one merge).
MAX_CHUNK_ROWS = 262_144


@dataclass(slots=True)
class Chunk:
    """Consecutive rows of one partition: ``records[i]`` has offset ``offsets[i]``
    (int64, ascending). ``seq`` orders chunks by arrival across partitions (the
    arrival of its oldest rows), so the memory cap can drop the oldest first."""

    records: pa.RecordBatch
    offsets: pa.Array
    seq: int
    #: Bytes of the Arrow buffers ``records`` references, measured once (walking the
    #: buffers on every stats publication was a visible share of the tail's CPU).
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = int(self.records.nbytes)

    @property
    def rows(self) -> int:
        return int(self.records.num_rows)

    @property
    def first(self) -> int:
        return int(self.offsets[0].as_py())

    @property
    def last(self) -> int:
        return int(self.offsets[-1].as_py())

    def rows_below(self, offset: int) -> int:
        """How many rows have an offset below ``offset``."""
        first, last = self.first, self.last
        if offset <= first:
            return 0
        if offset > last:
            return self.rows
        if last - first + 1 == self.rows:  # contiguous, the usual case
            return offset - first
        return int(pc.sum(pc.less(self.offsets, offset)).as_py() or 0)

    def slice(self, skip: int) -> Chunk:
        """This chunk without its first ``skip`` rows (zero-copy)."""
        return Chunk(self.records.slice(skip), self.offsets.slice(skip), self.seq)


class PartitionRows:
    """The rows held for one partition: offsets ``start <= offset < position``.

    Not thread-safe: the tail mutates it under its own lock and publishes immutable
    tables built from :meth:`batches`.
    """

    def __init__(self, start: int) -> None:
        self.start = start
        self.position = start
        self.rows = 0
        self._chunks: deque[Chunk] = deque()

    @property
    def head_seq(self) -> int | None:
        """Arrival number of the oldest rows held (``None`` when empty)."""
        return self._chunks[0].seq if self._chunks else None

    @property
    def head_rows(self) -> int:
        """Rows in the oldest chunk held (0 when empty)."""
        return self._chunks[0].rows if self._chunks else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the Arrow buffers the held rows reference (approximate for slices)."""
        return sum(c.nbytes for c in self._chunks)

    def batches(self) -> list[pa.RecordBatch]:
        """The held rows, in offset order (zero-copy)."""
        return [c.records for c in self._chunks]

    def offsets(self) -> list[pa.Array]:
        """The offset of each held row, chunk by chunk (matches :meth:`batches`)."""
        return [c.offsets for c in self._chunks]

    def append(self, records: pa.RecordBatch, offsets: pa.Array, seq: int) -> int:
        """Add rows just read; their offsets must start at or after ``position``.

        Returns the number of offsets skipped between ``position`` and the first row
        (records retention deleted before the tail read them; normally 0). Skipped
        offsets leave ``start`` where it is: those records exist nowhere any more.
        """
        if records.num_rows == 0:
            return 0
        chunk = Chunk(records, offsets, seq)
        skipped = chunk.first - self.position
        if skipped < 0:
            raise ValueError(f"rows at offset {chunk.first} are before position {self.position}")
        self._chunks.append(chunk)
        self.rows += chunk.rows
        self.position = chunk.last + 1
        self._merge_tail()
        return skipped

    def _merge_tail(self) -> None:
        chunks = self._chunks
        while len(chunks) >= 2:
            older, newer = chunks[-2], chunks[-1]
            if older.rows > newer.rows or older.rows + newer.rows > MAX_CHUNK_ROWS:
                return
            chunks.pop()
            chunks[-1] = Chunk(
                pa.concat_batches([older.records, newer.records]),
                pa.concat_arrays([older.offsets, newer.offsets]),
                older.seq,
            )

    def drop_below(self, offset: int) -> int:
        """Forget rows with offsets below ``offset`` (the lake has them); if ``offset`` is
        past ``position``, jump there (the lake is ahead). Returns rows dropped."""
        dropped = 0
        chunks = self._chunks
        while chunks and chunks[0].last < offset:
            dropped += chunks.popleft().rows
        if chunks:
            skip = chunks[0].rows_below(offset)
            if skip:
                chunks[0] = chunks[0].slice(skip)
                dropped += skip
        self.rows -= dropped
        self.start = max(self.start, offset)
        self.position = max(self.position, offset)
        return dropped

    def drop_oldest(self, count: int) -> int:
        """Forget up to ``count`` of the oldest rows held (the memory cap); ``start``
        moves past them. Returns rows dropped."""
        dropped = 0
        chunks = self._chunks
        while chunks and dropped < count:
            head = chunks[0]
            take = min(count - dropped, head.rows)
            if take == head.rows:
                chunks.popleft()
            else:
                chunks[0] = head.slice(take)
            dropped += take
        self.rows -= dropped
        self.start = chunks[0].first if chunks else self.position
        return dropped

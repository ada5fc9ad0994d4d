"""The recent window in memory: every record of the last minutes, by symbol.

The live tail only holds what the lake has not committed; a question about the last
15 minutes would still read the sink's newest (small, many) files. Like kdb+'s
real-time database, the tail also keeps the records it has read for
``recent_window_s``, committed or not, indexed by symbol, so such questions are
answered from memory alone.

The promise is :attr:`RecentCut.floor_us`: every record of the log with ``timestamp >=
floor_us`` that the tail has read is in the cut. It starts just above the newest
timestamp the lake held when the tail started reading (the records before the tail's
start offsets are exactly the lake's), and only rises: eviction by age, the row cap,
and a jump of the read position (the lake got ahead of the tail, so records were
skipped) all raise it. A query whose window starts below the floor is answered the
usual way (lake + tail).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from k2.query.base import RecentCut

#: Merge a symbol's chunks when it has more than this many (keeps queries cheap).
_MAX_CHUNKS = 32


@dataclass(eq=False)  # identity: chunks are removed from deques by who they are
class _Chunk:
    batch: pa.RecordBatch
    min_us: int
    max_us: int


class RecentStore:
    """Records of the last ``window_us`` (UTC µs), per symbol, at most ``max_rows``.

    Not thread-safe: the tail calls it under its step lock; readers get immutable
    :class:`RecentCut` s from :meth:`cut`.
    """

    def __init__(self, window_us: int, max_rows: int) -> None:
        self.window_us = window_us
        self.max_rows = max_rows
        self.floor_us: int | None = None  # None: unknown, no cut is offered
        self._symbols: dict[str, deque[_Chunk]] = {}
        self._arrival: deque[tuple[str, _Chunk]] = deque()
        self.rows = 0

    @property
    def needs_floor(self) -> bool:
        """True until the tail has told the store where the lake ended."""
        return self.floor_us is None

    def set_floor(self, floor_us: int) -> None:
        """Every record with ``timestamp >= floor_us`` from now on is read by the tail."""
        self.floor_us = floor_us if self.floor_us is None else max(self.floor_us, floor_us)

    def invalidate(self) -> None:
        """Records were skipped (the read position jumped): the floor must be set anew."""
        self.floor_us = None

    def add(self, batch: pa.RecordBatch) -> None:
        """Keep ``batch`` (canonical rows with ``symbol`` and ``timestamp``)."""
        if batch.num_rows == 0:
            return
        symbols = batch.column("symbol")
        first = symbols[0].as_py()
        if pc.all(pc.equal(symbols, first)).as_py():
            self._keep(str(first), batch)
            return
        for symbol in pc.unique(symbols).to_pylist():
            self._keep(str(symbol), batch.filter(pc.equal(symbols, symbol)))

    def _keep(self, symbol: str, batch: pa.RecordBatch) -> None:
        ts = batch.column("timestamp").cast(pa.int64())
        chunk = _Chunk(batch, int(pc.min(ts).as_py()), int(pc.max(ts).as_py()))
        chunks = self._symbols.setdefault(symbol, deque())
        chunks.append(chunk)
        self._arrival.append((symbol, chunk))
        self.rows += batch.num_rows
        if len(chunks) > _MAX_CHUNKS:
            self._merge(symbol)

    def _merge(self, symbol: str) -> None:
        chunks = self._symbols[symbol]
        table = pa.Table.from_batches([c.batch for c in chunks]).combine_chunks()
        merged = _Chunk(
            table.to_batches()[0] if table.num_rows else chunks[0].batch,
            min(c.min_us for c in chunks),
            max(c.max_us for c in chunks),
        )
        old = {id(c) for c in chunks}
        self._arrival = deque((s, c) for s, c in self._arrival if id(c) not in old)
        self._arrival.append((symbol, merged))
        self._symbols[symbol] = deque([merged])

    def evict(self, now_us: int) -> None:
        """Forget chunks wholly older than the window, and the oldest beyond the row
        cap; the floor rises above whatever was forgotten."""
        cutoff = now_us - self.window_us
        kept: deque[tuple[str, _Chunk]] = deque()
        raised = cutoff
        for symbol, chunk in self._arrival:
            if chunk.max_us < cutoff:
                self._forget(symbol, chunk)
            else:
                kept.append((symbol, chunk))
        while self.rows > self.max_rows and kept:
            symbol, chunk = kept.popleft()
            self._forget(symbol, chunk)
            raised = max(raised, chunk.max_us + 1)
        self._arrival = kept
        if self.floor_us is not None:
            self.floor_us = max(self.floor_us, raised)

    def _forget(self, symbol: str, chunk: _Chunk) -> None:
        chunks = self._symbols[symbol]
        chunks.remove(chunk)
        self.rows -= chunk.batch.num_rows
        if not chunks:
            del self._symbols[symbol]

    def cut(self) -> RecentCut | None:
        """An immutable view (zero-copy tables per symbol), or ``None`` without a floor."""
        if self.floor_us is None:
            return None
        return RecentCut(
            floor_us=self.floor_us,
            by_symbol={
                s: pa.Table.from_batches([c.batch for c in chunks])
                for s, chunks in self._symbols.items()
            },
        )


_TS = pa.timestamp("us", tz="UTC")


def answer(
    cut: RecentCut,
    symbols: tuple[str, ...],
    start_us: int,
    end_us: int | None,
    exchange: str | None,
    schema: pa.Schema,
) -> pa.Table | None:
    """Every row (``schema``) of ``symbols`` with ``start_us <= timestamp < end_us`` from ``cut``
    alone, each message once (unordered); ``None`` when the cut cannot answer: the window
    starts below the floor, or the log held a message twice (the engine's merge handles
    that). A symbol with no rows in the cut has none in the window (whether it exists at
    all is for the engine to judge).
    """
    present = [s for s in symbols if s in cut.by_symbol]
    if start_us < cut.floor_us:
        return None
    if not present:
        return schema.empty_table()
    lo = pa.scalar(start_us, _TS)
    hi = pa.scalar(end_us, _TS) if end_us is not None else None
    parts = []
    for symbol in present:
        rows = cut.by_symbol[symbol]
        ts = rows.column("timestamp")
        mask = pc.greater_equal(ts, lo)
        if hi is not None:
            mask = pc.and_(mask, pc.less(ts, hi))
        if exchange is not None:
            mask = pc.and_(mask, pc.equal(rows.column("exchange"), exchange))
        parts.append(rows.filter(mask))
    found = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    if found.num_rows > 1:
        distinct = pc.count_distinct(found.column("message_id")).as_py()
        if distinct != found.num_rows:
            return None
    return found

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
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.query.base import RecentCut

#: Merge a symbol's chunks when it has more than this many (keeps queries cheap).
_MAX_CHUNKS = 32
#: Merged chunks stop growing at about this many rows, so a merge copies a bounded
#: amount and a query for the last minutes skips the older chunks by their bounds.
_CHUNK_ROWS = 65_536


@dataclass(eq=False)  # identity: chunks are removed from deques by who they are
class _Chunk:
    batch: pa.RecordBatch
    min_us: int
    max_us: int
    #: ``(first, last)`` sort keys ``(timestamp, id)`` when the chunk's rows are in key
    #: order (one exchange, ascending timestamp then id); ``None`` otherwise.
    keys: tuple[tuple[int, int], tuple[int, int]] | None = None


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
        # Per symbol: are its chunks in key order (kept up to date as chunks come)?
        self._ordered: dict[str, bool] = {}
        self._arrival: deque[tuple[str, _Chunk]] = deque()
        self.rows = 0
        # What cut() built per symbol, reused until the symbol's chunks change (a cut
        # is made at every tail publication; most symbols did not change since the last).
        self._built: dict[
            str, tuple[pa.Table, tuple[tuple[int, int], ...], tuple[pa.RecordBatch, ...]]
        ] = {}

    @property
    def needs_floor(self) -> bool:
        """True until the tail has told the store where the lake ended."""
        return self.floor_us is None

    def set_floor(self, floor_us: int) -> None:
        """Every record with ``timestamp >= floor_us`` from now on is read by the tail."""
        self.floor_us = floor_us if self.floor_us is None else max(self.floor_us, floor_us)

    def seed(self, rows: pa.Table, floor_us: int) -> None:
        """Start from ``rows`` (the lake's records with ``timestamp >= floor_us``, read
        when the tail starts) and ``floor_us``: a freshly started tail then answers
        recent windows at once instead of only those after its first read. Only into an
        empty store that has no floor yet."""
        if self.rows or self.floor_us is not None:
            raise ValueError("seed() is for an empty store without a floor")
        if rows.num_rows:
            keys = [("symbol", "ascending"), ("timestamp", "ascending"),
                    (_id_column(rows), "ascending")]  # fmt: skip
            for batch in rows.sort_by(keys).combine_chunks().to_batches():
                self.add(batch)
        self.floor_us = floor_us

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
        chunk = _Chunk(
            batch, int(pc.min(ts).as_py()), int(pc.max(ts).as_py()), _ordered_keys(batch, ts)
        )
        chunks = self._symbols.setdefault(symbol, deque())
        if chunks:
            was = self._ordered.get(symbol, False)
            self._ordered[symbol] = was and _in_order((chunks[-1], chunk))
        else:
            self._ordered[symbol] = _in_order((chunk,))
        chunks.append(chunk)
        self._built.pop(symbol, None)
        self._arrival.append((symbol, chunk))
        self.rows += batch.num_rows
        if len(chunks) > _MAX_CHUNKS:
            self._merge(symbol)

    def _merge(self, symbol: str) -> None:
        """Merge runs of adjacent chunks, oldest first, into chunks of at most about
        ``_CHUNK_ROWS`` rows (size-tiered: each row is copied a few times, not at every
        merge, and the newest chunks stay small and cheap to skip)."""
        chunks = list(self._symbols[symbol])
        groups: list[list[_Chunk]] = [[]]
        for chunk in chunks:
            group = groups[-1]
            size = sum(c.batch.num_rows for c in group)
            if group and size + chunk.batch.num_rows > _CHUNK_ROWS:
                groups.append([chunk])
            else:
                group.append(chunk)
        if len(groups) == len(chunks):
            return  # every chunk is already full-sized
        merged: list[_Chunk] = []
        replaced: dict[int, _Chunk] = {}
        for group in groups:
            if len(group) == 1:
                merged.append(group[0])
                continue
            table = pa.Table.from_batches([c.batch for c in group]).combine_chunks()
            one = _Chunk(
                table.to_batches()[0] if table.num_rows else group[0].batch,
                min(c.min_us for c in group),
                max(c.max_us for c in group),
                _joined_keys(group),
            )
            merged.append(one)
            for c in group:
                replaced[id(c)] = one
        arrival: deque[tuple[str, _Chunk]] = deque()
        placed: set[int] = set()
        for s, c in self._arrival:
            target = replaced.get(id(c)) if s == symbol else None
            if target is None:
                arrival.append((s, c))
            elif id(target) not in placed:  # a merged chunk goes where its oldest part was
                placed.add(id(target))
                arrival.append((s, target))
        self._arrival = arrival
        self._symbols[symbol] = deque(merged)
        self._built.pop(symbol, None)

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
        self._built.pop(symbol, None)
        self.rows -= chunk.batch.num_rows
        if not chunks:
            del self._symbols[symbol]
            self._ordered.pop(symbol, None)
        elif not self._ordered.get(symbol, False):
            # The chunk out of order may have been the one forgotten.
            self._ordered[symbol] = _in_order(chunks)

    def cut(self) -> RecentCut | None:
        """An immutable view (zero-copy tables per symbol), or ``None`` without a floor."""
        if self.floor_us is None:
            return None
        built = self._built
        for s, chunks in self._symbols.items():
            if s not in built:
                batches = tuple(c.batch for c in chunks)
                bounds = tuple((c.min_us, c.max_us) for c in chunks)
                built[s] = (pa.Table.from_batches(batches), bounds, batches)
        return RecentCut(
            floor_us=self.floor_us,
            by_symbol={s: b[0] for s, b in built.items()},
            bounds={s: b[1] for s, b in built.items()},
            ordered=frozenset(s for s, ok in self._ordered.items() if ok),
            batches={s: b[2] for s, b in built.items()},
        )


_TS = pa.timestamp("us", tz="UTC")


def _id_column(batch: pa.RecordBatch | pa.Table) -> str:
    return "trade_id" if "trade_id" in batch.schema.names else "update_id"


def _ordered_keys(
    batch: pa.RecordBatch, ts: pa.Array
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The first and last ``(timestamp, id)`` of ``batch`` if its rows are in key order
    (one exchange, timestamps ascending, ids ascending within a timestamp), else None."""
    n = batch.num_rows
    ids = batch.column(_id_column(batch))
    exchange = batch.column("exchange")
    if ids.null_count or ts.null_count or pc.count_distinct(exchange).as_py() != 1:
        return None
    if n > 1:
        dt = pc.pairwise_diff(ts).slice(1)
        di = pc.pairwise_diff(ids).slice(1)
        ok = pc.or_(pc.greater(dt, 0), pc.and_(pc.equal(dt, 0), pc.greater(di, 0)))
        if not pc.all(ok).as_py():
            return None
    return (ts[0].as_py(), ids[0].as_py()), (ts[n - 1].as_py(), ids[n - 1].as_py())


def _joined_keys(group: list[_Chunk]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The keys of ``group`` merged into one chunk: in order only if all of it is."""
    first, last = group[0].keys, group[-1].keys
    if first is None or last is None or not _in_order(group):
        return None
    return first[0], last[1]


def _in_order(chunks: Iterable[_Chunk]) -> bool:
    """Every chunk in key order, and each chunk's keys above the previous chunk's."""
    last: tuple[int, int] | None = None
    exchange: str | None = None
    for chunk in chunks:
        if chunk.keys is None:
            return False
        first_key, last_key = chunk.keys
        if last is not None and first_key <= last:
            return False
        name = chunk.batch.column("exchange")[0].as_py() if chunk.batch.num_rows else exchange
        if exchange is not None and name != exchange:
            return False
        exchange, last = name, last_key
    return True


def answer(
    cut: RecentCut,
    symbols: tuple[str, ...],
    start_us: int,
    end_us: int | None,
    exchange: str | None,
    schema: pa.Schema,
    *,
    check_unique: bool = True,
) -> pa.Table | None:
    """Every row (``schema``) of ``symbols`` with ``start_us <= timestamp < end_us`` from ``cut``
    alone (unordered); ``None`` when the cut cannot answer: the window starts below the
    floor, or (``check_unique``) the log held a message twice (the engine's merge handles
    that; a caller that only needs some rows may check those itself, see :func:`top`).
    A symbol with no rows in the cut has none in the window (whether it exists at all is
    for the engine to judge). Chunks wholly outside the window are not read.
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
        rows = _overlapping(cut, symbol, start_us, end_us)
        if rows.num_rows == 0:
            continue
        ts = rows.column("timestamp")
        mask = pc.greater_equal(ts, lo)
        if hi is not None:
            mask = pc.and_(mask, pc.less(ts, hi))
        if exchange is not None:
            mask = pc.and_(mask, pc.equal(rows.column("exchange"), exchange))
        parts.append(rows.filter(mask))
    if not parts:
        return schema.empty_table()
    found = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    if check_unique and not _unique(found):
        return None
    return found


def top(rows: pa.Table, keys: list[tuple[str, str]], k: int) -> pa.Table | None:
    """The first ``k`` of ``rows`` in the order of ``keys`` (``(column, "ascending" |
    "descending")``), sorted, without sorting all of them; ``None`` if a message appears
    twice among them (the caller then takes the path that removes duplicates)."""
    if rows.num_rows > k:
        rows = rows.take(pc.select_k_unstable(rows, k=k, sort_keys=keys))
    rows = rows.sort_by(keys)
    return rows if _unique(rows) else None


def newest(
    cut: RecentCut, symbol: str, start_us: int, end_us: int | None, k: int, descending: bool
) -> pa.Table | None:
    """The first ``k`` rows of ``symbol`` in ``[start_us, end_us)``, in key order
    (descending: newest first), read straight off the ends of the window when the cut
    holds ``symbol`` in key order (the usual case: the log delivers a symbol in order);
    ``None`` otherwise, or when the window starts below the floor. Cost: two binary
    searches per chunk met, and the rows returned."""
    if start_us < cut.floor_us or symbol not in cut.ordered:
        return None
    rows = cut.by_symbol[symbol]
    bounds = cut.bounds.get(symbol, ())
    chunks = rows.column(0).num_chunks if rows.num_columns else 0
    if len(bounds) != chunks:
        return None
    batches = cut.batches.get(symbol)
    if batches is not None and len(batches) != chunks:
        batches = None
    order = range(chunks - 1, -1, -1) if descending else range(chunks)
    picked: list[pa.RecordBatch] = []
    need = k
    for i in order:
        low, high = bounds[i]
        if high < start_us or (end_us is not None and low >= end_us):
            if descending and high < start_us:
                break
            if not descending and end_us is not None and low >= end_us:
                break
            continue
        batch = batches[i] if batches is not None else _batch(rows, i)
        ts = _micros(batch.column("timestamp"))
        lo = _search(ts, start_us)
        hi = _search(ts, end_us) if end_us is not None else len(ts)
        take = min(need, hi - lo)
        if take <= 0:
            continue
        part = batch.slice(hi - take, take) if descending else batch.slice(lo, take)
        picked.append(part)
        need -= take
        if need == 0:
            break
    if not picked:
        return rows.schema.empty_table()
    if descending:
        one = picked[0] if len(picked) == 1 else pa.concat_batches(picked[::-1])
        backwards = pa.array(np.arange(one.num_rows - 1, -1, -1, dtype=np.int64))
        return pa.Table.from_batches([one.take(backwards)], schema=rows.schema)
    return pa.Table.from_batches(picked, schema=rows.schema)


def _micros(ts: pa.Array) -> np.ndarray:
    """A timestamp[us] chunk's values as int64 µs, without copying (no kernel call: a
    cast here showed as a quarter of the API's recent-trades CPU, mostly GIL hand-offs)."""
    if ts.null_count:  # the store's timestamps are required; keep a correct slow path
        ts = ts.cast(pa.int64()).fill_null(np.iinfo(np.int64).min)
    values: np.ndarray = ts.view(pa.int64()).to_numpy(zero_copy_only=True)
    return values


def _search(ts: np.ndarray, value: int) -> int:
    """The first index of sorted ``ts`` (int64 µs) whose value is >= ``value``."""
    return int(np.searchsorted(ts, value, side="left"))


def _unique(rows: pa.Table) -> bool:
    if rows.num_rows < 2:
        return True
    return bool(pc.count_distinct(rows.column("message_id")).as_py() == rows.num_rows)


def _overlapping(cut: RecentCut, symbol: str, start_us: int, end_us: int | None) -> pa.Table:
    """``symbol``'s rows in the chunks whose time bounds meet the window."""
    rows = cut.by_symbol[symbol]
    bounds = cut.bounds.get(symbol)
    if not bounds or rows.num_columns == 0 or len(bounds) != rows.column(0).num_chunks:
        return rows
    keep = [
        i
        for i, (low, high) in enumerate(bounds)
        if high >= start_us and (end_us is None or low < end_us)
    ]
    if len(keep) == len(bounds):
        return rows
    return pa.Table.from_batches([_batch(rows, i) for i in keep], schema=rows.schema)


def _batch(rows: pa.Table, i: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([c.chunk(i) for c in rows.columns], schema=rows.schema)

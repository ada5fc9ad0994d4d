"""Sliding-window deduplication of canonical batches, in bounded memory.

A message is identified by ``message_id = exchange:SYMBOL:native_id``; since the
exchange and symbol are columns of every batch, keying on the integer native id per
``(exchange, symbol)`` is equivalent and far cheaper than hashing strings.

Per ``(exchange, symbol)`` the ids seen are kept as sorted, disjoint *runs* of
consecutive ids (an interval set). Binance trade ids are contiguous, so an in-order
trade stream is one run whose end moves forward: O(1) memory, and O(1) state change
per batch. Quote update ids increase but skip, so each costs a run of its own; the
window and the cap below bound that. A run costs 24 bytes (three packed int64s).

The state is touched once per batch and per instrument, never per row, on the
common path; all per-row work is done by ``pyarrow.compute`` kernels.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import overload

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["DedupStats", "Deduplicator", "Instrument", "instrument_groups"]

#: ``(exchange, symbol)``
Instrument = tuple[str, str]

_I64 = pa.int64()


@dataclass(frozen=True, slots=True)
class DedupStats:
    """Counters of a :class:`Deduplicator` since it was created.

    ``seen`` rows examined; ``duplicates`` rows dropped; ``late`` rows passed through
    although their id is at or below an evicted id (see :class:`Deduplicator`);
    ``evicted_early`` runs evicted by the ``max_entries`` cap before their window
    ended; ``evicted_aged`` runs evicted because their window ended; ``intervals`` runs
    held now.
    """

    seen: int
    duplicates: int
    late: int
    evicted_early: int
    evicted_aged: int
    intervals: int


class _Runs:
    """The ids seen for one instrument: runs ``[starts[i], ends[i]]`` sorted by start,
    disjoint and never adjacent, each with the clock time it was last extended."""

    __slots__ = ("ends", "starts", "touched", "watermark")

    def __init__(self) -> None:
        self.starts = array("q")
        self.ends = array("q")
        self.touched = array("q")
        # Highest id ever evicted: below it, "not retained" no longer means "not seen".
        self.watermark: int | None = None

    def replace(self, starts: pa.Array, ends: pa.Array, touched: pa.Array) -> None:
        self.starts = _packed(starts)
        self.ends = _packed(ends)
        self.touched = _packed(touched)

    def drop(self, evict: pa.BooleanArray) -> int:
        """Remove the runs flagged in ``evict``; returns how many went."""
        ends = _arrow(self.ends)
        highest = pc.max(pc.filter(ends, evict)).as_py()
        if highest is None:
            return 0
        if self.watermark is None or highest > self.watermark:
            self.watermark = highest
        keep = pc.invert(evict)
        before = len(self.starts)
        self.replace(
            pc.filter(_arrow(self.starts), keep),
            pc.filter(ends, keep),
            pc.filter(_arrow(self.touched), keep),
        )
        return before - len(self.starts)


class Deduplicator:
    """Drops rows whose ``(exchange, symbol, id)`` was already seen within the window.

    - The first occurrence wins, within a batch and across batches; kept rows keep
      their order.
    - ``window_us``: a run is retained for at least ``window_us`` µs of ``clock_us``
      time after it was last extended, and evicted within ``window_us * 17 / 16``
      (eviction sweeps run every ``window_us / 16``, not per row).
    - ``max_entries``: a hard cap on runs held across all instruments. When a batch
      takes the total over it, the least recently extended runs are evicted (ties:
      lowest ids first) until 90 % of the cap remains, so the O(n log n) eviction is
      paid once per ``max_entries / 10`` new runs; these count as ``evicted_early``.
    - An id not retained but at or below the highest evicted id of its instrument is
      *late*: it may have been seen and forgotten, or it may be new — this stage cannot
      know. It is passed through as new (and remembered), and counted in
      ``stats().late``; the lake's merge on ``message_id`` is the backstop that removes
      a true duplicate there. Dropping it instead would risk losing a real message.

    ``clock_us`` returns the current time in µs (any monotonic epoch); it is read once
    per :meth:`filter` call. Not thread-safe: one deduplicator per pipeline task.
    """

    def __init__(
        self,
        *,
        window_us: int = 3_600_000_000,
        max_entries: int = 250_000,
        clock_us: Callable[[], int],
    ) -> None:
        if window_us <= 0:
            raise ValueError(f"window_us must be > 0, got {window_us}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._window_us = window_us
        self._max_entries = max_entries
        self._low_water = max_entries - max(1, max_entries // 10)
        self._sweep_every_us = max(1, window_us // 16)
        self._next_sweep_us: int | None = None
        self._clock_us = clock_us
        self._runs: dict[Instrument, _Runs] = {}
        self._intervals = 0
        self._seen = 0
        self._duplicates = 0
        self._late = 0
        self._evicted_early = 0
        self._evicted_aged = 0

    @overload
    def filter(
        self, batch: pa.RecordBatch, raw: list[bytes], id_column: str
    ) -> tuple[pa.RecordBatch, list[bytes], int]: ...

    @overload
    def filter(
        self, batch: pa.RecordBatch, raw: None, id_column: str
    ) -> tuple[pa.RecordBatch, None, int]: ...

    def filter(
        self, batch: pa.RecordBatch, raw: list[bytes] | None, id_column: str
    ) -> tuple[pa.RecordBatch, list[bytes] | None, int]:
        """Remove duplicates from ``batch`` (and from ``raw``, aligned with it).

        ``batch`` needs ``exchange`` and ``symbol`` string columns and the integer
        ``id_column`` (``trade_id`` for trades, ``update_id`` for quotes). Returns
        ``(kept, kept_raw, duplicates)``; when nothing is a duplicate, ``batch`` and
        ``raw`` come back as they are (no copy). Raises ``ValueError`` if ``raw`` is not
        aligned with ``batch`` or a key column holds a null.
        """
        rows = batch.num_rows
        if raw is not None and len(raw) != rows:
            raise ValueError(f"raw has {len(raw)} frames for a batch of {rows} rows")
        if rows == 0:
            return batch, raw, 0
        ids = batch.column(id_column)
        if ids.null_count:
            raise ValueError(f"{id_column} holds {ids.null_count} null(s)")
        if ids.type != _I64:
            ids = ids.cast(_I64)
        now = self._clock_us()

        kept_parts: list[pa.Array] = []
        dropped_any = False
        for instrument, group in instrument_groups(batch):
            group_ids = ids if group is None else pc.take(ids, group)
            kept = self._admit(instrument, group_ids, now)
            if kept is None:
                if group is not None:
                    kept_parts.append(group.cast(_I64))
                continue
            dropped_any = True
            kept_parts.append(kept if group is None else pc.take(group, kept).cast(_I64))
        self._seen += rows
        self._evict(now)
        if not dropped_any:
            return batch, raw, 0

        keep = pa.concat_arrays(kept_parts)
        if len(kept_parts) > 1:
            keep = pc.take(keep, pc.sort_indices(keep))
        duplicates = rows - len(keep)
        self._duplicates += duplicates
        kept_raw = None if raw is None else [raw[i] for i in keep.to_pylist()]
        return batch.take(keep), kept_raw, duplicates

    def seed(self, instrument: Instrument, runs: Sequence[tuple[int, int]]) -> None:
        """Mark ``instrument``'s ids in ``runs`` as seen (a restarted capture: what the
        log already holds; ascending, disjoint ``(first, last)``; the first run is taken
        to reach down to every lower id), touched now. Ignored once the instrument has
        state of its own, or if ``runs`` is empty."""
        if self._runs.get(instrument) is not None or not runs:
            return
        held = self._runs[instrument] = _Runs()
        now = self._clock_us()
        for i, (first, last) in enumerate(runs):
            held.starts.append(-(2**63) if i == 0 else first)
            held.ends.append(last)
            held.touched.append(now)
        self._intervals += len(runs)

    def stats(self) -> DedupStats:
        """A snapshot of the counters."""
        return DedupStats(
            seen=self._seen,
            duplicates=self._duplicates,
            late=self._late,
            evicted_early=self._evicted_early,
            evicted_aged=self._evicted_aged,
            intervals=self._intervals,
        )

    # -- admission -------------------------------------------------------------------

    def _admit(self, instrument: Instrument, ids: pa.Int64Array, now: int) -> pa.Array | None:
        """Record ``ids``; returns ``None`` if all are new, else the ascending positions
        (into ``ids``) of the rows to keep."""
        runs = self._runs.get(instrument)
        if runs is None:
            runs = self._runs[instrument] = _Runs()
        first = ids[0].as_py()
        top = runs.ends[-1] if runs.ends else None
        if top is None or first > top:
            if len(ids) == 1:
                self._append(runs, ids, first, None, now)
                return None
            steps = pc.pairwise_diff(ids)
            extremes = pc.min_max(steps)
            low, high = extremes["min"].as_py(), extremes["max"].as_py()
            if low > 0:
                # The common case: a strictly increasing batch above everything held.
                self._append(runs, ids, first, steps if high != 1 else None, now)
                return None
        return self._admit_any(runs, ids, now)

    def _append(
        self, runs: _Runs, ids: pa.Int64Array, first: int, steps: pa.Array | None, now: int
    ) -> None:
        """Append strictly increasing ``ids``, all above the runs held. ``steps`` is their
        pairwise difference, or ``None`` when they are consecutive."""
        self._count_late(runs, ids, first)
        if steps is None:
            starts = array("q", [first])
            ends = array("q", [ids[-1].as_py()])
        else:
            starts, ends = (_packed(a) for a in _runs_of(ids, steps))
        if runs.ends and starts[0] == runs.ends[-1] + 1:
            runs.ends[-1] = ends[0]
            runs.touched[-1] = now
            del starts[0], ends[0]
        runs.starts.extend(starts)
        runs.ends.extend(ends)
        runs.touched.extend(array("q", [now]) * len(starts))
        self._intervals += len(starts)

    def _admit_any(self, runs: _Runs, ids: pa.Int64Array, now: int) -> pa.Array | None:
        """The general case: any order, duplicates within the batch or with the state."""
        order = pc.sort_indices(ids)  # stable: equal ids keep arrival order
        ordered = pc.take(ids, order)
        first_of_value = pc.fill_null(pc.not_equal(pc.pairwise_diff(ordered), 0), True)
        unique = pc.filter(ordered, first_of_value)
        position = pc.filter(order, first_of_value).cast(_I64)
        if runs.starts:
            ends = _arrow(runs.ends)
            after = pc.search_sorted(_arrow(runs.starts), unique, side="right").cast(_I64)
            has_run = pc.greater(after, 0)
            run_end = pc.take(ends, pc.if_else(has_run, pc.subtract(after, 1), 0))
            fresh = pc.invert(pc.and_(has_run, pc.greater_equal(run_end, unique)))
            unique = pc.filter(unique, fresh)
            position = pc.filter(position, fresh)
        if len(unique):
            self._count_late(runs, unique, unique[0].as_py())
            self._merge(runs, unique, now)
        if len(position) == len(ids):
            return None
        return pc.take(position, pc.sort_indices(position))

    def _merge(self, runs: _Runs, fresh: pa.Int64Array, now: int) -> None:
        """Merge sorted unique ids, none held yet, into the runs."""
        new_starts, new_ends = _runs_of(fresh, pc.pairwise_diff(fresh))
        starts = pa.concat_arrays([_arrow(runs.starts), new_starts])
        ends = pa.concat_arrays([_arrow(runs.ends), new_ends])
        touched = pa.concat_arrays([_arrow(runs.touched), _filled(now, len(new_starts))])
        order = pc.sort_indices(starts)
        starts, ends, touched = (pc.take(a, order) for a in (starts, ends, touched))
        # Runs are disjoint, so after sorting by start a run joins the previous one
        # exactly when it begins right after the previous one ends.
        count = len(starts)
        begins = pa.concat_arrays(
            [
                pa.array([True]),
                pc.greater(starts.slice(1), pc.add(ends.slice(0, count - 1), 1)),
            ]
        )
        closes = pa.concat_arrays([begins.slice(1), pa.array([True])])
        alone = pc.filter(pc.and_(begins, closes), begins)
        # A merged run always contains a new id, so it was extended now.
        merged_touched = pc.if_else(alone, pc.filter(touched, begins), now)
        before = len(runs.starts)
        runs.replace(pc.filter(starts, begins), pc.filter(ends, closes), merged_touched)
        self._intervals += len(runs.starts) - before

    def _count_late(self, runs: _Runs, ids: pa.Int64Array, lowest: int) -> None:
        if runs.watermark is not None and lowest <= runs.watermark:
            self._late += pc.sum(pc.less_equal(ids, runs.watermark)).as_py()

    # -- eviction --------------------------------------------------------------------

    def _evict(self, now: int) -> None:
        if self._next_sweep_us is None or now >= self._next_sweep_us:
            self._next_sweep_us = now + self._sweep_every_us
            cutoff = now - self._window_us
            for runs in self._runs.values():
                if runs.touched:
                    gone = runs.drop(pc.less(_arrow(runs.touched), cutoff))
                    self._intervals -= gone
                    self._evicted_aged += gone
        if self._intervals > self._max_entries:
            self._evict_oldest(self._intervals - self._low_water)

    def _evict_oldest(self, count: int) -> None:
        held = [runs for runs in self._runs.values() if runs.starts]
        table = pa.table(
            {
                "touched": pa.concat_arrays([_arrow(r.touched) for r in held]),
                "start": pa.concat_arrays([_arrow(r.starts) for r in held]),
            }
        )
        victims = pc.sort_indices(
            table, sort_keys=[("touched", "ascending"), ("start", "ascending")]
        ).slice(0, count)
        evict = pc.is_in(_arange(table.num_rows), value_set=victims.cast(_I64))
        offset = 0
        for runs in held:
            size = len(runs.starts)
            gone = runs.drop(evict.slice(offset, size))
            offset += size
            self._intervals -= gone
            self._evicted_early += gone


def instrument_groups(batch: pa.RecordBatch) -> list[tuple[Instrument, pa.Array | None]]:
    """The rows of ``batch`` per ``(exchange, symbol)``.

    Each group's row indices are ascending (batch order); ``None`` stands for "every
    row" when the batch holds a single instrument, the common case. Groups come in
    order of first appearance. Raises ``ValueError`` on a null exchange or symbol.
    """
    exchange = batch.column("exchange")
    symbol = batch.column("symbol")
    if exchange.null_count or symbol.null_count:
        raise ValueError("exchange and symbol must not be null")
    exchanges = pc.unique(exchange)
    if len(exchanges) == 1:
        encoded = pc.dictionary_encode(symbol)
        only = exchanges[0].as_py()
        names: list[Instrument] = [(only, s) for s in encoded.dictionary.to_pylist()]
    else:
        # "\x1f" (unit separator) cannot occur in an exchange name.
        encoded = pc.dictionary_encode(pc.binary_join_element_wise(exchange, symbol, "\x1f"))
        names = []
        for joined in encoded.dictionary.to_pylist():
            name, sym = joined.split("\x1f", 1)
            names.append((name, sym))
    if len(names) == 1:
        return [(names[0], None)]
    codes = encoded.indices
    order = pc.sort_indices(codes)  # stable: batch order within each group
    sizes = dict.fromkeys(range(len(names)), 0)
    for entry in pc.value_counts(codes).to_pylist():
        sizes[entry["values"]] = entry["counts"]
    groups: list[tuple[Instrument, pa.Array | None]] = []
    offset = 0
    for code, name in enumerate(names):
        groups.append((name, order.slice(offset, sizes[code])))
        offset += sizes[code]
    return groups


def _runs_of(ids: pa.Int64Array, steps: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(starts, ends) of the runs of consecutive values in ascending ``ids``."""
    breaks = pc.indices_nonzero(pc.not_equal(steps, 1)).cast(_I64)
    starts = pa.concat_arrays([ids.slice(0, 1), pc.take(ids, breaks)])
    ends = pa.concat_arrays([pc.take(ids, pc.subtract(breaks, 1)), ids.slice(len(ids) - 1)])
    return starts, ends


def _arrow(values: array[int]) -> pa.Array:
    # A copy, not a view: a view would pin the array's buffer and forbid resizing it.
    return pa.Array.from_buffers(_I64, len(values), [None, pa.py_buffer(values.tobytes())])


def _packed(values: pa.Array) -> array[int]:
    out = array("q")
    if len(values):
        if values.null_count:
            raise ValueError("unexpected null in an id run")
        start = values.offset * 8
        out.frombytes(memoryview(values.buffers()[1])[start : start + len(values) * 8])
    return out


def _filled(value: int, count: int) -> pa.Array:
    return pc.fill_null(pa.nulls(count, _I64), value)


def _arange(count: int) -> pa.Array:
    return pc.subtract(pc.cumulative_sum(_filled(1, count)), 1)

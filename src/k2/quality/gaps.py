"""Trade-id gap detection and repair.

Binance trade ids are contiguous per symbol, so a missing id is a missing trade.
Detection and repair are separate:

- :class:`GapDetector` is pure bookkeeping over batches (no I/O): it notices missing
  runs of ids, waits ``grace_us`` for late (reordered) trades to fill them, and hands
  over the runs still missing after that, each exactly once.
- :class:`GapRepairer` fetches a handed-over run from the exchange's REST history
  through an injected ``fetch`` and reports what became of it as a GAP record.

The contract between them and the pipeline::

    detector.observe(live_trades)            # after dedup, for every live batch
    for gap in detector.due():               # periodically
        trades, record = await repairer.repair(gap)
        # trades go back through dedup, then detector.observe(trades), then the log;
        # record goes to the gap table whatever its status
    # at shutdown, per instrument: repairer.fetch_after(symbol, detector.tail(...), now)

Feeding repaired trades to :meth:`GapDetector.observe` is required so that every
trade K2 logs has passed the same stages. It is always safe: a handed-over run is no
longer pending, so its ids are recognised as already accounted for (``stale``) and can
never reopen a gap, however late the repair lands, and a live trade of that run that
arrives after the hand-over is likewise stale (dedup drops whichever copy is second).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import RateLimited, TerminalError, TransientError
from k2.ops.log import get_logger
from k2.quality.dedup import Instrument, instrument_groups
from k2.records import TRADE

__all__ = ["Fetch", "GapDetector", "GapRange", "GapRepairer", "GapStats", "gap_record"]

_log = get_logger(__name__)
_I64 = pa.int64()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: ``fetch(symbol, from_id, limit)``: up to ``limit`` (<= 1000) trades of ``symbol`` with
#: ``trade_id >= from_id``, ascending, as a TRADE batch (the exchange's REST history).
#: Raises :class:`~k2.errors.TransientError` or :class:`~k2.errors.TerminalError`.
Fetch = Callable[[str, int, int], Awaitable[pa.RecordBatch]]


@dataclass(frozen=True, slots=True)
class GapRange:
    """Missing trade ids ``first_missing_id..last_missing_id`` (inclusive) of one
    instrument, first noticed at ``detected_at_us`` (UTC µs, the detector's clock)."""

    exchange: str
    symbol: str
    first_missing_id: int
    last_missing_id: int
    detected_at_us: int

    @property
    def size(self) -> int:
        """How many ids are missing."""
        return self.last_missing_id - self.first_missing_id + 1


@dataclass(frozen=True, slots=True)
class GapStats:
    """Counters of a :class:`GapDetector` since it was created.

    ``opened`` missing runs noticed; ``handed_over`` runs returned by ``due()``;
    ``filled_late`` pending runs that late trades filled completely before they were
    due (a run split by a late trade counts as two); ``late_ids`` trades that filled a
    pending id; ``stale`` trades at or below the highest id seen that filled nothing
    (duplicates, repaired trades, trades older than the first one seen);
    ``pending`` runs waiting now.
    """

    opened: int
    handed_over: int
    filled_late: int
    late_ids: int
    stale: int
    pending: int


class _Track:
    """One instrument: the highest id seen, and the missing runs below it, sorted,
    each as ``[first, last, detected_at_us]``."""

    __slots__ = ("pending", "top")

    def __init__(self, top: int) -> None:
        self.top = top
        self.pending: list[list[int]] = []


class GapDetector:
    """Finds missing trade ids per ``(exchange, symbol)``.

    - The first batch of an instrument sets its baseline at its lowest id: nothing
      before it is a gap (K2 cannot know where the stream "should" start).
    - An id above the highest seen, skipping ids, opens a pending gap for the skipped
      run, stamped with the current ``clock_us()``. Late trades filling part of it
      shrink or split it (the pieces keep the original stamp); filling all of it
      removes it, counted as ``filled_late``.
    - A pending run is *due* once ``clock_us() >= detected_at_us + grace_us``;
      :meth:`due` hands it over exactly once and forgets it.

    State is the highest id seen plus the pending runs, so an in-order stream costs
    O(1) memory and one vectorised check per batch. Not thread-safe.
    """

    def __init__(self, *, grace_us: int, clock_us: Callable[[], int]) -> None:
        if grace_us < 0:
            raise ValueError(f"grace_us must be >= 0, got {grace_us}")
        self._grace_us = grace_us
        self._clock_us = clock_us
        self._tracks: dict[Instrument, _Track] = {}
        self._opened = 0
        self._handed_over = 0
        self._filled_late = 0
        self._late_ids = 0
        self._stale = 0

    def observe(self, trades: pa.RecordBatch) -> None:
        """Account for the ``trade_id`` s of a TRADE batch (any order, any instruments).

        Raises ``ValueError`` on a null ``trade_id``, ``exchange`` or ``symbol``.
        """
        if trades.num_rows == 0:
            return
        ids = trades.column("trade_id")
        if ids.null_count:
            raise ValueError(f"trade_id holds {ids.null_count} null(s)")
        if ids.type != _I64:
            ids = ids.cast(_I64)
        now: int | None = None
        for instrument, group in instrument_groups(trades):
            group_ids = ids if group is None else pc.take(ids, group)
            track = self._tracks.get(instrument)
            if track is None:
                track = self._tracks[instrument] = _Track(pc.min(group_ids).as_py() - 1)
            if not track.pending and group_ids[0].as_py() == track.top + 1:
                if len(group_ids) == 1:
                    track.top += 1
                    continue
                extremes = pc.min_max(pc.pairwise_diff(group_ids))
                if extremes["min"].as_py() == 1 and extremes["max"].as_py() == 1:
                    # The common case: the next consecutive ids, nothing pending.
                    track.top = group_ids[-1].as_py()
                    continue
            if now is None:
                now = self._clock_us()
            self._observe_any(track, group_ids, now)

    def seed(
        self, instrument: Instrument, last_id: int, holes: Sequence[tuple[int, int]] = ()
    ) -> None:
        """Start ``instrument`` after ``last_id`` (a restarted capture: the highest id
        the log already holds), so the first id received above ``last_id + 1`` opens a
        gap instead of setting the baseline. ``holes``, ``(first, last)`` ranges below
        ``last_id`` that the log lacks, become pending gaps detected now. Ignored once
        the instrument has been seen."""
        if instrument in self._tracks:
            return
        track = self._tracks[instrument] = _Track(last_id)
        if holes:
            now = self._clock_us()
            track.pending = [[first, last, now] for first, last in sorted(holes)]
            self._opened += len(holes)

    def due(self, *, force: bool = False) -> list[GapRange]:
        """Hand over the pending runs whose grace has passed, oldest first.

        ``force=True`` hands over every pending run, grace or not: at shutdown, when
        the stream can no longer fill them. Each run is returned once; the detector
        then forgets it (see the module docstring for what happens to trades of that
        run observed later).
        """
        cutoff = self._clock_us() - self._grace_us
        ready: list[GapRange] = []
        for (exchange, symbol), track in self._tracks.items():
            if not track.pending:
                continue
            waiting: list[list[int]] = []
            for first, last, detected in track.pending:
                if force or detected <= cutoff:
                    ready.append(GapRange(exchange, symbol, first, last, detected))
                else:
                    waiting.append([first, last, detected])
            track.pending = waiting
        self._handed_over += len(ready)
        ready.sort(key=lambda g: (g.detected_at_us, g.exchange, g.symbol, g.first_missing_id))
        return ready

    def pending(self) -> list[GapRange]:
        """The runs still within their grace (not handed over), oldest first."""
        runs = [
            GapRange(exchange, symbol, first, last, detected)
            for (exchange, symbol), track in self._tracks.items()
            for first, last, detected in track.pending
        ]
        runs.sort(key=lambda g: (g.detected_at_us, g.exchange, g.symbol, g.first_missing_id))
        return runs

    def tail(self, exchange: str, symbol: str) -> int | None:
        """The highest trade id seen for the instrument, or ``None`` if none was seen.

        At shutdown, trades after it can be fetched with :meth:`GapRepairer.fetch_after`.
        """
        track = self._tracks.get((exchange, symbol))
        return None if track is None else track.top

    def tails(self) -> dict[Instrument, int]:
        """:meth:`tail` of every instrument seen."""
        return {instrument: track.top for instrument, track in self._tracks.items()}

    def stats(self) -> GapStats:
        """A snapshot of the counters."""
        return GapStats(
            opened=self._opened,
            handed_over=self._handed_over,
            filled_late=self._filled_late,
            late_ids=self._late_ids,
            stale=self._stale,
            pending=sum(len(t.pending) for t in self._tracks.values()),
        )

    def _observe_any(self, track: _Track, ids: pa.Int64Array, now: int) -> None:
        unique = pc.unique(ids)
        unique = pc.take(unique, pc.sort_indices(unique))
        is_above = pc.greater(unique, track.top)
        below = pc.filter(unique, pc.invert(is_above))
        above = pc.filter(unique, is_above)
        if len(below):
            filled = self._fill(track, below) if track.pending else 0
            self._stale += len(below) - filled
        if len(above):
            chain = pa.concat_arrays([pa.array([track.top], _I64), above])
            holes = pc.indices_nonzero(pc.greater(pc.pairwise_diff(chain), 1)).cast(_I64)
            before = pc.take(chain, pc.subtract(holes, 1)).to_pylist()
            after = pc.take(chain, holes).to_pylist()
            for low, high in zip(before, after, strict=True):
                track.pending.append([low + 1, high - 1, now])
            self._opened += len(before)
            track.top = above[-1].as_py()

    def _fill(self, track: _Track, below: pa.Int64Array) -> int:
        """Remove the sorted ids ``below`` from the pending runs; returns how many
        filled a pending id."""
        firsts = pa.array([run[0] for run in track.pending], _I64)
        lasts = pa.array([run[1] for run in track.pending], _I64)
        lows = pc.search_sorted(below, firsts, side="left").to_pylist()
        highs = pc.search_sorted(below, lasts, side="right").to_pylist()
        filled = 0
        remaining: list[list[int]] = []
        for (first, last, detected), low, high in zip(track.pending, lows, highs, strict=True):
            if low == high:
                remaining.append([first, last, detected])
                continue
            filled += high - low
            pieces = 0
            cursor = first
            for arrived in below.slice(low, high - low).to_pylist():
                if arrived > cursor:
                    remaining.append([cursor, arrived - 1, detected])
                    pieces += 1
                cursor = arrived + 1
            if cursor <= last:
                remaining.append([cursor, last, detected])
                pieces += 1
            if pieces == 0:
                self._filled_late += 1
        track.pending = remaining
        self._late_ids += filled
        return filled


class _GaveUp(TransientError):
    """A transient error persisted through every attempt."""

    def __init__(self, cause: TransientError, attempts: int) -> None:
        super().__init__(f"{type(cause).__name__}: {cause} (gave up after {attempts} attempt(s))")
        self.cause = cause
        self.attempts = attempts


class GapRepairer:
    """Recovers missing trades from the exchange's REST trade history.

    ``fetch`` is the exchange's history call (see :data:`Fetch`); ``page_limit`` the
    most ids asked per call (Binance allows 1000). A :class:`~k2.errors.TransientError`
    is retried up to ``max_attempts`` calls in all, waiting ``retry_delay_s`` doubled
    each time up to ``max_retry_delay_s`` (or the server's ``retry_after``, if longer)
    through the injected ``sleep``; a ban (``RateLimited(banned=True)``) is not retried.
    ``clock_us`` (UTC µs) stamps ``resolved_at``.

    Work per call is one page (at most ``page_limit`` rows) of vectorised Arrow
    operations between awaits, so a repair never holds the event loop for long.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        max_attempts: int = 3,
        clock_us: Callable[[], int],
        page_limit: int = 1000,
        retry_delay_s: float = 0.5,
        max_retry_delay_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not 1 <= page_limit <= 1000:
            raise ValueError(f"page_limit must be in 1..1000, got {page_limit}")
        self._fetch = fetch
        self._max_attempts = max_attempts
        self._clock_us = clock_us
        self._page_limit = page_limit
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._sleep = sleep

    async def repair(self, gap: GapRange) -> tuple[pa.RecordBatch, dict[str, Any]]:
        """Fetch the trades of ``gap`` and say what became of it.

        Returns ``(trades, record)``: ``trades`` holds only trades with ids inside the
        gap, ascending, as the exchange returned them; ``record`` is a dict with exactly
        the GAP record's fields (timestamps as UTC ``datetime``, as
        :func:`k2.records.rows` yields them). ``status`` is ``"repaired"`` when every
        missing id came back, else ``"unrepairable"`` with a ``reason``: the exchange
        returned fewer (history truncated, names the missing ids), a terminal error
        (e.g. :class:`~k2.errors.UnknownSymbol`), or a transient error that outlasted
        ``max_attempts``. Trades recovered before a failure are still returned.
        K2 errors are recorded, never raised; anything else is a bug and propagates.
        """
        pages: list[pa.RecordBatch] = []
        next_id = gap.first_missing_id
        failure: str | None = None
        try:
            while next_id <= gap.last_missing_id:
                limit = min(self._page_limit, gap.last_missing_id - next_id + 1)
                page = await self._fetch_page(gap.symbol, next_id, limit)
                ids = page.column("trade_id")
                page = page.filter(
                    pc.and_(
                        pc.greater_equal(ids, next_id),
                        pc.less_equal(ids, gap.last_missing_id),
                    )
                )
                if page.num_rows == 0:
                    # Nothing at or after next_id inside the gap: the exchange no
                    # longer has (or never had) the rest.
                    break
                pages.append(page)
                next_id = pc.max(page.column("trade_id")).as_py() + 1
        except _GaveUp as exc:
            failure = f"transient error: {exc}"
        except TerminalError as exc:
            failure = f"terminal error: {type(exc).__name__}: {exc}"

        trades = pa.concat_batches(pages) if pages else TRADE.empty_batch()
        recovered = pc.count_distinct(trades.column("trade_id")).as_py()
        expected = gap.size
        if failure is None and recovered < expected:
            failure = (
                f"exchange returned {recovered} of {expected} trades; missing ids "
                + _describe_missing(trades.column("trade_id"), gap)
            )
        elif failure is not None:
            failure += f"; recovered {recovered} of {expected} trades"
        record = gap_record(
            gap,
            status="repaired" if failure is None else "unrepairable",
            repaired_count=recovered,
            resolved_at_us=self._clock_us(),
            reason=failure,
        )
        log = _log.info if failure is None else _log.warning
        log(
            "gap_" + record["status"],
            exchange=gap.exchange,
            symbol=gap.symbol,
            first_missing_id=gap.first_missing_id,
            last_missing_id=gap.last_missing_id,
            repaired_count=recovered,
            reason=failure,
        )
        return trades, record

    async def fetch_after(self, symbol: str, after_id: int, until_us: int | None) -> pa.RecordBatch:
        """Trades of ``symbol`` with ``trade_id > after_id``, ascending.

        Pages until the exchange returns fewer than ``page_limit`` trades (the end of
        its history), or a trade whose ``timestamp`` is later than ``until_us`` (UTC µs;
        that trade and later ones are left out; ``None``: no time bound). Raises
        :class:`~k2.errors.TerminalError`, or :class:`~k2.errors.TransientError` once
        ``max_attempts`` are spent; the caller records it (e.g. as an unrepairable
        gap after ``after_id``).
        """
        pages: list[pa.RecordBatch] = []
        next_id = after_id + 1
        while True:
            page = await self._fetch_page(symbol, next_id, self._page_limit)
            full = page.num_rows >= self._page_limit
            page = page.filter(pc.greater_equal(page.column("trade_id"), next_id))
            newer_seen = False
            if until_us is not None and page.num_rows:
                trade_us = page.column("timestamp").cast(_I64)
                newer = pc.greater(trade_us, until_us)
                newer_seen = bool(pc.any(newer).as_py())
                if newer_seen:
                    page = page.filter(pc.invert(newer))
            if page.num_rows:
                pages.append(page)
                next_id = pc.max(page.column("trade_id")).as_py() + 1
            if newer_seen or not full or page.num_rows == 0:
                break
        return pa.concat_batches(pages) if pages else TRADE.empty_batch()

    async def _fetch_page(self, symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._fetch(symbol, from_id, limit)
            except TransientError as exc:
                banned = isinstance(exc, RateLimited) and exc.banned
                if banned or attempt >= self._max_attempts:
                    raise _GaveUp(exc, attempt) from exc
                delay = min(self._max_retry_delay_s, self._retry_delay_s * 2 ** (attempt - 1))
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                _log.info(
                    "gap_fetch_retry",
                    symbol=symbol,
                    from_id=from_id,
                    attempt=attempt,
                    delay_s=delay,
                    error=str(exc),
                )
                await self._sleep(delay)


def gap_record(
    gap: GapRange,
    *,
    status: str = "detected",
    repaired_count: int = 0,
    resolved_at_us: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """``gap`` as a dict with exactly the fields of :data:`k2.records.GAP`.

    Timestamps are UTC ``datetime`` s (as :func:`k2.records.rows` yields them), so
    ``pa.RecordBatch.from_pylist(records, schema=GAP.arrow_schema())`` loads them. The
    default is a ``"detected"`` record, for writing a gap down before its repair.
    """
    return {
        "exchange": gap.exchange,
        "symbol": gap.symbol,
        "first_missing_id": gap.first_missing_id,
        "last_missing_id": gap.last_missing_id,
        "detected_at": _datetime(gap.detected_at_us),
        "status": status,
        "repaired_count": repaired_count,
        "resolved_at": None if resolved_at_us is None else _datetime(resolved_at_us),
        "reason": reason,
    }


def _describe_missing(ids: pa.Array, gap: GapRange, shown: int = 3) -> str:
    """The ids of ``gap`` absent from ``ids``, as ranges: ``"5-7, 9, ... (4 ranges)"``."""
    present = pc.unique(ids.cast(_I64))
    present = pc.take(present, pc.sort_indices(present))
    chain = pa.concat_arrays(
        [
            pa.array([gap.first_missing_id - 1], _I64),
            present,
            pa.array([gap.last_missing_id + 1], _I64),
        ]
    )
    holes = pc.indices_nonzero(pc.greater(pc.pairwise_diff(chain), 1)).cast(_I64)
    lows = pc.take(chain, pc.subtract(holes, 1)).to_pylist()
    highs = pc.take(chain, holes).to_pylist()
    ranges = [
        f"{low + 1}" if low + 1 == high - 1 else f"{low + 1}-{high - 1}"
        for low, high in zip(lows[:shown], highs[:shown], strict=True)
    ]
    text = ", ".join(ranges)
    if len(lows) > shown:
        text += f", ... ({len(lows)} ranges)"
    return text


def _datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)

"""The shared tape of encoded events, and the per-symbol trade history behind REST.

Every market event is encoded to JSON bytes once and appended to one :class:`Tape`;
connections read it through their own cursor (an absolute sequence number), so the
cost of an event is paid once however many clients listen. The tape keeps only its
last ``capacity`` events; a reader that falls further behind skips ahead.

:class:`TradeHistory` keeps every trade per symbol (bounded by a retention count) in
compact integer arrays, independently of the tape, so REST history can repair any
frame a connection lost.
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import NamedTuple

from k2.simulator.wire import to_microseconds

__all__ = ["Tape", "TapeRead", "TradeHistory", "TradeRow"]


class TapeRead(NamedTuple):
    """What :meth:`Tape.read` found: matching events from a cursor, in tape order.

    ``next_pos`` is where the reader continues; ``lagged`` counts events that fell off
    the tape before the reader got to them (they are not in ``streams``/``payloads``).
    """

    next_pos: int
    streams: list[str]
    payloads: list[bytes]
    lagged: int


class Tape:
    """An append-only, bounded sequence of ``(stream name, payload bytes)`` events.

    Positions are absolute (they keep counting when old events are trimmed). Payloads
    are stored with millisecond time fields; the microsecond variant is derived the
    first time any reader asks for it and then kept beside it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("tape capacity must be at least 1")
        self._capacity = capacity
        self._slack = max(1024, capacity // 8)  # trim in chunks, not per append
        self._base = 0
        self._streams: list[str] = []
        self._ms: list[bytes] = []
        self._us: list[bytes | None] = []
        self._event_us = array("q")
        self._trade_us = array("q")
        self._finished = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def head(self) -> int:
        """Position the next appended event will get (= events appended so far)."""
        return self._base + len(self._ms)

    @property
    def base(self) -> int:
        """Position of the oldest event still on the tape."""
        return self._base

    @property
    def capacity(self) -> int:
        """How many events the tape keeps."""
        return self._capacity

    @property
    def finished(self) -> bool:
        """True once a finite source has appended its last event."""
        return self._finished

    def append(
        self,
        streams: Sequence[str],
        payloads: Sequence[bytes],
        event_us: Sequence[int] | None = None,
        trade_us: Sequence[int] | None = None,
    ) -> None:
        """Append events and wake readers waiting for new data.

        ``event_us``/``trade_us`` give each event's exact ``E``/``T`` in microseconds
        (``-1`` where unknown or absent); omitted means unknown for all.
        """
        count = len(payloads)
        if len(streams) != count:
            raise ValueError("streams and payloads must have the same length")
        if self._finished:
            raise RuntimeError("cannot append to a finished tape")
        if not count:
            return
        self._streams.extend(streams)
        self._ms.extend(payloads)
        self._us.extend([None] * count)
        unknown = [-1] * count
        self._event_us.extend(event_us if event_us is not None else unknown)
        self._trade_us.extend(trade_us if trade_us is not None else unknown)
        if len(self._ms) > self._capacity + self._slack:
            self._trim()
        self._wake()

    def finish(self) -> None:
        """Mark the tape complete (a replay ran out) and wake every reader."""
        self._finished = True
        self._wake()

    async def wait_beyond(self, pos: int) -> None:
        """Return once an event at ``pos`` or later exists, or the tape is finished."""
        while pos >= self.head and not self._finished:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)

    def read(
        self,
        pos: int,
        subscriptions: Container[str],
        limit: int,
        *,
        micros: bool = False,
        starts: Mapping[str, int] | None = None,
    ) -> TapeRead:
        """Up to ``limit`` events from ``pos`` on whose stream is in ``subscriptions``.

        ``starts`` maps a stream to the first position it may be delivered from (a
        stream subscribed mid-connection starts at the head of that moment). The scan
        stops at the head or once ``limit`` events matched; events skipped because they
        did not match still advance the cursor.
        """
        lagged = 0
        if pos < self._base:
            lagged = self._base - pos
            pos = self._base
        index = pos - self._base
        stop = len(self._ms)
        streams = self._streams
        payloads = self._ms
        out_streams: list[str] = []
        out_payloads: list[bytes] = []
        found = 0
        base = self._base
        while index < stop and found < limit:
            stream = streams[index]
            if stream in subscriptions and (not starts or starts.get(stream, 0) <= base + index):
                out_streams.append(stream)
                out_payloads.append(self._micro(index) if micros else payloads[index])
                found += 1
            index += 1
        return TapeRead(base + index, out_streams, out_payloads, lagged)

    def _micro(self, index: int) -> bytes:
        cached = self._us[index]
        if cached is None:
            cached = to_microseconds(self._ms[index], self._event_us[index], self._trade_us[index])
            self._us[index] = cached
        return cached

    def _trim(self) -> None:
        excess = len(self._ms) - self._capacity
        del self._streams[:excess]
        del self._ms[:excess]
        del self._us[:excess]
        del self._event_us[:excess]
        del self._trade_us[:excess]
        self._base += excess

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TradeRow(NamedTuple):
    """One trade as REST returns it; prices and sizes in 1e-8 units, time in UTC µs."""

    trade_id: int
    price_units: int
    qty_units: int
    time_us: int
    buyer_maker: bool


class _SymbolTrades:
    __slots__ = ("ids", "maker", "price", "qty", "time_us")

    def __init__(self) -> None:
        self.ids = array("q")
        self.price = array("q")
        self.qty = array("q")
        self.time_us = array("q")
        self.maker = bytearray()

    def trim(self, keep: int) -> None:
        excess = len(self.ids) - keep
        if excess > 0:
            for column in (self.ids, self.price, self.qty, self.time_us, self.maker):
                del column[:excess]


class TradeHistory:
    """Trades per symbol for ``/api/v3/trades`` and ``/api/v3/historicalTrades``.

    Trades must be added in increasing id order per symbol. ``retention`` bounds how
    many are kept per symbol (``None``: all); older ones are dropped in chunks.
    """

    def __init__(self, retention: int | None) -> None:
        if retention is not None and retention < 1:
            raise ValueError("retention must be at least 1")
        self._retention = retention
        self._slack = 0 if retention is None else max(1024, retention // 16)
        self._symbols: dict[str, _SymbolTrades] = {}

    def add(
        self,
        symbol: str,
        trade_id: int,
        price_units: int,
        qty_units: int,
        time_us: int,
        buyer_maker: bool,
    ) -> None:
        """Record one trade of ``symbol`` (upper case)."""
        book = self._symbols.get(symbol)
        if book is None:
            book = self._symbols[symbol] = _SymbolTrades()
        elif book.ids and trade_id <= book.ids[-1]:
            raise ValueError(f"{symbol} trade id {trade_id} is not above {book.ids[-1]}")
        book.ids.append(trade_id)
        book.price.append(price_units)
        book.qty.append(qty_units)
        book.time_us.append(time_us)
        book.maker.append(1 if buyer_maker else 0)
        if self._retention is not None and len(book.ids) > self._retention + self._slack:
            book.trim(self._retention)

    def count(self, symbol: str) -> int:
        """How many trades of ``symbol`` are held."""
        book = self._symbols.get(symbol)
        return 0 if book is None else len(book.ids)

    def last_id(self, symbol: str) -> int | None:
        """The newest trade id held for ``symbol``, if any."""
        book = self._symbols.get(symbol)
        return book.ids[-1] if book is not None and book.ids else None

    def rows(self, symbol: str, from_id: int | None, limit: int) -> Iterator[TradeRow]:
        """Up to ``limit`` trades in increasing id order.

        With ``from_id``: the trades with id >= ``from_id``. Without: the most recent
        ``limit`` trades. An unknown symbol yields nothing.
        """
        book = self._symbols.get(symbol)
        if book is None or limit <= 0:
            return
        size = len(book.ids)
        start = max(0, size - limit) if from_id is None else bisect.bisect_left(book.ids, from_id)
        for i in range(start, min(size, start + limit)):
            yield TradeRow(
                book.ids[i], book.price[i], book.qty[i], book.time_us[i], bool(book.maker[i])
            )

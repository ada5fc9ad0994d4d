"""Binance's JSON as msgspec structs: the shapes on the wire, nothing more.

One permissive payload struct covers the spot ``trade`` and ``bookTicker`` events (and
recognises futures and control events), so a batch of mixed frames decodes with a
single decoder and no second pass. Fields keep Binance's one-letter names; ``parse``
turns them into canonical records.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

#: 9999-01-01T00:00:00Z in µs. Times at or past it do not fit a Python ``datetime``
#: once a day or two of arithmetic is done on them, so they are refused on the wire.
TIME_LIMIT_US = 253_370_764_800_000_000

#: An id that fits the ``int64`` columns it lands in (msgspec decodes any size).
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
#: A Binance time: ms or µs since 1970-01-01 (see ``parse``), before :data:`TIME_LIMIT_US`.
#: A value below 10**14 is read as ms, so its µs form is below 10**17, well inside.
Time = Annotated[int, msgspec.Meta(ge=0, lt=TIME_LIMIT_US)]


class StreamPayload(msgspec.Struct, frozen=True):
    """The ``data`` of a spot ``@trade`` or ``@bookTicker`` event (or a futures one).

    trade:      e="trade", E event time, s symbol, t trade id, p price, q quantity,
                T trade time, m buyer is maker, M best match; before June 2024 also
                b/a (buyer/seller order ids, ints). Futures trades carry X.
    bookTicker: u update id, s, b/B best bid price/qty, a/A best ask price/qty
                (strings). Futures bookTicker also carries e, E and T.
    """

    e: str | None = None
    E: Time | None = None
    s: str | None = None
    t: Int64 | None = None
    p: str | None = None
    q: str | None = None
    T: Time | None = None
    m: bool | None = None
    M: bool | None = None
    b: int | str | None = None
    a: int | str | None = None
    u: Int64 | None = None
    B: str | None = None
    A: str | None = None
    X: str | None = None


class CombinedFrame(msgspec.Struct, frozen=True):
    """A combined-stream frame: ``{"stream": "btcusdt@trade", "data": {...}}``."""

    stream: str
    data: StreamPayload


class RestTrade(msgspec.Struct, frozen=True):
    """One element of ``/api/v3/historicalTrades`` or ``/api/v3/trades``."""

    id: Int64
    price: str
    qty: str
    time: Time
    isBuyerMaker: bool
    quoteQty: str | None = None
    isBestMatch: bool | None = None


COMBINED_DECODER = msgspec.json.Decoder(CombinedFrame)
PAYLOAD_DECODER = msgspec.json.Decoder(StreamPayload)
REST_TRADES_DECODER = msgspec.json.Decoder(list[RestTrade])

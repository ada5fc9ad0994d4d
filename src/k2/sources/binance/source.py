"""Binance as a K2 :class:`~k2.sources.base.Source`: stream + REST + parser, wired.

Start-up fetches ``exchangeInfo`` for the requested symbols (an unknown symbol fails
fast with :class:`~k2.errors.UnknownSymbol`, before any connection is opened), so the
parser knows each symbol's quote currency and validation knows which symbols exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import pyarrow as pa

from k2.errors import UnknownSymbol
from k2.ops.breaker import CircuitBreaker
from k2.ops.clock import utc_now_us
from k2.quality.rejects import Reject
from k2.records import REFERENCE
from k2.sources.base import ParsedBatch
from k2.sources.binance import spec
from k2.sources.binance.parse import FrameParser, parse_rest_trades
from k2.sources.binance.reference import parse_exchange_info, symbol_quote_assets
from k2.sources.binance.rest import BinanceRest
from k2.sources.binance.ws import BinanceStream


class BinanceSource:
    """Binance spot trades and best bid/ask for ``symbols`` as canonical batches.

    ``data_types`` are K2's names (``trade``, ``quote``). URLs default to the live
    exchange; point them at the testnet or K2's simulator to capture elsewhere.
    """

    exchange = spec.EXCHANGE

    def __init__(
        self,
        symbols: Sequence[str],
        data_types: Sequence[str] = ("trade", "quote"),
        *,
        ws_url: str = spec.LIVE_WS_URL,
        rest_url: str = spec.LIVE_REST_URL,
        micros: bool = False,
        max_streams_per_connection: int = spec.MAX_STREAMS_PER_CONNECTION,
        max_connection_age_s: float = 23.5 * 3600,
        batch_max_frames: int = 5000,
        batch_max_wait_s: float = 0.05,
        clock_us: Callable[[], int] = utc_now_us,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._symbols = [s.upper() for s in symbols]
        self._data_types = list(data_types)
        self._ws_url = ws_url
        self._micros = micros
        self._max_streams = max_streams_per_connection
        self._max_age_s = max_connection_age_s
        self._batch_frames = batch_max_frames
        self._batch_wait_s = batch_max_wait_s
        self._clock_us = clock_us
        self._rest_url = rest_url
        self._breaker = breaker
        self._rest = BinanceRest(rest_url, breaker=breaker)
        self._parser = FrameParser(source="binance.ws")
        self._stream: BinanceStream | None = None
        self._reference = REFERENCE.empty_batch()
        self._known: frozenset[str] = frozenset()
        self._quote_assets: dict[str, str] = {}
        self._rest_rejects: list[Reject] = []

    @property
    def known_symbols(self) -> frozenset[str]:
        return self._known

    @property
    def reference(self) -> pa.RecordBatch:
        return self._reference

    @property
    def stream(self) -> BinanceStream | None:
        """The WebSocket client, once started (for its stats)."""
        return self._stream

    async def start(self) -> None:
        """Fetch reference data, then open the stream.

        Raises :class:`UnknownSymbol` naming every requested symbol Binance does not
        list; network trouble is retried with backoff inside the REST client.
        """
        try:
            raw = await self._rest.exchange_info(self._symbols)
        except UnknownSymbol:
            # Binance answers -1121 without naming the culprit: list everything once to
            # say exactly which requested symbols do not exist.
            everything = parse_exchange_info(await self._rest.exchange_info(), 0)
            listed = set(everything.column("symbol").to_pylist())
            missing = [s for s in self._symbols if s not in listed]
            raise UnknownSymbol(
                f"{self._rest_url} does not list: {', '.join(missing) or '?'}", code=-1121
            ) from None
        self._reference = parse_exchange_info(raw, self._clock_us())
        listed = set(self._reference.column("symbol").to_pylist())
        missing = [s for s in self._symbols if s not in listed]
        if missing:
            raise UnknownSymbol(f"{self._rest_url} does not list: {', '.join(missing)}", code=-1121)
        self._known = frozenset(listed)
        self._quote_assets = symbol_quote_assets(self._reference)
        self._parser.set_quote_assets(self._quote_assets)
        streams = spec.stream_names(self._symbols, self._data_types)
        self._stream = BinanceStream(
            self._ws_url,
            streams,
            micros=self._micros,
            max_streams_per_connection=self._max_streams,
            max_connection_age_s=self._max_age_s,
            clock_us=self._clock_us,
            breaker=self._breaker,
        )
        self._stream.start()

    async def batches(self) -> AsyncIterator[ParsedBatch]:
        """Parsed batches in arrival order until :meth:`stop` drains the stream."""
        if self._stream is None:
            raise RuntimeError("call start() first")
        async for frames in self._stream.batches(self._batch_frames, self._batch_wait_s):
            yield self._parser.parse(frames.frames, frames.received_us)

    async def fetch_trades(self, symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
        """Trades of ``symbol`` from id ``from_id`` (``historicalTrades``), in id order.

        Rows the parser rejects are kept for :meth:`take_rejects`.
        """
        raw = await self._rest.historical_trades(symbol, from_id, limit)
        batch, rejects = parse_rest_trades(
            raw, symbol, self._clock_us(), quote_assets=self._quote_assets
        )
        self._rest_rejects.extend(rejects)
        return batch

    def take_rejects(self) -> list[Reject]:
        """Rejects from REST replies since the last call."""
        rejects, self._rest_rejects = self._rest_rejects, []
        return rejects

    async def stop(self) -> None:
        """Close the stream; frames already received still come out of :meth:`batches`."""
        if self._stream is not None:
            await self._stream.stop()

    async def aclose(self) -> None:
        """Release the REST client (after the last repair)."""
        await self.stop()
        await self._rest.aclose()

"""Binance spot's public REST market-data endpoints, served from the simulator's state.

Implemented: ``GET /api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo``,
``/api/v3/trades`` and ``/api/v3/historicalTrades``, with Binance's response shapes,
error codes (-1100, -1102, -1121, -1128, -1130; -1003 for 429/418) and the
``X-MBX-USED-WEIGHT-1M`` header. Times are milliseconds unless the request carries
``X-MBX-TIME-UNIT: MICROSECOND``. Prices and sizes are strings with 8 decimals.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from k2.simulator.clock import Clock
from k2.simulator.config import UNITS_PER_ONE, SymbolSpec, to_units
from k2.simulator.faults import RestFaults
from k2.simulator.market import format_units
from k2.simulator.replay import Recording
from k2.simulator.stats import SimulatorStats
from k2.simulator.tape import TradeHistory, TradeRow

__all__ = ["RestApi", "SymbolInfo", "split_symbol", "symbols_from_recording", "symbols_from_specs"]

_WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/trades": 25,
    "/api/v3/historicalTrades": 25,
}
_WEIGHT_LIMIT = 6000
_DEFAULT_LIMIT = 500
_MAX_LIMIT = 1000

#: Quote assets recognised when splitting a symbol seen only in a capture, longest first.
_QUOTE_ASSETS = (
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "BIDR", "IDRT", "DAI", "BTC", "ETH",
    "BNB", "EUR", "GBP", "TRY", "BRL", "AUD", "RUB", "UAH", "ZAR", "JPY", "ARS", "MXN",
    "PLN", "RON", "COP", "CZK", "PAX", "XRP", "TRX", "DOGE", "DOT",
)  # fmt: skip
_MIN_NOTIONAL_BY_QUOTE = {"BTC": "0.0001", "ETH": "0.001", "BNB": "0.01"}
_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]
_ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"]
_STP_MODES = ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """Reference data for one symbol; sizes are decimal strings with 8 decimals."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: str
    step_size: str
    min_notional: str


def _eight(value: str) -> str:
    return format_units(to_units(value, "filter value"))


def symbols_from_specs(specs: Iterable[SymbolSpec]) -> dict[str, SymbolInfo]:
    """Reference data for the synthetic symbols, keyed by symbol."""
    return {
        s.symbol: SymbolInfo(
            s.symbol,
            s.base_asset,
            s.quote_asset,
            _eight(s.tick_size),
            _eight(s.step_size),
            _eight(s.min_notional),
        )
        for s in specs
    }


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote) by known quote-asset suffix; ``(symbol, "")`` if none fits."""
    for quote in _QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""


def symbols_from_recording(recording: Recording) -> dict[str, SymbolInfo]:
    """Reference data for a capture's symbols.

    The tick (step) size is the finest price (size) decimal the capture shows, which
    equals the real filter for any busy symbol; the minimum notional is the usual one
    for the quote asset (5 for stablecoin and fiat quotes).
    """
    result: dict[str, SymbolInfo] = {}
    for symbol, facts in sorted(recording.symbols.items()):
        base, quote = split_symbol(symbol)
        result[symbol] = SymbolInfo(
            symbol,
            base,
            quote,
            format_units(UNITS_PER_ONE // 10 ** min(8, facts.price_decimals)),
            format_units(UNITS_PER_ONE // 10 ** min(8, facts.qty_decimals)),
            _eight(_MIN_NOTIONAL_BY_QUOTE.get(quote, "5")),
        )
    return result


class _ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def _quote_units(price_units: int, qty_units: int) -> int:
    # price x qty is in 1e-16 units; round half to even back to 1e-8.
    whole, rest = divmod(price_units * qty_units, UNITS_PER_ONE)
    if rest * 2 > UNITS_PER_ONE or (rest * 2 == UNITS_PER_ONE and whole % 2):
        whole += 1
    return whole


class RestApi:
    """The REST handlers and the middleware that rate-limits and weighs requests."""

    def __init__(
        self,
        symbols: dict[str, SymbolInfo],
        trades: TradeHistory,
        clock: Clock,
        stats: SimulatorStats,
        faults: RestFaults,
    ) -> None:
        self._symbols = symbols
        self._trades = trades
        self._clock = clock
        self._stats = stats
        self._faults = faults
        self._weight_minute = -1
        self._weight_used = 0

    def set_symbols(self, symbols: dict[str, SymbolInfo]) -> None:
        """Replace the reference data (the replay learns it after loading)."""
        self._symbols = symbols

    def routes(self) -> list[web.RouteDef]:
        """The GET routes, for ``app.add_routes``."""
        return [
            web.get("/api/v3/ping", self._ping),
            web.get("/api/v3/time", self._time),
            web.get("/api/v3/exchangeInfo", self._exchange_info),
            web.get("/api/v3/trades", self._recent_trades),
            web.get("/api/v3/historicalTrades", self._historical_trades),
        ]

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Apply 429/418 faults and weight accounting to ``/api/`` requests."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        self._stats.rest_requests += 1
        now_ms = self._clock.time_us() // 1000
        verdict = self._faults.judge(self._clock.monotonic(), now_ms)
        used = self._add_weight(_WEIGHTS.get(request.path, 1), now_ms)
        response: web.StreamResponse
        if verdict.status == 429:
            self._stats.rest_429s += 1
            response = _json(
                {
                    "code": -1003,
                    "msg": "Too many requests; current limit of IP(127.0.0.1) is "
                    f"{_WEIGHT_LIMIT} requests per minute. Please use the websocket for "
                    "live updates to avoid polling the API.",
                },
                429,
            )
            response.headers["Retry-After"] = str(verdict.retry_after_s)
        elif verdict.status == 418:
            self._stats.rest_418s += 1
            response = _json(
                {
                    "code": -1003,
                    "msg": "Way too many requests; IP(127.0.0.1) banned until "
                    f"{verdict.banned_until_ms}. Please use the websocket for live "
                    "updates to avoid bans.",
                },
                418,
            )
            response.headers["Retry-After"] = str(verdict.retry_after_s)
        else:
            try:
                response = await handler(request)
            except _ApiError as exc:
                response = _json({"code": exc.code, "msg": exc.msg}, exc.status)
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
        return response

    def _add_weight(self, weight: int, now_ms: int) -> int:
        minute = now_ms // 60_000
        if minute != self._weight_minute:
            self._weight_minute = minute
            self._weight_used = 0
        self._weight_used += weight
        return self._weight_used

    def _micros(self, request: web.Request) -> bool:
        return request.headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND"

    def _now(self, request: web.Request) -> int:
        now_us = self._clock.time_us()
        return now_us if self._micros(request) else now_us // 1000

    async def _ping(self, request: web.Request) -> web.Response:
        return _json({})

    async def _time(self, request: web.Request) -> web.Response:
        return _json({"serverTime": self._now(request)})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        query = request.query
        if "symbol" in query and "symbols" in query:
            raise _ApiError(400, -1128, "Combination of optional parameters invalid.")
        if "symbol" in query:
            wanted = [query["symbol"]]
        elif "symbols" in query:
            wanted = self._symbol_list(query["symbols"])
        else:
            wanted = list(self._symbols)
        for name in wanted:
            if name not in self._symbols:
                raise _ApiError(400, -1121, "Invalid symbol.")
        return _json(
            {
                "timezone": "UTC",
                "serverTime": self._now(request),
                "rateLimits": _RATE_LIMITS,
                "exchangeFilters": [],
                "symbols": [self._symbol_entry(self._symbols[n]) for n in wanted],
            }
        )

    @staticmethod
    def _symbol_list(raw: str) -> list[str]:
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _ApiError(
                400, -1100, "Illegal characters found in parameter 'symbols'; legal range is "
                "'^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'."
            )  # fmt: skip
        return list(dict.fromkeys(names))

    @staticmethod
    def _symbol_entry(info: SymbolInfo) -> dict[str, Any]:
        return {
            "symbol": info.symbol,
            "status": "TRADING",
            "baseAsset": info.base_asset,
            "baseAssetPrecision": 8,
            "quoteAsset": info.quote_asset,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": _ORDER_TYPES,
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": info.tick_size,
                    "maxPrice": "1000000.00000000",
                    "tickSize": info.tick_size,
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": info.step_size,
                    "maxQty": "9000000.00000000",
                    "stepSize": info.step_size,
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": info.min_notional,
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": _STP_MODES,
        }

    def _symbol(self, request: web.Request) -> str:
        symbol = request.query.get("symbol", "")
        if not symbol:
            raise _ApiError(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        if symbol not in self._symbols:
            raise _ApiError(400, -1121, "Invalid symbol.")
        return symbol

    @staticmethod
    def _integer(request: web.Request, name: str) -> int | None:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return None
        if not raw.isdigit() or len(raw) > 20:
            raise _ApiError(
                400,
                -1100,
                f"Illegal characters found in parameter '{name}'; "
                "legal range is '^[0-9]{1,20}$'.",
            )
        return int(raw)

    def _limit(self, request: web.Request) -> int:
        limit = self._integer(request, "limit")
        if limit is None:
            return _DEFAULT_LIMIT
        if not 1 <= limit <= _MAX_LIMIT:
            raise _ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    async def _recent_trades(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request)
        limit = self._limit(request)
        return self._trade_list(request, self._trades.rows(symbol, None, limit))

    async def _historical_trades(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request)
        limit = self._limit(request)
        from_id = self._integer(request, "fromId")
        return self._trade_list(request, self._trades.rows(symbol, from_id, limit))

    def _trade_list(self, request: web.Request, rows: Iterable[TradeRow]) -> web.Response:
        divisor = 1 if self._micros(request) else 1000
        return _json(
            [
                {
                    "id": row.trade_id,
                    "price": format_units(row.price_units),
                    "qty": format_units(row.qty_units),
                    "quoteQty": format_units(_quote_units(row.price_units, row.qty_units)),
                    "time": row.time_us // divisor,
                    "isBuyerMaker": row.buyer_maker,
                    "isBestMatch": True,
                }
                for row in rows
            ]
        )

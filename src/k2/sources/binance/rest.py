"""Binance spot REST client for the few public endpoints K2 needs.

Every call returns Binance's raw JSON bytes (parsing is ``reference``'s and
``parse``'s job) except :meth:`BinanceRest.server_time`. Failures are translated into
K2 errors at this boundary and transient ones are retried here:

- HTTP 429 → :class:`~k2.errors.RateLimited` with ``retry_after`` from ``Retry-After``;
- HTTP 418 → ``RateLimited(banned=True)`` (the IP is banned for ignoring 429s);
- HTTP 5xx, timeouts, connection failures → :class:`~k2.errors.ConnectionLost`;
- body ``{"code": -1121}`` → :class:`~k2.errors.UnknownSymbol`;
- any other 4xx → :class:`~k2.errors.ExchangeError` with Binance's code and the status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import httpx
import msgspec

from k2.errors import ConnectionLost, ExchangeError, K2Error, RateLimited, UnknownSymbol
from k2.ops.breaker import CircuitBreaker
from k2.ops.log import get_logger
from k2.sources.binance import spec
from k2.sources.supervisor import Backoff, Sleep, retry

_log = get_logger(__name__)

Params = Mapping[str, str | int]


class _ErrorBody(msgspec.Struct, frozen=True):
    code: int | None = None
    msg: str | None = None


class _ServerTime(msgspec.Struct, frozen=True):
    serverTime: int  # noqa: N815 - Binance's field name


_ERROR_BODY = msgspec.json.Decoder(_ErrorBody)
_SERVER_TIME = msgspec.json.Decoder(_ServerTime)
_ENCODER = msgspec.json.Encoder()


class BinanceRest:
    """Async client for Binance's public spot REST endpoints.

    ``base_url`` is e.g. ``spec.LIVE_REST_URL``. Pass ``client`` to share or instrument
    an ``httpx.AsyncClient`` (it is then not closed by this object). Each request is
    tried at most ``max_retries + 1`` times, waiting per ``backoff`` or the server's
    ``Retry-After``, whichever is longer; ``sleep`` is injectable for tests.

    Rate limits are per IP, so a 429/418 pauses *every* request of this client until
    its ``Retry-After`` has passed (Binance bans IPs that keep sending), and at most
    ``max_concurrency`` requests are in flight at once.
    """

    def __init__(
        self,
        base_url: str = spec.LIVE_REST_URL,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_concurrency: int = 4,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self._own_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s)
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff = backoff if backoff is not None else Backoff()
        self._breaker = breaker
        self._sleep = sleep
        self._clock = clock
        self._paused_until = 0.0
        self._in_flight = asyncio.Semaphore(max_concurrency)
        self.used_weight_1m: int | None = None
        """The last ``X-MBX-USED-WEIGHT-1M`` Binance reported, if any."""

    async def __aenter__(self) -> BinanceRest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own_client:
            await self._client.aclose()

    async def exchange_info(self, symbols: Sequence[str] | None = None) -> bytes:
        """Raw ``/api/v3/exchangeInfo`` JSON, for ``symbols`` only when given.

        Raises UnknownSymbol if Binance does not list one of ``symbols``.
        """
        params: dict[str, str | int] = {}
        if symbols:
            params["symbols"] = _ENCODER.encode(list(symbols)).decode()
        return await self._get(spec.EXCHANGE_INFO_PATH, params)

    async def historical_trades(
        self, symbol: str, from_id: int | None = None, limit: int = spec.MAX_TRADES_LIMIT
    ) -> bytes:
        """Raw JSON list of up to ``limit`` trades of ``symbol`` with id ≥ ``from_id``.

        Without ``from_id`` Binance returns the most recent trades. Trades are in
        ascending id order. Raises ValueError (before sending) unless
        ``1 <= limit <= 1000``; UnknownSymbol for an unlisted symbol.
        """
        params: dict[str, str | int] = {"symbol": symbol, "limit": _checked_limit(limit)}
        if from_id is not None:
            if from_id < 0:
                raise ValueError(f"from_id must be >= 0, got {from_id}")
            params["fromId"] = from_id
        return await self._get(spec.HISTORICAL_TRADES_PATH, params)

    async def recent_trades(self, symbol: str, limit: int = 500) -> bytes:
        """Raw JSON list of the ``limit`` most recent trades of ``symbol``, ascending id.

        Raises ValueError (before sending) unless ``1 <= limit <= 1000``.
        """
        params: dict[str, str | int] = {"symbol": symbol, "limit": _checked_limit(limit)}
        return await self._get(spec.RECENT_TRADES_PATH, params)

    async def server_time(self) -> int:
        """Binance's clock, in milliseconds since the Unix epoch (UTC)."""
        raw = await self._get(spec.SERVER_TIME_PATH, {})
        try:
            return _SERVER_TIME.decode(raw).serverTime
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ExchangeError(f"unexpected /api/v3/time reply: {raw[:200]!r}") from exc

    async def _get(self, path: str, params: Params) -> bytes:
        url = self.base_url + path

        async def once() -> bytes:
            if self._breaker is not None:  # open: fail at once, retry() backs off
                return await self._breaker.acall(self._get_once, url, path, params)
            return await self._get_once(url, path, params)

        return await retry(
            once,
            backoff=self._backoff,
            attempts=self._max_retries + 1,
            sleep=self._sleep,
            what=f"GET {path}",
        )

    async def _get_once(self, url: str, path: str, params: Params) -> bytes:
        async with self._in_flight:
            pause = self._paused_until - self._clock()
            if pause > 0:
                await self._sleep(pause)
            response = await self._send(url, path, params)
        weight = response.headers.get(spec.USED_WEIGHT_HEADER)
        if weight is not None and weight.isdigit():
            self.used_weight_1m = int(weight)
        _log.debug("binance rest", path=path, status=response.status_code, used_weight_1m=weight)
        if response.status_code == 200:
            self._backoff.reset()
            return response.content
        error = _error_for(path, response)
        if isinstance(error, RateLimited) and error.retry_after:
            self._paused_until = max(self._paused_until, self._clock() + error.retry_after)
        raise error

    async def _send(self, url: str, path: str, params: Params) -> httpx.Response:
        try:
            return await self._client.get(url, params=dict(params), timeout=self._timeout_s)
        except httpx.TimeoutException as exc:
            raise ConnectionLost(f"GET {path} timed out after {self._timeout_s}s") from exc
        except httpx.TransportError as exc:
            raise ConnectionLost(f"GET {path} failed: {exc!r}") from exc


def _checked_limit(limit: int) -> int:
    if not 1 <= limit <= spec.MAX_TRADES_LIMIT:
        raise ValueError(f"limit must be between 1 and {spec.MAX_TRADES_LIMIT}, got {limit}")
    return limit


def _error_for(path: str, response: httpx.Response) -> K2Error:
    status = response.status_code
    body = _error_body(response.content)
    detail = f"{body.msg} (code {body.code})" if body.msg is not None else response.text[:200]
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return RateLimited(f"GET {path}: rate limited (HTTP 429): {detail}", retry_after)
    if status == 418:
        return RateLimited(f"GET {path}: IP banned (HTTP 418): {detail}", retry_after, banned=True)
    if status >= 500:
        return ConnectionLost(f"GET {path}: Binance failed with HTTP {status}: {detail}")
    if body.code == spec.ERROR_INVALID_SYMBOL:
        return UnknownSymbol(f"GET {path}: {detail}", code=body.code, status=status)
    return ExchangeError(f"GET {path}: HTTP {status}: {detail}", code=body.code, status=status)


def _error_body(content: bytes) -> _ErrorBody:
    try:
        return _ERROR_BODY.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _ErrorBody()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

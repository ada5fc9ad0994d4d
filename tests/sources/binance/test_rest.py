"""BinanceRest against a real local HTTP server scripted to answer like Binance."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from k2.errors import ConnectionLost, ExchangeError, RateLimited, UnknownSymbol
from k2.sources.binance.rest import BinanceRest
from k2.sources.supervisor import Backoff

TRADES = b'[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012","time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]'  # noqa: E501
INVALID_SYMBOL = b'{"code":-1121,"msg":"Invalid symbol."}'


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)


class FakeBinanceRest:
    """Answers each path from a script of replies (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query)))
        replies = self.script.get(request.path, [Reply(404, b'{"code":-1,"msg":"no route"}')])
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        headers = {"Content-Type": "application/json", "X-MBX-USED-WEIGHT-1M": "42"}
        headers.update(reply.headers)
        return web.Response(status=reply.status, body=reply.body, headers=headers)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinanceRest]:
    server = FakeBinanceRest()
    await server.server.start_server()
    yield server
    await server.server.close()


class Sleeps:
    """Records requested waits instead of waiting; a virtual clock they advance."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def client(url: str, sleeps: Sleeps, max_retries: int = 3) -> BinanceRest:
    backoff = Backoff(initial_s=0.1, max_s=1.0, rng=random.Random(5))
    return BinanceRest(
        url, max_retries=max_retries, backoff=backoff, sleep=sleeps, clock=sleeps.clock
    )


async def test_exchange_info_returns_raw_json_and_records_weight(fake: FakeBinanceRest) -> None:
    body = b'{"timezone":"UTC","symbols":[]}'
    fake.script["/api/v3/exchangeInfo"] = [Reply(body=body)]
    async with client(fake.url, Sleeps()) as rest:
        assert await rest.exchange_info(["BTCUSDT", "ETHUSDT"]) == body
        assert rest.used_weight_1m == 42
        assert await rest.exchange_info() == body
    (_, query), (_, bare) = fake.requests
    assert json.loads(query["symbols"]) == ["BTCUSDT", "ETHUSDT"]
    assert bare == {}


async def test_historical_trades_sends_from_id_and_limit(fake: FakeBinanceRest) -> None:
    fake.script["/api/v3/historicalTrades"] = [Reply(body=TRADES)]
    fake.script["/api/v3/trades"] = [Reply(body=TRADES)]
    async with client(fake.url, Sleeps()) as rest:
        assert await rest.historical_trades("BTCUSDT", from_id=28457, limit=1000) == TRADES
        assert await rest.recent_trades("BTCUSDT", limit=5) == TRADES
    assert fake.requests[0] == (
        "/api/v3/historicalTrades",
        {"symbol": "BTCUSDT", "limit": "1000", "fromId": "28457"},
    )
    assert fake.requests[1] == ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": "5"})


async def test_server_time_is_milliseconds(fake: FakeBinanceRest) -> None:
    fake.script["/api/v3/time"] = [Reply(body=b'{"serverTime":1499827319559}')]
    async with client(fake.url, Sleeps()) as rest:
        assert await rest.server_time() == 1499827319559


async def test_limit_is_validated_before_sending(fake: FakeBinanceRest) -> None:
    async with client(fake.url, Sleeps()) as rest:
        with pytest.raises(ValueError, match="limit"):
            await rest.historical_trades("BTCUSDT", from_id=1, limit=1001)
        with pytest.raises(ValueError, match="limit"):
            await rest.recent_trades("BTCUSDT", limit=0)
    assert fake.requests == []


async def test_429_waits_retry_after_then_succeeds(fake: FakeBinanceRest) -> None:
    sleeps = Sleeps()
    fake.script["/api/v3/trades"] = [
        Reply(429, b'{"code":-1003,"msg":"Too many requests"}', {"Retry-After": "7"}),
        Reply(body=TRADES),
    ]
    async with client(fake.url, sleeps) as rest:
        assert await rest.recent_trades("BTCUSDT") == TRADES
    assert sleeps.waits == [7.0]
    assert fake.count("/api/v3/trades") == 2


async def test_a_429_pauses_every_request_of_the_client(fake: FakeBinanceRest) -> None:
    # Binance limits per IP: after a 429, another request sent during the Retry-After
    # window would count against us (and repeated ones earn a 418 ban).
    sleeps = Sleeps()
    fake.script["/api/v3/trades"] = [
        Reply(429, b'{"code":-1003,"msg":"Too many requests"}', {"Retry-After": "7"})
    ]
    fake.script["/api/v3/time"] = [Reply(body=b'{"serverTime":1}')]
    async with client(fake.url, sleeps, max_retries=0) as rest:
        with pytest.raises(RateLimited):
            await rest.recent_trades("BTCUSDT")
        sleeps.now += 3.0  # three seconds of the seven pass
        assert await rest.server_time() == 1
    assert sleeps.waits == [pytest.approx(4.0)]


async def test_429_gives_up_after_max_retries(fake: FakeBinanceRest) -> None:
    sleeps = Sleeps()
    fake.script["/api/v3/trades"] = [Reply(429, b"{}", {"Retry-After": "2"})]
    async with client(fake.url, sleeps, max_retries=2) as rest:
        with pytest.raises(RateLimited) as info:
            await rest.recent_trades("BTCUSDT")
    assert info.value.retry_after == 2.0
    assert not info.value.banned
    assert fake.count("/api/v3/trades") == 3
    assert sleeps.waits == [2.0, 2.0]


async def test_418_is_a_ban(fake: FakeBinanceRest) -> None:
    sleeps = Sleeps()
    fake.script["/api/v3/time"] = [
        Reply(
            418, b'{"code":-1003,"msg":"Way too many requests; IP banned"}', {"Retry-After": "120"}
        ),
        Reply(body=b'{"serverTime":5}'),
    ]
    async with client(fake.url, sleeps) as rest:
        assert await rest.server_time() == 5
    assert sleeps.waits == [120.0]
    fake.script["/api/v3/time"] = [Reply(418, b"{}", {"Retry-After": "60"})]
    async with client(fake.url, sleeps, max_retries=0) as rest:
        with pytest.raises(RateLimited) as info:
            await rest.server_time()
    assert info.value.banned
    assert info.value.retry_after == 60.0


async def test_invalid_symbol_is_unknown_symbol_and_not_retried(fake: FakeBinanceRest) -> None:
    sleeps = Sleeps()
    fake.script["/api/v3/exchangeInfo"] = [Reply(400, INVALID_SYMBOL)]
    async with client(fake.url, sleeps) as rest:
        with pytest.raises(UnknownSymbol, match="Invalid symbol") as info:
            await rest.exchange_info(["NOPEUSDT"])
    assert info.value.code == -1121
    assert info.value.status == 400
    assert fake.count("/api/v3/exchangeInfo") == 1
    assert sleeps.waits == []


async def test_other_client_errors_are_exchange_errors(fake: FakeBinanceRest) -> None:
    fake.script["/api/v3/trades"] = [Reply(400, b'{"code":-1100,"msg":"Illegal characters"}')]
    async with client(fake.url, Sleeps()) as rest:
        with pytest.raises(ExchangeError) as info:
            await rest.recent_trades("BTC USDT")
    assert type(info.value) is ExchangeError
    assert (info.value.code, info.value.status) == (-1100, 400)
    assert fake.count("/api/v3/trades") == 1


async def test_server_errors_are_retried(fake: FakeBinanceRest) -> None:
    sleeps = Sleeps()
    fake.script["/api/v3/trades"] = [Reply(500, b"oops"), Reply(503, b"busy"), Reply(body=TRADES)]
    async with client(fake.url, sleeps) as rest:
        assert await rest.recent_trades("BTCUSDT") == TRADES
    assert fake.count("/api/v3/trades") == 3
    assert len(sleeps.waits) == 2
    fake.script["/api/v3/trades"] = [Reply(502, b"bad gateway")]
    async with client(fake.url, sleeps, max_retries=1) as rest:
        with pytest.raises(ConnectionLost, match="HTTP 502"):
            await rest.recent_trades("BTCUSDT")


async def test_connection_refused_is_connection_lost() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    async with client(f"http://127.0.0.1:{port}", sleeps, max_retries=1) as rest:
        with pytest.raises(ConnectionLost):
            await rest.server_time()
    assert len(sleeps.waits) == 1


async def test_a_shared_client_is_left_open(fake: FakeBinanceRest) -> None:
    fake.script["/api/v3/time"] = [Reply(body=b'{"serverTime":1}')]
    async with httpx.AsyncClient() as shared:
        async with BinanceRest(fake.url, client=shared) as rest:
            assert await rest.server_time() == 1
        assert not shared.is_closed

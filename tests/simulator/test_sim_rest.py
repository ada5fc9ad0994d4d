"""REST endpoints: Binance's shapes and error codes, weights, 429/418 faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from k2.simulator import FaultConfig, ManualClock, SimulatorConfig, SimulatorServer


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    clock = ManualClock()
    async with SimulatorServer(SimulatorConfig(rate=2_000), clock=clock) as server:
        yield server


async def _get(server: SimulatorServer, path: str, **params: str) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession(server.rest_url) as http,
        http.get(path, params=params) as response,
    ):
        return response.status, await response.json(), response.headers


async def test_ping_time_and_weight_header(sim: SimulatorServer) -> None:
    status, body, headers = await _get(sim, "/api/v3/ping")
    assert (status, body, headers["X-MBX-USED-WEIGHT-1M"]) == (200, {}, "1")
    status, body, headers = await _get(sim, "/api/v3/time")
    assert body == {"serverTime": sim.clock.time_us() // 1000}
    assert headers["X-MBX-USED-WEIGHT-1M"] == "2"
    _, _, headers = await _get(sim, "/api/v3/exchangeInfo")
    assert headers["X-MBX-USED-WEIGHT-1M"] == "22"


async def test_exchange_info_lists_symbols_with_filters(sim: SimulatorServer) -> None:
    status, body, _ = await _get(sim, "/api/v3/exchangeInfo")
    assert status == 200 and body["timezone"] == "UTC"
    names = [s["symbol"] for s in body["symbols"]]
    assert names == ["BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT"]
    btc = body["symbols"][0]
    assert (btc["status"], btc["baseAsset"], btc["quoteAsset"]) == ("TRADING", "BTC", "USDT")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"
    assert filters["NOTIONAL"]["minNotional"] == "5.00000000"
    _, one, _ = await _get(sim, "/api/v3/exchangeInfo", symbol="ADAUSDT")
    assert [s["symbol"] for s in one["symbols"]] == ["ADAUSDT"]
    _, two, _ = await _get(sim, "/api/v3/exchangeInfo", symbols='["DOGEUSDT","ETHUSDT"]')
    assert [s["symbol"] for s in two["symbols"]] == ["DOGEUSDT", "ETHUSDT"]


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/api/v3/exchangeInfo", {"symbol": "NOPEUSDT"}, -1121),
        ("/api/v3/exchangeInfo", {"symbols": '["BTCUSDT","NOPE"]'}, -1121),
        ("/api/v3/exchangeInfo", {"symbol": "BTCUSDT", "symbols": '["BTCUSDT"]'}, -1128),
        ("/api/v3/exchangeInfo", {"symbols": "BTCUSDT"}, -1100),
        ("/api/v3/trades", {"symbol": "NOPEUSDT"}, -1121),
        ("/api/v3/trades", {}, -1102),
        ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": "1001"}, -1130),
        ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": "0"}, -1130),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "limit": "ten"}, -1100),
        ("/api/v3/historicalTrades", {"symbol": "BTCUSDT", "fromId": "-5"}, -1100),
    ],
)
async def test_errors_use_binance_codes(
    sim: SimulatorServer, path: str, params: dict[str, str], code: int
) -> None:
    status, body, headers = await _get(sim, path, **params)
    assert status == 400
    assert body["code"] == code and body["msg"]
    assert "X-MBX-USED-WEIGHT-1M" in headers
    if code == -1121:
        assert body["msg"] == "Invalid symbol."


async def test_trades_match_the_websocket_frames(sim: SimulatorServer) -> None:
    clock = sim.clock
    assert isinstance(clock, ManualClock)
    async with connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        await asyncio.wait_for(ws.recv(), 5)
        clock.advance(1.0)
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5))]

        async def until_last() -> None:
            while frames[-1]["t"] != sim.trades.last_id("BTCUSDT"):
                frames.append(json.loads(await ws.recv()))

        await asyncio.wait_for(until_last(), 5)
    first = frames[0]["t"]
    _, page, _ = await _get(
        sim, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=str(first), limit="1000"
    )
    assert [t["id"] for t in page] == [f["t"] for f in frames]
    for row, frame in zip(page, frames, strict=True):
        assert (row["price"], row["qty"], row["time"]) == (frame["p"], frame["q"], frame["T"])
        assert row["isBuyerMaker"] is frame["m"] and row["isBestMatch"] is True
        assert Decimal(row["quoteQty"]) == Decimal(row["price"]) * Decimal(row["qty"])
    _, recent, _ = await _get(sim, "/api/v3/trades", symbol="BTCUSDT", limit="5")
    assert [t["id"] for t in recent] == [f["t"] for f in frames[-5:]]
    _, default, _ = await _get(sim, "/api/v3/historicalTrades", symbol="BTCUSDT")
    assert len(default) == min(500, len(frames))  # the market began with this test


async def test_time_unit_header_switches_rest_to_microseconds(sim: SimulatorServer) -> None:
    async with (
        aiohttp.ClientSession(sim.rest_url) as http,
        http.get("/api/v3/time", headers={"X-MBX-TIME-UNIT": "MICROSECOND"}) as response,
    ):
        assert await response.json() == {"serverTime": sim.clock.time_us()}


async def test_every_nth_request_gets_429_with_retry_after() -> None:
    clock = ManualClock()
    faults = FaultConfig(rest_429_every_n=3, rest_retry_after_s=2)
    async with SimulatorServer(SimulatorConfig(faults=faults), clock=clock) as sim:
        statuses = [(await _get(sim, "/api/v3/ping"))[0] for _ in range(2)]
        status, body, headers = await _get(sim, "/api/v3/ping")
        assert statuses == [200, 200] and status == 429
        assert headers["Retry-After"] == "2"
        assert body["code"] == -1003 and body["msg"].startswith("Too many requests")
        again, _, _ = await _get(sim, "/api/v3/time")  # inside the window: refused again
        assert again == 429
        clock.advance(2.0)
        assert (await _get(sim, "/api/v3/time"))[0] == 200
        assert sim.stats.rest_429s == 2


async def test_ignoring_429s_earns_a_418_ban() -> None:
    clock = ManualClock()
    faults = FaultConfig(rest_429_every_n=2, rest_retry_after_s=10, rest_418_after=2, rest_ban_s=60)
    async with SimulatorServer(SimulatorConfig(faults=faults), clock=clock) as sim:
        statuses = [(await _get(sim, "/api/v3/ping"))[0] for _ in range(4)]
        assert statuses == [200, 429, 429, 418]
        status, body, headers = await _get(sim, "/api/v3/ping")
        assert status == 418 and body["code"] == -1003 and "banned until" in body["msg"]
        assert 0 < int(headers["Retry-After"]) <= 60
        clock.advance(61.0)
        assert (await _get(sim, "/api/v3/ping"))[0] == 200
        assert (sim.stats.rest_429s, sim.stats.rest_418s) == (2, 2)


async def test_429_share_is_counted() -> None:
    faults = FaultConfig(seed=5, rest_429_share=0.3, rest_retry_after_s=0)
    async with SimulatorServer(SimulatorConfig(faults=faults)) as sim:
        statuses = [(await _get(sim, "/api/v3/ping"))[0] for _ in range(100)]
    assert statuses.count(429) == sim.stats.rest_429s
    assert 15 < sim.stats.rest_429s < 45
    assert set(statuses) == {200, 429}

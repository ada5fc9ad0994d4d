"""The WebSocket endpoints against a real server and a real ``websockets`` client."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from k2.simulator import ManualClock, SimulatorConfig, SimulatorServer

FAST = SimulatorConfig(rate=5_000, regime_switching=False)

# An unbounded client queue: with websockets' default (16 messages) a client that stops
# reading a busy stream stops reading the socket, so its close handshake only ends at the
# 10 s close timeout (the server's close frame sits behind unread data frames).
_connect = functools.partial(connect, max_queue=None)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with SimulatorServer(FAST) as server:
        yield server


def _is_reply(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and "id" in message
        and ("result" in message or "error" in message)
    )


async def _frames(ws: ClientConnection, count: int) -> list[Any]:
    async def collect() -> list[Any]:
        return [json.loads(await ws.recv()) for _ in range(count)]

    return await asyncio.wait_for(collect(), 5)


async def _request(ws: ClientConnection, payload: dict[str, Any] | str) -> tuple[Any, list[Any]]:
    """Send a control message; return its reply and the data frames that came before it."""
    await ws.send(payload if isinstance(payload, str) else json.dumps(payload))
    before: list[Any] = []

    async def wait() -> Any:
        while True:
            message = json.loads(await ws.recv())
            if _is_reply(message):
                return message
            before.append(message)

    return await asyncio.wait_for(wait(), 5.0), before


async def test_combined_stream_wraps_payloads(sim: SimulatorServer) -> None:
    url = f"{sim.ws_url}/stream?streams=btcusdt@trade/ethusdt@bookTicker"
    async with _connect(url) as ws:
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(raw, str) and raw.startswith('{"stream":"')
        frames = [json.loads(raw), *await _frames(ws, 200)]
    assert {f["stream"] for f in frames} <= {"btcusdt@trade", "ethusdt@bookTicker"}
    assert {f["stream"] for f in frames} == {"btcusdt@trade", "ethusdt@bookTicker"}
    for frame in frames:
        assert set(frame) == {"stream", "data"}
        if frame["stream"] == "btcusdt@trade":
            assert frame["data"]["e"] == "trade" and frame["data"]["s"] == "BTCUSDT"
        else:
            assert frame["data"]["s"] == "ETHUSDT" and "u" in frame["data"]


async def test_raw_stream_sends_bare_payloads(sim: SimulatorServer) -> None:
    async with _connect(f"{sim.ws_url}/ws/btcusdt@trade/dogeusdt@trade") as ws:
        frames = await _frames(ws, 100)
    assert all(f["e"] == "trade" and "stream" not in f for f in frames)
    assert {f["s"] for f in frames} == {"BTCUSDT", "DOGEUSDT"}


@pytest.mark.parametrize("unit", ["MICROSECOND", "microsecond"])
async def test_time_unit_microsecond(sim: SimulatorServer, unit: str) -> None:
    async with (
        _connect(f"{sim.ws_url}/ws/btcusdt@trade?timeUnit={unit}") as micro,
        _connect(f"{sim.ws_url}/ws/btcusdt@trade") as milli,
    ):
        micro_frames = await _frames(micro, 20)
        milli_frames = await _frames(milli, 20)
    now_ms = sim.clock.time_us() // 1000
    for frame in micro_frames:
        assert abs(frame["T"] // 1000 - now_ms) < 60_000 and frame["E"] >= frame["T"]
    for frame in milli_frames:
        assert abs(frame["T"] - now_ms) < 60_000
    by_id = {f["t"]: f for f in micro_frames}
    for frame in milli_frames:
        if frame["t"] in by_id:
            assert by_id[frame["t"]]["T"] // 1000 == frame["T"]


async def test_bad_urls_are_refused_before_the_upgrade(sim: SimulatorServer) -> None:
    for path in ("/ws/BTCUSDT@trade", "/stream?streams=btcusdt@trade&timeUnit=NANOSECOND"):
        with pytest.raises(InvalidStatus) as info:
            async with _connect(sim.ws_url + path):
                pass
        assert info.value.response.status_code == 400


async def test_subscribe_list_unsubscribe_on_bare_ws(sim: SimulatorServer) -> None:
    async with _connect(f"{sim.ws_url}/ws") as ws:
        reply, _ = await _request(
            ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"], "id": 1}
        )
        assert reply == {"result": None, "id": 1}
        frames = await _frames(ws, 50)
        assert {f["s"] for f in frames} <= {"BTCUSDT", "ETHUSDT"}
        reply, _ = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert reply == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 2}
        reply, _ = await _request(
            ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": "u-3"}
        )
        assert reply == {"result": None, "id": "u-3"}
        after = await _frames(ws, 100)
        assert after and all(f["s"] == "ETHUSDT" for f in after)
        reply, _ = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4})
        assert reply["result"] == ["ethusdt@trade"]


async def test_set_property_switches_to_combined_frames(sim: SimulatorServer) -> None:
    async with _connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
        reply, _ = await _request(
            ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 1}
        )
        assert reply == {"result": None, "id": 1}
        frames = await _frames(ws, 20)
        assert all(f["stream"] == "btcusdt@trade" for f in frames)
        reply, _ = await _request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2})
        assert reply == {"result": True, "id": 2}


async def test_error_replies_keep_the_connection_open(sim: SimulatorServer) -> None:
    async with _connect(f"{sim.ws_url}/ws") as ws:
        reply, _ = await _request(ws, "{not json")
        assert reply["id"] is None and reply["error"]["code"] == 3
        assert reply["error"]["msg"].startswith("Invalid JSON: ")
        reply, _ = await _request(ws, {"method": "SUBSCRIBEX", "params": [], "id": 9})
        assert reply["id"] == 9 and reply["error"]["code"] == 2
        assert reply["error"]["msg"].startswith("Invalid request: unknown variant `SUBSCRIBEX`")
        reply, _ = await _request(ws, {"method": "SUBSCRIBE", "params": ["nope"], "id": 10})
        assert reply["error"]["code"] == 2
        too_many = [f"s{i:04d}usdt@trade" for i in range(1025)]
        reply, _ = await _request(ws, {"method": "SUBSCRIBE", "params": too_many, "id": 11})
        assert reply["error"]["code"] == 2 and "1024" in reply["error"]["msg"]
        reply, _ = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 12})
        assert reply == {"result": [], "id": 12}


async def test_url_with_too_many_streams_is_refused() -> None:
    config = SimulatorConfig(max_streams=2)
    async with SimulatorServer(config) as server:
        with pytest.raises(InvalidStatus) as info:
            async with _connect(f"{server.ws_url}/stream?streams=a1@trade/b1@trade/c1@trade"):
                pass
        assert info.value.response.status_code == 400
        async with _connect(f"{server.ws_url}/stream?streams=a1@trade/b1@trade") as ws:
            reply, _ = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
            assert reply["result"] == ["a1@trade", "b1@trade"]


async def test_more_than_five_messages_a_second_closes_the_connection() -> None:
    clock = ManualClock()
    async with SimulatorServer(SimulatorConfig(), clock=clock) as server:
        async with _connect(f"{server.ws_url}/ws") as ws:
            for i in range(5):
                reply, _ = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": i})
                assert reply["id"] == i
            clock.advance(1.0)  # the window slides: five more are fine
            for i in range(5, 10):
                reply, _ = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": i})
                assert reply["id"] == i
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10}))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert info.value.rcvd.reason == "Too many requests"
        assert server.stats.rate_limit_disconnects == 1


async def test_silent_client_is_dropped_after_pong_timeout() -> None:
    # pongs count towards the message-rate limit, as on Binance: raise it for fast pings
    config = SimulatorConfig(ping_interval_s=0.05, pong_timeout_s=0.3, max_control_per_s=1000)
    async with (
        SimulatorServer(config) as server,
        _connect(f"{server.ws_url}/ws") as polite,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{server.ws_url}/ws", autoping=False) as silent,
    ):
        pings = 0

        async def until_closed() -> None:
            nonlocal pings
            async for message in silent:
                pings += message.type is aiohttp.WSMsgType.PING

        await asyncio.wait_for(until_closed(), 5)
        assert pings >= 2
        assert server.stats.pong_timeouts == 1
        reply, _ = await _request(polite, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert reply == {"result": [], "id": 1}  # the answering client is still served


async def test_stop_closes_clients_with_going_away() -> None:
    server = SimulatorServer(FAST)
    await server.start()
    async with _connect(f"{server.ws_url}/ws/btcusdt@trade") as ws:
        await _frames(ws, 5)
        await server.stop()

        async def until_closed() -> None:
            while True:
                await ws.recv()

        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(until_closed(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert server.stats.connections_active == 0

"""K2's own chaos endpoint on the simulator: ``POST /k2/chaos/disconnect?seconds=N``
drops every WebSocket at once and refuses upgrades for N seconds; REST keeps working.

A real server, real ``websockets`` and ``aiohttp`` clients; the outage window runs on
a :class:`ManualClock`, so the test moves time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from k2.simulator import ManualClock, SimulatorConfig, SimulatorServer

_connect = functools.partial(connect, max_queue=None)


@pytest.fixture
async def clocked() -> AsyncIterator[tuple[SimulatorServer, ManualClock]]:
    clock = ManualClock()
    async with SimulatorServer(SimulatorConfig(rate=20), clock=clock) as server:
        yield server, clock


async def _list_subscriptions(ws: ClientConnection) -> object:
    await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def _until_closed(ws: ClientConnection) -> ConnectionClosed:
    async def drain() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(drain(), 5)
    return info.value


async def _until_aiohttp_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
    async def drain() -> None:
        async for _ in ws:
            pass

    await asyncio.wait_for(drain(), 5)


async def test_disconnect_drops_every_socket_and_refuses_upgrades_for_n_seconds(
    clocked: tuple[SimulatorServer, ManualClock],
) -> None:
    server, clock = clocked
    async with (
        _connect(f"{server.ws_url}/ws") as first,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.ws_url}/stream?streams=btcusdt@trade") as second,
    ):
        assert await _list_subscriptions(first) == {"result": [], "id": 7}
        assert server.connections == 2

        async with http.post(f"{server.rest_url}/k2/chaos/disconnect?seconds=10") as reply:
            assert reply.status == 200
            body = await reply.json()
        assert body == {"closed": 2, "until": clock.time_us() / 1e6 + 10}

        closed = await _until_closed(first)
        assert closed.rcvd is None  # cut, no close frame: what a network outage looks like
        await _until_aiohttp_closed(second)
        assert server.connections == 0
        assert server.stats.disconnects_forced == 2

        # During the outage: upgrades are refused with 503, REST still answers.
        with pytest.raises(InvalidStatus) as refused:
            async with _connect(f"{server.ws_url}/ws"):
                pass
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "10"
        async with http.get(f"{server.rest_url}/api/v3/ping") as ping:
            assert ping.status == 200

        clock.advance(9.5)
        with pytest.raises(InvalidStatus):
            async with _connect(f"{server.ws_url}/ws"):
                pass

        clock.advance(0.5)
        async with _connect(f"{server.ws_url}/ws") as again:
            assert await _list_subscriptions(again) == {"result": [], "id": 7}
            assert server.connections == 1


async def test_a_new_call_replaces_the_outage_and_zero_ends_it(
    clocked: tuple[SimulatorServer, ManualClock],
) -> None:
    server, _ = clocked
    async with aiohttp.ClientSession() as http:
        url = f"{server.rest_url}/k2/chaos/disconnect"
        async with http.post(url, params={"seconds": "60"}) as reply:
            assert (await reply.json())["closed"] == 0
        with pytest.raises(InvalidStatus):
            async with _connect(f"{server.ws_url}/ws"):
                pass
        async with http.post(url, params={"seconds": "0"}) as reply:
            assert reply.status == 200
        async with _connect(f"{server.ws_url}/ws") as ws:
            assert await _list_subscriptions(ws) == {"result": [], "id": 7}


@pytest.mark.parametrize("seconds", ["", "soon", "-1", "nan", "inf", "3601"])
async def test_an_invalid_duration_is_refused_and_changes_nothing(
    clocked: tuple[SimulatorServer, ManualClock], seconds: str
) -> None:
    server, _ = clocked
    async with _connect(f"{server.ws_url}/ws") as ws, aiohttp.ClientSession() as http:
        url = f"{server.rest_url}/k2/chaos/disconnect"
        async with http.post(url, params={"seconds": seconds}) as reply:
            assert reply.status == 400
            assert "seconds must be a number" in (await reply.json())["msg"]
        assert await _list_subscriptions(ws) == {"result": [], "id": 7}
        assert server.connections == 1

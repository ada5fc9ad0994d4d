"""Server lifecycle: run_simulator, addresses, start-up errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect

from k2.errors import ConfigError
from k2.simulator import SimulatorConfig, SimulatorServer, run_simulator


async def test_run_simulator_serves_until_cancelled() -> None:
    ready: asyncio.Future[SimulatorServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_simulator(SimulatorConfig(), ready=ready.set_result))
    server = await asyncio.wait_for(ready, 10)
    assert server.ws_url == f"ws://127.0.0.1:{server.port}"
    assert server.rest_url == f"http://127.0.0.1:{server.port}"
    async with connect(f"{server.ws_url}/ws") as ws:
        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"result": [], "id": 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{server.rest_url}/api/v3/ping")


async def test_busy_port_is_a_config_error() -> None:
    async with SimulatorServer() as first:
        second = SimulatorServer(SimulatorConfig(port=first.port))
        with pytest.raises(ConfigError, match=str(first.port)):
            await second.start()


async def test_unreadable_capture_is_a_config_error(tmp_path: Path) -> None:
    config = SimulatorConfig(mode="replay", replay_path=tmp_path / "missing.dat.gz")
    with pytest.raises(ConfigError, match=r"missing\.dat\.gz"):
        await SimulatorServer(config).start()


async def test_addresses_need_a_started_server() -> None:
    server = SimulatorServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.ws_url
    await server.stop()  # stopping a server that never started is harmless

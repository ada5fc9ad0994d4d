"""Throughput: one ``websockets`` client in its own process reads the synthetic market."""

from __future__ import annotations

import asyncio
import sys

import pytest

from k2.simulator import SimulatorConfig, SimulatorServer

# Counts frames for SECONDS after a warm-up of WARMUP frames and prints frames/s.
CLIENT = """
import asyncio, sys, time
from websockets.asyncio.client import connect

async def main(url, seconds, warmup):
    async with connect(url, max_size=None, compression=None, close_timeout=0.2) as ws:
        for _ in range(warmup):
            await ws.recv()
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            await ws.recv()
            count += 1
        print(count / elapsed, flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
"""
SYMBOLS = ("btcusdt", "ethusdt", "bnbusdt", "adausdt", "dogeusdt")
STREAMS = "/".join(f"{s}@{kind}" for s in SYMBOLS for kind in ("trade", "bookTicker"))


@pytest.mark.slow
async def test_one_client_receives_at_least_60k_frames_per_second() -> None:
    config = SimulatorConfig(rate=90_000, regime_switching=False)
    async with SimulatorServer(config) as sim:
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            f"{sim.ws_url}/stream?streams={STREAMS}",
            "3",
            "20000",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(client.communicate(), 30)
    assert client.returncode == 0
    rate = float(out)
    print(f"simulator -> websockets client: {rate:,.0f} frames/s")
    assert rate >= 60_000
    assert sim.stats.lagged == 0

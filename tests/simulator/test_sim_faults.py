"""Each delivery fault happens, is counted, and leaves the tape and REST history whole."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from k2.simulator import FaultConfig, ManualClock, SimulatorConfig, SimulatorServer

TRADES = 3_144
FIRST_ID = 3_071_245_454
ALL_IDS = set(range(FIRST_ID, FIRST_ID + TRADES))


def _replay(faults: FaultConfig) -> SimulatorConfig:
    return SimulatorConfig(mode="replay", replay_path="builtin", speed=0, faults=faults)


async def _drain_replay(sim: SimulatorServer, ws: ClientConnection) -> list[str]:
    """Everything the connection is sent, up to the reply that follows the whole replay."""
    await asyncio.wait_for(sim.replay_done.wait(), 20)
    await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 99}))
    texts: list[str] = []

    async def collect() -> None:
        while True:
            text = str(await ws.recv())
            if text == '{"result":["btcusdt@trade"],"id":99}':
                return
            texts.append(text)

    await asyncio.wait_for(collect(), 20)
    return texts


async def _trade_ids(faults: FaultConfig) -> tuple[SimulatorServer, list[str]]:
    sim = SimulatorServer(_replay(faults))
    async with sim, connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
        return sim, await _drain_replay(sim, ws)


async def _history(sim: SimulatorServer, ids: set[int]) -> dict[int, Any]:
    found: dict[int, Any] = {}
    async with aiohttp.ClientSession(sim.rest_url) as http:
        for trade_id in sorted(ids):
            params = {"symbol": "BTCUSDT", "fromId": str(trade_id), "limit": "1"}
            async with http.get("/api/v3/historicalTrades", params=params) as response:
                (row,) = await response.json()
                found[row["id"]] = row
    return found


async def test_drops_are_counted_and_repairable_over_rest() -> None:
    sim = SimulatorServer(_replay(FaultConfig(seed=1, drop=0.05)))
    async with sim, connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
        texts = await _drain_replay(sim, ws)
        ids = [json.loads(t)["t"] for t in texts]
        missing = ALL_IDS - set(ids)
        assert 80 < sim.stats.dropped < 240  # about 5% of 3,144
        assert len(ids) == TRADES - sim.stats.dropped == len(set(ids))
        assert len(missing) == sim.stats.dropped
        repaired = await _history(sim, missing)
    assert set(repaired) == missing
    assert ids == sorted(ids)


async def test_duplicates_appear() -> None:
    sim, texts = await _trade_ids(FaultConfig(seed=2, duplicate=0.05))
    counts = Counter(json.loads(t)["t"] for t in texts)
    twice = [i for i, n in counts.items() if n == 2]
    assert set(counts) == ALL_IDS
    assert len(twice) == sim.stats.duplicated > 80
    assert sim.stats.frames_sent["trade"] == TRADES + sim.stats.duplicated


async def test_reordering_appears_but_loses_nothing() -> None:
    sim, texts = await _trade_ids(FaultConfig(seed=3, reorder=0.05, reorder_depth=3))
    ids = [json.loads(t)["t"] for t in texts]
    inversions = sum(1 for a, b in itertools.pairwise(ids) if b < a)
    assert sorted(ids) == sorted(ALL_IDS)
    assert sim.stats.reordered > 80
    assert inversions > 80
    assert all(abs(ids.index(i) - (i - FIRST_ID)) <= 3 * 4 for i in ids[::97])


async def test_malformed_frames_are_corrupt_json() -> None:
    sim, texts = await _trade_ids(FaultConfig(seed=4, malformed=0.03))
    good, bad = [], []
    for text in texts:
        try:
            good.append(json.loads(text)["t"])
        except json.JSONDecodeError:
            bad.append(text)
    assert len(bad) == sim.stats.malformed > 40
    assert len(good) == TRADES - len(bad)
    assert sim.stats.frames_sent["trade"] == len(good)


async def test_forced_disconnect_then_reconnect() -> None:
    clock = ManualClock()
    faults = FaultConfig(disconnect_every_s=5.0, max_disconnects=1)
    async with SimulatorServer(SimulatorConfig(faults=faults), clock=clock) as sim:
        async with connect(f"{sim.ws_url}/ws") as ws:
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
            await asyncio.wait_for(ws.recv(), 5)  # the connection's timers are running
            clock.advance(5.0)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is None  # no close frame: an abnormal closure (1006)
        assert sim.stats.disconnects_forced == 1
        async with connect(f"{sim.ws_url}/ws") as again:
            await again.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            await asyncio.wait_for(again.recv(), 5)
            clock.advance(10.0)  # the budget of one disconnect is spent
            await again.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
            assert json.loads(await asyncio.wait_for(again.recv(), 5))["id"] == 3
        assert sim.stats.disconnects_forced == 1


@pytest.mark.parametrize("combined", [True, False])
async def test_server_shutdown_event_then_close(combined: bool) -> None:
    clock = ManualClock()
    faults = FaultConfig(server_shutdown_after_s=30.0, server_shutdown_grace_s=2.0)
    path = "/stream?streams=" if combined else "/ws"
    async with SimulatorServer(SimulatorConfig(faults=faults), clock=clock) as sim:
        async with connect(sim.ws_url + path) as ws:
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
            await asyncio.wait_for(ws.recv(), 5)
            clock.advance(30.0)
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
            expected = {"e": "serverShutdown", "E": clock.time_us() // 1000}
            if combined:
                assert event == {"stream": "!serverShutdown", "data": expected}
            else:
                assert event == expected
            clock.advance(2.0)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert sim.stats.server_shutdowns_sent == 1


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the server's tasks until ``condition`` holds (5 s guard)."""

    async def poll() -> None:
        # the counters have no event to wait on; yield until the server's tasks moved
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), 5)


async def test_stall_holds_frames_back_then_delivers_them_all() -> None:
    clock = ManualClock()
    faults = FaultConfig(stall_every_s=1.0, stall_s=5.0)
    config = SimulatorConfig(rate=2_000, regime_switching=False, faults=faults)
    async with SimulatorServer(config, clock=clock) as sim:
        stats = sim.stats
        async with connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
            clock.advance(0.5)
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            clock.advance(0.6)  # past the stall deadline: the next batch starts a stall
            await _until(lambda: stats.stalls == 1)
            sent_during_stall = stats.total_frames_sent
            on_tape = stats.events_on_tape
            clock.advance(1.0)  # the market keeps trading while the connection stalls
            await _until(lambda: stats.events_on_tape > on_tape)
            assert stats.total_frames_sent == sent_during_stall
            on_tape = stats.events_on_tape
            clock.advance(4.0)  # stall over: everything arrives, nothing skipped
            await _until(lambda: stats.events_on_tape > on_tape)
            last_id = sim.trades.last_id("BTCUSDT")
            assert last_id is not None
            ids = [first["t"]]
            while ids[-1] < last_id:
                ids.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["t"])
        assert ids == list(range(first["t"], last_id + 1))
        assert stats.total_frames_sent > sent_during_stall
        assert stats.stalls == 1 and stats.lagged == 0

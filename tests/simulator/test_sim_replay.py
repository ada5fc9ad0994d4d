"""Replay of the packaged hftbacktest capture: every frame, byte for byte, in order."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

from k2.simulator import ManualClock, SimulatorConfig, SimulatorServer
from k2.simulator.replay import load_recording, resolve_capture
from k2.sources.captures import read_capture

TRADES, QUOTES = 3_144, 8_015
FIRST_ID, LAST_ID = 3_071_245_454, 3_071_248_597
BUILTIN = SimulatorConfig(mode="replay", replay_path="builtin", speed=0)
CF_SPOT = Path(__file__).resolve().parents[1] / "data" / "binance" / "cryptofeed_BINANCE.ws.1.0.txt"


def _source_frames(*streams: str) -> list[str]:
    prefixes = tuple(f'{{"stream":"{s}"'.encode() for s in streams)
    return [
        f.frame.decode()
        for f in read_capture(resolve_capture("builtin"))
        if f.frame.startswith(prefixes)
    ]


async def _texts(ws: ClientConnection, count: int) -> list[str]:
    async def collect() -> list[str]:
        return [str(await ws.recv()) for _ in range(count)]

    return await asyncio.wait_for(collect(), 20)


async def _reply(ws: ClientConnection, request: dict[str, Any]) -> Any:
    await ws.send(json.dumps(request))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_builtin_replay_delivers_every_frame_byte_for_byte() -> None:
    async with SimulatorServer(BUILTIN) as sim:
        url = f"{sim.ws_url}/stream?streams=btcusdt@trade/btcusdt@bookTicker"
        async with connect(url) as ws:
            received = await _texts(ws, TRADES + QUOTES)
            await asyncio.wait_for(sim.replay_done.wait(), 10)
            # nothing else was queued: the next message is the reply to this request
            assert await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {
                "result": ["btcusdt@trade", "btcusdt@bookTicker"],
                "id": 1,
            }
        assert sim.stats.frames_sent == {"trade": TRADES, "bookTicker": QUOTES}
    assert received == _source_frames("btcusdt@trade", "btcusdt@bookTicker")
    ids = [
        json.loads(t)["data"]["t"] for t in received if t.startswith('{"stream":"btcusdt@trade"')
    ]
    assert ids == list(range(FIRST_ID, LAST_ID + 1))


async def test_replay_waits_for_the_first_subscription_and_raw_frames_are_payloads() -> None:
    async with SimulatorServer(BUILTIN) as sim, connect(f"{sim.ws_url}/ws") as ws:
        assert await _reply(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {
            "result": [],
            "id": 1,
        }
        assert sim.stats.events_on_tape == 0 and not sim.replay_done.is_set()
        assert await _reply(
            ws, {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 2}
        ) == {"result": None, "id": 2}
        received = await _texts(ws, 3_929)
        await asyncio.wait_for(sim.replay_done.wait(), 10)
    source = _source_frames("btcusdt@depth@100ms")
    prefix = len('{"stream":"btcusdt@depth@100ms","data":')
    assert received == [frame[prefix:-1] for frame in source]


async def test_microsecond_replay_scales_time_fields_only() -> None:
    async with (
        SimulatorServer(BUILTIN) as sim,
        connect(f"{sim.ws_url}/ws/btcusdt@trade?timeUnit=MICROSECOND") as ws,
    ):
        micro = [json.loads(t) for t in await _texts(ws, TRADES)]
    source = [json.loads(f)["data"] for f in _source_frames("btcusdt@trade")]
    assert micro[0]["E"] == 1_680_652_800_000_000 and micro[0]["T"] == 1_680_652_799_999_000
    for got, original in zip(micro, source, strict=True):
        assert got == {**original, "E": original["E"] * 1000, "T": original["T"] * 1000}


async def test_replay_paces_by_receive_time() -> None:
    clock = ManualClock()
    config = SimulatorConfig(mode="replay", replay_path="builtin", speed=2.0)
    recording = load_recording("builtin")
    origin = recording.received_us[0]
    due = [
        i
        for i, at in enumerate(recording.received_us)
        if at - origin <= 1_000_000 and recording.streams[i] == "btcusdt@trade"
    ]
    async with SimulatorServer(config, clock=clock) as sim, connect(f"{sim.ws_url}/ws") as ws:
        subscribe = {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
        assert await _reply(ws, subscribe) == {"result": None, "id": 1}
        first = json.loads((await _texts(ws, 1))[0])  # the event at offset 0
        assert first["t"] == FIRST_ID
        clock.advance(0.5)  # x2 speed: 1 s of the capture
        rest = [json.loads(t) for t in await _texts(ws, len(due) - 1)]
        assert rest[-1]["t"] == FIRST_ID + len(due) - 1
        expected = sum(1 for at in recording.received_us if at - origin <= 1_000_000)
        assert sim.stats.events_on_tape == expected


async def test_rest_history_pages_equal_the_replayed_trades() -> None:
    async with SimulatorServer(BUILTIN) as sim:
        async with connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
            frames = [json.loads(t) for t in await _texts(ws, TRADES)]
            await asyncio.wait_for(sim.replay_done.wait(), 10)
        pages: list[Any] = []
        async with aiohttp.ClientSession(sim.rest_url) as http:
            from_id = FIRST_ID
            while True:
                params = {"symbol": "BTCUSDT", "fromId": str(from_id), "limit": "1000"}
                async with http.get("/api/v3/historicalTrades", params=params) as response:
                    assert response.status == 200
                    page = await response.json()
                if not page:
                    break
                pages.extend(page)
                from_id = page[-1]["id"] + 1
            async with http.get("/api/v3/exchangeInfo", params={"symbol": "BTCUSDT"}) as response:
                info = await response.json()
    assert [p["id"] for p in pages] == [f["t"] for f in frames]
    assert [p["price"] for p in pages] == [f["p"] for f in frames]
    assert [p["qty"] for p in pages] == [f["q"] for f in frames]
    assert [p["time"] for p in pages] == [f["T"] for f in frames]
    assert [p["isBuyerMaker"] for p in pages] == [f["m"] for f in frames]
    assert all(Decimal(p["quoteQty"]) == Decimal(p["price"]) * Decimal(p["qty"]) for p in pages)
    (symbol,) = info["symbols"]
    assert (symbol["baseAsset"], symbol["quoteAsset"]) == ("BTC", "USDT")
    filters = {f["filterType"]: f for f in symbol["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"


async def test_cryptofeed_capture_replays_its_streams() -> None:
    config = SimulatorConfig(mode="replay", replay_path=CF_SPOT, speed=0)
    async with SimulatorServer(config) as sim:
        async with connect(f"{sim.ws_url}/stream?streams=nknusdt@bookTicker") as ws:
            received = await _texts(ws, 74)
            await asyncio.wait_for(sim.replay_done.wait(), 10)
        async with (
            aiohttp.ClientSession(sim.rest_url) as http,
            http.get("/api/v3/exchangeInfo") as response,
        ):
            info = await response.json()
    source = [f.frame.decode() for f in read_capture(CF_SPOT)]
    assert received == [f for f in source if f.startswith('{"stream":"nknusdt@bookTicker"')]
    split = {s["symbol"]: (s["baseAsset"], s["quoteAsset"]) for s in info["symbols"]}
    assert split == {
        "BLZETH": ("BLZ", "ETH"),
        "LRCBTC": ("LRC", "BTC"),
        "NKNUSDT": ("NKN", "USDT"),
        "RUNEEUR": ("RUNE", "EUR"),
    }


def test_raw_captures_get_stream_names_and_bad_frames_are_counted(tmp_path: Path) -> None:
    trade = (
        b'{"e":"trade","E":2,"s":"ETHBTC","t":7,"p":"0.06512000","q":"0.01230000",'
        b'"T":1,"m":false,"M":true}'
    )
    path = tmp_path / "raw.dat"
    path.write_bytes(
        b"1 " + trade + b"\n"
        b'2 {"u":5,"s":"ETHBTC","b":"0.06511000","B":"1.5000","a":"0.06513000","A":"2.0000"}\n'
        b'3 {"result":null,"id":1}\n'
        b"4 " + trade + b"\n"
        b"5 {broken\n"
    )
    recording = load_recording(path)
    assert recording.streams == ["ethbtc@trade", "ethbtc@bookTicker", "ethbtc@trade"]
    assert recording.payloads[0] == trade
    assert (recording.skipped, recording.unindexed_trades) == (2, 1)
    assert list(recording.trades) == [0]
    facts = recording.symbols["ETHBTC"]
    assert (facts.price_decimals, facts.qty_decimals) == (5, 4)

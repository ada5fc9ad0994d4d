"""Acceptance: the capture against the simulator replaying a real Binance capture.

These are the "Done when" checks of the capture issue. The simulator replays the
real BTCUSDT capture; the capture stops once the simulator has written the whole
replay (its close handshake still delivers everything in flight).
"""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from k2.capture.ndjson import NdjsonWriter
from k2.capture.pipeline import CaptureOptions, CapturePipeline, CaptureStats
from k2.simulator import FaultConfig, SimulatorConfig, SimulatorServer
from k2.sources.binance.source import BinanceSource
from tests.captures import (
    HFT_CAPTURE,
    HFT_FIRST_TRADE_ID,
    HFT_LAST_TRADE_ID,
    HFT_QUOTES,
    HFT_TRADES,
    hft_frames,
)

SOURCE_IDS = list(range(HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID + 1))


async def replay_and_capture(
    tmp_path: Path, config: SimulatorConfig, symbols: list[str] | None = None
) -> tuple[CaptureStats, dict[str, list[dict[str, Any]]], SimulatorServer]:
    """Replay ``config`` into a capture; return its stats and output lines by type."""
    out = tmp_path / "capture.ndjson"
    async with SimulatorServer(config) as sim:
        source = BinanceSource(symbols or ["BTCUSDT"], ws_url=sim.ws_url, rest_url=sim.rest_url)
        with NdjsonWriter(out) as writer:
            pipeline = CapturePipeline(source, writer, CaptureOptions(gap_grace_s=0.2))

            async def stop_when_replayed() -> None:
                await sim.replay_done.wait()
                pipeline.request_stop()

            stopper = asyncio.create_task(stop_when_replayed())
            stats = await pipeline.run(max_seconds=90)  # a guard: the replay ends far sooner
            stopper.cancel()
    lines: dict[str, list[dict[str, Any]]] = {"trade": [], "quote": [], "reject": [], "gap": []}
    with out.open("rb") as fh:
        for line in fh:
            row = msgspec.json.decode(line)
            lines[row["type"]].append(row)
    assert sim.replay_done.is_set(), "stopped by the guard, not by the end of the replay"
    return stats, lines, sim


def source_payloads(kind: str) -> Iterator[dict[str, Any]]:
    frames, _ = hft_frames()
    for frame in frames:
        obj = msgspec.json.decode(frame)
        if obj["stream"].endswith("@" + kind):
            yield obj["data"]


async def test_replay_yields_exactly_the_source_trades_and_quotes(tmp_path: Path) -> None:
    config = SimulatorConfig(mode="replay", replay_path=str(HFT_CAPTURE), speed=0)
    stats, lines, _ = await replay_and_capture(tmp_path, config)

    trades, quotes = lines["trade"], lines["quote"]
    assert [t["trade_id"] for t in trades] == SOURCE_IDS
    assert len(trades) == HFT_TRADES
    assert len(quotes) == HFT_QUOTES
    for row, src in zip(trades, source_payloads("trade"), strict=True):
        assert (row["trade_id"], row["price"], row["quantity"]) == (src["t"], src["p"], src["q"])
        assert Decimal(row["quote_quantity"]) == (Decimal(src["p"]) * Decimal(src["q"])).quantize(
            Decimal("1E-8")
        )
    for row, src in zip(quotes, source_payloads("bookTicker"), strict=True):
        assert (row["update_id"], row["bid_price"], row["bid_quantity"]) == (
            src["u"], src["b"], src["B"],
        )  # fmt: skip
        assert (row["ask_price"], row["ask_quantity"]) == (src["a"], src["A"])
    assert lines["reject"] == []
    assert lines["gap"] == []
    assert stats.duplicates == 0


@pytest.mark.slow
async def test_faults_still_yield_exactly_the_source_trades(tmp_path: Path) -> None:
    faults = FaultConfig(
        seed=11, drop=0.05, duplicate=0.05, reorder=0.05, disconnect_every_s=1.0,
        max_disconnects=3,
    )  # fmt: skip
    # 100× real time: the 414 s capture plays in ~4 s, long enough for 3 disconnects.
    config = SimulatorConfig(mode="replay", replay_path="builtin", speed=100, faults=faults)
    stats, lines, sim = await replay_and_capture(tmp_path, config)

    assert sim.stats.disconnects_forced == 3
    assert sim.stats.dropped > 0
    assert sim.stats.duplicated > 0
    assert sim.stats.reordered > 0
    ids = [t["trade_id"] for t in lines["trade"]]
    assert sorted(ids) == SOURCE_IDS  # every trade, each exactly once
    assert stats.duplicates > 0
    # Each gap is recorded with its repair; repairs account for every trade the
    # stream did not deliver.
    gaps = lines["gap"]
    assert gaps
    assert {g["status"] for g in gaps} == {"repaired"}
    repaired = sum(g["repaired_count"] for g in gaps)
    assert repaired == stats.trades_repaired > 0
    missing = sum(g["last_missing_id"] - g["first_missing_id"] + 1 for g in gaps)
    assert repaired == missing
    ws_trades = len(ids) - stats.trades_repaired - stats.trades_after_tail
    assert ws_trades < HFT_TRADES


def _trade(symbol: str, trade_id: int, **extra: Any) -> dict[str, Any]:
    return {"e": "trade", "E": 1680652800000, "s": symbol, "t": trade_id, "p": "28165.47000000",
            "q": "0.00100000", "T": 1680652800000, "m": True, "M": True, **extra}  # fmt: skip


async def test_bad_frames_are_rejected_with_reasons_and_the_feed_keeps_running(
    tmp_path: Path,
) -> None:
    frames, received = hft_frames()
    bad: list[tuple[str, dict[str, Any]]] = [
        # a futures trade (USD-M frames carry X) on the spot stream
        ("btcusdt@trade", _trade("BTCUSDT", 1, X="MARKET")),
        # a futures bookTicker (has e, E and T)
        (
            "btcusdt@bookTicker",
            {
                "e": "bookTicker",
                "u": 1,
                "s": "BTCUSDT",
                "b": "1",
                "B": "1",
                "a": "2",
                "A": "1",
                "T": 1,
                "E": 1,
            },
        ),
        # a symbol Binance does not list
        ("btcusdt@trade", _trade("NOPEUSDT", 5)),
        # a negative price
        ("btcusdt@trade", _trade("BTCUSDT", 6, p="-1.00000000")),
    ]
    path = tmp_path / "mixed.dat.gz"
    with gzip.open(path, "wb") as fh:
        for i, (frame, ts) in enumerate(zip(frames, received, strict=True)):
            fh.write(b"%d %s\n" % (ts, frame))
            if i in (100, 5000, 9000, 12000):
                stream, data = bad[(100, 5000, 9000, 12000).index(i)]
                fh.write(b"%d %s\n" % (ts, msgspec.json.encode({"stream": stream, "data": data})))
    faults = FaultConfig(seed=5, malformed=0.01)
    config = SimulatorConfig(mode="replay", replay_path=str(path), speed=0, faults=faults)
    stats, lines, sim = await replay_and_capture(tmp_path, config)

    reasons = Counter(r["reason"] for r in lines["reject"])
    assert reasons["futures_frame"] == 2
    assert reasons["unknown_symbol"] == 1
    assert reasons["non_positive_price"] == 1
    assert reasons["malformed_json"] + reasons["bad_field"] + reasons["missing_field"] == (
        sim.stats.malformed
    )
    assert sim.stats.malformed > 0
    for r in lines["reject"]:
        assert r["raw"]
        assert r["detail"]
    # The feed kept running: every real trade is there, exactly once (trades replaced
    # by corrupt frames were repaired from REST).
    assert sorted(t["trade_id"] for t in lines["trade"]) == SOURCE_IDS
    assert stats.rejects == dict(reasons)


async def test_unknown_symbol_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    from k2.errors import UnknownSymbol

    config = SimulatorConfig(mode="replay", replay_path="builtin", speed=0)
    with pytest.raises(UnknownSymbol, match="NOPEUSDT"):
        await replay_and_capture(tmp_path, config, symbols=["BTCUSDT", "NOPEUSDT"])

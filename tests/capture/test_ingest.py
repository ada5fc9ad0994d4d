"""k2 ingest and k2 dlq: the capture into the embedded log, and dead letters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgspec

from k2.capture.dead_letters import list_dead_letters, replay_dead_letters, show_dead_letter
from k2.capture.log_output import LogOutput
from k2.capture.output import OutputBatch
from k2.capture.pipeline import CaptureOptions, CapturePipeline
from k2.log.base import TopicPartition
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout
from k2.quality.rejects import Reject, RejectReason
from k2.simulator import FaultConfig, SimulatorConfig, SimulatorServer
from k2.sources.binance.source import BinanceSource
from tests.captures import HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID, HFT_QUOTES

LAYOUT = TopicLayout(trade_partitions=4, quote_partitions=4)


def read_topic(log: EmbeddedLog, topic: str) -> list[tuple[int, int, dict[str, object]]]:
    """(partition, offset, row) of every record in ``topic``."""
    rows = []
    for partition, start in sorted(log.begin_offsets(topic).items()):
        for batch in log.read(TopicPartition(topic, partition), start):
            offsets = batch.offsets().to_pylist()
            rows += [(partition, o, r) for o, r in zip(offsets, batch.records.to_pylist(),
                                                       strict=True)]  # fmt: skip
    return rows


async def test_ingest_puts_every_trade_quote_reject_and_gap_in_the_log(tmp_path: Path) -> None:
    faults = FaultConfig(seed=2, malformed=0.01)
    config = SimulatorConfig(mode="replay", replay_path="builtin", speed=0, faults=faults)
    log = EmbeddedLog(tmp_path / "log")
    async with SimulatorServer(config) as sim:
        source = BinanceSource(["BTCUSDT"], ws_url=sim.ws_url, rest_url=sim.rest_url)
        pipeline = CapturePipeline(source, LogOutput(log, LAYOUT), CaptureOptions(gap_grace_s=0.2))

        async def stop_when_replayed() -> None:
            await sim.replay_done.wait()
            pipeline.request_stop()

        stopper = asyncio.create_task(stop_when_replayed())
        stats = await pipeline.run(max_seconds=60)
        stopper.cancel()
    assert sim.replay_done.is_set()

    trades = read_topic(log, LAYOUT.data_topic("trade"))
    ids = sorted(r["trade_id"] for _, _, r in trades)  # type: ignore[type-var]
    assert ids == list(range(HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID + 1))
    # One symbol: one partition, so one order for all its records.
    assert {p for p, _, _ in trades} == {trades[0][0]}
    quotes = read_topic(log, LAYOUT.data_topic("quote"))
    # Every well-formed quote the simulator sent is there (corrupted ones cannot be
    # repaired: there is no REST history of bookTicker).
    assert len(quotes) == sim.stats.frames_sent["bookTicker"] < HFT_QUOTES
    letters = list_dead_letters(log, LAYOUT, limit=10_000)
    assert len(letters) == sim.stats.malformed > 0
    assert Counter(x.reason for x in letters) == Counter(stats.rejects)
    gaps = read_topic(log, LAYOUT.data_topic("gap"))
    assert len(gaps) == stats.gaps_detected
    assert {g["status"] for _, _, g in gaps} <= {"repaired"}
    log.close()


def _trade_frame(symbol: str, trade_id: int) -> bytes:
    data = {"e": "trade", "E": 1700000000000, "s": symbol, "t": trade_id, "p": "1.50000000",
            "q": "2.00000000", "T": 1700000000000, "m": False, "M": True}  # fmt: skip
    return msgspec.json.encode({"stream": f"{symbol.lower()}@trade", "data": data})


def _seed_dead_letters(log: EmbeddedLog) -> None:
    output = LogOutput(log, LAYOUT, clock_us=lambda: 1_700_000_000_000_000)
    rejects = [
        Reject(RejectReason.UNKNOWN_SYMBOL, "symbol SOLUSDT is not listed",
               _trade_frame("SOLUSDT", 7), 1_700_000_000_000_000, "binance.ws", "trade"),
        Reject(RejectReason.MALFORMED_JSON, "truncated", b'{"stream":"btcus',
               1_700_000_000_000_001, "binance.ws", None),
        Reject(RejectReason.INVALID_DECIMAL, "price 'x'", b"\xff\x00binary",
               1_700_000_000_000_002, "binance.rest", "trade"),
    ]  # fmt: skip
    asyncio.run(output.write(OutputBatch(rejects=rejects)))


def test_dead_letters_are_listed_shown_and_replayed_once(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    _seed_dead_letters(log)

    letters = list_dead_letters(log, LAYOUT)
    assert [(x.topic, x.reason) for x in letters] == [
        ("market.crypto.trades.binance.dlq", "unknown_symbol"),
        ("market.crypto.trades.binance.dlq", "invalid_decimal"),
        ("market.crypto.frames.binance.dlq", "malformed_json"),
    ]
    shown = show_dead_letter(log, "market.crypto.trades.binance.dlq", 0, 1)
    assert shown.raw == b"\xff\x00binary"  # byte-exact
    assert shown.to_json_dict()["raw_encoding"] == "hex"

    # Before the fix SOLUSDT is still unknown: nothing replayed, nothing committed.
    dry = replay_dead_letters(log, LAYOUT, known_symbols=frozenset({"BTCUSDT"}), dry_run=True)
    assert dry.replayed == {}
    assert dry.still_rejected == {"unknown_symbol": 1, "malformed_json": 1}
    # After the fix (SOLUSDT configured) the trade replays; the others cannot.
    report = replay_dead_letters(log, LAYOUT, known_symbols=frozenset({"BTCUSDT", "SOLUSDT"}))
    assert report.examined == 3
    assert report.replayed == {"trade": 1}
    assert report.still_rejected == {"malformed_json": 1}
    assert report.not_replayable == {"binance.rest": 1}
    (row,) = [r for _, _, r in read_topic(log, LAYOUT.data_topic("trade"))]
    assert row["message_id"] == "binance:SOLUSDT:7"
    # A second replay examines nothing: progress is committed.
    again = replay_dead_letters(log, LAYOUT, known_symbols=frozenset({"BTCUSDT", "SOLUSDT"}))
    assert again.examined == 0
    assert len(read_topic(log, LAYOUT.data_topic("trade"))) == 1
    log.close()


def test_dlq_commands(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "data" / "log")
    _seed_dead_letters(log)
    log.close()
    env = {**os.environ, "K2_DATA_DIR": str(tmp_path / "data"), "K2_LOG__TRADE_PARTITIONS": "4",
           "K2_LOG__QUOTE_PARTITIONS": "4", "K2_CAPTURE__SYMBOLS": "BTCUSDT,SOLUSDT"}  # fmt: skip

    def k2(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "k2", "dlq", *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    listed = k2("list", "--format", "json", "--reason", "unknown_symbol")
    assert listed.returncode == 0, listed.stderr
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["offset"] == 0
    shown = k2("show", entry["topic"], str(entry["offset"]))
    assert json.loads(shown.stdout)["detail"] == "symbol SOLUSDT is not listed"
    replayed = k2("replay", "--data-type", "trade")
    assert json.loads(replayed.stdout)["replayed"] == {"trade": 1}
    bad = k2("list", "--data-type", "candles")
    assert bad.returncode == 2
    assert "unknown data type" in bad.stderr


def test_ingest_output_applies_retention_on_schedule(tmp_path: Path) -> None:
    from k2.log.base import Retention

    now = [1_700_000_000_000_000]
    log = EmbeddedLog(tmp_path / "log", clock=lambda: now[0])
    layout = TopicLayout(trade_partitions=1, retention=Retention(max_age_us=3_600_000_000))
    output = LogOutput(log, layout, clock_us=lambda: now[0], retention_interval_s=60)
    old = Reject(RejectReason.MALFORMED_JSON, "x", b"{", now[0], "binance.ws", None)
    asyncio.run(output.write(OutputBatch(rejects=[old])))
    assert output.retention_deleted == 0  # not due yet
    now[0] += 2 * 3_600_000_000  # two hours later the old record is past retention
    asyncio.run(output.write(OutputBatch(rejects=[old])))
    assert output.retention_deleted == 1
    assert len(list_dead_letters(log, layout)) == 1
    log.close()

"""A restarted ``k2 ingest`` resumes after the log's last trades: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa

from k2.capture.log_output import LogOutput
from k2.capture.pipeline import CaptureOptions, CapturePipeline
from k2.capture.resume import ResumePoint, last_trade_ids
from k2.log.embedded import EmbeddedLog
from k2.log.topics import TopicLayout
from k2.records import TRADE
from k2.simulator import FaultConfig, SimulatorConfig, SimulatorServer
from k2.sources.binance.source import BinanceSource
from tests.capture.test_ingest import read_topic
from tests.waiting import until_async

LAYOUT = TopicLayout(trade_partitions=4, quote_partitions=4)
SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]


async def _capture_until(sim: SimulatorServer, log: EmbeddedLog, trades: int) -> None:
    """One capture run (resuming from the log) that stops once it delivered ``trades``."""
    resume = last_trade_ids(log, LAYOUT, SYMBOLS)
    source = BinanceSource(SYMBOLS, ["trade"], ws_url=sim.ws_url, rest_url=sim.rest_url)
    pipeline = CapturePipeline(
        source, LogOutput(log, LAYOUT), CaptureOptions(gap_grace_s=0.2), resume=resume
    )
    run = asyncio.create_task(pipeline.run(max_seconds=60))
    await until_async(lambda: pipeline.stats.trades >= trades or run.done(), f"{trades} trades")
    pipeline.request_stop()
    await run


def test_last_trade_ids_of_an_empty_or_missing_log(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    assert last_trade_ids(log, LAYOUT, SYMBOLS) == {}
    LogOutput(log, LAYOUT)  # creates the topics
    assert last_trade_ids(log, LAYOUT, SYMBOLS) == {}
    log.close()


async def test_restarts_leave_every_trade_once(tmp_path: Path) -> None:
    # Duplicated and dropped frames too, so the seeded dedup and gap repair both work.
    faults = FaultConfig(seed=5, duplicate=0.02, drop=0.02)
    config = SimulatorConfig(port=0, rate=3000.0, seed=3, faults=faults)
    log = EmbeddedLog(tmp_path / "log")
    async with SimulatorServer(config) as sim:
        for run in range(3):
            await _capture_until(sim, log, 300)
            held = last_trade_ids(log, LAYOUT, SYMBOLS)
            assert set(held) == set(SYMBOLS), f"run {run}: {held}"

            # The exchange keeps trading while K2 is down.
            def traded_on(h: dict[str, ResumePoint] = held) -> bool:
                return all((sim.trades.last_id(s) or 0) > h[s].last_id + 100 for s in SYMBOLS)

            await until_async(traded_on, "the simulator to print trades during the outage")
    rows = [r for _, _, r in read_topic(log, LAYOUT.data_topic("trade"))]
    for symbol in SYMBOLS:
        ids = sorted(int(r["trade_id"]) for r in rows if r["symbol"] == symbol)  # type: ignore[call-overload]
        assert len(ids) == len(set(ids)), f"{symbol}: duplicated trades"
        assert ids == list(range(ids[0], ids[-1] + 1)), f"{symbol}: trades missing"
        # The outages (between runs) were filled: the log spans all three runs.
        assert ids[-1] >= held[symbol].last_id
    log.close()


async def test_a_hole_left_by_a_killed_capture_is_repaired_on_resume(tmp_path: Path) -> None:
    """A capture killed while a gap was in its grace period leaves a hole below its last
    trade; the resumed capture must repair it, not skip it."""
    config = SimulatorConfig(port=0, rate=3000.0, seed=8)
    first, second = EmbeddedLog(tmp_path / "a"), EmbeddedLog(tmp_path / "b")
    async with SimulatorServer(config) as sim:
        await _capture_until(sim, first, 400)
        # The second log gets the first one's trades minus a run of BTCUSDT ids.
        rows = [r for _, _, r in read_topic(first, LAYOUT.data_topic("trade"))]
        btc = sorted(int(r["trade_id"]) for r in rows if r["symbol"] == "BTCUSDT")  # type: ignore[call-overload]
        cut = set(btc[len(btc) // 3 : len(btc) // 3 + 25])
        kept = [r for r in rows if not (r["symbol"] == "BTCUSDT" and r["trade_id"] in cut)]
        LogOutput(second, LAYOUT)
        second.produce(
            LAYOUT.data_topic("trade"), pa.RecordBatch.from_pylist(kept, TRADE.arrow_schema())
        )
        point = last_trade_ids(second, LAYOUT, SYMBOLS)["BTCUSDT"]
        assert point.holes == [(min(cut), max(cut))]
        assert point.last_id == btc[-1]
        await _capture_until(sim, second, 200)
    ids = sorted(
        int(r["trade_id"])  # type: ignore[call-overload]
        for _, _, r in read_topic(second, LAYOUT.data_topic("trade"))
        if r["symbol"] == "BTCUSDT"
    )
    assert cut <= set(ids), "the hole was not repaired"
    assert len(ids) == len(set(ids)) and ids == list(range(ids[0], ids[-1] + 1))
    first.close()
    second.close()


def test_a_stop_with_the_exchange_gone_is_prompt_and_leaves_the_rest_to_the_next_start(
    tmp_path: Path,
) -> None:
    """SIGTERM while the exchange cannot be reached: the ingest does not wait out its
    retries (the next start repairs from where the log ends); it stops within its
    stop-repair timeout and says why."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.ports import free_port

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    sim = subprocess.Popen(
        [sys.executable, "-m", "k2", "simulate", "--port", str(port), "--rate", "500"],
        env=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path / "ingest.out"
    env = {
        **base,
        "K2_DATA_DIR": str(tmp_path / "data"),
        "K2_BINANCE__WS_URL": f"ws://127.0.0.1:{port}",
        "K2_BINANCE__REST_URL": f"http://127.0.0.1:{port}",
        "K2_OPS__INGEST_METRICS_PORT": "0",
        "K2_CAPTURE__STOP_REPAIR_TIMEOUT_S": "2",
        "K2_LOGGING__LEVEL": "WARNING",
    }
    with out.open("wb") as fh:
        ingest = subprocess.Popen(
            [sys.executable, "-m", "k2", "ingest"], env=env, stdout=fh, stderr=fh
        )
    try:
        status = tmp_path / "data" / "run" / "ingest.json"
        deadline = time.monotonic() + 60
        while '"connections":1' not in (status.read_text() if status.exists() else ""):
            assert time.monotonic() < deadline, out.read_text()[-2000:]
            time.sleep(0.05)  # polling a condition, with a deadline
        sim.kill()  # the exchange is gone, REST included
        sim.wait(10)
        ingest.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = ingest.wait(60)
        took = time.monotonic() - began
    finally:
        for proc in (ingest, sim):
            if proc.poll() is None:
                proc.kill()
    assert code == 0, out.read_text()[-2000:]
    assert took < 30, f"the stop took {took:.0f} s"
    assert "did not answer at stop" in out.read_text()

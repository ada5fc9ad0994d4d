"""Forced high lag: the capture degrades level by level, recovers with hysteresis and
cooldown, and every shed trade is backfilled — the lake ends up with all of them.

The simulator feeds a real capture (with the degradation governor) into the embedded
log; a real lake sink commits it. Pausing the sink makes the log lag grow, which walks
the levels up (thresholds in records, set low for the test); resuming it drains the
lag and the levels come back down one at a time, each after the cooldown. Once NORMAL,
the shed trade ranges are fetched from the simulator's REST history.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pyarrow.compute as pc
import pytest

from k2.capture.governor import Governor
from k2.capture.log_output import LogOutput
from k2.capture.pipeline import CaptureOptions, CapturePipeline
from k2.capture.service import governor_from
from k2.config import load_settings
from k2.lake.catalog import open_catalog
from k2.lake.sink import LakeSink, options_from
from k2.lake.tables import ensure_tables
from k2.log.embedded import EmbeddedLog
from k2.log.factory import topic_layout
from k2.ops.degradation import Level
from k2.simulator import SimulatorConfig, SimulatorServer
from k2.sources.binance.source import BinanceSource
from tests.waiting import until_async

pytestmark = pytest.mark.slow


class SinkThread:
    """The lake sink in a thread, which the test pauses and resumes."""

    def __init__(self, sink: LakeSink) -> None:
        self.sink = sink
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.sink.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


async def test_high_lag_walks_levels_and_backfills_what_was_shed(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        log={"trade_partitions": 4, "quote_partitions": 4, "durability": "normal"},
        lake={"sink_max_seconds": 0.3},
        degradation={
            # The sink commits every 0.3 s: its normal lag stays well under "soft".
            "lag_records": {
                "soft": 2500,
                "graceful": 4500,
                "aggressive": 7000,
                "circuit_break": 12000,
            },
            "lag_s": {"soft": 1e6, "graceful": 2e6, "aggressive": 3e6, "circuit_break": 4e6},
            "cooldown_s": 1.0,
            "hysteresis": 0.2,
            "tier1_symbols": ["BTCUSDT"],
            "tier2_symbols": ["ETHUSDT"],
        },
    )
    layout = topic_layout(settings)
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    probe = EmbeddedLog(tmp_path / "log", durability="normal")
    governor = governor_from(settings, probe)
    assert isinstance(governor, Governor)
    options = options_from(settings)
    sink = SinkThread(
        LakeSink(
            log, open_catalog(settings), layout, group=settings.lake.sink_group, options=options
        )
    )
    async with SimulatorServer(SimulatorConfig(port=0, rate=2500.0, seed=11)) as sim:
        source = BinanceSource(
            ["BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT"], ws_url=sim.ws_url, rest_url=sim.rest_url
        )
        pipeline = CapturePipeline(
            source,
            LogOutput(log, layout),
            CaptureOptions(gap_grace_s=0.3),
            governor=governor,
            sample_interval_s=0.2,
        )
        run = asyncio.create_task(pipeline.run(max_seconds=120))
        sink.start()
        await until_async(lambda: pipeline.stats.trades > 300, "trades to flow")
        assert governor.manager.level == Level.NORMAL
        sink.pause()  # the forced lag
        await until_async(lambda: governor.manager.level >= Level.AGGRESSIVE, "AGGRESSIVE")
        assert pipeline.stats.trades_shed > 0
        sink.start()  # the sink catches up
        await until_async(lambda: governor.manager.level == Level.NORMAL, "recovery to NORMAL")
        await until_async(
            lambda: pipeline.stats.trades_backfilled >= pipeline.stats.trades_shed,
            "the shed trades to be backfilled",
        )
        pipeline.request_stop()
        stats = await run
    sink.pause()
    LakeSink(
        log, open_catalog(settings), layout, group=settings.lake.sink_group, options=options
    ).run(until_idle=True)
    log.close()
    probe.close()

    history = governor.manager.history
    ups = [c for c in history if c.new > c.old]
    downs = [c for c in history if c.new < c.old]
    assert ups and ups[0].old == Level.NORMAL
    assert max(c.new for c in history) >= Level.AGGRESSIVE
    # Recovery is one level at a time, each after the cooldown at the level before.
    assert all(c.old - c.new == 1 for c in downs)
    assert [c.new for c in downs][-1] == Level.NORMAL
    for c in downs:
        previous = max(h.at for h in history if h.at < c.at)
        assert c.at - previous >= 1.0, f"stepped down to {c.new.name} before the cooldown"
    # Tier 1 (BTCUSDT) trades are shed only at CIRCUIT_BREAK; tier 3 from GRACEFUL.
    assert stats.trades_shed > 0 and stats.trades_backfilled == stats.trades_shed

    tables = ensure_tables(open_catalog(settings))
    trades = tables["trades"].scan(selected_fields=("symbol", "trade_id")).to_arrow()
    for symbol in pc.unique(trades.column("symbol")).to_pylist():
        ids = sorted(trades.filter(pc.equal(trades.column("symbol"), symbol))
                     .column("trade_id").to_pylist())  # fmt: skip
        assert len(ids) == len(set(ids)), f"{symbol}: trades twice in the lake"
        assert ids == list(range(ids[0], ids[-1] + 1)), f"{symbol}: trades missing"
    gaps = tables["gaps"].scan().to_arrow().to_pylist()
    shed = [g for g in gaps if "shed under degradation" in (g["reason"] or "")]
    assert shed and all(g["status"] == "repaired" for g in shed)
    assert sum(g["repaired_count"] for g in shed) == stats.trades_shed

"""Crash test: SIGKILL the sink again and again while the simulator feeds the log.

The capture (simulator → ingest → embedded log) runs in this process; sink workers run
as subprocesses (``sink_crash_worker.py``) and die by SIGKILL, either at a named crash
point (records buffered, just before the append, between the lake commit and the group
commit) or from outside at a random moment; every fifth time two sinks of one group run
side by side and both die. A last clean run drains the log; the lake
must then hold every trade of the log exactly once, with contiguous ids per symbol.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.compute as pc
import pytest

from k2.capture.log_output import LogOutput
from k2.capture.pipeline import CaptureOptions, CapturePipeline
from k2.config import LakeSettings, load_settings
from k2.lake.catalog import catalog_from
from k2.lake.tables import ensure_tables
from k2.log.base import TopicPartition
from k2.log.embedded import EmbeddedLog
from k2.log.factory import topic_layout
from k2.simulator import SimulatorConfig, SimulatorServer
from k2.sources.binance.source import BinanceSource

WORKER = Path(__file__).with_name("sink_crash_worker.py")
CRASH_POINTS = ("mid_batch", "before_append", "after_append", "external")
ROOT = Path(__file__).resolve().parents[2]


def _lake_env(lake: LakeSettings) -> dict[str, str]:
    env = {}
    for name, value in lake.model_dump().items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"K2_LAKE__{name.upper()}"] = text
    return env


def _worker_env(data_dir: Path, lake: LakeSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "K2TEST_"))}
    env.update(_lake_env(lake))
    env.update(
        {
            "K2_DATA_DIR": str(data_dir),
            "K2_LOG__DURABILITY": "normal",
            "K2_LOG__TRADE_PARTITIONS": "4",
            "K2_LOG__QUOTE_PARTITIONS": "4",
            "K2_LOGGING__LEVEL": os.environ.get("K2TEST_LOG_LEVEL", "WARNING"),
            "K2_LAKE__SINK_MAX_RECORDS": "3000",
            "K2_LAKE__SINK_MAX_SECONDS": "0.2",
            "PYTHONPATH": str(ROOT / "src"),
        }
    )
    return env


async def _run_worker(env: dict[str, str], rng: random.Random, how: str, group: str) -> str:
    """One sink worker in ``group`` that dies by SIGKILL (``how``); returns ``how``."""
    env = {**env, "K2_LAKE__SINK_GROUP": group}
    if how != "external":
        env["K2TEST_CRASH_POINT"] = how
        env["K2TEST_CRASH_AT"] = str(rng.randint(1, 4))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        env=env,
        cwd=env["K2_DATA_DIR"],
        stdout=None if os.environ.get("K2TEST_VERBOSE") else asyncio.subprocess.DEVNULL,
    )
    try:
        # External kills land at a random moment of the worker's life (start-up
        # included); named points kill themselves. Either way the worker must die.
        limit = rng.uniform(0.6, 3.0) if how == "external" else 45.0
        await asyncio.wait_for(proc.wait(), timeout=limit)
    except TimeoutError:
        assert how == "external", f"worker with crash point {how} did not reach it"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL, (how, proc.returncode)
    return how


async def _crash_test(tmp_path: Path, lake: LakeSettings, kills: int, seed: int) -> None:
    data_dir = tmp_path / "data"
    env = _worker_env(data_dir, lake)
    settings = load_settings(data_dir=data_dir, log={"durability": "normal",
                             "trade_partitions": 4, "quote_partitions": 4})  # fmt: skip
    layout = topic_layout(settings)
    log = EmbeddedLog(data_dir / "log", durability="normal")  # creates data_dir
    rng = random.Random(seed)
    sim_config = SimulatorConfig(mode="synthetic", rate=2500, seed=seed)
    symbols = [s.symbol for s in sim_config.symbols]
    deaths: dict[str, int] = defaultdict(int)
    async with SimulatorServer(sim_config) as sim:
        source = BinanceSource(symbols, ws_url=sim.ws_url, rest_url=sim.rest_url)
        pipeline = CapturePipeline(source, LogOutput(log, layout), CaptureOptions(gap_grace_s=0.5))
        capture = asyncio.create_task(pipeline.run(max_seconds=600))
        for run in range(kills):
            how = CRASH_POINTS[run % len(CRASH_POINTS)]
            if run % 5 == 4:
                # Two sinks of one group at once: partitions spread over both, both
                # commit to the same tables, one dies at a crash point, one from outside.
                pair = (how, "external")
                hows = await asyncio.gather(
                    *(_run_worker(env, rng, h, f"pair-{run}") for h in pair)
                )
                deaths[hows[0]] += 1
                deaths["pair"] += 1
            else:
                deaths[await _run_worker(env, rng, how, f"crash-{run}")] += 1
        pipeline.request_stop()
        await asyncio.wait_for(capture, timeout=60)
    assert set(deaths) == {*CRASH_POINTS, "pair"}, deaths

    clean = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER),
        env={**env, "K2TEST_UNTIL_IDLE": "1", "K2_LAKE__SINK_GROUP": "final"},
        cwd=data_dir,
    )  # fmt: skip
    assert await asyncio.wait_for(clean.wait(), timeout=120) == 0

    topic = layout.data_topic("trade")
    logged: dict[str, list[int]] = defaultdict(list)
    for partition, start in log.begin_offsets(topic).items():
        for batch in log.read(TopicPartition(topic, partition), start):
            symbols = batch.records["symbol"].to_pylist()
            ids = batch.records["trade_id"].to_pylist()
            for symbol, trade_id in zip(symbols, ids, strict=True):
                logged[symbol].append(trade_id)
    log.close()
    table = ensure_tables(catalog_from(lake, data_dir), lake.namespace)["trades"]
    lake_rows = table.scan(selected_fields=("symbol", "trade_id")).to_arrow()
    assert sum(len(v) for v in logged.values()) > 1000  # the feed really ran
    assert lake_rows.num_rows == sum(len(v) for v in logged.values())
    for symbol, ids in logged.items():
        in_lake = lake_rows.filter(pc.equal(lake_rows["symbol"], symbol))["trade_id"].to_pylist()
        assert sorted(in_lake) == sorted(ids), symbol  # no gap, no duplicate
        assert sorted(ids) == list(range(min(ids), max(ids) + 1)), symbol  # contiguous


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sink_survives_50_sigkills_exactly_once(tmp_path: Path) -> None:
    await _crash_test(tmp_path, LakeSettings(), kills=50, seed=11)


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("variant", ["postgresql", "s3"])
async def test_sink_survives_sigkills_on_postgresql_and_s3(
    request: pytest.FixtureRequest, tmp_path: Path, variant: str
) -> None:
    from tests.lake.conftest import lake_settings_for

    # The same 50 kills as the embedded catalog's test (~2-3 min each here).
    await _crash_test(tmp_path, lake_settings_for(request, variant, tmp_path), kills=50, seed=5)

"""``k2 up`` stopped by SIGTERM, SIGKILL and a power cut, then restarted: every trade
the exchange printed is in the lake exactly once.

The exchange is a ``k2 simulate`` process of its own (it keeps trading while K2 is
down, and serves its trade history over REST, as Binance does). ``k2 up`` runs the
ingest, sink and API against it. Each round streams until the lake has grown, then
stops the platform a different way:

- SIGTERM to ``k2 up``: the clean path (capture stops, the sink commits the rest);
- SIGKILL to ``k2 up``: its children get SIGTERM from the kernel (``PR_SET_PDEATHSIG``)
  and the next ``k2 up`` starts at once, racing them — the ingest lock makes it wait;
- SIGKILL to ``k2 up`` *and* every stage at once (a power cut): nothing is flushed.

A last clean run lets the outage be repaired and the sink drain; then per symbol the
lake's trade ids are contiguous and unique, and the gaps recorded were all repaired.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from k2.config import load_settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from tests.ports import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Lake:
    def __init__(self, data_dir: Path) -> None:
        self.settings = load_settings(data_dir=data_dir)

    def trades(self) -> int:
        try:
            table = ensure_tables(open_catalog(self.settings))["trades"]
        except Exception:  # the first sink has not created the tables yet
            return 0
        snapshot = table.current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.additional_properties.get("total-records", 0))


def test_k2_up_restarts_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sim_port, api_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "k2",
            "simulate",
            "--port",
            str(sim_port),
            "--rate",
            "1500",
            "--seed",
            "4",
            "--drop",
            "0.005",
            "--duplicate",
            "0.005",
        ],
        env=base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **base,
        "K2_DATA_DIR": str(data_dir),
        "K2_BINANCE__WS_URL": f"ws://127.0.0.1:{sim_port}",
        "K2_BINANCE__REST_URL": f"http://127.0.0.1:{sim_port}",
        "K2_API__PORT": str(api_port),
        "K2_LOG__TRADE_PARTITIONS": "4",
        "K2_LOG__QUOTE_PARTITIONS": "4",
        "K2_LOG__DURABILITY": "normal",
        "K2_LAKE__SINK_MAX_SECONDS": "1",
        "K2_OPS__INGEST_METRICS_PORT": "0",
        "K2_OPS__SINK_METRICS_PORT": "0",
        "K2_OPS__RESTART_INITIAL_S": "0.2",
        "K2_OPS__RESTART_MAX_S": "1",
        "K2_LOGGING__LEVEL": os.environ.get("K2TEST_LOG_LEVEL", "WARNING"),
    }
    lake = Lake(data_dir)
    out = tmp_path / "up.out"
    try:
        until(lambda: _listening(sim_port), "the simulator to listen")

        def start() -> subprocess.Popen[bytes]:
            with out.open("ab") as fh:
                return subprocess.Popen(
                    [sys.executable, "-m", "k2", "up"], env=env, stdout=fh, stderr=fh
                )

        def stream_a_while(up: subprocess.Popen[bytes]) -> None:
            seen = lake.trades()
            until(lambda: lake.trades() > seen + 500, "the lake to grow")
            assert up.poll() is None, out.read_text()[-2000:]

        for how in ("SIGTERM", "SIGKILL", "power cut"):
            up = start()
            stream_a_while(up)
            if how == "power cut":
                stages = json.loads((data_dir / "run" / "up.json").read_text())["stages"]
                pids = [s["pid"] for s in stages.values() if s["pid"]]
                up.kill()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            elif how == "SIGKILL":
                up.kill()
            else:
                up.terminate()
            up.wait(60)

        up = start()
        stream_a_while(up)
        up.terminate()
        assert up.wait(90) == 0, out.read_text()[-2000:]
    finally:
        sim.terminate()
        sim.wait(30)

    tables = ensure_tables(open_catalog(lake.settings))
    trades = tables["trades"].scan(selected_fields=("symbol", "trade_id")).to_arrow()
    assert trades.num_rows > 2000
    for symbol in pc.unique(trades.column("symbol")).to_pylist():
        ids = sorted(trades.filter(pc.equal(trades.column("symbol"), symbol))
                     .column("trade_id").to_pylist())  # fmt: skip
        assert len(ids) == len(set(ids)), f"{symbol}: trades twice in the lake"
        missing = (ids[-1] - ids[0] + 1) - len(ids)
        assert missing == 0, f"{symbol}: {missing} trades missing between {ids[0]} and {ids[-1]}"
    gaps = tables["gaps"].scan(selected_fields=("status", "reason")).to_arrow().to_pylist()
    assert gaps, "the outages should have been recorded as gaps"
    assert {g["status"] for g in gaps} == {"repaired"}, gaps
    text = out.read_text()
    assert "K2 stopped." in text
    # The API's address and its development key are said where the user looks.
    assert f"API at http://127.0.0.1:{api_port}" in text
    assert "development key, valid while it runs: X-API-Key: " in text


def test_an_unreachable_exchange_is_said_plainly_with_the_way_out(tmp_path: Path) -> None:
    """Nothing listens at the exchange's address: k2 up keeps the capture retrying and
    says what is wrong and how to use the simulator instead."""
    dead = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("K2_")},
        "K2_DATA_DIR": str(tmp_path / "data"),
        "K2_BINANCE__WS_URL": f"ws://127.0.0.1:{dead}",
        "K2_BINANCE__REST_URL": f"http://127.0.0.1:{dead}",
        "K2_OPS__EXCHANGE_WARN_AFTER_S": "1",
        "K2_OPS__INGEST_METRICS_PORT": "0",
        "K2_LOGGING__LEVEL": "ERROR",
    }
    out = tmp_path / "up.out"
    with out.open("wb") as fh:
        up = subprocess.Popen(
            [sys.executable, "-m", "k2", "up", "--only", "ingest"], env=env, stdout=fh, stderr=fh
        )
    try:
        until(lambda: "cannot reach the exchange" in out.read_text(), "the warning", 60)
        assert up.poll() is None, "k2 up must keep retrying, not exit"
    finally:
        up.terminate()
        up.wait(60)
    text = out.read_text()
    assert f"ws://127.0.0.1:{dead}" in text
    assert "k2 up --simulate" in text

"""The k2 command, run as a user runs it: real subprocesses against the simulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.captures import HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID
from tests.ports import free_port

K2 = [sys.executable, "-m", "k2"]


def run_k2(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*K2, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_every_command_has_help() -> None:
    top = run_k2("--help")
    assert top.returncode == 0
    for command in (
        "capture",
        "ingest",
        "sink",
        "backfill",
        "maintain",
        "snapshots",
        "simulate",
        "demo",
        "up",
        "status",
        "chaos",
        "serve",
        "query",
        "config",
        "dlq",
    ):
        assert command in top.stdout
        sub = run_k2(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Usage" in sub.stdout


def test_config_shows_environment_overrides() -> None:
    out = run_k2("config", env={"K2_CAPTURE__SYMBOLS": "solusdt,BTCUSDT"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["capture"]["symbols"] == ["SOLUSDT", "BTCUSDT"]


def test_invalid_setting_names_the_variable() -> None:
    out = run_k2("config", env={"K2_CAPTURE__GAP_GRACE_S": "soon"})
    assert out.returncode == 2
    assert "K2_CAPTURE__GAP_GRACE_S" in out.stderr


@pytest.fixture
def simulator() -> Iterator[int]:
    """`k2 simulate --replay builtin` in its own process; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [*K2, "simulate", "--port", str(port), "--replay", "builtin", "--speed", "0",
         "--log-level", "ERROR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # The simulator prints this line once it is listening: wait for it, not a time.
        assert proc.stderr is not None
        for line in proc.stderr:
            if "simulator listening" in line:
                break
        else:
            pytest.fail(f"simulator exited with {proc.wait()}")
        httpx.get(f"http://127.0.0.1:{port}/api/v3/ping").raise_for_status()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_capture_command_against_the_simulator(simulator: int, tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    result = run_k2(
        "capture", "--symbols", "btcusdt", "--streams", "trade",
        "--ws-url", f"ws://127.0.0.1:{simulator}", "--rest-url", f"http://127.0.0.1:{simulator}",
        "--out", str(out), "--max-seconds", "3", "--log-format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    ids = sorted(r["trade_id"] for r in rows if r["type"] == "trade")
    assert ids == list(range(HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID + 1))
    assert {r["type"] for r in rows} == {"trade"}  # --streams trade: no quotes
    summary = json.loads(result.stderr[result.stderr.index("{\n") :])
    assert summary["trades"] == len(ids)
    # Structured JSON logs carry the connection's correlation id.
    log_lines = [json.loads(x) for x in result.stderr.splitlines() if x.startswith('{"')]
    assert any("conn_id" in x for x in log_lines)


def test_capture_reports_an_unknown_symbol_clearly(simulator: int) -> None:
    result = run_k2(
        "capture", "--symbols", "BTCUSDT,NOPEUSDT", "--rest-url",
        f"http://127.0.0.1:{simulator}", "--ws-url", f"ws://127.0.0.1:{simulator}",
    )  # fmt: skip
    assert result.returncode == 2
    assert "NOPEUSDT" in result.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end_and_again_on_the_same_data(tmp_path: Path) -> None:
    env = {"K2_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}  # no wrapped lines
    for run in ("first", "second"):
        result = run_k2("demo", "--seconds", "4", timeout=180, env=env)
        out = result.stdout
        assert result.returncode == 0, f"{run} run:\n{out}\n{result.stderr}"
        assert "is there exactly once" in out, out
        for section in ("Faults the simulator injected", "Lake snapshots", "Bars:",
                        "A hybrid query over HTTP", "/ready 200"):  # fmt: skip
            assert section in out, f"{run} run lacks {section!r}"
        assert re.search(r"over 100 calls p50 [0-9.]+ ms, p99 [0-9.]+ ms", out)
    # The data stays for k2 query.
    query = run_k2("query", "trades", "--symbol", "BTCUSDT", "--limit", "2", "--format",
                   "json", env=env)  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert len(json.loads(query.stdout)["data"]) == 2


def test_ingest_command_fills_the_embedded_log(simulator: int, tmp_path: Path) -> None:
    from k2.log.base import TopicPartition
    from k2.log.embedded import EmbeddedLog

    result = run_k2(
        "ingest", "--symbols", "BTCUSDT", "--ws-url", f"ws://127.0.0.1:{simulator}",
        "--rest-url", f"http://127.0.0.1:{simulator}", "--max-seconds", "3",
        env={"K2_DATA_DIR": str(tmp_path), "K2_LOG__TRADE_PARTITIONS": "4"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with EmbeddedLog(tmp_path / "log") as log:
        topic = "market.crypto.trades.binance"
        assert log.topic(topic).partitions == 4
        ids: list[int] = []
        for partition, start in log.begin_offsets(topic).items():
            for batch in log.read(TopicPartition(topic, partition), start):
                ids += batch.records.column("trade_id").to_pylist()
    assert sorted(ids) == list(range(HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID + 1))


def test_lake_commands_sink_backfill_snapshots_maintain(simulator: int, tmp_path: Path) -> None:
    env = {"K2_DATA_DIR": str(tmp_path), "K2_LOG__TRADE_PARTITIONS": "4",
           "K2_LOG__QUOTE_PARTITIONS": "4"}  # fmt: skip
    ingest = run_k2(
        "ingest", "--symbols", "BTCUSDT", "--ws-url", f"ws://127.0.0.1:{simulator}",
        "--rest-url", f"http://127.0.0.1:{simulator}", "--max-seconds", "3", env=env,
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr
    sink = run_k2("sink", "--until-idle", "--max-seconds", "60", env=env, timeout=120)
    assert sink.returncode == 0, sink.stderr
    summary = json.loads(sink.stderr[sink.stderr.index("{\n") :])
    assert summary["records"]["trades"] == HFT_LAST_TRADE_ID - HFT_FIRST_TRADE_ID + 1

    # An archive of the same trades as Binance publishes them (same ids and times),
    # plus 10 earlier trades the live capture never saw.
    first = HFT_FIRST_TRADE_ID - 10
    archive = tmp_path / "BTCUSDT-trades-2023-04-05.csv"
    archive.write_text("".join(
        f"{i},28165.47000000,0.00100000,28.16547000,{1680652799000 + i - first},true,true\n"
        for i in range(first, HFT_FIRST_TRADE_ID + 100)
    ))  # fmt: skip
    for expected_added in (10, 0):  # live overlap skipped; a second import adds nothing
        done = run_k2("backfill", str(archive), env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["added"] == expected_added

    snaps = run_k2("snapshots", "--table", "trades", env=env)
    infos = [json.loads(line) for line in snaps.stdout.splitlines()]
    assert infos[-1]["total_records"] == HFT_LAST_TRADE_ID - first + 1
    maintained = run_k2("maintain", "--table", "trades", "--dry-run", env=env)
    assert maintained.returncode == 0, maintained.stderr
    assert json.loads(maintained.stdout)["table"] == "market_data.trades"
    bad = run_k2("snapshots", "--table", "candles", env=env)
    assert bad.returncode == 2
    assert "unknown table" in bad.stderr

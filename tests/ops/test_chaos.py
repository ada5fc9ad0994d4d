"""``k2 chaos`` against a real platform: ``k2 up --simulate`` in a temporary data
directory (simulator, ingest, sink and API as their own processes).

- kill-sink: ``k2 up`` restarts the sink and the lake catches up with the log;
- disconnect-exchange: the capture loses its connections, gets them back, and the
  gap the outage left is found and repaired from the simulator's REST history;
- high-lag and slow-storage, briefly: the sink process is really stopped (state ``T``)
  and resumed, also when the experiment is interrupted; ``chaos.json`` says what the
  sink must do while it runs and is gone afterwards, also when interrupted.

One platform serves the module's tests (starting one costs seconds of both cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from k2.config import Settings, load_settings
from k2.errors import ConfigError, TerminalError
from k2.ops import chaos
from k2.ops.chaos import Pace
from k2.ops.status_files import read_status, status_path
from tests.ports import free_port
from tests.waiting import until

slow = pytest.mark.slow

FAST = Pace(interval_s=0.2)


def _proc_state(pid: int) -> str:
    """The one-letter state in ``/proc/<pid>/stat`` (``T``: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@dataclass
class Platform:
    settings: Settings
    process: subprocess.Popen[bytes]
    output: Path

    def up(self) -> dict[str, dict[str, object]]:
        status = read_status(status_path(self.settings, "up")) or {}
        stages: dict[str, dict[str, object]] = status.get("stages") or {}
        return stages

    def ingest(self) -> dict[str, object]:
        return read_status(status_path(self.settings, "ingest")) or {}

    def sink_pid(self) -> int:
        pid = self.up().get("sink", {}).get("pid")
        assert isinstance(pid, int), self.up()
        return pid

    def tail(self) -> str:
        return self.output.read_text()[-3000:]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("chaos")
    data_dir = tmp / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("K2_")},
        "K2_DATA_DIR": str(data_dir),
        "K2_API__PORT": str(free_port()),
        "K2_LOG__DURABILITY": "normal",
        "K2_LAKE__SINK_MAX_SECONDS": "0.5",
        "K2_OPS__INGEST_METRICS_PORT": "0",
        "K2_OPS__SINK_METRICS_PORT": "0",
        "K2_OPS__STATUS_INTERVAL_S": "0.25",
        "K2_OPS__RESTART_INITIAL_S": "0.2",
        "K2_OPS__RESTART_MAX_S": "1",
        # Degrade on a backlog of records a few seconds of a stopped sink build up (the
        # sink normally keeps it near 0.5 s of flow), and recover within seconds.
        "K2_DEGRADATION__LAG_RECORDS__SOFT": "800",
        "K2_DEGRADATION__LAG_RECORDS__GRACEFUL": "1500",
        "K2_DEGRADATION__LAG_RECORDS__AGGRESSIVE": "100000",
        "K2_DEGRADATION__LAG_RECORDS__CIRCUIT_BREAK": "200000",
        "K2_DEGRADATION__COOLDOWN_S": "1",
        "K2_LOGGING__LEVEL": os.environ.get("K2TEST_LOG_LEVEL", "WARNING"),
    }
    output = tmp / "up.out"
    with output.open("wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "k2", "up", "--simulate", "--simulator-port", str(free_port()),
             "--simulator-rate", "300"],
            env=env, stdout=fh, stderr=fh,
        )  # fmt: skip
    settings = load_settings(data_dir=data_dir, ops={"status_interval_s": 0.25})
    running = Platform(settings, process, output)
    try:
        until(
            lambda: (
                _int(running.ingest().get("connections")) > 0
                and {s.get("state") for s in running.up().values()} == {"running"}
            ),
            "the platform to run and the capture to connect",
        )
        until(lambda: _lake_rows(settings) > 0, "a first lake commit")
        yield running
    finally:
        process.terminate()
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _lake_rows(settings: Settings) -> int:
    from k2.ops.status import gather

    return sum(int(c.get("rows") or 0) for c in gather(settings).commits.values())


@slow
def test_kill_sink_is_restarted_and_the_lake_catches_up(platform: Platform) -> None:
    old = platform.sink_pid()
    restarts = _int(platform.up()["sink"].get("restarts"))
    lines: list[str] = []

    result = chaos.kill_sink(platform.settings, timeout_s=90, say=lines.append, pace=FAST)

    assert result.recovered, (result, lines, platform.tail())
    assert result.old_pid == old
    assert result.new_pid is not None and result.new_pid != old
    assert result.restarts == restarts + 1
    assert result.restarted_after_s is not None and result.caught_up_after_s is not None
    assert result.caught_up_after_s >= result.restarted_after_s
    assert not Path(f"/proc/{old}").exists() or _proc_state(old) == "Z"
    assert any("restarted the sink" in line for line in lines)


@slow
def test_disconnect_exchange_reconnects_and_repairs_the_gap(platform: Platform) -> None:
    lines: list[str] = []

    result = chaos.disconnect_exchange(
        platform.settings, seconds=2, timeout_s=60, say=lines.append, pace=FAST
    )

    assert result.recovered, (result, lines, platform.tail())
    assert result.closed >= 1
    assert result.dropped_after_s is not None and result.reconnected_after_s is not None
    assert result.reconnected_after_s >= result.dropped_after_s
    assert result.reconnects >= 1
    assert result.gaps_detected >= 1
    assert result.gaps_repaired == result.gaps_detected
    assert result.gaps.get("repaired", 0) >= result.gaps_repaired
    assert _int(platform.ingest().get("connections")) >= 1


@slow
def test_high_lag_stops_the_sink_and_the_level_rises_and_recovers(platform: Platform) -> None:
    pid = platform.sink_pid()
    results: list[chaos.HighLagResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(
                chaos.high_lag(platform.settings, seconds=5, recover_timeout_s=60, pace=FAST)
            )
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    until(lambda: _proc_state(pid) == "T" or not thread.is_alive(), "the sink to be stopped")
    assert _proc_state(pid) == "T", errors
    thread.join(120)
    assert not thread.is_alive() and not errors, errors
    assert _proc_state(pid) != "T"
    assert platform.sink_pid() == pid  # paused and resumed, not restarted
    (result,) = results
    assert result.sink_pid == pid and result.stopped_s >= 5
    assert result.peak_lag_records >= 800, result.samples
    levels = result.levels
    assert levels and levels[0].old == "NORMAL" and levels[0].new != "NORMAL", levels
    assert levels[-1].new == "NORMAL", levels
    assert result.recovered and result.recovered_after_s is not None
    assert result.samples[-1].level == "NORMAL" and result.samples[-1].shed_pending == 0
    assert result.trades_backfilled >= result.trades_shed


@slow
def test_high_lag_resumes_the_sink_when_interrupted(platform: Platform) -> None:
    pid = platform.sink_pid()

    def interrupt(line: str) -> None:
        if "stopped for" in line:
            until(lambda: _proc_state(pid) == "T", "the sink to be stopped", 10)
            raise KeyboardInterrupt  # Ctrl-C while the sink is stopped

    with pytest.raises(KeyboardInterrupt):
        chaos.high_lag(platform.settings, seconds=60, say=interrupt, pace=FAST)
    until(lambda: _proc_state(pid) != "T", "the sink to be resumed", 10)
    assert platform.sink_pid() == pid


@slow
def test_slow_storage_writes_chaos_json_for_its_duration_only(platform: Platform) -> None:
    path = chaos.chaos_path(platform.settings)
    seen: list[dict[str, float]] = []

    def look(line: str) -> None:
        if path.exists():
            seen.append(json.loads(path.read_text()))

    started = time.time()
    result = chaos.slow_storage(
        platform.settings, delay_s=0.3, seconds=1.0, recover_timeout_s=60, say=look, pace=FAST
    )

    assert seen, "chaos.json should exist while storage is slowed"
    assert seen[0]["storage_delay_s"] == 0.3
    assert started + 1.0 <= seen[0]["until"] <= time.time() + 1.0
    assert not path.exists()
    assert result.delay_s == 0.3 and result.slowed_s >= 1.0 and result.recovered


@slow
def test_slow_storage_removes_chaos_json_when_interrupted(platform: Platform) -> None:
    path = chaos.chaos_path(platform.settings)

    def interrupt(line: str) -> None:
        if path.exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chaos.slow_storage(platform.settings, delay_s=5, seconds=60, say=interrupt, pace=FAST)
    assert not path.exists()


def test_disconnect_exchange_needs_the_simulator(tmp_path: Path) -> None:
    # A platform without a simulator stage: the supervisor's own view, rewritten live.
    settings = load_settings(data_dir=tmp_path)
    up = status_path(settings, "up")
    up.parent.mkdir(parents=True)
    stages = {n: {"pid": os.getpid(), "state": "running"} for n in ("ingest", "sink", "api")}
    up.write_text(json.dumps({"stages": stages, "updated_at": time.time()}))
    with pytest.raises(ConfigError, match="k2 up --simulate"):
        chaos.disconnect_exchange(settings, seconds=1)


@pytest.mark.parametrize("experiment", ["kill_sink", "high_lag", "slow_storage", "disconnect"])
def test_without_a_platform_every_experiment_says_how_to_start_one(
    tmp_path: Path, experiment: str
) -> None:
    settings = load_settings(data_dir=tmp_path)
    experiments: dict[str, Callable[[], object]] = {
        "kill_sink": lambda: chaos.kill_sink(settings),
        "high_lag": lambda: chaos.high_lag(settings),
        "slow_storage": lambda: chaos.slow_storage(settings),
        "disconnect": lambda: chaos.disconnect_exchange(settings),
    }
    run = experiments[experiment]
    with pytest.raises(TerminalError, match=r"k2 up --simulate"):
        run()
    # A stale up.json (its supervisor is gone) is no platform either.
    up = status_path(settings, "up")
    up.parent.mkdir(parents=True, exist_ok=True)
    up.write_text(json.dumps({"stages": {}, "updated_at": time.time() - 3600}))
    with pytest.raises(TerminalError, match=r"not running .*k2 up --simulate"):
        run()


def test_storage_delay_applies_until_the_deadline_only(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    path = chaos.chaos_path(settings)
    assert chaos.storage_delay_s(settings) == 0.0  # no file
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"storage_delay_s": 2.5, "until": 1000.0}))
    assert chaos.storage_delay_s(settings, now=999.0) == 2.5
    assert chaos.storage_delay_s(settings, now=1000.0) == 0.0
    path.write_text('{"storage_delay_s": "slow", "until": 1000.0}')
    assert chaos.storage_delay_s(settings, now=999.0) == 0.0
    path.write_text("{not json")
    assert chaos.storage_delay_s(settings, now=999.0) == 0.0

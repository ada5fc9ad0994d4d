"""Fault: a stage of ``k2 up`` dies by SIGKILL at a random moment, several times.

``k2 up`` runs the ingest, the sink and the API against a separate ``k2 simulate``
process that drops and duplicates frames. A seeded schedule SIGKILLs each stage at
least once (five kills in all) at random moments of the run. Expected outcome:
*recovered with nothing lost* — the supervisor restarts every killed stage (counted
in ``up.json``), the API answers ``/health`` again after its kill, and after a final
clean stop the lake holds every trade of the run exactly once, with every gap the
drops and the kills opened recorded as repaired, and nothing dead-lettered.
"""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.request
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from k2.config import load_settings
from k2.ops.status import gather
from tests.faults.fault_kit import (
    assert_exactly_once,
    exchange,
    k2,
    k2_env,
    lake_gap_statuses,
    lake_trade_ids,
    read_json,
    tail,
    until,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow

SEED = 6_2024
STAGES = ("ingest", "sink", "api")


def _kill_schedule(rng: random.Random) -> list[tuple[str, float]]:
    """Five (stage, seconds to wait before killing it) pairs: every stage at least
    once, in a random order, at random moments 0.5–6 s apart."""
    victims = list(STAGES)
    rng.shuffle(victims)
    victims += rng.choices(STAGES, k=2)
    return [(victim, rng.uniform(0.5, 6.0)) for victim in victims]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def _lake_rows(data_dir: Path) -> int:
    try:
        return sum(len(ids) for ids in lake_trade_ids(load_settings(data_dir=data_dir)).values())
    except Exception:  # the first sink has not created the tables yet
        return 0


@pytest.mark.timeout(240)
def test_sigkilled_stages_are_restarted_and_the_lake_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    schedule = _kill_schedule(rng)
    data_dir, api_port = tmp_path / "data", free_port()
    up_json, out = data_dir / "run" / "up.json", tmp_path / "up.out"

    def stage(name: str) -> dict[str, object]:
        info = read_json(up_json).get("stages", {}).get(name, {})
        return info if isinstance(info, dict) else {}

    def restarted(name: str, old_pid: int) -> bool:
        info = stage(name)
        return info.get("pid") not in (None, old_pid) and info.get("state") == "running"

    with exchange("--drop", "0.005", "--duplicate", "0.005", rate=1200, seed=4) as port:
        env = k2_env(data_dir, port, K2_API__PORT=str(api_port))
        up = k2(["up"], env, out)
        try:
            until(lambda: all(stage(s).get("state") == "running" for s in STAGES),
                  "every stage to run", 60)  # fmt: skip
            until(lambda: _healthy(api_port), "the API to answer /health", 60)
            until(lambda: _lake_rows(data_dir) > 500, "the lake to fill", 90)
            kills: Counter[str] = Counter()
            for victim, wait_s in schedule:
                time.sleep(wait_s)  # a random moment to strike: the fault's timing
                pid = stage(victim).get("pid")
                assert isinstance(pid, int), f"{victim} has no pid in up.json: {stage(victim)}"
                os.kill(pid, signal.SIGKILL)
                kills[victim] += 1
                until(partial(restarted, victim, pid), f"the supervisor to restart {victim}", 30)
                if victim == "api":
                    until(lambda: _healthy(api_port), "the API to answer again after its kill")
            assert up.poll() is None, tail(out)
            for name in STAGES:
                restarts = stage(name).get("restarts")
                assert restarts == kills[name], (
                    f"{name}: {restarts} restarts for {kills[name]} kills"
                )
            # Recovered: the restarted platform keeps filling the lake and answering.
            seen = _lake_rows(data_dir)
            until(lambda: _lake_rows(data_dir) > seen + 1000, "the lake to grow after the kills")
            assert _healthy(api_port)
            up.terminate()
            assert up.wait(120) == 0, tail(out)
        finally:
            if up.poll() is None:
                up.kill()
                up.wait(30)

    settings = load_settings(data_dir=data_dir)
    assert_exactly_once(lake_trade_ids(settings), "lake", at_least=5000)
    gaps = lake_gap_statuses(settings)
    assert gaps, "the drops and kills should have been recorded as gaps"
    assert set(gaps) == {"repaired"}, Counter(gaps)
    status = gather(settings)
    assert status.lag.get("trades") == 0, status.lag
    assert sum(status.dead_letters.values()) == 0, status.dead_letters
    assert "K2 stopped." in tail(out)

"""``make soak`` in miniature: the real soak (simulator with faults, ``k2 up``'s stages
as processes, query load, memory sampling, the lake audit) for 20 s at a low rate.

It runs ``python -m benchmarks.soak`` as a process, as ``make soak`` does, and reads
the result it writes as JSON. Speed is not asserted (that belongs in BENCHMARKS.md);
what is asserted is that every fault was actually injected, and that the lake still
holds every trade the simulator printed exactly once with no stage restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_short_soak_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.soak", "--seconds", "20", "--rate", "1000",
            "--symbols", "20", "--queries-per-s", "3",
            # Denser faults than the real soak's, so 20 s at 1,000 trades/s sees each.
            "--drop", "0.002", "--duplicate", "0.002", "--disconnect-every", "6",
            "--rest-429-every", "10", "--data-dir", str(tmp_path / "data"),
            "--no-write", "--json", str(out),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert out.exists(), f"no result (exit {done.returncode}):\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())
    check, sim = result["check"], result["simulator"]

    # The faults the issue names were all injected, so the audit below means something.
    assert sim["dropped"] > 0
    assert sim["duplicated"] > 0
    assert sim["disconnects_forced"] > 0
    assert sim["rest_429s"] > 0
    assert result["ingest"]["duplicates"] > 0
    assert result["ingest"]["gaps_repaired"] > 0

    assert check["rows"] > 10_000, check
    assert len(check["symbols"]) == 20
    assert check["lost"] == 0, [s for s in check["symbols"] if s["lost"]]
    assert check["duplicated"] == 0, [s for s in check["symbols"] if s["duplicated"]]
    assert check["foreign"] == 0
    assert result["restarts"] == {"ingest": 0, "sink": 0, "api": 0}, (
        result["supervisor"],
        _stage_logs(tmp_path / "data" / "run"),
    )
    # Clean stops: the ingest and the sink exit 0; uvicorn ends the API by re-raising
    # the SIGTERM it handled, so its exit is -15 (or 0).
    exits = result["exits"]
    assert (exits["ingest"], exits["sink"]) == (0, 0), exits
    assert exits["api"] in (0, -signal.SIGTERM), exits

    queries = result["queries"]
    assert sum(q["ok"] for q in queries.values()) > 0, queries
    assert sum(q["server_errors"] for q in queries.values()) == 0, queries
    assert {"ingest", "sink", "api"} <= set(result["memory"])
    assert all(m["peak"] > 0 for m in result["memory"].values())

    assert result["passed"] is True, result["verdicts"]
    assert done.returncode == 0, done.stderr[-4000:]
    # --no-write leaves BENCHMARKS.md alone; the tables still go to stdout.
    assert "| trades lost (simulator history vs lake) | 0 of" in done.stdout


def _stage_logs(run_dir: Path) -> dict[str, list[str]]:
    """The last lines each stage wrote, to say why one restarted."""
    return {
        log.stem: log.read_text(errors="replace").splitlines()[-20:]
        for log in sorted(run_dir.glob("*.log"))
    }

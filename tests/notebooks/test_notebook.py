"""The demo notebook, run from top to bottom as a reader would run it.

The notebook starts a real platform (``k2 up --simulate``: simulator, ingest, sink, API
as processes) in a kernel of its own, queries it and stops it; every cell asserts what
it shows. Here it runs in a kernel on this interpreter (a kernel spec written to a
temporary ``JUPYTER_PATH``, so no Jupyter set-up on the machine is needed or used),
and the test checks that no cell failed, that each section printed what it exists to
show, and that the platform was stopped. The committed ``.ipynb`` must be exactly what
``notebooks/build_notebook.py`` builds (no outputs, no hand edits).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.notebooknode import NotebookNode
from notebooks.build_notebook import CELLS, NOTEBOOK, render

CELL_TIMEOUT_S = 120
KERNEL_NAME = "k2-notebook-test"

#: nbformat's reader carries no type hints; this name gives it its own.
_read: Callable[..., NotebookNode] = nbformat.read

#: Per code cell, text its output must contain: what the section exists to show.
EXPECTED: dict[str, list[str]] = {
    "setup": ["k2 up started"],
    "wait": ["K2 is up: the lake holds"],
    "architecture": ["simulator", "ingest", "sink", "api", "running"],
    "ingestion-status": ["ingest: streaming", "records in the log", "dead letters"],
    "ingestion-log": ["trades/s", "BTCUSDT"],
    "ingestion-dlq": ["dead letter(s)"],
    "storage-snapshots": ["snapshots, one every", "log offsets stored"],
    "storage-files": ["data files", "B/trade", "timestamp_day="],
    "monitoring-metrics": ["k2_api_requests_total", "k2_lake_commit_age_seconds"],
    "monitoring-status": ["Stages", "Lake", "streaming"],
    "query-last": ["from the live tail"],
    "query-bars": ["vwap", "match a Decimal recomputation"],
    "query-sql": ["agree on every row"],
    "query-hybrid": ["p50", "p99"],
    "scaling": ["msgs/s", "B/trade", "The scaling path"],
    "teardown": ["k2 up exited with 0", "K2 stopped cleanly"],
}


def test_the_committed_notebook_is_what_the_generator_builds() -> None:
    assert NOTEBOOK.read_text() == render(), (
        f"{NOTEBOOK.name} is stale or was edited by hand: run python notebooks/build_notebook.py"
    )
    code_cells = {cell_id for cell_id, kind, _ in CELLS if kind == "code"}
    assert set(EXPECTED) <= code_cells


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_demo_notebook_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "k2-data"
    _kernel_on_this_interpreter(tmp_path / "jupyter", monkeypatch)
    for name in [k for k in os.environ if k.startswith("K2_")]:
        monkeypatch.delenv(name)  # the demo is the same whatever K2 settings the machine has
    monkeypatch.setenv("K2_NOTEBOOK_DATA_DIR", str(data_dir))
    nb = _read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"a notebook cell failed (platform logs in {data_dir / 'run'}):\n{exc}")
    finally:
        _stop_leftover_platform(data_dir)

    outputs = {cell.id: _output_text(cell) for cell in nb.cells if cell.cell_type == "code"}
    errors = [c.id for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    for cell_id, needles in EXPECTED.items():
        missing = [n for n in needles if n not in outputs[cell_id]]
        assert not missing, f"cell {cell_id!r} did not show {missing}:\n{outputs[cell_id]}"
    up = json.loads((data_dir / "run" / "up.json").read_text())
    assert {s["state"] for s in up["stages"].values()} == {"stopped"}, up["stages"]


def _kernel_on_this_interpreter(jupyter_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel spec that runs ipykernel on ``sys.executable`` (this venv), found first
    through ``JUPYTER_PATH``; Jupyter's other directories point into the test's tmp."""
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "K2 (test interpreter)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_dir / "runtime"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(jupyter_dir / "config"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(jupyter_dir / "ipython"))


def _output_text(cell: Any) -> str:
    """Everything a code cell printed (streams and plain-text results)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(str(output.data.get("text/plain", "")))
    return "".join(parts)


def _stop_leftover_platform(data_dir: Path, deadline_s: float = 90.0) -> None:
    """If the notebook failed before its teardown, stop the ``k2 up`` it started (its
    pid is in ``run/up.json``), so no platform outlives the test."""
    try:
        pid = int(json.loads((data_dir / "run" / "up.json").read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError):
        return  # never started, or already gone
    if b"k2" not in cmdline or b"up" not in cmdline:
        return  # the pid now belongs to some other process
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)  # polling for the process to exit: it is not our child

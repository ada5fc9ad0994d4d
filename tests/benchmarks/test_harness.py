"""The benchmark harness cannot rot silently: every group still runs and every results
block of BENCHMARKS.md is still rewritten, with the header naming the machine, the
software and the commit.

The end-to-end test runs ``python -m benchmarks.run --mode tiny`` (every group on tiny
inputs, real simulator, broker, lake, server) against a copy of BENCHMARKS.md. No
speed is asserted: numbers belong in BENCHMARKS.md, not in tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import environment
from benchmarks.harness import Result, dataset_result, render
from benchmarks.run import GROUPS, MODES, render_header, replace_block
from k2.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BLOCK = re.compile(r"<!-- results:([\w-]+):start -->\n(.*?)\n?<!-- results:\1:end -->", re.S)


def _blocks(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env["K2_BENCH_DIR"] = str(tmp_path / "cache")
    return env


def test_benchmarks_md_has_a_block_for_every_group_and_the_header() -> None:
    # Other blocks (the soak's) are written by their own commands.
    assert {"header", *GROUPS} <= set(_blocks(BENCHMARKS_MD.read_text()))


def test_replace_block_rewrites_only_its_block() -> None:
    text = (
        "intro\n<!-- results:a:start -->\nold a\n<!-- results:a:end -->\nmiddle\n"
        "<!-- results:b:start -->\nold b\n<!-- results:b:end -->\nend\n"
    )
    out = replace_block(text, "a", "new a")
    assert _blocks(out) == {"a": "new a", "b": "old b"}
    assert out.startswith("intro\n") and "middle\n" in out and out.endswith("end\n")


def test_a_missing_block_is_named() -> None:
    with pytest.raises(ConfigError, match=r"results:scaling:start"):
        replace_block("no blocks here", "scaling", "x")


def test_the_header_names_machine_versions_commit_and_timings() -> None:
    header = render_header(
        environment.facts(), "quick", ["--mode", "quick"], {"decode": 12.0}, ["decode", "sink"]
    )
    assert environment.cpu_model() in header
    assert re.search(r"\| memory \| \d+\.\d GiB \|", header)
    assert re.search(r"\| cores \| \d+ ", header)
    assert "| os |" in header and "| python | CPython 3." in header
    for library in ("pyarrow", "duckdb", "pyiceberg", "arcticdb", "fastapi"):
        assert re.search(rf"{library} \d", header), library
    assert "| commit |" in header and "load average" in header
    assert "python -m benchmarks.run --mode quick" in header
    assert MODES["quick"].about in header
    assert "decode 12 s" in header and "still running sink" in header
    assert "| peers | cryptofeed" in header


def test_a_peer_row_carries_k2s_ratio_in_either_direction() -> None:
    k2 = Result("K2 sink", "records/s", [200.0, 210.0, 190.0])
    faster = Result("peer", "records/s", [100.0, 100.0, 100.0], peer_of="K2 sink")
    slower = Result("other peer", "records/s", [400.0], peer_of="K2 sink")
    block = render([dataset_result("some trades"), k2, faster, slower], "cmd")
    assert block.startswith("Dataset: some trades")
    assert "| K2 2.00× faster |" in block
    assert "| K2 2.00× slower |" in block
    assert "| 200 records/s | 190 – 210 | 3 |" in block
    assert "Command: `cmd`" in block


def test_no_write_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    copy = tmp_path / "BENCHMARKS.md"
    shutil.copy(BENCHMARKS_MD, copy)
    before = copy.read_text()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--mode", "tiny", "--only", "decode",
         "--no-write", "--file", str(copy)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert copy.read_text() == before
    assert "## decode" in done.stdout and "frames/s" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_tiny_run_rewrites_every_block(tmp_path: Path) -> None:
    copy = tmp_path / "BENCHMARKS.md"
    original = BENCHMARKS_MD.read_text()
    # Start from empty blocks, so every block found afterwards was written by this run.
    emptied = original
    for name in _blocks(original):
        emptied = replace_block(emptied, name, "")
    copy.write_text(emptied)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--mode", "tiny", "--file", str(copy)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    blocks = _blocks(copy.read_text())
    assert {"header", *GROUPS} <= set(blocks)
    for name in GROUPS:
        body = blocks[name]
        assert f"Command: `python -m benchmarks.run --mode tiny --only {name}`" in body, name
        assert "|---" in body, f"{name}: no table"
    header = blocks["header"]
    assert environment.cpu_model() in header and "pyarrow" in header and "| commit |" in header
    assert "took " in header and "still running" not in header
    assert "Dataset:" in blocks["decode"] and "cryptofeed" in blocks["decode"]
    assert "pyiceberg Table.append" in blocks["sink"]
    assert "pyiceberg Table.append" in blocks["backfill"]
    assert "ArcticDB" in blocks["query"] and "DuckDB" in blocks["query"]
    for table in ("Capture vs symbols", "Sink vs trades", "Sink vs symbols",
                  "Queries vs trades", "Queries vs symbols"):  # fmt: skip
        assert f"**{table}" in blocks["scaling"], table
    # Outside the blocks, the file is what it was.
    assert BLOCK.sub("", copy.read_text()) == BLOCK.sub("", emptied)

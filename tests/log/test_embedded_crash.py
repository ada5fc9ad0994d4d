"""Crash safety: SIGKILL the producing process at random moments, many times.

Each run of ``log_worker.py crash-produce`` appends batches with unique trade ids and
records each batch in an fsync'ed ack file only after ``produce`` returned. After every
kill the producer is restarted (runs alternate between durability ``full`` and
``normal``: both promise to survive a process crash). Finally every acknowledged batch
must be in the log exactly once and whole, no batch may appear twice or in part, the
offsets must be dense, and SQLite's integrity check must pass.

The random delays choose *when to kill*, drawn from a seeded RNG; they are not used to
wait for anything.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from k2.log.base import TopicPartition
from k2.log.embedded import EmbeddedLog
from k2.log.embedded_db import DB_FILE
from tests.log.log_worker import (
    BATCH_SPAN,
    CRASH_PARTITIONS,
    CRASH_TOPIC,
    crash_batch_size,
    spawn,
    wait_ready,
)

KILLS = 40


def _start(directory: Path, acks: Path, run: int) -> subprocess.Popen[str]:
    durability = "full" if run % 2 == 0 else "normal"
    proc = spawn("crash-produce", directory, acks, run, durability)
    wait_ready(proc, f"producer run {run}")
    return proc


def _acked(acks: Path) -> list[tuple[int, int]]:
    """(start id, count) of every acknowledged batch; a torn last line was never acked."""
    text = acks.read_text() if acks.exists() else ""
    complete = text[: text.rfind("\n") + 1]
    return [(int(a), int(b)) for a, b in (line.split() for line in complete.splitlines())]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_never_loses_or_repeats_an_acknowledged_batch(tmp_path: Path) -> None:
    directory, acks = tmp_path / "log", tmp_path / "acks.txt"
    rng = random.Random(20240405)
    started = time.monotonic()
    for run in range(KILLS):
        before = len(_acked(acks))
        proc = _start(directory, acks, run)
        # Let each run get at least one batch acknowledged (a loaded machine may be slow
        # to start producing), then kill it at a random moment of its writing.
        deadline = time.monotonic() + 20
        while len(_acked(acks)) <= before:
            assert time.monotonic() < deadline, f"run {run} acknowledged nothing in 20 s"
            time.sleep(0.005)  # polling the acks file, with a deadline
        time.sleep(rng.uniform(0.0, 0.25))  # when to kill, not a synchronisation
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL, f"run {run} exited on its own"
        assert proc.stdout is not None
        proc.stdout.close()
    elapsed = time.monotonic() - started

    acked = _acked(acks)
    assert len(acked) > KILLS, f"too few batches acknowledged to mean anything: {len(acked)}"
    with EmbeddedLog(directory) as log:
        trade_ids: list[int] = []
        for p in range(CRASH_PARTITIONS):
            offsets: list[int] = []
            for batch in log.read(TopicPartition(CRASH_TOPIC, p), 0):
                offsets += batch.offsets().to_pylist()
                trade_ids += batch.records.column("trade_id").to_pylist()
            assert offsets == list(range(len(offsets))), f"partition {p}: offsets not dense"

    repeated = [t for t, n in Counter(trade_ids).items() if n > 1]
    assert not repeated, f"{len(repeated)} records appear twice, e.g. {repeated[:5]}"
    per_batch = Counter(t // BATCH_SPAN * BATCH_SPAN for t in trade_ids)
    for start, n in acked:
        assert per_batch.get(start) == n, (
            f"acknowledged batch {start} has {per_batch.get(start)}/{n}"
        )
    for start, n in per_batch.items():  # unacknowledged batches too: all or nothing
        seq = start // BATCH_SPAN % 100_000
        assert n == crash_batch_size(seq), f"batch {start} is partial: {n} rows"

    conn = sqlite3.connect(directory / DB_FILE)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # The per-partition bookkeeping agrees with the segments it describes.
        rows = conn.execute(
            "SELECT p.next_offset, p.bytes, coalesce(sum(s.count), 0), coalesce(sum(s.bytes), 0)"
            " FROM partitions p LEFT JOIN segments s ON s.pid = p.pid GROUP BY p.pid"
        ).fetchall()
        for next_offset, size, count, segment_bytes in rows:
            assert (next_offset, size) == (count, segment_bytes)
    finally:
        conn.close()
    print(f"{KILLS} kills, {len(acked)} acknowledged batches, {len(per_batch)} in the log, "
          f"{elapsed:.1f} s")  # fmt: skip

"""The embedded log: the contract suite, plus what only the embedded log promises."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from k2.errors import ConfigError, TerminalError, TransientError
from k2.log.base import LogBatch, Retention, TopicPartition, TopicSpec
from k2.log.embedded import EmbeddedLog, LogBusy, LogStorageError, NotPartitionOwner
from k2.log.embedded_db import DB_FILE, translate_error
from k2.records import TRADE
from tests.log.contract import (
    LogContract,
    LogFactory,
    ManualClock,
    same_rows,
    trade_batch,
    trade_topic,
)
from tests.log.log_worker import spawn, wait_ready


class TestEmbeddedLogContract(LogContract):
    @pytest.fixture(params=["full", "normal"])
    def log_factory(
        self, tmp_path: Path, clock: ManualClock, request: pytest.FixtureRequest
    ) -> LogFactory:
        return lambda: EmbeddedLog(tmp_path / "log", durability=request.param, clock=clock)


# -- consumer groups: fencing and sessions (clock driven by the test) -----------------


def _log(tmp_path: Path, clock: ManualClock, **kw: Any) -> EmbeddedLog:
    return EmbeddedLog(tmp_path / "log", clock=clock, **kw)


def _topic(log: EmbeddedLog, partitions: int = 4, **retention: int | None) -> str:
    name = trade_topic()
    log.create_topic(TopicSpec(name, TRADE, partitions, Retention(**retention)))
    return name


def _rows(batches: list[LogBatch]) -> int:
    return sum(b.records.num_rows for b in batches)


def test_an_expired_member_is_fenced_off(tmp_path: Path, clock: ManualClock) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log)
    log.produce(name, trade_batch(0, 200))
    slow = log.consumer("g", [name], session_timeout_s=6)
    assert _rows(slow.poll(timeout_s=0)) == 200
    fast = log.consumer("g", [name], session_timeout_s=6)
    assert fast.assignment() == []  # the slow member still owns everything

    clock.advance(6.5)  # the slow member misses its session
    taken = fast.poll(timeout_s=0)
    assert len(fast.assignment()) == 4
    # Never committed: the new owner reads everything again (at-least-once).
    assert _rows(taken) == 200
    with pytest.raises(NotPartitionOwner):
        slow.commit()
    with pytest.raises(NotPartitionOwner):
        slow.commit({TopicPartition(name, 0): 1})
    assert slow.committed([TopicPartition(name, 0)]) == {TopicPartition(name, 0): None}

    # The slow member notices on its next poll, rejoins, and gets its share only once
    # the other has released it: never two owners.
    for _ in range(4):
        slow.poll(timeout_s=0)
        fast.poll(timeout_s=0)
        assert not set(slow.assignment()) & set(fast.assignment())
    assert len(slow.assignment()) == len(fast.assignment()) == 2
    slow.close()
    fast.close()
    log.close()


def test_commit_reports_a_lost_partition_once(tmp_path: Path, clock: ManualClock) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log, partitions=2)
    log.produce(name, trade_batch(0, 100, ["BTCUSDT", "ETHUSDT"]))  # partitions 0 and 1
    first = log.consumer("g", [name])
    assert _rows(first.poll(timeout_s=0)) == 100
    second = log.consumer("g", [name])
    first.poll(timeout_s=0)  # releases one partition to the newcomer, uncommitted
    assert len(first.assignment()) == 1
    with pytest.raises(NotPartitionOwner, match="lost"):
        first.commit()
    first.commit()  # reported once; what it still owns commits
    kept = first.assignment()[0]
    assert first.committed([kept])[kept] is not None
    second.close()
    first.close()


def test_polling_members_stay_alive_as_time_passes(tmp_path: Path, clock: ManualClock) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log)
    a, b = log.consumer("g", [name]), log.consumer("g", [name])
    for _ in range(3):
        a.poll(timeout_s=0)
        b.poll(timeout_s=0)
    split = (a.assignment(), b.assignment())
    assert all(len(s) == 2 for s in split)
    for _ in range(30):  # 60 s of polling every 2 s: heartbeats keep both members
        clock.advance(2)
        a.poll(timeout_s=0)
        b.poll(timeout_s=0)
    assert (a.assignment(), b.assignment()) == split
    a.close()
    b.close()


def test_a_member_that_stops_polling_loses_its_partitions_after_the_session(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log)
    a, b = log.consumer("g", [name], session_timeout_s=6), log.consumer("g", [name])
    for _ in range(3):
        a.poll(timeout_s=0)
        b.poll(timeout_s=0)
    assert len(b.assignment()) == 2
    clock.advance(5)  # within a's session: b must not take a's partitions yet
    b.poll(timeout_s=0)
    assert len(b.assignment()) == 2
    clock.advance(1.5)
    b.poll(timeout_s=0)
    assert len(b.assignment()) == 4


def test_seek_needs_ownership_and_position_is_none_elsewhere(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log, partitions=2)
    a, b = log.consumer("g", [name]), log.consumer("g", [name])
    a.poll(timeout_s=0)
    b.poll(timeout_s=0)
    (theirs,) = b.assignment()
    assert a.position(theirs) is None
    with pytest.raises(NotPartitionOwner):
        a.seek(theirs, 0)
    with pytest.raises(NotPartitionOwner):
        a.commit({TopicPartition("not.subscribed", 0): 0})


def test_lag_counts_from_the_oldest_record_when_never_committed(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log, partitions=1, max_age_us=3600 * 10**6, max_bytes=None)
    log.produce(name, trade_batch(0, 30))
    clock.advance(7200)
    log.produce(name, trade_batch(30, 20))
    assert log.lag("never", name) == {0: 50}
    log.enforce_retention()
    assert log.lag("never", name) == {0: 20}


def test_a_commit_inside_deleted_records_resumes_at_the_oldest_kept(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log, partitions=1, max_age_us=3600 * 10**6, max_bytes=None)
    tp = TopicPartition(name, 0)
    log.produce(name, trade_batch(0, 30))
    c = log.consumer("g", [name])
    c.commit({tp: 10})
    c.close()
    clock.advance(7200)
    log.produce(name, trade_batch(30, 20))
    assert log.enforce_retention() == 30
    assert log.lag("g", name) == {0: 20}
    c = log.consumer("g", [name])
    got = c.poll(timeout_s=0)
    assert [b.first_offset for b in got] == [30]
    assert _rows(got) == 20


# -- retention ------------------------------------------------------------------------


def test_retention_counts_exactly_and_keeps_the_newest_segment(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = _log(tmp_path, clock)
    by_size = _topic(log, partitions=1, max_age_us=None, max_bytes=1)
    forever = _topic(log, partitions=1, max_age_us=None, max_bytes=None)
    for i in range(5):
        log.produce(by_size, trade_batch(i * 100, 100))
        log.produce(forever, trade_batch(i * 100, 100))
    one_segment = log.stored_bytes(by_size)[0] // 5
    assert log.enforce_retention() == 400
    assert log.begin_offsets(by_size) == {0: 400}
    assert 0 < log.stored_bytes(by_size)[0] <= 2 * one_segment
    assert log.enforce_retention() == 0
    assert log.begin_offsets(forever) == {0: 0}
    # A limit of two segments' bytes keeps the newest two.
    log.create_topic(TopicSpec(forever, TRADE, 1, Retention(None, 2 * one_segment + 100)))
    assert log.enforce_retention() >= 200
    assert log.begin_offsets(forever)[0] in (200, 300)


def test_time_retention_can_empty_a_partition_and_offsets_continue(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = _log(tmp_path, clock)
    name = _topic(log, partitions=1, max_age_us=10**6, max_bytes=None)
    log.produce(name, trade_batch(0, 40))
    clock.advance(5)
    assert log.enforce_retention() == 40
    assert log.begin_offsets(name) == log.end_offsets(name) == {0: 40}
    assert log.stored_bytes(name) == {0: 0}
    assert list(log.read(TopicPartition(name, 0), 0)) == []
    assert log.produce(name, trade_batch(40, 5)).ranges == {0: (40, 5)}


@pytest.mark.slow
def test_retention_in_another_process_does_not_stall_producers(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with EmbeddedLog(directory, busy_timeout_s=5) as log:
        old = _topic(log, partitions=4, max_age_us=1, max_bytes=None)
        live = _topic(log, partitions=4, max_age_us=None, max_bytes=None)
        batch = trade_batch(0, 2000)
        for _ in range(300):  # 1,200 segments, 600k records to delete
            log.produce(old, batch)
        worker = spawn("retention", directory, 256 * 1024)
        wait_ready(worker, "retention worker")
        latencies = []
        for i in range(40):
            started = time.perf_counter()
            log.produce(live, trade_batch(i * 500, 500))
            latencies.append(time.perf_counter() - started)
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        assert int(out.strip()) == 600_000
        assert max(latencies) < 1.0, f"a produce waited {max(latencies):.3f} s"
        assert sum(log.end_offsets(live).values()) == 40 * 500
        assert log.begin_offsets(old) == log.end_offsets(old)


# -- several processes at once --------------------------------------------------------


@pytest.mark.slow
def test_processes_produce_and_consume_concurrently_exactly_once(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with EmbeddedLog(directory) as log:
        name = _topic(log)
        stop = tmp_path / "stop"
        outs = [tmp_path / f"consumer{i}.txt" for i in range(2)]
        consumers = [spawn("consume", directory, name, "sink", out, stop) for out in outs]
        for i, c in enumerate(consumers):
            wait_ready(c, f"consumer {i}")
        # Two producers with disjoint trade ids: 2 x 20 batches of 500 rows.
        producers = [spawn("produce", directory, name, k * 1_000_000, 20, 500) for k in range(2)]
        while any(p.poll() is None for p in producers):
            for partition in range(4):  # the API's view: range reads beside the writers
                tp = TopicPartition(name, partition)
                offsets = [o for b in log.read(tp, 0) for o in b.offsets().to_pylist()]
                assert offsets == list(range(len(offsets)))
        for proc in producers:
            proc.communicate(timeout=60)
        assert [proc.returncode for proc in producers] == [0, 0]
        expected = 2 * 20 * 500
        assert sum(log.end_offsets(name).values()) == expected
        _wait_until(lambda: sum(log.lag("sink", name).values()) == 0, 30, "the group to catch up")
        stop.touch()
        for c in consumers:
            c.communicate(timeout=30)
        assert [c.returncode for c in consumers] == [0, 0]

    lines = [line.split() for out in outs for line in out.read_text().splitlines()]
    ids = [m for _, _, m in lines]
    assert len(ids) == expected, f"{len(ids) - len(set(ids))} records delivered twice"
    assert len(set(ids)) == expected
    for p in range(4):  # each partition consumed in offset order, every offset once
        offsets = sorted(int(o) for q, o, _ in lines if int(q) == p)
        assert offsets == list(range(len(offsets)))
    by_member = [{int(q) for q, _, _ in (x.split() for x in out.read_text().splitlines())}
                 for out in outs]  # fmt: skip
    assert all(by_member), "both members should have read some partitions"


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)  # re-check interval of a condition, not a synchronisation


# -- the file: durability, errors ------------------------------------------------------


@pytest.mark.parametrize(("durability", "level"), [("full", 2), ("normal", 1)])
def test_durability_sets_sqlite_synchronous(tmp_path: Path, durability: str, level: int) -> None:
    with EmbeddedLog(tmp_path, durability=durability) as log:  # type: ignore[arg-type]
        assert log._db.query("PRAGMA synchronous") == [(level,)]
        assert log._db.query("PRAGMA journal_mode") == [("wal",)]


def test_a_held_write_lock_is_a_transient_error(tmp_path: Path) -> None:
    with EmbeddedLog(tmp_path, busy_timeout_s=0.2) as log:
        name = _topic(log)
        blocker = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LogBusy, match="locked") as caught:
                log.produce(name, trade_batch(0, 10))
            assert isinstance(caught.value, TransientError)
            # Readers are not blocked by a writer (WAL).
            assert log.end_offsets(name) == dict.fromkeys(range(4), 0)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert log.produce(name, trade_batch(0, 10)).count == 10


def test_a_file_that_is_not_a_log_is_a_terminal_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(LogStorageError, match=DB_FILE) as caught:
        EmbeddedLog(tmp_path)
    assert isinstance(caught.value, TerminalError)


def test_a_log_of_another_format_version_is_refused(tmp_path: Path) -> None:
    EmbeddedLog(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    conn.commit()
    conn.close()
    with pytest.raises(LogStorageError, match="format version 99"):
        EmbeddedLog(tmp_path)


def test_disk_full_translates_to_a_terminal_error(tmp_path: Path) -> None:
    path = tmp_path / "tiny.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x BLOB)")
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # a disk with no room left
    with pytest.raises(sqlite3.Error) as raised:
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    conn.close()
    err = translate_error(raised.value, path, "produce")
    assert isinstance(err, LogStorageError)
    assert "disk is full" in str(err) and str(path) in str(err)


def test_bad_settings_and_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        EmbeddedLog(tmp_path, durability="paranoid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        EmbeddedLog(tmp_path, compression="gzip")  # type: ignore[arg-type]
    with EmbeddedLog(tmp_path) as log:
        for bad in ("", "a b", "x" * 250, "..", "topic/with/slash"):
            with pytest.raises(ConfigError):
                log.create_topic(TopicSpec(bad, TRADE, 1))
        with pytest.raises(ConfigError):
            log.create_topic(TopicSpec("zero.partitions", TRADE, 0))
        name = _topic(log)
        with pytest.raises(ConfigError):
            log.consumer("g", [name], start="middle")
        with pytest.raises(TerminalError):
            log.consumer("g", ["no.such.topic"])
        with pytest.raises(TerminalError):
            log.read(TopicPartition(name, 4), 0)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_segments_of_any_compression_read_back(tmp_path: Path, compression: str) -> None:
    batch = trade_batch(0, 500)
    with EmbeddedLog(tmp_path, compression=compression) as log:  # type: ignore[arg-type]
        name = _topic(log, partitions=1)
        log.produce(name, batch)
    with EmbeddedLog(tmp_path) as reader:  # a zstd handle reads whatever was written
        rows = pa.Table.from_batches([b.records for b in reader.read(TopicPartition(name, 0), 0)])
        assert same_rows(rows, pa.Table.from_batches([batch]))


def test_closed_handles_refuse_work_and_close_twice(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    name = _topic(log)
    c = log.consumer("g", [name])
    c.close()
    c.close()
    with pytest.raises(TerminalError):
        c.poll(timeout_s=0)
    log.close()
    log.close()
    with pytest.raises(TerminalError):
        log.produce(name, trade_batch(0, 1))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_opening_tries_again_while_another_process_holds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting up a connection can meet SQLITE_BUSY without SQLite waiting (another
    process opening or recovering the file, as a sink starting beside a busy ingest
    did); opening tries again until the busy timeout is spent, then says so."""
    from k2.log import embedded_db

    real = embedded_db._open_once
    attempts: list[float] = []

    def busy_twice(*args: Any) -> Any:
        attempts.append(0)
        if len(attempts) < 3:
            raise embedded_db.LogBusy("open log: locked by another writer (simulated)")
        return real(*args)

    monkeypatch.setattr(embedded_db, "_OPEN_RETRY_S", 0.001)
    monkeypatch.setattr(embedded_db, "_open_once", busy_twice)
    embedded_db.open_database(tmp_path, "normal", 5.0).close()
    assert len(attempts) == 3

    def always_busy(*args: Any) -> Any:
        raise embedded_db.LogBusy("open log: locked by another writer (simulated)")

    monkeypatch.setattr(embedded_db, "_open_once", always_busy)
    with pytest.raises(embedded_db.LogBusy):
        embedded_db.open_database(tmp_path, "normal", 0.05)

"""The embedded log: K2's durable log on one machine, with no server.

Everything lives in one SQLite file in WAL mode inside the log directory (see
:mod:`k2.log.embedded_db` for the file, durability levels and errors). Several
processes — capture producing, the lake sink consuming, the API reading the hot tail —
may open the same directory at once: readers never block the writer, and writers hold
the write lock only for short transactions.

- **Produce** splits a batch by key (Kafka's murmur2 partitioner, :mod:`k2.log.partitioner`),
  encodes each partition's rows as one compressed Arrow segment *before* taking the
  write lock, then in one ``BEGIN IMMEDIATE`` transaction assigns offsets from each
  partition's next-offset row and inserts the segments. The batch is durable (per the
  durability level) and atomic — all partitions or none — when ``produce`` returns.
- **Read** decodes only the segments overlapping the asked range and slices them.
- **Consumer groups**: :mod:`k2.log.embedded_groups`.
- **Retention** deletes whole segments from the start of each partition, a few per
  transaction (at most :data:`RETENTION_STEP_SEGMENTS` segments or
  ``retention_step_bytes`` of payload), so a producer waits at most one small step.

Log time (what time retention compares against) is taken from the injected ``clock``
(UTC µs) inside the produce transaction.

Why segments, in numbers (``benchmarks/bench_log_embedded.py``, 2-core VM, real BTCUSDT
trades over 5 symbols and 4 partitions): a produce call costs ~1 ms fixed (``full``;
~0.6 ms ``normal``) plus ~0.4 µs per record, so calls of 10,000 records produce
~1.7 M records/s (``full``) and ~2.1 M records/s (``normal``), calls of 500 records
~0.45 M records/s; a consumer polls ~4.5 M records/s. Segments store ~39 bytes per
trade (zstd of ~207 bytes of Arrow IPC). A row per record would pay SQLite's per-row
cost and Python per-record work on both sides instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import ConfigError, TerminalError
from k2.log.base import LogBatch, Produced, TopicPartition, TopicSpec
from k2.log.embedded_db import Database, Durability, LogBusy, LogStorageError
from k2.log.embedded_groups import EmbeddedConsumer, NotPartitionOwner
from k2.log.embedded_segments import Compression, EncodedChunk, encode, read_range
from k2.log.embedded_topics import TopicInfo, create, load, load_all, validate
from k2.log.partitioner import partition_column
from k2.ops.clock import utc_now_us
from k2.ops.log import get_logger

__all__ = [
    "Durability",
    "EmbeddedConsumer",
    "EmbeddedLog",
    "LogBusy",
    "LogStorageError",
    "NotPartitionOwner",
]

log = get_logger(__name__)

#: Most segments one retention transaction deletes. Measured on the development VM:
#: 3 M records (118 MB in 1,200 segments) deleted in 0.22-0.28 s as 24-35 transactions,
#: median 6.5 ms each, longest 49-63 ms (one that ran a WAL checkpoint): the longest a
#: producer waits for retention.
RETENTION_STEP_SEGMENTS = 64


#: The system clock in UTC µs (kept under this name for callers of the embedded log).
wall_clock_us = utc_now_us


class EmbeddedLog:
    """A :class:`k2.log.base.Log` in an SQLite file under ``path`` (a directory).

    ``durability``: ``"full"`` fsyncs every commit (survives power loss), ``"normal"``
    survives process crashes only (see :mod:`k2.log.embedded_db`). ``compression`` of
    segment payloads: ``"zstd"`` (default), ``"lz4"`` or ``"none"`` — readers handle
    any mix. ``busy_timeout_s``: how long a write waits for another process's write
    lock before :class:`LogBusy` (a :class:`~k2.errors.TransientError`). ``clock``: UTC
    µs for log time, consumer heartbeats and retention.

    One handle may be shared by threads (a lock serialises its connection); each
    consumer has its own connection.
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability = "full",
        compression: Compression = "zstd",
        busy_timeout_s: float = 10.0,
        clock: Callable[[], int] = wall_clock_us,
        retention_step_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if compression not in ("zstd", "lz4", "none"):
            raise ConfigError(f"compression must be zstd, lz4 or none, not {compression!r}")
        self.path = Path(path)
        self.durability = durability
        self._compression: Compression = compression
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._step_bytes = retention_step_bytes
        self._db = Database(self.path, durability, busy_timeout_s)
        self._topics: dict[str, TopicInfo] = {}

    # -- topics --------------------------------------------------------------------

    def create_topic(self, spec: TopicSpec) -> None:
        """Create ``spec`` (idempotent). An existing topic keeps its partitions and
        record type (a different one: :class:`ConfigError`) and takes ``spec``'s
        retention."""
        validate(spec)
        with self._db.write(f"create topic {spec.name}") as conn:
            create(conn, spec, self._clock())
        self._topics.pop(spec.name, None)

    def topic(self, name: str) -> TopicSpec:
        """The spec of topic ``name``; :class:`TerminalError` if unknown."""
        return load(self._db, name).spec

    def list_topics(self) -> list[TopicSpec]:
        """Every topic in this log, by name."""
        return [t.spec for t in load_all(self._db)]

    # -- produce and read ----------------------------------------------------------

    def produce(self, topic: str, batch: pa.RecordBatch, key_column: str = "symbol") -> Produced:
        """Append ``batch`` to ``topic``, partitioned by ``key_column``; atomic and durable
        on return. Per partition, rows keep their order in ``batch``.

        Raises :class:`TerminalError` for an unknown topic, a batch whose columns or
        types differ from the topic's record schema, or a missing key column;
        :class:`LogBusy` (transient) if the write lock stayed taken past the busy
        timeout — then nothing was written; :class:`LogStorageError` if the file is
        unusable (disk full, corrupt).
        """
        info = self._info(topic)
        rows = _conform(batch, info)
        if rows.num_rows == 0:
            return Produced(topic, {})
        if key_column not in rows.schema.names:
            raise TerminalError(f"produce to {topic}: no key column {key_column!r} in the batch")
        chunks = [
            encode(p, part, self._compression)
            for p, part in _split(rows, rows.column(key_column), info.spec.partitions)
        ]
        return Produced(topic, self._append(info, chunks))

    def _append(self, info: TopicInfo, chunks: list[EncodedChunk]) -> dict[int, tuple[int, int]]:
        ranges: dict[int, tuple[int, int]] = {}
        with self._db.write(f"produce to {info.name}") as conn:
            now = self._clock()
            for c in chunks:
                pid = info.pids[c.partition]
                (base,) = conn.execute(
                    "SELECT next_offset FROM partitions WHERE pid = ?", (pid,)
                ).fetchone()
                conn.execute(
                    "INSERT INTO segments (pid, base_offset, count, min_log_us, max_log_us,"
                    " bytes, raw_bytes, codec, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (pid, base, c.count, now, now, len(c.payload), c.raw_bytes, c.codec,
                     c.payload),
                )  # fmt: skip
                conn.execute(
                    "UPDATE partitions SET next_offset = ?, bytes = bytes + ? WHERE pid = ?",
                    (base + c.count, len(c.payload), pid),
                )
                ranges[c.partition] = (base, c.count)
        return ranges

    def read(
        self,
        partition: TopicPartition,
        start: int,
        end: int | None = None,
        max_records: int = 50_000,
    ) -> Iterator[LogBatch]:
        """Records of ``partition`` with ``start <= offset < end`` (``None``: the end as
        of this call), in offset order, in batches of at most ``max_records``; offsets
        deleted by retention are skipped. Unknown topic/partition: :class:`TerminalError`
        (raised by this call, not on first iteration)."""
        if start < 0 or max_records < 1:
            raise TerminalError(f"read {partition}: need start >= 0 and max_records >= 1")
        info = self._info(partition.topic)
        pid = info.pid(partition.partition)
        if end is None:
            ((end,),) = self._db.query("SELECT next_offset FROM partitions WHERE pid = ?", (pid,))
        return read_range(self._db, partition, pid, info.schema, start, end, max_records)

    def begin_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the oldest offset still held (the end, if retention removed all)."""
        return self._offsets(topic, "begin_offset")

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next produced record will get."""
        return self._offsets(topic, "next_offset")

    def stored_bytes(self, topic: str) -> dict[int, int]:
        """Per partition, the bytes its segments' payloads take (compressed): what size
        retention compares with ``max_bytes``. SQLite's page overhead is not counted."""
        return self._offsets(topic, "bytes")

    def _offsets(self, topic: str, column: str) -> dict[int, int]:
        self._info(topic)
        rows = self._db.query(f"SELECT partition, {column} FROM partitions WHERE topic = ?",
                              (topic,))  # fmt: skip
        return dict(rows)

    # -- consumers -----------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start: str = "earliest",
        session_timeout_s: float = 6.0,
    ) -> EmbeddedConsumer:
        """Join ``group`` on ``topics`` (each must exist: :class:`TerminalError`)."""
        infos = [self._info(t) for t in topics]
        db = Database(self.path, self.durability, self._busy_timeout_s)
        try:
            return EmbeddedConsumer(
                db,
                group,
                infos,
                start=start,
                session_timeout_s=session_timeout_s,
                clock=self._clock,
            )
        except BaseException:
            db.close()
            raise

    def lag(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, records held but not committed by ``group``: end − committed,
        where a never-committed partition (or a commit older than what retention kept)
        counts from the oldest record held."""
        self._info(topic)
        rows = self._db.query(
            "SELECT p.partition, p.next_offset - max(coalesce(c.next_offset, 0), p.begin_offset)"
            " FROM partitions p LEFT JOIN commits c ON c.grp = ? AND c.pid = p.pid"
            " WHERE p.topic = ?",
            (group, topic),
        )
        return {p: max(n, 0) for p, n in rows}

    # -- retention -----------------------------------------------------------------

    def enforce_retention(self) -> int:
        """Delete, per partition and oldest first, the segments retention allows:
        those whose newest record is older than ``max_age_us`` (by log time), and while
        the partition's stored (compressed) bytes exceed ``max_bytes``, the oldest —
        except the newest segment, which size retention always keeps. Returns records
        deleted. Runs in small transactions beside producers."""
        now = self._clock()
        deleted = 0
        for info in load_all(self._db):
            max_age, max_bytes = info.spec.retention.max_age_us, info.spec.retention.max_bytes
            if max_age is None and max_bytes is None:
                continue
            cutoff = None if max_age is None else now - max_age
            for partition, pid in enumerate(info.pids):
                n = self._trim(pid, cutoff, max_bytes)
                if n:
                    log.info("retention_deleted", topic=info.name, partition=partition, records=n)
                deleted += n
        return deleted

    def _trim(self, pid: int, cutoff: int | None, max_bytes: int | None) -> int:
        deleted = 0
        while True:
            with self._db.write("enforce retention") as conn:
                ((total, end),) = conn.execute(
                    "SELECT bytes, next_offset FROM partitions WHERE pid = ?", (pid,)
                ).fetchall()
                segments = conn.execute(
                    "SELECT base_offset, count, bytes, max_log_us FROM segments WHERE pid = ?"
                    " ORDER BY base_offset LIMIT ?",
                    (pid, RETENTION_STEP_SEGMENTS),
                ).fetchall()
                new_begin = count = freed = 0
                for base, n, size, newest in segments:
                    expired = cutoff is not None and newest < cutoff
                    too_big = (max_bytes is not None and total - freed > max_bytes
                               and base + n < end)  # fmt: skip
                    if not (expired or too_big) or (count and freed + size > self._step_bytes):
                        break
                    new_begin, count, freed = base + n, count + n, freed + size
                if not count:
                    return deleted
                conn.execute(
                    "DELETE FROM segments WHERE pid = ? AND base_offset < ?", (pid, new_begin)
                )
                conn.execute(
                    "UPDATE partitions SET begin_offset = ?, bytes = bytes - ? WHERE pid = ?",
                    (new_begin, freed, pid),
                )
            deleted += count

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close this handle's connection (idempotent). Consumers close on their own."""
        self._db.close()

    def __enter__(self) -> EmbeddedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _info(self, topic: str) -> TopicInfo:
        # Topics never change shape once created, so a cached entry stays valid; a
        # miss re-reads the file (another process may have created the topic).
        info = self._topics.get(topic)
        if info is None:
            info = self._topics[topic] = load(self._db, topic)
        return info


def _conform(batch: pa.RecordBatch, info: TopicInfo) -> pa.RecordBatch:
    """``batch`` in the topic's stored schema, or :class:`TerminalError` naming the
    first difference. Field nullability and metadata may differ; names and types not."""
    want = info.schema
    if batch.schema.equals(want, check_metadata=False):
        return batch
    got = batch.schema
    if got.names != want.names or got.types != want.types:
        diff = next(
            (f"column {i}: {g} instead of {w}" for i, (g, w) in
             enumerate(zip(got, want, strict=False)) if g.name != w.name or g.type != w.type),
            f"{len(got)} columns instead of {len(want)}",
        )  # fmt: skip
        kind = info.spec.record_type.name
        raise TerminalError(f"produce to {info.name}: the batch is not a {kind} batch ({diff})")
    return pa.RecordBatch.from_arrays(batch.columns, schema=want)


def _split(
    rows: pa.RecordBatch, keys: pa.Array, partitions: int
) -> list[tuple[int, pa.RecordBatch]]:
    """``rows`` per partition, each keeping the rows' order (filter is order-preserving)."""
    if partitions == 1:
        return [(0, rows)]
    homes = partition_column(keys, partitions)
    bounds = pc.min_max(homes)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low == high:
        return [(low, rows)]
    present = pc.unique(homes).to_pylist()
    return [(p, rows.filter(pc.equal(homes, p))) for p in sorted(present)]

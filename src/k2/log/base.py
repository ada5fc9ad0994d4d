"""The log, in Kafka's sense: topics of partitions of offset-numbered records.

K2's capture writes canonical records to the log; the lake sink and the API's hot tail
read them back. Two implementations sit side by side behind this narrow interface:

- :mod:`k2.log.embedded` — one machine, no server: SQLite in WAL mode, safe for several
  processes at once (capture, sink and API may be separate processes);
- :mod:`k2.log.kafka` — Apache Kafka, Redpanda, MSK ... through ``confluent-kafka``.

The unit of exchange is an Arrow record batch of one canonical record type (see
:mod:`k2.records`): producers hand a batch over, consumers get batches back, each row
with its own offset. Records are keyed by ``symbol`` so one symbol's records keep
their order in one partition. How a record is encoded on the wire is each
implementation's business (the embedded log stores Arrow; Kafka stores one message per
record in Avro or K2's compact encoding, see :mod:`k2.log.codec`).

Offsets follow Kafka: the offset of a record is its position in its partition; a
*committed* offset or an *end* offset is the offset of the next record to read.
All times are UTC microseconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from k2.records import RecordType


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a topic keeps records. ``None`` means no limit of that kind.

    Retention is approximate, as in Kafka: whole segments are deleted once every record
    in them is older than ``max_age_us`` or the partition is over ``max_bytes``.
    """

    max_age_us: int | None = 7 * 24 * 3600 * 1_000_000
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic's shape: which record type it holds, how many partitions, retention."""

    name: str
    record_type: RecordType
    partitions: int
    retention: Retention = Retention()


@dataclass(frozen=True, slots=True)
class Produced:
    """Where one produced batch landed: per partition, the first offset and the count."""

    topic: str
    ranges: Mapping[int, tuple[int, int]]

    @property
    def count(self) -> int:
        return sum(n for _, n in self.ranges.values())


@dataclass(frozen=True, slots=True)
class LogBatch:
    """Consecutive records of one partition, in offset order.

    ``records`` has the topic's record schema; row ``i`` has offset
    ``first_offset + i`` and was appended to the log at ``log_time_us[i]`` (UTC µs).
    Offsets are contiguous within a batch, except across a gap left by retention or
    compaction, in which case ``offsets()`` is authoritative.
    """

    topic: str
    partition: int
    first_offset: int
    records: pa.RecordBatch
    offsets_array: pa.Array | None = None
    log_time_us: pa.Array | None = None

    def offsets(self) -> pa.Array:
        """The offset of each row (int64)."""
        if self.offsets_array is not None:
            return self.offsets_array
        return pa.array(range(self.first_offset, self.first_offset + self.records.num_rows),
                        pa.int64())  # fmt: skip

    @property
    def next_offset(self) -> int:
        """The offset after the last row: what to commit once this batch is processed."""
        if self.records.num_rows == 0:
            return self.first_offset
        return int(self.offsets()[-1].as_py()) + 1


class Consumer(Protocol):
    """A member of a consumer group reading some topics.

    Partitions are spread over the group's live members; a member that stops calling
    :meth:`poll` for longer than the session timeout loses its partitions. Commits are
    manual: :meth:`commit` stores, per partition, the offset of the next record to read,
    so a restarted group resumes there (at-least-once; exactly-once is the sink's job).
    """

    def poll(self, max_records: int = 50_000, timeout_s: float = 1.0) -> list[LogBatch]:
        """Up to ``max_records`` records from the assigned partitions, waiting at most
        ``timeout_s`` for the first one. Each partition's batches come in offset order.
        """
        ...

    def assignment(self) -> list[TopicPartition]:
        """The partitions this member currently owns."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Store ``offsets`` (next offset to read) for the group; ``None`` commits the
        position after everything returned by :meth:`poll` so far. Durable on return."""
        ...

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (``None``: never committed)."""
        ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Make the next :meth:`poll` of ``partition`` start at ``offset``."""
        ...

    def position(self, partition: TopicPartition) -> int | None:
        """The offset the next :meth:`poll` of ``partition`` starts at, if known."""
        ...

    def close(self) -> None:
        """Leave the group (its partitions go to the other members). Does not commit."""
        ...


class Log(Protocol):
    """A durable, partitioned log of canonical records."""

    def create_topic(self, spec: TopicSpec) -> None:
        """Create ``spec.name`` if it does not exist (idempotent; an existing topic with
        another record type or partition count raises :class:`~k2.errors.ConfigError`)."""
        ...

    def topic(self, name: str) -> TopicSpec:
        """The spec of an existing topic; :class:`~k2.errors.TerminalError` if unknown."""
        ...

    def list_topics(self) -> list[TopicSpec]:
        """Every topic K2 knows in this log."""
        ...

    def produce(self, topic: str, batch: pa.RecordBatch, key_column: str = "symbol") -> Produced:
        """Append ``batch`` (the topic's record schema), partitioned by ``key_column``.

        Returns only once every record is durable (embedded: committed to SQLite with
        the configured synchronous level; Kafka: acknowledged by all in-sync replicas).
        Records with the same key keep their order. Raises
        :class:`~k2.errors.TransientError` if the log is unavailable (nothing or all of
        the batch may then have been written: producers retry with the same records and
        downstream dedup by ``message_id`` removes any repeat).
        """
        ...

    def read(
        self,
        partition: TopicPartition,
        start: int,
        end: int | None = None,
        max_records: int = 50_000,
    ) -> Iterator[LogBatch]:
        """Records of ``partition`` with ``start <= offset < end`` (``end=None``: up to
        the end at call time), in offset order, in batches of at most ``max_records``.
        Offsets already deleted by retention are skipped."""
        ...

    def begin_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the oldest offset still held."""
        ...

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next produced record will get."""
        ...

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start: str = "earliest",
        session_timeout_s: float = 6.0,
    ) -> Consumer:
        """Join consumer ``group`` on ``topics``. A partition the group never committed
        starts at ``start`` (``earliest`` or ``latest``)."""
        ...

    def lag(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, records not yet committed by ``group`` (end − committed)."""
        ...

    def enforce_retention(self) -> int:
        """Delete what every topic's retention allows; returns records deleted. Runs
        beside producers without blocking them."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...

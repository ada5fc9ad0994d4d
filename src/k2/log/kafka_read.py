"""Reading one Kafka partition from an offset to its end, and messages → LogBatch.

A *reader* is a ``confluent_kafka.Consumer`` used only with ``assign`` (it never joins
a group or commits). Readers are pooled: creating a librdkafka client costs a
connection and a metadata round trip, and K2 reads short ranges often (the API's hot
tail, the topic catalog).

Where a read stops when no end offset is given: at the partition's end as the broker
reports it in the fetch response (librdkafka's ``PARTITION_EOF`` event), or — should
that event not come — after ``idle_s`` without a record. K2 never asks the broker for a
high watermark here (``ListOffsets``), which Tansu gets wrong; records appended while
the read runs may or may not be included.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition

from k2.errors import TerminalError
from k2.log.base import LogBatch
from k2.log.codec import Codec
from k2.log.kafka_errors import from_exception, kafka_error
from k2.records import RecordType

_TIMESTAMP_NOT_AVAILABLE = 0
_OUT_OF_RANGE = (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE)


class ReaderPool:
    """Idle readers, handed out one per read and taken back when the read ends."""

    def __init__(self, config: Callable[[], dict[str, Any]], *, keep: int = 4) -> None:
        self._config = config
        self._keep = keep
        self._idle: list[Consumer] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Consumer:
        with self._lock:
            if self._closed:
                raise TerminalError("the Kafka log is closed")
            if self._idle:
                return self._idle.pop()
        config = {**self._config(), "group.id": f"k2-reader-{uuid.uuid4().hex}"}
        try:
            return Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise from_exception(exc, "creating a Kafka reader") from exc

    def give_back(self, reader: Consumer) -> None:
        try:
            reader.unassign()
        except (KafkaException, RuntimeError):
            reader.close()  # a reader in a bad state is not reused
            return
        with self._lock:
            if not self._closed and len(self._idle) < self._keep:
                self._idle.append(reader)
                return
        reader.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for reader in idle:
            reader.close()


def read_messages(
    pool: ReaderPool,
    topic: str,
    partition: int,
    start: int,
    end: int | None,
    max_records: int,
    *,
    idle_s: float,
    timeout_s: float,
) -> Iterator[list[Message]]:
    """Messages of one partition with ``start <= offset < end`` in offset order, in
    lists of at most ``max_records``; ``end=None`` reads to the end (see module doc).
    A ``start`` below the oldest offset still held starts at the oldest one."""
    if max_records < 1:
        raise TerminalError(f"max_records must be at least 1, not {max_records}")
    if end is not None and end <= start:
        return
    reader = pool.take()
    where = f"reading {topic}[{partition}]"
    try:
        # Ask for the topic's metadata first: a pooled reader meeting a topic it has not
        # seen would otherwise wait for librdkafka's next metadata refresh (~1 s).
        reader.list_topics(topic, timeout=timeout_s)
        reader.assign([KafkaPartition(topic, partition, max(start, 0))])
        restarted = False
        while True:
            try:
                first = reader.poll(idle_s)
                if first is None:
                    return  # nothing within idle_s: the end (see module doc)
                chunk = [first]
                if max_records > 1:
                    chunk += reader.consume(max_records - 1, 0)
            except KafkaException as exc:
                raise from_exception(exc, where) from exc
            records: list[Message] = []
            finished = False
            for message in chunk:
                err = message.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        finished = True
                        continue
                    if err.code() in (
                        KafkaError._AUTO_OFFSET_RESET,
                        KafkaError.OFFSET_OUT_OF_RANGE,
                    ):
                        # ``start`` is outside what the partition holds: below it,
                        # retention deleted it (start at the oldest); above it, nothing.
                        low, _ = reader.get_watermark_offsets(
                            KafkaPartition(topic, partition), timeout=timeout_s
                        )
                        if restarted or start >= low:
                            return
                        restarted = True
                        reader.assign([KafkaPartition(topic, partition, low)])
                        break
                    raise kafka_error(err, where)
                offset = message.offset()
                if end is not None and offset is not None and offset >= end:
                    finished = True
                    break
                records.append(message)
            if records:
                yield records
                last = records[-1].offset()
                if end is not None and last is not None and last + 1 >= end:
                    return
            if finished:
                return
    finally:
        pool.give_back(reader)


def log_batch(
    topic: str, partition: int, messages: Sequence[Message], record_type: RecordType, codec: Codec
) -> LogBatch:
    """Consecutive messages of one partition as a :class:`LogBatch`: records decoded by
    ``codec``, their offsets, and their Kafka timestamps (ms) as ``log_time_us``."""
    values: list[bytes] = []
    offsets: list[int | None] = []
    times: list[int | None] = []
    for m in messages:
        value = m.value()
        if value is None:
            raise TerminalError(
                f"{topic}[{partition}] offset {m.offset()} has no value: not a K2 record"
            )
        values.append(value)
        offsets.append(m.offset())
        kind, ms = m.timestamp()
        times.append(None if kind == _TIMESTAMP_NOT_AVAILABLE else ms * 1000)
    try:
        records = codec.decode(values, record_type)
    except TerminalError as exc:
        raise TerminalError(
            f"{topic}[{partition}] offsets {offsets[0]}..{offsets[-1]}: {exc}"
        ) from exc
    offsets_array = pa.array(offsets, pa.int64())
    return LogBatch(
        topic=topic,
        partition=partition,
        first_offset=int(offsets[0] or 0),
        records=records,
        offsets_array=offsets_array,
        log_time_us=pa.array(times, pa.int64()),
    )

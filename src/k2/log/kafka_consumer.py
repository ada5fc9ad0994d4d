"""A member of a Kafka consumer group: :class:`k2.log.base.Consumer` on confluent-kafka.

Offsets are committed only by :meth:`KafkaConsumer.commit` (``enable.auto.commit`` is
off), synchronously. When the group hands this member partitions, their start offsets
are resolved at once — the group's committed offset, else the oldest (``earliest``) or
next (``latest``) offset — so :meth:`~KafkaConsumer.position` is known before the
first record arrives. ``latest`` asks the broker for its high watermark, which Tansu
reports wrongly (it may start a little early there).

Liveness follows librdkafka: a member whose process dies loses its partitions after
``session_timeout_s`` (heartbeats stop); a live member that stops calling ``poll``
loses them after ``max.poll.interval.ms`` (librdkafka's default, 5 minutes, so a slow
lake commit does not cost the partitions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaPartition

from k2.errors import TerminalError
from k2.log.base import LogBatch, TopicPartition
from k2.log.codec import Codec
from k2.log.kafka_errors import from_exception, kafka_error
from k2.log.kafka_read import log_batch
from k2.ops.log import get_logger
from k2.records import RecordType

_log = get_logger(__name__)

#: Consumer errors after which the member cannot go on: the topic is gone or not ours.
_STOPPERS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)


class KafkaConsumer:
    """One member of ``group`` reading ``record_types``' topics (see module doc).

    The member joins the group on its first :meth:`poll`.
    """

    def __init__(
        self,
        config: dict[str, Any],
        record_types: Mapping[str, RecordType],
        codec: Codec,
        *,
        start: str,
        timeout_s: float,
    ) -> None:
        self.group = str(config["group.id"])
        self._record_types = dict(record_types)
        self._codec = codec
        self._start = start
        self._timeout_s = timeout_s
        # Next offset each assigned partition's poll starts at (resolved on assignment,
        # moved by poll and seek) and, for commit(None), the offset after the last
        # record poll returned.
        self._positions: dict[TopicPartition, int] = {}
        self._consumed: dict[TopicPartition, int] = {}
        self._closed = False
        self._subscribed = False
        try:
            self._consumer = Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise from_exception(exc, f"configuring consumer group {self.group!r}") from exc

    def _join(self) -> None:
        # The group is joined on the first poll, as Kafka's Java consumer does: a member
        # that never polls never triggers a rebalance (nor waits for one to close).
        if self._subscribed:
            return
        try:
            self._consumer.subscribe(
                list(self._record_types),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
        except KafkaException as exc:
            raise from_exception(exc, f"joining consumer group {self.group!r}") from exc
        self._subscribed = True

    # -- the group hands partitions over --------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.committed(partitions, timeout=self._timeout_s)
        }
        for tp in partitions:
            offset = committed.get((tp.topic, tp.partition), -1)
            if offset < 0:
                low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
                offset = low if self._start == "earliest" else high
            tp.offset = offset
            self._positions[TopicPartition(tp.topic, tp.partition)] = offset
        consumer.assign(partitions)
        _log.info(
            "kafka.partitions_assigned",
            group=self.group,
            partitions=[f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions],
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        for tp in partitions:
            key = TopicPartition(tp.topic, tp.partition)
            self._positions.pop(key, None)
            self._consumed.pop(key, None)
        _log.info(
            "kafka.partitions_revoked",
            group=self.group,
            partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions],
        )

    # -- Consumer ---------------------------------------------------------------------------

    def poll(self, max_records: int = 50_000, timeout_s: float = 1.0) -> list[LogBatch]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        if max_records < 1:
            raise TerminalError(f"max_records must be at least 1, not {max_records}")
        consumer = self._live()
        self._join()
        try:
            first = consumer.poll(max(timeout_s, 0.0))
            if first is None:
                return []
            messages = [first]
            if max_records > 1:
                messages += consumer.consume(max_records - 1, 0)
        except KafkaException as exc:
            raise from_exception(exc, f"polling group {self.group!r}") from exc
        return self._batches(messages)

    def _batches(self, messages: list[Message]) -> list[LogBatch]:
        # Messages of several partitions interleave; each partition's are in order.
        runs: dict[tuple[str, int], list[Message]] = {}
        for message in messages:
            err = message.error()
            if err is not None:
                self._on_error(err)
                continue
            topic, partition = message.topic(), message.partition()
            if topic is None or partition is None:
                continue
            runs.setdefault((topic, partition), []).append(message)
        batches: list[LogBatch] = []
        for (topic, partition), run in runs.items():
            batch = log_batch(topic, partition, run, self._record_types[topic], self._codec)
            batches.append(batch)
            key = TopicPartition(topic, partition)
            self._positions[key] = self._consumed[key] = batch.next_offset
        return batches

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in _STOPPERS:
            raise kafka_error(err, f"consumer group {self.group!r}")
        # Anything else (a broker restarting, a connection dropped) librdkafka retries by
        # itself; it is recorded, not raised.
        _log.warning("kafka.consumer_error", group=self.group, error=err.name(), detail=err.str())

    def assignment(self) -> list[TopicPartition]:
        """The partitions this member owns now, sorted."""
        try:
            owned = self._live().assignment()
        except KafkaException as exc:
            raise from_exception(exc, f"group {self.group!r} assignment") from exc
        return sorted(TopicPartition(tp.topic, tp.partition) for tp in owned)

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Store ``offsets`` for the group, or the position after everything poll
        returned; durable (acknowledged by the group coordinator) on return."""
        items = dict(self._consumed) if offsets is None else dict(offsets)
        if not items:
            return
        consumer = self._live()
        what = f"committing offsets of group {self.group!r}"
        try:
            results = consumer.commit(
                offsets=[KafkaPartition(tp.topic, tp.partition, o) for tp, o in items.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise from_exception(exc, what) from exc
        for tp in results or []:
            if tp.error is not None:
                raise kafka_error(tp.error, f"{what} ({tp.topic}[{tp.partition}])")

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition; ``None`` if never committed."""
        if not partitions:
            return {}
        try:
            found = self._live().committed(
                [KafkaPartition(tp.topic, tp.partition) for tp in partitions],
                timeout=self._timeout_s,
            )
        except KafkaException as exc:
            raise from_exception(exc, f"reading the commits of group {self.group!r}") from exc
        by_key = {(tp.topic, tp.partition): tp for tp in found}
        out: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            got = by_key.get((tp.topic, tp.partition))
            if got is not None and got.error is not None:
                raise kafka_error(got.error, f"reading the commit of {tp} for {self.group!r}")
            out[tp] = got.offset if got is not None and got.offset >= 0 else None
        return out

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Make the next poll of ``partition`` (assigned to this member) start at
        ``offset``; records already fetched from elsewhere in it are dropped."""
        if partition not in self._positions:
            raise TerminalError(f"cannot seek {partition}: it is not assigned to this member")
        try:
            self._live().seek(KafkaPartition(partition.topic, partition.partition, offset))
        except KafkaException as exc:
            raise from_exception(exc, f"seeking {partition} to {offset}") from exc
        self._positions[partition] = offset

    def position(self, partition: TopicPartition) -> int | None:
        """Where the next poll of ``partition`` starts; ``None`` if not assigned here."""
        return self._positions.get(partition)

    def close(self) -> None:
        """Leave the group (the others take the partitions over). Does not commit."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            _log.warning("kafka.consumer_close_failed", group=self.group, error=str(exc))

    def _live(self) -> Consumer:
        if self._closed:
            raise TerminalError(f"the consumer of group {self.group!r} is closed")
        return self._consumer

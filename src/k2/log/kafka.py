"""The log on Apache Kafka (or Redpanda, MSK, Tansu ...) through confluent-kafka.

One Kafka message per record: the value is the record in the configured codec
(:mod:`k2.log.codec`: Avro in Confluent's framing with a Schema Registry, else K2's
compact encoding), the key is the record's symbol (UTF-8), so librdkafka's
``murmur2_random`` partitioner puts a symbol in the same partition as Kafka's Java
client and as :mod:`k2.log.partitioner` (the embedded log) do.

Producing is idempotent (``enable.idempotence``, ``acks=all``, lz4): :meth:`produce`
returns only once every record of the batch is acknowledged by all in-sync replicas,
and raises :class:`~k2.errors.TransientError` naming the error otherwise.

What differs from the embedded log, by design:

- **Retention** is the broker's job: :meth:`create_topic` sets ``retention.ms`` and
  ``retention.bytes`` and :meth:`enforce_retention` deletes nothing (returns 0).
- **Record types** live in the catalog topic (:mod:`k2.log.kafka_topics`).
- **End offsets** (:meth:`end_offsets`, :meth:`lag`, ``start="latest"``) come from the
  broker's high watermark (``ListOffsets``): exact on Apache Kafka, wrong on Tansu,
  and never used for correctness. :meth:`read` without ``end`` stops at the end the
  fetch reports, or after ``read_idle_s`` without a record (:mod:`k2.log.kafka_read`).
- **Log time** (``LogBatch.log_time_us``) is the message timestamp, set by the
  producer when it sends (``CreateTime``, ms precision), or from ``clock_us``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaPartition

# These names are public (documented, in confluent_kafka.admin) but the package's type
# stubs do not re-export them explicitly.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from k2.errors import ConfigError, K2Error, TerminalError, TransientError
from k2.log.base import LogBatch, Produced, Retention, TopicPartition, TopicSpec
from k2.log.codec import Codec, conform
from k2.log.kafka_consumer import KafkaConsumer
from k2.log.kafka_errors import from_exception, kafka_error
from k2.log.kafka_read import ReaderPool, log_batch, read_messages
from k2.log.kafka_topics import (
    CATALOG_CONFIG,
    CatalogEntry,
    read_catalog,
    retention_configs,
    retention_from_configs,
)
from k2.ops.log import get_logger
from k2.records import RecordType

_log = get_logger(__name__)
#: librdkafka's own log lines go through the standard library (and so structlog).
_LIBRDKAFKA_LOGGER = logging.getLogger("k2.log.librdkafka")

#: Partitions of each data type's topic unless configured otherwise (as in K2's original
#: design: 40 for trades, which lets 40 sink workers share the load).
DEFAULT_PARTITIONS: dict[str, int] = {
    "trade": 40,
    "quote": 40,
    "reference_data": 1,
    "gap": 1,
    "dead_letter": 1,
}

#: Producer settings K2's guarantees rest on; ``client_config`` may not change them.
PRODUCER_REQUIRED = {
    "enable.idempotence": "true",
    "acks": "all",
    "partitioner": "murmur2_random",
}
#: Producer settings ``client_config`` may override.
PRODUCER_DEFAULTS = {
    "compression.type": "lz4",
    "linger.ms": "5",
    "batch.num.messages": "10000",
    "queue.buffering.max.messages": "1000000",
}
_CONSUMER_REQUIRED = {"enable.auto.commit": "false"}
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class KafkaLog:
    """:class:`k2.log.base.Log` on a Kafka cluster at ``bootstrap_servers``.

    ``codec`` encodes records (see :func:`k2.log.codec.codec_for`); ``client_config``
    adds librdkafka settings (security, tuning) to every client, except those K2's
    guarantees rest on (:data:`PRODUCER_REQUIRED`, ``enable.auto.commit``), which raise
    :class:`~k2.errors.ConfigError`. ``default_partitions`` (record type → count) is what
    :meth:`default_spec` uses. ``timeout_s`` bounds each broker round trip (metadata,
    admin, commits); ``delivery_timeout_s`` how long a record may wait to be
    acknowledged; ``read_idle_s`` how long :meth:`read` waits for a record before
    taking the partition as ended; ``clock_us`` (UTC µs), if given, stamps produced
    records instead of the producer's wall clock. Safe to share between threads.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        codec: Codec,
        client_config: Mapping[str, str] | None = None,
        default_partitions: Mapping[str, int] | None = None,
        replication_factor: int = -1,
        catalog_topic: str = "_k2_topics",
        timeout_s: float = 10.0,
        delivery_timeout_s: float = 30.0,
        read_idle_s: float = 1.0,
        clock_us: Callable[[], int] | None = None,
    ) -> None:
        user = {str(k): str(v) for k, v in (client_config or {}).items()}
        for key, required in {**PRODUCER_REQUIRED, **_CONSUMER_REQUIRED}.items():
            if key in user and user[key].lower() != required:
                raise ConfigError(
                    f"K2_LOG__CLIENT_CONFIG sets {key}={user[key]}, but K2's Kafka log needs "
                    f"{key}={required} for its delivery guarantees"
                )
        self.bootstrap_servers = bootstrap_servers
        self.codec = codec
        self.default_partitions = {**DEFAULT_PARTITIONS, **(default_partitions or {})}
        self._user = user
        self._replication_factor = replication_factor
        self._catalog_topic = catalog_topic
        self._timeout_s = timeout_s
        self._delivery_timeout_s = delivery_timeout_s
        self._read_idle_s = read_idle_s
        self._clock_us = clock_us
        self._specs: dict[str, TopicSpec] = {}
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._closed = False
        self._last_error: str | None = None
        try:
            self._admin = AdminClient(self._base_config())
        except (KafkaException, ValueError, TypeError) as exc:
            raise from_exception(exc, "configuring the Kafka admin client") from exc
        self._readers = ReaderPool(self._reader_config)

    # -- configuration ----------------------------------------------------------------------

    def _base_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": _LIBRDKAFKA_LOGGER,
            "error_cb": self._on_client_error,
            **self._user,
        }

    def _reader_config(self) -> dict[str, Any]:
        return {
            "fetch.wait.max.ms": "5",  # the end of a read is one empty fetch away
            **self._base_config(),
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "error",
        }

    def _on_client_error(self, err: KafkaError) -> None:
        # Connection-level trouble librdkafka retries by itself: recorded, and quoted in
        # the error a caller gets if it persists.
        self._last_error = f"{err.name()}: {err.str()}"
        _log.warning("kafka.client_error", servers=self.bootstrap_servers, error=self._last_error)

    def _what(self, action: str) -> str:
        return f"{action} (Kafka at {self.bootstrap_servers})"

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings of this log's producer: K2's defaults, then
        ``client_config``, then the settings K2's guarantees need."""
        return {
            **PRODUCER_DEFAULTS,
            "message.timeout.ms": str(int(self._delivery_timeout_s * 1000)),
            **self._base_config(),
            **PRODUCER_REQUIRED,
        }

    def _get_producer(self) -> Producer:
        with self._lock:
            if self._closed:
                raise TerminalError("the Kafka log is closed")
            if self._producer is None:
                try:
                    self._producer = Producer(self.producer_config())
                except (KafkaException, ValueError, TypeError) as exc:
                    raise from_exception(exc, "configuring the Kafka producer") from exc
            return self._producer

    # -- topics -----------------------------------------------------------------------------

    def default_spec(
        self, name: str, record_type: RecordType, retention: Retention | None = None
    ) -> TopicSpec:
        """A spec for ``name`` with this log's partition count for ``record_type``
        (:data:`DEFAULT_PARTITIONS` unless ``default_partitions`` said otherwise)."""
        partitions = self.default_partitions[record_type.name]
        return TopicSpec(name, record_type, partitions, retention or Retention())

    def create_topic(self, spec: TopicSpec) -> None:
        """Create ``spec.name`` with its partitions and retention configs and record its
        type in the catalog. Idempotent; :class:`~k2.errors.ConfigError` if the topic
        exists with another partition count or record type."""
        if not _TOPIC_NAME.match(spec.name) or spec.name == self._catalog_topic:
            raise ConfigError(f"{spec.name!r} is not a usable Kafka topic name")
        if spec.partitions < 1:
            raise ConfigError(f"topic {spec.name!r} needs at least one partition")
        if self._catalog_topic not in self._partition_counts():
            self._ensure_topic(self._catalog_topic, 1, CATALOG_CONFIG)
        entries = self._catalog()
        known = entries.get(spec.name)
        if known is not None and known.record_type != spec.record_type:
            raise ConfigError(
                f"topic {spec.name!r} holds {known.record_type.name} records, "
                f"not {spec.record_type.name}"
            )
        partitions, created = self._ensure_topic(
            spec.name, spec.partitions, retention_configs(spec.retention)
        )
        if partitions != spec.partitions:
            raise ConfigError(
                f"topic {spec.name!r} exists with {partitions} partitions, not {spec.partitions}"
            )
        if known is None:
            entry = CatalogEntry(spec.record_type, spec.retention)
            self._send(self._catalog_topic, [entry.to_json(partitions)], [spec.name.encode()], None)
        if created:
            self._specs[spec.name] = spec
        else:  # the broker's configs are the authority on an existing topic
            self._specs.pop(spec.name, None)
        _log.info("kafka.topic_ready", topic=spec.name, partitions=partitions,
                  record_type=spec.record_type.name)  # fmt: skip

    def _ensure_topic(
        self, name: str, partitions: int, config: Mapping[str, str]
    ) -> tuple[int, bool]:
        """Create ``name`` unless it exists: (its partition count, whether created)."""
        new = NewTopic(name, partitions, self._replication_factor, config=dict(config))
        future = self._admin.create_topics(
            [new], operation_timeout=self._timeout_s, request_timeout=self._timeout_s
        )[name]
        created = True
        try:
            future.result()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise self._error(exc, f"creating topic {name!r}") from exc
            created = False
        counts = self._partition_counts()
        if name not in counts:
            raise TransientError(self._what(f"topic {name!r} was created but is not visible yet"))
        return counts[name], created

    def topic(self, name: str) -> TopicSpec:
        """The spec of K2 topic ``name``; :class:`~k2.errors.TerminalError` if unknown."""
        spec = self._specs.get(name)
        if spec is None:
            self._refresh([name])
            spec = self._specs.get(name)
            if spec is None:
                raise TerminalError(self._what(f"no K2 topic named {name!r}"))
        return spec

    def list_topics(self) -> list[TopicSpec]:
        """Every K2 topic (in the catalog and on the broker), by name."""
        return sorted(self._refresh(None), key=lambda s: s.name)

    def _refresh(self, names: Sequence[str] | None) -> list[TopicSpec]:
        """Re-read ``names`` (``None``: every catalogued topic) from the catalog and the
        broker; returns the specs of those that are K2 topics on the broker."""
        counts = self._partition_counts()
        entries = self._catalog() if self._catalog_topic in counts else {}
        wanted = [n for n in (entries if names is None else names) if n in entries and n in counts]
        configs = self._topic_configs(wanted)
        specs: list[TopicSpec] = []
        for name in wanted:
            entry = entries[name]
            retention = retention_from_configs(configs.get(name, {}), entry.retention)
            spec = TopicSpec(name, entry.record_type, counts[name], retention)
            self._specs[name] = spec
            specs.append(spec)
        return specs

    def _partition_counts(self) -> dict[str, int]:
        try:
            metadata = self._admin.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._error(exc, "reading topic metadata") from exc
        return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}

    def _catalog(self) -> dict[str, CatalogEntry]:
        return read_catalog(
            self._readers,
            self._catalog_topic,
            idle_s=self._read_idle_s,
            timeout_s=self._timeout_s,
        )

    def _topic_configs(self, names: Sequence[str]) -> dict[str, dict[str, str | None]]:
        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        futures = self._admin.describe_configs(resources, request_timeout=self._timeout_s)
        out: dict[str, dict[str, str | None]] = {}
        for resource, future in futures.items():
            try:
                entries = future.result()
            except KafkaException as exc:
                raise self._error(exc, f"reading the configs of topic {resource.name!r}") from exc
            out[resource.name] = {k: v.value for k, v in entries.items()}
        return out

    # -- produce ----------------------------------------------------------------------------

    def produce(self, topic: str, batch: pa.RecordBatch, key_column: str = "symbol") -> Produced:
        """Append ``batch`` keyed by ``key_column``; returns once every record is
        acknowledged (``acks=all``). :class:`~k2.errors.TerminalError` for an unknown
        topic or a batch not of the topic's record type; :class:`TransientError` if any
        record was not acknowledged (some may have been written: retry the batch)."""
        spec = self.topic(topic)
        batch = conform(batch, spec.record_type)
        if key_column not in batch.schema.names:
            raise TerminalError(f"{spec.record_type.name} records have no {key_column!r} column")
        if batch.num_rows == 0:
            return Produced(topic, {})
        keys = _keys(batch.column(key_column), key_column)
        values = self.codec.encode(batch, spec.record_type)
        stamp = self._clock_us() // 1000 if self._clock_us is not None else 0
        return self._send(topic, values, keys, stamp)

    def _send(
        self, topic: str, values: Sequence[bytes], keys: Sequence[bytes], stamp_ms: int | None
    ) -> Produced:
        producer = self._get_producer()
        first: dict[int, int] = {}
        counts: dict[int, int] = {}
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, message: Message) -> None:
            if err is not None:
                failures.append(err)
                return
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None:
                return
            seen = counts.get(partition)
            if seen is None:
                first[partition] = offset
                counts[partition] = 1
            else:
                counts[partition] = seen + 1
                if offset < first[partition]:
                    first[partition] = offset

        send = producer.produce
        stamp = stamp_ms or 0
        try:
            for value, key in zip(values, keys, strict=True):
                while True:
                    try:
                        send(topic, value, key, on_delivery=delivered, timestamp=stamp)
                        break
                    except BufferError:  # local queue full: let deliveries drain it
                        producer.poll(0.05)
        except KafkaException as exc:
            raise self._error(exc, f"producing to {topic!r}") from exc
        wait_s = self._delivery_timeout_s + self._timeout_s
        unsent = producer.flush(wait_s)
        if failures:
            err = failures[0]
            if err.fatal():
                self._drop_producer()
            problem = kafka_error(
                err, self._what(f"{len(failures)} of {len(values)} records to {topic!r} failed")
            )
            raise problem
        acked = sum(counts.values())
        if unsent or acked != len(values):
            raise TransientError(
                self._what(
                    f"only {acked} of {len(values)} records to {topic!r} were acknowledged "
                    f"within {wait_s:.0f} s"
                )
                + (f"; last client error: {self._last_error}" if self._last_error else "")
            )
        return Produced(topic, {p: (first[p], counts[p]) for p in sorted(first)})

    def _drop_producer(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.purge()

    # -- read -------------------------------------------------------------------------------

    def read(
        self,
        partition: TopicPartition,
        start: int,
        end: int | None = None,
        max_records: int = 50_000,
    ) -> Iterator[LogBatch]:
        """Records of ``partition`` with ``start <= offset < end`` in offset order;
        ``end=None``: to the end as the fetch reports it (see the module doc)."""
        spec = self.topic(partition.topic)
        if not 0 <= partition.partition < spec.partitions:
            raise TerminalError(f"{partition.topic!r} has no partition {partition.partition}")
        return self._read(spec, partition.partition, start, end, max_records)

    def _read(
        self, spec: TopicSpec, partition: int, start: int, end: int | None, max_records: int
    ) -> Iterator[LogBatch]:
        for messages in read_messages(
            self._readers,
            spec.name,
            partition,
            start,
            end,
            max_records,
            idle_s=self._read_idle_s,
            timeout_s=self._timeout_s,
        ):
            yield log_batch(spec.name, partition, messages, spec.record_type, self.codec)

    # -- offsets ----------------------------------------------------------------------------

    def begin_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the oldest offset the broker still holds."""
        return self._list_offsets(topic, OffsetSpec.earliest())  # type: ignore[no-untyped-call]

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the broker's high watermark: exact on Apache Kafka, too low on
        Tansu (see the module doc)."""
        return self._list_offsets(topic, OffsetSpec.latest())  # type: ignore[no-untyped-call]

    def _list_offsets(self, topic: str, which: OffsetSpec) -> dict[int, int]:
        spec = self.topic(topic)
        request = {KafkaPartition(topic, p): which for p in range(spec.partitions)}
        futures = self._admin.list_offsets(request, request_timeout=self._timeout_s)
        out: dict[int, int] = {}
        for tp, future in futures.items():
            out[tp.partition] = int(self._result(future, f"listing offsets of {topic!r}").offset)
        return dict(sorted(out.items()))

    def lag(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, end offset − the group's committed offset (never committed:
        end − oldest offset held). Inexact where :meth:`end_offsets` is."""
        spec = self.topic(topic)
        ends = self.end_offsets(topic)
        request = ConsumerGroupTopicPartitions(
            group, [KafkaPartition(topic, p) for p in range(spec.partitions)]
        )
        futures = self._admin.list_consumer_group_offsets(
            [request], request_timeout=self._timeout_s
        )
        listed = self._result(futures[group], f"reading the commits of group {group!r}")
        committed = {tp.partition: tp.offset for tp in listed.topic_partitions or []}
        begins: dict[int, int] | None = None
        out: dict[int, int] = {}
        for p, end in ends.items():
            mark = committed.get(p, -1)
            if mark < 0:
                begins = begins if begins is not None else self.begin_offsets(topic)
                mark = begins[p]
            out[p] = max(0, end - mark)
        return out

    def enforce_retention(self) -> int:
        """Nothing to do: the broker enforces each topic's ``retention.ms`` and
        ``retention.bytes`` itself (set by :meth:`create_topic`). Returns 0."""
        return 0

    # -- consumers --------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        start: str = "earliest",
        session_timeout_s: float = 6.0,
    ) -> KafkaConsumer:
        """Join consumer ``group`` on ``topics`` (K2 topics; TerminalError otherwise)."""
        if start not in ("earliest", "latest"):
            raise ConfigError(f"start must be 'earliest' or 'latest', not {start!r}")
        record_types = {t: self.topic(t).record_type for t in topics}
        session_ms = int(session_timeout_s * 1000)
        config = {
            "heartbeat.interval.ms": str(max(100, session_ms // 6)),
            "fetch.wait.max.ms": "100",
            **self._base_config(),
            "group.id": group,
            "auto.offset.reset": start,
            "session.timeout.ms": str(session_ms),
            **_CONSUMER_REQUIRED,
        }
        return KafkaConsumer(
            config, record_types, self.codec, start=start, timeout_s=self._timeout_s
        )

    def close(self) -> None:
        """Deliver what is queued (up to ``timeout_s``), then release every client."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            left = producer.flush(self._timeout_s)
            if left:
                _log.warning("kafka.close_undelivered", records=left)
        self._readers.close()

    # -- helpers ----------------------------------------------------------------------------

    def _error(self, exc: BaseException, action: str) -> K2Error:
        error = from_exception(exc, self._what(action))
        if isinstance(error, TransientError) and self._last_error:
            return type(error)(f"{error}; last client error: {self._last_error}")
        return error

    def _result(self, future: Future[Any], action: str) -> Any:
        try:
            return future.result()
        except KafkaException as exc:
            raise self._error(exc, action) from exc


def _keys(column: pa.Array, name: str) -> list[bytes]:
    """The message key of every row: the UTF-8 bytes of ``column`` (a null → ``b""``,
    which murmur2 places like the embedded log's null keys). Encoded once per distinct
    value."""
    if not (pa.types.is_string(column.type) or pa.types.is_binary(column.type)):
        raise TerminalError(f"key column {name!r} must be string or binary, not {column.type}")
    encoded = pc.dictionary_encode(column)
    distinct: list[bytes] = [
        v.encode() if isinstance(v, str) else bytes(v) for v in encoded.dictionary.to_pylist()
    ]
    indices = encoded.indices
    if indices.null_count:
        distinct.append(b"")
        indices = indices.fill_null(len(distinct) - 1)
    return [distinct[i] for i in indices.to_pylist()]

"""The Kafka log on a real Kafka-protocol broker (Tansu): the contract suite, plus what
only the Kafka log promises."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from k2.errors import ConfigError, ConnectionLost, TerminalError, TransientError
from k2.log.base import Retention, TopicPartition, TopicSpec
from k2.log.codec import AvroCodec, CompactCodec
from k2.log.kafka import KafkaLog
from k2.log.partitioner import partition_for
from k2.log.registry import MemorySchemaStore
from k2.records import DEAD_LETTER, QUOTE, TRADE
from tests.log.contract import (
    Handles,
    LogContract,
    LogFactory,
    ManualClock,
    dead_letter_batch,
    dlq_topic,
    same_rows,
    trade_batch,
    trade_topic,
    unique,
)
from tests.log.tansu import running_tansu
from tests.ports import free_port


class TestKafkaLogContract(LogContract):
    """The contract on Kafka (Tansu). Two kinds of test cannot pass here:

    - end offsets (``supports_exact_end_offsets``): Tansu's ListOffsets reports the last
      batch's base offset + 1 as the high watermark, so end offsets, lag and
      ``start="latest"`` are inexact on it (exact on Apache Kafka);
    - retention: Kafka enforces ``retention.ms``/``retention.bytes`` itself, on the
      broker's clock and segment by segment, so ``enforce_retention`` deletes nothing and
      a test clock cannot age records (and Tansu does not enforce retention at all). What
      K2 does — set those configs at creation — is tested below.

    Group tests pay Tansu's fixed 3 s wait for members at every rebalance.
    """

    supports_exact_end_offsets = False

    @pytest.fixture
    def log_factory(self, tmp_path: Path, clock: ManualClock, tansu: str) -> LogFactory:
        return lambda: KafkaLog(tansu, codec=CompactCodec(), clock_us=clock)

    def test_retention_by_time_deletes_old_records(
        self, handles: Handles, clock: ManualClock
    ) -> None:
        pytest.skip("Kafka deletes by retention.ms on the broker's clock, not K2's")

    def test_retention_by_size_deletes_oldest_records(self, handles: Handles) -> None:
        pytest.skip("Kafka deletes by retention.bytes on the broker, segment by segment")

    @pytest.mark.slow
    def test_two_members_split_the_partitions(self, handles: Handles) -> None:
        super().test_two_members_split_the_partitions(handles)

    @pytest.mark.slow
    def test_group_resumes_after_restart_from_committed_offsets(self, handles: Handles) -> None:
        super().test_group_resumes_after_restart_from_committed_offsets(handles)

    @pytest.mark.slow
    def test_uncommitted_records_are_delivered_again(self, handles: Handles) -> None:
        super().test_uncommitted_records_are_delivered_again(handles)


# -- Kafka-only behaviour ----------------------------------------------------------------


@pytest.fixture
def log(tansu: str) -> Iterator[KafkaLog]:
    kafka = KafkaLog(tansu, codec=CompactCodec())
    yield kafka
    kafka.close()


@pytest.fixture
def admin(tansu: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": tansu})


def _raw(tansu: str, topic: str, partition: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every message of a partition, read with a plain Kafka consumer."""
    c = Consumer(
        {
            "bootstrap.servers": tansu,
            "group.id": unique("raw"),
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    c.assign([KafkaPartition(topic, partition, 0)])
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            m = c.poll(1)
            if m is None:
                continue
            err = m.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                return out
            assert err is None, err
            out.append((m.key(), m.value()))
        pytest.fail(f"no end of {topic}[{partition}] within 10 s")
    finally:
        c.close()


def test_the_producer_is_idempotent_acks_all_lz4_and_murmur2(log: KafkaLog) -> None:
    config = log.producer_config()
    assert config["enable.idempotence"] == "true"
    assert config["acks"] == "all"
    assert config["compression.type"] == "lz4"
    assert config["partitioner"] == "murmur2_random"
    assert int(config["linger.ms"]) <= 10


def test_client_config_adds_settings_but_cannot_weaken_guarantees(tansu: str) -> None:
    tuned = KafkaLog(tansu, codec=CompactCodec(), client_config={"compression.type": "zstd"})
    assert tuned.producer_config()["compression.type"] == "zstd"
    tuned.close()
    for key, value in (("acks", "1"), ("enable.idempotence", "false"),
                       ("enable.auto.commit", "true")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"{key}={value}"):
            KafkaLog(tansu, codec=CompactCodec(), client_config={key: value})
    with pytest.raises(ConfigError, match="No such configuration property"):
        KafkaLog(tansu, codec=CompactCodec(), client_config={"no.such.setting": "1"})


def test_trade_topics_default_to_40_partitions_and_symbols_land_where_murmur2_says(
    log: KafkaLog, admin: AdminClient, tansu: str
) -> None:
    spec = log.default_spec(trade_topic(), TRADE)
    assert spec.partitions == 40
    log.create_topic(spec)
    assert len(admin.list_topics(timeout=5).topics[spec.name].partitions) == 40
    # 300 symbols, some non-ASCII: every one must land in the partition the embedded
    # log's partitioner (Kafka's Java murmur2) names.
    rng = random.Random(3)
    symbols = ["BTCUSDT", "ETHUSDT", "ÄÖÜUSDT", "币安USDT"] + [
        "".join(rng.choices(string.ascii_uppercase, k=rng.randint(1, 12))) for _ in range(296)
    ]
    log.produce(spec.name, trade_batch(0, 600, symbols))
    seen: dict[str, set[int]] = {}
    for p in range(40):
        for key, _ in _raw(tansu, spec.name, p):
            assert key is not None
            seen.setdefault(key.decode(), set()).add(p)
    assert set(seen) == set(symbols)
    for symbol, partitions in seen.items():
        assert partitions == {partition_for(symbol, 40)}, symbol


def test_other_default_partition_counts_are_configurable(tansu: str) -> None:
    log = KafkaLog(tansu, codec=CompactCodec(), default_partitions={"trade": 12})
    assert log.default_spec("t", TRADE).partitions == 12
    assert log.default_spec("q", QUOTE).partitions == 40
    assert log.default_spec("d", DEAD_LETTER).partitions == 1
    log.close()


def test_retention_is_set_on_the_topic_for_the_broker_to_enforce(
    log: KafkaLog, admin: AdminClient
) -> None:
    name = trade_topic()
    retention = Retention(max_age_us=3_600_000_000, max_bytes=1 << 20)
    log.create_topic(TopicSpec(name, TRADE, 2, retention))
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)]).values()
    configs = {k: v.value for k, v in future.result().items()}
    assert configs["retention.ms"] == "3600000"
    assert configs["retention.bytes"] == str(1 << 20)
    assert configs["cleanup.policy"] == "delete"
    unlimited = trade_topic()
    log.create_topic(TopicSpec(unlimited, TRADE, 1, Retention(max_age_us=None)))
    other = KafkaLog(log.bootstrap_servers, codec=CompactCodec())
    assert other.topic(name).retention == retention
    assert other.topic(unlimited).retention == Retention(max_age_us=None, max_bytes=None)
    assert other.enforce_retention() == 0
    other.close()


def test_record_types_are_kept_in_the_catalog_topic(log: KafkaLog, tansu: str) -> None:
    name = dlq_topic()
    log.create_topic(TopicSpec(name, DEAD_LETTER, 1))
    entries = {k: v for k, v in _raw(tansu, "_k2_topics") if k == name.encode()}
    entry = json.loads(entries[name.encode()] or b"null")
    assert entry["record_type"] == "dead_letter"
    assert entry["schema_version"] == 2


def test_a_topic_made_outside_k2_is_unknown_until_created(
    log: KafkaLog, admin: AdminClient
) -> None:
    name = trade_topic()
    admin.create_topics([NewTopic(name, 3, -1)])[name].result()
    with pytest.raises(TerminalError, match="no K2 topic named"):
        log.topic(name)
    assert name not in {t.name for t in log.list_topics()}
    with pytest.raises(ConfigError, match="exists with 3 partitions"):
        log.create_topic(TopicSpec(name, TRADE, 4))
    log.create_topic(TopicSpec(name, TRADE, 3))  # same shape: adopted
    assert log.topic(name).record_type == TRADE


def test_log_time_is_the_message_timestamp_from_the_injected_clock(tansu: str) -> None:
    clock = ManualClock(start_us=1_717_000_000_123_456)
    log = KafkaLog(tansu, codec=CompactCodec(), clock_us=clock)
    name = trade_topic()
    log.create_topic(TopicSpec(name, TRADE, 1))
    log.produce(name, trade_batch(0, 3))
    clock.advance(2.5)
    log.produce(name, trade_batch(3, 2))
    (batch,) = log.read(TopicPartition(name, 0), 0)
    assert batch.log_time_us is not None
    # Kafka timestamps are milliseconds.
    assert (
        batch.log_time_us.to_pylist() == [1_717_000_000_123_000] * 3 + [1_717_000_002_623_000] * 2
    )
    log.close()


def test_end_offsets_and_lag_where_tansu_reports_them_exactly(log: KafkaLog) -> None:
    # Tansu's high watermark is the last batch's base offset + 1: exact when every
    # batch holds one record, which producing one record at a time guarantees.
    name = trade_topic()
    log.create_topic(TopicSpec(name, TRADE, 1))
    for i in range(7):
        log.produce(name, trade_batch(i, 1))
    assert log.end_offsets(name) == {0: 7}
    assert log.begin_offsets(name) == {0: 0}
    group = unique("k2-lag")
    assert log.lag(group, name) == {0: 7}
    c = log.consumer(group, [name])
    c.commit({TopicPartition(name, 0): 5})
    assert log.lag(group, name) == {0: 2}
    c.close()


def test_commits_are_kafka_group_commits_other_tools_see(log: KafkaLog, admin: AdminClient) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions

    name, group = trade_topic(), unique("k2-group")
    log.create_topic(TopicSpec(name, TRADE, 2))
    c = log.consumer(group, [name])
    c.commit({TopicPartition(name, 0): 3, TopicPartition(name, 1): 9})
    c.close()
    request = ConsumerGroupTopicPartitions(
        group, [KafkaPartition(name, 0), KafkaPartition(name, 1)]
    )
    listed = admin.list_consumer_group_offsets([request])[group].result()
    assert {tp.partition: tp.offset for tp in listed.topic_partitions} == {0: 3, 1: 9}


def test_dead_letters_round_trip_in_avro_with_confluent_framing(tansu: str) -> None:
    store = MemorySchemaStore()
    log = KafkaLog(tansu, codec=AvroCodec(store))
    name = dlq_topic()
    log.create_topic(TopicSpec(name, DEAD_LETTER, 1))
    raws = [b"", b"\x00\xff", b'{"e":"trade","p":"x"}', bytes(range(256)) * 40]
    batch = dead_letter_batch(raws)
    produced = log.produce(name, batch, key_column="source")
    assert dict(produced.ranges) == {0: (0, 4)}
    (got,) = log.read(TopicPartition(name, 0), 0)
    assert same_rows(pa.Table.from_batches([got.records]), pa.Table.from_batches([batch]))
    schema_id = store.register("k2.dead_letter-value", DEAD_LETTER.avro_schema())
    for key, value in _raw(tansu, name):
        assert key == b"binance.ws"
        assert value is not None and value[0] == 0
        assert int.from_bytes(value[1:5], "big") == schema_id
    # A log configured for the compact encoding says what it found instead.
    compact = KafkaLog(tansu, codec=CompactCodec())
    with pytest.raises(TerminalError, match=r"offsets 0\.\.3: .*Confluent Avro framing"):
        list(compact.read(TopicPartition(name, 0), 0))
    compact.close()
    log.close()


def test_reading_from_beyond_the_end_returns_nothing(log: KafkaLog) -> None:
    name = trade_topic()
    log.create_topic(TopicSpec(name, TRADE, 1))
    log.produce(name, trade_batch(0, 10))
    tp = TopicPartition(name, 0)
    assert list(log.read(tp, 10)) == []
    with pytest.raises(TerminalError, match="no partition 1"):
        log.read(TopicPartition(name, 1), 0)


def test_an_unreachable_broker_is_a_clear_transient_error() -> None:
    port = free_port()  # nothing listens here
    log = KafkaLog(f"127.0.0.1:{port}", codec=CompactCodec(), timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match=rf"Kafka at 127\.0\.0\.1:{port}"):
        log.create_topic(TopicSpec(trade_topic(), TRADE, 1))
    with pytest.raises(TransientError, match=rf"Kafka at 127\.0\.0\.1:{port}"):
        log.produce("anything", trade_batch(0, 1))
    assert time.monotonic() - started < 10
    log.close()


def test_produce_fails_transiently_when_the_broker_goes_away() -> None:
    name = trade_topic()
    with running_tansu() as bootstrap:
        healthy = KafkaLog(bootstrap, codec=CompactCodec())
        healthy.create_topic(TopicSpec(name, TRADE, 2))
        assert healthy.produce(name, trade_batch(0, 10)).count == 10
        healthy.close()
        # Short timeouts keep the test quick; the topic is known before the broker goes.
        log = KafkaLog(bootstrap, codec=CompactCodec(), timeout_s=1.0, delivery_timeout_s=1.0)
        assert log.topic(name).partitions == 2
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"_MSG_TIMED_OUT.*is the broker up and reachable"):
        log.produce(name, trade_batch(10, 10))
    assert time.monotonic() - started < 10
    log.close()


def test_a_closed_log_refuses_work(tansu: str) -> None:
    log = KafkaLog(tansu, codec=CompactCodec())
    name = trade_topic()
    log.create_topic(TopicSpec(name, TRADE, 1))
    log.close()
    log.close()  # twice is fine
    with pytest.raises(TerminalError, match="closed"):
        log.produce(name, trade_batch(0, 1))

"""Which record type each K2 topic in Kafka holds: the catalog topic.

Kafka knows a topic's partitions and retention but not what its records are, and
Apache Kafka refuses topic configs it does not know (so a ``k2.record_type`` topic
config, which Tansu would accept, is not portable). K2 therefore keeps a small
compacted topic, ``_k2_topics`` by default, with one message per K2 topic: key = the
topic name, value = JSON ``{"record_type": "trade", "schema_version": 2, ...}``. Every
K2 process reading the same cluster sees the same catalog; the last message of a key
wins (a null value removes the entry).

Partition counts and retention are not trusted to the catalog: they come from the
broker (metadata and topic configs), which is the authority.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from k2.errors import TerminalError
from k2.log.base import Retention
from k2.log.kafka_read import ReaderPool, read_messages
from k2.records import RECORD_TYPES, SCHEMA_VERSION, RecordType

#: Topic configs the catalog topic is created with: compacted, kept forever.
CATALOG_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True)
class CatalogEntry:
    """What the catalog says about one topic."""

    record_type: RecordType
    retention: Retention

    def to_json(self, partitions: int) -> bytes:
        return json.dumps(
            {
                "record_type": self.record_type.name,
                "schema_version": SCHEMA_VERSION,
                "partitions": partitions,
                "retention": {
                    "max_age_us": self.retention.max_age_us,
                    "max_bytes": self.retention.max_bytes,
                },
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, topic: str, value: bytes) -> CatalogEntry:
        try:
            data = json.loads(value)
            record_type = RECORD_TYPES[data["record_type"]]
            retention = data.get("retention") or {}
            return cls(
                record_type,
                Retention(
                    max_age_us=retention.get("max_age_us"), max_bytes=retention.get("max_bytes")
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TerminalError(
                f"the K2 topic catalog's entry for {topic!r} is unreadable: {value[:200]!r} ({exc})"
            ) from None


def read_catalog(
    pool: ReaderPool, catalog_topic: str, *, idle_s: float, timeout_s: float
) -> dict[str, CatalogEntry]:
    """Every entry of the catalog, the last message of each topic winning."""
    entries: dict[str, CatalogEntry] = {}
    for chunk in read_messages(
        pool, catalog_topic, 0, 0, None, 10_000, idle_s=idle_s, timeout_s=timeout_s
    ):
        for message in chunk:
            key = message.key()
            if key is None:
                continue  # not written by K2; nothing to learn from it
            topic = key.decode("utf-8", "replace")
            value = message.value()
            if value is None:
                entries.pop(topic, None)
            else:
                entries[topic] = CatalogEntry.from_json(topic, value)
    return entries


def retention_from_configs(configs: Mapping[str, str | None], fallback: Retention) -> Retention:
    """A topic's retention from its Kafka configs (``retention.ms``/``retention.bytes``,
    ``-1`` meaning unlimited); a setting the broker does not report keeps ``fallback``."""
    return Retention(
        max_age_us=_limit(configs.get("retention.ms"), fallback.max_age_us, 1000),
        max_bytes=_limit(configs.get("retention.bytes"), fallback.max_bytes, 1),
    )


def _limit(raw: str | None, fallback: int | None, scale: int) -> int | None:
    if raw is None:
        return fallback
    number = int(raw)
    return None if number < 0 else number * scale


def retention_configs(retention: Retention) -> dict[str, str]:
    """The Kafka topic configs that make the broker enforce ``retention``."""
    age = retention.max_age_us
    return {
        "cleanup.policy": "delete",
        # Kafka keeps time in ms; round up so a short retention never becomes 0 ms.
        "retention.ms": "-1" if age is None else str(max(1, -(-age // 1000))),
        "retention.bytes": "-1" if retention.max_bytes is None else str(retention.max_bytes),
    }

"""Open the log the settings ask for: embedded (default) or Kafka.

The Kafka implementation is imported only when chosen, so the embedded default needs
nothing beyond K2's own install.
"""

from __future__ import annotations

from k2.config import Settings
from k2.log.base import Log, Retention
from k2.log.topics import TopicLayout


def open_log(settings: Settings) -> Log:
    """The log of ``settings.log`` (its topics are created by whoever writes them)."""
    cfg = settings.log
    if cfg.backend == "kafka":
        from k2.log.codec import codec_for
        from k2.log.kafka import KafkaLog

        return KafkaLog(
            cfg.bootstrap_servers,
            codec=codec_for(settings.schema_registry_url),
            client_config=cfg.client_config,
            default_partitions={"trade": cfg.trade_partitions, "quote": cfg.quote_partitions},
        )
    from k2.log.embedded import EmbeddedLog

    return EmbeddedLog(cfg.path or settings.data_dir / "log", durability=cfg.durability)


def topic_layout(settings: Settings, exchange: str = "binance") -> TopicLayout:
    """Topic names, partitions and retention for ``exchange`` from ``settings``."""
    cfg = settings.log
    retention = Retention(
        max_age_us=int(cfg.retention_hours * 3600 * 1_000_000),
        max_bytes=cfg.retention_bytes,
    )
    return TopicLayout(
        exchange=exchange,
        trade_partitions=cfg.trade_partitions,
        quote_partitions=cfg.quote_partitions,
        retention=retention,
    )

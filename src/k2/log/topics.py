"""K2's topic names and shapes.

Data topics are ``market.<asset_class>.<data_type>.<exchange>`` (plural data types,
e.g. ``market.crypto.trades.binance``); each has a dead-letter topic with ``.dlq``
appended. Frames whose data type could not be told (unreadable JSON) go to the
``frames`` dead-letter topic. Gaps, once recorded, go to ``...gaps...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from k2.log.base import Retention, TopicSpec
from k2.records import DEAD_LETTER, GAP, QUOTE, TRADE, RecordType

#: K2 data type (record name) → the plural used in topic names.
_PLURAL = {"trade": "trades", "quote": "quotes", "gap": "gaps"}
#: Dead letters of frames whose data type could not be told.
UNKNOWN_DATA_TYPE = "frames"


@dataclass(frozen=True)
class TopicLayout:
    """Topic names and partition counts for one exchange and asset class."""

    exchange: str = "binance"
    asset_class: str = "crypto"
    trade_partitions: int = 40
    quote_partitions: int = 40
    retention: Retention = field(default_factory=Retention)

    def data_topic(self, data_type: str) -> str:
        """``trade`` → ``market.crypto.trades.binance``."""
        return f"market.{self.asset_class}.{_PLURAL.get(data_type, data_type)}.{self.exchange}"

    def dead_letter_topic(self, data_type: str | None) -> str:
        """The dead-letter topic for ``data_type`` (``None``: unreadable frames)."""
        return self.data_topic(data_type or UNKNOWN_DATA_TYPE) + ".dlq"

    def specs(self) -> list[TopicSpec]:
        """Every topic the capture writes, with its record type and partitions."""
        data: list[tuple[str, RecordType, int]] = [
            ("trade", TRADE, self.trade_partitions),
            ("quote", QUOTE, self.quote_partitions),
            ("gap", GAP, 1),
        ]
        specs = [TopicSpec(self.data_topic(t), rt, n, self.retention) for t, rt, n in data]
        for data_type in ("trade", "quote", None):
            specs.append(TopicSpec(self.dead_letter_topic(data_type), DEAD_LETTER, 1,
                                   self.retention))  # fmt: skip
        return specs

    def dead_letter_topics(self) -> dict[str, str]:
        """Data type (or ``frames``) → its dead-letter topic."""
        return {
            (t or UNKNOWN_DATA_TYPE): self.dead_letter_topic(t) for t in ("trade", "quote", None)
        }

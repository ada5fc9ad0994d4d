"""Dead letters: list them, show one, and replay them after a fix.

Every frame the capture rejected sits on a dead-letter topic with its reason and its
raw bytes (see :mod:`k2.capture.log_output`). Replaying runs each raw frame through
today's parser and validation again: what now passes is produced to its data topic,
what still fails stays where it is and is reported. Replay progress is a consumer
group's committed offsets, so running it twice never replays a dead letter twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from k2.errors import TerminalError
from k2.log.base import Log, LogBatch, TopicPartition
from k2.log.topics import TopicLayout
from k2.ops.clock import utc_now_us
from k2.quality.validate import validate_quotes, validate_trades
from k2.sources.binance.parse import FrameParser

REPLAY_GROUP = "k2-dead-letter-replay"
#: Sources whose raw payloads are exchange frames the parser can read again.
_REPLAYABLE_SOURCES = frozenset({"binance.ws"})


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter and where it sits in the log."""

    topic: str
    partition: int
    offset: int
    data_type: str
    reason: str
    detail: str
    raw: bytes
    received_at: datetime
    source: str
    rejected_at: datetime

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-able: raw as UTF-8 text when it is text, else as hex."""
        try:
            raw, encoding = self.raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raw, encoding = self.raw.hex(), "hex"
        return {
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "data_type": self.data_type, "reason": self.reason, "detail": self.detail,
            "source": self.source, "received_at": self.received_at.isoformat(),
            "rejected_at": self.rejected_at.isoformat(), "raw": raw, "raw_encoding": encoding,
        }  # fmt: skip


def _letters(batch: LogBatch) -> Iterator[DeadLetter]:
    offsets = batch.offsets().to_pylist()
    for offset, row in zip(offsets, batch.records.to_pylist(), strict=True):
        yield DeadLetter(batch.topic, batch.partition, offset, **row)


def _topics(log: Log, layout: TopicLayout, data_type: str | None) -> list[str]:
    topics = layout.dead_letter_topics()
    if data_type is not None and data_type not in topics:
        raise TerminalError(
            f"unknown data type {data_type!r}: use one of {', '.join(sorted(topics))}"
        )
    wanted = [topics[data_type]] if data_type else list(topics.values())
    existing = {spec.name for spec in log.list_topics()}
    return [t for t in wanted if t in existing]


def list_dead_letters(
    log: Log,
    layout: TopicLayout,
    *,
    data_type: str | None = None,
    reason: str | None = None,
    limit: int = 100,
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters, oldest first per topic, optionally filtered."""
    found: list[DeadLetter] = []
    for topic in _topics(log, layout, data_type):
        for partition, start in sorted(log.begin_offsets(topic).items()):
            for batch in log.read(TopicPartition(topic, partition), start):
                for letter in _letters(batch):
                    if reason is None or letter.reason == reason:
                        found.append(letter)
                        if len(found) >= limit:
                            return found
    return found


def show_dead_letter(log: Log, topic: str, partition: int, offset: int) -> DeadLetter:
    """The dead letter at ``topic``/``partition``/``offset``; TerminalError if none."""
    log.topic(topic)  # raises for an unknown topic
    for batch in log.read(TopicPartition(topic, partition), offset, offset + 1):
        for letter in _letters(batch):
            if letter.offset == offset:
                return letter
    raise TerminalError(f"no dead letter at {topic}[{partition}]@{offset}")


@dataclass
class ReplayReport:
    """What a replay did."""

    examined: int = 0
    replayed: dict[str, int] = field(default_factory=dict)
    still_rejected: Counter[str] = field(default_factory=Counter)
    not_replayable: Counter[str] = field(default_factory=Counter)
    skipped_by_reason_filter: int = 0


def replay_dead_letters(
    log: Log,
    layout: TopicLayout,
    *,
    known_symbols: frozenset[str] | None,
    data_type: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    max_future_skew_s: float = 60.0,
    clock_us: Callable[[], int] = utc_now_us,
) -> ReplayReport:
    """Re-parse and re-validate dead letters; produce what now passes.

    Only dead letters not yet examined by a previous replay are read (consumer group
    ``k2-dead-letter-replay``); with ``dry_run`` nothing is produced or committed.
    A dead letter filtered out by ``reason`` counts as examined all the same.
    """
    replayer = _Replayer(log, layout, known_symbols, reason, dry_run,
                         int(max_future_skew_s * 1e6), clock_us)  # fmt: skip
    for topic in _topics(log, layout, data_type):
        consumer = log.consumer(REPLAY_GROUP, [topic], start="earliest")
        try:
            while batches := consumer.poll(max_records=10_000, timeout_s=1.0):
                for batch in batches:
                    replayer.replay(batch)
            if not dry_run:
                consumer.commit()
        finally:
            consumer.close()
    return replayer.report


@dataclass
class _Replayer:
    log: Log
    layout: TopicLayout
    known: frozenset[str] | None
    reason: str | None
    dry_run: bool
    max_future_us: int
    clock_us: Callable[[], int]
    parser: FrameParser = field(default_factory=FrameParser)
    report: ReplayReport = field(default_factory=ReplayReport)

    def replay(self, batch: LogBatch) -> None:
        frames: list[bytes] = []
        received: list[int] = []
        for letter in _letters(batch):
            self.report.examined += 1
            if self.reason is not None and letter.reason != self.reason:
                self.report.skipped_by_reason_filter += 1
            elif letter.source not in _REPLAYABLE_SOURCES:
                self.report.not_replayable[letter.source] += 1
            else:
                frames.append(letter.raw)
                received.append(int(letter.received_at.timestamp() * 1_000_000))
        if not frames:
            return
        parsed = self.parser.parse(frames, received)
        now = self.clock_us()
        trades, _, bad_trades = validate_trades(
            parsed.trades, parsed.trade_raw, known_symbols=self.known, now_us=now,
            max_future_us=self.max_future_us, source="replay",
        )  # fmt: skip
        quotes, _, bad_quotes = validate_quotes(
            parsed.quotes, parsed.quote_raw, known_symbols=self.known, now_us=now,
            max_future_us=self.max_future_us, source="replay",
        )  # fmt: skip
        for r in [*parsed.rejects, *bad_trades, *bad_quotes]:
            self.report.still_rejected[r.reason.value] += 1
        for data_type, records in (("trade", trades), ("quote", quotes)):
            if records.num_rows:
                if not self.dry_run:
                    self.log.produce(self.layout.data_topic(data_type), records)
                replayed = self.report.replayed
                replayed[data_type] = replayed.get(data_type, 0) + records.num_rows

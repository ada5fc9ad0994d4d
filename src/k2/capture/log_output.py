"""The capture's output when it feeds the log (``k2 ingest``).

Records go to their data topic keyed by symbol; rejects go, as dead-letter records with
the raw payload, to the dead-letter topic of the data type they were meant to be; gaps
go to the gaps topic. A write returns only once the log has made all of it durable, so
the capture takes no further frames from the exchange until then.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import pyarrow as pa

from k2.capture.output import OutputBatch
from k2.log.base import Log
from k2.log.topics import TopicLayout
from k2.ops.breaker import CircuitBreaker
from k2.ops.clock import utc_now_us
from k2.quality.rejects import Reject
from k2.records import DEAD_LETTER, GAP


def dead_letter_batch(rejects: list[Reject], rejected_at_us: int) -> pa.RecordBatch:
    """``rejects`` as a k2.records.DEAD_LETTER batch (raw payloads byte-exact)."""
    ts = pa.timestamp("us", tz="UTC")
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r.data_type or "frames" for r in rejects], pa.string()),
            pa.array([r.reason.value for r in rejects], pa.string()),
            pa.array([r.detail for r in rejects], pa.string()),
            pa.array([r.raw for r in rejects], pa.binary()),
            pa.array([r.received_us for r in rejects], pa.int64()).cast(ts),
            pa.array([r.source for r in rejects], pa.string()),
            pa.array([rejected_at_us] * len(rejects), pa.int64()).cast(ts),
        ],
        schema=DEAD_LETTER.arrow_schema(),
    )


class LogOutput:
    """Writes the capture's output to ``log`` under ``layout``'s topic names.

    The process that writes the log also applies its retention, every
    ``retention_interval_s`` (the embedded log deletes old segments; Kafka's brokers
    do it themselves and the call is free).
    """

    def __init__(
        self,
        log: Log,
        layout: TopicLayout,
        *,
        clock_us: Callable[[], int] = utc_now_us,
        retention_interval_s: float = 60.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._log = log
        self._breaker = breaker
        self._layout = layout
        self._clock_us = clock_us
        self._retention_every_us = int(retention_interval_s * 1_000_000)
        self._retention_due_us = clock_us() + self._retention_every_us
        self.retention_deleted = 0
        for spec in layout.specs():
            log.create_topic(spec)

    async def write(self, batch: OutputBatch) -> None:
        """Produce every part of ``batch``; returns once all of it is durable."""
        # Through the log's breaker (state for metrics and k2 status); a failed write
        # is not retried here: a partly written batch must not be written twice, so
        # the capture stops and the restarted one resumes from what the log holds.
        if self._breaker is not None:
            await asyncio.to_thread(self._breaker.call, self._write, batch)
        else:
            await asyncio.to_thread(self._write, batch)
        now = self._clock_us()
        if now >= self._retention_due_us:
            self._retention_due_us = now + self._retention_every_us
            self.retention_deleted += await asyncio.to_thread(self._log.enforce_retention)

    def _write(self, batch: OutputBatch) -> None:
        layout = self._layout
        if batch.trades is not None and batch.trades.num_rows:
            self._log.produce(layout.data_topic("trade"), batch.trades)
        if batch.quotes is not None and batch.quotes.num_rows:
            self._log.produce(layout.data_topic("quote"), batch.quotes)
        if batch.rejects:
            by_type: dict[str | None, list[Reject]] = defaultdict(list)
            for r in batch.rejects:
                by_type[r.data_type].append(r)
            now = self._clock_us()
            for data_type, rejects in by_type.items():
                self._log.produce(
                    layout.dead_letter_topic(data_type),
                    dead_letter_batch(rejects, now),
                    key_column="source",
                )
        if batch.gaps:
            gaps = pa.RecordBatch.from_pylist(batch.gaps, schema=GAP.arrow_schema())
            self._log.produce(layout.data_topic("gap"), gaps)

    async def flush(self) -> None:
        """Nothing to do: every write was durable when it returned."""

"""The capture's degradation governor: measure pressure, shed by priority, backfill.

:class:`Governor` feeds a :class:`~k2.ops.degradation.DegradationManager` with the
pressures of the running platform and applies its decisions to each batch:

- **log lag** — records the log holds that the lake sink (consumer group
  ``lake.sink_group``) has not committed, summed over the trade and quote topics; also
  expressed in seconds at the capture's recent record rate. Until the sink group has
  committed anything (no sink has run yet), lag is not a pressure: an ingest running
  alone must not shed because nobody consumes.
- **memory** — this process's RSS against ``degradation.memory_limit_bytes`` (or the
  cgroup/machine total).

Shed trades are never lost silently: their ids go into a
:class:`~k2.ops.degradation.ShedLedger`; once the level is back to NORMAL (and at the
latest when the capture stops) each range is handed to the pipeline's gap repair, which
fetches the trades from the exchange's history and writes them with a gap record that
says they were shed. Were the capture killed first, the ids are holes below its last
trade in the log, which the resumed capture repairs (:mod:`k2.capture.resume`). Shed
quotes cannot be fetched again (Binance keeps no bookTicker history); they are counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2.ops.degradation import DegradationManager, Level, ShedLedger, ShedRange
from k2.ops.log import get_logger
from k2.ops.metrics import Metrics

log = get_logger(__name__)

#: ``() -> (records behind, whether the sink group has committed anything)``
LagProbe = Callable[[], tuple[int, bool]]


@dataclass
class ShedCounts:
    trades: int = 0
    quotes: int = 0


class Governor:
    """Degradation for one capture (see the module docstring). Not thread-safe except
    :meth:`sample`, which only reads its probes and updates the manager."""

    def __init__(
        self,
        manager: DegradationManager,
        *,
        lag: LagProbe | None,
        memory: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.ledger = ShedLedger()
        self.shed_total = ShedCounts()
        self._lag = lag
        self._memory = memory
        self._clock = clock
        self._rate = 0.0
        self._last_count: tuple[float, int] | None = None
        self.lag_records = 0
        self.lag_s = 0.0
        self.memory_fraction = 0.0
        self.metrics: Metrics | None = None

    def sample(self, offered: int) -> Level:
        """Measure the pressures and update the level; ``offered`` is the capture's
        running count of records received and kept or shed (for the rate that turns
        records into seconds). Blocking (it reads the log): call it from a thread."""
        now = self._clock()
        if self._last_count is not None and now > self._last_count[0]:
            rate = (offered - self._last_count[1]) / (now - self._last_count[0])
            self._rate = rate if self._rate == 0 else 0.7 * self._rate + 0.3 * rate
        self._last_count = (now, offered)
        behind, consumed = self._lag() if self._lag is not None else (0, False)
        self.lag_records = behind if consumed else 0
        # Records behind, in seconds of the capture's own flow; until that flow is
        # measured (the first samples, or a silent market) the record count alone
        # speaks, through ``degradation.lag_records``.
        self.lag_s = self.lag_records / self._rate if self._rate >= 1.0 else 0.0
        self.memory_fraction = self._memory()
        return self.manager.update(self.lag_s, self.memory_fraction, float(self.lag_records))

    def shed(
        self, trades: pa.RecordBatch, quotes: pa.RecordBatch
    ) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """``trades`` and ``quotes`` without what the current level sheds; shed trade
        ids go to the ledger, shed quotes are counted."""
        if self.manager.level == Level.NORMAL:
            return trades, quotes
        return self._shed(trades, "trade"), self._shed(quotes, "quote")

    def _shed(self, batch: pa.RecordBatch, data_type: str) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return batch
        symbols = batch.column("symbol")
        gone = [
            s
            for s in pc.unique(symbols).to_pylist()
            if self.manager.should_shed(s, "trade" if data_type == "trade" else "quote")
        ]
        if not gone:
            return batch
        mask = pc.is_in(symbols, value_set=pa.array(gone, pa.string()))
        dropped = batch.filter(mask)
        if data_type == "trade":
            for symbol in gone:
                ids = dropped.filter(pc.equal(dropped.column("symbol"), symbol))
                self.ledger.record_many(symbol, ids.column("trade_id").to_pylist())
            self.shed_total.trades += dropped.num_rows
            if self.metrics is not None:
                self.metrics.capture_shed("trade", int(self.manager.level), dropped.num_rows)
        else:
            for symbol in gone:
                count = pc.sum(pc.equal(dropped.column("symbol"), symbol)).as_py() or 0
                self.ledger.record_quotes(symbol, count)
            self.shed_total.quotes += dropped.num_rows
            if self.metrics is not None:
                self.metrics.capture_shed("quote", int(self.manager.level), dropped.num_rows)
        return batch.filter(pc.invert(mask))

    def backfill_due(self, *, force: bool = False) -> list[ShedRange]:
        """The shed trade ranges to fetch now: all of them once the level is NORMAL
        (or with ``force``, when the capture stops); else none."""
        if not force and self.manager.level != Level.NORMAL:
            return []
        return self.ledger.drain()

    def describe(self) -> dict[str, Any]:
        """The governor's state for ``k2 status``."""
        level = self.manager.level
        return {
            "level": int(level),
            "level_name": level.name,
            "lag_records": self.lag_records,
            "lag_s": round(self.lag_s, 2),
            "memory_fraction": round(self.memory_fraction, 4),
            "trades_shed": self.shed_total.trades,
            "quotes_shed": self.shed_total.quotes,
            "shed_pending": self.ledger.pending(),
            "history": [
                {
                    "at_monotonic": round(c.at, 3),
                    "old": c.old.name,
                    "new": c.new.name,
                    "reason": c.reason,
                }
                for c in self.manager.history[-20:]
            ],
        }

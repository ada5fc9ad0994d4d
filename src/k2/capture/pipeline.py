"""The capture pipeline: source → validation → dedup → gap repair → output.

One task consumes the source's parsed batches; repairs run beside it, so a slow REST
call never stalls the stream. Stopping is clean: the source drains what it received,
pending gaps are repaired at once instead of waiting out their grace period, and the
trades printed after each symbol's last received trade are fetched from the
exchange's history (a dropped frame at the very end leaves no id gap to notice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from k2.capture.governor import Governor
from k2.capture.output import CaptureOutput, OutputBatch
from k2.capture.resume import ResumePoint
from k2.errors import TransientError
from k2.ops.clock import utc_now_us
from k2.ops.degradation import ShedRange
from k2.ops.log import bind_correlation, get_logger, new_correlation_id
from k2.quality.dedup import Deduplicator
from k2.quality.gaps import GapDetector, GapRange, GapRepairer
from k2.quality.rejects import Reject
from k2.quality.validate import validate_quotes, validate_trades
from k2.sources.base import ParsedBatch, Source

log = get_logger(__name__)


@dataclass
class CaptureStats:
    """Counts for one capture run."""

    batches: int = 0
    trades: int = 0
    quotes: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    gaps_detected: int = 0
    gaps_repaired: int = 0
    gaps_unrepairable: int = 0
    trades_repaired: int = 0
    trades_after_tail: int = 0
    server_shutdowns: int = 0
    trades_shed: int = 0
    quotes_shed: int = 0
    trades_backfilled: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CaptureOptions:
    """Knobs of the quality stage (defaults match :class:`k2.config.CaptureSettings`)."""

    dedup_window_s: float = 3600.0
    dedup_max_entries: int = 500_000
    gap_grace_s: float = 2.0
    max_future_skew_s: float = 60.0
    repair_attempts: int = 5
    tail_check: bool = True
    #: At stop, how long repairs and the tail fetch may take; what is still open then
    #: is left to the next start, which resumes where the log ends and repairs it.
    stop_repair_timeout_s: float = 20.0


class CapturePipeline:
    """Runs one source through the quality stages into one output."""

    def __init__(
        self,
        source: Source,
        output: CaptureOutput,
        options: CaptureOptions | None = None,
        *,
        clock_us: Callable[[], int] = utc_now_us,
        resume: Mapping[str, ResumePoint] | None = None,
        governor: Governor | None = None,
        sample_interval_s: float = 1.0,
    ) -> None:
        """``resume``: symbol → what an earlier run already delivered (see
        :mod:`k2.capture.resume`); those trades count as duplicates, the holes it left
        and the first trade received after it open gaps that the repair fills.
        ``governor``: degradation (see :mod:`k2.capture.governor`), sampled every
        ``sample_interval_s``; ``None`` never sheds."""
        self._source = source
        self._out = output
        self._opts = options or CaptureOptions()
        self._clock_us = clock_us
        self.stats = CaptureStats()
        self._dedup_trades = Deduplicator(
            window_us=int(self._opts.dedup_window_s * 1e6),
            max_entries=self._opts.dedup_max_entries,
            clock_us=clock_us,
        )
        self._dedup_quotes = Deduplicator(
            window_us=int(self._opts.dedup_window_s * 1e6),
            max_entries=self._opts.dedup_max_entries,
            clock_us=clock_us,
        )
        self._gaps = GapDetector(grace_us=int(self._opts.gap_grace_s * 1e6), clock_us=clock_us)
        self._repairer = GapRepairer(
            source.fetch_trades, max_attempts=self._opts.repair_attempts, clock_us=clock_us
        )
        for symbol, point in (resume or {}).items():
            instrument = (source.exchange, symbol)
            self._gaps.seed(instrument, point.last_id, point.holes)
            self._dedup_trades.seed(instrument, point.runs)
        self._governor = governor
        self._sample_interval_s = sample_interval_s
        self._repairs: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._stopped_at_us: int | None = None

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop cleanly (safe from a signal handler)."""
        self._stop.set()

    async def run(self, max_seconds: float | None = None) -> CaptureStats:
        """Capture until :meth:`request_stop` or ``max_seconds``; then drain and flush.

        Raises the source's :class:`~k2.errors.TerminalError` (bad URL, unknown symbol);
        transient network trouble is retried inside the source.
        """
        try:
            await self._source.start()
            await self._run(max_seconds)
        finally:
            await self._source.aclose()
        return self.stats

    async def _run(self, max_seconds: float | None) -> None:
        consumer = asyncio.create_task(self._consume(), name="capture-consume")
        ticker = asyncio.create_task(self._repair_due_gaps(), name="capture-gaps")
        governing = asyncio.create_task(self._govern(), name="capture-governor")
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {consumer, stopper}, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if consumer in done:
                consumer.result()  # the source ended or failed: surface its error
            # The tail check fetches what the exchange printed up to this moment, not
            # whatever it prints while the repairs below are still running.
            self._stopped_at_us = self._clock_us()
            await self._source.stop()
            await consumer  # drains every batch the source still holds
        finally:
            for task in (ticker, stopper, consumer, governing):
                task.cancel()
            await asyncio.gather(ticker, stopper, governing, return_exceptions=True)
        await self._finish()

    async def _consume(self) -> None:
        async for parsed in self._source.batches():
            with bind_correlation(batch_id=new_correlation_id("batch")):
                await self._handle(parsed)

    async def _handle(self, parsed: ParsedBatch) -> None:
        self.stats.batches += 1
        self.stats.server_shutdowns += parsed.server_shutdowns
        rejects = list(parsed.rejects)
        now = self._clock_us()
        known = self._source.known_symbols or None
        future = int(self._opts.max_future_skew_s * 1e6)
        trades, trade_raw, bad = validate_trades(
            parsed.trades, parsed.trade_raw, known_symbols=known, now_us=now,
            max_future_us=future, source=f"{self._source.exchange}.ws",
        )  # fmt: skip
        rejects.extend(_typed(bad, "trade"))
        quotes, quote_raw, bad = validate_quotes(
            parsed.quotes, parsed.quote_raw, known_symbols=known, now_us=now,
            max_future_us=future, source=f"{self._source.exchange}.ws",
        )  # fmt: skip
        rejects.extend(_typed(bad, "quote"))
        trades = self._dedup_and_observe(trades, trade_raw)
        quotes, _, dupes = self._dedup_quotes.filter(quotes, quote_raw, "update_id")
        self.stats.duplicates += dupes
        if self._governor is not None:
            before = (trades.num_rows, quotes.num_rows)
            trades, quotes = self._governor.shed(trades, quotes)
            self.stats.trades_shed += before[0] - trades.num_rows
            self.stats.quotes_shed += before[1] - quotes.num_rows
        await self._write(OutputBatch(trades=trades, quotes=quotes, rejects=rejects))

    async def _write(self, out: OutputBatch) -> None:
        await self._out.write(out)
        # Counted once the output has them: the stats say what was delivered.
        self.stats.trades += out.trades.num_rows if out.trades is not None else 0
        self.stats.quotes += out.quotes.num_rows if out.quotes is not None else 0
        for r in out.rejects:
            self.stats.rejects[r.reason.value] = self.stats.rejects.get(r.reason.value, 0) + 1

    def _dedup_and_observe(self, trades: pa.RecordBatch, raw: list[bytes]) -> pa.RecordBatch:
        trades, _, dupes = self._dedup_trades.filter(trades, raw, "trade_id")
        self.stats.duplicates += dupes
        self._gaps.observe(trades)
        return trades

    async def _repair_due_gaps(self) -> None:
        interval = max(min(self._opts.gap_grace_s / 4, 0.5), 0.01)
        while True:
            await asyncio.sleep(interval)  # a periodic check, not a synchronisation
            for gap in self._gaps.due():
                self._start_repair(gap)

    async def _govern(self) -> None:
        """Sample the degradation pressures; backfill shed trades once recovered."""
        governor = self._governor
        if governor is None:
            return
        while True:
            await asyncio.sleep(self._sample_interval_s)  # a periodic sample
            # The rate that turns lag into seconds is what the exchange offers, shed
            # records included: the delivered rate falls while shedding, which would
            # inflate the lag in seconds and shed ever more.
            s = self.stats
            offered = s.trades + s.quotes + s.trades_shed + s.quotes_shed
            await asyncio.to_thread(governor.sample, offered)
            self._backfill_shed(governor.backfill_due())

    def _backfill_shed(self, ranges: list[ShedRange]) -> None:
        now = self._clock_us()
        for r in ranges:
            gap = GapRange(self._source.exchange, r.symbol, r.first_id, r.last_id, now)
            self._start_repair(gap, shed=True)

    def _start_repair(self, gap: GapRange, *, shed: bool = False) -> None:
        self.stats.gaps_detected += 1
        task = asyncio.create_task(self._repair(gap, shed), name=f"repair-{gap.symbol}")
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _repair(self, gap: GapRange, shed: bool = False) -> None:
        with bind_correlation(gap=f"{gap.symbol}:{gap.first_missing_id}-{gap.last_missing_id}"):
            trades, record = await self._repairer.repair(gap)
            if shed:
                # These ids were received (and deduplicated) before being shed, so
                # the dedup state already holds them: write them as fetched.
                note = "shed under degradation; backfilled from the exchange's history"
                record["reason"] = note + (f"; {record['reason']}" if record["reason"] else "")
                self.stats.trades_backfilled += trades.num_rows
            else:
                trades = self._dedup_and_observe(trades, [b""] * trades.num_rows)
            rejects = _typed(self._source.take_rejects(), "trade")
            await self._write(OutputBatch(trades=trades, rejects=rejects, gaps=[record]))
            self.stats.trades_repaired += trades.num_rows
            if record["status"] == "repaired":
                self.stats.gaps_repaired += 1
            else:
                self.stats.gaps_unrepairable += 1
            log.info("gap resolved", **{k: v for k, v in record.items() if k != "exchange"})

    async def _finish(self) -> None:
        # Gaps still inside their grace period cannot be filled by the stream any more.
        for gap in self._gaps.due(force=True):
            self._start_repair(gap)
        if self._governor is not None:
            self._backfill_shed(self._governor.backfill_due(force=True))
        try:
            await asyncio.wait_for(self._settle(), timeout=self._opts.stop_repair_timeout_s)
        except (TimeoutError, TransientError) as exc:
            for task in list(self._repairs):
                task.cancel()
            await asyncio.gather(*list(self._repairs), return_exceptions=True)
            log.warning(
                "the exchange did not answer at stop; the gaps still open are repaired "
                "by the next start, which resumes where the log ends",
                error=repr(exc) if not isinstance(exc, TimeoutError) else "timed out",
                timeout_s=self._opts.stop_repair_timeout_s,
            )
        await self._out.flush()

    async def _settle(self) -> None:
        """Finish the repairs under way, then fetch what was printed after the last
        trade received per symbol."""
        while self._repairs:
            await asyncio.gather(*list(self._repairs))
        if self._opts.tail_check:
            await self._fetch_tails()

    async def _fetch_tails(self) -> None:
        until = self._stopped_at_us or self._clock_us()
        for (_, symbol), last_id in sorted(self._gaps.tails().items()):
            trades = await self._repairer.fetch_after(symbol, last_id, until_us=until)
            trades = self._dedup_and_observe(trades, [b""] * trades.num_rows)
            rejects = _typed(self._source.take_rejects(), "trade")
            await self._write(OutputBatch(trades=trades, rejects=rejects))
            self.stats.trades_after_tail += trades.num_rows
            if trades.num_rows:
                log.info(
                    "fetched trades after the last received", symbol=symbol, count=trades.num_rows
                )


def _typed(rejects: list[Reject], data_type: str) -> list[Reject]:
    """``rejects`` marked as meant to be ``data_type`` records (for dead-letter routing)."""
    return [r if r.data_type else replace(r, data_type=data_type) for r in rejects]

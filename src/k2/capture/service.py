"""Capture as service functions: what ``k2 capture``, ``k2 ingest`` and ``k2 demo`` call.

Builds the Binance source and the pipeline from settings, runs them, stops cleanly on
SIGINT/SIGTERM or after ``max_seconds``, and returns the run's statistics.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from k2.capture.governor import Governor
from k2.capture.log_output import LogOutput
from k2.capture.ndjson import NdjsonWriter
from k2.capture.output import CaptureOutput
from k2.capture.pipeline import CaptureOptions, CapturePipeline, CaptureStats
from k2.capture.resume import ResumePoint, last_trade_ids
from k2.config import Settings
from k2.log.base import Log
from k2.log.factory import open_log, topic_layout
from k2.ops.breaker import BreakerRegistry, CircuitBreaker
from k2.ops.degradation import DegradationManager, process_memory_fraction
from k2.ops.locks import StageLock
from k2.ops.log import get_logger
from k2.ops.metrics import Metrics
from k2.ops.observe import breaker_registry, stage_metrics
from k2.ops.status_files import run_dir, status_path, write_status
from k2.sources.binance.source import BinanceSource

log = get_logger(__name__)


@dataclass(frozen=True)
class CaptureResult:
    """What a capture run did: pipeline counts plus the WebSocket client's counts."""

    stats: CaptureStats
    stream: dict[str, Any]
    seconds: float


def options_from(settings: Settings) -> CaptureOptions:
    """The quality-stage options held in ``settings.capture``."""
    c = settings.capture
    return CaptureOptions(
        dedup_window_s=c.dedup_window_s,
        dedup_max_entries=c.dedup_max_entries,
        gap_grace_s=c.gap_grace_s,
        max_future_skew_s=c.max_future_skew_s,
        stop_repair_timeout_s=c.stop_repair_timeout_s,
    )


def governor_from(settings: Settings, log_: Log) -> Governor | None:
    """The degradation governor of ``settings.degradation`` (``None`` if disabled),
    measuring the lake sink's lag on ``log_``."""
    if not settings.degradation.enabled:
        return None
    layout = topic_layout(settings)
    topics = [layout.data_topic("trade"), layout.data_topic("quote")]
    group = settings.lake.sink_group
    limit = settings.degradation.memory_limit_bytes

    def lag() -> tuple[int, bool]:
        behind = held = 0
        for topic in topics:
            behind += sum(log_.lag(group, topic).values())
            ends, begins = log_.end_offsets(topic), log_.begin_offsets(topic)
            held += sum(e - begins.get(p, 0) for p, e in ends.items())
        # Lag equal to everything held: the group never committed (no sink has run).
        return behind, behind < held

    return Governor(
        DegradationManager(settings.degradation),
        lag=lag,
        memory=lambda: process_memory_fraction(limit),
    )


def _export(
    metrics: Metrics, source: BinanceSource, pipeline: CapturePipeline, governor: Governor | None
) -> None:
    """Mirror the capture's counters into ``metrics`` at every scrape."""

    def sync() -> None:
        metrics.sync_capture(pipeline.stats)
        if source.stream is not None:
            metrics.sync_stream(source.stream)
        if governor is not None:
            metrics.degradation("ingest", int(governor.manager.level))

    metrics.on_scrape(sync)
    if governor is not None:
        governor.metrics = metrics


def source_from(settings: Settings, breaker: CircuitBreaker | None = None) -> BinanceSource:
    """A Binance source for ``settings.capture.symbols``/``streams`` at the set URLs,
    its REST and WebSocket calls guarded by ``breaker`` if given."""
    return BinanceSource(
        settings.capture.symbols,
        settings.capture.streams,
        ws_url=settings.binance.ws_url,
        rest_url=settings.binance.rest_url,
        micros=settings.binance.micros,
        max_streams_per_connection=settings.binance.max_streams_per_connection,
        max_connection_age_s=settings.binance.max_connection_age_s,
        batch_max_frames=settings.capture.batch_max_frames,
        batch_max_wait_s=settings.capture.batch_max_wait_s,
        breaker=breaker,
    )


async def capture(
    settings: Settings,
    out: Path | None,
    *,
    max_seconds: float | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> CaptureResult:
    """Capture to NDJSON at ``out`` (stdout if ``None``) until stopped.

    Stops after ``max_seconds``, when ``stop`` is set, or on SIGINT/SIGTERM (if
    ``handle_signals``); every received frame is processed and flushed before return.
    """
    with NdjsonWriter(out) as writer:
        return await run(
            settings, writer, max_seconds=max_seconds, stop=stop, handle_signals=handle_signals
        )


async def ingest(
    settings: Settings,
    *,
    max_seconds: float | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> CaptureResult:
    """Capture into the log of ``settings.log``: records to their topics, rejects to the
    dead-letter topics, gaps to the gaps topic. Stops as :func:`capture` does.

    With the embedded log, one ingest at a time may write it (a lock in the run
    directory; a successor waits for its predecessor to stop). The ingest resumes
    after the last trade per symbol the log holds, and writes its status for
    ``k2 status`` every ``ops.status_interval_s``.
    """
    lock = StageLock(run_dir(settings) / "ingest.lock")
    if settings.log.backend == "embedded":
        await lock.acquire(timeout_s=settings.ops.stop_timeout_s * 2)
    metrics, server = stage_metrics(settings, "ingest", settings.ops.ingest_metrics_port)
    breakers = breaker_registry(settings, metrics)
    log = open_log(settings)
    try:
        layout = topic_layout(settings)
        resume = await asyncio.to_thread(last_trade_ids, log, layout, settings.capture.symbols)
        output = LogOutput(log, layout, breaker=breakers.get("log"))
        probe_log = open_log(settings)  # its own handle: sampled from another thread
        try:
            return await run(
                settings, output, max_seconds=max_seconds, stop=stop,
                handle_signals=handle_signals, resume=resume,
                status=status_path(settings, "ingest"),
                governor=governor_from(settings, probe_log), metrics=metrics,
                breakers=breakers, metrics_url=server.url if server else None,
            )  # fmt: skip
        finally:
            probe_log.close()
    finally:
        log.close()
        lock.release()
        if server is not None:
            server.close()


async def run(
    settings: Settings,
    output: CaptureOutput,
    *,
    max_seconds: float | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    resume: Mapping[str, ResumePoint] | None = None,
    status: Path | None = None,
    governor: Governor | None = None,
    metrics: Metrics | None = None,
    breakers: BreakerRegistry | None = None,
    metrics_url: str | None = None,
) -> CaptureResult:
    """Run the capture pipeline from the configured source into ``output``, resuming
    after what ``resume`` says was delivered (symbol → :class:`ResumePoint`) if given."""
    loop = asyncio.get_running_loop()
    source = source_from(settings, breakers.get("exchange") if breakers is not None else None)
    started = loop.time()
    pipeline = CapturePipeline(
        source, output, options_from(settings), resume=resume, governor=governor,
        sample_interval_s=settings.ops.status_interval_s,
    )  # fmt: skip
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, pipeline.request_stop)
                installed.append(sig)
    watcher = asyncio.create_task(_forward(stop, pipeline)) if stop is not None else None
    if metrics is not None:
        _export(metrics, source, pipeline, governor)
    extra = {"breakers": breakers.snapshot if breakers is not None else list,
             "metrics_url": lambda: metrics_url}  # fmt: skip
    reporter = (
        asyncio.create_task(_report(status, settings, source, pipeline, governor, extra))
        if status is not None
        else None
    )
    try:
        stats = await pipeline.run(max_seconds=max_seconds)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for task in (watcher, reporter):
            if task is not None:
                task.cancel()
        if status is not None:
            _write_ingest_status(status, settings, source, pipeline, "stopped", governor, extra)
    stream = source.stream
    return CaptureResult(
        stats=stats,
        stream=asdict(stream.stats) if stream is not None else {},
        seconds=loop.time() - started,
    )


def _write_ingest_status(
    path: Path,
    settings: Settings,
    source: BinanceSource,
    pipeline: CapturePipeline,
    phase: str,
    governor: Governor | None = None,
    extra: Mapping[str, Callable[[], object]] | None = None,
) -> None:
    stream = source.stream
    write_status(
        path,
        {
            "stage": "ingest",
            "phase": phase if stream is not None or phase == "stopped" else "connecting",
            "exchange": source.exchange,
            "ws_url": settings.binance.ws_url,
            "connections": stream.connections if stream is not None else 0,
            "stream": asdict(stream.stats) if stream is not None else {},
            "stats": pipeline.stats.as_dict(),
            "degradation": governor.describe() if governor is not None else {},
            **{key: get() for key, get in (extra or {}).items()},
        },
    )


async def _report(
    path: Path,
    settings: Settings,
    source: BinanceSource,
    pipeline: CapturePipeline,
    governor: Governor | None,
    extra: Mapping[str, Callable[[], object]],
) -> None:
    """Rewrite the ingest's status file every ``ops.status_interval_s``."""
    while True:
        try:
            _write_ingest_status(path, settings, source, pipeline, "streaming", governor, extra)
        except OSError as exc:  # a full disk must not stop the capture; say so
            log.warning("cannot write the status file", path=str(path), error=str(exc))
        await asyncio.sleep(settings.ops.status_interval_s)  # a periodic report


async def _forward(stop: asyncio.Event, pipeline: CapturePipeline) -> None:
    await stop.wait()
    pipeline.request_stop()

"""End-to-end WebSocket capture from the simulator: messages/s into canonical records.

The simulator runs in its own process (``k2 simulate``, synthetic market, 5 symbols,
trades and bookTicker) at a rate above what the capture can take; the capture runs
here through the whole quality stage (parse, validate, dedup, gap detection) into a
counting output, so the rate measured is the capture's own ceiling on this machine.
A second figure writes NDJSON to a file, as ``k2 capture --out`` does.

No peer runs here: cryptofeed's share of this path, its Binance parsing, is measured
against K2's parser in :mod:`benchmarks.bench_decode`; how the capture's cost grows
with symbols is in :mod:`benchmarks.bench_scaling`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.harness import Result, dataset_result
from k2.capture.ndjson import NdjsonWriter
from k2.capture.output import OutputBatch
from k2.capture.pipeline import CaptureOptions, CapturePipeline
from k2.ops.log import configure_logging
from k2.sources.binance.source import BinanceSource
from tests.ports import free_port

SIM_RATE = 150_000  # events/s offered by the simulator (above the capture's ceiling)
SECONDS = 6.0
WARMUP_S = 1.0


class CountingOutput:
    """Counts records and when they arrived; keeps nothing."""

    def __init__(self) -> None:
        self.records = 0
        self.first: float | None = None
        self.last = 0.0
        self.after_warmup = 0

    async def write(self, batch: OutputBatch) -> None:
        rows = sum(b.num_rows for b in (batch.trades, batch.quotes) if b is not None)
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if now - self.first >= WARMUP_S:
            self.after_warmup += rows
        self.records += rows
        self.last = now

    async def flush(self) -> None:
        pass

    def rate(self) -> float:
        assert self.first is not None, "no records captured"
        return self.after_warmup / max(self.last - self.first - WARMUP_S, 1e-9)


class FileOutput(CountingOutput):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._writer = NdjsonWriter(path)

    async def write(self, batch: OutputBatch) -> None:
        await self._writer.write(batch)
        await super().write(batch)

    async def flush(self) -> None:
        self._writer.close()


def _start_simulator(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "k2", "simulate", "--port", str(port),
           "--rate", str(SIM_RATE), "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v3/ping", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError("simulator exited") from None
            time.sleep(0.1)  # polling a subprocess's readiness, not synchronising tests
    proc.kill()
    raise RuntimeError("simulator did not start")


async def _capture_once(port: int, output: CountingOutput, seconds: float) -> float:
    source = BinanceSource(
        ["BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT"],
        ws_url=f"ws://127.0.0.1:{port}",
        rest_url=f"http://127.0.0.1:{port}",
        batch_max_frames=5000,
    )
    pipeline = CapturePipeline(source, output, CaptureOptions(tail_check=False))
    await pipeline.run(max_seconds=seconds)
    return output.rate()


def run(runs: int = 5, *, seconds: float = SECONDS) -> list[Result]:
    """Capture rate into a counting output and into NDJSON, ``runs`` runs of ``seconds``."""
    configure_logging("console", "ERROR")
    port = free_port()
    sim = _start_simulator(port)
    try:
        counted = [asyncio.run(_capture_once(port, CountingOutput(), seconds)) for _ in range(runs)]
        with tempfile.TemporaryDirectory() as tmp:
            to_file = []
            for i in range(runs):
                path = Path(tmp) / f"run{i}.ndjson"
                to_file.append(asyncio.run(_capture_once(port, FileOutput(path), seconds)))
                os.unlink(path)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    note = (
        f"capture for {seconds:g} s per run, first {WARMUP_S:g} s excluded; parse + "
        "validate + dedup + gap detection."
    )
    return [
        dataset_result(
            f"the simulator's synthetic market (`k2 simulate`, 5 symbols, trade + bookTicker) "
            f"offering {SIM_RATE:,} events/s over a local WebSocket, in its own process. "
            "Peer: cryptofeed's parsing, in the decode block above."
        ),
        Result(
            "WebSocket capture from the simulator",
            "msgs/s",
            counted,
            goal=50_000,
            notes=note + " Output counts records only.",
        ),
        Result(
            "… and writing NDJSON (`k2 capture --out`)",
            "msgs/s",
            to_file,
            notes="Same, writing every record as NDJSON to a file.",
        ),
    ]

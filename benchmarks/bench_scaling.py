"""How K2's costs grow: capture as symbols grow, the sink and the queries as the data
grows and as symbols grow.

- **Capture vs symbols**: the real BTCUSDT trade/bookTicker frames of tests/data,
  re-dealt round-robin over N symbols (each symbol's trade ids and quote update ids
  contiguous, so nothing is a duplicate or a gap), parsed by K2's Binance parser and
  run through the capture's quality stages (:class:`~k2.capture.pipeline.
  CapturePipeline`: validate, dedup, gap detection) into a counting output, in
  process, batches of 5,000 frames. No network: the WebSocket's share is in the
  capture block. Rate: frames over the pipeline's wall time.
- **Sink vs trades, vs symbols**: :mod:`benchmarks.bench_sink`'s log → lake run
  (realistic trades pre-filled into an embedded log, one ``LakeSink`` draining it into
  a fresh lake): records/s and bytes per trade on disk, at several sizes (10 symbols)
  and at one size over several symbol counts.
- **Queries vs trades, vs symbols**: the query benchmark's synthetic table
  (:mod:`benchmarks.query_data`: 30 days, Zipf activity, K2 lake only) at several sizes
  (100 symbols) and at one size over several symbol counts; K2's engine (answer cache
  off) and the plain DuckDB scan of the same Parquet files take turns on the same
  random questions: last 100 trades of a symbol, 1-minute bars of a symbol-day, and a
  15-minute window of a symbol at a random minute (from the lake; the live tail's
  share is in the query block).

Every table shows the growth against its first row: per-unit cost for throughputs
(above 1: each frame or record costs more than at the first row), p50 latency for
queries. Sizes above :attr:`Plan.repeat_up_to` trades are run once (no warm-up).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa

from benchmarks import bench_decode, bench_sink
from benchmarks.bench_query import DUCK, K2, WINDOW_LIMIT, DuckScan, Question, measure
from benchmarks.harness import Result, dataset_result, fmt, footer, is_dataset, repeat
from benchmarks.query_data import DAY_US, DAYS, Dataset, ensure_dataset, symbols_for
from k2.capture.output import OutputBatch
from k2.capture.pipeline import CaptureOptions, CapturePipeline
from k2.config import LakeSettings, QuerySettings
from k2.lake.catalog import catalog_from
from k2.quality.rejects import Reject
from k2.records import REFERENCE
from k2.sources.base import ParsedBatch
from k2.sources.binance.parse import FrameParser

CAPTURE, SINK, QUERY = "capture", "sink", "query"
LAST, BARS, WINDOW = "last 100 trades", "1-minute bars, symbol-day", "15-minute window"
QUESTIONS = (LAST, BARS, WINDOW)
FRAME_BATCH = 5000
FIRST_TRADE_ID = 1_000_000
#: The symbol count of the size axes (the sink's 10, the query table's 100).
SINK_SYMBOLS, QUERY_SYMBOLS = 10, 100


@dataclass(frozen=True)
class Plan:
    """The points measured (``python -m benchmarks.run`` picks one per mode)."""

    capture_symbols: tuple[int, ...] = (5, 100, 1000)
    capture_frames: int = 300_000
    sink_trades: tuple[int, ...] = (1_000_000, 10_000_000, 100_000_000)
    query_trades: tuple[int, ...] = (1_000_000, 10_000_000, 100_000_000)
    #: The symbol axes (sink and queries), at :attr:`symbols_trades` trades.
    symbols: tuple[int, ...] = (5, 100, 1000)
    symbols_trades: int = 1_000_000
    #: Questions per type and dataset (after the warm-up), and the time cap per type.
    questions: int = 200
    budget_s: float = 120.0
    #: Larger sink runs are measured once, without a warm-up.
    repeat_up_to: int = 1_000_000
    axes: tuple[str, ...] = field(default=(CAPTURE, SINK, QUERY))


def run(runs: int = 5, *, plan: Plan | None = None) -> list[Result]:
    """Every axis of ``plan`` (default: the full plan)."""
    plan = plan or Plan()
    results: list[Result] = []
    if CAPTURE in plan.axes:
        results += capture_vs_symbols(plan, runs)
    if SINK in plan.axes:
        results += sink_scaling(plan, runs)
    if QUERY in plan.axes:
        results += query_scaling(plan)
    return results


# --- capture -----------------------------------------------------------------------


def synthetic_frames(count: int, total: int) -> tuple[list[bytes], list[int]]:
    """``total`` real trade/bookTicker frames re-dealt over ``count`` symbols (module
    doc), and their receive times."""
    frames, received, _ = bench_decode.frames(total)
    names = symbols_for(count)
    decoded = {f: msgspec.json.decode(f)["data"] for f in set(frames)}
    out: list[bytes] = []
    trades = quotes = 0
    encode = msgspec.json.encode
    for frame in frames:
        data = dict(decoded[frame])
        if "e" in data:  # a trade
            symbol = names[trades % count]
            data["s"], data["t"] = symbol, FIRST_TRADE_ID + trades // count
            stream = f"{symbol.lower()}@trade"
            trades += 1
        else:
            symbol = names[quotes % count]
            data["s"], data["u"] = symbol, 1 + quotes // count
            stream = f"{symbol.lower()}@bookTicker"
            quotes += 1
        out.append(encode({"stream": stream, "data": data}))
    return out, received


class FrameSource:
    """A :class:`~k2.sources.base.Source` over frames held in memory: each batch is
    parsed as the Binance source parses what its WebSocket received."""

    exchange = "binance"

    def __init__(self, frames: list[bytes], received: list[int], symbols: frozenset[str]):
        self._frames, self._received = frames, received
        self._symbols = symbols
        self._parser = FrameParser()

    @property
    def known_symbols(self) -> frozenset[str]:
        return self._symbols

    @property
    def reference(self) -> pa.RecordBatch:
        return REFERENCE.arrow_schema().empty_table().to_batches()[0]

    async def start(self) -> None:
        pass

    async def batches(self) -> AsyncIterator[ParsedBatch]:
        for i in range(0, len(self._frames), FRAME_BATCH):
            j = i + FRAME_BATCH
            yield self._parser.parse(self._frames[i:j], self._received[i:j])

    async def fetch_trades(self, symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
        raise RuntimeError(f"the frames have no gap, yet {symbol} from {from_id} was asked")

    def take_rejects(self) -> list[Reject]:
        return []

    async def stop(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class _Counter:
    """A capture output that counts records and keeps nothing."""

    def __init__(self) -> None:
        self.records = 0

    async def write(self, batch: OutputBatch) -> None:
        self.records += sum(b.num_rows for b in (batch.trades, batch.quotes) if b is not None)

    async def flush(self) -> None:
        pass


def capture_vs_symbols(plan: Plan, runs: int) -> list[Result]:
    """Frames/s through parse + quality stages at each symbol count of ``plan``."""
    results = [
        dataset_result(
            f"capture: {plan.capture_frames:,} real BTCUSDT trade/bookTicker frames "
            f"re-dealt over {', '.join(f'{n:,}' for n in plan.capture_symbols)} symbols; "
            f"in-process parse + validate + dedup + gap detection, batches of {FRAME_BATCH:,}."
        )
    ]
    for count in plan.capture_symbols:
        frames, received = synthetic_frames(count, plan.capture_frames)
        names = frozenset(symbols_for(count))
        results.append(
            Result(
                f"capture, {count:,} symbols",
                "frames/s",
                repeat(lambda: _capture_once(frames, received, names), runs),  # noqa: B023
                extra={"axis": CAPTURE, "x": str(count)},
            )
        )
    return results


def _capture_once(frames: list[bytes], received: list[int], names: frozenset[str]) -> float:
    """One pipeline run over ``frames``: frames/s."""
    output = _Counter()
    pipeline = CapturePipeline(
        FrameSource(frames, received, names), output, CaptureOptions(tail_check=False)
    )
    began = time.perf_counter()
    stats = asyncio.run(pipeline.run())
    seconds = time.perf_counter() - began
    if output.records != len(frames) or stats.gaps_detected or stats.duplicates:
        raise RuntimeError(f"capture of {len(names)} symbols: {stats.as_dict()}")
    return len(frames) / seconds


# --- sink --------------------------------------------------------------------------


def sink_scaling(plan: Plan, runs: int) -> list[Result]:
    """Sink records/s and bytes/trade at each size (10 symbols) and symbol count."""
    points = [(n, SINK_SYMBOLS, "trades") for n in plan.sink_trades]
    points += [(plan.symbols_trades, s, "symbols") for s in plan.symbols]
    results = [
        dataset_result(
            f"sink: realistic trades (benchmarks/datasets.py) at "
            f"{', '.join(f'{n:,}' for n in plan.sink_trades)} trades over {SINK_SYMBOLS} "
            f"symbols, and {plan.symbols_trades:,} trades over "
            f"{', '.join(f'{n:,}' for n in plan.symbols)} symbols; pre-filled embedded log, a "
            "fresh lake per run."
        )
    ]
    for total, count, axis in points:
        rates, size = _sink_point(total, count, runs if total <= plan.repeat_up_to else 0)
        results.append(
            Result(
                f"sink, {total:,} trades, {count:,} symbols",
                "records/s",
                rates,
                extra={
                    "axis": f"{SINK}-{axis}",
                    "x": str(total if axis == "trades" else count),
                    "bytes_per_trade": f"{size:.1f}",
                },
            )
        )
    return results


def _sink_point(total: int, count: int, runs: int) -> tuple[list[float], float]:
    """Sink records/s over ``runs`` runs after a warm-up (``0``: one run, no warm-up)
    of ``total`` trades over ``count`` symbols, and the bytes/trade of the last."""
    sizes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="k2-bench-scale-sink-") as tmp:
        root = Path(tmp)
        log = bench_sink.fill_log(root / "log", total, symbols_for(count))
        counter = [0]

        def once() -> float:
            counter[0] += 1
            lake = root / f"lake-{counter[0]}"
            rate, size = bench_sink.sink_once(log, lake, f"scale-{counter[0]}", total)
            sizes.append(size)
            return rate

        try:
            rates = repeat(once, runs) if runs else [once()]
        finally:
            log.close()
    return rates, sizes[-1]


# --- queries -----------------------------------------------------------------------


def _questions(dataset: Dataset, count: int, seed: int) -> list[tuple[Question, Question]]:
    """``count`` (day question, 15-minute question) pairs on uniform random symbols."""
    rng = np.random.default_rng(seed)
    start = int(dataset.manifest["start_us"])
    out = []
    for _ in range(count):
        symbol = dataset.symbols[int(rng.integers(len(dataset.symbols)))]
        day = datetime.fromtimestamp((start + int(rng.integers(DAYS)) * DAY_US) / 1e6, tz=UTC)
        minute = day + timedelta(minutes=int(rng.integers(1440 - 15)))
        out.append(
            (
                Question(symbol, day, day + timedelta(days=1)),
                Question(symbol, minute, minute + timedelta(minutes=15)),
            )
        )
    return out


def query_point(dataset: Dataset, plan: Plan, axis: str, x: int) -> list[Result]:
    """K2 and the plain scan on the three questions over ``dataset``."""
    from k2.query.engine import QueryEngine

    engine = QueryEngine(
        catalog_from(LakeSettings(), dataset.root), settings=QuerySettings(), cache_rows=0
    )
    duck = DuckScan(dataset.data_glob)
    pairs = _questions(dataset, plan.questions + 20, int(dataset.manifest["seed"]) + x)
    days = [p[0] for p in pairs]
    windows = [p[1] for p in pairs]
    limit = WINDOW_LIMIT
    asks: dict[str, tuple[list[Question], dict[str, Callable[[Question], pa.Table]]]] = {
        LAST: (
            days,
            {
                K2: lambda q: engine.trades([q.symbol], order="desc", limit=100).table,
                DUCK: lambda q: duck.last(q.symbol),
            },
        ),
        BARS: (
            days,
            {
                K2: lambda q: engine.bars([q.symbol], start=q.start, end=q.end).table,
                DUCK: lambda q: duck.bars(q.symbol, q.start),
            },
        ),
        WINDOW: (
            windows,
            {
                K2: lambda q: (
                    engine.trades([q.symbol], start=q.start, end=q.end, limit=limit).table
                ),
                DUCK: lambda q: duck.window(q.symbol, q.start, q.end),
            },
        ),
    }
    results = []
    try:
        for question, (asked, systems) in asks.items():
            for r in measure(question, asked, systems, plan.questions, plan.budget_s):
                r.extra.update({"axis": f"{QUERY}-{axis}", "x": str(x)})
                results.append(r)
    finally:
        engine.close()
        duck.close()
    return results


def query_scaling(plan: Plan) -> list[Result]:
    """Latencies at each size (100 symbols) and each symbol count of ``plan``."""
    results: list[Result] = []
    built: list[str] = []
    points = [(n, QUERY_SYMBOLS, "trades") for n in plan.query_trades]
    points += [(plan.symbols_trades, s, "symbols") for s in plan.symbols]
    measured: dict[tuple[int, int], list[Result]] = {}
    for total, count, axis in points:
        x = total if axis == "trades" else count
        if (total, count) in measured:  # the point both axes share: measured once
            for r in measured[total, count]:
                extra = {**r.extra, "axis": f"{QUERY}-{axis}", "x": str(x)}
                results.append(replace(r, extra=extra))
            continue
        dataset = ensure_dataset(total, symbols=count, arctic=False)
        layout = dataset.manifest["layout"]
        built.append(
            f"{total:,} trades × {count:,} symbols: {layout['files']} files, "
            f"{layout['bytes_per_trade']} B/trade"
        )
        measured[total, count] = query_point(dataset, plan, axis, x)
        results += measured[total, count]
    results.insert(
        0,
        dataset_result(
            f"queries: the query block's synthetic table (30 days, Zipf activity; K2 lake "
            f"only), {'; '.join(built)}. {plan.questions} questions per type (at most "
            f"{plan.budget_s:.0f} s), uniform random symbols and days."
        ),
    )
    return results


# --- the report --------------------------------------------------------------------


def _growth(value: float, first: float) -> str:
    return f"{value / first:.2f}×" if first > 0 else "–"


def _throughput_table(results: list[Result], axis: str, label: str, size: bool) -> list[str]:
    rows = [r for r in results if r.extra.get("axis") == axis]
    if not rows:
        return []
    first = rows[0]
    head = f"| {label} | median | min – max | runs |"
    rule = "|---:|---:|---:|---:|"
    if size:
        head += " bytes/trade |"
        rule += "---:|"
    head += f" cost per {'record' if size else 'frame'} vs first row |"
    rule += "---:|"
    lines = [head, rule]
    for r in rows:
        low, high = r.spread
        cells = f"| {int(r.extra['x']):,} | {fmt(r.median)} {r.unit} | {fmt(low)} – {fmt(high)} "
        cells += f"| {len(r.runs)} |"
        if size:
            cells += f" {r.extra['bytes_per_trade']} |"
        lines.append(cells + f" {_growth(first.median, r.median)} |")
    return lines


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _query_table(results: list[Result], axis: str, label: str) -> list[str]:
    by = {
        (r.extra["question"], r.extra["system"], r.extra["x"]): r
        for r in results
        if r.extra.get("axis") == axis
    }
    xs = list(dict.fromkeys(x for (_, _, x) in by))
    if not xs:
        return []
    lines = [
        f"| question | {label} | K2 p50 (p25 – p75) | K2 p99 | K2 p50 vs first row "
        "| DuckDB scan p50 | scan p50 vs first row | K2 vs scan (p50) | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for question in QUESTIONS:
        k2_first = _p(by[question, K2, xs[0]].runs, 50)
        duck_first = _p(by[question, DUCK, xs[0]].runs, 50)
        for x in xs:
            k2, duck = by[question, K2, x].runs, by[question, DUCK, x].runs
            k2_p50, duck_p50 = _p(k2, 50), _p(duck, 50)
            ratio = duck_p50 / k2_p50
            versus = f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"
            lines.append(
                f"| {question} | {int(x):,} | {k2_p50:.1f} ms ({_p(k2, 25):.1f} – "
                f"{_p(k2, 75):.1f}) | {_p(k2, 99):.1f} ms | {_growth(k2_p50, k2_first)} "
                f"| {duck_p50:.1f} ms | {_growth(duck_p50, duck_first)} | {versus} | {len(k2)} |"
            )
    return lines


def render(results: list[Result], command: str) -> str:
    """The scaling tables of ``results`` (from :func:`run`) as Markdown."""
    data = [f"- {r.notes}" for r in results if is_dataset(r)]
    sections = [
        ("Capture vs symbols", _throughput_table(results, CAPTURE, "symbols", False)),
        (
            f"Sink vs trades ({SINK_SYMBOLS} symbols)",
            _throughput_table(results, f"{SINK}-trades", "trades", True),
        ),
        ("Sink vs symbols", _throughput_table(results, f"{SINK}-symbols", "symbols", True)),
        (
            f"Queries vs trades ({QUERY_SYMBOLS} symbols)",
            _query_table(results, f"{QUERY}-trades", "trades"),
        ),
        ("Queries vs symbols", _query_table(results, f"{QUERY}-symbols", "symbols")),
    ]
    out = ["Datasets:", *data, ""]
    for title, lines in sections:
        if lines:
            out += [f"**{title}**", "", *lines, ""]
    out += [footer(command), ""]
    return "\n".join(out)


if __name__ == "__main__":
    small = Plan(
        capture_frames=50_000,
        sink_trades=(200_000,),
        query_trades=(200_000,),
        symbols_trades=200_000,
        questions=30,
    )
    print(render(run(runs=1, plan=small), "python -m benchmarks.bench_scaling"))

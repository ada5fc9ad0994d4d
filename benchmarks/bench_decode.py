"""Decode + normalise throughput: Binance frames → canonical Arrow batches, one core,
against cryptofeed's Binance parsing of the same frames.

Input: the real BTCUSDT capture (tests/data), trade and bookTicker frames only (the
depth frames K2 does not capture are left out so every frame yields a record),
repeated to ``total`` frames and parsed in batches of ``BATCH`` as the capture does.

The peer: cryptofeed (:mod:`benchmarks.cryptofeed_peer`, in its own virtual
environment) handles the same frames one at a time through ``message_handler``. Its
Binance trades channel is ``aggTrade``, not ``trade``, so each trade frame is rewritten
to the aggTrade form with the same values (aggregate id = first = last = the trade id);
the frames are handed over as ``str``, as its WebSocket client receives them. It builds
Python objects with ``Decimal`` prices; K2 builds Arrow columns with exact decimals.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
import pyarrow as pa

from benchmarks.harness import Result, dataset_result, repeat
from k2.sources.binance.parse import FrameParser
from tests.captures import hft_frames

TOTAL = 300_000
BATCH = 5000
NAME = "decode + normalise (frames → Arrow), 1 core"
PEER = "cryptofeed Binance message_handler (frames → Trade/Ticker objects), 1 core"
#: The cryptofeed that ``make bench`` installs into :data:`PEER_VENV`.
CRYPTOFEED_VERSION = "2.4.1"
ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".bench" / "peers"
#: Another interpreter with cryptofeed installed, instead of :data:`PEER_VENV`'s.
PEER_PYTHON_ENV = "K2_BENCH_PEER_PYTHON"


def frames(total: int) -> tuple[list[bytes], list[int], int]:
    """``total`` trade/bookTicker frames of the real capture, their receive times, and
    how many distinct frames they repeat."""
    raw, received = hft_frames()
    keep = [i for i, f in enumerate(raw) if b"@depth" not in f[:40]]
    base = [raw[i] for i in keep]
    recv = [received[i] for i in keep]
    reps = total // len(base) + 1
    return (base * reps)[:total], (recv * reps)[:total], len(base)


def run(runs: int = 5, *, total: int = TOTAL) -> list[Result]:
    """K2's parser and cryptofeed's on ``total`` frames, ``runs`` runs each."""
    previous = pa.cpu_count()
    pa.set_cpu_count(1)  # "on one core": no Arrow thread pool help
    try:
        return _run(runs, total)
    finally:
        pa.set_cpu_count(previous)  # the groups after this one use every core


def _run(runs: int, total: int) -> list[Result]:
    data, times, distinct = frames(total)
    parser = FrameParser()

    def measure() -> float:
        start = time.perf_counter()
        rows = 0
        for i in range(0, total, BATCH):
            out = parser.parse(data[i : i + BATCH], times[i : i + BATCH])
            rows += out.trades.num_rows + out.quotes.num_rows
        elapsed = time.perf_counter() - start
        assert rows == total, rows
        return total / elapsed

    k2 = Result(
        NAME,
        "frames/s",
        repeat(measure, runs),
        goal=300_000,
        notes=(
            f"batches of {BATCH:,}; includes exact decimal conversion, message ids and "
            "quote_quantity."
        ),
    )
    return [
        dataset_result(
            f"{total:,} real BTCUSDT trade/bookTicker frames (2023-04-05 capture, "
            f"{distinct:,} distinct, ~28% trades), repeated."
        ),
        k2,
        cryptofeed_result(data, runs),
    ]


def peer_python() -> Path | None:
    """The interpreter that has cryptofeed (``K2_BENCH_PEER_PYTHON`` or the peers venv)."""
    configured = os.environ.get(PEER_PYTHON_ENV)
    candidate = Path(configured) if configured else PEER_VENV / "bin" / "python"
    return candidate if candidate.exists() else None


def peer_version() -> str:
    """Which cryptofeed the peer runs (for the header), or why there is none."""
    python = peer_python()
    if python is None:
        return f"cryptofeed not installed (`make bench` puts {CRYPTOFEED_VERSION} in .bench/peers)"
    done = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('cryptofeed'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return f"cryptofeed missing from {python}"
    return f"cryptofeed {done.stdout.strip()} ({python})"


def as_aggtrade(frame: bytes) -> str:
    """A combined-stream frame as cryptofeed's Binance feed expects it: ``trade``
    payloads rewritten to ``aggTrade`` with the same values; others unchanged."""
    message = msgspec.json.decode(frame)
    data = message["data"]
    if data.get("e") != "trade":
        return frame.decode()
    message["stream"] = message["stream"].replace("@trade", "@aggTrade")
    message["data"] = {
        "e": "aggTrade", "E": data["E"], "s": data["s"], "a": data["t"], "p": data["p"],
        "q": data["q"], "f": data["t"], "l": data["t"], "T": data["T"], "m": data["m"],
        "M": data["M"],
    }  # fmt: skip
    return msgspec.json.encode(message).decode()


def cryptofeed_result(data: list[bytes], runs: int) -> Result:
    """cryptofeed's rate on ``data`` (see the module doc), or an unmeasured figure
    whose note says why."""
    python = peer_python()
    result = Result(PEER, "frames/s", [], peer_of=NAME)
    if python is None:
        result.notes = (
            f"not measured: cryptofeed is not installed here (`make bench` installs "
            f"cryptofeed=={CRYPTOFEED_VERSION} into .bench/peers; or set {PEER_PYTHON_ENV})."
        )
        return result
    converted = {f: as_aggtrade(f) for f in set(data)}
    with tempfile.TemporaryDirectory(prefix="k2-bench-cryptofeed-") as tmp:
        path = Path(tmp) / "frames.txt"
        path.write_text("\n".join(converted[f] for f in data) + "\n")
        script = Path(__file__).with_name("cryptofeed_peer.py")
        done = subprocess.run(
            [str(python), str(script), str(path), "--runs", str(runs)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if done.returncode != 0:
        result.notes = f"not measured: the cryptofeed peer failed: {done.stderr.strip()[-500:]}"
        return result
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["trades"] + out["quotes"] != len(data):
        raise RuntimeError(
            f"cryptofeed handled {out['trades']} trades + {out['quotes']} quotes "
            f"of {len(data)} frames"
        )
    result.runs = [float(r) for r in out["runs"]]
    result.notes = (
        f"cryptofeed {out['version']}, same frames one at a time (trade frames as aggTrade, "
        "as str); JSON with Decimal prices, Trade/Ticker objects, a counting callback; "
        "no Arrow, no message ids."
    )
    return result


if __name__ == "__main__":
    from benchmarks.harness import render

    print(render(run(runs=3), "python -m benchmarks.bench_decode"))

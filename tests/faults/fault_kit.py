"""What the fault tests share: a separate exchange, K2's processes, and the verdict.

Every fault test ends on one of two outcomes, both with nothing lost: K2 *recovered*
(every trade the exchange printed over the run is stored exactly once), or K2
*stopped with a clear error* (and what it had stored is still there). The checks here
state those outcomes once:

- :func:`assert_exactly_once` — per symbol, trade ids unique and contiguous;
- :func:`lake_trade_ids` / :func:`log_trade_ids` — the ids a lake or a log holds.

The exchange is a ``k2 simulate`` process of its own (it keeps trading while K2 is
down and serves its history over REST, as Binance does); K2 runs as real ``k2``
processes configured through ``K2_*`` variables, as an operator would run it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.log.base import Log, TopicPartition
from k2.log.factory import topic_layout
from tests.ports import free_port
from tests.waiting import until

__all__ = ["until"]  # the faults' tests wait through it


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def clean_env() -> dict[str, str]:
    """This process's environment without any ``K2_``/``K2TEST_`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "K2TEST_"))}


@contextmanager
def exchange(*faults: str, rate: float = 800, seed: int = 7) -> Iterator[int]:
    """A ``k2 simulate`` process on a free port (yielded) with ``faults`` as extra
    command-line options (``"--drop", "0.01"`` ...); stopped on exit."""
    port = free_port()
    argv = [sys.executable, "-m", "k2", "simulate", "--port", str(port), "--rate", str(rate),
            "--seed", str(seed), *faults]  # fmt: skip
    sim = subprocess.Popen(
        argv, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        until(lambda: listening(port), "the simulator to listen", 30)
        yield port
    finally:
        sim.terminate()
        sim.wait(30)


def k2_env(data_dir: Path, exchange_port: int, **settings: str) -> dict[str, str]:
    """The environment of a K2 process on ``data_dir`` capturing from the simulator
    on ``exchange_port``: small topics, fast restarts, metrics on any free port.
    ``settings`` add or override ``K2_*`` variables."""
    return {
        **clean_env(),
        "K2_DATA_DIR": str(data_dir),
        "K2_BINANCE__WS_URL": f"ws://127.0.0.1:{exchange_port}",
        "K2_BINANCE__REST_URL": f"http://127.0.0.1:{exchange_port}",
        "K2_LOG__TRADE_PARTITIONS": "4",
        "K2_LOG__QUOTE_PARTITIONS": "4",
        "K2_LOG__DURABILITY": "normal",
        "K2_LAKE__SINK_MAX_SECONDS": "1",
        "K2_CAPTURE__GAP_GRACE_S": "1",
        "K2_OPS__INGEST_METRICS_PORT": "0",
        "K2_OPS__SINK_METRICS_PORT": "0",
        "K2_OPS__RESTART_INITIAL_S": "0.2",
        "K2_OPS__RESTART_MAX_S": "1",
        "K2_LOGGING__LEVEL": os.environ.get("K2TEST_LOG_LEVEL", "WARNING"),
        **settings,
    }


def k2(args: list[str], env: Mapping[str, str], output: Path) -> subprocess.Popen[bytes]:
    """Start ``k2 <args>`` with its stdout and stderr appended to ``output``."""
    with output.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "k2", *args], env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=fh)  # fmt: skip


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a process's output, for assertion messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def read_json(path: Path) -> dict[str, Any]:
    """A status file (``up.json``, ``sink.json`` ...); ``{}`` while it is being written."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lake_trade_ids(settings: Settings) -> dict[str, list[int]]:
    """Per symbol, the trade ids the lake's ``trades`` table holds (with repeats)."""
    tables = ensure_tables(open_catalog(settings), settings.lake.namespace)
    rows = tables["trades"].scan(selected_fields=("symbol", "trade_id")).to_arrow()
    out: dict[str, list[int]] = {}
    for symbol in pc.unique(rows.column("symbol")).to_pylist():
        mine = rows.filter(pc.equal(rows.column("symbol"), symbol))
        out[str(symbol)] = [int(i) for i in mine.column("trade_id").to_pylist()]
    return out


def lake_gap_statuses(settings: Settings) -> list[str]:
    """The status of every gap the lake's ``gaps`` table recorded."""
    tables = ensure_tables(open_catalog(settings), settings.lake.namespace)
    gaps = tables["gaps"].scan(selected_fields=("status",)).to_arrow()
    return [str(s) for s in gaps.column("status").to_pylist()]


def log_trade_ids(log_: Log, settings: Settings) -> dict[str, list[int]]:
    """Per symbol, the trade ids the log's trade topic holds (with repeats)."""
    topic = topic_layout(settings).data_topic("trade")
    out: dict[str, list[int]] = defaultdict(list)
    if topic not in {t.name for t in log_.list_topics()}:
        return {}
    for partition, begin in log_.begin_offsets(topic).items():
        for batch in log_.read(TopicPartition(topic, partition), begin):
            symbols = batch.records.column("symbol").to_pylist()
            ids = batch.records.column("trade_id").to_pylist()
            for symbol, trade_id in zip(symbols, ids, strict=True):
                out[str(symbol)].append(int(trade_id))
    return dict(out)


def log_gap_statuses(log_: Log, settings: Settings) -> list[str]:
    """The status of every gap record in the log's gaps topic."""
    topic = topic_layout(settings).data_topic("gap")
    if topic not in {t.name for t in log_.list_topics()}:
        return []
    out: list[str] = []
    for partition, begin in log_.begin_offsets(topic).items():
        for batch in log_.read(TopicPartition(topic, partition), begin):
            out += [str(s) for s in batch.records.column("status").to_pylist()]
    return out


def assert_exactly_once(ids: Mapping[str, list[int]], where: str, *, at_least: int) -> None:
    """Per symbol, ``ids`` are unique and contiguous (nothing twice, nothing missing
    between the first and the last), and there are ``at_least`` in all."""
    total = sum(len(v) for v in ids.values())
    assert total >= at_least, f"only {total} trades in the {where}: the feed did not run"
    for symbol, got in sorted(ids.items()):
        unique = set(got)
        assert len(got) == len(unique), (
            f"{symbol}: {len(got) - len(unique)} trades twice in the {where}"
        )
        first, last = min(unique), max(unique)
        missing = sorted(set(range(first, last + 1)) - unique)
        assert not missing, (
            f"{symbol}: {len(missing)} trades missing from the {where} between {first} and "
            f"{last} (first missing: {missing[:5]})"
        )

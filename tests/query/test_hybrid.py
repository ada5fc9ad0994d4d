"""Lake + live tail end to end: trades stream into the log while the real lake sink
commits in the background at random-ish moments, and every answer of the query
engine — in Python and through the REST API's ``/v1/trades/recent`` — is checked
against the source: every trade the log had when the view was taken is there exactly
once (trade ids continuous per symbol), whatever the commit timing."""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from k2.api.app import create_app
from k2.api.auth import KeyStore, key_entry
from k2.config import LakeSettings, QuerySettings, Settings
from k2.lake.catalog import catalog_from
from k2.lake.sink import LakeSink, SinkOptions
from k2.lake.tables import ensure_tables
from k2.log.embedded import EmbeddedLog
from k2.log.partitioner import partition_for
from k2.log.topics import TopicLayout
from k2.query.base import QueryMeta
from k2.query.engine import QueryEngine
from k2.query.tail import LiveTail
from k2.records import TRADE
from k2.sources.binance.parse import FrameParser
from tests.captures import HFT_FIRST_TRADE_ID, HFT_TRADES, hft_frames
from tests.query.tail_testkit import T0_US, make_trades

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; K2 depends on httpx, which
    # still works. Only this import's warning is silenced.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

LAYOUT = TopicLayout(trade_partitions=4, quote_partitions=1)
TOPIC = LAYOUT.data_topic("trade")
#: Synthetic symbols beside the real BTCUSDT capture, ids from 1, one per ms from T0.
SYNTHETIC = ("ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT")
FIRST_ID = {"BTCUSDT": HFT_FIRST_TRADE_ID, **dict.fromkeys(SYNTHETIC, 1)}
#: "Now" for recent_trades: a few minutes after each data set's last trade.
NOW_2023 = datetime(2023, 4, 5, 0, 10, tzinfo=UTC)  # the capture ends 00:06:54
NOW_2024 = datetime.fromtimestamp(T0_US / 1e6, tz=UTC) + timedelta(minutes=5)


@dataclass
class Producer:
    """Sends the trades in ``batches`` one produce call at a time, at random moments,
    and records after each call, per symbol, (partition end offset, last trade id)."""

    log: EmbeddedLog
    batches: list[pa.RecordBatch]
    rng: random.Random
    seen: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        pause = threading.Event()
        try:
            for batch in self.batches:
                produced = self.log.produce(TOPIC, batch)
                last = _last_ids(batch)
                with self.lock:
                    for symbol, trade_id in last.items():
                        first, n = produced.ranges[partition_for(symbol, 4)]
                        self.seen.setdefault(symbol, []).append((first + n, trade_id))
                    for p, (first, n) in produced.ranges.items():
                        self.ends[p] = first + n
                pause.wait(self.rng.uniform(0, 0.03))  # pacing, not synchronisation
        finally:
            self.done.set()

    def visible_up_to(self, log_end: dict[int, int]) -> dict[str, int]:
        """Per symbol, the last trade id the log held below ``log_end`` (as far as
        this producer has recorded: a lower bound)."""
        out: dict[str, int] = {}
        with self.lock:
            for symbol, entries in self.seen.items():
                end = log_end.get(partition_for(symbol, 4), 0)
                ids = [trade_id for offset, trade_id in entries if offset <= end]
                out[symbol] = max(ids, default=FIRST_ID[symbol] - 1)
        return out


def _last_ids(batch: pa.RecordBatch) -> dict[str, int]:
    table = pa.Table.from_batches([batch])
    grouped = table.group_by("symbol").aggregate([("trade_id", "max")])
    return dict(
        zip(grouped["symbol"].to_pylist(), grouped["trade_id_max"].to_pylist(), strict=True)
    )


def _batches(rng: random.Random) -> list[pa.RecordBatch]:
    """The real BTCUSDT capture cut at random points, interleaved with synthetic trades
    of four more symbols in random amounts."""
    frames, received = hft_frames()
    btc = pa.Table.from_batches([FrameParser().parse(frames, received).trades])
    assert btc.num_rows == HFT_TRADES
    out: list[pa.RecordBatch] = []
    at = 0
    next_id = dict.fromkeys(SYNTHETIC, 1)
    while at < btc.num_rows:
        n = rng.randint(1, 40)
        parts = [btc.slice(at, n)]
        at += n
        for symbol in SYNTHETIC:
            k = rng.randint(0, 12)
            if k:
                parts.append(pa.Table.from_batches([make_trades(symbol, next_id[symbol], k)]))
                next_id[symbol] += k
        out.append(pa.concat_tables(parts).combine_chunks().to_batches()[0])
    return out


@pytest.fixture
def work(tmp_path: Path) -> Iterator[tuple[EmbeddedLog, LakeSettings, Path]]:
    log = EmbeddedLog(tmp_path / "log", durability="normal")
    for spec in LAYOUT.specs():
        log.create_topic(spec)
    yield log, LakeSettings(), tmp_path / "data"
    log.close()


def _check_trades(engine: QueryEngine, symbol: str, lower: int) -> QueryMeta:
    """Every trade of ``symbol`` in time order: ids continuous from the first, at least
    up to ``lower`` — no gap, no duplicate."""
    result = engine.trades(symbol, limit=100_000)
    ids = result.table.column("trade_id").to_pylist()
    first = FIRST_ID[symbol]
    assert ids == list(range(first, first + len(ids))), f"{symbol}: gap or duplicate"
    assert first + len(ids) - 1 >= lower, f"{symbol}: trades the log had are missing"
    assert result.meta.tail_complete
    return result.meta


def _check_recent(engine: QueryEngine, symbol: str, lower: int) -> QueryMeta:
    """The newest 25 trades, newest first: continuous ids ending at or after ``lower``."""
    result = engine.recent_trades(symbol, window_minutes=15, limit=25)
    ids = result.table.column("trade_id").to_pylist()
    newest = ids[0]
    expected = list(range(newest, max(newest - 25, FIRST_ID[symbol] - 1), -1))
    assert ids == expected, f"{symbol}: recent trades not continuous"
    assert newest >= lower, f"{symbol}: the newest trades the log had are missing"
    return result.meta


API_KEY = "hybrid-test-key"


def _client(engine: QueryEngine, data_dir: Path) -> TestClient:
    settings = Settings(data_dir=data_dir, api={"rate_limit_per_s": 1e6,
                                                "rate_limit_burst": 10**6})  # fmt: skip
    app = create_app(engine, settings, keystore=KeyStore([key_entry("test", API_KEY)]))
    client = TestClient(app, raise_server_exceptions=True)
    client.headers["X-API-Key"] = API_KEY
    return client


def _check_recent_api(client: TestClient, symbol: str, lower: int) -> int:
    """``GET /v1/trades/recent``: the newest 25 trades, continuous, ending at or after
    ``lower``; returns the rows that came from the tail."""
    response = client.get(
        "/v1/trades/recent", params={"symbol": symbol, "window_minutes": 15, "limit": 25}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [int(row["trade_id"]) for row in body["data"]]
    newest = ids[0]
    expected = list(range(newest, max(newest - 25, FIRST_ID[symbol] - 1), -1))
    assert ids == expected, f"{symbol}: /v1/trades/recent not continuous"
    assert newest >= lower, f"{symbol}: /v1/trades/recent misses trades the log had"
    return int(body["meta"]["rows_tail"])


def _engine(lake: LakeSettings, data_dir: Path, tail: LiveTail, now: datetime) -> QueryEngine:
    """An engine over the lake with ``tail`` attached, whose clock says ``now``."""

    def clock() -> datetime:
        return now

    return QueryEngine(catalog_from(lake, data_dir), settings=SETTINGS, tail=tail, clock=clock,
                       background_refresh=False)  # fmt: skip


#: Fast polls and refreshes, so a short test sees many cuts.
SETTINGS = QuerySettings(tail_poll_ms=20, refresh_ms=50)


@pytest.mark.slow
def test_answers_are_seamless_whatever_the_commit_timing(
    work: tuple[EmbeddedLog, LakeSettings, Path],
) -> None:
    log, lake, data_dir = work
    rng = random.Random(11)
    producer = Producer(log, _batches(rng), rng)
    tables = ensure_tables(catalog_from(lake, data_dir))
    options = SinkOptions(max_records=rng.randint(150, 600), max_seconds=0.15)
    sink = LakeSink(log, catalog_from(lake, data_dir), LAYOUT, options=options)
    stop_sink = threading.Event()
    sinking = threading.Thread(target=sink.run, args=(stop_sink,), daemon=True)
    tail = LiveTail(log, LAYOUT, tables, settings=SETTINGS, data_types=("trades",))
    by_year = {now: _engine(lake, data_dir, tail, now) for now in (NOW_2023, NOW_2024)}
    engines = {s: by_year[NOW_2023 if s == "BTCUSDT" else NOW_2024] for s in FIRST_ID}
    clients = {now: _client(engine, data_dir) for now, engine in by_year.items()}
    api = {s: clients[NOW_2023 if s == "BTCUSDT" else NOW_2024] for s in FIRST_ID}
    api_answers = api_from_tail = 0
    producing = threading.Thread(target=producer.run, daemon=True)

    def every_symbol_visible() -> bool:
        lower = producer.visible_up_to(tail.view().log_end)
        return all(lower.get(s, 0) >= first for s, first in FIRST_ID.items())

    mixed = answers = 0
    try:
        tail.start()
        sinking.start()
        producing.start()
        assert tail.wait_until(every_symbol_visible, timeout_s=30)
        while True:
            finished = producer.done.is_set()
            for symbol, engine in engines.items():
                lower = producer.visible_up_to(tail.view().log_end)[symbol]
                metas = [_check_trades(engine, symbol, lower), _check_recent(engine, symbol, lower)]
                answers += len(metas)
                mixed += sum(bool(m.rows_lake and m.rows_tail) for m in metas)
                lower = producer.visible_up_to(tail.view().log_end)[symbol]
                api_from_tail += _check_recent_api(api[symbol], symbol, lower)
                api_answers += 1
            if finished:
                break
        # Once the sink has committed everything, the lake alone answers, in full.
        assert tail.wait_until(
            lambda: tail.view().offsets == producer.ends and tail.view().rows.num_rows == 0,
            timeout_s=60,
        )
        totals = {s: max(i for _, i in producer.seen[s]) for s in FIRST_ID}
        for symbol, last in totals.items():
            meta = _check_trades(engines[symbol], symbol, last)
            assert meta.rows == last - FIRST_ID[symbol] + 1 and meta.sources == ["lake"]
    finally:
        stop_sink.set()
        sinking.join(30)
        tail.stop()
        for client in clients.values():
            client.close()
        for engine in by_year.values():
            engine.close()
        sink.close()
    assert totals["BTCUSDT"] == HFT_FIRST_TRADE_ID + HFT_TRADES - 1
    assert sink.stats.commits >= 5, "the sink should have committed many times meanwhile"
    assert answers >= 40 and mixed >= 1, (answers, mixed)
    assert api_answers >= 20 and api_from_tail >= 1, (api_answers, api_from_tail)
    assert tail.stats().read_errors == tail.stats().refresh_errors == 0
    assert TRADE.arrow_schema().names == tail.view().rows.schema.names
    print(f"answers={answers} mixed={mixed} commits={sink.stats.commits}")

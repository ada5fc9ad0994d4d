"""API fixtures: a small real lake, a real engine over it, apps with known keys.

The lake (built once per session in a tmp directory, embedded SQLite catalog) holds the
real hftbacktest BTCUSDT capture: its 3,144 trades appended in three commits (three
snapshots, for time travel and pagination), its 8,015 book tickers plus the 84 of the
cryptofeed spot capture (NKNUSDT, LRCBTC, BLZETH) in one commit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from k2.api.app import create_app
from k2.api.auth import KeyStore, key_entry
from k2.config import LakeSettings, QuerySettings, Settings
from k2.lake.catalog import catalog_from
from k2.lake.tables import TABLE_DEFS, ensure_tables, sort_for
from k2.query.base import DataType, TailView
from k2.query.engine import QueryEngine
from k2.sources.binance.parse import FrameParser
from k2.sources.captures import read_capture
from tests.captures import SPOT_CF_CAPTURE, hft_frames

ALICE_KEY = "alice-test-key-0123456789abcdef"
BOB_KEY = "bob-test-key-0123456789abcdefghi"

#: Just after the capture's last trade (2023-04-05 00:06:54 UTC): "now" for recent trades.
CAPTURE_NOW = datetime(2023, 4, 5, 0, 7, tzinfo=UTC)

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; K2 depends on httpx, which
    # still works. Only this import's warning is silenced.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient as TestClient


@dataclass
class ApiLake:
    """Where the lake is, what is in it (sorted like the engine answers), its snapshots."""

    data_dir: Path
    trades: pa.Table
    quotes: pa.Table
    trade_snapshots: list[int] = field(default_factory=list)
    trade_batches: list[pa.Table] = field(default_factory=list)

    def settings(self, **api: Any) -> Settings:
        """Settings of this lake; ``api`` overrides ApiSettings fields."""
        return Settings(
            data_dir=self.data_dir,
            lake=LakeSettings(),
            api={"rate_limit_per_s": 1e6, "rate_limit_burst": 10**6, **api},
        )


def _sorted(table: pa.Table, sequence: str) -> pa.Table:
    return table.sort_by(
        [
            ("timestamp", "ascending"),
            ("exchange", "ascending"),
            ("symbol", "ascending"),
            (sequence, "ascending"),
        ]
    )


@pytest.fixture(scope="session")
def api_lake(tmp_path_factory: pytest.TempPathFactory) -> ApiLake:
    data_dir = tmp_path_factory.mktemp("api-lake")
    frames, received = hft_frames()
    parsed = FrameParser().parse(frames, received)
    cf = list(read_capture(SPOT_CF_CAPTURE))
    cf_quotes = FrameParser().parse([f.frame for f in cf], [f.received_us for f in cf]).quotes
    tables = ensure_tables(catalog_from(LakeSettings(), data_dir))
    trades = _sorted(pa.Table.from_batches([parsed.trades]), "trade_id")
    lake = ApiLake(
        data_dir, trades, _sorted(pa.Table.from_batches([parsed.quotes, cf_quotes]), "update_id")
    )
    third = trades.num_rows // 3
    for i in range(3):
        batch = trades.slice(i * third, third if i < 2 else trades.num_rows - 2 * third)
        tables["trades"].append(sort_for(TABLE_DEFS["trades"], batch))
        snap = tables["trades"].current_snapshot()
        assert snap is not None
        lake.trade_snapshots.append(snap.snapshot_id)
        lake.trade_batches.append(batch)
    tables["quotes"].append(sort_for(TABLE_DEFS["quotes"], lake.quotes))
    return lake


@pytest.fixture(scope="session")
def engine(api_lake: ApiLake) -> Iterator[QueryEngine]:
    """One engine over the session lake (lake only, "now" just after the capture)."""
    settings = api_lake.settings()
    eng = QueryEngine(
        catalog_from(settings.lake, settings.data_dir),
        settings=QuerySettings(),
        clock=lambda: CAPTURE_NOW,
        background_refresh=False,
    )
    yield eng
    eng.close()


class FakeClock:
    """Monotonic seconds that only move when a test moves them."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StaticTail:
    """A live tail frozen at one cut: ``rows`` beyond snapshot ``snapshot_id``."""

    def __init__(self, views: dict[str, TailView]) -> None:
        self.views = views

    def view(self, data_type: DataType) -> TailView:
        return self.views[data_type]

    def peek(self, data_type: DataType) -> TailView | None:
        return self.views.get(data_type)


def keystore() -> KeyStore:
    return KeyStore([key_entry("alice", ALICE_KEY), key_entry("bob", BOB_KEY)])


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(api_lake: ApiLake, engine: QueryEngine) -> Iterator[AppFactory]:
    """``make_client(engine=..., clock=..., key=ALICE_KEY, **api settings)``: a TestClient
    on a fresh app (fresh metrics and rate limits) sending ``key`` as X-API-Key."""
    clients: list[TestClient] = []

    def make(
        *,
        engine_: Any = None,
        clock: Callable[[], float] | None = None,
        key: str | None = ALICE_KEY,
        **api: Any,
    ) -> TestClient:
        app = create_app(
            engine_ or engine,
            api_lake.settings(**api),
            keystore=keystore(),
            clock=clock or FakeClock(),
        )
        client = TestClient(app, raise_server_exceptions=False)
        if key is not None:
            client.headers["X-API-Key"] = key
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    """A client with alice's key on an app over the session engine."""
    return make_client()


def day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return start, start + timedelta(days=1)

"""Lake fixtures: an embedded catalog, a PostgreSQL catalog, a moto S3 server, trades.

``lake_variant`` runs a test once per deployment: ``sqlite`` (embedded default, local
warehouse), ``postgresql`` (the server on 127.0.0.1:5432, a fresh database per test
session, dropped afterwards) and ``s3`` (embedded catalog, warehouse on a moto S3
server on a free port, path-style addressing).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from k2.config import LakeSettings
from k2.records import TRADE
from tests.pg import throwaway_database
from tests.ports import free_port

S3_BUCKET = "k2-lake"


@pytest.fixture(scope="session")
def pg_uri() -> Iterator[str]:
    """An SQLAlchemy URL of a database created for this test session (then dropped)."""
    with throwaway_database("k2_lake") as name:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free 127.0.0.1 port with the bucket ``k2-lake``."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="k2test",
            aws_secret_access_key="k2secret",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql", "s3"])
def lake_variant(request: pytest.FixtureRequest, tmp_path: Path) -> LakeSettings:
    """Lake settings for one deployment variant (see the module docstring)."""
    return lake_settings_for(request, str(request.param), tmp_path)


def lake_settings_for(request: pytest.FixtureRequest, variant: str, tmp_path: Path) -> LakeSettings:
    """Lake settings of ``variant`` (``sqlite``, ``postgresql`` or ``s3``)."""
    if variant == "sqlite":
        return LakeSettings()
    if variant == "postgresql":
        uri: str = request.getfixturevalue("pg_uri")
        # One database per session: a namespace per test keeps tests apart.
        ns = f"md_{uuid.uuid4().hex[:10]}"
        return LakeSettings(catalog="postgresql", uri=uri, namespace=ns)
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return LakeSettings(
        warehouse=f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:10]}",
        s3_endpoint=endpoint,
        s3_access_key_id="k2test",
        s3_secret_access_key="k2secret",
        s3_path_style=True,
    )


#: Trade timestamp base: 2024-01-01T00:00:00Z in µs.
T0_US = 1_704_067_200_000_000


def make_trades(symbol: str, first_id: int, count: int, *, step_us: int = 1000) -> pa.RecordBatch:
    """``count`` trades of ``symbol`` with ids ``first_id...``, one every ``step_us``."""
    ids = pa.array(range(first_id, first_id + count), pa.int64())
    ts = pa.array([T0_US + (i - first_id) * step_us for i in range(first_id, first_id + count)],
                  pa.int64()).cast(pa.timestamp("us", tz="UTC"))  # fmt: skip
    dec = pa.decimal128(18, 8)
    n = count
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f"binance:{symbol}:{i}" for i in range(first_id, first_id + n)]),
            ids,
            pa.array(["binance"] * n),
            pa.array([symbol] * n),
            pa.array(["crypto"] * n),
            ts,
            ts,
            pa.array([Decimal("42000.12345678")] * n, dec),
            pa.array([Decimal("0.00100000")] * n, dec),
            pa.array([Decimal("42.00012346")] * n, dec),
            pa.array(["USDT"] * n),
            pa.array(["BUY" if i % 2 else "SELL" for i in range(n)]),
            pa.array([bool(i % 2) for i in range(n)]),
            ids,
            ts,
            pa.nulls(n, pa.string()),
        ],
        schema=TRADE.arrow_schema(),
    )


@pytest.fixture
def trades() -> Callable[..., pa.RecordBatch]:
    """:func:`make_trades`."""
    return make_trades

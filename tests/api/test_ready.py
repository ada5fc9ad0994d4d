"""``GET /ready``: readiness per dependency, over real logs, catalogs and object stores.

Each deployment is real: an embedded log and SQLite catalog in a tmp directory, a
PostgreSQL catalog URI on a closed port, a moto S3 server (``tests/lake/conftest.py``)
with a bucket that is then deleted, a Tansu Kafka broker, a TCP server that accepts and
never answers, and the ingest's status file as the ingest writes it (also by a real
``k2 ingest`` run against the simulator).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from k2.api.app import create_app
from k2.api.ready import ReadinessChecker
from k2.api.server import open_runtime
from k2.config import LakeSettings, Settings
from k2.lake.catalog import catalog_from
from k2.lake.tables import ensure_tables
from k2.log.factory import open_log, topic_layout
from k2.ops.status_files import status_path, write_status
from k2.query.engine import QueryEngine
from tests.api.conftest import TestClient, keystore
from tests.lake.conftest import S3_BUCKET, make_trades
from tests.lake.conftest import s3_endpoint as s3_endpoint  # the moto server fixture
from tests.log.tansu import tansu as tansu  # the session's Kafka broker fixture
from tests.ports import free_port

WS_URL = "wss://stream.binance.com:9443/stream"


def settings_for(data_dir: Path, **lake: Any) -> Settings:
    """Settings of a deployment in ``data_dir``; ``lake`` overrides LakeSettings."""
    return Settings(data_dir=data_dir, lake=LakeSettings(**lake))


def build(settings: Settings, trades: int = 0) -> None:
    """Create K2's tables and topics as ``k2 sink``/``k2 ingest`` would, with ``trades``
    trades in the log."""
    ensure_tables(catalog_from(settings.lake, settings.data_dir), settings.lake.namespace)
    log = open_log(settings)
    try:
        layout = topic_layout(settings)
        for spec in layout.specs():
            log.create_topic(spec)
        if trades:
            log.produce(layout.data_topic("trade"), make_trades("BTCUSDT", 1, trades))
    finally:
        log.close()


@pytest.fixture
def make_ready_client(engine: QueryEngine) -> Iterator[Callable[..., TestClient]]:
    """``make(settings, checker)``: a started TestClient (no API key) over an app whose
    ``/ready`` uses ``checker``; the app is shut down (checker closed) afterwards."""
    clients: list[TestClient] = []

    def make(settings: Settings, checker: ReadinessChecker) -> TestClient:
        app = create_app(engine, settings, keystore=keystore(), readiness=checker)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def statuses(body: dict[str, Any]) -> dict[str, str]:
    return {name: check["status"] for name, check in body["checks"].items()}


# -- the embedded deployment -------------------------------------------------------------


def test_ready_over_the_embedded_log_and_sqlite_catalog(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    build(settings, trades=25)
    # Wired as `k2 serve` wires it: the runtime's log handle, its live tail running.
    runtime = open_runtime(settings, live=True)
    try:
        app = create_app(
            runtime.engine,
            settings,
            keystore=keystore(),
            readiness=ReadinessChecker(settings, log=runtime.log),
        )
        with TestClient(app) as client:
            resp = client.get("/ready")  # no X-API-Key: open, like /health
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"].startswith("application/json")
            body = resp.json()
            assert client.get("/v1/symbols").status_code == 401  # /v1 still needs a key
    finally:
        runtime.close()
    assert body["status"] == "ready"
    assert statuses(body) == {
        "log": "ok",
        "catalog": "ok",
        "object_store": "ok",
        "exchange": "unknown",
    }
    checks = body["checks"]
    assert "embedded log answers" in checks["log"]["detail"]
    assert "end offsets total 25" in checks["log"]["detail"]
    assert "sqlite catalog answers" in checks["catalog"]["detail"]
    assert str(tmp_path / "lake" / "warehouse") in checks["object_store"]["detail"]
    assert "no ingest runs on this machine" in checks["exchange"]["detail"]
    assert all(check["latency_ms"] >= 0 for check in checks.values())


@pytest.mark.slow
def test_k2_serve_answers_ready(tmp_path: Path) -> None:
    # The real process, wired by k2.api.server (the runtime's log handle).
    settings = settings_for(tmp_path)
    build(settings, trades=3)
    port = free_port()
    env = {**os.environ, "K2_DATA_DIR": str(tmp_path), "K2_API__PORT": str(port)}
    env.pop("K2_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None, f"k2 serve exited with {proc.returncode}"
                assert time.monotonic() < deadline, "k2 serve did not listen"
                time.sleep(0.1)  # polling a port that is not open yet; not synchronisation
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert statuses(body) == {
        "log": "ok",
        "catalog": "ok",
        "object_store": "ok",
        "exchange": "unknown",
    }
    assert "end offsets total 3" in body["checks"]["log"]["detail"]


def test_ready_is_open_and_documented(
    tmp_path: Path, make_ready_client: Callable[..., TestClient]
) -> None:
    settings = settings_for(tmp_path)
    client = make_ready_client(settings, ReadinessChecker(settings))
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/ready"]["get"]
    assert "security" not in operation
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ReadyBody"}
    checks = spec["components"]["schemas"]["ReadyBody"]["properties"]["checks"]
    assert checks["additionalProperties"] == {"$ref": "#/components/schemas/CheckResult"}
    problem = operation["responses"]["503"]["content"]["application/problem+json"]["schema"]
    assert "checks" in problem["required"]


def test_a_missing_table_makes_the_catalog_down(
    tmp_path: Path, make_ready_client: Callable[..., TestClient]
) -> None:
    # A catalog that answers but no longer holds the trades table cannot serve a query.
    settings = settings_for(tmp_path)
    build(settings)
    catalog_from(settings.lake, settings.data_dir).drop_table(("market_data", "trades"))
    client = make_ready_client(settings, ReadinessChecker(settings))
    resp = client.get("/ready")
    assert resp.status_code == 503
    body = resp.json()
    assert statuses(body)["catalog"] == "down"
    assert "market_data.trades does not exist" in body["checks"]["catalog"]["detail"]
    assert statuses(body)["log"] == statuses(body)["object_store"] == "ok"


def test_an_unreachable_catalog_makes_the_api_unready(
    tmp_path: Path, make_ready_client: Callable[..., TestClient]
) -> None:
    pytest.importorskip("psycopg2")
    # A PostgreSQL catalog on a port nothing listens on: connection refused.
    uri = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/k2"
    settings = settings_for(tmp_path, catalog="postgresql", uri=uri)
    build(settings_for(tmp_path))  # the log and the warehouse are there
    client = make_ready_client(settings, ReadinessChecker(settings))
    resp = client.get("/ready")
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["retry-after"] == "1"
    body = resp.json()
    assert body["type"].endswith("/not-ready")
    assert body["status"] == 503 and body["instance"] == "/ready" and body["request_id"]
    assert body["detail"].startswith("not ready: catalog down: OperationalError")
    assert statuses(body) == {
        "log": "ok",
        "catalog": "down",
        "object_store": "ok",
        "exchange": "unknown",
    }
    assert "refused" in body["checks"]["catalog"]["detail"]


def test_a_dependency_that_never_answers_is_down_after_the_timeout(tmp_path: Path) -> None:
    pytest.importorskip("psycopg2")
    # A server that accepts TCP connections (the kernel's backlog) and never speaks:
    # PostgreSQL's client waits for its answer forever.
    mute = socket.create_server(("127.0.0.1", 0), backlog=8)
    port = mute.getsockname()[1]
    settings = settings_for(
        tmp_path, catalog="postgresql", uri=f"postgresql+psycopg2://postgres@127.0.0.1:{port}/k2"
    )
    checker = ReadinessChecker(settings, timeout_s=0.3, cache_s=0)
    try:
        first = checker.check().checks["catalog"]
        assert first.status == "down"
        assert first.detail.startswith(
            f"the postgresql catalog at postgresql+psycopg2://postgres@127.0.0.1:{port}/k2: "
            "no answer within 0.3 s"
        )
        second = checker.check().checks["catalog"]
        assert second.status == "down"
        # The hung check is waited on again, not started again: one thread, not two.
        hung = [t for t in threading.enumerate() if t.name == "k2-ready-catalog"]
        assert len(hung) == 1
    finally:
        mute.close()  # resets the waiting connection: the hung check ends
        checker.close()
    deadline = time.monotonic() + 30
    while hung[0].is_alive():
        assert time.monotonic() < deadline, "the catalog check did not end"
        hung[0].join(timeout=0.1)


# -- S3 ----------------------------------------------------------------------------------


def test_s3_warehouse_ok_then_down_once_the_bucket_is_gone(
    tmp_path: Path, s3_endpoint: str, make_ready_client: Callable[..., TestClient]
) -> None:
    boto3 = pytest.importorskip("boto3")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="k2test",
        aws_secret_access_key="k2secret",
        region_name="us-east-1",
    )
    bucket = f"k2-ready-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    lake = {
        "warehouse": f"s3://{bucket}/lake",
        "s3_endpoint": s3_endpoint,
        "s3_access_key_id": "k2test",
        "s3_secret_access_key": "k2secret",
        "s3_path_style": True,
    }
    settings = settings_for(tmp_path, **lake)
    build(settings)
    client = make_ready_client(settings, ReadinessChecker(settings, cache_s=0))

    resp = client.get("/ready")
    assert resp.status_code == 200, resp.text
    store = resp.json()["checks"]["object_store"]
    assert store["status"] == "ok"
    assert f"bucket '{bucket}' at {s3_endpoint} answers" in store["detail"]

    # The bucket is emptied and deleted under the running API.
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)

    resp = client.get("/ready")
    assert resp.status_code == 503
    body = resp.json()
    assert statuses(body)["object_store"] == "down"
    assert statuses(body)["catalog"] == statuses(body)["log"] == "ok"
    assert f"bucket '{bucket}' does not exist" in body["checks"]["object_store"]["detail"]
    assert "object_store down" in body["detail"]


def test_s3_warehouse_in_a_bucket_that_never_existed(tmp_path: Path, s3_endpoint: str) -> None:
    settings = settings_for(
        tmp_path,
        warehouse=f"s3://{S3_BUCKET}-missing/lake",
        s3_endpoint=s3_endpoint,
        s3_access_key_id="k2test",
        s3_secret_access_key="k2secret",
        s3_path_style=True,
    )
    checker = ReadinessChecker(settings)
    try:
        store = checker.check().checks["object_store"]
    finally:
        checker.close()
    assert store.status == "down"
    assert f"bucket '{S3_BUCKET}-missing' does not exist at {s3_endpoint}" in store.detail


# -- Kafka -------------------------------------------------------------------------------


def test_kafka_log_ok_on_a_broker(tmp_path: Path, tansu: str) -> None:
    build(settings_for(tmp_path))  # catalog and warehouse
    settings = Settings(data_dir=tmp_path, log={"backend": "kafka", "bootstrap_servers": tansu})
    checker = ReadinessChecker(settings)
    try:
        report = checker.check()
    finally:
        checker.close()
    assert report.ready, report.summary()
    assert "the kafka log answers" in report.checks["log"].detail


@pytest.mark.slow
def test_kafka_log_down_without_a_broker(tmp_path: Path) -> None:
    build(settings_for(tmp_path))
    closed = f"127.0.0.1:{free_port()}"
    settings = Settings(data_dir=tmp_path, log={"backend": "kafka", "bootstrap_servers": closed})
    checker = ReadinessChecker(settings, timeout_s=0.5)
    try:
        report = checker.check()
        # The Kafka client gives up after its own timeout (10 s); let it, before the
        # log handle is closed under it.
        probes = [t for t in threading.enumerate() if t.name == "k2-ready-log"]
        deadline = time.monotonic() + 60
        for probe in probes:
            while probe.is_alive():
                assert time.monotonic() < deadline, "the Kafka log check did not end"
                probe.join(timeout=0.1)
    finally:
        checker.close()
    assert not report.ready
    assert report.checks["log"].status == "down"
    assert report.checks["log"].detail.startswith(f"the kafka log at {closed}: no answer")
    assert report.summary().startswith("log down:")
    assert report.checks["catalog"].status == "ok"


# -- the exchange, from the ingest's status file -------------------------------------------


def write_ingest_status(settings: Settings, connections: int, **extra: Any) -> None:
    """The ingest's status file with the fields ``k2 ingest`` writes (this process's
    pid, so it counts as alive while fresh)."""
    write_status(
        status_path(settings, "ingest"),
        {
            "stage": "ingest",
            "phase": "streaming" if connections else "connecting",
            "exchange": "binance",
            "ws_url": WS_URL,
            "connections": connections,
            "stream": {},
            "stats": {},
            "degradation": {},
            **extra,
        },
    )


@pytest.mark.parametrize(
    ("connections", "extra", "status", "words"),
    [
        (1, {}, "ok", f"1 connection(s) to {WS_URL} (streaming)"),
        (0, {}, "down", f"the ingest (connecting) has no connection to {WS_URL}"),
        (2, {"degradation": {"level": 2, "level_name": "SOFT"}}, "degraded", "level SOFT"),
    ],
)
def test_exchange_from_a_fresh_ingest_status(
    tmp_path: Path,
    make_ready_client: Callable[..., TestClient],
    connections: int,
    extra: dict[str, Any],
    status: str,
    words: str,
) -> None:
    settings = settings_for(tmp_path)
    build(settings)
    write_ingest_status(settings, connections, **extra)
    client = make_ready_client(settings, ReadinessChecker(settings))
    resp = client.get("/ready")
    # The exchange never decides readiness: the lake and the log still serve.
    assert resp.status_code == 200, resp.text
    exchange = resp.json()["checks"]["exchange"]
    assert exchange["status"] == status
    assert words in exchange["detail"]


def test_exchange_unknown_when_no_ingest_runs_here(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    now = [time.time()]
    checker = ReadinessChecker(settings, cache_s=0, wall_clock=lambda: now[0])
    try:
        missing = checker.check().checks["exchange"]
        write_ingest_status(settings, 1)
        fresh = checker.check().checks["exchange"]
        now[0] += 3600  # the ingest stopped writing an hour ago
        stale = checker.check().checks["exchange"]
    finally:
        checker.close()
    assert missing.status == "unknown"
    assert "no status file" in missing.detail
    assert fresh.status == "ok"
    assert stale.status == "unknown"
    assert "last written 3600 s ago" in stale.detail


def test_a_result_is_reused_for_cache_s(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    build(settings)
    clock = [100.0]
    checker = ReadinessChecker(settings, cache_s=1.0, clock=lambda: clock[0])
    try:
        write_ingest_status(settings, 1)
        first = checker.check()
        write_ingest_status(settings, 0)
        clock[0] += 0.9
        again = checker.check()
        clock[0] += 0.2
        later = checker.check()
    finally:
        checker.close()
    assert again is first
    assert first.checks["exchange"].status == "ok"
    assert later.checks["exchange"].status == "down"


@pytest.mark.slow
async def test_exchange_follows_a_real_ingest(tmp_path: Path) -> None:
    from k2.capture.service import ingest
    from k2.simulator import SimulatorConfig, SimulatorServer

    async def wait_for(checker: ReadinessChecker, status: str) -> str:
        deadline = time.monotonic() + 30
        while True:
            exchange = (await checker.check_async()).checks["exchange"]
            if exchange.status == status:
                return exchange.detail
            assert time.monotonic() < deadline, f"exchange not {status}: {exchange.detail}"
            await asyncio.sleep(0.05)  # the ingest rewrites its status every 0.1 s

    stop = asyncio.Event()
    async with SimulatorServer(SimulatorConfig(port=0, rate=200.0, seed=3)) as sim:
        settings = Settings(
            data_dir=tmp_path,
            binance={"ws_url": sim.ws_url, "rest_url": sim.rest_url},
            capture={"symbols": ["BTCUSDT"]},
            log={"trade_partitions": 2, "quote_partitions": 2},
            ops={"status_interval_s": 0.1, "ingest_metrics_port": 0},
        )
        checker = ReadinessChecker(settings, cache_s=0)
        task = asyncio.create_task(ingest(settings, stop=stop, handle_signals=False))
        try:
            connected = await wait_for(checker, "ok")
            assert connected == f"1 connection(s) to {sim.ws_url} (streaming)"
        finally:
            stop.set()
            await task
        try:
            stopped = await wait_for(checker, "unknown")
        finally:
            checker.close()
    assert stopped.startswith("the ingest on this machine has stopped")

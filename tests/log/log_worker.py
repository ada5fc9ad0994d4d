"""A separate process working on an embedded log, for the multi-process and crash tests.

Run as ``python tests/log/log_worker.py MODE ARGS...`` with the repository root on
``PYTHONPATH``. Modes:

- ``crash-produce DIR ACKS RUN DURABILITY``: produce batches forever; after each
  ``produce`` returns, append ``start_id count`` to ACKS and fsync it. Prints ``ready``
  once the log is open. Meant to be killed with SIGKILL.
- ``produce DIR TOPIC START_ID BATCHES SIZE``: produce BATCHES trade batches of SIZE
  rows with consecutive trade ids from START_ID, then exit.
- ``consume DIR TOPIC GROUP OUT STOP``: join GROUP; after every poll write
  ``partition offset message_id`` lines to OUT and commit; exit once the file STOP
  exists and a poll returns nothing.
- ``retention DIR [STEP_BYTES]``: print ``ready``, run ``enforce_retention`` once
  (with ``retention_step_bytes=STEP_BYTES``) and print the records deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from k2.log.base import Retention, TopicSpec
from k2.log.embedded import Durability, EmbeddedLog
from k2.ops.log import configure_logging
from k2.records import TRADE
from tests.log.contract import trade_batch

ROOT = Path(__file__).resolve().parents[2]

CRASH_TOPIC = "market.crypto.trades.binance"
CRASH_PARTITIONS = 4

#: Trade ids of crash batch (run, seq) start at ``(run * 100_000 + seq) * BATCH_SPAN``.
BATCH_SPAN = 1000


def spawn(mode: str, *args: object) -> subprocess.Popen[str]:
    """Start this script in ``mode`` as a child process (stdout piped, text)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    argv = [sys.executable, str(Path(__file__).resolve()), mode, *map(str, args)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)


def wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    """Block until the child prints ``ready`` (it exits or prints else: fail)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"{what} did not start: {line!r}"


def crash_batch_size(seq: int) -> int:
    """Rows of the ``seq``-th crash batch: varied, 20..599, known to the verifier."""
    return 20 + (seq * 137) % 580


def crash_produce(directory: Path, acks: Path, run: int, durability: str) -> None:
    level: Durability = "full" if durability == "full" else "normal"
    log = EmbeddedLog(directory, durability=level)
    log.create_topic(TopicSpec(CRASH_TOPIC, TRADE, CRASH_PARTITIONS, Retention(None, None)))
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    seq = 0
    while True:
        start = (run * 100_000 + seq) * BATCH_SPAN
        n = crash_batch_size(seq)
        log.produce(CRASH_TOPIC, trade_batch(start, n))
        os.write(fd, f"{start} {n}\n".encode())
        os.fsync(fd)
        seq += 1


def produce(directory: Path, topic: str, start_id: int, batches: int, size: int) -> None:
    with EmbeddedLog(directory) as log:
        for i in range(batches):
            log.produce(topic, trade_batch(start_id + i * size, size))


def consume(directory: Path, topic: str, group: str, out: Path, stop: Path) -> None:
    with EmbeddedLog(directory) as log, out.open("a") as sink:
        consumer = log.consumer(group, [topic])
        print("ready", flush=True)
        try:
            while True:
                batches = consumer.poll(timeout_s=0.05)
                for b in batches:
                    ids = b.records.column("message_id").to_pylist()
                    offsets = b.offsets().to_pylist()
                    sink.writelines(
                        f"{b.partition} {o} {m}\n" for o, m in zip(offsets, ids, strict=True)
                    )
                sink.flush()
                if batches:
                    consumer.commit()
                elif stop.exists():
                    return
        finally:
            consumer.close()


def main(argv: list[str]) -> None:
    configure_logging("console", "WARNING")  # to stderr: stdout is the protocol
    mode, args = argv[0], argv[1:]
    if mode == "crash-produce":
        crash_produce(Path(args[0]), Path(args[1]), int(args[2]), args[3])
    elif mode == "produce":
        produce(Path(args[0]), args[1], int(args[2]), int(args[3]), int(args[4]))
    elif mode == "consume":
        consume(Path(args[0]), args[1], args[2], Path(args[3]), Path(args[4]))
    elif mode == "retention":
        step = int(args[1]) if len(args) > 1 else 16 * 1024 * 1024
        with EmbeddedLog(Path(args[0]), retention_step_bytes=step) as log:
            print("ready", flush=True)
            print(log.enforce_retention(), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

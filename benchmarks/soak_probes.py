"""What the soak watches while the platform runs: memory, flow, and a query load.

- :class:`Sampler` reads, once a second, each stage's resident memory from
  ``/proc/<pid>/status`` (pids from ``up.json``, the supervisor's own record), the
  ingest's and sink's status files (trades captured and committed, degradation level,
  connections) and how many trades the simulator has printed.
- :class:`QueryLoad` is an API client at a steady, modest rate asking the questions
  users ask of a live platform, recording every status code and latency.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from k2.config import Settings
from k2.ops.status_files import read_status, status_path

__all__ = [
    "QUERY_KINDS",
    "QueryLoad",
    "QueryStats",
    "Sample",
    "Sampler",
    "machine_busy_s",
    "read_cpu_s",
    "read_memory",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def read_memory(pid: int | str) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` of process ``pid`` in bytes, or None if it is gone.

    VmHWM is the kernel's own high-water mark of the resident set, so it catches a
    peak between two samples.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # the kernel reports kB
    if "VmRSS" not in values:
        return None  # a zombie has no memory left to report
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def read_cpu_s(pid: int | str) -> float | None:
    """CPU time (user + system, seconds) process ``pid`` has used, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def machine_busy_s() -> float:
    """CPU time (seconds, all cores) this machine has spent running anything since
    boot: user, nice, system, irq and softirq time from ``/proc/stat`` (not idle, I/O
    wait, or time the hypervisor gave to other machines)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = values
    return (user + nice + system + irq + softirq) / _TICKS


@dataclass
class Sample:
    """One second of the soak, ``t`` seconds after the platform was started."""

    t: float
    printed: int
    captured: int | None
    committed: int | None
    connections: int
    level: str | None
    pids: dict[str, int]
    rss: dict[str, int]
    hwm: dict[str, int]
    cpu_s: dict[str, float]
    machine_busy_s: float
    restarts: dict[str, int]


class Sampler:
    """Samples the running platform every ``interval_s`` in a daemon thread.

    ``printed()`` returns how many trades the simulator has printed so far. The stage
    named ``soak`` is this process (the simulator, the probes and the query client).
    """

    def __init__(
        self, settings: Settings, printed: Callable[[], int], *, interval_s: float = 1.0
    ) -> None:
        self._settings = settings
        self._printed = printed
        self._interval_s = interval_s
        self._began = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self.samples: list[Sample] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(self._interval_s):  # the sampling period, not a sync
                return

    def sample(self) -> Sample:
        """Read everything once (also usable from outside the thread)."""
        settings = self._settings
        up = read_status(status_path(settings, "up")) or {}
        stages = up.get("stages") or {}
        pids = {n: int(s["pid"]) for n, s in stages.items() if isinstance(s.get("pid"), int)}
        pids["soak"] = os.getpid()
        rss: dict[str, int] = {}
        hwm: dict[str, int] = {}
        cpu: dict[str, float] = {}
        for name, pid in pids.items():
            memory = read_memory(pid)
            if memory is not None:
                rss[name], hwm[name] = memory
            used = read_cpu_s(pid)
            if used is not None:
                cpu[name] = used
        ingest = read_status(status_path(settings, "ingest")) or {}
        sink = read_status(status_path(settings, "sink")) or {}
        captured = (ingest.get("stats") or {}).get("trades")
        committed = (sink.get("records") or {}).get("trades")
        return Sample(
            t=round(time.monotonic() - self._began, 3),
            printed=self._printed(),
            captured=captured if isinstance(captured, int) else None,
            committed=committed if isinstance(committed, int) else None,
            connections=int(ingest.get("connections") or 0),
            level=(ingest.get("degradation") or {}).get("level_name"),
            pids=pids,
            rss=rss,
            hwm=hwm,
            cpu_s=cpu,
            machine_busy_s=machine_busy_s(),
            restarts={n: int(s.get("restarts") or 0) for n, s in stages.items()},
        )


#: The questions the query load asks, in turn.
QUERY_KINDS = ("recent", "bars", "window")


@dataclass
class QueryStats:
    """Outcomes of one kind of question: latencies (ms) of answered requests, counts of
    status codes, and transport failures (no HTTP answer at all)."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors

    @property
    def server_errors(self) -> int:
        """5xx answers: each one fails the soak."""
        return sum(n for code, n in self.statuses.items() if code >= 500)

    @property
    def other_errors(self) -> int:
        """4xx answers (the questions are valid, so these are reported too)."""
        return sum(n for code, n in self.statuses.items() if 400 <= code < 500)

    def percentile(self, share: float) -> float | None:
        """Latency at ``share`` (0..1) of the answered requests, nearest rank."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.statuses.get(200, 0),
            "server_errors": self.server_errors,
            "other_errors": self.other_errors,
            "transport_errors": self.transport_errors,
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "max_ms": max(self.latencies_ms) if self.latencies_ms else None,
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "examples": self.examples,
        }


class QueryLoad:
    """Asks the API ``per_s`` questions a second in a daemon thread, in turn:

    - ``recent``: ``/v1/trades/recent`` — a random symbol's last minute, newest 100
      (lake + the log's tail);
    - ``bars``: ``/v1/bars`` — 1-minute bars with VWAP over the last 10 minutes;
    - ``window``: ``/v1/trades`` — every trade of a random symbol from 90 s to 30 s ago
      (up to 1,000), a window that straddles the lake and the tail.

    One request at a time, on a fixed schedule: a slow answer delays the next one and
    the missed slots are skipped, so a struggling API is not buried under a backlog.
    """

    def __init__(
        self, base_url: str, key: str, symbols: Sequence[str], *, per_s: float, seed: int
    ) -> None:
        self._base_url = base_url
        self._key = key
        self._symbols = list(symbols)
        self._period_s = 1.0 / per_s
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-queries", daemon=True)
        self.stats = {kind: QueryStats() for kind in QUERY_KINDS}
        self.ready_after_s: float | None = None
        self.failure: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        began = time.monotonic()
        headers = {"X-API-Key": self._key}
        with httpx.Client(base_url=self._base_url, headers=headers, timeout=30) as client:
            if not self._wait_ready(client, began + 120):
                self.failure = "the API did not answer /health within 120 s"
                return
            self.ready_after_s = time.monotonic() - began
            turn = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                kind = QUERY_KINDS[turn % len(QUERY_KINDS)]
                turn += 1
                self._ask(client, kind)
                next_at += self._period_s
                # The load's pace; slots missed behind a slow answer are skipped.
                next_at = max(next_at, time.monotonic())
                self._stop.wait(next_at - time.monotonic())

    def _wait_ready(self, client: httpx.Client, deadline: float) -> bool:
        while not self._stop.is_set():
            try:
                if client.get("/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                return False
            self._stop.wait(0.2)  # polling the API's start, with a deadline
        return False

    def _ask(self, client: httpx.Client, kind: str) -> None:
        symbol = self._rng.choice(self._symbols)
        now = datetime.now(UTC)
        if kind == "recent":
            path = "/v1/trades/recent"
            params: dict[str, str | int] = {"symbol": symbol, "window_minutes": 1, "limit": 100}
        elif kind == "bars":
            path = "/v1/bars"
            params = {"symbol": symbol, "interval": "1m", "start": _iso(now - timedelta(
                minutes=10)), "end": _iso(now + timedelta(minutes=1))}  # fmt: skip
        else:
            path = "/v1/trades"
            params = {"symbol": symbol, "start": _iso(now - timedelta(seconds=90)),
                      "end": _iso(now - timedelta(seconds=30)), "limit": 1000}  # fmt: skip
        stats = self.stats[kind]
        t0 = time.perf_counter()
        try:
            response = client.get(path, params=params)
        except httpx.TransportError as exc:
            stats.transport_errors += 1
            self._example(stats, f"{path}: {type(exc).__name__}: {exc}")
            return
        stats.statuses[response.status_code] += 1
        if response.status_code == 200:
            stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
        else:
            self._example(stats, f"{path} {response.status_code}: {response.text[:200]}")

    @staticmethod
    def _example(stats: QueryStats, text: str) -> None:
        if len(stats.examples) < 5:
            stats.examples.append(text)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

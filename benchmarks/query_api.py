"""The query benchmark's API part: ``GET /v1/trades/recent`` under closed-loop load.

Set-up (continuing :mod:`benchmarks.bench_query`'s run, on its lake overlay and log):

- The server is :func:`k2.api.server.serve` (what ``k2 serve`` runs: uvicorn, the
  engine plus a live tail following the log), in a subprocess configured only through
  ``K2_*`` variables: the run's data directory (lake catalog and embedded log), one
  API key (``K2_API__KEYS``, hashed), no development key, and rate limits raised out of
  the way (the benchmark measures the server, not the limiter). It is measured twice,
  with ``api.workers`` = 1 (what one process sustains) and = the number of cores (how
  this machine is best served; the goal is judged there); ``K2_BENCH_API_WORKERS``
  (e.g. ``1,2``) overrides. Load starts once every worker has answered ``/health``.
- While it runs, live trades keep arriving: a thread produces the 100M table's average
  rate to the log every 100 ms, and a :class:`~k2.lake.sink.LakeSink` thread commits
  them to the lake with its default cadence (every 5 s), so a one-minute window is
  mostly lake plus a few seconds of tail, as in production.
- The load generator is ``CONNECTIONS`` (16) aiohttp clients in this process, each
  sending its next request as soon as the previous answer is read (closed loop) on
  its own keep-alive connection, opened again every ``RECONNECT_EVERY`` (200)
  requests so the load spreads over the workers:
  ``GET /v1/trades/recent?symbol=S&window_minutes=1&limit=100`` with ``S`` uniform over
  the 100 symbols, JSON responses. 2 s of warm-up, then ``SECONDS`` (20) measured.
  It shares the 2 cores with the server (and the feed and sink threads), so the rate
  is a lower bound of what the server alone sustains.

Reported: successful requests/s, p50 and p99 latency, non-200 answers (any fails the
benchmark), mean rows per response (from the JSON ``meta.rows`` of every 50th).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.harness import Result
from benchmarks.query_data import SYMBOLS, Dataset, LiveFeed
from k2.api.auth import key_entry
from k2.lake.sink import LakeSink
from k2.log.topics import TopicLayout
from tests.ports import free_port

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from k2.log.embedded import EmbeddedLog

CONNECTIONS = int(os.environ.get("K2_BENCH_API_CONNECTIONS") or 16)
SECONDS = float(os.environ.get("K2_BENCH_API_SECONDS") or 20.0)
#: Server set-ups measured one after the other: one worker (what one process
#: sustains: the unit of docs/scaling.md's cost model) and one worker per core (how
#: this machine is best served; the goal is judged on it).
WORKERS: tuple[int, ...] = tuple(
    int(w) for w in (os.environ.get("K2_BENCH_API_WORKERS") or "1,2").split(",")
)
GOAL_WORKERS = os.cpu_count() or 1
WARMUP_S = 2.0
#: Requests per connection before a client reconnects (see ``_load``).
RECONNECT_EVERY = 200
GOAL = 1_000.0
PATH = "/v1/trades/recent?symbol={}&window_minutes=1&limit=100"
_SERVE = (
    "from k2.api.server import serve; from k2.config import load_settings; serve(load_settings())"
)


class LiveWriter:
    """Live trades into the log every ``period_s`` and a sink committing them, in threads."""

    def __init__(
        self,
        log: EmbeddedLog,
        catalog: Catalog,
        feed: LiveFeed,
        since_us: int,
        period_s: float = 0.1,
    ) -> None:
        self._log, self._feed, self._last, self._period = log, feed, since_us, period_s
        self._layout = TopicLayout()
        self._stop = threading.Event()
        self._sink = LakeSink(log, catalog, self._layout, group="bench-sink")
        self._threads = [
            threading.Thread(target=self._guard, args=(self._produce,), daemon=True),
            threading.Thread(target=self._guard, args=(self._sink_run,), daemon=True),
        ]
        self._errors: list[BaseException] = []
        self.produced = 0

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # re-raised in __exit__: the run must not pass silently
            self._errors.append(exc)
            self._stop.set()

    def _sink_run(self) -> None:
        self._sink.run(self._stop)

    def _produce(self) -> None:
        topic = self._layout.data_topic("trade")
        while not self._stop.wait(self._period):
            now = time.time_ns() // 1000
            batch, _ = self._feed.between(self._last, now)
            self._last = now
            for part in batch.to_batches():
                self._log.produce(topic, part)
            self.produced += batch.num_rows

    def __enter__(self) -> LiveWriter:
        # Catch up from the end of the hybrid set-up to now in one go first.
        now = time.time_ns() // 1000
        batch, _ = self._feed.between(self._last, now)
        self._last = now
        for part in batch.to_batches(50_000):
            self._log.produce(self._layout.data_topic("trade"), part)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self._sink.close()
        if self._errors:
            raise RuntimeError("the live feed or sink failed") from self._errors[0]


def _server_env(run_dir: Path, port: int, key: str, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env.update(
        {
            "K2_DATA_DIR": str(run_dir),
            "K2_LOG__DURABILITY": "normal",
            "K2_API__HOST": "127.0.0.1",
            "K2_API__PORT": str(port),
            "K2_API__KEYS": key_entry("bench", key),
            "K2_API__DEV_KEY": "false",
            "K2_API__WORKERS": str(workers),
            "K2_API__RATE_LIMIT_PER_S": "1000000000",
            "K2_API__RATE_LIMIT_BURST": "1000000000",
            "K2_LOGGING__LEVEL": "WARNING",
        }
    )
    return env


async def _wait_healthy(
    base: str, proc: subprocess.Popen[bytes], timeout_s: float, workers: int
) -> None:
    """Until ``workers`` distinct worker processes have answered ``/health`` (each on a
    new connection): the load's keep-alive connections must not all land on the first
    worker up."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the API server exited with {proc.returncode}")
            try:
                async with session.get(base + "/health") as response:
                    if response.status == 200:
                        seen.add(int((await response.json())["pid"]))
                        if len(seen) >= workers:
                            return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # polling a server we started; no event to wait on
    raise RuntimeError(
        f"{len(seen)} of {workers} API worker(s) answered /health within {timeout_s:.0f} s"
    )


async def _load(base: str, key: str, seed: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    rng = np.random.default_rng(seed)
    picks = [SYMBOLS[int(i)] for i in rng.integers(len(SYMBOLS), size=1 << 16)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    rows: list[int] = []
    counter = 0
    began = time.perf_counter()
    measure_from, stop_at = began + WARMUP_S, began + WARMUP_S + seconds
    headers = {"X-API-Key": key, "Accept": "application/json"}

    async def client() -> None:
        # One connection per client, opened again every RECONNECT_EVERY requests: with
        # several workers sharing the listening socket, whichever worker accepts keeps
        # a keep-alive connection for good, so 16 connections opened at once can all
        # land on one worker; reconnecting lets the less busy worker take its share.
        nonlocal counter
        while time.perf_counter() < stop_at:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                for _ in range(RECONNECT_EVERY):
                    if (tick := time.perf_counter()) >= stop_at:
                        break
                    counter += 1
                    sample = counter % 50 == 0
                    url = base + PATH.format(picks[counter & 0xFFFF])
                    async with session.get(url) as response:
                        body = await (
                            response.json()
                            if sample and response.status == 200
                            else response.read()
                        )
                    done = time.perf_counter()
                    if tick >= measure_from and done <= stop_at:
                        latencies.append((done - tick) * 1e3)
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                        if sample and isinstance(body, dict):
                            rows.append(int(body["meta"]["rows"]))

    await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
    return {"latencies": latencies, "statuses": statuses, "rows": rows}


def run(
    dataset: Dataset,
    run_dir: Path,
    log: EmbeddedLog,
    catalog: Catalog,
    feed: LiveFeed,
    since_us: int,
    *,
    seconds: float = SECONDS,
) -> list[Result]:
    """Serve the run's lake and log and measure recent-trades requests (module doc),
    ``seconds`` of load after the warm-up, once per entry of :data:`WORKERS`."""
    results: list[Result] = []
    with LiveWriter(log, catalog, feed, since_us) as writer:
        for workers in WORKERS:
            before = writer.produced
            got = _measure(dataset, run_dir, workers, seconds)
            results.append(_result(got, workers, seconds, writer.produced - before))
    return results


def _measure(dataset: Dataset, run_dir: Path, workers: int, seconds: float) -> dict[str, Any]:
    key = secrets.token_urlsafe(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = run_dir / f"server-{workers}.log"
    out = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE],
        env=_server_env(run_dir, port, key, workers),
        cwd=run_dir,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        asyncio.run(_wait_healthy(base, proc, 120, workers))
        got = asyncio.run(_load(base, key, int(dataset.manifest["seed"]), seconds))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
    bad = {s: n for s, n in got["statuses"].items() if s != 200}
    if bad:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"API answered {bad} (status: count); server log ends:\n{tail}")
    return got


def _result(got: dict[str, Any], workers: int, seconds: float, produced: int) -> Result:
    latencies = got["latencies"]
    rate = len(latencies) / seconds
    rows = float(np.mean(got["rows"])) if got["rows"] else 0.0
    judged = workers == GOAL_WORKERS
    return Result(
        f"API GET /v1/trades/recent (window 1 min, limit 100), {workers} worker"
        + ("s" if workers > 1 else ""),
        "requests/s",
        [rate],
        goal=GOAL if judged else None,
        notes=(
            f"{CONNECTIONS} closed-loop connections, {seconds:.0f} s, {workers} uvicorn "
            f"worker(s) (api.workers){'; the goal is judged here: one per core' if judged else ''}"
            f"; {rows:.0f} rows per response on average; {produced:,} live trades produced "
            "and sunk meanwhile"
        ),
        extra={
            "kind": "api",
            "p50": f"{np.percentile(latencies, 50):.1f}",
            "p99": f"{np.percentile(latencies, 99):.1f}",
            "requests": str(len(latencies)),
        },
    )


def render(results: list[Result]) -> str:
    """The API results as a Markdown table."""
    lines = [
        "| API | requests/s | p50 | p99 | requests | goal | met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        if r.extra.get("kind") == "recent":
            p50, p99 = np.percentile(r.runs, 50), np.percentile(r.runs, 99)
            lines.append(
                f"| {r.name} (window 1 min, limit 100; one thread, no HTTP) "
                f"| {1e3 / np.mean(r.runs):,.0f} | {p50:.1f} ms | {p99:.1f} ms | {len(r.runs):,} "
                "| – | – |"
            )
            continue
        goal = f"≥ {r.goal:,.0f}/s" if r.goal is not None else "–"
        met = "–" if r.goal is None else "yes" if r.meets_goal else "**no**"
        lines.append(
            f"| {r.name} | {r.median:,.0f} | {r.extra['p50']} ms | {r.extra['p99']} ms | "
            f"{int(r.extra['requests']):,} | {goal} | {met} |"
        )
    notes = [f"- **{r.name}**: {r.notes}" for r in results if r.extra.get("kind") == "api"]
    return "\n".join([*lines, "", *notes])

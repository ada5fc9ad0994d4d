"""``make soak``: the whole platform under sustained load and faults, then an exact audit.

    python -m benchmarks.soak                 # 10 minutes (make soak)
    python -m benchmarks.soak --short         # 1 minute  (make soak SOAK_ARGS=--short)
    python -m benchmarks.soak --minutes 60 --rate 20000 --symbols 100

The simulator runs in this process at ``--rate`` trades/s over ``--symbols`` symbols
with faults on (:mod:`benchmarks.soak_market`); ingest, sink and API run as ``k2 up``
runs them, in a fresh data directory; a client queries the API throughout and every
stage's memory is sampled (:mod:`benchmarks.soak_probes`). After a clean stop the lake
is audited trade by trade against the simulator's history (:mod:`benchmarks.soak_check`)
and the results replace the soak block of BENCHMARKS.md (:mod:`benchmarks.soak_report`).
The exit status is 1 if anything was lost or duplicated, a stage restarted, the API
answered 5xx, or (runs of 5 minutes or more) memory grew past the bound; 2 if the soak
could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from benchmarks.soak_check import check_lake, lake_gap_statuses
from benchmarks.soak_market import (
    DROP,
    DUPLICATE,
    REST_429_EVERY,
    soak_faults,
    soak_simulator,
)
from benchmarks.soak_probes import QueryLoad, Sample, Sampler
from benchmarks.soak_report import (
    INGEST_BACKLOG_S,
    LAKE_BACKLOG_S,
    SoakResult,
    cpu_summary,
    memory_summary,
    render,
    write_section,
)
from k2.api.auth import key_entry
from k2.config import load_settings
from k2.errors import ConfigError, K2Error, TransientError
from k2.ops.log import configure_logging
from k2.ops.status import gather
from k2.ops.status_files import read_status, status_path
from k2.ops.up import Platform, stage_specs
from k2.simulator import SimulatorServer

__all__ = ["SoakOptions", "main", "run_soak"]

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
#: Longest wait for the ingest's first connection to the simulator.
CONNECT_DEADLINE_S = 120.0
#: The stop may take long after a heavy run: the sink drains what the log holds.
DRAIN_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 10.0
_LEVELS = ("NORMAL", "SOFT", "GRACEFUL", "AGGRESSIVE", "CIRCUIT_BREAK")

Say = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class SoakOptions:
    """One soak's parameters (see ``--help``)."""

    duration_s: float = 600.0
    rate: float = 20_000.0
    symbols: int = 100
    quote_ratio: float = 0.0
    queries_per_s: float = 5.0
    seed: int = 1
    drop: float = DROP
    duplicate: float = DUPLICATE
    disconnect_every_s: float | None = None
    rest_429_every: int = REST_429_EVERY
    data_dir: Path | None = None
    keep_data: bool = False

    @property
    def streams(self) -> list[str]:
        """What the ingest subscribes to: quotes only when the market makes any."""
        return ["trade", "quote"] if self.quote_ratio > 0 else ["trade"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data_dir(options: SoakOptions) -> Path:
    if options.data_dir is None:
        return Path(tempfile.mkdtemp(prefix="k2-soak-"))
    path = options.data_dir
    if path.exists() and any(path.iterdir()):
        raise ConfigError(
            f"--data-dir {path} is not empty: the audit needs a lake holding only this "
            "run's trades; name a new or empty directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stage_env(
    sim: SimulatorServer, symbols: Sequence[str], options: SoakOptions, api_port: int, key: str
) -> dict[str, str]:
    """What the stages get on top of the environment: the simulator as the exchange,
    the soak's symbols, a fixed API port and key, metrics on any free port."""
    return {
        "K2_BINANCE__WS_URL": sim.ws_url,
        "K2_BINANCE__REST_URL": sim.rest_url,
        "K2_CAPTURE__SYMBOLS": ",".join(symbols),
        "K2_CAPTURE__STREAMS": ",".join(options.streams),
        "K2_API__PORT": str(api_port),
        "K2_API__KEYS": key_entry("soak", key),
        "K2_API__DEV_KEY": "false",
        "K2_OPS__INGEST_METRICS_PORT": "0",
        "K2_OPS__SINK_METRICS_PORT": "0",
        "K2_LOGGING__LEVEL": "WARNING",
    }


async def run_soak(options: SoakOptions, command: str, say: Say) -> SoakResult:
    """Run one soak and return what it measured (the caller decides what to write)."""
    data_dir = _data_dir(options)
    settings = load_settings(
        data_dir=data_dir,
        ops={"drain_timeout_s": DRAIN_TIMEOUT_S, "stop_timeout_s": STOP_TIMEOUT_S},
    )
    sim_config = soak_simulator(
        symbols=options.symbols, trade_rate=options.rate, quote_ratio=options.quote_ratio,
        seed=options.seed,
        faults=soak_faults(
            options.duration_s, options.seed, drop=options.drop, duplicate=options.duplicate,
            disconnect_every_s=options.disconnect_every_s,
            rest_429_every=options.rest_429_every,
        ),
    )  # fmt: skip
    symbols = [s.symbol for s in sim_config.symbols]
    load_start = list(os.getloadavg())
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        async with SimulatorServer(sim_config) as sim:
            key = secrets.token_urlsafe(24)
            api_port = _free_port()
            specs = stage_specs(settings, stages=("ingest", "sink", "api"))
            for spec in specs:
                spec.env.update(_stage_env(sim, symbols, options, api_port, key))
            say(f"soak: simulator at {sim.ws_url}, {len(symbols)} symbols, "
                f"{options.rate:,.0f} trades/s; platform data in {data_dir}")  # fmt: skip
            supervisor: list[str] = []
            began = time.monotonic()
            platform = Platform(
                settings,
                specs,
                say=lambda line: supervisor.append(f"+{time.monotonic() - began:.1f} s {line}"),
            )
            history = sim.trades
            sampler = Sampler(settings, lambda: sum(history.count(s) for s in symbols))
            queries = QueryLoad(f"http://127.0.0.1:{api_port}", key, symbols,
                                per_s=options.queries_per_s, seed=options.seed)  # fmt: skip
            run = _Run(platform, sampler, queries)
            try:
                run.start()
                first = await _until_connected(sampler)
                started = {s: history.last_id(s) for s in symbols}
                await _stream(options.duration_s, first, sampler, queries, say)
                last = sampler.sample()
                stopped = {s: history.last_id(s) for s in symbols}
            finally:
                say("soak: stopping (capture first, then the sink drains the log) …")
                stop_s = await _in_thread(run.stop)
            describe = platform.describe()
            ingest_status = read_status(status_path(settings, "ingest")) or {}
        say("soak: auditing the lake against the simulator's history …")
        check = await _in_thread(
            lambda: check_lake(settings, sim.trades, symbols, started=started, stopped=stopped)
        )
        status = await _in_thread(lambda: gather(settings))
        gaps = await _in_thread(lambda: lake_gap_statuses(settings))
    finally:
        if options.data_dir is None and not options.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    ingest = dict(ingest_status.get("stats") or {})
    flow = _flow(first, last, sampler.samples, stop_s, ingest)
    stages = describe["stages"]
    return SoakResult(
        command=command,
        started_at=started_at,
        duration_s=last.t - first.t,
        symbols=len(symbols),
        target_rate=options.rate,
        quote_ratio=options.quote_ratio,
        streams=options.streams,
        faults=asdict(sim_config.faults),
        simulator=sim.stats.snapshot(),
        ingest=ingest,
        stream=dict(ingest_status.get("stream") or {}),
        flow=flow,
        memory=memory_summary(sampler.samples, last.t),
        cpu=cpu_summary(sampler.samples, first.t, last.t),
        queries={kind: stats.summary() for kind, stats in queries.stats.items()},
        query_failure=queries.failure,
        restarts={name: int(info["restarts"]) for name, info in stages.items()},
        exits={name: info["last_exit"] for name, info in stages.items()},
        check=check.as_dict(),
        gaps=gaps,
        dead_letters=sum(status.dead_letters.values()),
        degradation_max=_highest_level(sampler.samples),
        load={"start": load_start, "end": list(os.getloadavg())},
        supervisor=supervisor,
    )


async def _in_thread(work: Callable[[], T]) -> T:
    """``work()`` in a thread of its own, awaited without blocking the event loop.

    Not ``asyncio.to_thread``: an executor's ``submit`` takes a lock that the
    supervisor's ``fork`` (starting a stage with ``preexec_fn``) takes too, and the two
    racing from different threads fails with "release unlocked lock" (seen here).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            value = work()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, value, None)

    threading.Thread(target=run, name="soak-work", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(cast(T, value))


class _Run:
    """The platform (in a supervisor thread) and the probes, started and stopped together."""

    def __init__(self, platform: Platform, sampler: Sampler, queries: QueryLoad) -> None:
        self._sampler = sampler
        self._queries = queries
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=platform.run, args=(self._stop,), name="soak-platform", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        self._sampler.start()
        self._queries.start()

    def stop(self) -> float:
        """Stop the queries, then the platform (clean stop, drained); returns how long
        the platform took to stop, in seconds."""
        self._queries.stop()
        began = time.monotonic()
        self._stop.set()
        self._thread.join()
        took = time.monotonic() - began
        self._sampler.stop()
        return took


async def _until_connected(sampler: Sampler) -> Sample:
    """The first sample in which the ingest reports a connection to the simulator."""
    deadline = time.monotonic() + CONNECT_DEADLINE_S
    while True:
        sample = sampler.sample()  # a few small files: quick enough for the loop
        if sample.connections > 0:
            return sample
        if time.monotonic() > deadline:
            raise TransientError(
                f"the ingest did not connect to the simulator within {CONNECT_DEADLINE_S:.0f} "
                "s; see the stage logs in the run directory (--keep-data keeps them)"
            )
        await asyncio.sleep(0.2)  # polling the ingest's status file, with a deadline


async def _stream(
    seconds: float, first: Sample, sampler: Sampler, queries: QueryLoad, say: Say
) -> None:
    """Let the platform run for ``seconds`` after ``first``, reporting progress."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(PROGRESS_EVERY_S, left))  # the soak's own duration
        if sampler.samples:
            say(_progress(first, sampler.samples[-1], queries))


def _progress(first: Sample, now: Sample, queries: QueryLoad) -> str:
    span = max(1e-9, now.t - first.t)
    offered = (now.printed - first.printed) / span
    captured = ((now.captured or 0) - (first.captured or 0)) / span
    committed = ((now.committed or 0) - (first.committed or 0)) / span
    rss = ", ".join(f"{k} {v / 2**20:,.0f} MB" for k, v in sorted(now.rss.items()))
    asked = sum(s.requests for s in queries.stats.values())
    failed = sum(s.server_errors + s.transport_errors for s in queries.stats.values())
    return (
        f"soak: {span:5.0f} s  offered {offered:,.0f}/s  log {captured:,.0f}/s  "
        f"lake {committed:,.0f}/s  level {now.level or '-'}  RSS {rss}  "
        f"queries {asked:,} ({failed} failed)"
    )


def _flow(
    first: Sample,
    last: Sample,
    samples: Sequence[Sample],
    stop_s: float,
    ingest: dict[str, Any],
) -> dict[str, float | bool | int]:
    span = max(1e-9, last.t - first.t)
    offered = last.printed - first.printed
    captured = (last.captured or 0) - (first.captured or 0)
    committed = (last.committed or 0) - (first.committed or 0)
    per_second = [
        (b.printed - a.printed) / (b.t - a.t)
        for a, b in itertools.pairwise(samples)
        if first.t <= a.t and b.t <= last.t and b.t > a.t
    ]
    rate = offered / span
    ingest_backlog = max(0, offered - captured)
    lake_backlog = max(0, offered - committed)
    shed = int(ingest.get("trades_shed") or 0)
    return {
        "offered_per_s": rate,
        "peak_offered_per_s": max(per_second, default=rate),
        "captured_per_s": captured / span,
        "committed_per_s": committed / span,
        "ingest_backlog": ingest_backlog,
        "ingest_backlog_s": ingest_backlog / rate if rate else 0.0,
        "lake_backlog": lake_backlog,
        "lake_backlog_s": lake_backlog / rate if rate else 0.0,
        "log_not_in_lake": max(0, captured - committed),
        "sustained": bool(
            rate
            and ingest_backlog / rate < INGEST_BACKLOG_S
            and lake_backlog / rate < LAKE_BACKLOG_S
            and shed == 0
        ),
        "trades_shed": shed,
        "stop_s": stop_s,
    }


def _highest_level(samples: Sequence[Sample]) -> str:
    seen = [s.level for s in samples if s.level in _LEVELS]
    return max(seen, key=_LEVELS.index, default="NORMAL")


def _options(argv: Sequence[str] | None) -> tuple[SoakOptions, bool, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0]
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    length.add_argument("--short", action="store_true", help="1 minute")
    length.add_argument("--seconds", type=float, help="how long, in seconds")
    parser.add_argument("--rate", type=float, default=20_000.0, help="trades/s offered in all")
    parser.add_argument("--symbols", type=int, default=100, help="symbols (default 100)")
    parser.add_argument(
        "--quote-ratio", type=float, default=0.0,
        help="bookTicker updates per trade (default 0: trades only; >0 also captures quotes)",
    )  # fmt: skip
    parser.add_argument("--queries-per-s", type=float, default=5.0, help="API questions/s")
    parser.add_argument("--seed", type=int, default=1, help="seed of the market and faults")
    parser.add_argument("--drop", type=float, default=DROP, help="share of frames dropped")
    parser.add_argument(
        "--duplicate", type=float, default=DUPLICATE, help="share of frames sent twice"
    )
    parser.add_argument(
        "--disconnect-every", type=float,
        help="cut each connection after this many seconds (default: a fifth of the run, "
        "15 to 60 s)",
    )  # fmt: skip
    parser.add_argument(
        "--rest-429-every", type=int, default=REST_429_EVERY,
        help="answer every n-th REST request with 429",
    )  # fmt: skip
    parser.add_argument("--data-dir", type=Path, help="new or empty directory for the data")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data")
    parser.add_argument("--no-write", action="store_true", help="print; leave BENCHMARKS.md")
    parser.add_argument("--json", type=Path, help="also write the full result as JSON here")
    args = parser.parse_args(argv)
    seconds = 60.0 if args.short else args.seconds if args.seconds else args.minutes * 60
    if not seconds > 0 or not args.queries_per_s > 0:
        parser.error("the duration and --queries-per-s must be positive")
    options = SoakOptions(
        duration_s=seconds, rate=args.rate, symbols=args.symbols,
        quote_ratio=args.quote_ratio, queries_per_s=args.queries_per_s, seed=args.seed,
        drop=args.drop, duplicate=args.duplicate, disconnect_every_s=args.disconnect_every,
        rest_429_every=args.rest_429_every,
        data_dir=args.data_dir, keep_data=args.keep_data,
    )  # fmt: skip
    return options, args.no_write, args.json


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak from the command line; the exit status says whether it passed."""
    options, no_write, json_path = _options(argv)
    configure_logging("console", "ERROR")
    args = list(argv if argv is not None else sys.argv[1:])
    command = shlex.join(["python", "-m", "benchmarks.soak", *args])
    if os.environ.get("MAKELEVEL"):  # run by `make soak`: say so, as a reader would type it
        make = "make soak" + (f" SOAK_ARGS={shlex.quote(shlex.join(args))}" if args else "")
        command = f"{make}, i.e. {command}"

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = asyncio.run(run_soak(options, command, say))
    except K2Error as exc:
        say(f"soak: cannot run: {exc}")
        return 2
    block = render(result)
    print(block)
    if json_path is not None:
        json_path.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    if not no_write:
        write_section(BENCHMARKS_MD, result.block, block)
        say(f"soak: results written to the {result.block!r} block of {BENCHMARKS_MD}")
    for line in result.supervisor:
        if "exited" in line or "did not stop" in line or "still in the log" in line:
            say(f"soak: supervisor said: {line}")
    say(f"soak: {'PASSED' if result.passed else 'FAILED'} {result.verdicts}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

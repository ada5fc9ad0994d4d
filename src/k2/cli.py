"""``k2``: one command-line app for every K2 stage.

The commands are thin: they parse options, load settings and call service functions
(``k2.capture.service``, ``k2.simulator``), so the same behaviour is reachable from
Python. Settings come from ``K2_*`` variables and ``k2.toml``; options override them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from k2 import __version__
from k2.config import Settings, load_settings
from k2.errors import ConfigError, K2Error
from k2.ops.log import configure_logging

app = typer.Typer(
    name="k2",
    help="K2: capture crypto market data into a durable log and an Iceberg lake.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LogFormatOpt = Annotated[
    str | None, typer.Option("--log-format", help="console or json (K2_LOGGING__FORMAT)")
]
LogLevelOpt = Annotated[
    str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING... (K2_LOGGING__LEVEL)")
]


def _settings(
    log_format: str | None, log_level: str | None, **sections: dict[str, Any]
) -> Settings:
    """Settings from env/k2.toml, with the options a user gave on top; logging set up."""
    base = load_settings()
    merged = base.model_dump()
    changed = False
    for name, values in {**sections, "logging": {"format": log_format, "level": log_level}}.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            merged[name].update(given)
            changed = True
    settings = load_settings(**merged) if changed else base
    configure_logging(settings.logging.format, settings.logging.level)
    return settings


def _fail(exc: K2Error) -> None:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print K2's version.")] = False,
) -> None:
    from k2.ops.up import die_with_supervisor

    die_with_supervisor()
    if version:
        typer.echo(f"k2 {__version__}")
        raise typer.Exit()


SymbolsOpt = Annotated[
    str | None, typer.Option("--symbols", help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT.")
]
StreamsOpt = Annotated[
    str | None, typer.Option("--streams", help="Comma-separated data types: trade, quote.")
]
WsUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--ws-url", help="WebSocket base URL (live Binance by default; testnet; simulator)."
    ),
]
RestUrlOpt = Annotated[
    str | None, typer.Option("--rest-url", help="REST base URL matching --ws-url.")
]
MaxSecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--max-seconds", help="Stop cleanly after this many seconds, flushing everything."
    ),
]
MicrosOpt = Annotated[
    bool | None,
    typer.Option("--micros/--millis", help="Ask Binance for microsecond timestamps."),
]


def _capture_settings(
    symbols: str | None, streams: str | None, ws_url: str | None, rest_url: str | None,
    micros: bool | None, log_format: str | None, log_level: str | None,
    **sections: dict[str, Any],
) -> Settings:  # fmt: skip
    return _settings(
        log_format,
        log_level,
        capture={"symbols": symbols, "streams": streams},
        binance={"ws_url": ws_url, "rest_url": rest_url, "micros": micros},
        **sections,
    )


def _print_summary(result: Any) -> None:
    summary = {"seconds": round(result.seconds, 3), **result.stats.as_dict()}
    summary["websocket"] = result.stream
    print(json.dumps(summary, indent=2), file=sys.stderr)


@app.command()
def capture(
    symbols: SymbolsOpt = None,
    streams: StreamsOpt = None,
    ws_url: WsUrlOpt = None,
    rest_url: RestUrlOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="NDJSON file to append to (default: stdout).")
    ] = None,
    max_seconds: MaxSecondsOpt = None,
    micros: MicrosOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Capture trades and best bid/ask as canonical NDJSON records.

    Runs source → validation → dedup → gap repair. Each output line has a "type":
    trade, quote, reject (with reason and raw payload) or gap (with its repair).
    A summary goes to stderr. Ctrl-C stops cleanly.
    """
    from k2.capture.service import capture as run_capture

    try:
        settings = _capture_settings(symbols, streams, ws_url, rest_url, micros, log_format,
                                     log_level)  # fmt: skip
        result = asyncio.run(run_capture(settings, out, max_seconds=max_seconds))
    except K2Error as exc:
        _fail(exc)
        return
    _print_summary(result)


@app.command()
def ingest(
    symbols: SymbolsOpt = None,
    streams: StreamsOpt = None,
    ws_url: WsUrlOpt = None,
    rest_url: RestUrlOpt = None,
    max_seconds: MaxSecondsOpt = None,
    micros: MicrosOpt = None,
    log_backend: Annotated[
        str | None, typer.Option(help="embedded (default) or kafka (K2_LOG__BACKEND).")
    ] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (K2_LOG__BOOTSTRAP_SERVERS).")
    ] = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Capture into the durable log: the capture pipeline, writing to topics.

    Trades and quotes go to market.crypto.{trades,quotes}.binance keyed by symbol,
    rejected frames to the .dlq topic of their data type, gaps to
    market.crypto.gaps.binance. A batch is taken from the exchange only after the log
    has made the previous one durable. Ctrl-C stops cleanly.
    """
    from k2.capture.service import ingest as run_ingest

    try:
        settings = _capture_settings(
            symbols, streams, ws_url, rest_url, micros, log_format, log_level,
            log={"backend": log_backend, "bootstrap_servers": bootstrap_servers},
        )  # fmt: skip
        result = asyncio.run(run_ingest(settings, max_seconds=max_seconds))
    except K2Error as exc:
        _fail(exc)
        return
    _print_summary(result)


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 9443,
    replay: Annotated[
        str | None,
        typer.Option(help="Replay a capture file (or 'builtin') instead of a synthetic market."),
    ] = None,
    speed: Annotated[float, typer.Option(help="Replay speed; 0 = as fast as possible.")] = 1.0,
    rate: Annotated[
        float | None, typer.Option(help="Synthetic: total events/s across all symbols.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic market and faults.")] = 0,
    drop: Annotated[float, typer.Option(help="Share of frames to drop.")] = 0.0,
    duplicate: Annotated[float, typer.Option(help="Share of frames to send twice.")] = 0.0,
    reorder: Annotated[float, typer.Option(help="Share of frames to deliver late.")] = 0.0,
    malformed: Annotated[float, typer.Option(help="Share of frames to corrupt.")] = 0.0,
    disconnect_every: Annotated[
        float | None, typer.Option(help="Drop each connection after this many seconds.")
    ] = None,
    max_disconnects: Annotated[
        int | None, typer.Option(help="Stop forcing disconnects after this many.")
    ] = None,
    stall_every: Annotated[
        float | None, typer.Option(help="Pause sending every this many seconds.")
    ] = None,
    stall_seconds: Annotated[float, typer.Option(help="Length of each pause.")] = 1.0,
    server_shutdown_after: Annotated[
        float | None, typer.Option(help="Send serverShutdown this long after connecting.")
    ] = None,
    rest_429: Annotated[float, typer.Option(help="Share of REST requests answered 429.")] = 0.0,
    continue_ids: Annotated[
        bool,
        typer.Option(
            "--continue-ids",
            help="Synthetic: number trades from the wall clock, so a restarted simulator "
            "never reuses an earlier run's ids.",
        ),
    ] = False,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run K2's local exchange simulator (Binance's WebSocket and REST protocol).

    Synthetic market by default (BTCUSDT ETHUSDT BNBUSDT ADAUSDT DOGEUSDT), or a replay
    of a real capture. Point `k2 capture --ws-url ws://HOST:PORT --rest-url
    http://HOST:PORT` at it. Runs until Ctrl-C.
    """
    from k2.simulator import FaultConfig, SimulatorConfig, run_simulator

    try:
        _settings(log_format, log_level)
        faults = FaultConfig(
            seed=seed, drop=drop, duplicate=duplicate, reorder=reorder, malformed=malformed,
            disconnect_every_s=disconnect_every, max_disconnects=max_disconnects,
            stall_every_s=stall_every, stall_s=stall_seconds,
            server_shutdown_after_s=server_shutdown_after, rest_429_share=rest_429,
        )  # fmt: skip
        config = SimulatorConfig(
            host=host, port=port, mode="replay" if replay else "synthetic",
            replay_path=replay, speed=speed, rate=rate, seed=seed, faults=faults,
            continue_ids=continue_ids,
        )  # fmt: skip
    except K2Error as exc:
        _fail(exc)
        return

    def ready(server: Any) -> None:
        typer.echo(f"simulator listening: ws {server.ws_url}  rest {server.rest_url}", err=True)

    try:
        asyncio.run(run_simulator(config, ready=ready))
    except KeyboardInterrupt:
        pass
    except K2Error as exc:
        _fail(exc)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long to stream.")] = 20.0,
    log_level: LogLevelOpt = "ERROR",
) -> None:
    """The whole platform on the local simulator (faults on), then a tour of the run.

    Starts the simulator, then ingest, sink and API as `k2 up` runs them; streams for
    SECONDS; times a hybrid query through the REST API; stops cleanly and shows what
    was captured (checked against the simulator), repairs, snapshots, a query, bars,
    latency and health. The data stays in DATA_DIR for `k2 query`.
    """
    from k2.demo import run_demo

    try:
        settings = _settings(None, log_level)
        asyncio.run(run_demo(settings, seconds=seconds))
    except K2Error as exc:
        _fail(exc)


@app.command()
def up(
    simulate: Annotated[
        bool,
        typer.Option("--simulate", help="Capture from K2's local exchange simulator, not Binance."),
    ] = False,
    simulator_port: Annotated[int, typer.Option(help="--simulate: the simulator's port.")] = 9443,
    simulator_rate: Annotated[
        float | None, typer.Option(help="--simulate: total events/s (default: its own).")
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(help="Run only these stages, comma-separated: ingest,sink,api."),
    ] = None,
    max_seconds: MaxSecondsOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run the whole platform, supervised: capture → log → lake sink → query API.

    Each stage is its own process (the same as `k2 ingest`, `k2 sink`, `k2 serve`),
    restarted with backoff if it fails; output goes to DATA_DIR/run/<stage>.log. Live
    Binance by default; if it cannot be reached, K2 says so, keeps retrying and
    suggests --simulate. Ctrl-C/SIGTERM stops the capture first, lets the sink commit
    what the log holds, then stops the rest; a restart resumes with nothing lost.
    """
    import signal
    import threading

    from k2.ops.up import Platform, stage_specs

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        settings = _settings(None, log_level)
        stages = [s.strip() for s in only.split(",") if s.strip()] if only else None
        if stages is not None and simulate:
            stages.append("simulator")
        specs = stage_specs(
            settings, simulate=simulate, simulator_port=simulator_port,
            simulator_rate=simulator_rate, stages=stages,
        )  # fmt: skip
        where = "the local simulator" if simulate else settings.binance.ws_url
        typer.echo(
            f"K2 up: {', '.join(s.name for s in specs)} (capturing from {where}; data in "
            f"{settings.data_dir}; API on http://{settings.api.host}:{settings.api.port}). "
            "Ctrl-C stops cleanly.",
            err=True,
        )
        Platform(settings, specs).run(stop, max_seconds=max_seconds)
    except K2Error as exc:
        _fail(exc)
    typer.echo("K2 stopped.", err=True)


@app.command()
def status(
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """The platform at a glance: stages, lag, last commits, gaps, dead letters,
    degradation level and circuit breakers (works whether or not `k2 up` runs)."""
    from rich.console import Console

    from k2.ops.status import gather, render

    try:
        settings = _settings(None, "WARNING")
        report = gather(settings)
    except K2Error as exc:
        _fail(exc)
        return
    if fmt == "json":
        print(json.dumps(report.as_dict(), indent=2, default=str))
    elif fmt == "table":
        Console().print(render(report))
    else:
        _fail(ConfigError(f"--format {fmt!r}: use table or json"))


chaos_app = typer.Typer(
    help="Fault experiments on a running platform (`k2 up`, preferably --simulate): "
    "each injects one fault, watches K2 react and recover, and reports what it saw.",
    no_args_is_help=True,
)
app.add_typer(chaos_app, name="chaos")
ChaosFormatOpt = Annotated[str, typer.Option("--format", help="text or json.")]


def _chaos(run: Any, fmt: str) -> None:
    """Run one experiment (progress on stderr), print its result, exit 1 unless K2
    recovered."""
    from k2.ops import chaos

    try:
        settings = _settings(None, "WARNING")
        result = run(chaos, settings, lambda line: typer.echo(line, err=True))
    except K2Error as exc:
        _fail(exc)
        return
    body = result.as_dict()
    if fmt == "json":
        print(json.dumps(body, indent=2, default=str))
    else:
        for key, value in body.items():
            if not isinstance(value, list):
                typer.echo(f"{key}: {value}")
    if not body.get("recovered", True):
        raise typer.Exit(code=1)


@chaos_app.command("high-lag")
def chaos_high_lag(
    seconds: Annotated[float, typer.Option(help="How long the sink is paused.")] = 30.0,
    fmt: ChaosFormatOpt = "text",
) -> None:
    """Pause the lake sink (SIGSTOP) so the log lag grows: the capture degrades level by
    level and sheds by priority; resumed, it steps back down and backfills the shed."""
    _chaos(lambda c, st, say: c.high_lag(st, seconds, say=say), fmt)


@chaos_app.command("kill-sink")
def chaos_kill_sink(fmt: ChaosFormatOpt = "text") -> None:
    """SIGKILL the lake sink: k2 up restarts it and the lake catches up, exactly once."""
    _chaos(lambda c, st, say: c.kill_sink(st, say=say), fmt)


@chaos_app.command("disconnect-exchange")
def chaos_disconnect_exchange(
    seconds: Annotated[float, typer.Option(help="How long the exchange refuses.")] = 10.0,
    fmt: ChaosFormatOpt = "text",
) -> None:
    """Cut every WebSocket to the simulator and refuse new ones for a while (needs
    `k2 up --simulate`): the capture reconnects with backoff and repairs the gap."""
    _chaos(lambda c, st, say: c.disconnect_exchange(st, seconds, say=say), fmt)


@chaos_app.command("slow-storage")
def chaos_slow_storage(
    delay: Annotated[float, typer.Option(help="Seconds added before each lake commit.")] = 6.0,
    seconds: Annotated[float, typer.Option(help="How long storage stays slow.")] = 30.0,
    fmt: ChaosFormatOpt = "text",
) -> None:
    """Make every lake commit slow for a while: lag builds up, the capture degrades,
    and everything recovers once storage is fast again."""
    _chaos(lambda c, st, say: c.slow_storage(st, delay, seconds, say=say), fmt)


dlq_app = typer.Typer(
    help="Dead letters: rejected frames kept with their reason and raw payload.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

DataTypeOpt = Annotated[
    str | None, typer.Option("--data-type", help="trade, quote or frames (unreadable frames).")
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only this reject reason.")]
FormatOpt = Annotated[str, typer.Option("--format", help="table or json.")]


def _dlq_context() -> tuple[Settings, Any, Any]:
    from k2.log.factory import open_log, topic_layout

    settings = _settings(None, "WARNING")
    return settings, open_log(settings), topic_layout(settings)


@dlq_app.command("list")
def dlq_list(
    data_type: DataTypeOpt = None,
    reason: ReasonOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    output: FormatOpt = "table",
) -> None:
    """List dead letters, oldest first: where they are, why, and a peek at the raw."""
    from rich.console import Console
    from rich.table import Table

    from k2.capture.dead_letters import list_dead_letters

    try:
        _, log, layout = _dlq_context()
        try:
            letters = list_dead_letters(log, layout, data_type=data_type, reason=reason,
                                        limit=limit)  # fmt: skip
        finally:
            log.close()
    except K2Error as exc:
        _fail(exc)
        return
    if output == "json":
        for letter in letters:
            typer.echo(json.dumps(letter.to_json_dict()))
        return
    table = Table("topic", "part", "offset", "reason", "detail", "raw")
    for x in letters:
        raw = x.raw[:40].decode("utf-8", "replace") + ("…" if len(x.raw) > 40 else "")
        table.add_row(x.topic, str(x.partition), str(x.offset), x.reason, x.detail[:60], raw)
    Console().print(table)
    typer.echo(f"{len(letters)} dead letter(s)", err=True)


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic (see `k2 dlq list`).")],
    offset: Annotated[int, typer.Argument(help="Offset of the dead letter.")],
    partition: Annotated[int, typer.Option(help="Partition.")] = 0,
) -> None:
    """Show one dead letter in full, raw payload included, as JSON."""
    from k2.capture.dead_letters import show_dead_letter

    try:
        _, log, _ = _dlq_context()
        try:
            letter = show_dead_letter(log, topic, partition, offset)
        finally:
            log.close()
    except K2Error as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(letter.to_json_dict(), indent=2))


@dlq_app.command("replay")
def dlq_replay(
    data_type: DataTypeOpt = None,
    reason: ReasonOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would happen; change nothing.")
    ] = False,
) -> None:
    """Run dead letters through today's parser and validation again.

    What now passes is produced to its data topic; what still fails stays and is
    counted. Each dead letter is examined once: progress is kept as the consumer group
    k2-dead-letter-replay. Symbols are checked against capture.symbols.
    """
    from k2.capture.dead_letters import replay_dead_letters

    try:
        settings, log, layout = _dlq_context()
        try:
            report = replay_dead_letters(
                log, layout, known_symbols=frozenset(settings.capture.symbols),
                data_type=data_type, reason=reason, dry_run=dry_run,
                max_future_skew_s=settings.capture.max_future_skew_s,
            )  # fmt: skip
        finally:
            log.close()
    except K2Error as exc:
        _fail(exc)
        return
    summary = {
        "examined": report.examined,
        "replayed": report.replayed,
        "still_rejected": dict(report.still_rejected),
        "not_replayable": dict(report.not_replayable),
        "skipped_by_reason_filter": report.skipped_by_reason_filter,
        "dry_run": dry_run,
    }
    typer.echo(json.dumps(summary, indent=2))


TableOpt = Annotated[str, typer.Option("--table", help="trades, quotes, reference_data or gaps.")]


def _lake_table(settings: Settings, name: str) -> Any:
    from k2.lake.catalog import open_catalog
    from k2.lake.tables import ensure_tables

    tables = ensure_tables(open_catalog(settings), settings.lake.namespace)
    if name not in tables:
        raise ConfigError(f"unknown table {name!r}: use one of {', '.join(sorted(tables))}")
    return tables[name]


@app.command()
def sink(
    max_seconds: MaxSecondsOpt = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once the log is drained.")
    ] = False,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Move records from the log into the Iceberg lake, exactly once.

    Consumes the trades, quotes and gaps topics (consumer group lake.sink_group),
    micro-batches by count and time, sorts each batch and appends it with the log
    offsets it covers in the same snapshot; a restart resumes where the lake ends.
    Several sinks may run at once. Ctrl-C/SIGTERM commit what is buffered and stop.
    """
    import signal
    import threading

    from k2.lake.sink import run_sink

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        settings = _settings(log_format, log_level)
        stats = run_sink(
            settings, stop=stop, max_seconds=max_seconds, until_idle=until_idle, observe=True
        )
    except K2Error as exc:
        _fail(exc)
        return
    summary = {
        "seconds": round(stats.seconds, 3), "records": dict(stats.records),
        "commits": stats.commits, "commit_conflicts": stats.commit_conflicts,
        "dead_lettered": stats.dead_lettered,
    }  # fmt: skip
    print(json.dumps(summary, indent=2), file=sys.stderr)


@app.command()
def backfill(
    paths: Annotated[list[Path], typer.Argument(help="Archive files or folders of them.")],
    workers: Annotated[int, typer.Option(help="Archives read in parallel.")] = 2,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check <archive>.CHECKSUM if present.")
    ] = True,
) -> None:
    """Import data.binance.vision spot trades/aggTrades archives into the lake.

    Zip or CSV, millisecond or microsecond timestamps; the CHECKSUM beside an archive is
    verified. Idempotent: trades already in the lake (same message_id, whether from an
    earlier import or from live capture) are skipped.
    """
    from k2.lake.backfill import backfill as run_backfill
    from k2.lake.backfill import find_archives

    try:
        settings = _settings(None, "WARNING")
        table = _lake_table(settings, "trades")
        report = run_backfill(table, find_archives(paths), workers=workers, verify=verify)
    except K2Error as exc:
        _fail(exc)
        return
    for a in report.archives:
        typer.echo(json.dumps({
            "archive": str(a.path), "symbol": a.symbol, "kind": a.kind, "read": a.rows_read,
            "added": a.rows_added, "skipped": a.rows_skipped, "sha256": a.sha256,
            "checksum_verified": a.checksum_verified, "snapshot_id": a.snapshot_id,
        }))  # fmt: skip
    typer.echo(
        f"{report.rows_added:,} of {report.rows_read:,} trades added in {report.seconds:.1f} s "
        f"({report.rows_per_second:,.0f} trades/s)",
        err=True,
    )


@app.command()
def maintain(
    table: TableOpt = "trades",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
) -> None:
    """Compact small files, expire snapshots, remove orphan files of one table.

    Snapshots are kept for lake.time_travel_hours so every instant of that window
    stays readable; unreferenced files younger than lake.orphan_grace_hours are kept.
    Safe to run while the sink writes: a conflicting commit is re-planned.
    """
    from dataclasses import asdict
    from datetime import timedelta

    from k2.lake.maintenance import maintain as run_maintain

    try:
        settings = _settings(None, "WARNING")
        report = run_maintain(
            _lake_table(settings, table),
            keep=timedelta(hours=settings.lake.time_travel_hours),
            orphan_grace=timedelta(hours=settings.lake.orphan_grace_hours),
            dry_run=dry_run,
        )
    except K2Error as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(asdict(report), indent=2, default=str))


@app.command()
def snapshots(table: TableOpt = "trades") -> None:
    """List a table's snapshots: time, operation, rows added, K2 properties (offsets,
    archives, maintenance), one JSON object a line."""
    from k2.lake.snapshots import list_snapshots

    try:
        settings = _settings(None, "WARNING")
        infos = list_snapshots(_lake_table(settings, table))
    except K2Error as exc:
        _fail(exc)
        return
    for info in infos:
        typer.echo(json.dumps(info.to_json_dict()))


@app.command("config")
def show_config() -> None:
    """Print the effective settings (defaults, k2.toml, K2_* variables) as JSON."""
    try:
        settings = load_settings()
    except K2Error as exc:
        _fail(exc)
        return
    typer.echo(settings.model_dump_json(indent=2))


# --- serving and querying (k2 serve, k2 query ..., k2 api-key) -----------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (K2_API__HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (K2_API__PORT).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (K2_API__WORKERS).")] = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Run the REST API (docs at /docs) over the lake and the live log tail.

    Trades, quotes, bars, daily summaries, symbols, snapshots and SQL, as JSON, CSV,
    Parquet or Arrow. /v1 needs an X-API-Key: configure keys hashed in K2_API__KEYS
    (`k2 api-key NAME`). In the embedded mode a development key is made at start-up
    and printed once (K2_API__DEV_KEY=false turns that off). Ctrl-C stops cleanly.
    """
    from k2.api.server import serve as run_serve

    try:
        settings = _settings(
            log_format, log_level, api={"host": host, "port": port, "workers": workers}
        )
        run_serve(settings)
    except KeyboardInterrupt:
        pass
    except K2Error as exc:
        _fail(exc)


@app.command("api-key")
def api_key(
    name: Annotated[str, typer.Argument(help="Name of the key holder (letters, digits, _.-).")],
) -> None:
    """Make a new random API key and print it with the K2_API__KEYS entry to configure.

    K2 stores only the key's SHA-256: give the key to its holder and the entry to the
    server (append to existing entries, comma separated). The key is shown only now.
    """
    from k2.api.auth import key_entry, new_key

    key = new_key()
    try:
        entry = key_entry(name, key)
    except K2Error as exc:
        _fail(exc)
        return
    typer.echo(f"API key for {name} (send as X-API-Key; shown once, not stored):\n  {key}")
    typer.echo(f"Configure the server with (append to existing entries):\n  K2_API__KEYS={entry}")


query_app = typer.Typer(
    help="Query the lake in-process (no server): trades, quotes, bars, summaries, SQL. "
    "Readable tables by default; --format csv|json|parquet for machines.",
    no_args_is_help=True,
)
app.add_typer(query_app, name="query")

QSymbolOpt = Annotated[
    str | None, typer.Option("--symbol", "-s", help="Comma-separated symbols, e.g. BTCUSDT.")
]
QExchangeOpt = Annotated[str | None, typer.Option(help="Exchange, e.g. binance.")]
QStartOpt = Annotated[
    str | None, typer.Option(help="Inclusive start, ISO-8601 with Z (2024-01-01T00:00:00Z).")
]
QEndOpt = Annotated[str | None, typer.Option(help="Exclusive end, ISO-8601 with Z.")]
QLimitOpt = Annotated[int | None, typer.Option(help="Rows at most (query.default_limit).")]
QOrderOpt = Annotated[str, typer.Option(help="asc or desc (by time).")]
QAsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="Lake snapshot id or ISO-8601 time to read as of.")
]
QCursorOpt = Annotated[str | None, typer.Option(help="Next page: the cursor a result printed.")]
QLiveOpt = Annotated[
    bool, typer.Option("--live/--lake-only", help="Also read records still in the log.")
]
QFormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet.")]
QOutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file (needed for parquet).")
]


def _run_query(
    live: bool, fmt: str, output: Path | None, ask: Any, *, json_data: Any = None
) -> None:
    """Open the engine, call ``ask(engine)`` → QueryResult, write it; errors exit 2."""
    from k2.api.output import check_output, describe_meta, write_result
    from k2.api.problems import ApiProblem
    from k2.api.routes import meta_dict
    from k2.api.server import open_runtime

    try:
        out_fmt = check_output(fmt, output)
        settings = _settings(None, "WARNING")
        runtime = open_runtime(settings, live=live, follow=False)
        try:
            result = ask(runtime.engine)
        finally:
            runtime.close()
        if isinstance(result, tuple):  # (table, meta, json rows): snapshots
            table, meta, json_data = result
        else:
            table, meta = result.table, meta_dict(result.meta, None)
            meta.pop("request_id")
        write_result(table, meta, out_fmt, output, json_data=json_data)
    except K2Error as exc:
        _fail(exc)
        return
    except ApiProblem as exc:
        typer.secho(f"error: {exc.detail}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    typer.echo(describe_meta(meta), err=True)


@query_app.command("trades")
def query_trades(
    symbol: QSymbolOpt = None,
    exchange: QExchangeOpt = None,
    start: QStartOpt = None,
    end: QEndOpt = None,
    limit: QLimitOpt = None,
    order: QOrderOpt = "asc",
    as_of: QAsOfOpt = None,
    cursor: QCursorOpt = None,
    live: QLiveOpt = False,
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """Trades with start <= timestamp < end, by (time, exchange, symbol, trade id)."""
    _run_query(
        live,
        fmt,
        output,
        lambda e: _window_query(
            e.trades, symbol, exchange, start, end, limit, order, as_of, cursor
        ),
    )


@query_app.command("quotes")
def query_quotes(
    symbol: QSymbolOpt = None,
    exchange: QExchangeOpt = None,
    start: QStartOpt = None,
    end: QEndOpt = None,
    limit: QLimitOpt = None,
    order: QOrderOpt = "asc",
    as_of: QAsOfOpt = None,
    cursor: QCursorOpt = None,
    live: QLiveOpt = False,
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """Best bid/ask updates with start <= timestamp < end."""
    _run_query(
        live,
        fmt,
        output,
        lambda e: _window_query(
            e.quotes, symbol, exchange, start, end, limit, order, as_of, cursor
        ),
    )


def _window_query(
    method: Any,
    symbol: str | None,
    exchange: str | None,
    start: str | None,
    end: str | None,
    limit: int | None,
    order: str,
    as_of: str | None,
    cursor: str | None,
) -> Any:
    from k2.api.params import parse_as_of, parse_exchange, parse_symbols, parse_time
    from k2.query.base import QueryError

    if order not in ("asc", "desc"):
        raise QueryError(f"--order {order!r}: use asc or desc")
    return method(
        parse_symbols(symbol),
        start=parse_time("--start", start),
        end=parse_time("--end", end),
        exchange=parse_exchange(exchange),
        limit=limit,
        order=order,
        as_of=parse_as_of(as_of),
        cursor=cursor,
    )


@query_app.command("recent")
def query_recent(
    symbol: QSymbolOpt = None,
    window_minutes: Annotated[int, typer.Option(help="Minutes back from now (1-1440).")] = 15,
    limit: QLimitOpt = None,
    live: QLiveOpt = True,
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """Trades of the last minutes, including records not yet in the lake."""
    from k2.api.params import parse_symbols

    _run_query(
        live,
        fmt,
        output,
        lambda e: e.recent_trades(
            parse_symbols(symbol), window_minutes=window_minutes, limit=limit
        ),
    )


@query_app.command("bars")
def query_bars(
    symbol: QSymbolOpt = None,
    interval: Annotated[str, typer.Option(help="Bar length: 1m, 5m, 15m, 1h, 1d ...")] = "1m",
    start: QStartOpt = None,
    end: QEndOpt = None,
    as_of: QAsOfOpt = None,
    live: QLiveOpt = False,
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """OHLCV bars with VWAP, trade count and buy/sell volume (exact decimals)."""
    from k2.api.params import parse_as_of, parse_symbols, parse_time

    _run_query(
        live,
        fmt,
        output,
        lambda e: e.bars(
            parse_symbols(symbol),
            interval=interval,
            start=parse_time("--start", start),
            end=parse_time("--end", end),
            as_of=parse_as_of(as_of),
        ),
    )


@query_app.command("summary")
def query_summary(
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. BTCUSDT.")],
    date: Annotated[str | None, typer.Option(help="UTC day YYYY-MM-DD (default: latest).")] = None,
    live: QLiveOpt = False,
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """One UTC day of a symbol: open, high, low, close, volume, VWAP, trades."""
    from k2.api.params import parse_date, parse_symbol

    _run_query(live, fmt, output, lambda e: e.summary(parse_symbol(symbol), day=parse_date(date)))


@query_app.command("symbols")
def query_symbols(
    live: QLiveOpt = False, fmt: QFormatOpt = "table", output: QOutputOpt = None
) -> None:
    """Symbols in the lake: first/last trade time, trade and quote counts."""
    _run_query(live, fmt, output, lambda e: e.symbols())


@query_app.command("snapshots")
def query_snapshots(
    table: Annotated[str, typer.Option(help="trades or quotes.")] = "trades",
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """Lake snapshots of a table (ids for --as-of), oldest first."""
    from k2.api.routes import iso_z, snapshots_table
    from k2.query.base import QueryError

    def ask(e: Any) -> Any:
        if table not in ("trades", "quotes"):
            raise QueryError(f"--table {table!r}: use trades or quotes")
        infos = e.snapshots(table)
        rows = [{**i.to_json_dict(), "committed_at": iso_z(i.committed_at)} for i in infos]
        return (
            snapshots_table(infos),
            {"data_type": "snapshots", "table": table, "rows": len(infos)},
            rows,
        )

    _run_query(False, fmt, output, ask)


@query_app.command("sql")
def query_sql(
    query: Annotated[str, typer.Argument(help="One SELECT; '-' reads it from stdin.")],
    max_rows: Annotated[int | None, typer.Option(help="Rows at most.")] = None,
    live: QLiveOpt = False,
    fmt: QFormatOpt = "table",
    output: QOutputOpt = None,
) -> None:
    """Run one read-only SELECT over the views trades, quotes and bars_1m (sandboxed)."""
    text = sys.stdin.read() if query == "-" else query
    _run_query(live, fmt, output, lambda e: e.sql(text, max_rows=max_rows))


def main() -> None:
    """Console-script entry point."""
    app()

"""``k2 demo`` (= ``make demo``): the whole platform on the local simulator, then a tour.

1. The simulator starts in this process with faults on (dropped, duplicated,
   reordered and corrupt frames, a forced disconnect, REST rate limits).
2. The platform starts as ``k2 up`` runs it — ingest, sink and API as supervised
   processes — against the simulator, and streams for ``seconds``.
3. While it runs: a hybrid query (lake + the log's tail) through the REST API, timed
   over many calls.
4. The platform stops cleanly (capture first, the sink commits the rest), and the tour
   prints what this run did: what was captured and whether the lake holds exactly the
   simulator's trades, the faults and their repairs, lake snapshots, a query, bars with
   VWAP, the hybrid query's latency, and health. The data stays in ``data_dir`` for
   ``k2 query``.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from k2.api.auth import key_entry
from k2.config import Settings
from k2.errors import TransientError
from k2.ops.status import gather
from k2.ops.status_files import read_status, status_path
from k2.ops.up import Platform, stage_specs
from k2.simulator import FaultConfig, SimulatorConfig, SimulatorServer

HYBRID_CALLS = 100


def demo_faults() -> FaultConfig:
    """The faults the demo injects: enough to show every repair path, seeded."""
    return FaultConfig(
        seed=7,
        drop=0.01,
        duplicate=0.01,
        reorder=0.01,
        malformed=0.002,
        disconnect_every_s=6.0,
        max_disconnects=1,
        rest_429_every_n=10,
    )


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise TransientError("no free TCP port on 127.0.0.1")


async def run_demo(settings: Settings, *, seconds: float) -> None:
    """Run the demo for ``seconds`` of streaming and print the tour to stdout."""
    console = Console(width=max(110, Console().width))
    # Ids from the wall clock: a second demo on the same data dir continues above the
    # first one's trades instead of colliding with them.
    sim_config = SimulatorConfig(
        port=0, rate=2000.0, seed=1, faults=demo_faults(), continue_ids=True
    )
    async with SimulatorServer(sim_config) as sim:
        key = secrets.token_urlsafe(24)
        port = _free_port(settings.api.port)
        env = {
            "K2_BINANCE__WS_URL": sim.ws_url,
            "K2_BINANCE__REST_URL": sim.rest_url,
            "K2_API__PORT": str(port),
            "K2_API__KEYS": key_entry("demo", key),
            "K2_API__DEV_KEY": "false",
            "K2_OPS__INGEST_METRICS_PORT": "0",
            "K2_OPS__SINK_METRICS_PORT": "0",
            "K2_LAKE__SINK_MAX_SECONDS": "1",
            "K2_LOGGING__LEVEL": "WARNING",
        }
        specs = stage_specs(settings, stages=("ingest", "sink", "api"))
        for spec in specs:
            spec.env.update(env)
        console.print(
            f"[bold]K2 demo[/] — simulator at {sim.ws_url} (synthetic market, faults on); "
            f"ingest, sink and API as `k2 up` runs them; data in {settings.data_dir}"
        )
        lines: list[str] = []
        platform = Platform(settings, specs, say=lines.append)
        stop = threading.Event()
        runner = threading.Thread(target=platform.run, args=(stop,), daemon=True)
        runner.start()
        api = f"http://127.0.0.1:{port}"
        try:
            await _stream(console, settings, seconds)
            hybrid = await asyncio.to_thread(_hybrid_latency, api, key)
            health = await asyncio.to_thread(_health, api, key)
        finally:
            with console.status("stopping: capture first, then the sink commits the rest"):
                stop.set()
                await asyncio.to_thread(runner.join)
        _tour(console, settings, sim, hybrid, health, lines)


async def _stream(console: Console, settings: Settings, seconds: float) -> None:
    """Stream for ``seconds``, showing what the lake holds as it grows."""
    progress = Progress(
        TextColumn("[bold]streaming[/]"), BarColumn(), TextColumn("{task.description}"),
        TimeRemainingColumn(), console=console,
    )  # fmt: skip
    with progress:
        task = progress.add_task("starting …", total=seconds)
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < seconds:
            ingest = read_status(status_path(settings, "ingest")) or {}
            stats = ingest.get("stats", {})
            progress.update(
                task,
                completed=elapsed,
                description=f"{stats.get('trades', 0):,} trades, {stats.get('quotes', 0):,} "
                f"quotes captured; {ingest.get('connections', 0)} connection(s)",
            )
            await asyncio.sleep(0.25)  # a progress display's refresh, not a synchronisation
        progress.update(task, completed=seconds)


def _get(client: httpx.Client, path: str, deadline_s: float = 30.0) -> httpx.Response:
    """GET ``path``, waiting (with a deadline) for the API to come up."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return client.get(path)
        except httpx.TransportError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)  # the API process is still starting


def _hybrid_latency(api: str, key: str) -> dict[str, Any]:
    """``/v1/trades/recent`` for BTCUSDT's last minute, ``HYBRID_CALLS`` times."""
    path = "/v1/trades/recent?symbol=BTCUSDT&window_minutes=1&limit=100"
    with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=10) as client:
        first = _get(client, path)
        first.raise_for_status()
        times = []
        for _ in range(HYBRID_CALLS):
            t0 = time.perf_counter()
            client.get(path).raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    body = first.json()
    times.sort()
    return {
        "rows": len(body["data"]),
        "meta": body["meta"],
        "sample": body["data"][:3],
        "p50_ms": statistics.median(times),
        "p99_ms": times[int(len(times) * 0.99) - 1],
    }


def _health(api: str, key: str) -> dict[str, Any]:
    with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=10) as client:
        health = _get(client, "/health")
        ready = client.get("/ready")
    return {"health": health.status_code, "ready": ready.status_code, "checks": _checks(ready)}


def _checks(response: httpx.Response) -> dict[str, str]:
    try:
        checks = response.json().get("checks", {})
    except ValueError:
        return {}
    return {name: str(c.get("status")) for name, c in checks.items() if isinstance(c, dict)}


# -- the tour ------------------------------------------------------------------------


def _tour(
    console: Console,
    settings: Settings,
    sim: SimulatorServer,
    hybrid: dict[str, Any],
    health: dict[str, Any],
    lines: list[str],
) -> None:
    from k2.api.server import open_runtime

    runtime = open_runtime(settings, live=False, follow=False)
    try:
        engine = runtime.engine
        exact = _captured(console, settings, sim)
        _faults(console, settings, sim)
        _snapshots(console, engine)
        _queries(console, engine)
        _hybrid(console, hybrid)
        _health_section(console, settings, health, lines)
    finally:
        runtime.close()
    console.print(
        f"\nThe lake is in {settings.data_dir}: try `k2 query trades --symbol BTCUSDT "
        "--limit 5`, `k2 query bars --symbol ETHUSDT --interval 5s`, `k2 status`."
    )
    if not exact:
        raise SystemExit(1)


def _lake_ids(settings: Settings) -> dict[str, list[int]]:
    from k2.lake.catalog import open_catalog
    from k2.lake.tables import ensure_tables

    table = ensure_tables(open_catalog(settings), settings.lake.namespace)["trades"]
    rows = table.scan(selected_fields=("symbol", "trade_id")).to_arrow()
    ids: dict[str, list[int]] = defaultdict(list)
    for symbol in pc.unique(rows.column("symbol")).to_pylist():
        ids[symbol] = sorted(
            rows.filter(pc.equal(rows.column("symbol"), symbol)).column("trade_id").to_pylist()
        )
    return ids


def _captured(console: Console, settings: Settings, sim: SimulatorServer) -> bool:
    console.rule("What was captured, and is it exactly the exchange's history?")
    table = Table("symbol", "trades in lake", "first id", "last id", "vs simulator")
    all_exact = True
    total = 0
    lake = _lake_ids(settings)
    for symbol in sorted(lake):
        # This run's trades: an earlier demo's stay in the lake, below this simulator's
        # first id (the gap between runs is recorded, unrepairable: this simulator
        # keeps no history from before it started).
        first = next(iter(sim.trades.rows(symbol, 0, 1)), None)
        ids = [i for i in lake[symbol] if first is not None and i >= first.trade_id]
        if not ids:
            continue
        total += len(ids)
        expected = {r.trade_id for r in sim.trades.rows(symbol, ids[0], ids[-1] - ids[0] + 1)}
        exact = expected == set(ids) and len(ids) == len(expected)
        all_exact &= exact
        missing, extra = len(expected - set(ids)), len(ids) - len(set(ids))
        verdict = "[green]exact[/]" if exact else f"[red]{missing} missing, {extra} twice[/]"
        table.add_row(symbol, f"{len(ids):,}", str(ids[0]), str(ids[-1]), verdict)
    console.print(table)

    console.print(
        f"{total:,} trades captured in this run; "
        + (
            "[bold green]every trade the simulator printed in each symbol's range is there "
            "exactly once[/]"
            if all_exact and total
            else "[bold red]the lake does not match the simulator's history[/]"
        )
    )
    return all_exact and total > 0


def _faults(console: Console, settings: Settings, sim: SimulatorServer) -> None:
    console.rule("Faults the simulator injected, and what K2 did")
    stats = sim.stats.snapshot()
    ingest = (read_status(status_path(settings, "ingest")) or {}).get("stats", {})
    stream = (read_status(status_path(settings, "ingest")) or {}).get("stream", {})
    table = Table("fault / repair", "count")
    for key in ("dropped", "duplicated", "reordered", "malformed", "disconnects_forced",
                "rest_429s"):  # fmt: skip
        table.add_row(f"simulator: {key.replace('_', ' ')}", f"{stats[key]:,}")
    table.add_row("duplicates removed", f"{ingest.get('duplicates', 0):,}")
    table.add_row("gaps detected", f"{ingest.get('gaps_detected', 0):,}")
    table.add_row("gaps repaired from REST", f"{ingest.get('gaps_repaired', 0):,}")
    table.add_row("trades recovered by repair", f"{ingest.get('trades_repaired', 0):,}")
    table.add_row("reconnects", f"{stream.get('reconnects', 0):,}")
    for reason, count in sorted((ingest.get("rejects") or {}).items()):
        table.add_row(f"rejected (kept as dead letters): {reason}", f"{count:,}")
    console.print(table)


def _snapshots(console: Console, engine: Any) -> None:
    console.rule("Lake snapshots (Iceberg): every commit carries the log offsets it covers")
    snaps = engine.snapshots("trades")
    table = Table("committed at (UTC)", "operation", "rows added", "total rows", "offsets")
    for snap in snaps[-5:]:
        offsets = next((v for k, v in snap.k2.items() if k.startswith("k2.offsets.")), "")
        table.add_row(snap.committed_at.strftime("%H:%M:%S.%f")[:-3], snap.operation,
                      f"{snap.added_records:,}", f"{snap.total_records:,}",
                      offsets[:48])  # fmt: skip
    console.print(table)
    console.print(f"{len(snaps)} snapshots of market_data.trades; any one can be read back "
                  "with `as_of` (time travel).")  # fmt: skip


def _queries(console: Console, engine: Any) -> None:
    console.rule("A query: BTCUSDT's last 5 trades (exact decimals, UTC µs)")
    last = engine.trades("BTCUSDT", order="desc", limit=5).table
    table = Table("time", "id", "side", "price", "quantity")
    for row in last.to_pylist():
        table.add_row(row["timestamp"].isoformat(), str(row["trade_id"]), row["side"],
                      str(row["price"]), str(row["quantity"]))  # fmt: skip
    console.print(table)
    console.rule("Bars: ETHUSDT at 5 seconds, with VWAP and buy/sell volume")
    end = datetime.now(UTC) + timedelta(seconds=1)
    bars = engine.bars("ETHUSDT", interval="5s", start=end - timedelta(minutes=5), end=end).table
    table = Table("bar start", "open", "high", "low", "close", "volume", "VWAP", "trades",
                  "buy vol", "sell vol")  # fmt: skip
    for row in bars.to_pylist()[-6:]:
        cells = [_num(row[c]) for c in ("open", "high", "low", "close", "volume", "vwap")]
        table.add_row(row["bar_start"].strftime("%H:%M:%S"), *cells, str(row["trade_count"]),
                      _num(row["buy_volume"]), _num(row["sell_volume"]))  # fmt: skip
    console.print(table)


def _num(value: Any) -> str:
    """An exact decimal without trailing zeros (3399.90000000 → 3399.9)."""
    if value is None:
        return "-"
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _hybrid(console: Console, hybrid: dict[str, Any]) -> None:
    console.rule("A hybrid query over HTTP: the last minute of BTCUSDT, lake + log tail")
    meta = hybrid["meta"]
    console.print(
        f"GET /v1/trades/recent?symbol=BTCUSDT&window_minutes=1 → {hybrid['rows']} rows from "
        f"{' + '.join(meta.get('sources', []))} (snapshot {meta.get('snapshot_id')}); over "
        f"{HYBRID_CALLS} calls p50 {hybrid['p50_ms']:.1f} ms, p99 {hybrid['p99_ms']:.1f} ms"
    )


def _health_section(
    console: Console, settings: Settings, health: dict[str, Any], lines: list[str]
) -> None:
    console.rule("Health")
    status = gather(settings)
    checks = ", ".join(f"{k} {v}" for k, v in health["checks"].items()) or "-"
    console.print(f"/health {health['health']}, /ready {health['ready']} ({checks})")
    restarts = {name: info.get("restarts", 0) for name, info in status.stages.items()}
    console.print(
        f"stage restarts {restarts}; dead letters {sum(status.dead_letters.values()):,}; "
        f"degradation {status.degradation.get('level_name', 'NORMAL')}; "
        f"log records not in the lake {sum(status.lag.values()):,}"
    )
    for line in lines:
        if "exited" in line or "cannot reach" in line:
            console.print(f"[yellow]{line}[/]")


Say = Callable[[str], None]

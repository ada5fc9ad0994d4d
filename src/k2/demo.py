"""``k2 demo``: the simulator and the capture, end to end, with a tour of the result.

The simulator runs a synthetic market with faults switched on (dropped, duplicated,
reordered and corrupt frames, a forced disconnect, REST rate limits); the capture
runs against it for a few seconds; then the tour checks what was captured against
the simulator's own trade history and shows the numbers of this run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from k2.capture.service import CaptureResult, capture
from k2.config import Settings
from k2.simulator import FaultConfig, SimulatorConfig, SimulatorServer


def demo_faults() -> FaultConfig:
    """The faults the demo injects: enough to show every repair path, seeded."""
    return FaultConfig(
        seed=7,
        drop=0.01,
        duplicate=0.01,
        reorder=0.01,
        malformed=0.002,
        disconnect_every_s=3.0,
        max_disconnects=1,
        rest_429_every_n=10,
    )


async def run_demo(settings: Settings, *, seconds: float, out: Path | None) -> None:
    """Run the demo for ``seconds`` of streaming and print the tour to stdout."""
    console = Console(width=max(110, Console().width))
    out = out or settings.data_dir / "demo-capture.ndjson"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    sim_config = SimulatorConfig(port=0, rate=2000.0, seed=1, faults=demo_faults())
    async with SimulatorServer(sim_config) as sim:
        console.print(
            f"[bold]K2 demo[/] — simulator at {sim.ws_url} (synthetic market, faults on); "
            f"capturing for {seconds:g} s …"
        )
        run_settings = settings.model_copy(
            update={
                "binance": settings.binance.model_copy(
                    update={"ws_url": sim.ws_url, "rest_url": sim.rest_url}
                )
            }
        )
        with console.status("streaming"):
            result = await capture(run_settings, out, max_seconds=seconds, handle_signals=True)
        sim_stats = sim.stats.snapshot()
        _tour(console, out, result, sim, sim_stats)


def _simulator_ids(sim: SimulatorServer, symbol: str, first: int, last: int) -> set[int]:
    """The trade ids the simulator printed for ``symbol`` in ``[first, last]``."""
    return {row.trade_id for row in sim.trades.rows(symbol, first, last - first + 1)}


def _tour(
    console: Console,
    out: Path,
    result: CaptureResult,
    sim: SimulatorServer,
    sim_stats: dict[str, Any],
) -> None:
    trades: dict[str, list[int]] = defaultdict(list)
    quotes: Counter[str] = Counter()
    rejects: Counter[str] = Counter()
    gaps: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    volume: dict[str, Decimal] = defaultdict(Decimal)
    with out.open("rb") as fh:
        for line in fh:
            row = msgspec.json.decode(line)
            kind = row["type"]
            if kind == "trade":
                trades[row["symbol"]].append(row["trade_id"])
                volume[row["symbol"]] += Decimal(row["quote_quantity"])
                if len(samples) < 5:
                    samples.append(row)
            elif kind == "quote":
                quotes[row["symbol"]] += 1
            elif kind == "reject":
                rejects[row["reason"]] += 1
            elif kind == "gap":
                gaps.append(row)

    s = result.stats
    rate = (s.trades + s.quotes) / result.seconds if result.seconds else 0.0
    console.rule("What was captured")
    table = Table("symbol", "trades", "first id", "last id", "quotes", "notional (quote ccy)",
                  "vs simulator")  # fmt: skip
    all_exact = True
    for symbol in sorted(set(trades) | set(quotes)):
        ids = trades.get(symbol, [])
        got = set(ids)
        expected = _simulator_ids(sim, symbol, min(ids), max(ids)) if ids else set()
        exact = got == expected and len(ids) == len(got)
        all_exact &= exact
        verdict = "[green]exact[/]" if exact else f"[red]{len(expected - got)} missing[/]"
        table.add_row(
            symbol, f"{len(ids):,}", str(min(ids)) if ids else "-", str(max(ids)) if ids else "-",
            f"{quotes[symbol]:,}", f"{volume[symbol]:,.2f}", verdict,
        )  # fmt: skip
    console.print(table)
    console.print(
        f"{s.trades:,} trades and {s.quotes:,} quotes in {result.seconds:.1f} s "
        f"({rate:,.0f} records/s); written to {out}"
    )

    console.rule("Faults the simulator injected, and what K2 did")
    faults = Table("fault / repair", "count")
    for key in ("dropped", "duplicated", "reordered", "malformed", "disconnects_forced",
                "rest_429s"):  # fmt: skip
        faults.add_row(f"simulator: {key.replace('_', ' ')}", f"{sim_stats[key]:,}")
    faults.add_row("duplicates removed", f"{s.duplicates:,}")
    faults.add_row("gaps detected", f"{s.gaps_detected:,}")
    faults.add_row("gaps repaired from REST", f"{s.gaps_repaired:,}")
    faults.add_row("trades recovered by repair", f"{s.trades_repaired:,}")
    faults.add_row("trades fetched after the last received", f"{s.trades_after_tail:,}")
    faults.add_row("reconnects", f"{result.stream.get('reconnects', 0):,}")
    for reason, count in sorted(rejects.items()):
        faults.add_row(f"rejected: {reason}", f"{count:,}")
    console.print(faults)
    for gap in gaps[:3]:
        console.print(
            f"  gap {gap['symbol']} {gap['first_missing_id']}..{gap['last_missing_id']}: "
            f"{gap['status']} ({gap['repaired_count']} recovered)"
        )

    console.rule("Sample trades (exact decimals, UTC µs)")
    sample = Table("time", "symbol", "id", "side", "price", "quantity", "quote qty")
    for row in samples:
        sample.add_row(row["timestamp"], row["symbol"], str(row["trade_id"]), row["side"],
                       row["price"], row["quantity"], row["quote_quantity"])  # fmt: skip
    console.print(sample)
    verdict = (
        "[bold green]every trade the simulator printed was captured exactly once[/]"
        if all_exact
        else "[bold red]the capture does not match the simulator's history[/]"
    )
    console.print(verdict)
    if not all_exact:
        raise SystemExit(1)

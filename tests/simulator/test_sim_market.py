"""The synthetic market, driven directly: formats, grids, ids, consistency, rates."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

from k2.simulator import DEFAULT_SYMBOLS, SimulatorConfig
from k2.simulator.market import SyntheticMarket, format_units
from k2.simulator.stats import SimulatorStats
from k2.simulator.tape import Tape, TradeHistory

START_US = 1_750_000_000_000_000
ALL_STREAMS = {f"{s.symbol.lower()}@{k}" for s in DEFAULT_SYMBOLS for k in ("trade", "bookTicker")}


def _run(
    config: SimulatorConfig, seconds: float, step_s: float = 0.01
) -> tuple[list[tuple[str, dict[str, Any], bytes]], TradeHistory]:
    tape = Tape(10_000_000)
    trades = TradeHistory(None)
    market = SyntheticMarket(config, tape, trades, SimulatorStats(), START_US)
    steps = round(seconds / step_s)
    for i in range(1, steps + 1):
        market.advance(START_US + round(i * step_s * 1_000_000))
    read = tape.read(0, ALL_STREAMS, 100_000_000)
    events = [(s, json.loads(p), p) for s, p in zip(read.streams, read.payloads, strict=True)]
    return events, trades


def test_trades_and_quotes_are_in_binance_format_on_the_grids() -> None:
    events, _ = _run(SimulatorConfig(rate=5_000, seed=7), 4.0)
    specs = {s.symbol: s for s in DEFAULT_SYMBOLS}
    trades = [e for e in events if e[0].endswith("@trade")]
    quotes = [e for e in events if e[0].endswith("@bookTicker")]
    assert len(trades) > 1_000 and len(quotes) > 1_000
    for stream, data, raw in trades:
        assert list(data) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
        assert data["e"] == "trade" and data["M"] is True
        assert stream == data["s"].lower() + "@trade"
        spec = specs[data["s"]]
        assert Decimal(data["p"]) % Decimal(spec.tick_size) == 0
        assert Decimal(data["q"]) % Decimal(spec.step_size) == 0 and Decimal(data["q"]) > 0
        assert len(data["p"].split(".")[1]) == 8 and len(data["q"].split(".")[1]) == 8
        assert data["E"] >= data["T"]
        assert b'"p":"' + data["p"].encode() + b'"' in raw
    for _, data, _ in quotes:
        assert list(data) == ["u", "s", "b", "B", "a", "A"]
        spec = specs[data["s"]]
        assert Decimal(data["b"]) < Decimal(data["a"])
        assert Decimal(data["b"]) % Decimal(spec.tick_size) == 0
        assert Decimal(data["A"]) % Decimal(spec.step_size) == 0


def test_ids_are_contiguous_and_update_ids_increase() -> None:
    events, _ = _run(SimulatorConfig(rate=5_000, seed=3), 2.0)
    for spec in DEFAULT_SYMBOLS:
        ids = [d["t"] for s, d, _ in events if s == spec.symbol.lower() + "@trade"]
        assert ids == list(range(spec.first_trade_id, spec.first_trade_id + len(ids)))
        updates = [d["u"] for s, d, _ in events if s == spec.symbol.lower() + "@bookTicker"]
        assert updates[0] == spec.first_update_id
        assert all(b > a for a, b in itertools.pairwise(updates))


def test_trades_execute_at_the_published_best_bid_or_ask() -> None:
    events, _ = _run(SimulatorConfig(rate=5_000, seed=11), 2.0)
    specs = {s.symbol: s for s in DEFAULT_SYMBOLS}
    best: dict[str, tuple[Decimal, Decimal]] = {}
    for symbol, spec in specs.items():
        start = Decimal(spec.start_price)
        best[symbol] = (start, start + Decimal(spec.tick_size) * spec.spread_ticks)
    for stream, data, _ in events:
        if stream.endswith("@bookTicker"):
            best[data["s"]] = (Decimal(data["b"]), Decimal(data["a"]))
        else:
            bid, ask = best[data["s"]]
            # seller aggressor (buyer is maker) hits the bid; buyer lifts the ask
            assert Decimal(data["p"]) == (bid if data["m"] else ask)


def test_aggressor_side_is_balanced_but_comes_in_runs() -> None:
    events, _ = _run(SimulatorConfig(rate=20_000, seed=5, regime_switching=False), 2.0)
    sides = [d["m"] for s, d, _ in events if s == "btcusdt@trade"]
    share = sum(sides) / len(sides)
    assert 0.4 < share < 0.6
    runs = 1 + sum(1 for a, b in itertools.pairwise(sides) if a != b)
    assert len(sides) / runs > 2.5  # independent 50/50 sides would average 2


def test_total_rate_is_split_by_trade_rate() -> None:
    events, _ = _run(SimulatorConfig(rate=10_000, seed=1, regime_switching=False), 5.0)
    assert 47_500 < len(events) < 52_500
    btc = sum(1 for s, _, _ in events if s.startswith("btcusdt@"))
    share = DEFAULT_SYMBOLS[0].trade_rate / sum(s.trade_rate for s in DEFAULT_SYMBOLS)
    assert abs(btc / len(events) - share) < 0.02


def test_bursts_change_the_rate_over_time() -> None:
    events, _ = _run(SimulatorConfig(rate=1_000, seed=2), 180.0, step_s=0.1)
    per_second: dict[int, int] = {}
    for stream, data, _ in events:
        if stream == "btcusdt@trade":
            second = data["T"] // 1000
            per_second[second] = per_second.get(second, 0) + 1
    counts = sorted(per_second.values())
    median = counts[len(counts) // 2]
    assert counts[-1] > 2.5 * median  # some seconds are bursts...
    assert counts[0] < 0.6 * median  # ...and some are calm


def test_same_seed_same_market_and_history_matches_frames() -> None:
    config = SimulatorConfig(rate=3_000, seed=9)
    first, history = _run(config, 1.0)
    second, _ = _run(config, 1.0)
    assert [raw for _, _, raw in first] == [raw for _, _, raw in second]
    trades = [d for s, d, _ in first if s == "ethusdt@trade"]
    rows = list(history.rows("ETHUSDT", trades[0]["t"], len(trades)))
    assert [r.trade_id for r in rows] == [d["t"] for d in trades]
    assert [format_units(r.price_units) for r in rows] == [d["p"] for d in trades]
    assert [format_units(r.qty_units) for r in rows] == [d["q"] for d in trades]
    assert [r.time_us // 1000 for r in rows] == [d["T"] for d in trades]
    assert [r.buyer_maker for r in rows] == [d["m"] for d in trades]


def test_format_units_prints_eight_decimals() -> None:
    assert format_units(1) == "0.00000001"
    assert format_units(2_816_547_000_000) == "28165.47000000"

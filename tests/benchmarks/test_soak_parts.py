"""The soak's verdicts on their own: the trade audit, the memory rule, the 100-symbol
market and the BENCHMARKS.md writer, on real objects built by hand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.soak_check import audit_trade_ids
from benchmarks.soak_market import soak_symbols
from benchmarks.soak_probes import Sample
from benchmarks.soak_report import FULL, SHORT, memory_summary, write_section
from k2.errors import ConfigError
from k2.simulator import DEFAULT_SYMBOLS
from k2.simulator.tape import TradeHistory


def _history(ranges: dict[str, range]) -> TradeHistory:
    history = TradeHistory(None)
    for symbol, ids in ranges.items():
        for trade_id in ids:
            history.add(symbol, trade_id, 100_000_000, 1_000, trade_id, False)
    return history


def _ids(rows: dict[str, list[int]]) -> pa.Table:
    symbols = [s for s, ids in rows.items() for _ in ids]
    return pa.table({"symbol": symbols, "trade_id": [i for ids in rows.values() for i in ids]})


def test_audit_counts_lost_duplicated_and_foreign_trades() -> None:
    history = _history(
        {"BTCUSDT": range(100, 120), "ETHUSDT": range(500, 510), "BNBUSDT": range(7, 12)}
    )
    btc = [i for i in range(101, 119) if i != 110] + [105, 200]  # 110 lost, 105 twice
    lake = _ids({"BTCUSDT": btc, "BNBUSDT": list(range(7, 12)), "XRPUSDT": [1, 2]})
    check = audit_trade_ids(
        lake,
        history,
        ["BTCUSDT", "ETHUSDT", "BNBUSDT"],
        started={"BTCUSDT": 100, "ETHUSDT": 503, "BNBUSDT": None},
        stopped={"BTCUSDT": 119, "ETHUSDT": 509, "BNBUSDT": 11},
    )
    by = {s.symbol: s for s in check.symbols}
    # From the first trade received (101) to the last printed before the stop (119):
    # 110 was never captured and 119 was printed but not fetched at the stop.
    assert (by["BTCUSDT"].expected, by["BTCUSDT"].lost) == (19, 2)
    assert (by["BTCUSDT"].duplicated, by["BTCUSDT"].foreign) == (1, 1)
    assert (by["BTCUSDT"].first, by["BTCUSDT"].last) == (101, 118)
    # Nothing captured: everything printed after the connection (504..509) is lost.
    assert (by["ETHUSDT"].expected, by["ETHUSDT"].lost, by["ETHUSDT"].rows) == (6, 6, 0)
    assert (by["BNBUSDT"].lost, by["BNBUSDT"].duplicated, by["BNBUSDT"].foreign) == (0, 0, 0)
    assert by["XRPUSDT"].foreign == 2  # a symbol the exchange never traded
    assert (check.lost, check.duplicated, check.foreign) == (8, 1, 3)
    assert not check.exact


def test_audit_of_a_complete_lake_is_exact() -> None:
    history = _history({"BTCUSDT": range(100, 120), "ETHUSDT": range(500, 510)})
    lake = _ids({"BTCUSDT": list(range(103, 120)), "ETHUSDT": list(range(500, 510))})
    check = audit_trade_ids(
        lake,
        history,
        ["BTCUSDT", "ETHUSDT"],
        started={"BTCUSDT": 102, "ETHUSDT": None},
        stopped={"BTCUSDT": 119, "ETHUSDT": 509},
    )
    assert check.exact
    assert (check.rows, check.expected, check.lost) == (27, 27, 0)
    assert all(s.history_contiguous for s in check.symbols)


def test_audit_notices_a_history_with_holes() -> None:
    history = TradeHistory(None)
    for trade_id in (1, 2, 4):
        history.add("BTCUSDT", trade_id, 1, 1, trade_id, False)
    check = audit_trade_ids(
        _ids({"BTCUSDT": [1, 2, 4]}), history, ["BTCUSDT"], started={}, stopped={}
    )
    assert not check.symbols[0].history_contiguous
    assert not check.exact


def _sample(t: float, rss: dict[str, int]) -> Sample:
    return Sample(
        t=t, printed=0, captured=None, committed=None, connections=1, level="NORMAL",
        pids={n: 1 for n in rss}, rss=rss, hwm=rss, cpu_s={}, machine_busy_s=0.0,
        restarts={},
    )  # fmt: skip


def test_memory_rule_flags_growth_in_the_second_half() -> None:
    mb = 2**20
    samples = [
        _sample(t, {"api": (100 + 2 * t) * mb, "sink": (300 if t < 5 else 320) * mb})
        for t in range(0, 101)
    ]
    memory = memory_summary(samples, until_t=100)
    assert not memory["api"]["bounded"]  # peaks: 198 MB in the first half, 300 MB after
    assert memory["api"]["peak"] == 300 * mb
    assert memory["sink"]["bounded"]  # filled early, then flat
    assert memory["sink"]["growth"] == pytest.approx(0.0)


def test_soak_symbols_are_the_defaults_then_generated_with_zipf_weights() -> None:
    specs = soak_symbols(100)
    assert len({s.symbol for s in specs}) == 100
    assert [s.symbol for s in specs[:5]] == [s.symbol for s in DEFAULT_SYMBOLS]
    assert specs[5].symbol == "SYM006USDT" and specs[-1].symbol == "SYM100USDT"
    assert specs[0].trade_rate / specs[9].trade_rate == pytest.approx(10)
    with pytest.raises(ConfigError, match="--symbols 0"):
        soak_symbols(0)


def test_write_section_adds_the_soak_section_once_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# K2 benchmarks\n\n## Query\n\nquery text\n\n## How to reproduce\n\nsteps\n")
    write_section(path, SHORT, "short run 1")
    write_section(path, FULL, "full run")
    write_section(path, SHORT, "short run 2")
    text = path.read_text()
    assert text.count("## Soak ([6/6])") == 1
    assert "short run 2" in text and "short run 1" not in text and "full run" in text
    assert text.index("## Query") < text.index("## Soak") < text.index("## How to reproduce")
    assert text.endswith("## How to reproduce\n\nsteps\n")
    assert "query text" in text

""" "First/last N" over large files (several row groups), where the engine narrows the
read with row-group statistics and the n-th timestamp before decoding full rows."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.query import scan
from k2.query.files import RowGroup
from k2.query.scan import RowFilter, stats_bound
from k2.records import TRADE
from tests.query.conftest import EngineFactory, Lake
from tests.query.engine_kit import DAY, T0, append, dt, key_of

PER_SYMBOL = 200_000


def big_trades() -> tuple[pa.Table, list[tuple[int, str, str, int]]]:
    """200k trades each of BTCUSDT and XRPUSDT (one bucket: one 400k-row file of four
    row groups), with repeated timestamps; and their keys, sorted."""
    rng = np.random.default_rng(11)
    parts = []
    for k, symbol in enumerate(("BTCUSDT", "XRPUSDT")):
        ts = np.sort(rng.integers(T0, T0 + DAY, PER_SYMBOL // 2)).repeat(2)  # pairs tie
        ids = np.arange(PER_SYMBOL, dtype=np.int64) + k * 10_000_000
        ids[0::2], ids[1::2] = ids[1::2].copy(), ids[0::2].copy()  # ties out of id order
        parts.append((symbol, ts, ids))
    n = 2 * PER_SYMBOL
    symbols = pa.array([s for s, _, _ in parts for _ in range(PER_SYMBOL)])
    ts = pa.array(np.concatenate([p[1] for p in parts])).cast(pa.timestamp("us", tz="UTC"))
    ids = pa.array(np.concatenate([p[2] for p in parts]))
    dec = pa.decimal128(18, 8)
    price = pa.array([Decimal("123.45"), Decimal("123.46")] * (n // 2), dec)
    columns = {
        "message_id": pc.binary_join_element_wise("binance", symbols, ids.cast(pa.string()), ":"),
        "trade_id": ids,
        "exchange": pa.array(["binance"] * n),
        "symbol": symbols,
        "asset_class": pa.array(["crypto"] * n),
        "timestamp": ts,
        "event_time": ts,
        "price": price,
        "quantity": pa.array([Decimal(1)] * n, dec),
        "quote_quantity": pa.array([Decimal(123)] * n, dec),
        "currency": pa.array(["USDT"] * n),
        "side": pa.array(["BUY", "SELL"] * (n // 2)),
        "is_buyer_maker": pa.array([False, True] * (n // 2)),
        "source_sequence": ids,
        "ingestion_timestamp": ts,
        "vendor_data": pa.nulls(n, pa.string()),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in TRADE.arrow_schema()],
                                 schema=TRADE.arrow_schema())  # fmt: skip
    keys = sorted(
        zip(
            (t.value for t in table.column("timestamp")),
            table.column("exchange").to_pylist(),
            table.column("symbol").to_pylist(),
            table.column("trade_id").to_pylist(),
            strict=True,
        )
    )
    return table, keys


@pytest.fixture(scope="module")
def big() -> tuple[pa.Table, list[tuple[int, str, str, int]]]:
    return big_trades()


def test_first_and_last_n_on_large_files(
    make_engine: EngineFactory,
    lake: Lake,
    big: tuple[pa.Table, list[tuple[int, str, str, int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bounds: list[int | None] = []

    def spy(*args: Any) -> int | None:
        bound = stats_bound(*args)
        bounds.append(bound)
        return bound

    monkeypatch.setattr(scan, "stats_bound", spy)
    table, keys = big
    append(lake.tables["trades"], table)
    engine = make_engine()
    assert engine.trades(None, limit=1).meta.files_total == 1
    for symbols in (["BTCUSDT"], ["XRPUSDT"], None):
        mine = [k for k in keys if symbols is None or k[2] in symbols]
        last = engine.trades(symbols, order="desc", limit=100)
        assert [key_of(r) for r in last.table.to_pylist()] == mine[-100:][::-1]
        first = engine.trades(symbols, order="asc", limit=100, start=dt(T0 + DAY // 3))
        after = [k for k in mine if k[0] >= T0 + DAY // 3]
        assert [key_of(r) for r in first.table.to_pylist()] == after[:100]
        page2 = engine.trades(symbols, order="desc", limit=50, cursor=last.meta.next_cursor)
        assert [key_of(r) for r in page2.table.to_pylist()] == mine[-150:-100][::-1]
    window = engine.trades("BTCUSDT", order="desc", limit=30, end=dt(T0 + DAY // 2))
    want = [k for k in keys if k[2] == "BTCUSDT" and k[0] < T0 + DAY // 2][-30:][::-1]
    assert [key_of(r) for r in window.table.to_pylist()] == want
    # The statistics narrowed reads (pure row groups), and could not always (mixed ones).
    assert any(b is not None for b in bounds) and None in bounds


def _group(symbol: str, lo: int, hi: int, rows: int = 10) -> RowGroup:
    return RowGroup(rows, symbol, symbol, "binance", "binance", lo, hi)


def test_stats_bound() -> None:
    btc = RowFilter("trades", ("BTCUSDT",))
    groups = [_group("BTCUSDT", 0, 100), _group("BTCUSDT", 100, 200), _group("ETHUSDT", 150, 300)]
    assert stats_bound(groups, btc, "desc", 10) == 100  # the newest BTC group suffices
    assert stats_bound(groups, btc, "desc", 11) == 0
    assert stats_bound(groups, btc, "desc", 21) is None  # not enough proven rows
    assert stats_bound(groups, btc, "asc", 10) == 100
    mixed = [RowGroup(1000, "BTCUSDT", "XRPUSDT", "binance", "binance", 0, 100)]
    assert stats_bound(mixed, btc, "desc", 5) is None  # rows of BTC there: unknown count
    assert stats_bound(mixed, RowFilter("trades"), "desc", 5) == 0  # any symbol: all count
    no_stats = [*groups, RowGroup(5, None, None, None, None, None, None)]
    assert stats_bound(no_stats, btc, "desc", 1) is None
    # A group straddling the window's end or the cursor is not counted as sure.
    windowed = RowFilter("trades", ("BTCUSDT",), end_us=150)
    assert stats_bound(groups, windowed, "desc", 10) == 0
    paged = RowFilter("trades", ("BTCUSDT",), after=(200, "binance", "BTCUSDT", 7),
                      after_order="desc")  # fmt: skip
    assert stats_bound(groups, paged, "desc", 10) == 0
    other_exchange = RowFilter("trades", ("BTCUSDT",), exchange="kraken")
    assert stats_bound(groups, other_exchange, "desc", 1) is None

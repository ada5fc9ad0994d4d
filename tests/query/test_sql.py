"""The SQL sandbox: the views answer, everything that reaches outside is refused, long
queries are interrupted, big results are capped."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2.config import QuerySettings
from k2.query.base import QueryError, TailView
from k2.query.sql import check_sql
from tests.query.conftest import EngineFactory, Lake
from tests.query.engine_kit import DAY, T0, FixedTail, Trade, append_by_day, market, trades_table


@pytest.fixture
def loaded(lake: Lake) -> list[Trade]:
    trades = market(days=2, per_symbol_day=30)
    append_by_day(lake.tables["trades"], trades)
    return trades


def test_views_answer(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine()
    counts = engine.sql(
        "WITH t AS (SELECT symbol FROM trades) SELECT symbol, count(*) AS n FROM t "
        "GROUP BY symbol ORDER BY symbol"
    )
    assert counts.table.to_pylist() == [
        {"symbol": s, "n": 60} for s in sorted({t.symbol for t in loaded})
    ]
    assert counts.meta.extra["truncated"] is False and counts.meta.sources == ["lake"]
    prices = engine.sql(
        "SELECT price FROM trades WHERE symbol = 'BTCUSDT' ORDER BY timestamp, trade_id"
    )
    assert prices.table.schema.field("price").type == pa.decimal128(18, 8)
    btc = sorted((t for t in loaded if t.symbol == "BTCUSDT"), key=lambda t: t.key)
    assert prices.table.column("price").to_pylist() == [t.price for t in btc]
    bars = engine.sql("SELECT * FROM bars_1m WHERE symbol = 'ETHUSDT' ORDER BY bar_start")
    assert bars.table.to_pylist() == engine.bars("ETHUSDT", interval="1m").table.to_pylist()
    assert engine.sql("SELECT count(*) AS n FROM quotes").table.column("n").to_pylist() == [0]


@pytest.mark.parametrize(
    "text",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_parquet('{outside}')",
        "SELECT * FROM read_blob('{catalog}')",
        "SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')",
        "COPY (SELECT * FROM trades) TO '{target}'",
        "ATTACH '{target}.db' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET threads = 1",
        "RESET lock_configuration",
        "PRAGMA version",
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW trades",
        "INSERT INTO trades SELECT * FROM trades",
        "EXPORT DATABASE '{target}'",
        "SELECT 1; SELECT 2",
        "SELECT 1; COPY (SELECT 1) TO '{target}'",
        "SELECT * FROM query('COPY (SELECT 1) TO ''{target}''')",
        "SELEC 1",
        "",
    ],
)
def test_sandbox_refusals(
    make_engine: EngineFactory, loaded: list[Trade], tmp_path: Path, text: str
) -> None:
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"secret": [1]}), outside)
    target = tmp_path / "leak.csv"
    catalog = tmp_path / "lake" / "catalog.db"
    assert catalog.exists()
    engine = make_engine()
    with pytest.raises(QueryError) as err:
        engine.sql(text.format(outside=outside, target=target, catalog=catalog))
    assert (err.value.code, err.value.status) == ("bad-sql", 400), str(err.value)
    assert not target.exists() and not Path(f"{target}.db").exists()
    # The sandbox still works after a refusal.
    assert engine.sql("SELECT count(*) AS n FROM trades").table.column("n").to_pylist() == [240]


def test_check_sql_uses_the_parser() -> None:
    # A string literal mentioning COPY is fine; a comment does not hide a second statement.
    assert check_sql("SELECT 'COPY x TO y; ATTACH' AS s;") == "SELECT 'COPY x TO y; ATTACH' AS s"
    with pytest.raises(QueryError):
        check_sql("SELECT 1 -- comment\n; DROP TABLE trades")


def test_timeout_interrupts(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine()
    t0 = time.monotonic()
    with pytest.raises(QueryError) as err:
        engine.sql("SELECT count(*) FROM range(1000000000000) a, range(1000) b", timeout_s=0.3)
    assert (err.value.code, err.value.status) == ("sql-timeout", 408)
    assert time.monotonic() - t0 < 30
    assert engine.sql("SELECT 42 AS x").table.column("x").to_pylist() == [42]


def test_row_cap(make_engine: EngineFactory, loaded: list[Trade]) -> None:
    engine = make_engine(settings=QuerySettings(sql_max_rows=50_000))
    capped = engine.sql("SELECT range AS i FROM range(100000) ORDER BY i", max_rows=10)
    assert capped.table.column("i").to_pylist() == list(range(10))
    assert capped.meta.extra["truncated"] is True and capped.meta.rows == 10
    default = engine.sql("SELECT range AS i FROM range(100000)")
    assert default.table.num_rows == 50_000 and default.meta.extra["truncated"] is True
    whole = engine.sql("SELECT * FROM trades", max_rows=240)
    assert whole.table.num_rows == 240 and whole.meta.extra["truncated"] is False
    with pytest.raises(QueryError):
        engine.sql("SELECT 1", max_rows=50_001)
    with pytest.raises(QueryError):
        engine.sql("SELECT 1", timeout_s=0)


def test_views_include_the_tail(make_engine: EngineFactory, lake: Lake) -> None:
    trades = market(days=2, per_symbol_day=10)
    (snapshot,) = append_by_day(lake.tables["trades"], [t for t in trades if t.ts < T0 + DAY])
    tail_trades = [t for t in trades if t.ts >= T0 + DAY] + [trades[0]]  # one duplicate
    tail = FixedTail(lake.tables, {"trades": TailView(snapshot, {}, trades_table(tail_trades))})
    engine = make_engine(tail=tail)
    result = engine.sql("SELECT count(*) AS n, count(DISTINCT message_id) AS ids FROM trades")
    assert result.table.to_pylist() == [{"n": 80, "ids": 80}]
    assert result.meta.sources == ["lake", "tail"]

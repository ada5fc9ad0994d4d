"""``k2 query ...`` and ``k2 api-key``, in-process, against the real-data lake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from k2.api.auth import KeyStore
from k2.cli import app
from k2.config import LakeSettings, Settings
from k2.lake.catalog import catalog_from
from k2.lake.tables import ensure_tables
from k2.log.factory import open_log, topic_layout
from tests.api.conftest import ApiLake
from tests.api.wire import csv_text, read_csv, wire_rows


@pytest.fixture
def k2(api_lake: ApiLake, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``k2(*args)``: run the CLI against the session lake; returns the Click result."""
    monkeypatch.setenv("K2_DATA_DIR", str(api_lake.data_dir))
    monkeypatch.delenv("K2_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, list(args), input=input, catch_exceptions=False)

    return run


def test_trades_table_shows_exact_values(k2: Any) -> None:
    result = k2("query", "trades", "-s", "btcusdt", "--limit", "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "28165.47000000" in out and "0.00056000" in out
    assert "2023-04-04T23:59:59.999000Z" in out and "3071245456" in out
    assert "3071245457" not in out
    assert "3 row(s)" in result.stderr and "more: --cursor" in result.stderr


def test_trades_csv_and_json(k2: Any, api_lake: ApiLake) -> None:
    expected = wire_rows(api_lake.trades.slice(0, 20))
    csv = k2("query", "trades", "--limit", "20", "--format", "csv")
    assert csv.exit_code == 0
    back = read_csv(csv.stdout_bytes)
    assert back == [{k: csv_text(v) for k, v in row.items()} for row in expected]
    doc = json.loads(k2("query", "trades", "--limit", "20", "-f", "json").stdout)
    assert doc["data"] == expected and doc["meta"]["rows"] == 20
    assert "request_id" not in doc["meta"]


def test_cursor_pages_through(k2: Any, api_lake: ApiLake) -> None:
    first = json.loads(k2("query", "trades", "--limit", "2000", "-f", "json").stdout)
    cursor = first["meta"]["next_cursor"]
    rest = json.loads(
        k2("query", "trades", "--limit", "2000", "-f", "json", "--cursor", cursor).stdout
    )
    ids = [r["trade_id"] for r in first["data"] + rest["data"]]
    assert ids == api_lake.trades["trade_id"].to_pylist()
    assert rest["meta"]["next_cursor"] is None


def test_parquet_needs_an_output_file(k2: Any, tmp_path: Path, api_lake: ApiLake) -> None:
    refused = k2("query", "quotes", "--format", "parquet")
    assert refused.exit_code == 2 and "--output" in refused.stderr
    out = tmp_path / "q.parquet"
    done = k2("query", "quotes", "-s", "BTCUSDT", "--limit", "100", "-f", "parquet", "-o", str(out))
    assert done.exit_code == 0
    table = pq.read_table(out)
    assert table.schema.field("bid_price").type == pa.decimal128(18, 8)
    btc = api_lake.quotes.filter(pa.compute.equal(api_lake.quotes["symbol"], "BTCUSDT"))
    assert table.to_pylist() == btc.slice(0, 100).to_pylist()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("query", "trades", "-s", "BTC USDT"), "bad symbol"),
        (("query", "trades", "-s", "NOSUCHCOIN"), "unknown symbol"),
        (("query", "trades", "--start", "2024-01-01T00:00:00"), "time zone"),
        (("query", "trades", "--order", "up"), "asc or desc"),
        (("query", "bars", "--interval", "7x"), "7x"),
        (("query", "trades", "--as-of", "42"), "42"),
        (("query", "sql", "DELETE FROM trades"), "error"),
        (("query", "trades", "--format", "xml"), "--format"),
    ],
)
def test_errors_exit_2_with_the_reason(k2: Any, args: tuple[str, ...], says: str) -> None:
    result = k2(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and says in result.stderr


def test_bars_summary_symbols_snapshots(k2: Any, api_lake: ApiLake) -> None:
    bars = read_csv(
        k2("query", "bars", "-s", "BTCUSDT", "--interval", "1h", "-f", "csv").stdout_bytes
    )
    assert sum(int(b["trade_count"] or 0) for b in bars) == 3144
    summary = json.loads(
        k2("query", "summary", "BTCUSDT", "--date", "2023-04-05", "-f", "json").stdout
    )
    assert summary["data"][0]["trade_count"] == 3143
    symbols = k2("query", "symbols")
    assert symbols.exit_code == 0 and "NKNUSDT" in symbols.stdout and "8015" in symbols.stdout
    snaps = json.loads(k2("query", "snapshots", "-f", "json").stdout)
    assert [s["snapshot_id"] for s in snaps["data"]] == api_lake.trade_snapshots
    table = k2("query", "snapshots")
    assert str(api_lake.trade_snapshots[0]) in table.stdout


def test_sql_from_argument_and_stdin(k2: Any) -> None:
    text = "SELECT symbol, count(*) AS n FROM quotes GROUP BY symbol ORDER BY symbol"
    shown = k2("query", "sql", text)
    assert shown.exit_code == 0 and "8015" in shown.stdout
    doc = json.loads(k2("query", "sql", "-", "-f", "json", input=text).stdout)
    assert {r["symbol"]: r["n"] for r in doc["data"]}["NKNUSDT"] == 74


def test_live_reads_records_not_yet_in_the_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_lake: ApiLake
) -> None:
    settings = Settings(data_dir=tmp_path, lake=LakeSettings())
    ensure_tables(catalog_from(settings.lake, settings.data_dir))
    log = open_log(settings)
    try:
        layout = topic_layout(settings)
        for spec in layout.specs():
            log.create_topic(spec)
        batch = api_lake.trades.slice(0, 100).combine_chunks().to_batches()[0]
        log.produce(layout.data_topic("trade"), batch)
    finally:
        log.close()
    monkeypatch.setenv("K2_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    live = runner.invoke(app, ["query", "trades", "--live", "-f", "json"])
    assert live.exit_code == 0, live.output
    doc = json.loads(live.stdout)
    assert doc["data"] == wire_rows(api_lake.trades.slice(0, 100))
    assert "tail" in doc["meta"]["sources"] and doc["meta"]["rows_tail"] == 100
    lake_only = json.loads(runner.invoke(app, ["query", "trades", "-f", "json"]).stdout)
    assert lake_only["data"] == []


def test_api_key_prints_a_key_and_its_entry() -> None:
    result = CliRunner().invoke(app, ["api-key", "alice"])
    assert result.exit_code == 0
    lines = [line.strip() for line in result.stdout.splitlines()]
    key = lines[lines.index(next(x for x in lines if x.startswith("API key"))) + 1]
    entry = next(x for x in lines if x.startswith("K2_API__KEYS=")).split("=", 1)[1]
    assert KeyStore([entry]).identify(key) == "alice"
    assert key not in entry
    again = CliRunner().invoke(app, ["api-key", "alice"])
    assert key not in again.stdout  # a fresh key every time
    bad = CliRunner().invoke(app, ["api-key", "not:ok"])
    assert bad.exit_code == 2


def test_every_query_command_has_help() -> None:
    for command in ("trades", "quotes", "recent", "bars", "summary", "symbols", "snapshots", "sql"):
        result = CliRunner().invoke(app, ["query", command, "--help"])
        assert result.exit_code == 0 and "--format" in result.stdout
    for command in ("serve", "api-key"):
        assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0

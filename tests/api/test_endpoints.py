"""Every /v1 endpoint against a real engine over real captured data, in every format."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.config import QuerySettings
from k2.lake.catalog import catalog_from
from k2.query.base import TailView
from k2.query.engine import QueryEngine
from tests.api.conftest import CAPTURE_NOW, ApiLake, AppFactory, StaticTail, TestClient
from tests.api.wire import csv_text, read_csv, read_table, table_meta, wire, wire_rows

#: (method, path, params or JSON body) of every data endpoint.
ENDPOINTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "trades": ("GET", "/v1/trades", {"symbol": "BTCUSDT", "limit": 50}),
    "recent": ("GET", "/v1/trades/recent", {"window_minutes": 1, "limit": 50}),
    "quotes": ("GET", "/v1/quotes", {"symbol": "btcusdt,NKNUSDT", "limit": 50}),
    "bars": ("GET", "/v1/bars", {"symbol": "BTCUSDT", "interval": "1m"}),
    "summary": ("GET", "/v1/summary/BTCUSDT", {"date": "2023-04-05"}),
    "symbols": ("GET", "/v1/symbols", {}),
    "snapshots": ("GET", "/v1/snapshots", {"table": "trades"}),
    "sql": (
        "POST",
        "/v1/sql",
        {
            "query": "SELECT symbol, count(*) AS n, min(price) AS low, "
            "max(timestamp) AS last FROM trades GROUP BY symbol"
        },
    ),
}


def call(client: TestClient, name: str, fmt: str | None = None, **headers: str) -> Any:
    method, path, args = ENDPOINTS[name]
    params: dict[str, Any] = {} if method == "POST" else dict(args)
    if fmt is not None:
        params["format"] = fmt
    if method == "POST":
        return client.post(path, json=args, params=params, headers=headers)
    return client.get(path, params=params, headers=headers)


def _json(client: TestClient, name: str) -> dict[str, Any]:
    resp = call(client, name)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()  # type: ignore[no-any-return]


# --- values, checked against the lake's own rows ------------------------------------


def test_trades_json(client: TestClient, api_lake: ApiLake) -> None:
    doc = _json(client, "trades")
    assert doc["data"] == wire_rows(api_lake.trades.slice(0, 50))
    assert doc["data"][0]["price"] == "28165.47000000"
    assert doc["data"][0]["timestamp"] == "2023-04-04T23:59:59.999000Z"
    meta = doc["meta"]
    assert meta["rows"] == 50 and meta["sources"] == ["lake"]
    assert meta["snapshot_id"] == api_lake.trade_snapshots[-1]
    assert meta["next_cursor"] and len(meta["request_id"]) == 16
    assert isinstance(meta["elapsed_ms"], float)


def test_trades_window(client: TestClient, api_lake: ApiLake) -> None:
    start, end = "2023-04-05T00:01:00Z", "2023-04-05T02:02:00+02:00"  # = 00:02:00Z
    resp = client.get("/v1/trades", params={"start": start, "end": end, "limit": 5000})
    doc = resp.json()
    ts = api_lake.trades["timestamp"]
    lo, hi = datetime(2023, 4, 5, 0, 1, tzinfo=UTC), datetime(2023, 4, 5, 0, 2, tzinfo=UTC)
    inside = api_lake.trades.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
    assert doc["data"] == wire_rows(inside)
    assert doc["meta"]["start"] == "2023-04-05T00:01:00.000000Z"
    assert doc["meta"]["end"] == "2023-04-05T00:02:00.000000Z"
    assert doc["meta"]["next_cursor"] is None and "link" not in resp.headers


def test_window_times_are_padded_iso(client: TestClient) -> None:
    params = {"start": "0001-01-01T00:00:00Z", "end": "0001-01-02T00:00:00+00:00"}
    doc = client.get("/v1/trades", params=params).json()
    assert doc["data"] == []
    assert (doc["meta"]["start"], doc["meta"]["end"]) == (
        "0001-01-01T00:00:00.000000Z",
        "0001-01-02T00:00:00.000000Z",
    )


def test_recent_trades_newest_first(client: TestClient, api_lake: ApiLake) -> None:
    doc = _json(client, "recent")
    since = CAPTURE_NOW - timedelta(minutes=1)
    recent = api_lake.trades.filter(pc.greater_equal(api_lake.trades["timestamp"], since))
    newest = recent.sort_by([("timestamp", "descending"), ("trade_id", "descending")])
    assert doc["data"] == wire_rows(newest.slice(0, 50))


def test_quotes_of_two_symbols(client: TestClient, api_lake: ApiLake) -> None:
    doc = _json(client, "quotes")
    wanted = api_lake.quotes.filter(
        pc.is_in(api_lake.quotes["symbol"], pa.array(["BTCUSDT", "NKNUSDT"]))
    )
    assert doc["data"] == wire_rows(wanted.slice(0, 50))
    assert {r["symbol"] for r in doc["data"]} == {"NKNUSDT"}  # 2021 comes first


def _minute_bars(trades: pa.Table) -> dict[datetime, list[dict[str, Any]]]:
    bars: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for row in trades.to_pylist():
        bars[row["timestamp"].replace(second=0, microsecond=0)].append(row)
    return bars


def test_bars_match_the_trades(client: TestClient, api_lake: ApiLake) -> None:
    doc = _json(client, "bars")
    expected = _minute_bars(api_lake.trades)
    assert [b["bar_start"] for b in doc["data"]] == [wire(m) for m in sorted(expected)]
    for bar in doc["data"]:
        rows = expected[datetime.fromisoformat(bar["bar_start"])]
        prices = [r["price"] for r in rows]
        volume = sum((r["quantity"] for r in rows), Decimal(0))
        assert bar["trade_count"] == len(rows)
        assert (bar["open"], bar["close"]) == (wire(prices[0]), wire(prices[-1]))
        assert (bar["high"], bar["low"]) == (wire(max(prices)), wire(min(prices)))
        assert Decimal(bar["volume"]) == volume and bar["volume"] == wire(volume)


def test_summary_of_one_day(client: TestClient, api_lake: ApiLake) -> None:
    doc = _json(client, "summary")
    day = datetime(2023, 4, 5, tzinfo=UTC)
    rows = api_lake.trades.filter(pc.greater_equal(api_lake.trades["timestamp"], day))
    (row,) = doc["data"]
    assert row["trade_count"] == rows.num_rows == 3143  # the first trade is on April 4
    assert row["open"] == wire(rows["price"][0].as_py())
    assert row["close"] == wire(rows["price"][-1].as_py())
    assert doc["meta"]["start"] == "2023-04-05T00:00:00.000000Z"


def test_symbols(client: TestClient) -> None:
    rows = {r["symbol"]: r for r in _json(client, "symbols")["data"]}
    assert (rows["BTCUSDT"]["trades"], rows["BTCUSDT"]["quotes"]) == (3144, 8015)
    assert (rows["NKNUSDT"]["trades"], rows["NKNUSDT"]["quotes"]) == (0, 74)
    assert rows["BTCUSDT"]["first_timestamp"] == "2023-04-04T23:59:59.999000Z"


def test_snapshots(client: TestClient, api_lake: ApiLake) -> None:
    doc = _json(client, "snapshots")
    assert [s["snapshot_id"] for s in doc["data"]] == api_lake.trade_snapshots
    assert [s["added_records"] for s in doc["data"]] == [b.num_rows for b in api_lake.trade_batches]
    assert [s["is_current"] for s in doc["data"]] == [False, False, True]
    assert all(s["committed_at"].endswith("Z") for s in doc["data"])
    assert doc["meta"]["rows"] == 3


def test_sql(client: TestClient) -> None:
    doc = _json(client, "sql")
    assert doc["data"] == [
        {
            "symbol": "BTCUSDT",
            "n": 3144,
            "low": "28150.44000000",
            "last": "2023-04-05T00:06:54.256000Z",
        }
    ]
    resp = client.post("/v1/sql", json={"query": "SELECT trade_id FROM trades", "max_rows": 7})
    assert len(resp.json()["data"]) == 7


# --- every format carries the JSON's values ------------------------------------------


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
@pytest.mark.parametrize("fmt", ["csv", "parquet", "arrow"])
def test_formats_round_trip(client: TestClient, name: str, fmt: str) -> None:
    rows = _json(client, name)["data"]
    resp = call(client, name, fmt)
    assert resp.status_code == 200, resp.text
    if fmt == "csv":
        assert resp.headers["content-type"] == "text/csv; charset=utf-8"
        back = read_csv(resp.content)
        assert len(back) == len(rows) > 0
        for got, want in zip(back, rows, strict=True):
            assert list(got) == list(want)
            for key, value in want.items():
                if isinstance(value, dict):  # snapshots' k2 properties: JSON text in CSV
                    assert json.loads(got[key] or "") == value
                else:
                    assert got[key] == csv_text(value), key
        return
    table = read_table(resp)
    assert wire_rows(table) == rows or name == "snapshots"
    if name == "snapshots":
        assert [{**r, "k2": json.loads(r["k2"])} for r in wire_rows(table)] == rows
    assert table_meta(table)["rows"] == len(rows)
    if name in ("trades", "recent", "quotes"):
        assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        price = "price" if name != "quotes" else "bid_price"
        assert table.schema.field(price).type == pa.decimal128(18, 8)


@pytest.mark.parametrize(
    ("accept", "ctype"),
    [
        ("text/csv", "text/csv; charset=utf-8"),
        ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
        ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.stream"),
        ("application/json", "application/json"),
        ("text/html;q=0.9, text/csv;q=0.2", "text/csv; charset=utf-8"),
    ],
)
def test_accept_header_chooses_the_format(client: TestClient, accept: str, ctype: str) -> None:
    resp = call(client, "trades", Accept=accept)
    assert resp.status_code == 200 and resp.headers["content-type"] == ctype


# --- pagination ------------------------------------------------------------------------


def _walk(client: TestClient, url: str, params: dict[str, Any] | None) -> list[Any]:
    ids: list[Any] = []
    pages = 0
    resp = client.get(url, params=params)
    while True:
        assert resp.status_code == 200, resp.text
        pages += 1
        doc = resp.json()
        ids += [(r["symbol"], r.get("trade_id") or r.get("update_id")) for r in doc["data"]]
        nxt = resp.links.get("next")
        assert (nxt is None) == (doc["meta"]["next_cursor"] is None)
        if nxt is None:
            return ids
        assert pages < 100
        resp = client.get(nxt["url"])


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pagination_walks_every_trade_once(
    client: TestClient, api_lake: ApiLake, order: str
) -> None:
    ids = _walk(client, "/v1/trades", {"symbol": "BTCUSDT", "limit": 500, "order": order})
    expected = [("BTCUSDT", i) for i in api_lake.trades["trade_id"].to_pylist()]
    assert ids == (expected if order == "asc" else expected[::-1])


def test_pagination_of_quotes_in_a_window(client: TestClient, api_lake: ApiLake) -> None:
    params = {"start": "2021-10-01T00:00:00Z", "end": "2021-10-31T00:00:00Z", "limit": 10}
    ids = _walk(client, "/v1/quotes", params)
    old = api_lake.quotes.filter(
        pc.less(api_lake.quotes["timestamp"], datetime(2022, 1, 1, tzinfo=UTC))
    )
    assert ids == list(zip(old["symbol"].to_pylist(), old["update_id"].to_pylist(), strict=True))


def test_binary_pages_link_to_the_next_page(client: TestClient, api_lake: ApiLake) -> None:
    params = {"symbol": "BTCUSDT", "limit": 2000, "format": "parquet"}
    first = client.get("/v1/trades", params=params)
    assert first.headers["x-k2-next-cursor"]
    second = client.get(first.links["next"]["url"])
    assert second.headers["content-type"] == "application/vnd.apache.parquet"
    ids = read_table(first)["trade_id"].to_pylist() + read_table(second)["trade_id"].to_pylist()
    assert ids == api_lake.trades["trade_id"].to_pylist()
    assert "link" not in second.headers


# --- time travel and the hybrid tail ----------------------------------------------------


def test_as_of_snapshot_id_and_time(client: TestClient, api_lake: ApiLake) -> None:
    first = api_lake.trade_snapshots[0]
    doc = client.get("/v1/trades", params={"as_of": first, "limit": 5000}).json()
    assert doc["meta"]["snapshot_id"] == first
    assert doc["data"] == wire_rows(api_lake.trade_batches[0])
    snaps = client.get("/v1/snapshots").json()["data"]
    at = snaps[1]["committed_at"]
    doc = client.get("/v1/trades", params={"as_of": at, "limit": 5000}).json()
    assert doc["meta"]["snapshot_id"] == api_lake.trade_snapshots[1]
    assert doc["meta"]["rows"] == snaps[1]["total_records"]


def test_hybrid_answer_counts_as_hybrid(make_client: AppFactory, api_lake: ApiLake) -> None:
    settings = api_lake.settings()
    quotes_snap = json.loads(make_client().get("/v1/snapshots", params={"table": "quotes"}).text)[
        "data"
    ][-1]["snapshot_id"]
    # The lake as of the first commit; the tail holds the rest plus one duplicate.
    tail_rows = pa.concat_tables(
        [api_lake.trade_batches[0].slice(0, 1), *api_lake.trade_batches[1:]]
    )
    tail = StaticTail(
        {
            "trades": TailView(api_lake.trade_snapshots[0], {}, tail_rows),
            "quotes": TailView(quotes_snap, {}, api_lake.quotes.slice(0, 0)),
        }
    )
    engine = QueryEngine(
        catalog_from(settings.lake, settings.data_dir),
        settings=QuerySettings(),
        tail=tail,
        clock=lambda: CAPTURE_NOW,
        background_refresh=False,
    )
    try:
        client = make_client(engine_=engine)
        doc = client.get("/v1/trades", params={"limit": 5000}).json()
        assert doc["data"] == wire_rows(api_lake.trades)
        meta = doc["meta"]
        assert meta["sources"] == ["lake", "tail"] and meta["rows_tail"] == 3144 - 1048
        assert meta["snapshot_id"] == api_lake.trade_snapshots[0]
        metrics = client.get("/metrics").text
        assert 'k2_hybrid_queries_total{endpoint="/v1/trades"} 1.0' in metrics
    finally:
        engine.close()


def test_recent_trades_from_memory_equal_the_lake_path(
    make_client: AppFactory, api_lake: ApiLake
) -> None:
    """/v1/trades/recent answered on the event loop from the tail's recent window gives
    the bytes the thread-pool path gives; what memory cannot answer still answers."""
    from k2.query.recent import RecentStore

    settings = api_lake.settings()
    quotes_snap = json.loads(make_client().get("/v1/snapshots", params={"table": "quotes"}).text)[
        "data"
    ][-1]["snapshot_id"]
    store = RecentStore(window_us=3_600_000_000, max_rows=1_000_000)
    first_us = api_lake.trades["timestamp"].cast(pa.int64())[0].as_py()
    store.set_floor(first_us)  # the recent window holds the whole capture
    for batch in api_lake.trades.to_batches(max_chunksize=500):
        store.add(batch)
    quotes = TailView(quotes_snap, {}, api_lake.quotes.slice(0, 0))
    snapshot = api_lake.trade_snapshots[-1]  # the lake holds every trade: no tail rows
    empty = api_lake.trades.slice(0, 0)
    engines = {
        memory: QueryEngine(
            catalog_from(settings.lake, settings.data_dir),
            # Refreshing inline is never due during the test: memory answers only from
            # a loaded state, and a slow machine must not turn that into a lake read.
            settings=QuerySettings(refresh_ms=3_600_000),
            tail=StaticTail(
                {
                    "trades": TailView(snapshot, {}, empty, recent=store.cut() if memory else None),
                    "quotes": quotes,
                }
            ),
            clock=lambda: CAPTURE_NOW,
            background_refresh=False,
        )
        for memory in (True, False)
    }
    since = pa.scalar(CAPTURE_NOW - timedelta(minutes=5), pa.timestamp("us", tz="UTC"))
    in_window = pc.sum(pc.greater_equal(api_lake.trades["timestamp"], since)).as_py()
    assert 100 < in_window < api_lake.trades.num_rows
    answered_now = [0]
    real = engines[True].recent_trades_now

    def counted(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        answered_now[0] += answer is not None
        return answer

    engines[True].recent_trades_now = counted  # type: ignore[method-assign]
    try:
        clients = {m: make_client(engine_=e) for m, e in engines.items()}
        engines[True].recent_trades("BTCUSDT", window_minutes=1)  # loads the file index
        for params in (
            {"symbol": "BTCUSDT", "window_minutes": 5, "limit": 50},
            {"symbol": "BTCUSDT", "window_minutes": 5, "limit": 50, "order": "asc"},
            {"symbol": "BTCUSDT", "window_minutes": 5, "limit": 50, "format": "csv"},
            {"symbol": "BTCUSDT", "window_minutes": 5, "limit": 5000},  # > INLINE_ROWS
        ):
            got, want = (clients[m].get("/v1/trades/recent", params=params) for m in (True, False))
            assert got.status_code == want.status_code == 200, got.text
            if params.get("format") == "csv":
                assert got.text == want.text and got.text.count("\n") == 51
                continue
            g, w = got.json(), want.json()
            assert g["data"] == w["data"] and len(g["data"]) == min(params["limit"], in_window)
            assert g["meta"].get("recent_window") is True and "recent_window" not in w["meta"]
        assert answered_now[0] == 4
        # A symbol the recent window does not hold: a 404 from the lake path.
        missing = clients[True].get("/v1/trades/recent", params={"symbol": "BTCUSDX"})
        assert missing.status_code == 404 and answered_now[0] == 4
    finally:
        for e in engines.values():
            e.close()

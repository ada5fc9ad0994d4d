"""tail_top: the first n tail rows of a question, each message once, by either way."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

from k2.query.hybrid import tail_top
from k2.query.scan import KEYS, RowFilter
from tests.query.tail_testkit import T0_US, make_trades


def _tail(rng: random.Random, duplicates: bool) -> pa.Table:
    batches = [
        make_trades(symbol, rng.randint(1, 50), rng.randint(1, 40), step_us=rng.choice([1, 1000]))
        for symbol in ("BTCUSDT", "ETHUSDT", "BTCUSDT", "SOLUSDT")
    ]
    table = pa.Table.from_batches(batches)
    if not duplicates:  # overlapping id ranges of one symbol made copies: drop them
        keep = {m: i for i, m in enumerate(table.column("message_id").to_pylist())}
        table = table.take(sorted(keep.values()))
    rows = list(range(table.num_rows))
    rng.shuffle(rows)  # the tail holds rows in arrival order, not key order
    return table.take(rows)


@pytest.mark.parametrize("duplicates", [False, True])
def test_tail_top_equals_a_plain_computation(duplicates: bool) -> None:
    rng = random.Random(3 + duplicates)
    conn = duckdb.connect()
    columns = ["message_id", "timestamp", "exchange", "symbol", "trade_id", "price"]
    for _ in range(60):
        rows = _tail(rng, duplicates)
        symbols = tuple(rng.sample(["BTCUSDT", "ETHUSDT", "SOLUSDT"], rng.randint(1, 2)))
        lo = T0_US + rng.randint(0, 30_000) if rng.random() < 0.5 else None
        hi = T0_US + rng.randint(10_000, 60_000) if rng.random() < 0.5 else None
        order = rng.choice(["asc", "desc"])
        n = rng.choice([1, 5, 50, 1000])
        flt = RowFilter("trades", symbols, None, lo, hi)
        got = tail_top(conn, rows, flt, columns, order, n)  # type: ignore[arg-type]
        seen: dict[str, tuple[int, str, str, int]] = {}
        for r in rows.to_pylist():
            ts = int(r["timestamp"].timestamp() * 1_000_000)
            if r["symbol"] not in symbols or (lo is not None and ts < lo):
                continue
            if hi is not None and ts >= hi:
                continue
            key = (ts, r["exchange"], r["symbol"], r["trade_id"])
            seen[r["message_id"]] = min(seen.get(r["message_id"], key), key)
        want = sorted(seen.values(), reverse=order == "desc")[:n]
        keys = list(zip(*(got.column(k).to_pylist() for k in KEYS["trades"]), strict=True))
        assert [(int(t.timestamp() * 1_000_000), *rest) for t, *rest in keys] == want
        assert got.column_names == columns
    conn.close()

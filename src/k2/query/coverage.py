"""Which symbols a data file holds, how many rows and from when to when.

A file whose bounds pin one ``(exchange, symbol)`` (lower = upper bound) is described
by its manifest entry alone. Any other file is read once, three columns, grouped; the
answer is cached by path, which is safe because Iceberg data files are immutable. This
serves :meth:`~k2.query.engine.QueryEngine.symbols` and the "unknown symbol" check
without scanning the lake on every call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from k2.query.files import DataFile
from k2.query.scan import parquet_source

if TYPE_CHECKING:
    import duckdb

#: Files read by one coverage query.
_BATCH = 256


@dataclass(frozen=True, slots=True)
class Coverage:
    """Rows of one ``(exchange, symbol)`` in one file; times UTC µs, inclusive."""

    exchange: str
    symbol: str
    rows: int
    first_us: int
    last_us: int


class CoverageCache:
    """Per-file coverage, computed on demand and kept for ``max_files`` files (LRU)."""

    def __init__(self, max_files: int = 200_000) -> None:
        self._max = max_files
        self._lock = threading.Lock()
        self._by_path: OrderedDict[str, tuple[Coverage, ...]] = OrderedDict()

    def get(
        self, conn: duckdb.DuckDBPyConnection, files: Sequence[DataFile]
    ) -> dict[str, tuple[Coverage, ...]]:
        """Coverage of each of ``files`` by path, reading the ones not known yet."""
        out: dict[str, tuple[Coverage, ...]] = {}
        missing: list[DataFile] = []
        with self._lock:
            for f in files:
                known = self._by_path.get(f.path)
                if known is not None:
                    self._by_path.move_to_end(f.path)
                    out[f.path] = known
                elif (key := _from_metadata(f)) is not None:
                    out[f.path] = key
                else:
                    missing.append(f)
        for i in range(0, len(missing), _BATCH):
            chunk = missing[i : i + _BATCH]
            by_read = {f.read_path: f.path for f in chunk}
            found: dict[str, list[Coverage]] = {f.path: [] for f in chunk}
            rows = conn.sql(
                "SELECT filename, exchange, symbol, count(*), epoch_us(min(timestamp)), "
                f"epoch_us(max(timestamp)) FROM {parquet_source(chunk, filename=True)} "
                "GROUP BY ALL"
            ).fetchall()
            for filename, exchange, symbol, count, first, last in rows:
                path = by_read.get(filename)
                if path is not None:
                    found[path].append(Coverage(exchange, symbol, int(count), first, last))
            with self._lock:
                for path, cov in found.items():
                    out[path] = self._by_path[path] = tuple(cov)
                while len(self._by_path) > self._max:
                    self._by_path.popitem(last=False)
        return out


def _from_metadata(f: DataFile) -> tuple[Coverage, ...] | None:
    key = f.single_key
    if key is None or f.ts_lo is None or f.ts_hi is None:
        return None
    if f.record_count == 0:
        return ()
    return (Coverage(key[0], key[1], f.record_count, f.ts_lo, f.ts_hi),)


def coverage_table(found: dict[tuple[str, str], list[int]]) -> pa.Table:
    """``{(symbol, exchange): [first µs, last µs, trades, quotes]}`` as the rows of
    :meth:`~k2.query.engine.QueryEngine.symbols`, ordered by symbol then exchange."""
    keys = sorted(found)
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "symbol": pa.array([k[0] for k in keys], pa.string()),
            "exchange": pa.array([k[1] for k in keys], pa.string()),
            "first_timestamp": pa.array([found[k][0] for k in keys], pa.int64()).cast(ts),
            "last_timestamp": pa.array([found[k][1] for k in keys], pa.int64()).cast(ts),
            "trades": pa.array([found[k][2] for k in keys], pa.int64()),
            "quotes": pa.array([found[k][3] for k in keys], pa.int64()),
        }
    )


def add_coverage(
    found: dict[tuple[str, str], list[int]], coverage: Iterable[Coverage], which: int
) -> None:
    """Fold ``coverage`` into ``found`` (see :func:`coverage_table`); ``which`` 0 counts
    trades, 1 quotes."""
    for c in coverage:
        entry = found.setdefault((c.symbol, c.exchange), [c.first_us, c.last_us, 0, 0])
        entry[0] = min(entry[0], c.first_us)
        entry[1] = max(entry[1], c.last_us)
        entry[2 + which] += c.rows


def rows_coverage(conn: duckdb.DuckDBPyConnection, rows: pa.Table) -> list[Coverage]:
    """Coverage of in-memory canonical ``rows`` (the live tail's)."""
    from k2.query.hybrid import registered

    if rows.num_rows == 0:
        return []
    with registered(conn, rows) as name:
        found = conn.sql(
            "SELECT exchange, symbol, count(*), epoch_us(min(timestamp)), "
            f"epoch_us(max(timestamp)) FROM {name} GROUP BY ALL"
        ).fetchall()
    return [Coverage(e, s, int(n), int(lo), int(hi)) for e, s, n, lo, hi in found]

"""Joining the live tail's rows to the lake's: filter them alike, drop duplicates.

The tail (:class:`~k2.query.base.TailView`) holds the log's records beyond the offsets
of lake snapshot ``view.snapshot_id``; the engine reads the lake *at that snapshot*, so
the two sides meet without a gap. A record can still be on both sides (a replay, a
retried append): it is kept once, and the lake copy wins. Duplicates inside the tail
itself (the same message logged twice) are kept once too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from k2.query.base import DataType, TailView
from k2.query.files import DataFile, SnapshotIndex
from k2.query.scan import (
    KEYS,
    Order,
    RowFilter,
    conform,
    empty,
    filtered,
    order_by,
    parquet_source,
    select_list,
    sort_rows,
    sql_str,
    sql_ts,
    union_source,
)

if TYPE_CHECKING:
    import duckdb

_names = itertools.count()

#: Column marking where a merged row came from (0 lake, 1 tail); dropped before return.
SOURCE_COLUMN = "__k2_source"


@contextmanager
def registered(conn: duckdb.DuckDBPyConnection, table: pa.Table) -> Iterator[str]:
    """``table`` visible to ``conn``'s SQL under a fresh name while the block runs."""
    name = f"k2_tail_{next(_names)}"
    conn.register(name, table)
    try:
        yield name
    finally:
        conn.unregister(name)


def tail_top(
    conn: duckdb.DuckDBPyConnection,
    rows: pa.Table,
    flt: RowFilter,
    columns: Sequence[str],
    order: Order,
    n: int,
) -> pa.Table:
    """The first ``n`` tail rows matching ``flt`` in key ``order``, each message once.

    Without a cursor and with no message twice among the matching rows (the usual
    case) this is Arrow kernels on the tail's rows; otherwise one DuckDB query
    (``QUALIFY`` keeps each message's first copy in key order).
    """
    if rows.num_rows == 0:
        return empty(flt.data_type, columns)
    if flt.after is None:
        picked = filtered(rows, flt)
        if picked.num_rows == 0:
            return empty(flt.data_type, columns)
        ids = picked.column("message_id")
        if pc.count_distinct(ids).as_py() == picked.num_rows:
            top = sort_rows(picked, flt.data_type, order).slice(0, n)
            return conform(top, flt.data_type, columns)
    first = order_by(flt.data_type, "asc")
    with registered(conn, rows) as name:
        text = (
            f"SELECT {select_list(columns)} FROM {name} WHERE {flt.where()} "
            f"QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY {first}) = 1 "
            f"ORDER BY {order_by(flt.data_type, order)} LIMIT {int(n)}"
        )
        return conform(conn.sql(text).to_arrow_table(), flt.data_type, columns)


def merge_top(
    lake: pa.Table, tail: pa.Table, data_type: DataType, order: Order, n: int
) -> tuple[pa.Table, int]:
    """The first ``n`` rows of ``lake`` ∪ ``tail`` in key ``order``, with tail rows whose
    ``message_id`` the lake rows hold removed; rows carry :data:`SOURCE_COLUMN`.

    Exact for the first ``n`` when each side holds its own first ``n``: a duplicate has
    the same key as its lake copy, so both fall inside or outside the window together.
    Returns the rows and the number of duplicates removed.
    """
    dup = pc.is_in(tail.column("message_id"), value_set=lake.column("message_id"))
    duplicates = int(pc.sum(dup).as_py() or 0)
    if duplicates:
        tail = tail.filter(pc.invert(dup))
    lake = lake.append_column(SOURCE_COLUMN, pa.array([0] * lake.num_rows, pa.int8()))
    tail = tail.append_column(SOURCE_COLUMN, pa.array([1] * tail.num_rows, pa.int8()))
    merged = sort_rows(pa.concat_tables([lake, tail]), data_type, order)
    return merged.slice(0, n), duplicates


def clean_tail(
    conn: duckdb.DuckDBPyConnection,
    rows: pa.Table,
    flt: RowFilter,
    columns: Sequence[str],
    index: SnapshotIndex,
) -> tuple[pa.Table, int]:
    """Every tail row matching ``flt`` that the lake (``index``) does not also hold, each
    message once; and how many were dropped as duplicates of lake rows.

    The lake is searched for the tail's message ids only over the tail rows' own symbols
    and time span, which is small (the tail is what the lake has not committed yet).
    """
    if rows.num_rows == 0:
        return empty(flt.data_type, columns), 0
    wanted = list(dict.fromkeys([*columns, "message_id", "symbol", "timestamp"]))
    with registered(conn, rows) as name:
        text = (
            f"SELECT {select_list(wanted)} FROM {name} WHERE {flt.where()} "
            f"QUALIFY row_number() OVER (PARTITION BY message_id "
            f"ORDER BY {order_by(flt.data_type, 'asc')}) = 1"
        )
        tail = conform(conn.sql(text).to_arrow_table(), flt.data_type, wanted)
    if tail.num_rows == 0:
        return conform(tail, flt.data_type, columns), 0
    symbols = sorted(str(s) for s in pc.unique(tail.column("symbol")).to_pylist())
    lo = int(pc.min(tail.column("timestamp")).value)
    hi = int(pc.max(tail.column("timestamp")).value)
    files = index.prune(symbols=symbols, start_us=lo, end_us=hi + 1)
    if not files:
        return conform(tail, flt.data_type, columns), 0
    symbol_list = ", ".join(sql_str(s) for s in symbols)
    with registered(conn, tail) as name:
        text = (
            f"SELECT {select_list(columns)} FROM {name} t ANTI JOIN ("
            f"SELECT message_id FROM {parquet_source(files)} WHERE symbol IN ({symbol_list}) "
            f"AND timestamp >= {sql_ts(lo)} AND timestamp <= {sql_ts(hi)}"
            f") l USING (message_id)"
        )
        kept = conform(conn.sql(text).to_arrow_table(), flt.data_type, columns)
    return kept, tail.num_rows - kept.num_rows


@dataclass(frozen=True)
class LakeAndTail:
    """A FROM item (``sql``) over lake files and clean tail rows, and what the tail gave."""

    sql: str
    tail_rows: int
    duplicates: int


@contextmanager
def lake_and_tail(
    conn: duckdb.DuckDBPyConnection,
    flt: RowFilter,
    files: Sequence[DataFile],
    view: TailView | None,
    index: SnapshotIndex,
    columns: Sequence[str],
) -> Iterator[LakeAndTail]:
    """The UNION ALL of ``columns`` of the lake ``files`` and of the tail rows of
    ``view`` matching ``flt`` that the lake does not hold (see :func:`clean_tail`),
    usable while the block runs."""
    parts: list[str] = []
    if files:
        parts.append(f"SELECT {select_list(columns)} FROM {parquet_source(files)}")
    if view is None:
        yield LakeAndTail(union_source(parts, flt.data_type, columns), 0, 0)
        return
    tail, duplicates = clean_tail(conn, view.rows, flt, columns, index)
    if tail.num_rows == 0:
        yield LakeAndTail(union_source(parts, flt.data_type, columns), 0, duplicates)
        return
    with registered(conn, tail) as name:
        parts.append(f"SELECT {select_list(columns)} FROM {name}")
        yield LakeAndTail(union_source(parts, flt.data_type, columns), tail.num_rows, duplicates)


def key_columns(data_type: DataType) -> tuple[str, ...]:
    """The ordering key plus ``message_id`` (what a merge needs besides the output)."""
    return (*KEYS[data_type], "message_id")

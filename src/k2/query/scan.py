"""Reading rows of trades/quotes from data files: filters, keyset order, "first/last N".

Rows are ordered by the key ``(timestamp, exchange, symbol, sequence)`` where sequence
is ``trade_id`` (trades) or ``update_id`` (quotes). :func:`top_rows` returns the first
``n`` rows in key order (``asc``) or the last ``n`` (``desc``) without reading a
symbol's whole history: it walks the candidate files from the newest (or oldest) by
their timestamp bounds, stops as soon as no remaining file can hold a row that beats
the n-th row found, and inside large files first finds the n-th timestamp from the
timestamp column alone so the full rows are decoded only around it.

SQL text is built here from validated values only (symbols and exchanges match
:data:`SYMBOL_RE`/:data:`EXCHANGE_RE`, times and ids are integers); user SQL never
reaches this module.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.lake import message_ids
from k2.query.base import DataType, QueryError
from k2.query.files import TS_MAX, TS_MIN, DataFile, FooterCache, RowGroup
from k2.records import QUOTE, TRADE

if TYPE_CHECKING:
    import duckdb

Order = Literal["asc", "desc"]
T = TypeVar("T", str, int)

#: What a symbol or exchange may look like (anything else cannot exist in the lake).
SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9._:/-]{0,63}$")
EXCHANGE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")

#: The ordering key of each data type.
KEYS: dict[DataType, tuple[str, str, str, str]] = {
    "trades": ("timestamp", "exchange", "symbol", "trade_id"),
    "quotes": ("timestamp", "exchange", "symbol", "update_id"),
}

#: Canonical Arrow schema of each data type.
SCHEMAS: dict[DataType, pa.Schema] = {
    "trades": TRADE.arrow_schema(),
    "quotes": QUOTE.arrow_schema(),
}

#: Above this many rows in a batch of files, find the n-th timestamp first (cheap:
#: one column) so the full rows are decoded only around it.
CUTOFF_MIN_ROWS = 20_000

#: Up to this many rows, the n-th timestamp comes from a top-n aggregate.
TOP_AGGREGATE_MAX = 10_000

#: Most files read by one query of the walk (the batch doubles from 1 up to this).
MAX_BATCH_FILES = 64

#: The row-group path (:func:`_read_top_groups`) answers "first/last N" for N up to
#: this (every page the API serves: ``max_limit`` + 1 to see whether more follow) ...
DIRECT_MAX_N = 10_000_000
#: ... reading at most this many rows (what bounds its work); beyond, DuckDB reads.
DIRECT_MAX_ROWS = 262_144


def sql_str(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_ts(us: int) -> str:
    """UTC µs as a DuckDB TIMESTAMPTZ expression (constant-folded, so it prunes)."""
    return f"make_timestamptz({int(us)}::BIGINT)"


def parquet_source(files: Sequence[DataFile], *, filename: bool = False) -> str:
    """A ``read_parquet`` call over ``files`` (Iceberg's own schema, no hive columns);
    ``filename`` adds the column of that name (the path as given)."""
    paths = ", ".join(sql_str(f.read_path) for f in files)
    extra = ", filename=true" if filename else ""
    return f"read_parquet([{paths}], hive_partitioning=false{extra})"


@dataclass(frozen=True)
class RowFilter:
    """Which rows a question is about; times UTC µs, ``start`` inclusive, ``end`` exclusive.

    ``after`` is a keyset position ``(timestamp µs, exchange, symbol, sequence)``: only
    rows strictly after it in ``after_order`` are kept (the cursor of a previous page).
    """

    data_type: DataType
    symbols: tuple[str, ...] | None = None
    exchange: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    after: tuple[int, str, str, int] | None = None
    after_order: Order = "asc"

    @property
    def lo_us(self) -> int | None:
        """Smallest timestamp a matching row can have."""
        lo = self.start_us
        if self.after is not None and self.after_order == "asc":
            lo = self.after[0] if lo is None else max(lo, self.after[0])
        return lo

    @property
    def hi_us(self) -> int | None:
        """One past the largest timestamp a matching row can have."""
        hi = self.end_us
        if self.after is not None and self.after_order == "desc":
            hi = self.after[0] + 1 if hi is None else min(hi, self.after[0] + 1)
        return hi

    def where(self) -> str:
        """The filter as an SQL boolean expression over the canonical columns."""
        parts: list[str] = []
        if self.symbols is not None:
            if len(self.symbols) == 1:
                parts.append(f"symbol = {sql_str(self.symbols[0])}")
            else:
                parts.append(f"symbol IN ({', '.join(sql_str(s) for s in self.symbols)})")
        if self.exchange is not None:
            parts.append(f"exchange = {sql_str(self.exchange)}")
        lo, hi = self.lo_us, self.hi_us
        if lo is not None:
            parts.append(f"timestamp >= {sql_ts(lo)}")
        if hi is not None:
            parts.append(f"timestamp < {sql_ts(hi)}")
        if self.after is not None:
            ts, exchange, symbol, seq = self.after
            key = ", ".join(KEYS[self.data_type])
            op = ">" if self.after_order == "asc" else "<"
            parts.append(
                f"({key}) {op} ({sql_ts(ts)}, {sql_str(exchange)}, {sql_str(symbol)}, {int(seq)})"
            )
        return " AND ".join(parts) if parts else "true"

    def prune(self, files: Sequence[DataFile]) -> list[DataFile]:
        """``files`` that may hold matching rows, by their bounds."""
        lo, hi = self.lo_us, self.hi_us
        out = []
        for f in files:
            if lo is not None and f.ts_hi is not None and f.ts_hi < lo:
                continue
            if hi is not None and f.ts_lo is not None and f.ts_lo >= hi:
                continue
            out.append(f)
        return out


def union_source(parts: Sequence[str], data_type: DataType, columns: Sequence[str]) -> str:
    """A parenthesised FROM item: the UNION ALL of SELECTs ``parts`` over ``columns``, or
    an empty relation of the canonical column types when there are none."""
    if not parts:
        schema = SCHEMAS[data_type]
        nulls = ", ".join(f'NULL::{_duck_type(schema.field(c).type)} AS "{c}"' for c in columns)
        return f"(SELECT {nulls} WHERE false)"
    return "(" + " UNION ALL ".join(parts) + ")"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_binary(t):
        return "BLOB"
    return "VARCHAR"


def order_by(data_type: DataType, order: Order) -> str:
    """ORDER BY clause body for the key in ``order``."""
    direction = "DESC" if order == "desc" else "ASC"
    return ", ".join(f"{k} {direction}" for k in KEYS[data_type])


def sort_rows(table: pa.Table, data_type: DataType, order: Order) -> pa.Table:
    """``table`` sorted by the key in ``order``."""
    direction = "descending" if order == "desc" else "ascending"
    return table.sort_by([(k, direction) for k in KEYS[data_type]])


def conform(table: pa.Table, data_type: DataType, columns: Sequence[str]) -> pa.Table:
    """``table``'s ``columns`` with the canonical types, names and field docs."""
    schema = SCHEMAS[data_type]
    fields = [schema.field(c) for c in columns]
    arrays = []
    for c, f in zip(columns, fields, strict=True):
        column = table.column(c)
        arrays.append(column if column.type == f.type else column.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def select_list(columns: Sequence[str]) -> str:
    """Quoted column list."""
    return ", ".join(f'"{c}"' for c in columns)


@dataclass
class Scan:
    """Rows found by :func:`top_rows` and how many files were read to find them."""

    table: pa.Table
    files_scanned: int


def top_rows(
    conn: duckdb.DuckDBPyConnection,
    files: Sequence[DataFile],
    flt: RowFilter,
    columns: Sequence[str],
    order: Order,
    n: int,
    footers: FooterCache | None = None,
) -> Scan:
    """The first ``n`` rows matching ``flt`` in key ``order`` from ``files``.

    ``columns`` must include the key. The result is sorted in ``order`` and holds
    fewer than ``n`` rows only when fewer match. ``footers`` (row-group statistics)
    lets a large file be read from its last (or first) row groups only.
    """
    desc = order == "desc"
    candidates = flt.prune(files)
    if desc:
        candidates.sort(key=lambda f: TS_MAX if f.ts_hi is None else f.ts_hi, reverse=True)
    else:
        candidates.sort(key=lambda f: TS_MIN if f.ts_lo is None else f.ts_lo)
    got: pa.Table | None = None
    bound: int | None = None
    i, batch, scanned = 0, 1, 0
    while i < len(candidates):
        if bound is not None:
            nxt = candidates[i]
            # Files are sorted by the bound tested here, so none after this one can
            # hold a row that sorts before the n-th row found (equal times can: keep).
            if desc and nxt.ts_hi is not None and nxt.ts_hi < bound:
                break
            if not desc and nxt.ts_lo is not None and nxt.ts_lo > bound:
                break
        chunk = candidates[i : i + batch]
        step = flt
        if bound is not None:
            step = _tightened(flt, bound, order)
        rows = _read_top(conn, chunk, step, columns, order, n, footers)
        scanned += len(chunk)
        got = (
            rows if got is None else sort_rows(pa.concat_tables([got, rows]), flt.data_type, order)
        )
        if got.num_rows > n:
            got = got.slice(0, n)
        if got.num_rows == n:
            bound = int(got.column("timestamp")[n - 1].value)
        i += len(chunk)
        batch = min(batch * 2, MAX_BATCH_FILES)
    if got is None:
        got = empty(flt.data_type, columns)
    return Scan(got, scanned)


def _tightened(flt: RowFilter, bound: int, order: Order) -> RowFilter:
    """``flt`` narrowed to rows no further than timestamp ``bound`` (inclusive)."""
    if order == "desc":
        start = bound if flt.start_us is None else max(flt.start_us, bound)
        return replace(flt, start_us=start)
    end = bound + 1 if flt.end_us is None else min(flt.end_us, bound + 1)
    return replace(flt, end_us=end)


def _read_top(
    conn: duckdb.DuckDBPyConnection,
    files: Sequence[DataFile],
    flt: RowFilter,
    columns: Sequence[str],
    order: Order,
    n: int,
    footers: FooterCache | None,
) -> pa.Table:
    if footers is not None:
        direct = _read_top_groups(files, flt, columns, order, n, footers)
        if direct is not None:
            return direct
    source = parquet_source(files)
    if sum(f.record_count for f in files) > CUTOFF_MIN_ROWS:
        if footers is not None:
            groups = [g for f in files for g in footers.get(f)]
            bound = stats_bound(groups, flt, order, n)
            if bound is not None:
                # Row groups entirely beyond the bound are skipped by DuckDB's zone maps.
                flt = _tightened(flt, bound, order)
        cut = _nth_timestamp(conn, source, flt, order, n)
        if cut is not None:
            flt = _tightened(flt, cut, order)
    text = (
        f"SELECT {select_list(columns)} FROM {source} WHERE {flt.where()} "
        f"ORDER BY {order_by(flt.data_type, order)} LIMIT {int(n)}"
    )
    return conform(conn.sql(text).to_arrow_table(), flt.data_type, columns)


def _read_top_groups(
    files: Sequence[DataFile],
    flt: RowFilter,
    columns: Sequence[str],
    order: Order,
    n: int,
    footers: FooterCache,
) -> pa.Table | None:
    """:func:`_read_top` without SQL: the row groups that may match, by their
    statistics, read newest first (oldest for ``asc``) with pyarrow until no unread
    group can beat the n-th row found. K2's files are sorted by symbol and time in
    small row groups, so "the last 100 of a symbol" reads one or two groups, and this
    saves DuckDB's fixed cost per query (two queries, ~2-3 ms each, against ~1 ms).

    In a file sorted by symbol then time (:attr:`DataFile.symbol_sorted`) one symbol's
    rows fill consecutive groups, oldest to newest. For a one-symbol question only the
    newest (oldest, ``asc``) of them is a candidate at first; once read, its first
    (last) row of the symbol bounds every row of the symbol in the group before (after)
    it, which becomes a candidate with that bound. Statistics alone cannot tell this
    (both groups span other symbols' whole day), and it saves reading a second group in
    about half of the questions.

    ``None`` where this does not apply (a cursor, missing statistics,
    a file without one of the columns, more than :data:`DIRECT_MAX_ROWS` rows to
    visit): then DuckDB reads.
    """
    if flt.after is not None or n > DIRECT_MAX_N:
        return None
    desc = order == "desc"
    one_symbol = flt.symbols is not None and len(set(flt.symbols)) == 1
    # (key, tie-break, file, its groups, chain of group indices, position in the chain);
    # the key orders the heap by bound, newest (oldest) first.
    heap: list[tuple[int, int, DataFile, tuple[RowGroup, ...], list[int], int]] = []
    for f in files:
        groups = footers.get(f)
        hits = _matching_groups(groups, flt)
        if hits is None:
            return None
        if desc:
            hits.reverse()
        chains = [hits] if one_symbol and f.symbol_sorted else [[i] for i in hits]
        for chain in chains:
            if chain:
                _push(heap, groups[chain[0]], desc, None, f, groups, chain, 0)
    read = tuple(dict.fromkeys([*columns, *KEYS[flt.data_type]]))
    got: pa.Table | None = None
    visited = 0
    while heap:
        key, _, f, groups, chain, at = heapq.heappop(heap)
        bound = -key if desc else key
        if got is not None and got.num_rows >= n:
            edge = int(got.column("timestamp")[n - 1].value)
            # Candidates come in the order of the bound tested: none further can hold
            # a row that sorts before the n-th (an equal time can: keep reading those).
            if (desc and bound < edge) or (not desc and bound > edge):
                break
        g = groups[chain[at]]
        visited += g.rows
        if visited > DIRECT_MAX_ROWS:
            return None
        part = footers.read_group(f, chain[at], read)
        if part is None:
            return None
        part = filtered(part, flt, g)
        if at + 1 < len(chain):
            # The symbol's rows in the next group of the chain are no newer (older)
            # than this group's first (last) one.
            seen = None
            if part.num_rows:
                seen = int(part.column("timestamp")[0 if desc else -1].value)
            _push(heap, groups[chain[at + 1]], desc, seen, f, groups, chain, at + 1)
        part = _edge(part, n, desc)
        if part.num_rows == 0:
            continue
        part = conform(message_ids.complete(part, read), flt.data_type, read)
        got = part if got is None else pa.concat_tables([got, part])
        got = sort_rows(got, flt.data_type, order).slice(0, n)
    if got is None:
        return empty(flt.data_type, columns)
    return got.select(list(columns))


def _push(
    heap: list[tuple[int, int, DataFile, tuple[RowGroup, ...], list[int], int]],
    g: RowGroup,
    desc: bool,
    seen: int | None,
    f: DataFile,
    groups: tuple[RowGroup, ...],
    chain: list[int],
    at: int,
) -> None:
    """Add group ``chain[at]`` of ``f`` (statistics ``g``) as a candidate, its bound
    narrowed by ``seen`` (a time its rows cannot pass) when given."""
    assert g.ts_lo is not None and g.ts_hi is not None
    if desc:
        bound = g.ts_hi if seen is None else min(g.ts_hi, seen)
        key = -bound
    else:
        bound = g.ts_lo if seen is None else max(g.ts_lo, seen)
        key = bound
    heapq.heappush(heap, (key, next(_TIES), f, groups, chain, at))


#: Tie-breaks for equal heap keys (files and groups do not compare).
_TIES = itertools.count()


def read_rows(
    files: Sequence[DataFile],
    flt: RowFilter,
    columns: Sequence[str],
    footers: FooterCache,
    max_rows: int,
) -> pa.Table | None:
    """Every row of ``files`` matching ``flt`` (no cursor), ``columns`` only, read from
    the row groups their statistics do not rule out, in file and row order (not
    sorted). String columns come as dictionaries, the rest with canonical types.

    ``None`` where this does not apply (a cursor, missing statistics, a file without
    one of the columns, more than ``max_rows`` rows to visit): then DuckDB reads.
    """
    if flt.after is not None:
        return None
    picked: list[tuple[DataFile, list[int], list[RowGroup]]] = []
    visited = 0
    for f in files:
        groups = footers.get(f)
        hits = _matching_groups(groups, flt)
        if hits is None:
            return None
        visited += sum(groups[i].rows for i in hits)
        if visited > max_rows:
            return None
        if hits:
            picked.append((f, hits, [groups[i] for i in hits]))
    schema = SCHEMAS[flt.data_type]
    fields = [schema.field(c) for c in columns]
    out_schema = pa.schema(
        [
            pa.field(f.name, pa.dictionary(pa.int32(), pa.string()), f.nullable)
            if pa.types.is_string(f.type)
            else f
            for f in fields
        ]
    )
    parts: list[pa.Table] = []
    for f, indices, stats in picked:
        part = footers.read_groups(f, indices, columns)
        if part is None:
            return None
        part = filtered(part, flt, _spanning(stats))
        if part.num_rows:
            parts.append(_typed(message_ids.complete(part, columns), out_schema))
    return pa.Table.from_batches([], schema=out_schema) if not parts else pa.concat_tables(parts)


def _matching_groups(groups: Sequence[RowGroup], flt: RowFilter) -> list[int] | None:
    """Indices of the row ``groups`` of one file whose statistics do not rule out rows
    matching ``flt`` (its cursor aside), in file order; None when a group has no time
    bounds (it could hold anything: the caller leaves the file to DuckDB)."""
    lo, hi = flt.lo_us, flt.hi_us
    symbols = None if flt.symbols is None else set(flt.symbols)
    hits = []
    for i, g in enumerate(groups):
        if g.ts_lo is None or g.ts_hi is None:
            return None
        if _may_hold(g, g.ts_lo, g.ts_hi, lo, hi, symbols) and _may_hold_exchange(g, flt.exchange):
            hits.append(i)
    return hits


def _spanning(groups: Sequence[RowGroup]) -> RowGroup:
    """Statistics that hold for the rows of all ``groups`` together (bounds of bounds;
    unknown where one of them lacks them)."""

    def lo(values: list[T | None]) -> T | None:
        return None if any(v is None for v in values) else min(values)  # type: ignore[type-var]

    def hi(values: list[T | None]) -> T | None:
        return None if any(v is None for v in values) else max(values)  # type: ignore[type-var]

    return RowGroup(
        rows=sum(g.rows for g in groups),
        symbol_lo=lo([g.symbol_lo for g in groups]),
        symbol_hi=hi([g.symbol_hi for g in groups]),
        exchange_lo=lo([g.exchange_lo for g in groups]),
        exchange_hi=hi([g.exchange_hi for g in groups]),
        ts_lo=lo([g.ts_lo for g in groups]),
        ts_hi=hi([g.ts_hi for g in groups]),
    )


def _typed(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """``part`` with ``schema``'s types: strings as dictionaries (encoded if read plain)."""
    arrays = []
    for field in schema:
        column = part.column(field.name)
        if column.type != field.type:
            if pa.types.is_dictionary(field.type) and not pa.types.is_dictionary(column.type):
                column = pc.dictionary_encode(column.cast(pa.string()))
            column = column.cast(field.type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


def _may_hold(
    g: RowGroup,
    ts_lo: int,
    ts_hi: int,
    lo: int | None,
    hi: int | None,
    symbols: set[str] | None,
) -> bool:
    """Whether row group ``g`` (times ``ts_lo``..``ts_hi``) may hold rows in ``[lo, hi)``
    of ``symbols`` (None: any); a symbol bound it lacks proves nothing."""
    if (lo is not None and ts_hi < lo) or (hi is not None and ts_lo >= hi):
        return False
    return symbols is None or any(
        (g.symbol_lo is None or g.symbol_lo <= s) and (g.symbol_hi is None or s <= g.symbol_hi)
        for s in symbols
    )


def _may_hold_exchange(g: RowGroup, exchange: str | None) -> bool:
    """Whether row group ``g`` may hold rows of ``exchange`` (None: any); a bound it
    lacks proves nothing."""
    return exchange is None or (
        (g.exchange_lo is None or g.exchange_lo <= exchange)
        and (g.exchange_hi is None or exchange <= g.exchange_hi)
    )


_NO_STATS = RowGroup(0, None, None, None, None, None, None)


def filtered(rows: pa.Table, flt: RowFilter, group: RowGroup = _NO_STATS) -> pa.Table:
    """The rows of ``rows`` that ``flt`` (without a cursor) keeps: compute kernels on
    the columns, not an expression (whose plan costs more than the kernels here); no
    kernel for a condition ``group`` 's statistics (of the row group ``rows`` is)
    already prove."""
    if flt.after is not None:
        raise ValueError("filtered() does not apply cursors")
    masks: list[pa.ChunkedArray] = []
    one_symbol = group.symbol_lo is not None and group.symbol_lo == group.symbol_hi
    if flt.symbols is not None and not (one_symbol and group.symbol_lo in flt.symbols):
        masks.append(_is_in(rows.column("symbol"), flt.symbols))
    one_exchange = group.exchange_lo is not None and group.exchange_lo == group.exchange_hi
    if flt.exchange is not None and not (one_exchange and group.exchange_lo == flt.exchange):
        masks.append(_is_in(rows.column("exchange"), (flt.exchange,)))
    ts = rows.column("timestamp")
    lo, hi = flt.lo_us, flt.hi_us
    if lo is not None and (group.ts_lo is None or group.ts_lo < lo):
        masks.append(pc.greater_equal(ts, pa.scalar(lo, ts.type)))
    if hi is not None and (group.ts_hi is None or group.ts_hi >= hi):
        masks.append(pc.less(ts, pa.scalar(hi, ts.type)))
    if not masks:
        return rows
    keep = masks[0]
    for m in masks[1:]:
        keep = pc.and_(keep, m)
    if keep.null_count:
        keep = pc.fill_null(keep, False)
    at = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    if at.size and int(at[-1]) - int(at[0]) + 1 == at.size:
        # One run (a symbol of a file sorted by symbol): a slice copies nothing.
        return rows.slice(int(at[0]), int(at.size))
    return rows.take(at)


def _is_in(column: pa.ChunkedArray, values: Sequence[str]) -> pa.ChunkedArray:
    """Which rows of string ``column`` hold one of ``values``. A dictionary column is
    tested on its indices (the dictionary is small), not by decoding each string."""
    if not pa.types.is_dictionary(column.type):
        if len(values) == 1:
            return pc.equal(column, values[0])
        return pc.is_in(column, value_set=pa.array(values, pa.string()))
    wanted = pa.array(values, pa.string())
    chunks = []
    for chunk in column.chunks:
        hits = np.flatnonzero(
            pc.is_in(chunk.dictionary.cast(pa.string()), value_set=wanted).to_numpy(
                zero_copy_only=False
            )
        )
        indices = chunk.indices
        if hits.size == 1:
            mask = pc.equal(indices, pa.scalar(int(hits[0]), indices.type))
        else:
            mask = pc.is_in(indices, value_set=pa.array(hits, indices.type))
        if chunk.null_count:
            mask = pc.fill_null(mask, False)
        chunks.append(mask)
    return pa.chunked_array(chunks, pa.bool_())


def _edge(rows: pa.Table, n: int, desc: bool) -> pa.Table:
    """Only the rows of ``rows`` that can be among the first ``n`` in key order, when
    its timestamps ascend (one symbol of a K2 file, which is sorted by symbol and time):
    the ``n`` at the wanted end and any others sharing the n-th one's timestamp.
    Otherwise ``rows`` as they are (the caller sorts)."""
    if rows.num_rows <= n:
        return rows
    column = rows.column("timestamp")
    if column.null_count:
        return rows
    ts = column.combine_chunks().view(pa.int64()).to_numpy(zero_copy_only=False)
    if not bool(np.all(ts[1:] >= ts[:-1])):
        return rows
    if desc:
        start = int(np.searchsorted(ts, ts[len(ts) - n], side="left"))
        return rows.slice(start)
    stop = int(np.searchsorted(ts, ts[n - 1], side="right"))
    return rows.slice(0, stop)


def _nth_timestamp(
    conn: duckdb.DuckDBPyConnection, source: str, flt: RowFilter, order: Order, n: int
) -> int | None:
    """The n-th largest (``desc``) or smallest timestamp (µs) of the rows matching ``flt``,
    from the timestamp column alone; None when fewer than ``n`` rows match."""
    where = flt.where()
    if n <= TOP_AGGREGATE_MAX:
        # A top-n aggregate: a bounded heap, about twice as fast here as ORDER BY/OFFSET.
        pick = "max" if order == "desc" else "min"
        rows = conn.sql(
            f"SELECT {pick}(epoch_us(timestamp), {int(n)}) FROM {source} WHERE {where}"
        ).fetchall()
        top = rows[0][0] if rows else None
        if top is None or len(top) < n:
            return None
        return int(min(top) if order == "desc" else max(top))
    direction = "DESC" if order == "desc" else "ASC"
    cut = conn.sql(
        f"SELECT epoch_us(timestamp) FROM {source} WHERE {where} "
        f"ORDER BY timestamp {direction} LIMIT 1 OFFSET {int(n) - 1}"
    ).fetchall()
    return int(cut[0][0]) if cut else None


def stats_bound(groups: Sequence[RowGroup], flt: RowFilter, order: Order, n: int) -> int | None:
    """A timestamp bound that at least ``n`` rows matching ``flt`` reach, from row-group
    statistics alone: for ``desc``, some T with at least ``n`` matching rows at or after
    T (for ``asc``, at or before T); None when the statistics cannot prove one.

    Row groups are visited from the newest (oldest) end; only groups the statistics
    prove to match entirely (one wanted symbol and exchange, times inside the window)
    are counted, but every visited group moves the bound, so it stays safe.
    """
    symbols = None if flt.symbols is None else set(flt.symbols)
    lo, hi = flt.lo_us, flt.hi_us
    sure_lo = TS_MIN if flt.start_us is None else flt.start_us
    sure_hi = TS_MAX if flt.end_us is None else flt.end_us
    if flt.after is not None and flt.after_order == "desc":
        sure_hi = min(sure_hi, flt.after[0])
    elif flt.after is not None:
        sure_lo = max(sure_lo, flt.after[0] + 1)
    candidates: list[tuple[int, int, RowGroup]] = []
    for g in groups:
        if g.ts_lo is None or g.ts_hi is None:
            return None  # a group that could hold anything: no safe bound
        if _may_hold(g, g.ts_lo, g.ts_hi, lo, hi, symbols):
            candidates.append((g.ts_lo, g.ts_hi, g))
    desc = order == "desc"
    candidates.sort(key=lambda c: -c[1] if desc else c[0])
    count = 0
    bound: int | None = None
    for ts_lo, ts_hi, g in candidates:
        edge = ts_lo if desc else ts_hi
        bound = edge if bound is None else (min(bound, edge) if desc else max(bound, edge))
        one_symbol = g.symbol_lo is not None and g.symbol_lo == g.symbol_hi
        sure = (
            (symbols is None or (one_symbol and g.symbol_lo in symbols))
            and (flt.exchange is None or g.exchange_lo == g.exchange_hi == flt.exchange)
            and sure_lo <= ts_lo
            and ts_hi < sure_hi
        )
        if sure:
            count += g.rows
            if count >= n:
                return bound
    return None


def empty(data_type: DataType, columns: Sequence[str]) -> pa.Table:
    """No rows, with the canonical types of ``columns``."""
    schema = SCHEMAS[data_type]
    fields = [schema.field(c) for c in columns]
    return pa.Table.from_batches([], schema=pa.schema(fields, metadata=schema.metadata))


# -- cursors -----------------------------------------------------------------------------


def encode_cursor(data_type: DataType, order: Order, key: tuple[int, str, str, int]) -> str:
    """An opaque, URL-safe cursor for the position after ``key`` in ``order``."""
    raw = json.dumps([1, data_type, order, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, data_type: DataType, order: Order) -> tuple[int, str, str, int]:
    """The key :func:`encode_cursor` put in ``text``; ``QueryError(bad-cursor)`` if it is
    not one, or belongs to another data type or order."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, dt, cursor_order, ts, exchange, symbol, seq = json.loads(raw)
        valid = (
            version == 1
            and isinstance(ts, int)
            and isinstance(seq, int)
            and isinstance(exchange, str)
            and isinstance(symbol, str)
            and EXCHANGE_RE.match(exchange) is not None
            and SYMBOL_RE.match(symbol) is not None
        )
    except (ValueError, TypeError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise QueryError("cursor is not one this API issued", code="bad-cursor")
    if dt != data_type or cursor_order != order:
        raise QueryError(
            f"cursor belongs to a {dt} query in {cursor_order} order, not {data_type} "
            f"in {order} order",
            code="bad-cursor",
        )
    return ts, exchange, symbol, seq


def last_key(table: pa.Table, data_type: DataType) -> tuple[int, str, str, int]:
    """The key of the last row of ``table`` (UTC µs, exchange, symbol, sequence)."""
    i = table.num_rows - 1
    ts, exchange, symbol, seq = KEYS[data_type]
    return (
        int(table.column(ts)[i].value),
        str(table.column(exchange)[i].as_py()),
        str(table.column(symbol)[i].as_py()),
        int(table.column(seq)[i].as_py()),
    )

"""The query engine: trades, quotes, bars, summaries and SQL over the lake and the tail.

:class:`QueryEngine` answers from the Iceberg tables read with DuckDB, planned from an
in-memory index of each snapshot's data files (:mod:`k2.query.files`): a query does no
catalog or manifest I/O. A background thread looks for new snapshots every
``QuerySettings.refresh_ms`` and reloads only a table that has one (:mod:`k2.query.lake`),
never per query. With a live tail attached (:class:`~k2.query.base.Tail`) and no
``as_of``, answers are *hybrid*: the lake at the tail view's snapshot plus the tail's
rows (:mod:`k2.query.hybrid`).

Every method returns a :class:`~k2.query.base.QueryResult` (Arrow rows with exact
decimals and UTC µs timestamps, plus :class:`~k2.query.base.QueryMeta`) and raises
:class:`~k2.query.base.QueryError` with a stable ``code`` for questions it cannot answer.
All methods are thread-safe; each thread gets its own DuckDB cursor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import QuerySettings, Settings
from k2.errors import K2Error, TerminalError, TransientError
from k2.lake.minutes import MINUTE_US, partials_of
from k2.lake.snapshots import SnapshotInfo
from k2.lake.tables import NAMESPACE
from k2.ops.log import get_logger
from k2.query import bars as bars_mod
from k2.query import params
from k2.query import recent as recent_mod
from k2.query import sql as sql_mod
from k2.query.base import DataType, QueryError, QueryMeta, QueryResult, Tail, TailView
from k2.query.cache import SnapshotCache, table_rows
from k2.query.coverage import CoverageCache, add_coverage, coverage_table, rows_coverage
from k2.query.files import (
    TS_MIN,
    DataFile,
    FooterCache,
    SnapshotIndex,
    duckdb_filesystem,
    read_path,
)
from k2.query.hybrid import (
    SOURCE_COLUMN,
    clean_tail,
    key_columns,
    lake_and_tail,
    merge_top,
    tail_top,
)
from k2.query.lake import LakeState, LakeTables
from k2.query.scan import (
    KEYS,
    SCHEMAS,
    Order,
    RowFilter,
    Scan,
    decode_cursor,
    encode_cursor,
    last_key,
    read_rows,
    top_rows,
)
from k2.query.symbols import SymbolBook

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

log = get_logger(__name__)

#: Trade columns bars are computed from.
#: What :func:`~k2.query.bars.bars_from_rows` reads from row groups.
_BAR_COLUMNS = ("symbol", "exchange", "timestamp", "trade_id", "price", "quantity",
                "quote_quantity", "side")  # fmt: skip
#: Bars are computed without DuckDB when the lake rows to visit are at most this many.
#: Measured on the 100M benchmark lake (one symbol-day, 1-minute bars): numpy 4 ms
#: against DuckDB 14 ms at 8k rows, 15 against 21 at 71k, even at 107k, DuckDB ahead
#: from 160k (28 against 35 ms; 49 against 181 ms at 645k): its two threads win there.
BARS_DIRECT_MAX_ROWS = 131_072
#: Data files whose footers the refresh thread reads ahead, newest first: with 16
#: symbol buckets, a day of files of each bucket several times over.
READ_AHEAD_FILES = 128
#: Minute partials held at most before those read so far are combined (at the bars'
#: interval) while a bars question reads many files' partials.
_PARTIALS_HELD = 250_000
_BAR_INPUT = ("symbol", "exchange", "timestamp", "trade_id", "price", "quantity",
              "quote_quantity", "side", "message_id")  # fmt: skip


class QueryEngine:
    """Answers market-data questions over the lake (and the live tail when attached).

    ``catalog`` holds K2's tables in ``namespace`` (created when missing). ``clock``
    (aware UTC now) is injectable for :meth:`recent_trades`. ``background_refresh``
    false makes queries reload the tables inline, at most every ``refresh_ms``.
    ``cache_rows`` bounds the per-snapshot cache of lake answers (0: none).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        namespace: str = NAMESPACE,
        settings: QuerySettings | None = None,
        tail: Tail | None = None,
        clock: Callable[[], datetime] | None = None,
        background_refresh: bool = True,
        cache_rows: int = 500_000,
    ) -> None:
        self._settings = settings or QuerySettings()
        self._tail = tail
        self._clock = clock or (lambda: datetime.now(UTC))
        self._coverage = CoverageCache()
        self._book = SymbolBook(self._coverage)
        self._cache: SnapshotCache[object] = SnapshotCache(cache_rows)
        self._closed = False
        self._db = duckdb.connect(
            config={
                "threads": self._settings.duckdb_threads,
                "memory_limit": self._settings.duckdb_memory_limit,
            }
        )
        self._db.execute("SET GLOBAL TimeZone = 'UTC'")
        self._db.execute("SET GLOBAL parquet_metadata_cache = true")
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()
        try:
            self._lake = LakeTables(
                catalog,
                namespace,
                self._settings,
                on_load=lambda s: self._book.set_reference(s.tables["reference_data"]),
                on_index=self._read_ahead,
                background=background_refresh,
            )
        except BaseException:
            self._db.close()
            raise
        try:
            filesystem = None
            if self._lake.location.startswith(("s3://", "s3a://")):
                filesystem = duckdb_filesystem(self._lake.io, self._lake.location)
                self._db.register_filesystem(filesystem)
            # SQL may read the namespace's directory: K2's tables' files and nothing else.
            namespace_dir = read_path(self._lake.location).rstrip("/").rsplit("/", 1)[0]
            self._sandboxes = sql_mod.SandboxPool(self._settings, namespace_dir, filesystem)
            self._footers = FooterCache(None if filesystem is None else _opener(filesystem))
        except BaseException:
            self._lake.close()
            self._db.close()
            raise
        self._lake.start()  # its thread reads ahead into self._footers

    @classmethod
    def open(cls, settings: Settings, *, tail: Tail | None = None) -> QueryEngine:
        """The engine over the lake ``settings`` describe (catalog, warehouse, namespace)."""
        from k2.lake.catalog import catalog_from

        catalog = catalog_from(settings.lake, settings.data_dir)
        return cls(catalog, namespace=settings.lake.namespace, settings=settings.query, tail=tail)

    @property
    def settings(self) -> QuerySettings:
        """The engine's settings."""
        return self._settings

    def refresh(self) -> None:
        """Look for new snapshots now (normally done every ``refresh_ms`` in the
        background); TransientError when the catalog cannot be read."""
        self._lake.refresh()

    def _resolve(
        self, data_type: DataType, as_of: int | datetime | None
    ) -> tuple[LakeState, SnapshotIndex, TailView | None]:
        """The state, the snapshot index to read and the tail view (hybrid only)."""
        if as_of is not None:
            return (*self._lake.as_of(data_type, as_of), None)
        if self._tail is None:
            return (*self._lake.current(data_type), None)
        try:
            view = self._tail.view(data_type)
        except TransientError as exc:
            # Answer from the lake alone rather than not at all; the result says the
            # tail's rows are missing (tail_complete false).
            log.warning("query_tail_unavailable", data_type=data_type, error=repr(exc))
            state, index = self._lake.current(data_type)
            empty = TailView(index.snapshot_id, {}, SCHEMAS[data_type].empty_table(), False)
            return state, index, empty
        return (*self._lake.at_snapshot(data_type, view.snapshot_id), view)

    def _conn(self) -> duckdb.DuckDBPyConnection:
        if self._closed:
            raise TerminalError("the query engine is closed")
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._db.cursor()
            self._local.cursor = cur
            with self._lock:
                self._cursors.append(cur)
        return cur

    # -- trades and quotes ---------------------------------------------------------------

    def trades(
        self,
        symbols: str | Sequence[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: str | None = None,
        limit: int | None = None,
        order: str = "asc",
        as_of: int | datetime | None = None,
        cursor: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> QueryResult:
        """Trades of ``symbols`` (None: all) on ``exchange`` with ``start <= timestamp <
        end`` (aware datetimes), in key order ``(timestamp, exchange, symbol, trade_id)``
        ascending or descending, at most ``limit`` rows (``order="desc"`` with a limit
        is "the last N", read without scanning history).

        ``as_of`` reads the lake at a snapshot id or as it was at a time (no tail).
        ``cursor`` continues from ``meta.next_cursor`` of the previous page (same
        arguments). ``columns`` selects output columns (default: all, canonical order).
        Errors (``QueryError.code``): unknown-symbol, unknown-snapshot, bad-cursor,
        bad-symbol, bad-column, window-too-large, limit-too-large, bad-request.
        """
        return self._rows(
            "trades", symbols, start, end, exchange, limit, order, as_of, cursor, columns
        )

    def quotes(
        self,
        symbols: str | Sequence[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: str | None = None,
        limit: int | None = None,
        order: str = "asc",
        as_of: int | datetime | None = None,
        cursor: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> QueryResult:
        """Best bid/ask updates, as :meth:`trades` (key sequence: ``update_id``)."""
        return self._rows(
            "quotes", symbols, start, end, exchange, limit, order, as_of, cursor, columns
        )

    def recent_trades(
        self,
        symbols: str | Sequence[str] | None = None,
        *,
        window_minutes: float = 15,
        limit: int | None = None,
        order: str = "desc",
    ) -> QueryResult:
        """The trades of the last ``window_minutes`` up to now (the injected clock,
        inclusive), newest first by default, at most ``limit``: lake plus live tail."""
        start, end = self._recent_window(window_minutes)
        return self._rows("trades", symbols, start, end, None, limit, order, None, None, None)

    def recent_trades_now(
        self,
        symbols: str | Sequence[str] | None = None,
        *,
        window_minutes: float = 15,
        limit: int | None = None,
        order: str = "desc",
    ) -> QueryResult | None:
        """:meth:`recent_trades`, when it can be answered from memory at once; else
        ``None`` (then call :meth:`recent_trades`).

        Memory means the live tail's recent window (see :mod:`k2.query.recent`): the
        tail has published a cut, the cut covers the window, the one symbol asked for
        has rows in it in key order (read off the window's end: binary searches and the
        rows returned), and the file index of the cut's snapshot is already loaded. This
        never reads a file, the catalog or the log and never waits on a lock held across
        I/O, so an event loop may call it (the API does, for the hot path). Same
        answer, same errors (bad window, limit, order, symbol) as :meth:`recent_trades`.
        """
        t0 = time.perf_counter()
        start, end = self._recent_window(window_minutes)
        flt, n, direction, out_cols = self._question(
            "trades", symbols, start, end, None, limit, order, None, None
        )
        syms = flt.symbols
        if self._tail is None or not syms:
            return None
        view = self._tail.peek("trades")
        if view is None or view.recent is None:
            return None
        loaded = self._lake.loaded_at_snapshot("trades", view.snapshot_id)
        if loaded is None:
            return None
        state, index = loaded
        return self._recent_rows(
            state, view, flt, syms, n, direction, out_cols, index, t0, blocking=False
        )

    def _question(
        self,
        data_type: DataType,
        symbols: str | Sequence[str] | None,
        start: datetime | None,
        end: datetime | None,
        exchange: str | None,
        limit: int | None,
        order: str,
        cursor: str | None,
        columns: Sequence[str] | None,
    ) -> tuple[RowFilter, int, Order, Sequence[str]]:
        """The parameters of a rows question checked (QueryError when one is wrong): the
        filter, the page size, the order and the output columns."""
        syms = params.symbols(symbols)
        exch = params.exchange(exchange)
        start_us, end_us = params.window(self._settings, start, end)
        n = params.limit(self._settings, limit)
        direction = params.order(order)
        out_cols = params.columns(data_type, columns)
        after = decode_cursor(cursor, data_type, direction) if cursor else None
        flt = RowFilter(data_type, syms, exch, start_us, end_us, after, direction)
        return flt, n, direction, out_cols

    def _recent_window(self, window_minutes: float) -> tuple[datetime, datetime]:
        """``[now - window_minutes, now]`` (now inclusive: the end is one µs later)."""
        longest = self._settings.max_window_days * 1440
        if not window_minutes > 0 or window_minutes > longest:
            raise QueryError(
                f"window_minutes must be > 0 and at most {longest:g}",
                code="window-too-large" if window_minutes > 0 else "bad-request",
            )
        now = params.aware(self._clock(), "clock()")
        return now - timedelta(minutes=window_minutes), now + params.US

    def _rows(
        self,
        data_type: DataType,
        symbols: str | Sequence[str] | None,
        start: datetime | None,
        end: datetime | None,
        exchange: str | None,
        limit: int | None,
        order: str,
        as_of: int | datetime | None,
        cursor: str | None,
        columns: Sequence[str] | None,
    ) -> QueryResult:
        t0 = time.perf_counter()
        flt, n, direction, out_cols = self._question(
            data_type, symbols, start, end, exchange, limit, order, cursor, columns
        )
        syms, exch, after = flt.symbols, flt.exchange, flt.after
        state, index, view = self._resolve(data_type, as_of)
        if view is not None and view.recent is not None and syms and after is None:
            fast = self._recent_rows(state, view, flt, syms, n, direction, out_cols, index, t0)
            if fast is not None:
                return fast
        read = tuple(dict.fromkeys([*out_cols, *key_columns(data_type)]))
        conn = self._conn()
        key = ("top", index.snapshot_id, flt, read, n + 1)
        lake = self._cache.get(key)
        cached = isinstance(lake, Scan)
        files = index.prune(symbols=syms, exchange=exch, start_us=flt.lo_us, end_us=flt.hi_us)
        with _translated(conn, files):
            if not isinstance(lake, Scan):
                lake = top_rows(conn, files, flt, read, direction, n + 1, self._footers)
                self._cache.put(key, Scan(lake.table, 0), table_rows(lake.table))
            duplicates = 0
            if view is not None:
                tail = tail_top(conn, view.rows, flt, read, direction, n + 1)
                rows, duplicates = merge_top(lake.table, tail, data_type, direction, n + 1)
            else:
                marks = pa.array([0] * lake.table.num_rows, pa.int8())
                rows = lake.table.append_column(SOURCE_COLUMN, marks)
        page = rows.slice(0, n)
        if syms is not None:
            self._require_known(conn, state, data_type, index, view, syms, page)
        from_tail = int(pc.sum(page.column(SOURCE_COLUMN)).as_py() or 0)
        more = rows.num_rows > n
        meta = QueryMeta(
            data_type=data_type,
            start=_utc(start),
            end=_utc(end),
            snapshot_id=index.snapshot_id,
            sources=_sources(view),
            rows=page.num_rows,
            rows_lake=page.num_rows - from_tail,
            rows_tail=from_tail,
            duplicates_removed=duplicates,
            files_scanned=lake.files_scanned,
            files_total=len(index.files),
            tail_complete=view.complete if view is not None else True,
            next_cursor=(
                encode_cursor(data_type, direction, last_key(page, data_type)) if more else None
            ),
        )
        if cached:
            meta.extra["lake_cached"] = True
        meta.elapsed_ms = (time.perf_counter() - t0) * 1000
        return QueryResult(page.select(out_cols), meta)

    def _recent_rows(
        self,
        state: LakeState,
        view: TailView,
        flt: RowFilter,
        syms: tuple[str, ...],
        n: int,
        direction: Order,
        out_cols: Sequence[str],
        index: SnapshotIndex,
        t0: float,
        *,
        blocking: bool = True,
    ) -> QueryResult | None:
        """The answer from the tail's recent window alone, when it holds the whole
        window (see :mod:`k2.query.recent`); ``None`` to take the lake + tail path.
        ``blocking`` false: only the cheap way (one symbol in key order, read off the
        window's end); ``None`` where that does not apply or a quiet symbol would need
        a lake read."""
        cut = view.recent
        if cut is None or flt.start_us is None:
            return None
        # The page and one more row (is there a next page?). One symbol in key order:
        # read off the window's end. Otherwise the window's rows, the first n + 1 picked
        # without sorting them all; a message the log holds twice among those sends the
        # query the general way.
        rows = None
        if len(syms) == 1 and flt.exchange is None:
            rows = recent_mod.newest(
                cut, syms[0], flt.start_us, flt.end_us, n + 1, direction == "desc"
            )
        if rows is None:
            if not blocking:  # the general way costs with the window's rows: not inline
                return None
            found = recent_mod.answer(
                cut, syms, flt.start_us, flt.end_us, flt.exchange, SCHEMAS[flt.data_type],
                check_unique=False,
            )  # fmt: skip
            if found is None:
                return None
            way = "descending" if direction == "desc" else "ascending"
            rows = recent_mod.top(found, [(k, way) for k in KEYS[flt.data_type]], n + 1)
            if rows is None:
                return None
        page = rows.slice(0, n)
        quiet = tuple(s for s in syms if s not in cut.by_symbol)
        if quiet:  # no recent rows: a real but quiet symbol, or a typo (404)
            if not blocking:
                return None
            conn = self._conn()
            self._require_known(conn, state, flt.data_type, index, view, quiet, page)
        meta = QueryMeta(
            data_type=flt.data_type,
            start=_us_to_utc(flt.start_us),
            end=_us_to_utc(flt.end_us),
            snapshot_id=index.snapshot_id,
            sources=["tail"],
            rows=page.num_rows,
            rows_tail=page.num_rows,
            files_total=len(index.files),
            tail_complete=True,
            next_cursor=(
                encode_cursor(flt.data_type, direction, last_key(page, flt.data_type))
                if rows.num_rows > n
                else None
            ),
        )
        meta.extra["recent_window"] = True
        meta.elapsed_ms = (time.perf_counter() - t0) * 1000
        return QueryResult(page.select(list(out_cols)), meta)

    # -- bars and summaries --------------------------------------------------------------

    def bars(
        self,
        symbols: str | Sequence[str] | None,
        *,
        interval: str = "1m",
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: str | None = None,
        as_of: int | datetime | None = None,
    ) -> QueryResult:
        """OHLCV bars of ``symbols`` (None: all) at ``interval`` (``Ns``, ``Nm``, ``Nh``
        up to a day, or ``1d``; epoch-aligned) over trades with ``start <= timestamp <
        end``, ordered by bar_start, exchange, symbol. Columns and the exact VWAP rule:
        :mod:`k2.query.bars`. More than ``max_limit`` bars → window-too-large."""
        t0 = time.perf_counter()
        iv = bars_mod.parse_interval(interval)
        syms = params.symbols(symbols)
        exch = params.exchange(exchange)
        start_us, end_us = params.times(start, end)
        spans = None if start_us is None or end_us is None else -(-(end_us - start_us) // iv)
        if spans is not None and spans > self._settings.max_limit:
            raise QueryError(
                f"{start} to {end} at {interval} is more than {self._settings.max_limit} "
                "bars; use a longer interval or a shorter window",
                code="window-too-large",
            )
        table, meta = self._bars(syms, exch, start_us, end_us, iv, as_of, summary=False)
        meta.start, meta.end = _utc(start), _utc(end)
        meta.extra["interval"] = interval
        meta.elapsed_ms = (time.perf_counter() - t0) * 1000
        return QueryResult(table, meta)

    def summary(self, symbol: str, *, day: date | None = None) -> QueryResult:
        """One daily bar of ``symbol`` for UTC ``day`` (default: the day of its newest
        trade) with ``first_trade_at``/``last_trade_at``; no row when it did not trade
        that day."""
        t0 = time.perf_counter()
        syms = params.symbols(symbol)
        if syms is None or len(syms) != 1:
            raise QueryError("summary takes exactly one symbol")
        if day is None:
            last = self.trades(syms, order="desc", limit=1, columns=["timestamp"])
            newest = last.table.column("timestamp")[0].as_py() if last.table.num_rows else None
            day = (newest or self._clock()).astimezone(UTC).date()
        if isinstance(day, datetime) or not isinstance(day, date):
            raise QueryError("day must be a date")
        begin = datetime(day.year, day.month, day.day, tzinfo=UTC)
        start_us = params.to_us(begin)
        table, meta = self._bars(
            syms, None, start_us, start_us + bars_mod.DAY_US, bars_mod.DAY_US, None, summary=True
        )
        meta.start, meta.end = begin, begin + timedelta(days=1)
        meta.extra["day"] = day.isoformat()
        meta.elapsed_ms = (time.perf_counter() - t0) * 1000
        return QueryResult(table, meta)

    def _bars(
        self,
        syms: tuple[str, ...] | None,
        exch: str | None,
        start_us: int | None,
        end_us: int | None,
        iv: int,
        as_of: int | datetime | None,
        *,
        summary: bool,
    ) -> tuple[pa.Table, QueryMeta]:
        state, index, view = self._resolve("trades", as_of)
        flt = RowFilter("trades", syms, exch, start_us, end_us)
        files = index.prune(symbols=syms, exchange=exch, start_us=start_us, end_us=end_us)
        conn = self._conn()
        cap = self._settings.max_limit
        with (
            _translated(conn, files),
            lake_and_tail(conn, flt, files, view, index, _BAR_INPUT) as src,
        ):
            key = ("bars", index.snapshot_id, flt, iv, summary, cap)
            cached = self._cache.get(key) if src.tail_rows == 0 else None
            meta_extra: dict[str, object] = {}
            if isinstance(cached, pa.Table):
                table, scanned = cached, 0
                meta_extra["lake_cached"] = True
            else:
                found = self._lake_bars(files, flt, iv, summary) if src.tail_rows == 0 else None
                if found is not None:
                    table, meta_extra["bars_read"] = found
                else:
                    text = f"{bars_mod.bars_sql(src.sql, flt.where(), iv)} LIMIT {cap + 1}"
                    table = bars_mod.conform_bars(conn.sql(text).to_arrow_table(), summary=summary)
                scanned = len(files)
                if src.tail_rows == 0:
                    self._cache.put(key, table, table_rows(table))
        if table.num_rows > cap:
            raise QueryError(
                f"more than {cap} bars; give a window or a longer interval",
                code="window-too-large",
            )
        if syms is not None:
            self._require_known(conn, state, "trades", index, view, syms, table)
        meta = QueryMeta(
            data_type="bars",
            snapshot_id=index.snapshot_id,
            sources=_sources(view),
            rows=table.num_rows,
            rows_tail=src.tail_rows,
            duplicates_removed=src.duplicates,
            files_scanned=scanned,
            files_total=len(index.files),
            tail_complete=view.complete if view is not None else True,
            extra=dict(meta_extra),
        )
        return table, meta

    def _lake_bars(
        self, files: Sequence[DataFile], flt: RowFilter, iv: int, summary: bool
    ) -> tuple[pa.Table, str] | None:
        """Bars of the lake's ``files`` without DuckDB, and how they were read; ``None``
        when DuckDB must answer.

        Files that carry minute partials (:mod:`k2.lake.minutes`) are answered from
        them when the interval is whole minutes and the window starts and ends on a
        minute (a one-symbol day: ~1,440 rows instead of every trade); the others'
        trades are read from their row groups (at most :data:`BARS_DIRECT_MAX_ROWS`
        rows; more go to DuckDB: its two threads win there). Both are summarised and
        combined exactly (:func:`k2.query.bars.combine`)."""
        minutes = self._settings.minute_partials and _on_minutes(flt, iv)
        parts: list[bars_mod.Partials] = []
        rest: list[DataFile] = []
        pending = 0
        for f in files:
            stored = self._footers.minutes(f) if minutes else None
            part = None if stored is None else partials_of(_minutes_matching(stored, flt))
            if part is None:
                rest.append(f)
                continue
            parts.append(part)
            pending += len(part)
            if pending > _PARTIALS_HELD:  # many files: memory stays ~ the bars' size
                parts = [bars_mod.combine(parts, iv)]
                pending = len(parts[0])
        rows = None
        if rest:
            rows = read_rows(rest, flt, _BAR_COLUMNS, self._footers, BARS_DIRECT_MAX_ROWS)
            if rows is None:
                return None
        if not parts:
            if rows is None:  # no files
                return (
                    bars_mod.SUMMARY_SCHEMA if summary else bars_mod.BAR_SCHEMA
                ).empty_table(), "row-groups"
            found = bars_mod.bars_from_rows(rows, iv, summary=summary)
            return None if found is None else (found, "row-groups")
        if rows is not None:
            read = bars_mod.partials_from_rows(rows, MINUTE_US)
            if read is None:
                return None
            parts.append(read)
        found = bars_mod.bars_from_partials(bars_mod.combine(parts, iv), summary=summary)
        how = "minute-partials" if rows is None else "minute-partials+row-groups"
        return None if found is None else (found, how)

    # -- coverage ------------------------------------------------------------------------

    def symbols(self) -> QueryResult:
        """Every (symbol, exchange) with rows: ``first_timestamp``/``last_timestamp``
        (UTC, over trades and quotes), ``trades`` and ``quotes`` row counts; ordered by
        symbol then exchange. From file metadata where a file holds one symbol; other
        files are read once (three columns) and remembered."""
        t0 = time.perf_counter()
        conn = self._conn()
        meta = QueryMeta(data_type="symbols", sources=["lake"])
        found: dict[tuple[str, str], list[int]] = {}
        for which, data_type in enumerate(("trades", "quotes")):
            dt: DataType = "trades" if data_type == "trades" else "quotes"
            _, index, view = self._resolve(dt, None)
            with _translated():
                for cov in self._coverage.get(conn, index.files).values():
                    add_coverage(found, cov, which)
                if view is not None:
                    tail, _ = clean_tail(conn, view.rows, RowFilter(dt), key_columns(dt), index)
                    add_coverage(found, rows_coverage(conn, tail), which)
                    meta.tail_complete &= view.complete
                    if view.rows.num_rows:
                        meta.sources = ["lake", "tail"]
            meta.files_total += len(index.files)
            meta.extra[f"{dt}_snapshot_id"] = index.snapshot_id
        table = coverage_table(found)
        meta.rows = table.num_rows
        meta.elapsed_ms = (time.perf_counter() - t0) * 1000
        return QueryResult(table, meta)

    def _require_known(
        self,
        conn: duckdb.DuckDBPyConnection,
        state: LakeState,
        data_type: DataType,
        index: SnapshotIndex,
        view: TailView | None,
        symbols: tuple[str, ...],
        found: pa.Table,
    ) -> None:
        """Raise unknown-symbol (404) for requested symbols with no rows anywhere (this
        or the other data type, lake or tail) and no reference data; symbols with rows
        in ``found`` are known."""
        present = set(pc.unique(found.column("symbol")).to_pylist()) if found.num_rows else set()
        doubtful = [s for s in symbols if s not in present]
        if not doubtful:
            return
        other: DataType = "quotes" if data_type == "trades" else "trades"
        indexes = [index, self._lake.index(state, other, state.current(other))]
        tails = [] if view is None or self._tail is None else [view.rows]
        if tails and self._tail is not None:
            # Extra evidence only: a tail that does not follow the other data type (or
            # cannot show it yet) leaves the lake to decide.
            with suppress(K2Error):
                tails.append(self._tail.view(other).rows)
        with _translated():
            unknown = self._book.unknown(conn, doubtful, indexes, tails)
        if unknown:
            raise QueryError(
                f"unknown symbol{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                code="unknown-symbol",
                status=404,
            )

    # -- snapshots, SQL, lifecycle -------------------------------------------------------

    def snapshots(self, data_type: str = "trades") -> list[SnapshotInfo]:
        """Every retained snapshot of table ``data_type`` (``trades``, ``quotes``,
        ``reference_data``, ``gaps``), oldest first (read from the catalog)."""
        return self._lake.snapshots(data_type)

    def lake_snapshot_times(self) -> dict[str, datetime | None]:
        """When each table the engine reads had its current snapshot committed (UTC;
        ``None``: no snapshot yet), as last loaded: no catalog read (for metrics)."""
        tables = self._lake.state().tables
        out: dict[str, datetime | None] = {}
        for name, table in tables.items():
            snap = table.metadata.current_snapshot()
            out[name] = (
                None if snap is None else datetime.fromtimestamp(snap.timestamp_ms / 1000, UTC)
            )
        return out

    def sql(
        self, text: str, *, timeout_s: float | None = None, max_rows: int | None = None
    ) -> QueryResult:
        """Run one read-only SELECT (or WITH ... SELECT) over the views ``trades``,
        ``quotes`` (lake at the current snapshot plus the live tail) and ``bars_1m``.

        Sandboxed (:mod:`k2.query.sql`): no file, network, extension or setting access.
        Interrupted after ``timeout_s`` (default ``sql_timeout_s``; QueryError
        sql-timeout, 408); at most ``max_rows`` rows (default ``sql_max_rows``;
        ``meta.extra["truncated"]`` says whether rows were cut). Anything else that
        fails → QueryError bad-sql.
        """
        sql_mod.check_sql(text)
        conn = self._conn()
        views: dict[DataType, sql_mod.ViewData] = {}
        for data_type in ("trades", "quotes"):
            dt: DataType = "trades" if data_type == "trades" else "quotes"
            _, index, view = self._resolve(dt, None)
            tail = None
            if view is not None:
                with _translated():
                    tail, _ = clean_tail(conn, view.rows, RowFilter(dt), SCHEMAS[dt].names, index)
            views[dt] = sql_mod.ViewData(index.files, tail, index.snapshot_id)
        sandbox = self._sandboxes.for_views(views)
        return sql_mod.run(
            sandbox, self._settings, text, views, timeout_s=timeout_s, max_rows=max_rows
        )

    def _read_ahead(self, data_type: DataType, index: SnapshotIndex) -> None:
        """Read the footers of the :data:`READ_AHEAD_FILES` newest data files of
        ``index`` (row-group statistics, on the refresh thread): "the last N trades"
        and live windows read those files, and a footer not yet read costs the query
        that needs it ~0.5–1 ms more (reading it and its row groups' statistics)."""
        newest = sorted(
            index.files, key=lambda f: TS_MIN if f.ts_hi is None else f.ts_hi, reverse=True
        )
        for f in newest[:READ_AHEAD_FILES]:
            if self._closed:
                return
            self._footers.get(f)

    def close(self) -> None:
        """Stop refreshing and release DuckDB. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._lake.close()
        self._sandboxes.close()
        self._footers.close()
        with self._lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
        self._db.close()

    def __enter__(self) -> QueryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sources(view: TailView | None) -> list[Literal["lake", "tail"]]:
    """The lake, and the tail when a view holding rows was joined in."""
    return ["lake", "tail"] if view is not None and view.rows.num_rows else ["lake"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us_to_utc(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _opener(filesystem: Any) -> Callable[[str], Any]:
    """Opens ``s3://`` read paths through ``filesystem`` (its block cache included)."""

    def open_file(path: str) -> Any:
        return filesystem.open(path, "rb")

    return open_file


@contextmanager
def _translated(
    conn: duckdb.DuckDBPyConnection | None = None, files: Sequence[DataFile] = ()
) -> Iterator[None]:
    """DuckDB (and pyarrow) errors as K2 errors: I/O (a file gone, S3 down) is
    transient; a damaged data file among ``files`` (read through ``conn``) is a
    :class:`QueryError` ``lake-file-unreadable`` naming it."""
    try:
        yield
    except duckdb.IOException as exc:
        raise TransientError(f"reading the lake failed: {exc}") from exc
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        damaged = _damaged_file(conn, files, exc) if conn is not None else None
        if damaged is not None:
            raise QueryError(
                f"lake data file {damaged.path} cannot be read ({_first_line(exc)}): it is "
                "corrupt or truncated. Queries that read it fail until it is restored or "
                "removed from the table; other symbols and days still answer.",
                code="lake-file-unreadable",
                status=500,
            ) from exc
        if isinstance(exc, OSError):
            raise TransientError(f"reading the lake failed: {exc}") from exc
        raise TerminalError(f"query failed: {exc}") from exc


#: Files read one by one, at most, to find the damaged one a failed query met.
_PROBE_FILES = 64


def _damaged_file(
    conn: duckdb.DuckDBPyConnection, files: Sequence[DataFile], exc: BaseException
) -> DataFile | None:
    """Which of ``files`` made a read fail with ``exc``: the one the error names, else
    the first that cannot be read in full on its own. ``None`` when none is found or
    the storage itself fails (then it is not the file's fault)."""
    named = [f for f in files if f.read_path in str(exc)]
    if named:
        return named[0]
    for f in files[:_PROBE_FILES]:
        try:
            reader = conn.sql(
                "SELECT * FROM read_parquet(?)", params=[f.read_path]
            ).to_arrow_reader()
            for _ in reader or ():
                pass  # every page decoded, none kept
        except duckdb.IOException:
            return None
        except (duckdb.Error, pa.ArrowException, OSError):
            return f
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _on_minutes(flt: RowFilter, iv: int) -> bool:
    """Whether bars of ``flt`` at ``iv`` can be made of whole minutes."""
    bounds = (b for b in (flt.start_us, flt.end_us) if b is not None)
    return iv % MINUTE_US == 0 and flt.after is None and all(b % MINUTE_US == 0 for b in bounds)


def _minutes_matching(stored: pa.Table, flt: RowFilter) -> pa.Table:
    """The rows of a minute partials table about ``flt``'s symbols, exchange and window
    (whose bounds are whole minutes)."""
    mask = None
    if flt.symbols is not None:
        mask = pc.is_in(stored["symbol"], value_set=pa.array(flt.symbols, pa.string()))
    if flt.exchange is not None:
        same = pc.equal(stored["exchange"], flt.exchange)
        mask = same if mask is None else pc.and_(mask, same)
    minute = stored["minute"]
    for op, bound in ((pc.greater_equal, flt.start_us), (pc.less, flt.end_us)):
        if bound is not None:
            inside = op(minute, pa.scalar(bound, minute.type))
            mask = inside if mask is None else pc.and_(mask, inside)
    return stored if mask is None else stored.filter(mask)

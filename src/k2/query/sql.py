"""Read-only SQL over K2's data, sandboxed.

A user's SQL runs in its own DuckDB database, configured before anything else and then
locked (``lock_configuration``):

- ``enable_external_access = false`` with ``allowed_directories`` set to the tables'
  data directories only: no other file (``read_csv('/etc/passwd')``, a Parquet file
  elsewhere), no network, no ``COPY ... TO``, no ``ATTACH``, no extension
  ``INSTALL``/``LOAD``;
- the text must parse (DuckDB's own parser, not a pattern) as exactly one statement of
  type SELECT (``WITH ... SELECT`` included): ``SET``, ``PRAGMA``, DDL, DML, ``COPY``,
  ``EXPORT``, ``CALL`` ... are refused before they run;
- a timer interrupts the query after ``timeout_s`` (``QueryError(sql-timeout)``, 408);
- at most ``max_rows`` rows come back (``max_rows + 1`` are fetched to know whether
  the result was cut; then ``meta.extra["truncated"]`` is true).

Views: ``trades`` and ``quotes`` (the lake at its current snapshot plus the live tail's
rows not yet in it, canonical columns) and ``bars_1m`` (1-minute bars over ``trades``,
columns of :mod:`k2.query.bars`). They are temporary views of the statement's own
cursor, so concurrent statements see their own snapshot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from k2.config import QuerySettings
from k2.query.bars import BAR_COLUMNS, bars_sql
from k2.query.base import DataType, QueryError, QueryMeta, QueryResult
from k2.query.files import DataFile
from k2.query.scan import SCHEMAS, parquet_source, select_list, sql_str, union_source

#: Statement types a user may run.
_ALLOWED = {duckdb.StatementType.SELECT}

#: Rows per fetched batch (the row cap is checked between batches).
_BATCH = 8192


@dataclass(frozen=True)
class ViewData:
    """What one table view shows: lake files plus (already deduplicated) tail rows."""

    files: Sequence[DataFile]
    tail: pa.Table | None
    snapshot_id: int | None


class SqlSandbox:
    """A locked-down DuckDB database that can read only ``directories``."""

    def __init__(
        self, settings: QuerySettings, directories: frozenset[str], filesystem: Any
    ) -> None:
        self.directories = directories
        self._db = duckdb.connect(
            config={
                "threads": settings.duckdb_threads,
                "memory_limit": settings.duckdb_memory_limit,
            }
        )
        if filesystem is not None:
            self._db.register_filesystem(filesystem)
        self._db.execute("SET GLOBAL TimeZone = 'UTC'")
        self._db.execute("SET GLOBAL parquet_metadata_cache = true")
        dirs = ", ".join(sql_str(d) for d in sorted(directories))
        self._db.execute(f"SET allowed_directories = [{dirs}]")
        self._db.execute("SET enable_external_access = false")
        self._db.execute("SET lock_configuration = true")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh connection to the sandbox database (its own temporary views)."""
        return self._db.cursor()

    def close(self) -> None:
        """Release the database."""
        self._db.close()


class SandboxPool:
    """The sandbox SQL runs in, replaced by a wider one when files appear outside it.

    ``root`` (the warehouse location as DuckDB reads it) is always allowed. Replaced
    sandboxes stay open until :meth:`close`: a statement may still be running in one.
    """

    def __init__(self, settings: QuerySettings, root: str, filesystem: Any) -> None:
        self._settings = settings
        self._root = root.rstrip("/") + "/"
        self._filesystem = filesystem
        self._lock = threading.Lock()
        self._sandboxes: list[SqlSandbox] = []

    def for_views(self, views: dict[DataType, ViewData]) -> SqlSandbox:
        """A sandbox allowed to read every file of ``views``."""
        needed = {self._root}
        for data in views.values():
            for f in data.files:
                if not any(f.read_path.startswith(d) for d in needed):
                    needed.add(f.read_path.rsplit("/", 1)[0] + "/")
        with self._lock:
            current = self._sandboxes[-1] if self._sandboxes else None
            if current is None or not needed <= current.directories:
                dirs = frozenset(needed | (current.directories if current else set()))
                current = SqlSandbox(self._settings, dirs, self._filesystem)
                self._sandboxes.append(current)
            return current

    def close(self) -> None:
        """Close every sandbox."""
        with self._lock:
            for sandbox in self._sandboxes:
                sandbox.close()
            self._sandboxes.clear()


def check_sql(text: str) -> str:
    """The one SELECT statement in ``text``; QueryError(bad-sql) for anything else."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("give one SELECT statement", code="bad-sql")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {_first_line(exc)}", code="bad-sql") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement (got {len(statements)})", code="bad-sql")
    statement = statements[0]
    if statement.type not in _ALLOWED:
        kind = str(statement.type).rsplit(".", 1)[-1]
        raise QueryError(f"only SELECT (or WITH ... SELECT) is allowed, not {kind}", code="bad-sql")
    return str(statement.query).strip().rstrip(";")


def run(
    sandbox: SqlSandbox,
    settings: QuerySettings,
    text: str,
    views: dict[DataType, ViewData],
    *,
    timeout_s: float | None,
    max_rows: int | None,
) -> QueryResult:
    """Run ``text`` in ``sandbox`` over ``views`` (see the module docstring)."""
    t0 = time.perf_counter()
    statement = check_sql(text)
    timeout = settings.sql_timeout_s if timeout_s is None else float(timeout_s)
    if not timeout > 0:
        raise QueryError("timeout_s must be positive")
    cap = settings.sql_max_rows if max_rows is None else int(max_rows)
    if cap < 1 or cap > settings.sql_max_rows:
        raise QueryError(
            f"max_rows must be between 1 and {settings.sql_max_rows}", code="limit-too-large"
        )
    cur = sandbox.cursor()
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        cur.interrupt()

    timer = threading.Timer(timeout, interrupt)
    timer.daemon = True
    try:
        _define_views(cur, views)
        timer.start()
        table, truncated = _fetch(cur, statement, cap)
    except duckdb.InterruptException:
        raise QueryError(
            f"query ran longer than {timeout:g} s and was stopped", code="sql-timeout", status=408
        ) from None
    except duckdb.Error as exc:
        if fired.is_set():
            raise QueryError(
                f"query ran longer than {timeout:g} s and was stopped",
                code="sql-timeout",
                status=408,
            ) from None
        raise QueryError(f"SQL failed: {_first_line(exc)}", code="bad-sql") from None
    finally:
        timer.cancel()
        cur.close()
    tails = sum(v.tail.num_rows for v in views.values() if v.tail is not None)
    meta = QueryMeta(
        data_type="sql",
        snapshot_id=views["trades"].snapshot_id,
        sources=["lake", "tail"] if tails else ["lake"],
        rows=table.num_rows,
        files_scanned=sum(len(v.files) for v in views.values()),
        files_total=sum(len(v.files) for v in views.values()),
        extra={
            "truncated": truncated,
            "quotes_snapshot_id": views["quotes"].snapshot_id,
            "max_rows": cap,
        },
    )
    meta.elapsed_ms = (time.perf_counter() - t0) * 1000
    return QueryResult(table, meta)


def _define_views(cur: duckdb.DuckDBPyConnection, views: dict[DataType, ViewData]) -> None:
    for data_type, data in views.items():
        columns = SCHEMAS[data_type].names
        parts: list[str] = []
        if data.files:
            parts.append(f"SELECT {select_list(columns)} FROM {parquet_source(data.files)}")
        if data.tail is not None and data.tail.num_rows:
            name = f"k2_tail_{data_type}"
            cur.register(name, data.tail.select(columns))
            parts.append(f"SELECT {select_list(columns)} FROM {name}")
        cur.execute(
            f"CREATE TEMP VIEW {data_type} AS SELECT * FROM "
            f"{union_source(parts, data_type, columns)}"
        )
    bars = bars_sql("trades", "true", 60_000_000)
    cur.execute(f"CREATE TEMP VIEW bars_1m AS SELECT {select_list(BAR_COLUMNS)} FROM ({bars})")


def _fetch(cur: duckdb.DuckDBPyConnection, statement: str, cap: int) -> tuple[pa.Table, bool]:
    relation = cur.sql(statement)
    if relation is None:
        raise QueryError("the statement returned no rows", code="bad-sql")
    reader = relation.to_arrow_reader(_BATCH)
    batches: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > cap:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    truncated = table.num_rows > cap
    return table.slice(0, cap), truncated


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

"""The engine's view of the lake tables: loaded metadata, refreshed on a timer.

Queries plan from :class:`LakeState` (the tables' metadata as last loaded) and the
snapshot indexes of :mod:`k2.query.files`; neither costs catalog or manifest I/O on the
query path. :class:`LakeTables` looks for new snapshots every ``refresh_ms`` on a
background thread, or inline at most that often when built without the thread; it
asks the catalog which metadata file is current (one query on a SQL catalog) and
reloads, and indexes there, only the tables that changed. A snapshot asked for by id
or time that the loaded metadata does not know yet triggers one reload, so a commit
made a moment ago is found.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from k2.config import QuerySettings
from k2.errors import TransientError
from k2.lake.catalog import metadata_locations
from k2.lake.snapshots import SnapshotInfo, list_snapshots
from k2.lake.tables import TABLE_DEFS, ensure_tables
from k2.ops.log import get_logger
from k2.query.base import DataType, QueryError
from k2.query.files import FileIndexer, SnapshotIndex

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.io import FileIO
    from pyiceberg.table import Table

log = get_logger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The tables the engine reads.
ENGINE_TABLES = ("trades", "quotes", "reference_data")


@dataclass(frozen=True)
class LakeState:
    """The tables as last loaded (``loaded_at`` UTC): what a query plans with."""

    tables: dict[str, Table]
    loaded_mono: float
    loaded_at: datetime

    def current(self, data_type: DataType) -> int | None:
        """The current snapshot id of ``data_type`` (None: no snapshot yet)."""
        snap = self.tables[data_type].metadata.current_snapshot()
        return None if snap is None else int(snap.snapshot_id)


class LakeTables:
    """Loads and refreshes K2's tables in ``namespace``; resolves snapshots to indexes.

    ``on_load`` is called with every state holding newly loaded tables (before queries
    see it), from the refreshing thread; ``on_index`` with the index of each data type's
    current snapshot, from the background thread only (when it starts and after each
    refresh), to read ahead what queries will need. With ``background``, :meth:`start` starts
    that thread (the owner calls it once ``on_index`` can run). Thread-safe.
    """

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        settings: QuerySettings,
        *,
        on_load: Callable[[LakeState], None] = lambda _: None,
        on_index: Callable[[DataType, SnapshotIndex], None] = lambda *_: None,
        background: bool = True,
    ) -> None:
        self._catalog = catalog
        self._namespace = namespace
        self._settings = settings
        self._on_load = on_load
        self._on_index = on_index
        # The snapshot whose index on_index last had, per data type (background only).
        self._handed: dict[str, int | None] = {}
        self._indexer = FileIndexer()
        self._lock = threading.Lock()
        try:
            tables = ensure_tables(catalog, namespace)
        except Exception as exc:  # any catalog driver's error: the catalog is unreachable
            raise TransientError(f"cannot open the lake tables: {exc!r}") from exc
        self.io: FileIO = tables["trades"].io
        self.location = str(tables["trades"].metadata.location)
        state = LakeState(
            {k: tables[k] for k in ENGINE_TABLES}, time.monotonic(), datetime.now(UTC)
        )
        on_load(state)
        self._state = state
        self._stop = threading.Event()
        self._background = background
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background refresh (``background``), once the owner is ready for
        ``on_index``; until then, and without ``background``, states are refreshed
        inline when stale."""
        if self._background and self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._loop, name="k2-query-refresh", daemon=True)
            self._thread.start()

    def refresh(self) -> LakeState:
        """Load the tables' newest metadata now and index their current snapshots.

        Where the catalog can say cheaply which metadata file is current
        (:func:`~k2.lake.catalog.metadata_locations`), only tables with a new one are
        loaded, and ``on_load`` runs only when one was: a refresh that finds nothing
        committed costs one catalog query instead of parsing every table's metadata.
        Raises :class:`~k2.errors.TransientError` when the catalog cannot be read.
        """
        with self._lock:
            mono, at = time.monotonic(), datetime.now(UTC)
            loaded = self._state.tables
            names = {name: TABLE_DEFS[name].identifier(self._namespace) for name in ENGINE_TABLES}
            try:
                current = metadata_locations(self._catalog, list(names.values()))
                stale = [
                    name
                    for name in ENGINE_TABLES
                    if current is None or current.get(names[name]) != loaded[name].metadata_location
                ]
                tables = dict(loaded) | {
                    name: self._catalog.load_table(names[name]) for name in stale
                }
            except Exception as exc:  # any catalog driver's error: the catalog is unreachable
                raise TransientError(f"cannot load the lake tables: {exc!r}") from exc
            state = LakeState(tables, mono, at)
            if stale:
                self._on_load(state)
                for data_type in ("trades", "quotes"):
                    self.index(state, data_type, state.current(data_type))  # off the query path
            self._state = state
            return state

    def state(self) -> LakeState:
        """The loaded state; refreshed inline first when there is no background thread
        and it is older than ``refresh_ms``."""
        state = self._state
        age = time.monotonic() - state.loaded_mono
        if self._thread is None and age > self._settings.refresh_ms / 1000:
            state = self.refresh()
        return state

    def index(
        self, state: LakeState, data_type: DataType, snapshot_id: int | None
    ) -> SnapshotIndex:
        """The file index of ``snapshot_id`` (None: empty) of ``data_type`` in ``state``;
        QueryError unknown-snapshot (404) when ``state`` does not hold it."""
        table = state.tables[data_type]
        try:
            return self._indexer.index(table.metadata, table.io, snapshot_id)
        except KeyError:
            raise unknown_snapshot(data_type, f"no snapshot {snapshot_id}") from None

    def current(self, data_type: DataType) -> tuple[LakeState, SnapshotIndex]:
        """The current snapshot of ``data_type``."""
        state = self.state()
        return state, self.index(state, data_type, state.current(data_type))

    def at_snapshot(
        self, data_type: DataType, snapshot_id: int | None
    ) -> tuple[LakeState, SnapshotIndex]:
        """Snapshot ``snapshot_id`` (reloading once if the loaded metadata lacks it)."""
        state = self.state()
        meta = state.tables[data_type].metadata
        if snapshot_id is not None and meta.snapshot_by_id(snapshot_id) is None:
            state = self.refresh()
        return state, self.index(state, data_type, snapshot_id)

    def loaded_at_snapshot(
        self, data_type: DataType, snapshot_id: int | None
    ) -> tuple[LakeState, SnapshotIndex] | None:
        """:meth:`at_snapshot` if it needs no I/O: the loaded metadata holds the snapshot
        (and is not due for an inline refresh) and its file index is cached; else None."""
        state = self._state
        age = time.monotonic() - state.loaded_mono
        if self._thread is None and age > self._settings.refresh_ms / 1000:
            return None
        meta = state.tables[data_type].metadata
        if snapshot_id is not None and meta.snapshot_by_id(snapshot_id) is None:
            return None
        index = self._indexer.cached(snapshot_id)
        return None if index is None else (state, index)

    def as_of(self, data_type: DataType, as_of: int | datetime) -> tuple[LakeState, SnapshotIndex]:
        """The snapshot with id ``as_of``, or the one current at time ``as_of`` (aware).

        The time rule is :func:`k2.lake.snapshots.snapshot_at`'s (inclusive, millisecond
        precision), applied to the loaded metadata; QueryError unknown-snapshot (404)
        for an unknown id or a time before the oldest retained snapshot.
        """
        if isinstance(as_of, bool) or not isinstance(as_of, int | datetime):
            raise QueryError("as_of must be a snapshot id or an aware datetime")
        if isinstance(as_of, int):
            return self.at_snapshot(data_type, as_of)
        if as_of.tzinfo is None or as_of.utcoffset() is None:
            raise QueryError(f"as_of must be timezone-aware (UTC), got naive {as_of.isoformat()}")
        state = self.state()
        if as_of >= state.loaded_at:
            state = self.refresh()  # a snapshot may have been committed since
        ms = (as_of - _EPOCH) // timedelta(milliseconds=1)
        snap = state.tables[data_type].snapshot_as_of_timestamp(ms, inclusive=True)
        if snap is None:
            raise unknown_snapshot(
                data_type, f"no snapshot at or before {as_of.astimezone(UTC).isoformat()}"
            )
        return state, self.index(state, data_type, int(snap.snapshot_id))

    def snapshots(self, table_name: str) -> list[SnapshotInfo]:
        """Every retained snapshot of ``table_name``, oldest first (reads the catalog)."""
        if table_name not in TABLE_DEFS:
            raise QueryError(f"unknown table {table_name!r}: use one of {', '.join(TABLE_DEFS)}")
        with self._lock:
            table = self._catalog.load_table(TABLE_DEFS[table_name].identifier(self._namespace))
        return list_snapshots(table)

    def close(self) -> None:
        """Stop the refresh thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = self._settings.refresh_ms / 1000
        self._indexed()
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as exc:  # keep serving the last good state; say why
                log.warning("query_refresh_failed", error=repr(exc))
            self._indexed()

    def _indexed(self) -> None:
        """Hand each data type's current index to ``on_index`` once per snapshot
        (background only; a refresh that found no new snapshot hands nothing)."""
        for data_type in ("trades", "quotes"):
            if self._stop.is_set():
                return
            try:
                _, index = self.current(data_type)
                if self._handed.get(data_type, _NONE) == index.snapshot_id:
                    continue
                self._on_index(data_type, index)
                self._handed[data_type] = index.snapshot_id
            except Exception as exc:  # a failed read-ahead costs a later query the read
                log.warning("query_index_hook_failed", data_type=data_type, error=repr(exc))


#: Not a snapshot id (None is one: the empty table).
_NONE = object()


def unknown_snapshot(data_type: str, detail: str) -> QueryError:
    """QueryError unknown-snapshot (404)."""
    return QueryError(f"{data_type}: {detail}", code="unknown-snapshot", status=404)

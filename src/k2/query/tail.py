"""The live tail: records the log holds and the lake has not committed yet.

This is the kdb+ real-time-database pattern. The lake (Iceberg) answers for everything
up to its newest snapshot; the log holds what came after. :class:`LiveTail` follows
the trades and quotes topics from the offsets the newest lake snapshot stored (see
:mod:`k2.lake.sink_offsets`), keeps what it reads as Arrow, and drops what each new
snapshot covers. Each cut it publishes is a :class:`~k2.query.base.TailView` that the
engine merges with the lake *at that view's snapshot*, so a query sees one seamless
history whatever the sink's commit lag. The invariant the engine relies on:

    view.rows ∪ (lake at view.snapshot_id) = every record of the topic below
    view.log_end (per partition), and a record in both is the same record
    (same ``message_id``) — duplicates are removed by ``message_id``.

When the memory cap (``tail_max_rows`` per data type) forced the tail to drop its
oldest rows, the union misses them until the lake catches up, and the view says so
(``complete=False``); it never happens silently (a warning, a counter).

How it reads: :meth:`Log.read <k2.log.base.Log.read>` on every partition from the
tail's own position, never through a consumer group, so the API does not take
partitions from the sink's group and any number of API processes can each follow.
A partition the lake has no offset for starts at the log's oldest record. Nothing
relies on end offsets (the Kafka log reads to the end the fetch reports; a Tansu
broker's high watermark is wrong): ``log_end`` is where the tail has read to.

Timing (``QuerySettings``): the log is polled every ``tail_poll_ms`` (100 ms), the lake
looked at every ``refresh_ms`` (250 ms; a table is reloaded only after a commit,
:func:`~k2.lake.catalog.refresh_if_changed`), and a new view is published after each
poll, so a record is visible about one poll interval plus one read after the log has it.
Measured with ``tests/query/tail_latency.py`` (2-core VM, embedded log with 40 + 40
partitions and ``full`` durability, the sink committing every second, 300 batches):
produce-returned → visible median 54 ms, p90 91-98 ms, max 103-291 ms over two runs
(the VM was shared; the max is one slow step). An idle poll of 80
partitions costs ~3 ms; reading 100,000 new records ~80 ms. Readers take the current
view by reading one reference: they never wait for a poll.

Errors: a failed read (:class:`~k2.errors.TransientError` from the log) or lake
refresh is logged, counted in :meth:`LiveTail.stats` and retried after a capped,
jittered backoff; meanwhile views keep serving the last good cut.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa

from k2.config import QuerySettings, Settings
from k2.errors import K2Error, TerminalError, TransientError
from k2.lake.catalog import refresh_if_changed
from k2.lake.sink_offsets import lake_offsets
from k2.lake.tables import TABLE_DEFS
from k2.log.base import Log, Produced, TopicPartition
from k2.log.topics import TopicLayout
from k2.ops.clock import utc_now_us
from k2.ops.log import get_logger
from k2.query.base import DataType, TailView
from k2.query.recent import RecentStore
from k2.query.tail_stream import StreamStats, TailStream
from k2.sources.supervisor import Backoff

if TYPE_CHECKING:
    from pyiceberg.table import Table

__all__ = ["LakeUnavailable", "LiveTail", "StreamStats", "TailNotReady", "TailStats"]

log = get_logger(__name__)

#: Data types the tail follows → the record name their topic is named after.
RECORDS: dict[str, str] = {"trades": "trade", "quotes": "quote"}

#: Most records read from one partition per poll, so one busy partition cannot hold
#: back the next view (a backlog is read over several polls).
POLL_MAX_RECORDS = 50_000

#: Something that can be waited for: a predicate, per-partition offsets the tail must
#: have read to (of ``data_type``), or what a produce call returned.
Condition = Callable[[], bool] | Mapping[int, int] | Produced


class LakeUnavailable(TransientError):
    """The lake's table could not be refreshed (catalog or storage unreachable)."""


class TailNotReady(TransientError):
    """No view yet: the tail could not read the lake's position for the first time."""


@dataclass(frozen=True)
class TailStats:
    """What the tail is doing, for metrics and status. Times are UTC.

    ``read_errors``/``refresh_errors`` count failed log reads and lake refreshes (each
    retried with backoff); ``step_errors`` unexpected failures of the background
    thread (a bug: logged with its traceback, the thread carries on).
    """

    streams: dict[str, StreamStats] = field(default_factory=dict)
    polls: int = 0
    refreshes: int = 0
    read_errors: int = 0
    refresh_errors: int = 0
    step_errors: int = 0
    last_poll_at: datetime | None = None
    last_refresh_at: datetime | None = None
    last_error: str | None = None
    running: bool = False

    @property
    def rows_held(self) -> int:
        """Rows held over every data type."""
        return sum(s.rows_held for s in self.streams.values())

    @property
    def dropped_rows(self) -> int:
        """Rows the memory cap dropped over every data type (since start)."""
        return sum(s.dropped_rows for s in self.streams.values())


class LiveTail:
    """Follows the trades and quotes topics of ``layout`` in ``log`` beyond the lake.

    ``tables``: K2's Iceberg tables (:func:`k2.lake.tables.ensure_tables`); the tail
    refreshes its own copies, so callers' table objects are left alone. ``settings``:
    poll and refresh intervals and the memory cap. ``data_types``: which to follow.
    ``clock``: monotonic seconds (scheduling, backoff); ``wall_clock_us``: UTC µs
    (the times in :meth:`stats`).

    Drive it with :meth:`start`/:meth:`stop` (or ``with``) — a background thread — or
    call :meth:`step` yourself. :meth:`view` is safe from any thread at any time.
    The tail never closes ``log``.
    """

    def __init__(
        self,
        log_: Log,
        layout: TopicLayout,
        tables: Mapping[str, Table],
        *,
        settings: QuerySettings | None = None,
        data_types: Iterable[DataType] = ("trades", "quotes"),
        clock: Callable[[], float] = time.monotonic,
        wall_clock_us: Callable[[], int] = utc_now_us,
    ) -> None:
        self._log = log_
        self._settings = settings or QuerySettings()
        self._clock = clock
        self._wall_clock_us = wall_clock_us
        self._streams: dict[str, TailStream] = {}
        for data_type in data_types:
            if data_type not in RECORDS:
                raise TerminalError(f"the live tail follows trades and quotes, not {data_type!r}")
            self._streams[data_type] = TailStream(
                data_type,
                layout.data_topic(RECORDS[data_type]),
                # A copy of its own: refreshing it must not move a table the engine
                # is reading from under its feet.
                copy.copy(tables[data_type]),
                TABLE_DEFS[data_type].record_type.arrow_schema(),
                RecentStore(
                    int(self._settings.recent_window_s * 1_000_000),
                    self._settings.recent_max_rows,
                )
                if self._settings.recent_window_s > 0
                else None,
            )
        self._poll_s = self._settings.tail_poll_ms / 1000
        self._refresh_s = self._settings.refresh_ms / 1000
        self._poll_backoff = Backoff(initial_s=self._poll_s, max_s=max(5.0, self._poll_s))
        self._refresh_backoff = Backoff(initial_s=self._refresh_s, max_s=max(30.0, self._refresh_s))
        # Readers take self._views[...] (one reference read): never this lock.
        self._views: dict[str, TailView] = {}
        self._step_lock = threading.Lock()
        self._published = threading.Condition()
        self._version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polls = self._refreshes = 0
        self._read_errors = self._refresh_errors = self._step_errors = 0
        self._last_poll_us: int | None = None
        self._last_refresh_us: int | None = None
        self._last_error: str | None = None
        self._stats = TailStats()
        self._owns_log = False

    @classmethod
    def open(cls, settings: Settings) -> LiveTail:
        """A tail over the log and lake ``settings`` describe (not started). It owns the
        log handle it opens: :meth:`close` closes it."""
        from k2.lake.catalog import catalog_from
        from k2.lake.tables import ensure_tables
        from k2.log.factory import open_log, topic_layout

        tables = ensure_tables(catalog_from(settings.lake, settings.data_dir),
                               settings.lake.namespace)  # fmt: skip
        log_ = open_log(settings)
        tail = cls(log_, topic_layout(settings), tables, settings=settings.query)
        tail._owns_log = True
        return tail

    # -- reading the tail ----------------------------------------------------------------

    def view(self, data_type: DataType = "trades") -> TailView:
        """The newest consistent cut for ``data_type`` (see the module doc).

        Lock-free once the first cut exists; the first call before any :meth:`step`
        reads the lake's position (blocking). Raises :class:`TailNotReady` if that
        read fails, :class:`~k2.errors.TerminalError` for a data type not followed.
        """
        current = self._views.get(data_type)
        if current is not None:
            return current
        stream = self._streams.get(data_type)
        if stream is None:
            raise TerminalError(f"the live tail does not follow {data_type!r}")
        with self._step_lock:
            if data_type not in self._views:
                try:
                    self._refresh_stream(stream)
                except K2Error as exc:
                    raise TailNotReady(f"live tail of {data_type}: {exc}") from exc
                self._publish()
        return self._views[data_type]

    def peek(self, data_type: DataType = "trades") -> TailView | None:
        """The newest published cut for ``data_type``, or ``None`` before the first one
        (lock-free, never blocks: for callers on an event loop)."""
        return self._views.get(data_type)

    def stats(self) -> TailStats:
        """Counters and per-data-type state as of the last publication (lock-free)."""
        return self._stats

    @property
    def running(self) -> bool:
        """Whether the background thread is following the log."""
        return self._thread is not None and self._thread.is_alive()

    def wait_until(
        self,
        condition: Condition,
        *,
        data_type: DataType = "trades",
        timeout_s: float = 10.0,
    ) -> bool:
        """Wait until ``condition`` holds; ``False`` if ``timeout_s`` passes first.

        ``condition`` is a predicate (checked after each publication, outside any tail
        lock), a ``{partition: offset}`` map of ``data_type`` the published view must
        have read to (``log_end[p] >= offset``), or a :class:`~k2.log.base.Produced`
        (every record it reports is in the view). Something must publish meanwhile:
        the background thread (:meth:`start`) or :meth:`step` in another thread.
        """
        check = self._predicate(condition, data_type)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._published:
                version = self._version
            if check():
                return True
            with self._published:
                while self._version == version:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._published.wait(remaining)

    def _predicate(self, condition: Condition, data_type: DataType) -> Callable[[], bool]:
        if isinstance(condition, Produced):
            wanted = {p: first + n for p, (first, n) in condition.ranges.items()}
            matches = [dt for dt, s in self._streams.items() if s.topic == condition.topic]
            if not matches:
                raise TerminalError(f"the live tail does not follow {condition.topic!r}")
            return self._read_to(matches[0], wanted)
        if isinstance(condition, Mapping):
            return self._read_to(data_type, dict(condition))
        return condition

    def _read_to(self, data_type: str, wanted: dict[int, int]) -> Callable[[], bool]:
        def check() -> bool:
            current = self._views.get(data_type)
            return current is not None and all(
                current.log_end.get(p, -1) >= o for p, o in wanted.items()
            )

        return check

    # -- driving it ----------------------------------------------------------------------

    def step(self) -> int:
        """Refresh the lake, poll the log once, publish: synchronously, for every data
        type. Returns the records read. Errors are handled as in the background
        (logged, counted, the last good cut kept); nothing raises for a failing log
        or lake."""
        with self._step_lock:
            self._refresh()
            got, _ = self._poll()
            self._publish()
        return got

    def start(self) -> LiveTail:
        """Follow the log in a background thread (idempotent); returns ``self``."""
        if self.running:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="k2-live-tail", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the background thread, waiting up to ``timeout_s`` for it; views stay."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("tail_stop_timed_out", timeout_s=timeout_s)
                return
        self._publish_stats()

    def close(self) -> None:
        """Stop, and close the log if :meth:`open` opened it."""
        self.stop()
        if self._owns_log:
            self._owns_log = False
            self._log.close()

    def __enter__(self) -> LiveTail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_refresh = next_poll = self._clock()
        while not self._stop.is_set():
            try:
                next_refresh, next_poll = self._tick(next_refresh, next_poll)
            except Exception as exc:  # a bug must not stop the tail unseen: record, go on
                self._last_error = repr(exc)
                self._step_errors += 1
                log.exception("tail_step_failed", error=repr(exc))
                next_poll = self._clock() + max(self._poll_s, self._poll_backoff.next_delay())
                next_refresh = max(next_refresh, next_poll)
            self._stop.wait(max(0.0, min(next_refresh, next_poll) - self._clock()))

    def _tick(self, next_refresh: float, next_poll: float) -> tuple[float, float]:
        now = self._clock()
        with self._step_lock:
            if now >= next_refresh:
                if self._refresh():
                    self._refresh_backoff.reset()
                    next_refresh = now + self._refresh_s
                else:
                    next_refresh = now + max(self._refresh_s, self._refresh_backoff.next_delay())
            if now >= next_poll:
                _, ok = self._poll()
                if ok:
                    self._poll_backoff.reset()
                    next_poll = now + self._poll_s
                else:
                    next_poll = now + max(self._poll_s, self._poll_backoff.next_delay())
            self._publish()
        return next_refresh, next_poll

    # -- the lake ------------------------------------------------------------------------

    def _refresh(self) -> bool:
        """Refresh every data type's lake position; ``False`` if one failed."""
        ok = True
        for stream in self._streams.values():
            try:
                self._refresh_stream(stream)
            except K2Error as exc:
                ok = False
                self._refresh_errors += 1
                self._last_error = str(exc)
                log.warning("tail_refresh_failed", data_type=stream.data_type, error=str(exc))
        self._refreshes += 1
        self._last_refresh_us = self._wall_clock_us()
        return ok

    def _refresh_stream(self, stream: TailStream) -> None:
        """Take the table's newest snapshot and its offsets; drop what it covers, jump
        ahead where the lake is past the tail. All reads happen before any change, so
        a failure leaves the stream as it was."""
        table = stream.table
        try:
            refresh_if_changed(table)
        except Exception as exc:  # the catalog's own errors (SQL, HTTP, S3): the boundary
            raise LakeUnavailable(f"refreshing {table.name()}: {exc!r}") from exc
        snapshot = table.current_snapshot()
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        if stream.refreshed and snapshot_id == stream.snapshot_id and stream.topic_known:
            return
        lake = lake_offsets(table, stream.topic)
        partitions = self._partitions(stream.topic)
        new = stream.new_partitions(partitions)
        begins = self._log.begin_offsets(stream.topic) if any(p not in lake for p in new) else {}
        floor = None
        seed: pa.Table | None = None
        recent = stream.recent
        if recent is not None and (recent.needs_floor or _would_jump(stream, lake)):
            # Before any change, like every other read here.
            floor = lake_max_timestamp_us(table) + 1
            since = self._wall_clock_us() - recent.window_us
            if recent.needs_floor and recent.rows == 0 and since < floor:
                # Starting: load the window's committed records from the lake, so recent
                # questions are answered from memory from the first cut on.
                seed = lake_rows_since(table, snapshot_id, since, stream.schema, recent.max_rows)
                if seed is not None:
                    floor = since
        stream.apply_lake(snapshot_id, lake, partitions, begins)
        if recent is not None and floor is not None:
            if seed is not None:
                recent.seed(seed, floor)
            else:
                recent.set_floor(floor)

    def _partitions(self, topic: str) -> int | None:
        """The topic's partition count; ``None`` while it does not exist yet (the API
        may start before anything was captured)."""
        try:
            return self._log.topic(topic).partitions
        except TransientError:
            raise
        except TerminalError:
            return None

    # -- the log -------------------------------------------------------------------------

    def _poll(self) -> tuple[int, bool]:
        """Read every partition from its position; returns (records read, no error).
        A failure stops this poll: what was read before it is kept (each partition's
        rows stay contiguous, so the cut stays consistent)."""
        got = 0
        ok = True
        try:
            for stream in self._streams.values():
                if not stream.refreshed:
                    continue  # no lake position yet: nowhere to start from
                for p in sorted(stream.parts):
                    got += self._read_partition(stream, p)
        except K2Error as exc:
            ok = False
            self._read_errors += 1
            self._last_error = str(exc)
            log.warning(
                "tail_read_failed", error=str(exc), transient=isinstance(exc, TransientError)
            )
        now_us = self._wall_clock_us()
        for stream in self._streams.values():
            stream.enforce_cap(self._settings.tail_max_rows, self._clock())
            if stream.recent is not None:
                stream.recent.evict(now_us)
        self._polls += 1
        self._last_poll_us = self._wall_clock_us()
        return got, ok

    def _read_partition(self, stream: TailStream, partition: int) -> int:
        part = stream.parts[partition]
        batches = self._log.read(
            TopicPartition(stream.topic, partition), part.position, None, POLL_MAX_RECORDS
        )
        got = 0
        try:
            for batch in batches:
                got += stream.add(partition, batch.records, batch.offsets())
                if got >= POLL_MAX_RECORDS:
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # give a Kafka reader back to its pool now
        return got

    # -- publishing ----------------------------------------------------------------------

    def _publish(self) -> None:
        """Swap in new views for changed data types, then wake waiters."""
        for data_type, stream in self._streams.items():
            if stream.refreshed and (stream.dirty or data_type not in self._views):
                self._views[data_type] = stream.view()
                stream.dirty = False
        self._publish_stats()
        with self._published:
            self._version += 1
            self._published.notify_all()

    def _publish_stats(self) -> None:
        self._stats = TailStats(
            streams={dt: s.stats() for dt, s in self._streams.items() if s.refreshed},
            polls=self._polls,
            refreshes=self._refreshes,
            read_errors=self._read_errors,
            refresh_errors=self._refresh_errors,
            step_errors=self._step_errors,
            last_poll_at=_utc(self._last_poll_us),
            last_refresh_at=_utc(self._last_refresh_us),
            last_error=self._last_error,
            running=self.running,
        )


def _would_jump(stream: TailStream, lake: Mapping[int, int]) -> bool:
    """True when ``lake`` is past the read position of a partition (records skipped)."""
    return any(lake.get(p, -1) > part.position for p, part in stream.parts.items())


def lake_max_timestamp_us(table: Table) -> int:
    """The newest ``timestamp`` (UTC µs) in ``table``'s current snapshot, from the data
    files' column bounds (no data read); -1 for an empty table."""
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import PrimitiveType

    snapshot = table.current_snapshot()
    if snapshot is None:
        return -1
    field = table.schema().find_field("timestamp")
    field_type = field.field_type
    assert isinstance(field_type, PrimitiveType)
    newest = -1
    for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files():
        raw = (task.file.upper_bounds or {}).get(field.field_id)
        if raw is None:  # no bound: be safe, the floor cannot be below "now"
            return 2**62
        newest = max(newest, int(from_bytes(field_type, raw)))
    return newest


def lake_rows_since(
    table: Table, snapshot_id: int | None, since_us: int, schema: pa.Schema, max_rows: int
) -> pa.Table | None:
    """The records of snapshot ``snapshot_id`` with ``timestamp >= since_us`` (UTC µs)
    in ``schema``; ``None`` when there are more than ``max_rows`` (too many to hold).

    Files are pruned by their timestamp bounds, so this reads the newest files only.
    Raises :class:`LakeUnavailable` when they cannot be read.
    """
    if snapshot_id is None:
        return schema.empty_table()
    since = datetime.fromtimestamp(0, tz=UTC) + timedelta(microseconds=since_us)
    try:
        scan = table.scan(
            snapshot_id=snapshot_id,
            row_filter=f"timestamp >= '{since.isoformat()}'",
            selected_fields=tuple(schema.names),
        )
        rows = scan.to_arrow()
    except Exception as exc:  # the catalog's or the object store's own errors
        raise LakeUnavailable(f"reading the recent records of {table.name()}: {exc!r}") from exc
    if rows.num_rows > max_rows:
        log.warning("tail_recent_seed_skipped", table=str(table.name()), rows=rows.num_rows)
        return None
    return rows.select(schema.names).cast(schema)


def _utc(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, tz=UTC)

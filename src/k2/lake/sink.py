"""The lake sink (``k2 sink``): log → Iceberg, exactly once.

The sink reads the data topics (trades, quotes, gaps) as a member of one consumer
group, buffers records until ``max_records`` are held or ``max_seconds`` have passed
since the first, then, per table, sorts the batch by the table's sort order and
appends it. The append's snapshot summary stores the log offsets the batch ends at
(see :mod:`k2.lake.sink_offsets`), so data and position are one atomic commit.

Exactly once, whatever crashes when:

- The lake is the source of truth for positions. On start and whenever the group
  gives this member a partition, the sink reads the lake's offsets and seeks there;
  rows below them are dropped, a batch that starts above them is refetched. The
  group's own commits come after the lake commit and serve only lag reporting.
- A commit is fenced: before each attempt the sink refreshes the table and keeps only
  the partitions whose lake offset is still where its rows start; the append then
  requires the table to be unchanged since that refresh (pyiceberg's own silent
  re-apply is switched off for it), so two sinks that briefly both hold a partition
  during a rebalance cannot both write it. A lost race is retried with fresh offsets.
- A batch that still cannot be written after ``commit_retries`` attempts (e.g. a
  record the table refuses) goes to the data type's dead-letter topic with the reason,
  and an empty append moves the lake's offsets past it: the sink keeps going.

Named crash points (for crash tests, via :class:`SinkHooks`): ``mid_batch`` (records
buffered, nothing committed), ``before_append`` (batch sorted, about to commit),
``after_append`` (lake committed, group offsets not yet).
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from k2.capture.log_output import dead_letter_batch
from k2.errors import K2Error, TerminalError, TransientError
from k2.lake.sink_offsets import encode_offsets, lake_offsets, offsets_key
from k2.lake.tables import TABLE_DEFS, TableDef, ensure_tables, sort_for
from k2.log.base import Consumer, Log, LogBatch, TopicPartition
from k2.log.topics import TopicLayout
from k2.ops.breaker import BreakerRegistry, BreakerState, counts_as_failure
from k2.ops.clock import utc_now_us
from k2.ops.log import get_logger
from k2.quality.rejects import Reject, RejectReason

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from k2.config import Settings
    from k2.ops.metrics import Metrics
    from k2.ops.metrics_http import MetricsServer

log = get_logger(__name__)

#: Data types the sink moves, with the table each lands in.
SINK_DATA_TYPES: dict[str, str] = {"trade": "trades", "quote": "quotes", "gap": "gaps"}

#: Least seconds between two log-lag readings (each asks the log for its end offsets).
LAG_INTERVAL_S = 5.0


class Stopper(Protocol):
    """Anything with ``is_set()``: a ``threading.Event`` or an ``asyncio.Event``."""

    def is_set(self) -> bool: ...


@dataclass
class SinkHooks:
    """Test and debug hooks. ``crash_point(name)`` is called at each named point."""

    crash_point: Callable[[str], None] = lambda name: None


@dataclass
class SinkStats:
    """What a sink run did. ``records`` counts rows appended per table."""

    records: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    commits: int = 0
    commit_conflicts: int = 0
    dead_lettered: int = 0
    dropped_already_in_lake: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.records.values())


@dataclass
class _Pending:
    """Buffered rows of one partition: contiguous from ``start`` to ``end`` (exclusive)."""

    start: int
    end: int
    batches: list[pa.RecordBatch] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)


@dataclass(frozen=True)
class SinkOptions:
    """How the sink batches and retries."""

    max_records: int = 100_000
    max_seconds: float = 5.0
    commit_retries: int = 10
    poll_records: int = 50_000


class LakeSink:
    """Moves ``layout``'s data topics from ``log`` into the tables of ``namespace``.

    ``clock``: monotonic seconds, for batching by time. ``metrics``: where commits,
    rows, dead letters and this member's log lag are recorded (:mod:`k2.ops.metrics`).
    Not thread-safe: one sink, one thread; run several sinks (processes) in the same
    ``group`` to spread partitions.
    """

    def __init__(
        self,
        log_: Log,
        catalog: Catalog,
        layout: TopicLayout,
        *,
        namespace: str = "market_data",
        group: str = "k2-lake-sink",
        options: SinkOptions = SinkOptions(),
        hooks: SinkHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        breakers: BreakerRegistry | None = None,
        commit_delay: Callable[[], float] | None = None,
    ) -> None:
        """``breakers``: the ``catalog`` and ``object_store`` circuit breakers guard
        every lake commit; while the lake's storage is unavailable the sink holds what
        it read (nothing is dead-lettered for an outage) and retries when the breaker
        lets it. ``commit_delay``: seconds to wait before each commit (``k2 chaos
        slow-storage`` injects slowness through it)."""
        self._log = log_
        self._metrics = metrics
        self._breakers = breakers
        self._commit_delay = commit_delay
        self.outage_since: float | None = None
        self._lag_due: float | None = None
        self._layout = layout
        self._options = options
        self._hooks = hooks or SinkHooks()
        self._clock = clock
        tables = ensure_tables(catalog, namespace)
        self._routes: dict[str, tuple[TableDef, Table, str]] = {}
        for data_type, table_name in SINK_DATA_TYPES.items():
            topic = layout.data_topic(data_type)
            self._routes[topic] = (TABLE_DEFS[table_name], tables[table_name], data_type)
        for spec in layout.specs():
            log_.create_topic(spec)
        self._consumer: Consumer = log_.consumer(group, sorted(self._routes))
        self._assigned: set[TopicPartition] = set()
        self._next: dict[TopicPartition, int] = {}  # next offset wanted, per owned partition
        self._pending: dict[TopicPartition, _Pending] = {}
        self._buffered = 0
        self._first_buffered_at: float | None = None
        self.stats = SinkStats()

    @property
    def buffered(self) -> int:
        """Records read from the log and not yet committed to the lake."""
        return self._buffered

    # -- running -------------------------------------------------------------------

    def run(
        self,
        stop: Stopper | None = None,
        max_seconds: float | None = None,
        *,
        until_idle: bool = False,
    ) -> SinkStats:
        """Sink until ``stop`` is set, ``max_seconds`` pass, or (``until_idle``) a poll
        finds nothing new and everything read is committed (i.e. the partitions this
        member owns are drained). Commits what is buffered before returning. Closes
        nothing: call :meth:`close`."""
        began = self._clock()
        while stop is None or not stop.is_set():
            now = self._clock()
            if max_seconds is not None and now - began >= max_seconds:
                break
            assigned_before = self._assigned
            try:
                got = self.step(timeout_s=0.2)
            except StoreUnavailable as exc:
                self._wait_for_store(stop, exc)
                continue
            # Idle means a poll *after* the last assignment change found nothing.
            if (
                until_idle
                and got == 0
                and self._buffered == 0
                and (self._assigned == assigned_before)
            ):
                break
        try:
            self.flush()
        except StoreUnavailable as exc:
            # Stopping during an outage: what is held stays in the log, uncommitted,
            # and the next sink start commits it (the lake's offsets say where).
            log.warning("stopping with the lake unavailable; records left in the log for the "
                        "next start", records=self._buffered, error=str(exc))  # fmt: skip
        self.stats.seconds += self._clock() - began
        return self.stats

    def step(self, timeout_s: float = 0.2) -> int:
        """One poll (and a commit if a batch is due); returns the records polled."""
        room = max(1, self._options.max_records - self._buffered)
        batches = self._consumer.poll(min(self._options.poll_records, room), timeout_s)
        self._follow_assignment()
        got = int(sum(b.records.num_rows for b in batches))
        refetch: set[TopicPartition] = set()
        for batch in batches:
            tp = TopicPartition(batch.topic, batch.partition)
            if tp not in self._assigned or tp in refetch:
                continue
            if not self._accept(tp, batch):
                refetch.add(tp)
        if self._buffered:
            self._hooks.crash_point("mid_batch")
        now = self._clock()
        due_by_time = (
            self._first_buffered_at is not None
            and now - self._first_buffered_at >= self._options.max_seconds
        )
        if (
            self._buffered >= self._options.max_records
            or due_by_time
            or (got == 0 and self._buffered)
        ):
            self.flush()
        self._report_lag()
        return got

    def _report_lag(self) -> None:
        """Record, per data type, the records of this member's partitions that the log
        holds beyond the lake (at most every ``LAG_INTERVAL_S``)."""
        if self._metrics is None:
            return
        now = self._clock()
        if self._lag_due is not None and now < self._lag_due:
            return
        self._lag_due = now + LAG_INTERVAL_S
        lag = dict.fromkeys(SINK_DATA_TYPES, 0)
        by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
        for tp in self._assigned:
            by_topic[tp.topic].append(tp)
        for topic, tps in sorted(by_topic.items()):
            try:
                ends = self._log.end_offsets(topic)
            except K2Error as exc:  # only a metric is late: the sink carries on
                log.warning("sink_lag_unavailable", topic=topic, error=str(exc))
                return
            for tp in tps:
                pending = self._pending.get(tp)
                in_lake = pending.start if pending is not None else self._next.get(tp, 0)
                lag[self._routes[topic][2]] += max(0, ends.get(tp.partition, 0) - in_lake)
        for data_type, records in lag.items():
            self._metrics.sink_lag(data_type, records)

    def _follow_assignment(self) -> None:
        assigned = set(self._consumer.assignment())
        if assigned == self._assigned:
            return
        for tp in self._assigned - assigned:
            dropped = self._pending.pop(tp, None)
            if dropped is not None:
                self._buffered -= dropped.rows
            self._next.pop(tp, None)
        gained = assigned - self._assigned
        by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
        for tp in gained:
            by_topic[tp.topic].append(tp)
        for topic, tps in by_topic.items():
            table = self._routes[topic][1]
            table.refresh()
            offsets = lake_offsets(table, topic)
            begins = self._log.begin_offsets(topic)
            for tp in tps:
                start = offsets.get(tp.partition, begins.get(tp.partition, 0))
                self._next[tp] = start
                # The lake is the source of truth: start exactly where it ends, back
                # as well as forward (the group's commits may be ahead of a lake that
                # was restored, or behind one another sink has written).
                if self._consumer.position(tp) != start:
                    self._consumer.seek(tp, start)
        self._assigned = assigned
        log.info("sink_assignment", partitions=len(assigned), gained=len(gained))

    def _accept(self, tp: TopicPartition, batch: LogBatch) -> bool:
        """Buffer the part of ``batch`` at or after the wanted offset; ``False`` (and a
        seek) when the batch starts beyond it, i.e. the consumer skipped records."""
        want = self._next[tp]
        first = batch.first_offset
        if first > want:
            begin = self._log.begin_offsets(tp.topic).get(tp.partition, 0)
            if begin <= want:
                self._consumer.seek(tp, want)
                return False
            log.warning("sink_records_lost_to_retention", topic=tp.topic,
                        partition=tp.partition, wanted=want, oldest=begin)  # fmt: skip
            want = first
        records = batch.records
        end = batch.next_offset
        if end <= want:
            self.stats.dropped_already_in_lake += records.num_rows
            return True
        if first < want:
            skip = self._rows_before(batch, want)
            self.stats.dropped_already_in_lake += skip
            records = records.slice(skip)
        pending = self._pending.get(tp)
        if pending is None:
            pending = self._pending[tp] = _Pending(start=want, end=want)
        pending.batches.append(records)
        pending.end = end
        self._next[tp] = end
        self._buffered += records.num_rows
        if self._first_buffered_at is None:
            self._first_buffered_at = self._clock()
        return True

    @staticmethod
    def _rows_before(batch: LogBatch, offset: int) -> int:
        if batch.offsets_array is None:
            return offset - batch.first_offset
        import pyarrow.compute as pc

        return int(pc.sum(pc.less(batch.offsets(), offset)).as_py() or 0)

    # -- committing ----------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything buffered: one append per table, then the group offsets."""
        if not self._pending:
            self._first_buffered_at = None
            return
        by_topic: dict[str, dict[int, _Pending]] = defaultdict(dict)
        for tp, pending in self._pending.items():
            by_topic[tp.topic][tp.partition] = pending
        self._pending = {}
        self._buffered = 0
        self._first_buffered_at = None
        committed: dict[TopicPartition, int] = {}
        topics = sorted(by_topic.items())
        for i, (topic, parts) in enumerate(topics):
            try:
                done = self._commit_topic(topic, parts)
            except StoreUnavailable:
                # Hold this topic's records and the rest for the next flush.
                for held_topic, held in topics[i:]:
                    for partition, pending in held.items():
                        self._pending[TopicPartition(held_topic, partition)] = pending
                        self._buffered += pending.rows
                self._first_buffered_at = self._clock()
                self._commit_group(committed)
                raise
            for partition, end in done.items():
                committed[TopicPartition(topic, partition)] = end
        if self.outage_since is not None:
            log.warning(
                "lake storage is back", outage_s=round(self._clock() - self.outage_since, 1)
            )
            self.outage_since = None
        self._hooks.crash_point("after_append")
        self._commit_group(committed)

    def _commit_group(self, committed: dict[TopicPartition, int]) -> None:
        owned = {tp: o for tp, o in committed.items() if tp in self._assigned}
        if owned:
            try:
                self._consumer.commit(owned)
            except Exception as exc:  # lag reporting only: the lake holds the truth
                log.warning("sink_group_commit_failed", error=str(exc))

    def _commit_topic(self, topic: str, parts: dict[int, _Pending]) -> dict[int, int]:
        """Append ``parts`` to the topic's table with their offsets; returns the offsets
        committed per partition (partitions another sink wrote first are left out and
        their positions reset to the lake's)."""
        table_def, table, data_type = self._routes[topic]
        attempts = self._options.commit_retries + 1
        error: Exception | None = None
        began = time.monotonic()
        delay = self._commit_delay() if self._commit_delay is not None else 0.0
        if delay > 0:
            time.sleep(delay)  # injected slowness (k2 chaos slow-storage)
        for attempt in range(attempts):
            self._check_breakers()
            try:
                table.refresh()
            except Exception as exc:
                self._store_failed(exc)
                raise StoreUnavailable(f"the lake catalog cannot be read: {exc!r}") from exc
            lake = lake_offsets(table, topic)
            mine = self._fence(topic, parts, lake)
            if not mine:
                return {}
            merged = {**lake, **{p: parts[p].end for p in mine}}
            data = self._sorted(table_def, [b for p in mine for b in parts[p].batches])
            self._hooks.crash_point("before_append")
            try:
                _without_internal_retry(table).append(
                    data, snapshot_properties={offsets_key(topic): encode_offsets(merged)}
                )
            except Exception as exc:
                if _is_commit_conflict(exc):
                    self.stats.commit_conflicts += 1
                    self._count_commit(table_def.name, "conflict")
                    continue
                if _is_outage(exc):
                    self._count_commit(table_def.name, "error")
                    self._store_failed(exc)
                    raise StoreUnavailable(f"the lake storage failed: {exc!r}") from exc
                error = exc
                self._count_commit(table_def.name, "error")
                log.warning("sink_append_failed", topic=topic, attempt=attempt + 1,
                            error=repr(exc))  # fmt: skip
                time.sleep(min(0.05 * 2**attempt, 2.0))  # back off a failing store
                continue
            self._store_ok()
            self.stats.commits += 1
            self.stats.records[table_def.name] += data.num_rows
            self._count_commit(table_def.name, "ok", data.num_rows, time.monotonic() - began)
            log.debug("sink_committed", table=table_def.name, records=data.num_rows,
                      ms=round((time.monotonic() - began) * 1000, 1))  # fmt: skip
            return {p: parts[p].end for p in mine}
        if error is None:
            raise TerminalError(f"sink: {attempts} commit conflicts in a row on {topic}")
        return self._dead_letter(topic, data_type, parts, error)

    # -- storage outages -----------------------------------------------------------

    def _check_breakers(self) -> None:
        if self._breakers is None:
            return
        for name in STORE_BREAKERS:
            breaker = self._breakers.get(name)
            # One sink thread commits at a time, so a half-open breaker's single trial
            # is this attempt; only a breaker still open turns it away.
            if breaker.state is BreakerState.OPEN:
                retry_in = breaker.snapshot().get("retry_in_s")
                raise StoreUnavailable(
                    f"the lake's {name.replace('_', ' ')} circuit breaker is open "
                    f"(retrying in {retry_in or 0:.1f} s): {breaker.stats().last_error}"
                )

    def _store_failed(self, exc: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = self._clock()
        if self._breakers is not None:
            name = "object_store" if _is_object_store_error(exc) else "catalog"
            # Judged an outage already: count it even when the driver's error type
            # (e.g. SQLAlchemy's OperationalError for PostgreSQL) is not one the
            # breaker's default predicate knows, or a catalog outage never opens it.
            failure = exc if counts_as_failure(exc) else StoreUnavailable(repr(exc))
            self._breakers.get(name).record_failure(failure)

    def _store_ok(self) -> None:
        if self._breakers is not None:
            for name in STORE_BREAKERS:
                self._breakers.get(name).record_success()

    def _wait_for_store(self, stop: Stopper | None, exc: StoreUnavailable) -> None:
        """Hold the buffered records while the lake's storage is down: wait until a
        breaker lets the next attempt through (at most 5 s at a time), or ``stop``."""
        wait = 1.0
        if self._breakers is not None:
            retry_at = [b.stats().retry_at for n in STORE_BREAKERS if (b := self._breakers.get(n))]
            wait = max([0.2, *(r - self._clock() for r in retry_at if r is not None)])
        wait = min(wait, 5.0)
        log.warning("lake storage unavailable; holding records", buffered=self._buffered,
                    retry_in_s=round(wait, 1), error=str(exc))  # fmt: skip
        end = self._clock() + wait
        while self._clock() < end and (stop is None or not stop.is_set()):
            time.sleep(0.05)  # waiting out the breaker; the stop flag is polled

    def _count_commit(
        self, table: str, outcome: str, rows: int = 0, seconds: float | None = None
    ) -> None:
        if self._metrics is not None:
            self._metrics.sink_commit(table, outcome, rows=rows, seconds=seconds)

    def _fence(self, topic: str, parts: dict[int, _Pending], lake: dict[int, int]) -> list[int]:
        """Partitions whose rows start exactly where the lake ends (others are reset)."""
        mine = []
        for partition, pending in sorted(parts.items()):
            at = lake.get(partition)
            if at is None or at == pending.start:
                mine.append(partition)
                continue
            tp = TopicPartition(topic, partition)
            log.warning("sink_partition_moved", topic=topic, partition=partition,
                        lake=at, ours=pending.start)  # fmt: skip
            if tp in self._assigned:
                self._next[tp] = at
                self._consumer.seek(tp, at)
        return mine

    @staticmethod
    def _sorted(table_def: TableDef, batches: list[pa.RecordBatch]) -> pa.Table:
        schema = table_def.record_type.arrow_schema()
        data = pa.Table.from_batches(batches, schema=schema)
        return sort_for(table_def, data)

    def _dead_letter(
        self, topic: str, data_type: str, parts: dict[int, _Pending], error: Exception
    ) -> dict[int, int]:
        """Send ``parts`` to the dead-letter topic, then move the lake past them."""
        now_us = utc_now_us()
        raws = [
            json.dumps(row, default=str, separators=(",", ":")).encode()
            for pending in parts.values()
            for batch in pending.batches
            for row in batch.to_pylist()
        ]
        if raws:
            self._log.produce(
                self._layout.dead_letter_topic(data_type),
                _dead_letter_batch(data_type, raws, f"lake append failed: {error!r}", now_us),
                key_column="source",
            )
        rejects = raws
        self.stats.dead_lettered += len(rejects)
        if self._metrics is not None:
            self._metrics.sink_dead_lettered(len(rejects))
        log.error("sink_dead_lettered", topic=topic, records=len(rejects), error=repr(error))
        table_def, table, _ = self._routes[topic]
        empty = pa.Table.from_batches([], schema=table_def.record_type.arrow_schema())
        for _ in range(self._options.commit_retries + 1):
            table.refresh()
            lake = lake_offsets(table, topic)
            mine = self._fence(topic, parts, lake)
            merged = {**lake, **{p: parts[p].end for p in mine}}
            try:
                _without_internal_retry(table).append(
                    empty, snapshot_properties={offsets_key(topic): encode_offsets(merged)}
                )
            except Exception as exc:
                if _is_commit_conflict(exc):
                    self._count_commit(table_def.name, "conflict")
                    continue
                self._count_commit(table_def.name, "error")
                raise
            self._count_commit(table_def.name, "ok")
            return {p: parts[p].end for p in mine}
        raise TerminalError(f"sink: cannot move the lake past dead letters on {topic}")

    def close(self) -> None:
        """Leave the consumer group (buffered, uncommitted records are dropped)."""
        self._consumer.close()


def _dead_letter_batch(
    data_type: str, raws: list[bytes], detail: str, now_us: int
) -> pa.RecordBatch:
    """DEAD_LETTER rows for records the lake refused (raw: the record as JSON)."""
    rejects = [
        Reject(RejectReason.LAKE_WRITE_FAILED, detail, raw, now_us, "sink", data_type)
        for raw in raws
    ]
    return dead_letter_batch(rejects, now_us)


class StoreUnavailable(TransientError):
    """The lake's catalog or object store did not answer; nothing was lost (the sink
    holds the records, and the log still has them)."""


#: The circuit breakers that guard a lake commit.
STORE_BREAKERS = ("catalog", "object_store")

_OUTAGE_NAMES = {
    "OperationalError", "InterfaceError", "DisconnectionError", "EndpointConnectionError",
    "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError", "NoCredentialsError",
}  # fmt: skip


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the storage is unreachable, as opposed to
    refusing the data: then the sink holds the records instead of dead-lettering."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (TransientError, OSError, TimeoutError, ConnectionError)):
            return True
        if any(t.__name__ in _OUTAGE_NAMES for t in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_object_store_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        module = type(seen).__module__
        if module.startswith(("botocore", "s3fs", "pyarrow", "fsspec")) or isinstance(
            seen, OSError
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_commit_conflict(exc: Exception) -> bool:
    from pyiceberg.exceptions import CommitFailedException

    return isinstance(exc, CommitFailedException)


def _without_internal_retry(table: Table) -> Table:
    """A view of ``table`` whose commits fail on conflict instead of being re-applied
    by pyiceberg on top of newer metadata (which would bypass the sink's fence)."""
    view = copy.copy(table)
    props = {**table.metadata.properties, "commit.retry.num-retries": "0"}
    view.metadata = table.metadata.model_copy(update={"properties": props})
    return view


def options_from(settings: Settings) -> SinkOptions:
    """The sink options held in ``settings.lake``."""
    lake = settings.lake
    return SinkOptions(
        max_records=lake.sink_max_records,
        max_seconds=lake.sink_max_seconds,
        commit_retries=lake.sink_commit_retries,
    )


def run_sink(
    settings: Settings,
    *,
    stop: Stopper | None = None,
    max_seconds: float | None = None,
    until_idle: bool = False,
    hooks: SinkHooks | None = None,
    metrics: Metrics | None = None,
    observe: bool = False,
) -> SinkStats:
    """``k2 sink``: open the log and the catalog from ``settings`` and sink until
    ``stop`` is set, ``max_seconds`` pass, or (``until_idle``) the log is drained.
    Blocking; run it in a thread (``asyncio.to_thread``) from async code. ``metrics``:
    see :class:`LakeSink`. ``observe`` (what ``k2 sink`` does): serve metrics on
    ``ops.sink_metrics_port``, guard commits with circuit breakers, honour
    ``k2 chaos slow-storage`` and write ``<run_dir>/sink.json`` for ``k2 status``."""
    from k2.lake.catalog import open_catalog
    from k2.log.factory import open_log, topic_layout
    from k2.ops.chaos import storage_delay_s
    from k2.ops.observe import StatusThread, breaker_registry, stage_metrics

    server = status = None
    breakers = None
    delay = None
    if observe:
        metrics, server = stage_metrics(settings, "sink", settings.ops.sink_metrics_port)
        breakers = breaker_registry(settings, metrics)
        delay = functools.partial(storage_delay_s, settings)  # k2 chaos slow-storage
    log_ = open_log(settings)
    try:
        sink = LakeSink(
            log_,
            open_catalog(settings),
            topic_layout(settings),
            namespace=settings.lake.namespace,
            group=settings.lake.sink_group,
            options=options_from(settings),
            hooks=hooks,
            metrics=metrics,
            breakers=breakers,
            commit_delay=delay,
        )
        if observe:
            status = StatusThread(settings, "sink", lambda: _sink_status(sink, breakers, server))
        try:
            stats = sink.run(stop, max_seconds, until_idle=until_idle)
        finally:
            sink.close()
            if status is not None:
                status.close()
            if server is not None:
                server.close()
    finally:
        log_.close()
    log.info("sink_stopped", records=dict(stats.records), commits=stats.commits,
             dead_lettered=stats.dead_lettered, seconds=round(stats.seconds, 3))  # fmt: skip
    return stats


def _sink_status(
    sink: LakeSink, breakers: BreakerRegistry | None, server: MetricsServer | None
) -> dict[str, object]:
    stats = sink.stats
    return {
        "stage": "sink",
        "phase": "waiting for storage" if sink.outage_since is not None else "running",
        "records": dict(stats.records),
        "commits": stats.commits,
        "commit_conflicts": stats.commit_conflicts,
        "dead_lettered": stats.dead_lettered,
        "buffered": sink.buffered,
        "breakers": breakers.snapshot() if breakers is not None else [],
        "metrics_url": server.url if server is not None else None,
    }

"""K2's Prometheus metrics: one catalogue, declared as data, and one way to record them.

:data:`CATALOGUE` names every metric K2 exposes (``k2_`` prefix, counters end in
``_total``, times in ``_seconds``) with its type, help text and labels; each label
declares the values it may take — a closed set (``data_type`` ∈ {trade, quote}), or,
only for bounded identifiers with no fixed list (a route template), a regex. The
dashboards and alert rules under ``deploy/`` are written against these names.

:class:`Metrics` registers the whole catalogue in one ``CollectorRegistry`` and records
through typed helpers (``capture_produced``, ``sink_commit``, ``api_request`` ...) or
the generic :meth:`Metrics.inc` / :meth:`Metrics.set` / :meth:`Metrics.observe`. A label
value outside its declared set never raises and never creates a new series: it is
recorded as ``other``, counted in ``k2_metric_label_errors_total{metric}`` and logged
once per metric and label. Bad input to a metric must not stop a service, and an
unbounded label (a raw path, an error message) must not blow up Prometheus.

Stats objects the pipeline already keeps (``CaptureStats``, the WebSocket client's
``StreamStats``, the live tail's ``TailStats``) are mirrored by *delta sync*:
:meth:`Metrics.sync_capture` and friends add to each counter what the stats object
gained since the last sync. Chosen over a custom collector that would report the stats
object's values as they are, because

- a counter stays one series fed from anywhere: the same family can take direct
  increments (a stage wired later) and mirrored ones, with no duplicate registration;
- a restarted pipeline brings a fresh stats object that starts at zero, and the
  counter keeps rising instead of resetting (the series belongs to the process, so a
  reset would wrongly read as a process restart);
- label values go through the same validation as every direct call.

Syncs need not be scheduled: :meth:`Metrics.on_scrape` registers a callable run at the
start of every collection of the registry (each scrape, each ``generate_latest``), so
the exposition is as fresh as the stats objects.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from k2 import __version__
from k2.errors import TerminalError
from k2.ops.log import get_logger
from k2.quality.rejects import RejectReason

log = get_logger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
Stage = Literal["ingest", "sink", "api", "platform"]

#: The value a label takes when the one given is outside its declared set.
OTHER: Final = "other"

#: Data type of counts that do not say which data type they are (a reject of an
#: unreadable frame; stats objects that count trades and quotes together).
UNKNOWN: Final = "unknown"

#: Prometheus' own label names, and those it attaches to every scraped series.
RESERVED_LABELS: Final = frozenset({"le", "quantile", "job", "instance"})

#: Process stages (``k2 ingest``, ``k2 sink``, ``k2 serve``, the simulator).
STAGES: Final = ("ingest", "sink", "api", "simulator")

#: Circuit breaker states and the gauge value of each.
BREAKER_STATES: Final = MappingProxyType({"closed": 0, "half_open": 1, "open": 2})

#: Degradation levels: 0 normal … 4 the most shedding.
MAX_DEGRADATION_LEVEL: Final = 4

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# -- the catalogue -------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    """One label and the values it may take: a closed set, or (``pattern``) a bounded
    identifier with no fixed list, which must match the regex in full."""

    name: str
    values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def admits(self, value: str) -> bool:
        """Whether ``value`` is one this label may take."""
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value in self.values

    @property
    def closed(self) -> bool:
        """Whether the values are a fixed set (so every series can be listed up front)."""
        return self.pattern is None


def one_of(name: str, *values: str) -> Label:
    """A label whose values are exactly ``values``."""
    return Label(name, frozenset(values))


def matching(name: str, regex: str) -> Label:
    """A label for a bounded identifier: any value ``regex`` matches in full. The regex
    must bound the length, so the label cannot carry arbitrary text."""
    return Label(name, pattern=re.compile(regex))


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, type, help text, labels and the stage that records it.

    ``buckets`` (histograms only) are upper bounds in the metric's unit.
    """

    name: str
    kind: Kind
    help: str
    stage: Stage
    labels: tuple[Label, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)


DATA_TYPE = one_of("data_type", "trade", "quote")
DATA_TYPE_OR_UNKNOWN = one_of("data_type", "trade", "quote", UNKNOWN)
SINK_DATA_TYPE = one_of("data_type", "trade", "quote", "gap")
TABLE = one_of("table", "trades", "quotes", "gaps", "reference_data")
REASON = one_of("reason", *(r.value for r in RejectReason))
GAP_OUTCOME = one_of("outcome", "repaired", "unrepairable")
COMMIT_OUTCOME = one_of("outcome", "ok", "conflict", "error")
SHED_LEVEL = one_of("level", *(str(n) for n in range(1, MAX_DEGRADATION_LEVEL + 1)))
STAGE = one_of("stage", *STAGES)
BREAKER = one_of("breaker", "exchange", "log", "catalog", "object_store")
#: A route template (``/v1/summary/{symbol}``), never a raw path; ``unmatched`` for none.
ENDPOINT = matching("endpoint", r"unmatched|/[A-Za-z0-9_.{}:/-]{0,120}")
METHOD = one_of("method", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS = matching("status", r"[1-5][0-9]{2}")
VERSION = matching("version", r"[0-9][0-9A-Za-z.+_-]{0,63}")

_LABEL_ERRORS = "k2_metric_label_errors_total"

_SPECS: tuple[MetricSpec, ...] = (
    # -- ingest (capture) --
    MetricSpec("k2_capture_messages_received_total", "counter",
               "Data messages received from the exchange, by data type", "ingest",
               (DATA_TYPE_OR_UNKNOWN,)),
    MetricSpec("k2_capture_records_produced_total", "counter",
               "Valid, deduplicated records delivered to the log, by data type", "ingest",
               (DATA_TYPE,)),
    MetricSpec("k2_capture_rejects_total", "counter",
               "Frames or records rejected (sent to the dead-letter topic), by reason",
               "ingest", (DATA_TYPE_OR_UNKNOWN, REASON)),
    MetricSpec("k2_capture_duplicates_total", "counter",
               "Records dropped as duplicates of one already captured", "ingest",
               (DATA_TYPE_OR_UNKNOWN,)),
    MetricSpec("k2_capture_gaps_detected_total", "counter",
               "Ranges of missing exchange trade ids detected", "ingest"),
    MetricSpec("k2_capture_gaps_repaired_total", "counter",
               "Gaps resolved, by outcome (repaired from REST, or unrepairable)", "ingest",
               (GAP_OUTCOME,)),
    MetricSpec("k2_capture_records_shed_total", "counter",
               "Records deliberately dropped under load, by degradation level", "ingest",
               (DATA_TYPE, SHED_LEVEL)),
    MetricSpec("k2_exchange_ws_connections", "gauge",
               "Exchange WebSocket connections open now", "ingest"),
    MetricSpec("k2_exchange_ws_reconnects_total", "counter",
               "Exchange WebSocket reconnects after an unexpected close", "ingest"),
    MetricSpec("k2_capture_last_record_timestamp_seconds", "gauge",
               "Exchange event time of the newest record captured (Unix seconds)", "ingest",
               (DATA_TYPE,)),
    # -- sink --
    MetricSpec("k2_sink_rows_written_total", "counter",
               "Rows the lake sink committed to Iceberg, by table", "sink", (TABLE,)),
    MetricSpec("k2_sink_commits_total", "counter",
               "Lake commit attempts, by table and outcome", "sink", (TABLE, COMMIT_OUTCOME)),
    MetricSpec("k2_sink_commit_duration_seconds", "histogram",
               "Time to commit one batch to a table, retries included (seconds)", "sink",
               (TABLE,), _COMMIT_BUCKETS),
    MetricSpec("k2_sink_log_lag_records", "gauge",
               "Records in the log that this sink has not committed to the lake", "sink",
               (SINK_DATA_TYPE,)),
    MetricSpec("k2_sink_last_commit_timestamp_seconds", "gauge",
               "When this sink last committed to the table (Unix seconds)", "sink", (TABLE,)),
    MetricSpec("k2_sink_dead_lettered_total", "counter",
               "Records the lake refused, sent to the dead-letter topic", "sink"),
    # -- api / query --
    MetricSpec("k2_api_requests_total", "counter",
               "API requests answered, by route template, method and status", "api",
               (ENDPOINT, METHOD, STATUS)),
    MetricSpec("k2_api_request_duration_seconds", "histogram",
               "API request wall time by route template (seconds)", "api", (ENDPOINT,),
               _LATENCY_BUCKETS),
    MetricSpec("k2_query_rows_returned_total", "counter",
               "Rows returned by API queries, by route template", "api", (ENDPOINT,)),
    MetricSpec("k2_hybrid_queries_total", "counter",
               "API queries whose answer used the live tail (records not yet in the lake)",
               "api", (ENDPOINT,)),
    MetricSpec("k2_lake_commit_age_seconds", "gauge",
               "Age of the newest lake snapshot this process has seen (seconds)", "api",
               (TABLE,)),
    MetricSpec("k2_tail_records", "gauge",
               "Records the live tail holds that the lake has not committed", "api",
               (DATA_TYPE,)),
    # -- platform --
    MetricSpec("k2_degradation_level", "gauge",
               f"Degradation level of the stage (0 normal … {MAX_DEGRADATION_LEVEL})",
               "platform", (STAGE,)),
    MetricSpec("k2_circuit_breaker_state", "gauge",
               "Circuit breaker state (0 closed, 1 half-open, 2 open)", "platform",
               (BREAKER,)),
    MetricSpec("k2_circuit_breaker_failures_total", "counter",
               "Failures a circuit breaker counted", "platform", (BREAKER,)),
    MetricSpec("k2_stage_up", "gauge",
               "Whether the stage runs in this process (1) or is down (0)", "platform",
               (STAGE,)),
    MetricSpec("k2_stage_restarts_total", "counter",
               "Times a supervisor restarted the stage", "platform", (STAGE,)),
    MetricSpec("k2_build_info", "gauge",
               "K2 build of this process (always 1)", "platform", (VERSION,)),
)  # fmt: skip


def _with_label_errors(specs: tuple[MetricSpec, ...]) -> dict[str, MetricSpec]:
    names = [s.name for s in specs] + [_LABEL_ERRORS]
    errors = MetricSpec(
        _LABEL_ERRORS,
        "counter",
        "Label values outside their declared set (recorded as 'other'), by metric",
        "platform",
        (one_of("metric", *names),),
    )
    return {s.name: s for s in (*specs, errors)}


#: Every K2 metric, by name. The one place a metric is declared.
CATALOGUE: Final[Mapping[str, MetricSpec]] = MappingProxyType(_with_label_errors(_SPECS))


# -- what delta sync reads -------------------------------------------------------------


class CaptureCounts(Protocol):
    """What :meth:`Metrics.sync_capture` reads (``k2.capture.pipeline.CaptureStats``)."""

    @property
    def trades(self) -> int: ...
    @property
    def quotes(self) -> int: ...
    @property
    def rejects(self) -> Mapping[str, int]: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def gaps_detected(self) -> int: ...
    @property
    def gaps_repaired(self) -> int: ...
    @property
    def gaps_unrepairable(self) -> int: ...


class StreamCounts(Protocol):
    """The WebSocket client's counters (``k2.sources.binance.ws.StreamStats``)."""

    @property
    def reconnects(self) -> int: ...
    @property
    def frames_received(self) -> int: ...


class ExchangeStream(Protocol):
    """What :meth:`Metrics.sync_stream` reads (``k2.sources.binance.ws.BinanceStream``)."""

    @property
    def stats(self) -> StreamCounts: ...
    @property
    def connections(self) -> int: ...


class TailStreamCounts(Protocol):
    @property
    def rows_held(self) -> int: ...


class TailCounts(Protocol):
    """What :meth:`Metrics.sync_tail` reads (``k2.query.tail.TailStats``)."""

    @property
    def streams(self) -> Mapping[str, TailStreamCounts]: ...


#: The live tail names its streams after tables; metrics use record data types.
_TAIL_DATA_TYPES = {"trades": "trade", "quotes": "quote"}


# -- recording -----------------------------------------------------------------------


class _BeforeScrape(Collector):
    """Runs the scrape hooks. Registered before any family, and a registry collects in
    registration order, so the families read afterwards are up to date."""

    def __init__(self, run: Callable[[], None]) -> None:
        self._run = run

    def collect(self) -> Iterable[Metric]:
        self._run()
        return ()

    def describe(self) -> Iterable[Metric]:
        return ()  # no names of its own: nothing to clash with


_Family = Counter | Gauge | Histogram


class Metrics:
    """Every catalogued metric, registered in ``registry`` (default: a fresh one).

    ``stages``: the stages this process runs (``ingest``, ``sink``, ``api``). Their
    counters whose labels are all closed sets start at zero for every label
    combination, so the first event is visible to ``rate()`` and an idle stage reads 0
    rather than nothing; other stages' labelled families are exposed without samples,
    so an API process never reports, say, a zero ``records_produced{data_type="trade"}``
    (unlabelled metrics always have their one sample). ``version`` fills
    ``k2_build_info``; ``wall_clock`` (Unix seconds) stamps commit times and ages.

    Counters and histograms are exposed without prometheus_client's ``*_created``
    companion series (switched off process-wide: they would double the series count
    and no K2 dashboard reads them).

    Thread-safe: the pipeline, the sink thread and the scrape thread may all record.
    """

    content_type: Final = CONTENT_TYPE_LATEST

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        stages: Collection[str] = (),
        version: str = __version__,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = set(stages) - {"ingest", "sink", "api"}
        if unknown:
            raise TerminalError(
                f"unknown metric stage(s) {sorted(unknown)}; use ingest, sink or api"
            )
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time: reads and deltas agree
        self._logged: set[tuple[str, str]] = set()
        self._hooks: list[Callable[[], object]] = []
        self._mirrors: dict[int, tuple[object, dict[tuple[str, tuple[str, ...]], float]]] = {}
        self._newest: dict[tuple[str, ...], float] = {}
        self._lake_seen: dict[tuple[str, ...], float] = {}
        hook = _BeforeScrape(self._before_scrape)
        self.registry.register(hook)
        families: dict[str, _Family] = {}
        try:
            for spec in CATALOGUE.values():
                families[spec.name] = _family(spec, self.registry)
        except ValueError as exc:  # prometheus_client: a name already registered
            for family in families.values():
                self.registry.unregister(family)
            self.registry.unregister(hook)
            raise TerminalError(
                f"this registry already holds K2 metrics ({exc}); build one Metrics per "
                "registry and share it"
            ) from exc
        self._families = families
        label_errors = families[_LABEL_ERRORS]
        assert isinstance(label_errors, Counter)
        self._label_errors = label_errors
        for spec in CATALOGUE.values():
            closed = bool(spec.labels) and all(label.closed for label in spec.labels)
            if spec.stage in stages and spec.kind == "counter" and closed:
                for values in _combinations(spec.labels):
                    self._child(spec.name, dict(zip(spec.label_names, values, strict=True)))
        self.set("k2_build_info", 1, version=version)

    # -- generic recording -------------------------------------------------------------

    def inc(self, name: str, amount: float = 1, /, **labels: object) -> None:
        """Add ``amount`` to a counter (or gauge). A negative or NaN amount for a
        counter is logged (once) and ignored; labels are checked as the module says."""
        spec = self._spec(name, ("counter", "gauge"))
        if spec.kind == "counter" and not amount >= 0:
            self._bad_value(name, f"counter increment {amount!r} ignored")
            return
        child = self._child(name, labels)
        assert isinstance(child, Counter | Gauge)
        child.inc(amount)

    def set(self, name: str, value: float, /, **labels: object) -> None:
        """Set a gauge."""
        self._spec(name, ("gauge",))
        child = self._child(name, labels)
        assert isinstance(child, Gauge)
        child.set(value)

    def observe(self, name: str, value: float, /, **labels: object) -> None:
        """Add one observation to a histogram."""
        self._spec(name, ("histogram",))
        child = self._child(name, labels)
        assert isinstance(child, Histogram)
        child.observe(value)

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one series (``None`` if it has no sample yet); for a
        histogram, its observation count. Runs the scrape hooks first, as a scrape does."""
        spec = self._spec(name, ("counter", "gauge", "histogram"))
        sample = {"counter": name, "gauge": name, "histogram": f"{name}_count"}[spec.kind]
        return self.registry.get_sample_value(sample, labels)

    def render(self) -> bytes:
        """The Prometheus text exposition of the registry (scrape hooks run first)."""
        return generate_latest(self.registry)

    def on_scrape(self, hook: Callable[[], object]) -> Callable[[], None]:
        """Run ``hook`` at the start of every collection of the registry, e.g.
        ``metrics.on_scrape(lambda: metrics.sync_capture(pipeline.stats))``. A hook that
        raises is logged and the scrape goes on. Returns a function that removes it."""
        with self._lock:
            self._hooks.append(hook)

        def remove() -> None:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)

        return remove

    def forget(self, source: object) -> None:
        """Stop following a stats object synced before (a finished run), after its last
        sync: releases it. Syncing it again would count all of it once more."""
        with self._lock:
            self._mirrors.pop(id(source), None)

    # -- ingest --------------------------------------------------------------------------

    def capture_received(self, data_type: str, n: int = 1) -> None:
        """``n`` data messages received from the exchange."""
        self.inc("k2_capture_messages_received_total", n, data_type=data_type)

    def capture_produced(self, data_type: str, n: int = 1) -> None:
        """``n`` records delivered to the log."""
        self.inc("k2_capture_records_produced_total", n, data_type=data_type)

    def capture_rejected(self, data_type: str | None, reason: str, n: int = 1) -> None:
        """``n`` rejects for ``reason`` (a :class:`~k2.quality.rejects.RejectReason`);
        ``data_type`` ``None`` when the input could not be told (counted as unknown)."""
        self.inc("k2_capture_rejects_total", n, data_type=data_type or UNKNOWN, reason=reason)

    def capture_duplicates(self, data_type: str, n: int = 1) -> None:
        """``n`` duplicate records dropped."""
        self.inc("k2_capture_duplicates_total", n, data_type=data_type)

    def capture_gaps_detected(self, n: int = 1) -> None:
        """``n`` gaps in exchange trade ids detected."""
        self.inc("k2_capture_gaps_detected_total", n)

    def capture_gap_resolved(self, outcome: str) -> None:
        """One gap resolved: ``repaired`` or ``unrepairable``."""
        self.inc("k2_capture_gaps_repaired_total", 1, outcome=outcome)

    def capture_shed(self, data_type: str, level: int, n: int = 1) -> None:
        """``n`` records dropped on purpose at degradation ``level`` (1..4)."""
        self.inc("k2_capture_records_shed_total", n, data_type=data_type, level=level)

    def capture_record_time(self, data_type: str, event_time_s: float) -> None:
        """A record with exchange event time ``event_time_s`` (Unix seconds) was
        captured; the gauge keeps the newest seen, so late records never move it back."""
        name = "k2_capture_last_record_timestamp_seconds"
        values = self._resolve(name, {"data_type": data_type})
        with self._lock:
            if event_time_s <= self._newest.get(values, -math.inf):
                return
            self._newest[values] = event_time_s
        self._gauge(name).labels(*values).set(event_time_s)

    def ws_connections(self, open_now: int) -> None:
        """Exchange WebSocket connections open now."""
        self.set("k2_exchange_ws_connections", open_now)

    def ws_reconnected(self, n: int = 1) -> None:
        """``n`` reconnects after an unexpected close."""
        self.inc("k2_exchange_ws_reconnects_total", n)

    # -- sink ----------------------------------------------------------------------------

    def sink_commit(
        self, table: str, outcome: str, *, rows: int = 0, seconds: float | None = None
    ) -> None:
        """One commit attempt to ``table``: ``ok``, ``conflict`` or ``error``. An ``ok``
        commit also counts its ``rows``, observes its ``seconds`` and stamps the table's
        last commit time (wall clock)."""
        self.inc("k2_sink_commits_total", 1, table=table, outcome=outcome)
        if outcome != "ok":
            return
        self.inc("k2_sink_rows_written_total", rows, table=table)
        if seconds is not None:
            self.observe("k2_sink_commit_duration_seconds", seconds, table=table)
        self.set("k2_sink_last_commit_timestamp_seconds", self._wall(), table=table)

    def sink_lag(self, data_type: str, records: int) -> None:
        """Records of ``data_type`` in the log this sink has not committed yet."""
        self.set("k2_sink_log_lag_records", records, data_type=data_type)

    def sink_dead_lettered(self, n: int) -> None:
        """``n`` records the lake refused went to the dead-letter topic."""
        self.inc("k2_sink_dead_lettered_total", n)

    # -- api -----------------------------------------------------------------------------

    def api_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One answered request: route template, method, HTTP status, wall time."""
        self.inc("k2_api_requests_total", 1, endpoint=endpoint, method=method, status=status)
        self.observe("k2_api_request_duration_seconds", seconds, endpoint=endpoint)

    def query_rows(self, endpoint: str, rows: int) -> None:
        """Rows one query returned."""
        self.inc("k2_query_rows_returned_total", rows, endpoint=endpoint)

    def hybrid_query(self, endpoint: str) -> None:
        """One query whose answer used the live tail."""
        self.inc("k2_hybrid_queries_total", 1, endpoint=endpoint)

    def lake_snapshot_seen(self, table: str, committed_at_s: float) -> None:
        """The newest snapshot of ``table`` this process sees was committed at
        ``committed_at_s`` (Unix seconds). ``k2_lake_commit_age_seconds`` is computed
        from it at each scrape, so it keeps growing while no new snapshot is seen; an
        older time than one already reported is ignored."""
        values = self._resolve("k2_lake_commit_age_seconds", {"table": table})
        with self._lock:
            newest = max(committed_at_s, self._lake_seen.get(values, -math.inf))
            self._lake_seen[values] = newest
        self._set_age(values, newest, self._wall())

    def _set_age(self, values: tuple[str, ...], committed_at_s: float, now_s: float) -> None:
        self._gauge("k2_lake_commit_age_seconds").labels(*values).set(now_s - committed_at_s)

    def tail_records(self, data_type: str, records: int) -> None:
        """Records of ``data_type`` the live tail holds beyond the lake."""
        self.set("k2_tail_records", records, data_type=data_type)

    # -- platform ------------------------------------------------------------------------

    def degradation(self, stage: str, level: int) -> None:
        """The stage's degradation level (0..4; others are logged and ignored)."""
        if not 0 <= level <= MAX_DEGRADATION_LEVEL:
            self._bad_value("k2_degradation_level", f"level {level!r} ignored")
            return
        self.set("k2_degradation_level", level, stage=stage)

    def breaker_state(self, breaker: str, state: str | int) -> None:
        """A circuit breaker's state: ``closed``/``half_open``/``open`` or its gauge value
        0/1/2 (``k2.ops.breaker.BreakerState`` is either); others are logged, ignored."""
        if isinstance(state, int):
            value: int | None = int(state) if int(state) in BREAKER_STATES.values() else None
        else:
            value = BREAKER_STATES.get(state)
        if value is None:
            self._bad_value("k2_circuit_breaker_state", f"state {state!r} ignored")
            return
        self.set("k2_circuit_breaker_state", value, breaker=breaker)

    def breaker_failure(self, breaker: str, n: int = 1) -> None:
        """``n`` failures counted by a circuit breaker."""
        self.inc("k2_circuit_breaker_failures_total", n, breaker=breaker)

    def stage_up(self, stage: str, up: bool) -> None:
        """Whether ``stage`` is running in this process."""
        self.set("k2_stage_up", 1 if up else 0, stage=stage)

    def stage_restarted(self, stage: str) -> None:
        """A supervisor restarted ``stage``."""
        self.inc("k2_stage_restarts_total", 1, stage=stage)

    # -- delta sync from stats objects ---------------------------------------------------

    def sync_capture(self, stats: CaptureCounts) -> None:
        """Mirror a capture run's cumulative counts (``CapturePipeline.stats``).

        ``CaptureStats`` counts rejects by reason and duplicates in total, so those are
        recorded with ``data_type="unknown"``; records produced are split exactly.
        """
        with self._sync_lock:
            self._sync_capture(stats)

    def _sync_capture(self, stats: CaptureCounts) -> None:
        counts: dict[tuple[str, tuple[str, ...]], float] = {
            ("k2_capture_records_produced_total", ("trade",)): stats.trades,
            ("k2_capture_records_produced_total", ("quote",)): stats.quotes,
            ("k2_capture_duplicates_total", (UNKNOWN,)): stats.duplicates,
            ("k2_capture_gaps_detected_total", ()): stats.gaps_detected,
            ("k2_capture_gaps_repaired_total", ("repaired",)): stats.gaps_repaired,
            ("k2_capture_gaps_repaired_total", ("unrepairable",)): stats.gaps_unrepairable,
        }
        # dict() of a dict is one C call: safe while the pipeline's thread adds keys.
        for reason, n in dict(stats.rejects).items():
            counts["k2_capture_rejects_total", (UNKNOWN, reason)] = n
        self._mirror(stats, counts)

    def sync_stream(self, stream: ExchangeStream) -> None:
        """Mirror the WebSocket client (``BinanceSource.stream``): reconnects, frames
        received (``data_type="unknown"``: frames are counted before parsing), and the
        connections open now."""
        stats = stream.stats
        with self._sync_lock:
            counts: dict[tuple[str, tuple[str, ...]], float] = {
                ("k2_exchange_ws_reconnects_total", ()): stats.reconnects,
                ("k2_capture_messages_received_total", (UNKNOWN,)): stats.frames_received,
            }
            self._mirror(stats, counts)
        self.ws_connections(stream.connections)

    def sync_tail(self, stats: TailCounts) -> None:
        """Set ``k2_tail_records`` from the live tail's stats (``LiveTail.stats()``)."""
        for name, stream in dict(stats.streams).items():
            self.tail_records(_TAIL_DATA_TYPES.get(name, name), stream.rows_held)

    def _mirror(self, source: object, counts: dict[tuple[str, tuple[str, ...]], float]) -> None:
        """Add to each counter what ``counts`` gained since the last sync of ``source``.
        Each stats object is followed on its own (several at once add up); a new one (a
        restarted pipeline) starts from zero and the counters carry on from where they
        are. The object is held (so its id stays its own) until :meth:`forget`."""
        with self._lock:
            held = self._mirrors.get(id(source))
            last = held[1] if held is not None else {}
            # A count never goes down; if one did, nothing is added until it is back.
            seen = {key: max(now, last.get(key, 0)) for key, now in counts.items()}
            self._mirrors[id(source)] = (source, {**last, **seen})
        for (name, values), now in counts.items():
            delta = now - last.get((name, values), 0)
            if delta > 0:
                labels = dict(zip(CATALOGUE[name].label_names, values, strict=True))
                self.inc(name, delta, **labels)

    # -- internals -------------------------------------------------------------------------

    def _before_scrape(self) -> None:
        with self._lock:
            hooks = list(self._hooks)
            seen = dict(self._lake_seen)
        now = self._wall()
        for values, committed_at in seen.items():
            self._set_age(values, committed_at, now)
        for hook in hooks:
            try:
                hook()
            except Exception as exc:  # a broken hook must not cost the whole scrape
                log.warning("metrics_scrape_hook_failed", hook=repr(hook), error=repr(exc))

    def _spec(self, name: str, kinds: tuple[Kind, ...]) -> MetricSpec:
        spec = CATALOGUE.get(name)
        if spec is None:
            raise TerminalError(f"unknown metric {name!r}: declare it in k2.ops.metrics")
        if spec.kind not in kinds:
            raise TerminalError(f"metric {name!r} is a {spec.kind}, not a {' or '.join(kinds)}")
        return spec

    def _gauge(self, name: str) -> Gauge:
        family = self._families[name]
        assert isinstance(family, Gauge)
        return family

    def _child(self, name: str, labels: Mapping[str, object]) -> Any:
        """The family's series for ``labels`` (see :meth:`_resolve`)."""
        family = self._families[name]
        values = self._resolve(name, labels)
        return family.labels(*values) if values else family

    def _resolve(self, name: str, labels: Mapping[str, object]) -> tuple[str, ...]:
        """The label values to record for ``labels``: each checked against its label,
        ``other`` (and a label error) for one outside its set or missing; labels the
        metric does not have are dropped (and counted too)."""
        spec = CATALOGUE[name]
        for extra in sorted(set(labels) - set(spec.label_names)):
            self._label_error(name, extra, labels[extra], "is not a label of this metric")
        values = []
        for label in spec.labels:
            raw = labels.get(label.name)
            value = _as_label_value(raw)
            if value is None or not label.admits(value):
                self._label_error(name, label.name, raw, "is outside its declared values")
                value = OTHER
            values.append(value)
        return tuple(values)

    def _label_error(self, name: str, label: str, raw: object, why: str) -> None:
        self._label_errors.labels(name).inc()
        self._warn_once(
            (name, label),
            "metric_label_invalid",
            metric=name,
            label=label,
            problem=f"value {_shown(raw)} {why}; recorded as {OTHER!r}",
        )

    def _bad_value(self, name: str, problem: str) -> None:
        self._warn_once((name, ""), "metric_value_invalid", metric=name, problem=problem)

    def _warn_once(self, key: tuple[str, str], event: str, **fields: object) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.warning(event, **fields)


def _family(spec: MetricSpec, registry: CollectorRegistry) -> _Family:
    labels = spec.label_names
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, labels, registry=registry)
    return Histogram(spec.name, spec.help, labels, buckets=spec.buckets, registry=registry)


def _combinations(labels: tuple[Label, ...]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for label in labels:
        combos = [(*c, v) for c in combos for v in sorted(label.values)]
    return combos


def _as_label_value(raw: object) -> str | None:
    """``raw`` as label text: strings (enums give their value) and integers (an HTTP
    status, a level); anything else is not a label value."""
    if isinstance(raw, str):
        return str(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(int(raw))  # an IntEnum gives its number
    return None


def _shown(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else f"{text[:77]}..."

"""The API's Prometheus metrics, in a registry of its own (one per app).

The metrics themselves are declared in :mod:`k2.ops.metrics` (the catalogue); this is
the API's view of them. Labels use the route template (``/v1/summary/{symbol}``), never
the raw path, so a scan of random URLs cannot blow up the number of series; unmatched
paths share the label ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry

from k2.ops.metrics import Metrics, TailCounts

#: Endpoint label of requests no route matched.
UNMATCHED = "unmatched"


class LakeTimes(Protocol):
    """What :meth:`ApiMetrics.follow` reads of the engine (``QueryEngine``)."""

    def lake_snapshot_times(self) -> Mapping[str, datetime | None]: ...


class TailStatsSource(Protocol):
    """What :meth:`ApiMetrics.follow` reads of the live tail (``LiveTail``)."""

    def stats(self) -> TailCounts: ...


class ApiMetrics:
    """Request counts and latency per endpoint, rows returned, hybrid queries.

    ``metrics`` is the process's catalogue (built over ``registry``, default a fresh
    one, when not given): the server adds the live tail's and the lake's gauges to it.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics(registry, stages=("api",))
        self.registry = self.metrics.registry
        self.content_type = self.metrics.content_type

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its wall time."""
        self.metrics.api_request(endpoint, method, status, seconds)

    def returned(self, endpoint: str, rows: int, sources: Sequence[str]) -> None:
        """Count the rows one query returned, and whether the tail was consulted."""
        self.metrics.query_rows(endpoint, rows)
        if "tail" in sources:
            self.metrics.hybrid_query(endpoint)

    def follow(self, engine: LakeTimes, tail: TailStatsSource | None = None) -> None:
        """At every scrape, report how old each table's newest snapshot is as ``engine``
        has loaded it (``k2_lake_commit_age_seconds``) and the records ``tail`` holds
        beyond the lake (``k2_tail_records``)."""

        def refresh() -> None:
            for table, committed_at in engine.lake_snapshot_times().items():
                if committed_at is not None:
                    self.metrics.lake_snapshot_seen(table, committed_at.timestamp())
            if tail is not None:
                self.metrics.sync_tail(tail.stats())

        self.metrics.on_scrape(refresh)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return self.metrics.render()

"""The API's Prometheus metrics, in a registry of its own (one per app).

Labels use the route template (``/v1/summary/{symbol}``), never the raw path, so a
scan of random URLs cannot blow up the number of series; unmatched paths share the
label ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Endpoint label of requests no route matched.
UNMATCHED = "unmatched"

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Request counts and latency per endpoint, rows returned, hybrid queries."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "k2_api_requests",
            "API requests answered, by route template, method and status",
            ("endpoint", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "k2_api_request_duration_seconds",
            "API request wall time (seconds) by route",
            ("endpoint",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "k2_query_rows_returned",
            "Rows returned by API queries, by route template",
            ("endpoint",),
            registry=self.registry,
        )
        self.hybrid = Counter(
            "k2_hybrid_queries",
            "API queries whose answer used the live tail (records not yet in the lake)",
            registry=self.registry,
        )

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its wall time."""
        self.requests.labels(endpoint, method, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)

    def returned(self, endpoint: str, rows: int, sources: Sequence[str]) -> None:
        """Count the rows one query returned, and whether the tail was consulted."""
        self.rows.labels(endpoint).inc(rows)
        if "tail" in sources:
            self.hybrid.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

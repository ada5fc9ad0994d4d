"""What every long-running stage sets up to be watched: metrics, breakers, status.

- :func:`stage_metrics` — the stage's :class:`~k2.ops.metrics.Metrics` and, for stages
  without an API (ingest, sink), a ``/metrics`` server on the configured port. A port
  that cannot be bound is reported loudly and the stage runs on without the server:
  metrics must never stop data from flowing.
- :func:`breaker_registry` — the process's circuit breakers (``settings.breakers``),
  exported as ``k2_circuit_breaker_state`` and ``k2_circuit_breaker_failures_total``.
- :class:`StatusThread` — rewrites the stage's status file for ``k2 status``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from k2.config import Settings
from k2.errors import ConfigError
from k2.ops.breaker import BreakerRegistry
from k2.ops.log import get_logger
from k2.ops.metrics import Metrics
from k2.ops.metrics_http import MetricsServer, serve_metrics
from k2.ops.status_files import run_dir, write_status

log = get_logger(__name__)


def stage_metrics(
    settings: Settings, stage: str, port: int | None
) -> tuple[Metrics, MetricsServer | None]:
    """``stage``'s metrics, served on ``ops.metrics_host:port`` unless ``port`` is None."""
    metrics = Metrics(stages=(stage,))
    metrics.stage_up(stage, True)
    if port is None:
        return metrics, None
    try:
        server = serve_metrics(metrics.registry, settings.ops.metrics_host, port)
    except ConfigError as exc:
        log.error("metrics server not started; the stage runs on without it", stage=stage,
                  error=str(exc))  # fmt: skip
        return metrics, None
    log.info("metrics served", stage=stage, url=server.url)
    return metrics, server


def breaker_registry(settings: Settings, metrics: Metrics | None = None) -> BreakerRegistry:
    """The process's circuit breakers; with ``metrics``, their state and failures are
    exported at every scrape."""
    registry = BreakerRegistry(settings.breakers)
    if metrics is None:
        return registry
    reported: dict[str, int] = {}

    def export() -> None:
        for breaker in registry:
            stats = breaker.stats()
            metrics.breaker_state(breaker.name, int(stats.state))
            new = stats.total_failures - reported.get(breaker.name, 0)
            if new > 0:
                metrics.breaker_failure(breaker.name, new)
                reported[breaker.name] = stats.total_failures

    for name in ("exchange", "log", "catalog", "object_store"):
        registry.get(name)  # exported from the start, closed
    metrics.on_scrape(export)
    return registry


class StatusThread:
    """Writes ``payload()`` to ``<run_dir>/<name>.json`` every ``ops.status_interval_s``
    in a daemon thread; :meth:`close` writes a last one marked stopped."""

    def __init__(self, settings: Settings, name: str, payload: Callable[[], dict[str, Any]]):
        self._path = run_dir(settings) / f"{name}.json"
        self._payload = payload
        self._interval = settings.ops.status_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"status-{name}", daemon=True)
        self._thread.start()

    def _write(self, **extra: Any) -> None:
        try:
            write_status(self._path, {**self._payload(), **extra})
        except Exception as exc:  # a status file must never stop the stage
            log.warning("cannot write the status file", path=str(self._path), error=str(exc))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._write(phase="stopped")

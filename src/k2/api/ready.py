"""Readiness (``GET /ready``): can this API process answer queries now, per dependency.

``/health`` says the process answers (liveness: restart it if not). ``/ready`` says its
dependencies answer too, so a load balancer sends queries only to replicas that can
serve them, and an operator sees which dependency is at fault. One check per
dependency, each ``{"status": "ok"|"degraded"|"down"|"unknown", "detail", "latency_ms"}``:

- ``log``: the log lists its topics and the end offsets of the trade topic (embedded or
  Kafka alike, through the runtime's handle when it has one);
- ``catalog``: the Iceberg catalog lists the namespace's tables and holds ``trades``;
- ``object_store``: the warehouse is reachable: a local directory exists and can be
  listed; an S3 bucket answers a head and its prefix a listing (pyiceberg's own pyarrow
  S3 filesystem from the lake settings, so endpoint, keys and addressing match the
  lake's);
- ``exchange``: from the ingest's status file (:mod:`k2.ops.status_files`).

The process is ready when ``log``, ``catalog`` and ``object_store`` (:data:`REQUIRED`)
are all ``ok``. The exchange never decides readiness: the API serves what the lake and
the log already hold whether or not a capture is connected, and in a distributed
deployment the ingest runs on another machine, so the absence of its status file here
says nothing. Taking every API replica out of a load balancer because Binance dropped
a connection would turn a capture outage into a read outage; the check is reported
(``down`` with the URL and phase when a live ingest has no connection, ``degraded``
when it sheds load, ``unknown`` when no ingest runs here: no status file, a stale one,
or one saying it stopped) for operators and alerting, not for routing.

Checks run concurrently, each in its own daemon thread, and are waited for at most
``timeout_s``; a check still running then is ``down`` ("no answer within ...") and is
not started again until it returns, so a hung catalog costs one thread, not one per
probe. A result is reused for ``cache_s`` so a load balancer scraping every replica
often cannot turn readiness into load on the catalog.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

import msgspec
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from k2.api.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA, title_of
from k2.config import Settings
from k2.ops.log import get_logger
from k2.ops.status_files import is_fresh, read_status, status_path

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from k2.log.base import Log

__all__ = [
    "REQUIRED",
    "CheckResult",
    "Readiness",
    "ReadinessChecker",
    "ReadyBody",
    "ready_router",
]

log = get_logger(__name__)

Status = Literal["ok", "degraded", "down", "unknown"]

#: The checks that decide readiness (the exchange is reported only; see the module doc).
REQUIRED = ("log", "catalog", "object_store")

#: Longest ``detail`` kept (driver errors can run to pages).
DETAIL_MAX_CHARS = 300


class CheckResult(BaseModel):
    """One dependency's state."""

    status: Status = Field(description="ok, degraded (answers but impaired), down, unknown")
    detail: str = Field(description="what was checked and what was found")
    latency_ms: float = Field(description="how long the check took (or has been waiting)")


class ReadyBody(BaseModel):
    """``/ready`` when the process can serve queries (HTTP 200)."""

    status: Literal["ready"]
    checks: dict[str, CheckResult]


_CHECK_SCHEMA = CheckResult.model_json_schema()

#: JSON schema of the 503 body (``application/problem+json``) for OpenAPI.
NOT_READY_SCHEMA: dict[str, Any] = {
    **PROBLEM_SCHEMA,
    "required": [*PROBLEM_SCHEMA["required"], "checks"],
    "properties": {
        **PROBLEM_SCHEMA["properties"],
        "checks": {"type": "object", "additionalProperties": _CHECK_SCHEMA},
    },
}


@dataclass(frozen=True)
class Readiness:
    """The checks of one evaluation; ``at`` is the checker's clock (monotonic s)."""

    checks: dict[str, CheckResult]
    at: float

    @property
    def ready(self) -> bool:
        """Whether every :data:`REQUIRED` check is ``ok``."""
        return all(self.checks[name].status == "ok" for name in REQUIRED)

    def summary(self) -> str:
        """The failing required checks in one line: ``catalog down: ...``."""
        bad = [
            f"{name} {self.checks[name].status}: {self.checks[name].detail}"
            for name in REQUIRED
            if self.checks[name].status != "ok"
        ]
        return "; ".join(bad) or "ready"

    def as_json(self) -> dict[str, dict[str, Any]]:
        """The checks as plain JSON objects, in :data:`REQUIRED` order then the rest."""
        return {name: result.model_dump() for name, result in self.checks.items()}


Outcome = tuple[Status, str]


class _Probe:
    """One dependency's check, run in a daemon thread; at most one run in flight."""

    def __init__(self, name: str, fn: Callable[[], Outcome], target: Callable[[], str]) -> None:
        self.name = name
        self._target = target
        self._fn = fn
        self._future: Future[tuple[Outcome, float]] | None = None
        self._started = 0.0

    def start(self) -> Future[tuple[Outcome, float]]:
        """The run in flight, or a new one when none is."""
        if self._future is not None and not self._future.done():
            return self._future
        future: Future[tuple[Outcome, float]] = Future()
        started = self._started = time.perf_counter()

        def run() -> None:
            try:
                outcome = self._fn()
            except Exception as exc:  # recorded in the report (and logged on change)
                outcome = ("down", describe_error(exc))
            future.set_result((outcome, (time.perf_counter() - started) * 1000))

        self._future = future
        threading.Thread(target=run, name=f"k2-ready-{self.name}", daemon=True).start()
        return future

    def result(self, timeout_s: float) -> CheckResult:
        """The finished run's result, or ``down`` when it has not answered yet."""
        future = self._future
        assert future is not None, "start() first"
        if future.done():
            (status, detail), latency_ms = future.result()
            return CheckResult(status=status, detail=detail, latency_ms=round(latency_ms, 3))
        waited_ms = (time.perf_counter() - self._started) * 1000
        return CheckResult(
            status="down",
            detail=f"{self._target()}: no answer within {timeout_s:g} s "
            f"(waiting {waited_ms / 1000:.1f} s)",
            latency_ms=round(waited_ms, 3),
        )


def describe_error(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= DETAIL_MAX_CHARS else line[: DETAIL_MAX_CHARS - 3] + "..."


class ReadinessChecker:
    """Checks the dependencies ``settings`` describe (see the module doc).

    ``log``: the runtime's log handle (shared, never closed here); without one the
    checker opens its own on first use and closes it in :meth:`close`. ``timeout_s``:
    the longest :meth:`check` waits for the checks. ``cache_s``: how long a result is
    reused. ``clock`` (monotonic s) drives the cache; ``wall_clock`` (unix s) judges
    the ingest's status file. Construction does no I/O. Thread-safe.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log: Log | None = None,
        timeout_s: float = 2.0,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._shared_log = log
        self._own_log: Log | None = None
        self._catalog: Catalog | None = None
        self._s3: Any = None
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._cached: Readiness | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._probes = [
            _Probe("log", self._check_log, self._log_target),
            _Probe("catalog", self._check_catalog, self._catalog_target),
            _Probe("object_store", self._check_object_store, self._warehouse),
            _Probe("exchange", self._check_exchange, lambda: "the ingest's status file"),
        ]

    # -- evaluating --------------------------------------------------------------------

    def check(self) -> Readiness:
        """Every check's result, at most ``cache_s`` old; blocks at most ``timeout_s``."""
        with self._lock:
            cached = self._cached
            if cached is not None and self._clock() - cached.at < self.cache_s:
                return cached
            futures = [probe.start() for probe in self._probes]
            wait_all(futures, timeout=self.timeout_s)
            report = Readiness(
                {probe.name: probe.result(self.timeout_s) for probe in self._probes},
                self._clock(),
            )
            self._log_changes(cached, report)
            self._cached = report
            return report

    async def check_async(self) -> Readiness:
        """:meth:`check` without blocking the event loop (nor the request thread pool:
        a slow check must not take a thread the query endpoints need)."""
        cached = self._cached
        if cached is not None and self._clock() - cached.at < self.cache_s:
            return cached
        with self._open_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="k2-ready")
            executor = self._executor
        return await asyncio.wrap_future(executor.submit(self.check))

    def close(self) -> None:
        """Release the log handle opened here and the waiting thread (a hung check's
        thread is a daemon: it dies with the process). A later check opens them again,
        so an app may be started and stopped more than once."""
        with self._open_lock:
            own, self._own_log = self._own_log, None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if own is not None:
            own.close()

    def _log_changes(self, before: Readiness | None, after: Readiness) -> None:
        for name, result in after.checks.items():
            old = before.checks[name].status if before is not None else None
            if result.status != (old or "ok"):
                (log.warning if result.status == "down" else log.info)(
                    "ready_check_changed",
                    check=name,
                    old=old,
                    new=result.status,
                    detail=result.detail,
                )

    # -- the checks --------------------------------------------------------------------

    def _log_target(self) -> str:
        cfg = self._settings.log
        if cfg.backend == "kafka":
            return f"the kafka log at {cfg.bootstrap_servers}"
        return f"the embedded log in {cfg.path or self._settings.data_dir / 'log'}"

    def _catalog_target(self) -> str:
        lake = self._settings.lake
        uri = lake.uri or str(self._settings.data_dir / "lake" / "catalog.db")
        return f"the {lake.catalog} catalog at {_without_password(uri)}"

    def _warehouse(self) -> str:
        lake = self._settings.lake
        return f"the warehouse {lake.warehouse or self._settings.data_dir / 'lake' / 'warehouse'}"

    def _log(self) -> Log:
        if self._shared_log is not None:
            return self._shared_log
        with self._open_lock:
            if self._own_log is None:
                from k2.log.factory import open_log

                self._own_log = open_log(self._settings)
            return self._own_log

    def _check_log(self) -> Outcome:
        from k2.log.factory import topic_layout

        backend = self._settings.log.backend
        log_ = self._log()
        topic = topic_layout(self._settings).data_topic("trade")
        names = {spec.name for spec in log_.list_topics()}
        if topic not in names:
            return "ok", f"the {backend} log answers ({len(names)} topics; no {topic} yet)"
        ends = log_.end_offsets(topic)
        return "ok", (
            f"the {backend} log answers ({len(names)} topics; {topic}: {len(ends)} "
            f"partitions, end offsets total {sum(ends.values())})"
        )

    def _check_catalog(self) -> Outcome:
        from pyiceberg.exceptions import NoSuchNamespaceError

        from k2.lake.catalog import catalog_from

        lake = self._settings.lake
        if self._catalog is None:
            self._catalog = catalog_from(lake, self._settings.data_dir)
        try:
            tables = {ident[-1] for ident in self._catalog.list_tables(lake.namespace)}
        except NoSuchNamespaceError:
            return "down", (
                f"the {lake.catalog} catalog answers but has no namespace {lake.namespace!r} "
                "(K2_LAKE__NAMESPACE; `k2 sink` creates it)"
            )
        if "trades" not in tables:
            return "down", (
                f"the {lake.catalog} catalog answers but {lake.namespace}.trades does not "
                "exist (`k2 sink` creates it)"
            )
        return (
            "ok",
            f"the {lake.catalog} catalog answers ({len(tables)} tables in {lake.namespace})",
        )

    def _check_object_store(self) -> Outcome:
        from k2.lake.catalog import catalog_properties

        props = catalog_properties(self._settings.lake, self._settings.data_dir)
        url = urlparse(props["warehouse"])
        if url.scheme == "file":
            return _check_directory(Path(unquote(url.path)))
        if url.scheme in ("s3", "s3a"):
            return self._check_bucket(props, url.netloc, url.path.strip("/"))
        return "unknown", f"cannot check a {url.scheme}:// warehouse ({props['warehouse']})"

    def _check_bucket(self, props: dict[str, str], bucket: str, prefix: str) -> Outcome:
        from pyarrow.fs import FileSelector, FileType

        if self._s3 is None:
            from pyiceberg.io.pyarrow import PyArrowFileIO

            timeouts = {"s3.connect-timeout": str(self.timeout_s)}
            self._s3 = PyArrowFileIO({**props, **timeouts}).fs_by_scheme("s3", bucket)
        where = self._settings.lake.s3_endpoint or "AWS S3"
        if self._s3.get_file_info(bucket).type == FileType.NotFound:
            return "down", (
                f"bucket {bucket!r} does not exist at {where} (K2_LAKE__WAREHOUSE, "
                "K2_LAKE__S3_ENDPOINT)"
            )
        base = f"{bucket}/{prefix}" if prefix else bucket
        entries = self._s3.get_file_info(FileSelector(base, allow_not_found=True))
        return "ok", f"bucket {bucket!r} at {where} answers ({len(entries)} entries under {base})"

    def _check_exchange(self) -> Outcome:
        path = status_path(self._settings, "ingest")
        status = read_status(path)
        if status is None:
            return "unknown", f"no ingest runs on this machine (no status file {path})"
        now = self._wall_clock()
        if not is_fresh(status, self._settings.ops.status_interval_s, now=now):
            age = now - float(status.get("updated_at", 0))
            return "unknown", (
                f"no ingest runs on this machine ({path} last written {age:.0f} s ago "
                f"by pid {status.get('pid')})"
            )
        url = status.get("ws_url") or "the exchange"
        phase = status.get("phase") or "unknown phase"
        if phase == "stopped":  # its last word on a clean stop: as good as no ingest
            return "unknown", f"the ingest on this machine has stopped ({path})"
        connections = int(status.get("connections") or 0)
        if connections <= 0:
            return "down", f"the ingest ({phase}) has no connection to {url}"
        degradation = status.get("degradation") or {}
        if int(degradation.get("level") or 0) > 0:
            return "degraded", (
                f"{connections} connection(s) to {url} ({phase}), but the ingest sheds "
                f"load at level {degradation.get('level_name')}"
            )
        return "ok", f"{connections} connection(s) to {url} ({phase})"


def _without_password(uri: str) -> str:
    """``uri`` with the password of its user info (if any) replaced by ``***``."""
    url = urlparse(uri)
    if url.password is None:
        return uri
    return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1)).geturl()


def _check_directory(path: Path) -> Outcome:
    if not path.is_dir():
        return "down", f"the warehouse directory {path} does not exist (K2_LAKE__WAREHOUSE)"
    if not os.access(path, os.R_OK | os.X_OK):
        return "down", f"the warehouse directory {path} is not readable by this process"
    with os.scandir(path) as entries:
        count = sum(1 for _ in entries)
    return "ok", f"the warehouse directory {path} is readable ({count} entries)"


def ready_router(checker: ReadinessChecker) -> APIRouter:
    """``GET /ready`` over ``checker`` (open: mounted without the key dependency)."""
    router = APIRouter(tags=["open"])
    encoder = msgspec.json.Encoder()

    @router.get(
        "/ready",
        summary="Readiness: the log, catalog and object store answer (per dependency)",
        response_model=ReadyBody,
        responses={
            503: {
                "description": "not ready: a required dependency is down (problem document "
                "with every check)",
                "content": {PROBLEM_MEDIA_TYPE: {"schema": NOT_READY_SCHEMA}},
            }
        },
    )
    async def ready(request: Request) -> Response:
        """200 when the log, the catalog and the object store all answer; 503 naming
        the one(s) down otherwise. ``checks.exchange`` is informational only."""
        report = await checker.check_async()
        if report.ready:
            body = {"status": "ready", "checks": report.as_json()}
            return Response(encoder.encode(body), media_type="application/json")
        problem: dict[str, Any] = {
            "type": PROBLEM_BASE + "not-ready",
            "title": title_of("not-ready"),
            "status": 503,
            "detail": f"not ready: {report.summary()}",
            "instance": request.url.path,
        }
        request_id = request.scope.get("state", {}).get("request_id")
        if request_id is not None:
            problem["request_id"] = request_id
        problem["checks"] = report.as_json()
        return Response(
            encoder.encode(problem),
            status_code=503,
            media_type=PROBLEM_MEDIA_TYPE,
            headers={"Retry-After": "1"},
        )

    return router

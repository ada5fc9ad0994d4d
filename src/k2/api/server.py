"""Running the API (``k2 serve``) and opening the engine the API and ``k2 query`` use.

:func:`open_runtime` opens the lake catalog, optionally the log and a
:class:`~k2.query.tail.LiveTail` over it, and one :class:`~k2.query.engine.QueryEngine`
for the process; :meth:`QueryRuntime.close` undoes it. :func:`serve` adds the key
store (with the embedded mode's development key) and runs uvicorn. With
``api.workers > 1`` every worker process builds its own runtime through
:func:`app_from_env` (uvicorn's factory), and the development key made by the parent
reaches them hashed, in ``K2_API__KEYS``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from k2.api.auth import KeyStore, key_entry, new_key
from k2.config import Settings, load_settings
from k2.errors import ConfigError
from k2.ops.log import configure_logging, get_logger

if TYPE_CHECKING:
    from fastapi import FastAPI

    from k2.api.metrics import ApiMetrics
    from k2.log.base import Log
    from k2.query.engine import QueryEngine
    from k2.query.tail import LiveTail

_log = get_logger(__name__)

#: Name the development key is known by (logs, metrics, rate limits).
DEV_KEY_NAME = "dev"

#: Most catch-up polls a one-shot (``k2 query --live``) tail makes before answering.
CATCH_UP_STEPS = 1000


@dataclass
class QueryRuntime:
    """One process's engine, with the live tail and log it owns (either may be absent)."""

    engine: QueryEngine
    tail: LiveTail | None = None
    log: Log | None = None

    def status(self) -> dict[str, Any]:
        """What ``/health`` reports: whether the live tail follows the log, and its state."""
        if self.tail is None:
            return {"live_tail": None}
        stats = self.tail.stats()
        return {
            "live_tail": {
                "running": self.tail.running,
                "rows_held": stats.rows_held,
                "last_poll_at": stats.last_poll_at.isoformat() if stats.last_poll_at else None,
                "read_errors": stats.read_errors,
                "last_error": stats.last_error,
            }
        }

    def metrics(self) -> ApiMetrics:
        """Fresh API metrics that also report the lake's commit age and the live tail."""
        from k2.api.metrics import ApiMetrics

        metrics = ApiMetrics()
        metrics.follow(self.engine, self.tail)
        return metrics

    def close(self) -> None:
        """Stop the tail, close the engine, close the log (each at most once)."""
        if self.tail is not None:
            self.tail.stop()
            self.tail = None
        self.engine.close()
        if self.log is not None:
            self.log.close()
            self.log = None


def open_runtime(settings: Settings, *, live: bool, follow: bool = True) -> QueryRuntime:
    """The engine over ``settings.lake``; with ``live`` also a live tail over the log.

    ``follow``: run the tail in its background thread (a server); otherwise catch it up
    once, synchronously, to the end of the log (a one-shot CLI query).
    """
    from k2.lake.catalog import open_catalog
    from k2.lake.tables import ensure_tables
    from k2.query.engine import QueryEngine

    tail: LiveTail | None = None
    log: Log | None = None
    if live:
        from k2.log.factory import open_log, topic_layout
        from k2.query.tail import LiveTail

        catalog = open_catalog(settings)
        tables = ensure_tables(catalog, settings.lake.namespace)
        log = open_log(settings)
        tail = LiveTail(log, topic_layout(settings), tables, settings=settings.query)
        if follow:
            tail.start()
        else:
            for _ in range(CATCH_UP_STEPS):
                if tail.step() == 0:
                    break
    try:
        engine = QueryEngine.open(settings, tail=tail)
    except BaseException:
        if tail is not None:
            tail.stop()
        if log is not None:
            log.close()
        raise
    return QueryRuntime(engine, tail, log)


def keystore_for(
    settings: Settings, *, announce: Callable[[str], None] | None = None
) -> tuple[KeyStore, str | None]:
    """The configured keys plus, in the embedded mode with ``api.dev_key``, a fresh one.

    The development key is random per start (none is built in); it is handed to
    ``announce`` (default: printed to stderr) exactly once and never logged.
    Returns the store and the development key (``None`` when not made).
    """
    store = KeyStore.from_settings(settings.api)
    if not (settings.api.dev_key and settings.log.backend == "embedded"):
        return store, None
    key = new_key()
    store.add(DEV_KEY_NAME, key)
    (announce or _print_dev_key)(key)
    return store, key


def _print_dev_key(key: str) -> None:
    print(
        "K2 development API key (valid until this process stops; set K2_API__DEV_KEY=false "
        f"in production):\n    X-API-Key: {key}",
        file=sys.stderr,
        flush=True,
    )


def serve(settings: Settings, *, announce: Callable[[str], None] | None = None) -> None:
    """Run the API on ``settings.api.host:port`` until interrupted, then shut down cleanly.

    The tail (when ``query.tail``) and engine are opened once per process and closed on
    exit. Raises :class:`~k2.errors.ConfigError` and other K2 errors from opening the
    lake or the log.
    """
    import uvicorn

    api = settings.api
    store, dev_key = keystore_for(settings, announce=announce)
    if not len(store):
        _log.warning(
            "api.no_keys",
            hint="every /v1 request will get 401; configure "
            "K2_API__KEYS (`k2 api-key NAME`) or K2_API__DEV_KEY=true",
        )
    common: dict[str, Any] = {
        "host": api.host,
        "port": api.port,
        "access_log": False,
        "log_level": settings.logging.level.lower(),
    }
    if api.workers > 1:
        # Workers build their own runtime from the environment; hand them the dev key's
        # hash (never the key) alongside the configured entries.
        entries = list(api.keys)
        if dev_key is not None:
            entries.append(key_entry(DEV_KEY_NAME, dev_key))
        os.environ["K2_API__KEYS"] = ",".join(entries)
        os.environ["K2_API__DEV_KEY"] = "false"
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config(
            "k2.api.server:app_from_env", factory=True, workers=api.workers, **common
        )
        Multiprocess(config, sockets=[listen_socket(api.host, api.port)]).run()
        return
    runtime = open_runtime(settings, live=settings.query.tail)
    try:
        from k2.api.app import create_app
        from k2.api.ready import ReadinessChecker

        app = create_app(
            runtime.engine,
            settings,
            keystore=store,
            status=runtime.status,
            metrics=runtime.metrics(),
            readiness=ReadinessChecker(settings, log=runtime.log),
        )
        _log.info(
            "api.listening",
            host=api.host,
            port=api.port,
            keys=store.names,
            live_tail=runtime.tail is not None,
        )
        uvicorn.run(app, **common)
    finally:
        runtime.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn's worker processes.

    Made here rather than by uvicorn, which creates it without ``IPPROTO_TCP``: asyncio
    then leaves ``TCP_NODELAY`` off on accepted connections, and a response written as
    headers then body waits for the client's delayed ACK (about 40 ms per request).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} (K2_API__HOST/PORT): {exc}") from None
    sock.set_inheritable(True)
    return sock


def app_from_env() -> FastAPI:
    """A worker's app: settings from the environment, its own runtime, closed at shutdown."""
    from k2.api.app import create_app
    from k2.api.ready import ReadinessChecker

    settings = load_settings()
    configure_logging(settings.logging.format, settings.logging.level)
    runtime = open_runtime(settings, live=settings.query.tail)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runtime.close()

    store = KeyStore.from_settings(settings.api)
    return create_app(
        runtime.engine,
        settings,
        keystore=store,
        lifespan=lifespan,
        status=runtime.status,
        metrics=runtime.metrics(),
        readiness=ReadinessChecker(settings, log=runtime.log),
    )

"""The FastAPI application: open endpoints, authenticated ``/v1`` routes, error mapping.

:func:`create_app` wires a query engine (shared by every request: DuckDB and the live
tail are opened once), the key store and a rate limiter into one app. Open, without a
key: ``/health`` and ``/ready`` (load balancers; :mod:`k2.api.ready`), ``/docs`` and
``/openapi.json`` (the contract is not a secret) and ``/metrics`` (Prometheus scrapes
it on a private network; it holds counts, never data). Everything under ``/v1`` needs
``X-API-Key``.

Errors are ``application/problem+json`` (:mod:`k2.api.problems`): query errors with
their code and status, invalid parameters as 400 naming the parameter, anything
unexpected as 500 with the request id (logged; :mod:`k2.api.middleware`).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from k2 import __version__
from k2.api.auth import KeyStore
from k2.api.metrics import ApiMetrics
from k2.api.middleware import ApiMiddleware
from k2.api.problems import HTTP_CODES, PROBLEM_MEDIA_TYPE, ApiProblem, problem_body
from k2.api.ratelimit import RateLimiter
from k2.api.ready import ReadinessChecker, ready_router
from k2.api.routes import QueryService, build_router
from k2.config import Settings
from k2.errors import TransientError
from k2.lake.snapshots import SnapshotNotFound
from k2.query.base import QueryError

API_KEY_HEADER = "X-API-Key"

_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key (`k2 api-key NAME` makes one; configured hashed in K2_API__KEYS)",
)


def create_app(
    engine: QueryService,
    settings: Settings,
    *,
    keystore: KeyStore,
    clock: Callable[[], float] = time.monotonic,
    metrics: ApiMetrics | None = None,
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
    readiness: ReadinessChecker | None = None,
) -> FastAPI:
    """The API over ``engine`` (not closed by the app: its owner closes it, or
    ``lifespan`` does at shutdown).

    ``clock`` (seconds, monotonic) drives the rate limiter: tests pass a fake one.
    ``metrics`` defaults to a fresh registry per app. ``status`` adds fields to
    ``/health`` (the server reports the live tail there). ``readiness`` answers
    ``/ready`` (default: a checker of ``settings`` opening its own log handle); the app
    closes it at shutdown.
    """
    metrics = metrics or ApiMetrics()
    limiter = RateLimiter(settings.api.rate_limit_per_s, settings.api.rate_limit_burst, clock=clock)
    readiness = readiness or ReadinessChecker(settings)

    async def authorize(
        request: Request, api_key: Annotated[str | None, Security(_api_key)] = None
    ) -> str:
        name = keystore.identify(api_key)
        if name is None:
            raise ApiProblem(
                401,
                "unauthorized",
                f"{'an unknown' if api_key else 'no'} {API_KEY_HEADER} header was given; "
                f"send a configured key as {API_KEY_HEADER} (`k2 api-key NAME` makes one)",
                headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
            )
        decision = limiter.acquire(name)
        extra: list[tuple[bytes, bytes]] = request.scope["state"]["k2_headers"]
        extra.append((b"x-ratelimit-limit", str(decision.limit).encode()))
        extra.append((b"x-ratelimit-remaining", str(decision.remaining).encode()))
        if not decision.allowed:
            raise ApiProblem(
                429,
                "rate-limited",
                f"key {name!r} is limited to {limiter.rate_per_s:g} requests/s "
                f"(burst {limiter.burst}); retry after {decision.retry_after_header} s",
                headers={"Retry-After": decision.retry_after_header},
            )
        request.scope["state"]["api_key_name"] = name
        return name

    app = FastAPI(
        title="K2 market data API",
        version=__version__,
        description="Trades, quotes, bars and SQL over K2's Iceberg lake and the live log "
        "tail. Decimals are exact strings, timestamps ISO-8601 UTC with Z. Errors are "
        "application/problem+json. /v1 needs an X-API-Key header.",
        lifespan=_with_thread_limit(settings.api.threads, lifespan, on_close=readiness.close),
    )
    app.add_middleware(ApiMiddleware, metrics=metrics)
    _install_error_handlers(app)

    @app.get("/health", tags=["open"], summary="Liveness: the process answers")
    async def health() -> dict[str, Any]:
        # pid: which worker process answered (api.workers > 1 runs several).
        return {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            **(status() if status else {}),
        }

    @app.get(
        "/metrics",
        tags=["open"],
        summary="Prometheus metrics (open: scrape on a private network)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.include_router(ready_router(readiness))
    app.include_router(
        build_router(engine, settings, metrics),
        dependencies=[Security(authorize)],
    )
    app.state.metrics = metrics
    app.state.limiter = limiter
    return app


def _with_thread_limit(
    threads: int,
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None,
    *,
    on_close: Callable[[], None] | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """``lifespan``, first setting how many threads run the (sync) query endpoints, and
    calling ``on_close`` after it at shutdown.

    Starlette's default is 40; under load they take turns at the GIL around every
    small Arrow call. Measured on 2 cores, /v1/trades/recent with 16 connections:
    312 requests/s with 40 threads, 342 with 4, 408 with 2 (noisy, same order).
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        try:
            if lifespan is None:
                yield
                return
            async with lifespan(app):
                yield
        finally:
            if on_close is not None:
                on_close()

    return run


def _problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response:
    state = request.scope.get("state", {})
    body = problem_body(
        status, code, detail, instance=request.url.path, request_id=state.get("request_id")
    )
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return _problem_response(request, exc.status, exc.code, exc.detail, exc.headers)

    async def query_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QueryError)
        return _problem_response(request, exc.status, exc.code, str(exc))

    async def snapshot_not_found(request: Request, exc: Exception) -> Response:
        return _problem_response(request, 404, "unknown-snapshot", str(exc))

    async def transient(request: Request, exc: Exception) -> Response:
        return _problem_response(
            request, 503, "unavailable", f"{exc}; retry shortly", {"Retry-After": "1"}
        )

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _problem_response(request, 400, "invalid-parameter", describe_validation(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(
            exc.status_code, "bad-request" if exc.status_code < 500 else "internal"
        )
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint {request.url.path!r}; see /docs"
        return _problem_response(request, exc.status_code, code, detail, dict(exc.headers or {}))

    app.add_exception_handler(ApiProblem, api_problem)
    app.add_exception_handler(QueryError, query_error)
    app.add_exception_handler(SnapshotNotFound, snapshot_not_found)
    app.add_exception_handler(TransientError, transient)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


_WHERE = {
    "query": "query parameter",
    "path": "path parameter",
    "header": "header",
    "body": "body field",
    "cookie": "cookie",
}


_BODY_HINT = 'send a JSON object such as {"query": "SELECT 1"}, Content-Type: application/json'


def describe_validation(exc: RequestValidationError) -> str:
    """One line per invalid input, naming the parameter: ``query parameter 'limit': ...``."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = _WHERE.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:])
        subject = (
            f"{where} {name!r}" if name else ("request body" if where == "body field" else where)
        )
        message = str(err.get("msg", "invalid"))
        if loc == ["body"]:
            parts.append(f"request body: {message} ({_BODY_HINT})")
            continue
        given = err.get("input")
        if given is not None and not isinstance(given, dict | list):
            message += f" (got {str(given)[:60]!r})"
        parts.append(f"{subject}: {message}")
    return "; ".join(parts) or "invalid request"

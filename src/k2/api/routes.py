"""The ``/v1`` routes: thin translations of query parameters into engine calls.

Handlers are plain ``def`` (FastAPI runs them in its thread pool, so a DuckDB scan
never blocks the event loop), except ``/v1/trades/recent``, which answers from memory
on the event loop when it can and hands anything else to the pool. Each parses its
parameters (:mod:`k2.api.params`), chooses the format before doing any work (a 406
costs nothing), calls the engine once and encodes the Arrow result
(:mod:`k2.api.formats`). No pydantic response models: shapes are declared for
OpenAPI in :mod:`k2.api.schemas`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Protocol

import pyarrow as pa
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from k2.api.formats import MEDIA_TYPES, Format, encode, encode_json, negotiate
from k2.api.metrics import ApiMetrics
from k2.api.middleware import endpoint_label
from k2.api.params import parse_as_of, parse_date, parse_exchange, parse_symbol, parse_symbols
from k2.api.params import parse_time as _time
from k2.api.problems import ApiProblem
from k2.api.schemas import data_responses, row_schema
from k2.config import Settings
from k2.lake.snapshots import SnapshotInfo
from k2.query.base import DataType, QueryError, QueryMeta, QueryResult
from k2.records import QUOTE, TRADE

#: Rows a recent-trades answer from memory may have to be encoded on the event loop
#: (~1 ms of JSON); larger pages are encoded in the thread pool.
INLINE_ROWS = 1_000


class QueryService(Protocol):
    """What the API needs of :class:`k2.query.engine.QueryEngine` (its public contract)."""

    def trades(
        self,
        symbols: list[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
        as_of: int | datetime | None = None,
        cursor: str | None = None,
    ) -> QueryResult: ...

    def quotes(
        self,
        symbols: list[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: str | None = None,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "asc",
        as_of: int | datetime | None = None,
        cursor: str | None = None,
    ) -> QueryResult: ...

    def recent_trades(
        self,
        symbols: list[str] | None = None,
        *,
        window_minutes: float = 15,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> QueryResult: ...

    def recent_trades_now(
        self,
        symbols: list[str] | None = None,
        *,
        window_minutes: float = 15,
        limit: int | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> QueryResult | None: ...

    def bars(
        self,
        symbols: list[str] | None,
        *,
        interval: str = "1m",
        start: datetime | None = None,
        end: datetime | None = None,
        exchange: str | None = None,
        as_of: int | datetime | None = None,
    ) -> QueryResult: ...

    def summary(self, symbol: str, *, day: date | None = None) -> QueryResult: ...

    def symbols(self) -> QueryResult: ...

    def snapshots(self, data_type: DataType = "trades") -> list[SnapshotInfo]: ...

    def sql(
        self, text: str, *, timeout_s: float | None = None, max_rows: int | None = None
    ) -> QueryResult: ...


def iso_z(value: datetime | None) -> str | None:
    """An aware datetime as ISO-8601 UTC with µs and ``Z``."""
    if value is None:
        return None
    # isoformat, unlike strftime("%Y"), pads years below 1000 to four digits.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def meta_dict(meta: QueryMeta, request_id: str | None) -> dict[str, Any]:
    """The JSON ``meta`` object: :meth:`QueryMeta.to_json_dict`, times with ``Z``, request id."""
    out = meta.to_json_dict()
    out["start"] = iso_z(meta.start)
    out["end"] = iso_z(meta.end)
    out["request_id"] = request_id
    return out


class SqlRequest(BaseModel):
    """Body of ``POST /v1/sql``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=100_000,
        description="one read-only SELECT over trades, quotes, reference_data",
        examples=[
            "SELECT symbol, count(*) AS trades, max(price) AS high FROM trades GROUP BY symbol"
        ],
    )
    max_rows: int | None = Field(
        None, ge=1, le=2**31, description="rows returned at most (query.sql_max_rows)"
    )


_SNAPSHOT_SCHEMA = pa.schema(
    [
        ("snapshot_id", pa.int64()),
        ("parent_id", pa.int64()),
        ("committed_at", pa.timestamp("us", tz="UTC")),
        ("operation", pa.string()),
        ("added_records", pa.int64()),
        ("deleted_records", pa.int64()),
        ("total_records", pa.int64()),
        ("added_files", pa.int64()),
        ("deleted_files", pa.int64()),
        ("is_current", pa.bool_()),
        ("k2", pa.string()),
    ]
)


def snapshots_table(infos: list[SnapshotInfo]) -> pa.Table:
    """Snapshots as a table (``k2`` properties as JSON text) for CSV/Parquet/Arrow."""
    from k2.api.formats import encode_value

    rows = [
        {**i.to_json_dict(), "committed_at": i.committed_at, "k2": encode_value(i.k2).decode()}
        for i in infos
    ]
    return pa.Table.from_pylist(rows, schema=_SNAPSHOT_SCHEMA)


Symbols = Annotated[
    str | None,
    Query(
        alias="symbol",
        max_length=2000,
        description="comma-separated symbols, e.g. BTCUSDT,ETHUSDT (any case)",
    ),
]
Exchange = Annotated[str | None, Query(max_length=32, description="exchange, e.g. binance")]
Start = Annotated[
    str | None,
    Query(
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="inclusive start, ISO-8601 with Z or an offset",
    ),
]
End = Annotated[
    str | None,
    Query(
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="exclusive end, ISO-8601 with Z or an offset",
    ),
]
Limit = Annotated[
    int | None,
    Query(ge=1, le=2**31, description="rows at most (default query.default_limit)"),
]
Order = Annotated[Literal["asc", "desc"], Query(description="by time, then exchange, symbol, id")]
AsOf = Annotated[
    str | None,
    Query(max_length=64, description="read the lake as of a snapshot id or an ISO-8601 time"),
]
Cursor = Annotated[
    str | None, Query(max_length=1024, description="meta.next_cursor of the previous page")
]
Fmt = Annotated[
    Format | None,
    Query(alias="format", description="json, csv, parquet or arrow (overrides Accept)"),
]


#: Prefix of the authenticated routes; part of each route's path so that the route
#: template (metrics label) is the full path.
V1 = "/v1"


def build_router(engine: QueryService, settings: Settings, metrics: ApiMetrics) -> APIRouter:
    """The ``/v1`` routes over ``engine`` (mounted by :func:`k2.api.app.create_app`)."""
    qs = settings.query
    router = APIRouter(tags=["v1"])

    def respond(request: Request, result: QueryResult, fmt: Format) -> Response:
        meta = meta_dict(result.meta, request.scope["state"].get("request_id"))
        metrics.returned(endpoint_label(request.scope), result.table.num_rows, result.meta.sources)
        headers: dict[str, str] = {}
        cursor = result.meta.next_cursor
        if cursor:
            nxt = request.url.include_query_params(cursor=cursor)
            headers["Link"] = f'<{nxt}>; rel="next"'
            headers["X-K2-Next-Cursor"] = cursor
        if result.meta.snapshot_id is not None:
            headers["X-K2-Snapshot-Id"] = str(result.meta.snapshot_id)
        return Response(
            encode(fmt, result.table, meta), media_type=MEDIA_TYPES[fmt], headers=headers
        )

    def checked(limit: int | None) -> int | None:
        if limit is not None and limit > qs.max_limit:
            raise QueryError(
                f"limit {limit} is above the largest allowed, {qs.max_limit}",
                code="limit-too-large",
            )
        return limit

    def accept(request: Request, fmt: Format | None) -> Format:
        return negotiate(fmt, request.headers.get("accept"))

    trade_rows = row_schema(TRADE.arrow_schema())
    quote_rows = row_schema(QUOTE.arrow_schema())

    @router.get(
        V1 + "/trades",
        summary="Trades in a time window (lake + live tail)",
        responses=data_responses(trade_rows),
    )
    def trades(
        request: Request,
        symbols: Symbols = None,
        exchange: Exchange = None,
        start: Start = None,
        end: End = None,
        limit: Limit = None,
        order: Order = "asc",
        as_of: AsOf = None,
        cursor: Cursor = None,
        fmt: Fmt = None,
    ) -> Response:
        """Trades with ``start <= timestamp < end``, ordered by (timestamp, exchange,
        symbol, trade_id); paginate with ``cursor``. Without ``as_of`` the newest lake
        snapshot is merged with records still in the log (meta.sources)."""
        f = accept(request, fmt)
        result = engine.trades(
            parse_symbols(symbols),
            start=_time("start", start),
            end=_time("end", end),
            exchange=parse_exchange(exchange),
            limit=checked(limit),
            order=order,
            as_of=parse_as_of(as_of),
            cursor=cursor,
        )
        return respond(request, result, f)

    @router.get(
        V1 + "/trades/recent",
        summary="Trades of the last minutes (hybrid: lake + tail)",
        responses=data_responses(trade_rows),
    )
    async def recent_trades(
        request: Request,
        symbols: Symbols = None,
        window_minutes: Annotated[
            int, Query(ge=1, le=1440, description="minutes back from now")
        ] = 15,
        limit: Limit = None,
        order: Annotated[
            Literal["asc", "desc"], Query(description="desc: newest first (default)")
        ] = "desc",
        fmt: Fmt = None,
    ) -> Response:
        """Trades of the last ``window_minutes`` (1-1440) up to now, including those not
        yet committed to the lake; newest first unless ``order=asc``."""
        # The hot path: answered on the event loop when memory alone answers it (no
        # thread hand-off, no I/O; small JSON pages only), else in the thread pool.
        f = accept(request, fmt)
        syms, lim = parse_symbols(symbols), checked(limit)
        result = engine.recent_trades_now(
            syms, window_minutes=window_minutes, limit=lim, order=order
        )
        if result is not None and f == "json" and result.table.num_rows <= INLINE_ROWS:
            return respond(request, result, f)
        if result is None:
            result = await run_in_threadpool(
                engine.recent_trades, syms, window_minutes=window_minutes, limit=lim, order=order
            )
        return await run_in_threadpool(respond, request, result, f)

    @router.get(
        V1 + "/quotes",
        summary="Best bid/ask updates in a time window",
        responses=data_responses(quote_rows),
    )
    def quotes(
        request: Request,
        symbols: Symbols = None,
        exchange: Exchange = None,
        start: Start = None,
        end: End = None,
        limit: Limit = None,
        order: Order = "asc",
        as_of: AsOf = None,
        cursor: Cursor = None,
        fmt: Fmt = None,
    ) -> Response:
        """Quotes with ``start <= timestamp < end``, ordered by (timestamp, exchange,
        symbol, update_id); paginate with ``cursor``."""
        f = accept(request, fmt)
        result = engine.quotes(
            parse_symbols(symbols),
            start=_time("start", start),
            end=_time("end", end),
            exchange=parse_exchange(exchange),
            limit=checked(limit),
            order=order,
            as_of=parse_as_of(as_of),
            cursor=cursor,
        )
        return respond(request, result, f)

    @router.get(
        V1 + "/bars", summary="OHLCV bars with VWAP from trades", responses=data_responses()
    )
    def bars(
        request: Request,
        symbols: Symbols = None,
        interval: Annotated[
            str, Query(max_length=16, description="bar length, e.g. 1m, 5m, 1h, 1d")
        ] = "1m",
        start: Start = None,
        end: End = None,
        exchange: Exchange = None,
        as_of: AsOf = None,
        fmt: Fmt = None,
    ) -> Response:
        """Bars of ``interval`` with bar_start in [start, end): open, high, low, close,
        volume, quote_volume, vwap, trade_count, buy/sell volume (exact decimals)."""
        f = accept(request, fmt)
        result = engine.bars(
            parse_symbols(symbols),
            interval=interval,
            start=_time("start", start),
            end=_time("end", end),
            exchange=parse_exchange(exchange),
            as_of=parse_as_of(as_of),
        )
        return respond(request, result, f)

    @router.get(
        V1 + "/summary/{symbol}",
        summary="One UTC day of a symbol: OHLC, volume, VWAP",
        responses=data_responses(),
    )
    def summary(
        request: Request,
        symbol: Annotated[str, PathParam(max_length=40)],
        day: Annotated[
            str | None,
            Query(
                alias="date",
                max_length=10,
                json_schema_extra={"format": "date"},
                description="UTC day YYYY-MM-DD (default: the latest day with trades)",
            ),
        ] = None,
        fmt: Fmt = None,
    ) -> Response:
        """The daily summary of ``symbol`` for ``date``."""
        f = accept(request, fmt)
        result = engine.summary(parse_symbol(symbol), day=parse_date(day))
        return respond(request, result, f)

    @router.get(
        V1 + "/symbols",
        summary="Symbols in the lake with their time range and counts",
        responses=data_responses(extra=()),
    )
    def symbols(request: Request, fmt: Fmt = None) -> Response:
        """Every (symbol, exchange): first and last trade time, trade and quote counts."""
        f = accept(request, fmt)
        return respond(request, engine.symbols(), f)

    @router.get(
        V1 + "/snapshots", summary="Lake snapshots (for as_of)", responses=data_responses(extra=())
    )
    def snapshots(
        request: Request,
        table: Annotated[Literal["trades", "quotes"], Query()] = "trades",
        fmt: Fmt = None,
    ) -> Response:
        """Snapshots of ``table``, oldest first: id, commit time (UTC), operation, rows
        added, K2 properties (log offsets, archive names)."""
        f = accept(request, fmt)
        infos = engine.snapshots(table)
        request_id = request.scope["state"].get("request_id")
        meta = {
            "data_type": "snapshots",
            "table": table,
            "rows": len(infos),
            "request_id": request_id,
        }
        metrics.returned(endpoint_label(request.scope), len(infos), ())
        if f == "json":
            data = [{**i.to_json_dict(), "committed_at": iso_z(i.committed_at)} for i in infos]
            return Response(encode_json(data, meta), media_type=MEDIA_TYPES[f])
        return Response(encode(f, snapshots_table(infos), meta), media_type=MEDIA_TYPES[f])

    @router.post(
        V1 + "/sql", summary="Run one read-only SQL query", responses=data_responses(extra=(408,))
    )
    def sql(request: Request, body: SqlRequest, fmt: Fmt = None) -> Response:
        """A read-only SELECT over the tables ``trades``, ``quotes`` (and
        ``reference_data``), limited in time (query.sql_timeout_s) and rows."""
        f = accept(request, fmt)
        if body.max_rows is not None and body.max_rows > qs.sql_max_rows:
            raise ApiProblem(
                400, "limit-too-large", f"max_rows {body.max_rows} is above {qs.sql_max_rows}"
            )
        return respond(request, engine.sql(body.query, max_rows=body.max_rows), f)

    return router

"""The API's one middleware: request id, extra headers, metrics, last-resort errors.

A plain ASGI middleware (no ``BaseHTTPMiddleware``: that one costs a task and a
memory stream per request). For every HTTP request it

- takes the caller's ``X-Request-ID`` when it is short and plain, else makes one, and
  returns it on the response (``scope["state"]["request_id"]`` for handlers);
- appends the headers handlers left in ``scope["state"]["k2_headers"]`` (rate-limit
  state, set by the auth dependency) to whatever response goes out, errors included;
- counts the request and its wall time under the route template;
- turns an exception nothing else handled into a 500 problem document naming the
  request id, and logs it with the traceback.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import MutableMapping
from typing import Any

from k2.api.metrics import UNMATCHED, ApiMetrics
from k2.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from k2.ops.log import get_logger

_log = get_logger(__name__)
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def new_request_id() -> str:
    """16 random hex characters."""
    return os.urandom(8).hex()


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value.decode("ascii") if _REQUEST_ID.match(value) else None
    return None


def endpoint_label(scope: Scope) -> str:
    """The route template that answered (``/v1/summary/{symbol}``), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class ApiMiddleware:
    """See the module docstring. ``clock`` returns seconds (for the latency histogram)."""

    def __init__(self, app: Any, *, metrics: ApiMetrics, clock: Any = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = self.clock()
        state = scope.setdefault("state", {})
        request_id = _incoming_request_id(scope) or new_request_id()
        state["request_id"] = request_id
        extra: list[tuple[bytes, bytes]] = []
        state["k2_headers"] = extra
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(extra)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            _log.exception(
                "api.unhandled_error",
                request_id=request_id,
                path=scope.get("path"),
                method=scope.get("method"),
            )
            if not response_started:
                await self._send_500(scope, request_id, send_with_headers)
        finally:
            self.metrics.observe(
                endpoint_label(scope), scope.get("method", ""), status, self.clock() - started_at
            )

    @staticmethod
    async def _send_500(scope: Scope, request_id: str, send: Any) -> None:
        body = problem_body(
            500,
            "internal",
            f"K2 failed to answer this request; the error is logged under request id {request_id}",
            instance=scope.get("path"),
            request_id=request_id,
        )
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

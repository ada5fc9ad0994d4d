"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns has the same shape::

    {"type": "https://k2.dev/problems/<code>", "title": ..., "status": ...,
     "detail": "what was wrong and what would be accepted", "instance": "/v1/...",
     "request_id": "..."}

``code`` is stable and machine-readable; for query errors it is
:attr:`k2.query.base.QueryError.code` (``unknown-symbol``, ``bad-interval``,
``window-too-large``, ``unknown-snapshot`` ...). This module has no FastAPI import so
the CLI can share :class:`ApiProblem` and the title table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

PROBLEM_BASE = "https://k2.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

#: Human titles of the codes K2 knows; an unknown code gets a title made from it.
TITLES: dict[str, str] = {
    "bad-request": "Bad request",
    "invalid-parameter": "Invalid parameter",
    "bad-symbol": "Bad symbol",
    "unknown-symbol": "Unknown symbol",
    "bad-interval": "Bad interval",
    "bad-time": "Bad time",
    "window-too-large": "Window too large",
    "unknown-snapshot": "Unknown snapshot",
    "bad-cursor": "Bad cursor",
    "bad-sql": "Bad SQL",
    "sql-timeout": "SQL timed out",
    "limit-too-large": "Limit too large",
    "unsupported-format": "Unsupported format",
    "not-acceptable": "Not acceptable",
    "unauthorized": "Unauthorized",
    "rate-limited": "Too many requests",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "unavailable": "Service unavailable",
    "internal": "Internal server error",
}

#: Problem codes of plain HTTP errors (unknown route, wrong method ...).
HTTP_CODES: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    429: "rate-limited",
    503: "unavailable",
}

_ENCODER = msgspec.json.Encoder(enc_hook=str)


class ApiProblem(Exception):
    """An error the API answers with a problem document (raised by API-layer code)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def title_of(code: str) -> str:
    """The human title of ``code`` (``window-too-large`` → ``Window too large``)."""
    return TITLES.get(code) or code.replace("-", " ").capitalize()


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    request_id: str | None = None,
) -> bytes:
    """The JSON bytes of a problem document (RFC 9457 members plus ``request_id``)."""
    doc: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title_of(code),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        doc["instance"] = instance
    if request_id is not None:
        doc["request_id"] = request_id
    return _ENCODER.encode(doc)


#: JSON schema of a problem document, for the OpenAPI ``responses=`` of every route.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
}

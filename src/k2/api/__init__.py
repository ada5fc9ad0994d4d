"""K2's REST API (FastAPI) and the output formats it shares with ``k2 query``.

- :func:`create_app` (:mod:`k2.api.app`): the app over a query engine; what tests use.
- :func:`serve` (:mod:`k2.api.server`): ``k2 serve`` — engine, live tail, uvicorn.
- :class:`KeyStore` (:mod:`k2.api.auth`), :class:`RateLimiter` (:mod:`k2.api.ratelimit`).
- :mod:`k2.api.formats`: JSON/CSV/Parquet/Arrow encoding and content negotiation.

The app and server are imported lazily so ``k2 query`` does not load FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k2.api.auth import KeyStore
from k2.api.ratelimit import RateLimiter

if TYPE_CHECKING:
    from k2.api.app import create_app
    from k2.api.server import serve

__all__ = ["KeyStore", "RateLimiter", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from k2.api.app import create_app

        return create_app
    if name == "serve":
        from k2.api.server import serve

        return serve
    raise AttributeError(f"module 'k2.api' has no attribute {name!r}")

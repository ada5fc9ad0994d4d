"""The API runs its query endpoints on a small, configured number of threads."""

from __future__ import annotations

import anyio.to_thread

from k2.api.app import create_app
from k2.query.engine import QueryEngine
from tests.api.conftest import ApiLake, TestClient, keystore


def _limit() -> float:
    return anyio.to_thread.current_default_thread_limiter().total_tokens


def test_thread_limit_comes_from_settings(api_lake: ApiLake, engine: QueryEngine) -> None:
    app = create_app(engine, api_lake.settings(threads=3), keystore=keystore())
    with TestClient(app) as client:
        assert client.portal is not None
        assert client.portal.call(_limit) == 3
        assert client.get("/health").status_code == 200

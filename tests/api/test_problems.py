"""Every kind of error comes back as application/problem+json with a clear message."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from k2.query.base import QueryResult
from k2.query.engine import QueryEngine
from tests.api.conftest import ApiLake, AppFactory, TestClient


def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = resp.json()
    assert doc["type"] == f"https://k2.dev/problems/{code}"
    assert doc["status"] == status and doc["title"] and doc["detail"]
    assert doc["request_id"] == resp.headers["x-request-id"]
    assert doc["instance"] == resp.request.url.path
    return doc


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "says"),
    [
        ("/v1/trades", {"symbol": "BTC USDT"}, 400, "bad-symbol", "BTCUSDT"),
        ("/v1/trades", {"symbol": "DOESNOTEXIST"}, 404, "unknown-symbol", "DOESNOTEXIST"),
        ("/v1/summary/NOSUCHCOIN", {}, 404, "unknown-symbol", "NOSUCHCOIN"),
        ("/v1/trades", {"start": "2024-01-01T00:00:00"}, 400, "bad-time", "Z"),
        ("/v1/trades", {"end": "tomorrow"}, 400, "bad-time", "ISO-8601"),
        (
            "/v1/trades",
            {"start": "2020-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"},
            400,
            "window-too-large",
            "31 days",
        ),
        ("/v1/bars", {"symbol": "BTCUSDT", "interval": "7x"}, 400, "bad-interval", "7x"),
        (
            "/v1/bars",
            {
                "symbol": "BTCUSDT",
                "interval": "1s",
                "start": "2023-01-01T00:00:00Z",
                "end": "2023-12-01T00:00:00Z",
            },
            400,
            "window-too-large",
            "bars",
        ),
        ("/v1/trades", {"as_of": "12345"}, 404, "unknown-snapshot", "12345"),
        ("/v1/trades", {"as_of": "2001-01-01T00:00:00Z"}, 404, "unknown-snapshot", "2001"),
        ("/v1/trades", {"as_of": "latest"}, 400, "bad-time", "snapshot id"),
        ("/v1/trades", {"cursor": "not-a-cursor"}, 400, "bad-cursor", "cursor"),
        ("/v1/trades", {"limit": 2_000_000}, 400, "limit-too-large", "2000000"),
        ("/v1/summary/BTCUSDT", {"date": "2023-02-30"}, 400, "bad-time", "YYYY-MM-DD"),
    ],
)
def test_query_errors(
    client: TestClient, path: str, params: dict[str, Any], status: int, code: str, says: str
) -> None:
    doc = problem(client.get(path, params=params), status, code)
    assert says in doc["detail"]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "ten"}, "'limit'"),
        ({"limit": 0}, "'limit'"),
        ({"order": "sideways"}, "'order'"),
        ({"format": "xlsx"}, "'format'"),
        ({"symbol": "X" * 2001}, "'symbol'"),
    ],
)
def test_invalid_parameters_name_the_parameter(
    client: TestClient, params: dict[str, Any], name: str
) -> None:
    doc = problem(client.get("/v1/trades", params=params), 400, "invalid-parameter")
    assert f"query parameter {name}" in doc["detail"]


def test_recent_window_bounds(client: TestClient) -> None:
    doc = problem(
        client.get("/v1/trades/recent", params={"window_minutes": 1441}), 400, "invalid-parameter"
    )
    assert "'window_minutes'" in doc["detail"] and "1440" in doc["detail"]


def test_sql_errors(client: TestClient) -> None:
    doc = problem(client.post("/v1/sql", json={"query": "SELEC nonsense"}), 400, "bad-sql")
    assert doc["detail"]
    problem(client.post("/v1/sql", json={"query": "DROP TABLE trades"}), 400, "bad-sql")
    plain = client.post("/v1/sql", content=b"SELECT 1", headers={"content-type": "text/plain"})
    assert "JSON object" in problem(plain, 400, "invalid-parameter")["detail"]
    doc = problem(client.post("/v1/sql", json={"sql": "SELECT 1"}), 400, "invalid-parameter")
    assert "body field 'query'" in doc["detail"]
    problem(
        client.post("/v1/sql", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid-parameter",
    )
    doc = problem(
        client.post("/v1/sql", json={"query": "SELECT 1", "max_rows": 10**6}),
        400,
        "limit-too-large",
    )
    assert "100000" in doc["detail"]


def test_not_acceptable(client: TestClient) -> None:
    doc = problem(client.get("/v1/trades", headers={"Accept": "text/html"}), 406, "not-acceptable")
    assert "format=" in doc["detail"]


def test_unknown_route_and_method(client: TestClient) -> None:
    doc = problem(client.get("/v1/nothing"), 404, "not-found")
    assert "/docs" in doc["detail"]
    problem(client.delete("/v1/trades"), 405, "method-not-allowed")


class Exploding:
    """A real engine whose symbols() fails unexpectedly (a bug K2 must not leak)."""

    def __init__(self, engine: QueryEngine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def symbols(self) -> QueryResult:
        raise RuntimeError("secret internal detail")


def test_unexpected_error_is_500_with_request_id(
    make_client: AppFactory, engine: QueryEngine
) -> None:
    client = make_client(engine_=Exploding(engine))
    with capture_logs() as logs:
        resp = client.get("/v1/symbols", headers={"X-Request-ID": "req-42"})
    doc = problem(resp, 500, "internal")
    assert doc["request_id"] == "req-42" and "req-42" in doc["detail"]
    assert "secret" not in resp.text
    (entry,) = [e for e in logs if e["event"] == "api.unhandled_error"]
    assert entry["request_id"] == "req-42" and entry["log_level"] == "error"
    assert entry["exc_info"] is True
    assert client.get("/v1/trades", params={"limit": 1}).status_code == 200  # still serving


def test_request_id_is_made_when_missing_or_odd(client: TestClient, api_lake: ApiLake) -> None:
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 16
    odd = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert odd.headers["x-request-id"] != "bad id with spaces"

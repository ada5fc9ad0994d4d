"""X-API-Key authentication and per-key rate limits, over HTTP."""

from __future__ import annotations

import pytest

from tests.api.conftest import ALICE_KEY, BOB_KEY, AppFactory, FakeClock, TestClient

V1 = [
    "/v1/trades",
    "/v1/trades/recent",
    "/v1/quotes",
    "/v1/bars",
    "/v1/summary/BTCUSDT",
    "/v1/symbols",
    "/v1/snapshots",
]


@pytest.mark.parametrize("path", V1)
def test_every_v1_route_needs_a_key(make_client: AppFactory, path: str) -> None:
    resp = make_client(key=None).get(path)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    doc = resp.json()
    assert doc["type"].endswith("/unauthorized") and "no X-API-Key" in doc["detail"]


def test_sql_needs_a_key(make_client: AppFactory) -> None:
    resp = make_client(key=None).post("/v1/sql", json={"query": "SELECT 1"})
    assert resp.status_code == 401


@pytest.mark.parametrize("key", ["wrong", ALICE_KEY[:-1], ALICE_KEY + "x", ALICE_KEY.upper(), ""])
def test_wrong_keys_are_refused(make_client: AppFactory, key: str) -> None:
    resp = make_client(key=None).get("/v1/symbols", headers={"X-API-Key": key})
    assert resp.status_code == 401
    assert "x-ratelimit-remaining" not in resp.headers  # refused before any bucket


@pytest.mark.parametrize("key", [ALICE_KEY, BOB_KEY])
def test_each_configured_key_is_accepted(make_client: AppFactory, key: str) -> None:
    resp = make_client(key=key).get("/v1/symbols")
    assert resp.status_code == 200
    assert resp.headers["x-ratelimit-remaining"] == str(10**6 - 1)


@pytest.mark.parametrize("path", ["/health", "/metrics", "/openapi.json", "/docs"])
def test_open_endpoints_need_no_key(make_client: AppFactory, path: str) -> None:
    assert make_client(key=None).get(path).status_code == 200


def test_openapi_documents_the_key_and_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        iter(schemes.values())
    ).items()
    trades = spec["paths"]["/v1/trades"]["get"]
    assert trades["security"]
    assert "application/problem+json" in trades["responses"]["401"]["content"]
    assert "application/problem+json" in trades["responses"]["429"]["content"]
    assert set(trades["responses"]["200"]["content"]) >= {
        "application/json",
        "text/csv",
        "application/vnd.apache.parquet",
        "application/vnd.apache.arrow.stream",
    }
    assert "security" not in spec["paths"]["/health"]["get"]


def test_rate_limit_per_key_with_a_fake_clock(make_client: AppFactory) -> None:
    clock = FakeClock()
    alice = make_client(clock=clock, rate_limit_per_s=2.0, rate_limit_burst=3)
    bob = TestClient(alice.app, raise_server_exceptions=False, headers={"X-API-Key": BOB_KEY})
    seen = [alice.get("/v1/symbols") for _ in range(3)]
    assert [r.status_code for r in seen] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in seen)

    refused = alice.get("/v1/symbols")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.json()["type"].endswith("/rate-limited")
    assert "alice" in refused.json()["detail"]

    assert bob.get("/v1/symbols").status_code == 200  # bob's bucket is his own
    clock.now += 0.5  # one token back at 2/s
    assert alice.get("/v1/symbols").status_code == 200
    assert alice.get("/v1/symbols").status_code == 429
    clock.now += 10  # refills to the burst, not beyond
    assert [alice.get("/v1/symbols").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_refused_requests_do_not_reach_the_engine(make_client: AppFactory) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, rate_limit_per_s=1.0, rate_limit_burst=1)
    assert client.get("/v1/trades", params={"limit": 1}).status_code == 200
    assert client.get("/v1/trades", params={"limit": 1}).status_code == 429
    metrics = client.get("/metrics").text
    assert 'k2_query_rows_returned_total{endpoint="/v1/trades"} 1.0' in metrics


def test_open_endpoints_are_not_rate_limited(make_client: AppFactory) -> None:
    client = make_client(clock=FakeClock(), rate_limit_per_s=1.0, rate_limit_burst=1)
    assert [client.get("/health").status_code for _ in range(5)] == [200] * 5

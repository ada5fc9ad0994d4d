"""/metrics: per-app registry, route templates as labels, rows and hybrid counters."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from k2.api.app import create_app
from k2.api.metrics import ApiMetrics
from k2.query.engine import QueryEngine
from k2.query.tail import TailStats
from k2.query.tail_stream import StreamStats
from tests.api.conftest import ApiLake, AppFactory, TestClient, keystore


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_labels_are_route_templates_never_raw_paths(make_client: AppFactory) -> None:
    client = make_client()
    assert client.get("/v1/summary/BTCUSDT").status_code == 200
    assert client.get("/v1/summary/NOSUCH").status_code == 404
    assert client.get("/v1/trades", params={"limit": 7}).status_code == 200
    assert make_client(key=None).get("/v1/trades").status_code == 401  # another app
    for i in range(5):
        client.get(f"/random/{i}")
    text = client.get("/metrics").text
    got = samples(text)
    assert "BTCUSDT" not in text and "/random/" not in text
    summary = (("endpoint", "/v1/summary/{symbol}"), ("method", "GET"))
    assert got[("k2_api_requests_total", (*summary, ("status", "200")))] == 1
    assert got[("k2_api_requests_total", (*summary, ("status", "404")))] == 1
    unmatched = (("endpoint", "unmatched"), ("method", "GET"), ("status", "404"))
    assert got[("k2_api_requests_total", unmatched)] == 5
    trades = (("endpoint", "/v1/trades"),)
    assert got[("k2_query_rows_returned_total", trades)] == 7
    assert got[("k2_api_request_duration_seconds_count", trades)] == 1
    assert ("k2_hybrid_queries_total", trades) not in got  # lake-only engine
    assert not any(name == "k2_metric_label_errors_total" for name, _ in got)


def test_each_app_has_its_own_registry(make_client: AppFactory) -> None:
    first, second = make_client(), make_client()
    first.get("/v1/symbols")
    got = samples(second.get("/metrics").text)
    assert not any(
        name == "k2_api_requests_total" and ("endpoint", "/v1/symbols") in labels
        for name, labels in got
    )


def test_unauthorized_requests_are_counted(make_client: AppFactory) -> None:
    client = make_client(key=None)
    client.get("/v1/quotes")
    got = samples(client.get("/metrics").text)
    key = (("endpoint", "/v1/quotes"), ("method", "GET"), ("status", "401"))
    assert got[("k2_api_requests_total", key)] == 1


@dataclass
class FrozenTail:
    """The part of a live tail the metrics read: its stats."""

    held: TailStats

    def stats(self) -> TailStats:
        return self.held


def test_lake_commit_age_and_tail_records_are_reported_at_scrape(
    api_lake: ApiLake, engine: QueryEngine
) -> None:
    trades = StreamStats("trades", "k2.trades", None, 12, 0, {}, {}, {}, True, 0, 0)
    metrics = ApiMetrics()
    metrics.follow(engine, FrozenTail(TailStats(streams={"trades": trades})))
    app = create_app(engine, api_lake.settings(), keystore=keystore(), metrics=metrics)
    with TestClient(app) as client:
        before = time.time()
        got = samples(client.get("/metrics").text)
    committed = engine.snapshots("trades")[-1].committed_at.timestamp()
    age = got[("k2_lake_commit_age_seconds", (("table", "trades"),))]
    assert before - committed <= age <= time.time() - committed
    assert ("k2_lake_commit_age_seconds", (("table", "quotes"),)) in got
    assert got[("k2_tail_records", (("data_type", "trade"),))] == 12

"""The metrics catalogue: names and labels by the rules, every metric exposed, bad label
values recorded as ``other`` (never raised), stats mirrored by delta, the HTTP endpoint."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from k2 import __version__
from k2.api.app import create_app
from k2.api.auth import KeyStore
from k2.api.metrics import ApiMetrics
from k2.api.routes import QueryService
from k2.capture.pipeline import CaptureStats
from k2.config import Settings
from k2.errors import ConfigError, TerminalError
from k2.lake.sink import SINK_DATA_TYPES
from k2.lake.tables import TABLE_DEFS
from k2.ops.metrics import (
    CATALOGUE,
    DATA_TYPE,
    ENDPOINT,
    OTHER,
    REASON,
    RESERVED_LABELS,
    SINK_DATA_TYPE,
    STAGE,
    TABLE,
    CaptureCounts,
    ExchangeStream,
    Metrics,
    TailCounts,
)
from k2.ops.metrics_http import serve_metrics
from k2.quality.rejects import RejectReason
from k2.query.tail import RECORDS, TailStats
from k2.query.tail_stream import StreamStats as TailStreamStats
from k2.sources.binance.ws import StreamStats

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

NAME = re.compile(r"^k2_[a-z][a-z0-9_]*$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
BAD_VALUES: list[object] = [None, "", "a b", "x" * 10_000, "no_such_reason", 3.5, b"trade"]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(metrics: Metrics) -> Samples:
    return samples(generate_latest(metrics.registry).decode())


# -- the catalogue's own rules -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_names_and_labels_follow_the_rules(name: str) -> None:
    spec = CATALOGUE[name]
    assert spec.name == name and NAME.match(name)
    assert spec.help.strip()
    assert name.endswith("_total") == (spec.kind == "counter"), "counters, and only they, _total"
    if spec.kind == "histogram" or re.search(r"duration|_age|timestamp", name):
        assert name.endswith("_seconds")
    assert bool(spec.buckets) == (spec.kind == "histogram")
    assert len(set(spec.label_names)) == len(spec.label_names)
    for label in spec.labels:
        assert LABEL_NAME.match(label.name) and not label.name.startswith("__")
        assert label.name not in RESERVED_LABELS
        # Every label declares its values: a closed set, or a pattern (never both).
        assert bool(label.values) != (label.pattern is not None), label.name
        assert OTHER not in label.values and not label.admits(OTHER)
        if label.pattern is not None:
            # A "free" label is a bounded identifier: no spaces, no unbounded length.
            assert not label.admits("a b") and not label.admits("a" * 1000)


def test_label_values_match_the_code_they_describe() -> None:
    assert {r.value for r in RejectReason} == REASON.values
    assert set(TABLE_DEFS) == TABLE.values
    assert set(SINK_DATA_TYPES) == SINK_DATA_TYPE.values
    assert set(RECORDS.values()) == DATA_TYPE.values
    assert STAGE.values == {"ingest", "sink", "api", "simulator"}
    label_errors = CATALOGUE["k2_metric_label_errors_total"].labels[0]
    assert label_errors.values == set(CATALOGUE)


def test_every_route_template_of_the_api_is_a_valid_endpoint_label() -> None:
    app = create_app(cast(QueryService, object()), Settings(), keystore=KeyStore())
    paths = [getattr(route, "path", None) for route in app.routes]
    templates = [*app.openapi()["paths"], *(p for p in paths if isinstance(p, str))]
    assert "/v1/summary/{symbol}" in templates and "/docs" in templates
    assert all(ENDPOINT.admits(t) for t in [*templates, "unmatched"]), templates


def test_stats_objects_have_what_the_sync_reads() -> None:
    # mypy checks these assignments: a renamed stats field breaks the type check.
    capture: CaptureCounts = CaptureStats()
    tail: TailCounts = TailStats()
    assert capture.trades == 0 and dict(tail.streams) == {}

    @dataclass
    class Stream:
        stats: StreamStats = field(default_factory=StreamStats)
        connections: int = 0

    stream: ExchangeStream = Stream()
    assert stream.stats.reconnects == 0


# -- exposition ----------------------------------------------------------------------------


def test_exposition_parses_and_holds_every_catalogued_metric() -> None:
    metrics = Metrics(stages=("ingest", "sink", "api"), version="1.2.3+dev")
    text = metrics.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, spec in CATALOGUE.items():
        family_name = name.removesuffix("_total") if spec.kind == "counter" else name
        assert family_name in families, name
        assert families[family_name].type == spec.kind
        assert families[family_name].documentation == spec.help
    got = samples(text)
    assert got[("k2_build_info", (("version", "1.2.3+dev"),))] == 1
    # Closed-set counters of the process's stages start at zero; nothing is invalid.
    assert got[("k2_sink_commits_total", (("outcome", "conflict"), ("table", "gaps")))] == 0
    reject = (("data_type", "unknown"), ("reason", "malformed_json"))
    assert got[("k2_capture_rejects_total", reject)] == 0
    assert not any(name == "k2_metric_label_errors_total" for name, _ in got)


def test_only_the_process_stages_counters_start_at_zero() -> None:
    got = scrape(Metrics(stages=("api",)))
    labelled = {name for name, labels in got if labels}
    assert not any(n.startswith(("k2_capture_", "k2_sink_")) for n in labelled), labelled
    assert got[("k2_build_info", (("version", __version__),))] == 1
    assert not any(name.endswith("_created") for name, _ in got)
    with pytest.raises(TerminalError, match="ingest, sink or api"):
        Metrics(stages=("capture",))


def test_helpers_record_under_the_catalogue_names() -> None:
    now = [1000.0]
    metrics = Metrics(wall_clock=lambda: now[0])
    metrics.capture_received("trade", 5)
    metrics.capture_produced("quote", 4)
    metrics.capture_rejected(None, RejectReason.MALFORMED_JSON)
    metrics.capture_rejected("trade", RejectReason.CROSSED_BOOK, 2)
    metrics.capture_duplicates("trade")
    metrics.capture_gaps_detected()
    metrics.capture_gap_resolved("unrepairable")
    metrics.capture_shed("quote", 2, 7)
    metrics.capture_record_time("trade", 50.0)
    metrics.capture_record_time("trade", 40.0)  # late: the gauge never moves back
    metrics.ws_connections(3)
    metrics.ws_reconnected()
    metrics.sink_commit("trades", "ok", rows=10, seconds=0.2)
    metrics.sink_commit("trades", "conflict")
    metrics.sink_lag("gap", 4)
    metrics.sink_dead_lettered(6)
    metrics.api_request("/v1/trades", "GET", 200, 0.01)
    metrics.query_rows("/v1/trades", 9)
    metrics.hybrid_query("/v1/trades")
    metrics.tail_records("quote", 11)
    metrics.degradation("ingest", 3)
    metrics.breaker_state("log", "half_open")
    metrics.breaker_state("catalog", 2)
    metrics.breaker_failure("exchange", 2)
    metrics.stage_up("sink", True)
    metrics.stage_restarted("simulator")
    got = scrape(metrics)
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("k2_capture_messages_received_total", (("data_type", "trade"),)): 5,
        ("k2_capture_records_produced_total", (("data_type", "quote"),)): 4,
        ("k2_capture_rejects_total", (("data_type", "unknown"), ("reason", "malformed_json"))): 1,
        ("k2_capture_rejects_total", (("data_type", "trade"), ("reason", "crossed_book"))): 2,
        ("k2_capture_duplicates_total", (("data_type", "trade"),)): 1,
        ("k2_capture_gaps_detected_total", ()): 1,
        ("k2_capture_gaps_repaired_total", (("outcome", "unrepairable"),)): 1,
        ("k2_capture_records_shed_total", (("data_type", "quote"), ("level", "2"))): 7,
        ("k2_capture_last_record_timestamp_seconds", (("data_type", "trade"),)): 50.0,
        ("k2_exchange_ws_connections", ()): 3,
        ("k2_exchange_ws_reconnects_total", ()): 1,
        ("k2_sink_commits_total", (("outcome", "ok"), ("table", "trades"))): 1,
        ("k2_sink_commits_total", (("outcome", "conflict"), ("table", "trades"))): 1,
        ("k2_sink_rows_written_total", (("table", "trades"),)): 10,
        ("k2_sink_commit_duration_seconds_count", (("table", "trades"),)): 1,
        ("k2_sink_last_commit_timestamp_seconds", (("table", "trades"),)): 1000.0,
        ("k2_sink_log_lag_records", (("data_type", "gap"),)): 4,
        ("k2_sink_dead_lettered_total", ()): 6,
        (
            "k2_api_requests_total",
            (("endpoint", "/v1/trades"), ("method", "GET"), ("status", "200")),
        ): 1,
        ("k2_api_request_duration_seconds_count", (("endpoint", "/v1/trades"),)): 1,
        ("k2_query_rows_returned_total", (("endpoint", "/v1/trades"),)): 9,
        ("k2_hybrid_queries_total", (("endpoint", "/v1/trades"),)): 1,
        ("k2_tail_records", (("data_type", "quote"),)): 11,
        ("k2_degradation_level", (("stage", "ingest"),)): 3,
        ("k2_circuit_breaker_state", (("breaker", "log"),)): 1,
        ("k2_circuit_breaker_state", (("breaker", "catalog"),)): 2,
        ("k2_circuit_breaker_failures_total", (("breaker", "exchange"),)): 2,
        ("k2_stage_up", (("stage", "sink"),)): 1,
        ("k2_stage_restarts_total", (("stage", "simulator"),)): 1,
    }
    assert {k: got.get(k) for k in expected} == expected
    assert not any(name == "k2_metric_label_errors_total" for name, _ in got)


def test_lake_commit_age_grows_between_snapshots_seen() -> None:
    now = [1000.0]
    metrics = Metrics(wall_clock=lambda: now[0])
    metrics.lake_snapshot_seen("trades", 970.0)
    assert metrics.value("k2_lake_commit_age_seconds", table="trades") == 30.0
    now[0] = 1100.0  # no new snapshot: the age is computed again at the scrape
    assert scrape(metrics)[("k2_lake_commit_age_seconds", (("table", "trades"),))] == 130.0
    metrics.lake_snapshot_seen("trades", 1095.0)
    assert metrics.value("k2_lake_commit_age_seconds", table="trades") == 5.0
    metrics.lake_snapshot_seen("trades", 980.0)  # another reader's older view
    assert metrics.value("k2_lake_commit_age_seconds", table="trades") == 5.0


# -- invalid input never raises --------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda v: repr(v)[:20])
def test_an_invalid_label_value_is_recorded_as_other(bad: Any) -> None:
    metrics = Metrics()
    with structlog.testing.capture_logs() as logs:
        metrics.capture_rejected("trade", bad)
        metrics.capture_rejected("trade", bad, 2)
        metrics.api_request(bad, "GET", 200, 0.1)
        metrics.sink_commit(bad, "ok", rows=3, seconds=0.5)
        metrics.capture_record_time(bad, 5.0)
        metrics.lake_snapshot_seen(bad, 1.0)
    got = scrape(metrics)
    assert got[("k2_capture_rejects_total", (("data_type", "trade"), ("reason", OTHER)))] == 3
    other_api = (("endpoint", OTHER), ("method", "GET"), ("status", "200"))
    assert got[("k2_api_requests_total", other_api)] == 1
    assert got[("k2_sink_rows_written_total", (("table", OTHER),))] == 3
    assert got[("k2_capture_last_record_timestamp_seconds", (("data_type", OTHER),))] == 5.0
    errors = {
        dict(labels)["metric"]: value
        for (name, labels), value in got.items()
        if name == "k2_metric_label_errors_total"
    }
    assert errors == {
        "k2_capture_rejects_total": 2,
        "k2_api_requests_total": 1,
        "k2_api_request_duration_seconds": 1,
        "k2_sink_commits_total": 1,
        "k2_sink_rows_written_total": 1,
        "k2_sink_commit_duration_seconds": 1,
        "k2_sink_last_commit_timestamp_seconds": 1,
        "k2_capture_last_record_timestamp_seconds": 1,
        "k2_lake_commit_age_seconds": 1,
    }
    # Logged once per metric and label, however often it happens; never the whole value.
    invalid = [e for e in logs if e["event"] == "metric_label_invalid"]
    assert sorted(e["metric"] for e in invalid) == sorted(errors)
    assert all(len(e["problem"]) < 200 for e in invalid)
    text = metrics.render().decode()
    assert '"a b"' not in text and "x" * 100 not in text
    assert sum(1 for _ in text_string_to_metric_families(text)) == len(CATALOGUE)


def test_missing_and_unknown_labels_and_bad_amounts_never_raise() -> None:
    metrics = Metrics()
    metrics.inc("k2_capture_records_produced_total", 2)  # data_type missing
    metrics.inc("k2_capture_gaps_detected_total", 1, symbol="BTCUSDT")  # not a label
    metrics.inc("k2_sink_dead_lettered_total", -5)
    metrics.inc("k2_sink_dead_lettered_total", float("nan"))
    metrics.degradation("sink", 9)
    metrics.breaker_state("exchange", "ajar")
    metrics.set("k2_stage_up", 1, stage=None)
    got = scrape(metrics)
    assert got[("k2_capture_records_produced_total", (("data_type", OTHER),))] == 2
    assert got[("k2_capture_gaps_detected_total", ())] == 1
    assert got[("k2_sink_dead_lettered_total", ())] == 0
    assert ("k2_degradation_level", (("stage", "sink"),)) not in got
    assert ("k2_circuit_breaker_state", (("breaker", "exchange"),)) not in got
    assert got[("k2_stage_up", (("stage", OTHER),))] == 1
    errors = (("metric", "k2_capture_gaps_detected_total"),)
    assert got[("k2_metric_label_errors_total", errors)] == 1


def test_misuse_by_code_is_a_clear_error() -> None:
    metrics = Metrics()
    with pytest.raises(TerminalError, match="declare it"):
        metrics.inc("k2_no_such_metric_total")
    with pytest.raises(TerminalError, match="is a counter"):
        metrics.set("k2_sink_dead_lettered_total", 1)
    with pytest.raises(TerminalError, match="one Metrics per registry"):
        Metrics(metrics.registry)
    assert metrics.value("k2_build_info", version=__version__) == 1  # the first still works


# -- delta sync ------------------------------------------------------------------------------


def test_capture_stats_are_mirrored_by_delta_at_each_scrape() -> None:
    metrics = Metrics()
    stats = CaptureStats()
    metrics.on_scrape(lambda: metrics.sync_capture(stats))
    stats.trades, stats.quotes, stats.duplicates = 10, 4, 2
    stats.rejects["crossed_book"] = 3
    stats.gaps_detected, stats.gaps_repaired, stats.gaps_unrepairable = 3, 2, 1
    got = scrape(metrics)
    assert got[("k2_capture_records_produced_total", (("data_type", "trade"),))] == 10
    assert got[("k2_capture_records_produced_total", (("data_type", "quote"),))] == 4
    assert got[("k2_capture_duplicates_total", (("data_type", "unknown"),))] == 2
    crossed = (("data_type", "unknown"), ("reason", "crossed_book"))
    assert got[("k2_capture_rejects_total", crossed)] == 3
    assert got[("k2_capture_gaps_detected_total", ())] == 3
    assert got[("k2_capture_gaps_repaired_total", (("outcome", "repaired"),))] == 2
    assert got[("k2_capture_gaps_repaired_total", (("outcome", "unrepairable"),))] == 1
    stats.trades += 5
    stats.rejects["unknown_symbol"] = 1
    got = scrape(metrics)  # a second scrape adds only what changed
    assert got[("k2_capture_records_produced_total", (("data_type", "trade"),))] == 15
    assert got[("k2_capture_rejects_total", crossed)] == 3
    unknown = (("data_type", "unknown"), ("reason", "unknown_symbol"))
    assert got[("k2_capture_rejects_total", unknown)] == 1

    # A restarted pipeline: a fresh stats object; the counters carry on, never reset.
    restarted = CaptureStats(trades=2)
    metrics.sync_capture(restarted)
    # value() scrapes: the hook syncs the old object too, which adds nothing new.
    assert metrics.value("k2_capture_records_produced_total", data_type="trade") == 17
    restarted.trades += 1
    stats.trades += 1  # objects synced in turn are each followed on their own
    assert scrape(metrics)[("k2_capture_records_produced_total", (("data_type", "trade"),))] == 18
    metrics.sync_capture(restarted)
    assert metrics.value("k2_capture_records_produced_total", data_type="trade") == 19
    metrics.forget(restarted)
    assert metrics.value("k2_capture_records_produced_total", data_type="trade") == 19


def test_stream_and_tail_stats_are_mirrored() -> None:
    @dataclass
    class Stream:  # what BinanceSource.stream offers: its stats and open connections
        stats: StreamStats = field(default_factory=StreamStats)
        connections: int = 0

    metrics = Metrics()
    stream = Stream(StreamStats(reconnects=2, frames_received=100), connections=3)
    metrics.sync_stream(stream)
    stream.stats.reconnects, stream.connections = 3, 1
    metrics.sync_stream(stream)
    assert metrics.value("k2_exchange_ws_reconnects_total") == 3
    assert metrics.value("k2_exchange_ws_connections") == 1
    assert metrics.value("k2_capture_messages_received_total", data_type="unknown") == 100

    def tail_stream(data_type: str, rows: int) -> TailStreamStats:
        return TailStreamStats(data_type, data_type, None, rows, 0, {}, {}, {}, True, 0, 0)

    metrics.sync_tail(TailStats(streams={d: tail_stream(d, 7) for d in RECORDS}))
    assert metrics.value("k2_tail_records", data_type="trade") == 7
    assert metrics.value("k2_tail_records", data_type="quote") == 7


def test_a_failing_scrape_hook_is_logged_and_the_scrape_goes_on() -> None:
    metrics = Metrics()

    def broken() -> None:
        raise RuntimeError("stats gone")

    metrics.on_scrape(broken)
    metrics.on_scrape(lambda: metrics.ws_connections(2))
    with structlog.testing.capture_logs() as logs:
        got = scrape(metrics)
    assert got[("k2_exchange_ws_connections", ())] == 2
    assert [e["event"] for e in logs] == ["metrics_scrape_hook_failed"]
    assert "stats gone" in logs[0]["error"]


def test_api_metrics_keep_their_interface_over_the_catalogue() -> None:
    api = ApiMetrics()
    api.observe("/v1/bars/{symbol}", "GET", 200, 0.02)
    api.returned("/v1/bars/{symbol}", 12, ["lake", "tail"])
    got = samples(api.render().decode())
    bars = (("endpoint", "/v1/bars/{symbol}"),)
    assert got[("k2_query_rows_returned_total", bars)] == 12
    assert got[("k2_hybrid_queries_total", bars)] == 1
    assert api.registry is api.metrics.registry and "text/plain" in api.content_type


# -- the HTTP endpoint -----------------------------------------------------------------------


def test_metrics_are_served_over_http_and_the_port_is_released() -> None:
    metrics = Metrics(stages=("sink",))
    metrics.sink_commit("quotes", "ok", rows=5, seconds=0.1)
    server = serve_metrics(metrics.registry, "127.0.0.1", 0)
    try:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            got = samples(response.read().decode())
        assert got[("k2_sink_rows_written_total", (("table", "quotes"),))] == 5
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=10)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.close()
    server.close()  # twice is harmless
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", server.port))
    with serve_metrics(CollectorRegistry(), "127.0.0.1", server.port) as again:
        assert again.port == server.port  # the socket was really released


def test_a_port_in_use_is_a_config_error() -> None:
    with serve_metrics(CollectorRegistry()) as first:
        taken = first.port
        with pytest.raises(ConfigError, match=f"127.0.0.1:{taken}.*free port"):
            serve_metrics(CollectorRegistry(), "127.0.0.1", taken)

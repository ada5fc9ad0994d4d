"""deploy/prometheus: the config and alert rules as Prometheus itself reads them.

promtool checks the config and rules and runs the rules' unit tests
(alerts_test.yml, virtual time); every metric the rules and the dashboard use must be
one K2 exports (``k2.ops.metrics.CATALOGUE``); and a real Prometheus scraping a real
``k2 serve`` over a lake last committed two hours ago fires K2LakeStale.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from k2.api.auth import key_entry
from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.tables import TABLE_DEFS, ensure_tables, sort_for
from k2.sources.binance.parse import FrameParser
from tests.deploy.deploy_kit import (
    NO_PROMETHEUS,
    NO_PROMTOOL,
    PROMETHEUS_DIR,
    Selector,
    alert_rules,
    deploy_selectors,
    dump_yaml,
    load_yaml,
    prometheus,
    promtool,
    selectors,
)
from tests.ports import free_port

needs_promtool = pytest.mark.skipif(promtool() is None, reason=NO_PROMTOOL)

#: The standard process collector's metrics: exported by prometheus_client itself,
#: so they need not be in K2's catalogue.
PROCESS_METRICS = {"process_resident_memory_bytes", "process_cpu_seconds_total"}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    assert tool is not None
    return subprocess.run(
        [tool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


# --- promtool ------------------------------------------------------------------------


@needs_promtool
def test_config_is_valid_and_loads_the_alert_rules() -> None:
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


@needs_promtool
def test_alert_rules_are_valid() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_rules())} rules found" in done.stdout


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


# --- the rules as a reader sees them ---------------------------------------------------


def test_every_alert_is_named_graded_and_explained() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule["alert"].startswith("K2"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for field in ("summary", "description"):
            assert len(rule["annotations"].get(field, "").strip()) > 20, (rule["alert"], field)


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    missing = {r["alert"] for r in alert_rules()} - fired
    assert not missing, f"alerts never shown firing in alerts_test.yml: {sorted(missing)}"


def test_scrape_jobs_reach_every_stage_on_its_metrics_port() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert config["rule_files"] == ["alerts.yml"]
    ports = {
        "k2-api": [sd["port"] for sd in jobs["k2-api"]["dns_sd_configs"]],
        "k2-sink": [sd["port"] for sd in jobs["k2-sink"]["dns_sd_configs"]],
        "k2-ingest": [
            int(t.rsplit(":", 1)[1]) for sc in jobs["k2-ingest"]["static_configs"]
            for t in sc["targets"]
        ],
    }  # fmt: skip
    assert ports == {"k2-api": [8000], "k2-sink": [9102], "k2-ingest": [9101]}
    for job in ("k2-api", "k2-ingest", "k2-sink"):
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"


# --- metric names against K2's catalogue ---------------------------------------------


def _spec_field(spec: Any, *names: str) -> Any:
    for name in names:
        if isinstance(spec, Mapping) and name in spec:
            return spec[name]
        if hasattr(spec, name):
            return getattr(spec, name)
    return None


def _exported(catalogue: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Series name → its labels (name → the catalogue's label, or None when the spec
    does not describe its labels) for every series the catalogue's metrics expose."""
    out: dict[str, dict[str, Any] | None] = {}
    for name, spec in catalogue.items():
        kind = str(_spec_field(spec, "kind", "type") or "").lower()
        raw = _spec_field(spec, "labels")
        labels = None if raw is None else {getattr(x, "name", x): x for x in raw}
        base = name.removesuffix("_total")
        if kind == "histogram":
            series = [f"{name}_bucket", f"{name}_sum", f"{name}_count"]
        elif kind == "counter":
            series = [f"{base}_total"]
        elif kind:
            series = [name]
        else:  # the spec does not say its kind: accept any of its series names
            series = [name, f"{base}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"]
        for one in series:
            bucket = {"le": None} if one.endswith("_bucket") else {}
            out[one] = None if labels is None else {**labels, **bucket}
    return out


_LITERALS = re.compile(r"[A-Za-z0-9_/{}-]+(\|[A-Za-z0-9_/{}-]+)*")


def _matcher_values(op: str, value: str) -> list[str]:
    """Label values a matcher names literally (``a|b`` regexes too); [] for patterns."""
    if op in ("=", "!="):
        return [value]
    if _LITERALS.fullmatch(value):
        return value.split("|")
    return []


def _catalogue_problems(used: list[Selector], catalogue: Mapping[str, Any]) -> set[str]:
    """What in ``used`` the catalogue does not export: names, labels, label values."""
    exported = _exported(catalogue)
    problems = set()
    for s in used:
        if s.metric in PROCESS_METRICS:
            continue
        if s.metric not in exported:
            problems.add(f"{s.metric}: not in k2.ops.metrics.CATALOGUE ({s.source})")
            continue
        labels = exported[s.metric]
        if labels is None:
            continue
        for name in sorted(s.labels - labels.keys() - TARGET_LABELS):
            problems.add(f"{s.metric}: has no label {name!r} ({s.source})")
        for name, op, value in s.matchers:
            admits: Callable[[str], bool] | None = getattr(labels.get(name), "admits", None)
            if admits is None:  # a target label, or a spec that lists no values
                continue
            for one in _matcher_values(op, value):
                if not admits(one):
                    problems.add(f"{s.metric}: {name} never takes {one!r} ({s.source})")
    return problems


def _catalogue() -> Mapping[str, Any]:
    try:
        from k2.ops.metrics import CATALOGUE
    except ImportError as exc:
        pytest.fail(f"k2.ops.metrics.CATALOGUE is missing ({exc}); deploy/ needs it")
    return CATALOGUE


def test_every_metric_the_rules_and_dashboard_use_is_exported_by_k2() -> None:
    used = deploy_selectors()
    assert len({s.metric for s in used}) >= 25  # the parser finds the selectors
    problems = _catalogue_problems(used, _catalogue())
    assert not problems, "\n".join(sorted(problems))


def test_the_catalogue_check_catches_a_wrong_name_label_or_value() -> None:
    expr = (
        'sum by (table) (k2_sink_rows_writen_total) + k2_sink_commits_total{outcome="failed"}'
        " + sum by (symbol) (rate(k2_api_requests_total[5m]))"
    )
    problems = _catalogue_problems(selectors(expr, "test"), _catalogue())
    assert problems == {
        "k2_sink_rows_writen_total: not in k2.ops.metrics.CATALOGUE (test)",
        "k2_sink_commits_total: outcome never takes 'failed' (test)",
        "k2_api_requests_total: has no label 'symbol' (test)",
    }


# --- a real Prometheus over a real K2 ---------------------------------------------------


def _rules_without_for(tmp_path: Path) -> Path:
    """alerts.yml as it is, except every ``for:`` is dropped.

    The live test proves the path scrape → rule expression → firing alert; waiting out
    the real ``for:`` durations (a minute or more) would add nothing to it, since
    alerts_test.yml already checks each ``for:`` in promtool's virtual time.
    """
    doc = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    return dump_yaml(doc, tmp_path / "alerts.yml")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _k2_command() -> list[str]:
    script = Path(sys.executable).with_name("k2")
    return [str(script)] if script.exists() else [sys.executable, "-m", "k2"]


def _wait_for(what: str, probe: Any, deadline_s: float) -> Any:
    """Poll ``probe()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except httpx.TransportError as exc:  # the server is not listening yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)  # polling a condition with a deadline, not synchronisation
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


#: How far in the past the test lake's only snapshot was committed.
LAKE_AGE_S = 2 * 3600


def _lake_committed_long_ago(data_dir: Path, hft: tuple[list[bytes], list[int]]) -> None:
    """A lake whose trades table's newest snapshot is :data:`LAKE_AGE_S` old: the sink
    stopped committing two hours ago.

    Iceberg stamps a snapshot with the writer's wall clock and takes no clock argument,
    so the writer's ``time.time`` runs two hours behind while it commits (it still
    advances, so nothing that waits on it stalls). The API under test runs in its own
    process with the real clock.
    """
    frames, received = hft
    trades = pa.Table.from_batches([FrameParser().parse(frames[:2000], received[:2000]).trades])
    tables = ensure_tables(catalog_from(LakeSettings(), data_dir))
    real_time = time.time
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: real_time() - LAKE_AGE_S)
        tables["trades"].append(sort_for(TABLE_DEFS["trades"], trades))
    snapshot = tables["trades"].current_snapshot()
    assert snapshot is not None
    assert snapshot.timestamp_ms / 1000 < real_time() - LAKE_AGE_S + 60


@pytest.fixture
def k2_api(tmp_path: Path, hft: tuple[list[bytes], list[int]]) -> Iterator[str]:
    """``k2 serve`` over a lake last committed two hours ago; yields its base URL."""
    data_dir = tmp_path / "k2"
    _lake_committed_long_ago(data_dir, hft)
    port = free_port()
    env = {
        **os.environ,
        "K2_DATA_DIR": str(data_dir),
        "K2_API__PORT": str(port),
        "K2_API__KEYS": key_entry("ops", "ops-test-key-0123456789abcdef"),
        "K2_API__DEV_KEY": "false",
    }
    env.pop("K2_CONFIG", None)
    log = (tmp_path / "k2-serve.log").open("wb")
    proc = subprocess.Popen([*_k2_command(), "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for("k2 serve /health", lambda: httpx.get(f"{base}/health").is_success, 60)
        yield base
    finally:
        code = _stop(proc, signal.SIGINT)
        log.close()
        assert code == 0, (tmp_path / "k2-serve.log").read_text()


@pytest.fixture
def prometheus_over(tmp_path: Path) -> Iterator[Any]:
    """Start a real Prometheus scraping a given API every second with K2's rules."""
    binary = prometheus()
    if binary is None:
        pytest.skip(NO_PROMETHEUS)
    procs: list[subprocess.Popen[bytes]] = []

    def start(api_base: str) -> str:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(_rules_without_for(tmp_path))],
            "scrape_configs": [
                {
                    "job_name": "k2-api",
                    "static_configs": [{"targets": [api_base.removeprefix("http://")]}],
                }
            ],
        }
        config_path = dump_yaml(config, tmp_path / "prometheus.yml")
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        _wait_for("prometheus ready", lambda: httpx.get(f"{url}/-/ready").is_success, 60)
        return url

    yield start
    for proc in procs:
        _stop(proc, signal.SIGTERM)


def _age(api: str) -> float | None:
    """The API's k2_lake_commit_age_seconds{table="trades"}, or None if not exported."""
    for family in text_string_to_metric_families(httpx.get(f"{api}/metrics").text):
        for sample in family.samples:
            if sample.name == "k2_lake_commit_age_seconds" and sample.labels == {"table": "trades"}:
                return float(sample.value)
    return None


def _firing(prom: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = httpx.get(f"{prom}/api/v1/alerts").json()["data"]["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


@pytest.mark.slow
def test_prometheus_fires_lake_stale_when_the_lake_stopped_committing(
    k2_api: str, prometheus_over: Any
) -> None:
    try:
        age = _wait_for("the API to export the trades table's age", lambda: _age(k2_api), 20)
    except AssertionError:
        pytest.fail(
            'k2 serve does not export k2_lake_commit_age_seconds{table="trades"}, which '
            "K2LakeStale needs; its /metrics:\n" + httpx.get(f"{k2_api}/metrics").text[:3000]
        )
    assert age > LAKE_AGE_S - 60
    prom = prometheus_over(k2_api)

    def lake_stale() -> list[dict[str, Any]]:
        return [
            a for a in _firing(prom)
            if a["labels"]["alertname"] == "K2LakeStale" and a["labels"]["table"] == "trades"
        ]  # fmt: skip

    (alert,) = _wait_for("K2LakeStale{table=trades} firing", lake_stale, 60)
    assert alert["labels"]["severity"] == "critical"
    assert "trades" in alert["annotations"]["summary"]
    names = {a["labels"]["alertname"] for a in _firing(prom)}
    assert "K2StageDown" not in names  # the API itself is up and scraped
    targets = httpx.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]

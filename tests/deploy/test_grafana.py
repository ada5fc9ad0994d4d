"""deploy/grafana: the provisioning files and the K2 overview dashboard's JSON model.

No Grafana runs here; the tests hold the dashboard to what Grafana needs (a uid, a
schema version, a datasource variable every query uses, panels on a 24-column grid
that do not overlap) and have promtool parse every query it sends.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_kit import (
    DEPLOY,
    NO_PROMTOOL,
    dashboard,
    dashboard_exprs,
    dump_yaml,
    load_yaml,
    promtool,
)

ROWS = ["Health", "Ingestion", "Storage", "Query", "System"]


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = dashboard()["panels"]
    return panels


def test_the_dashboard_is_identified_and_versioned() -> None:
    doc = dashboard()
    assert doc["uid"] == "k2-overview"
    assert doc["title"] == "K2 overview"
    assert 36 <= doc["schemaVersion"] <= 41
    assert doc["id"] is None  # provisioning assigns the id
    assert doc["timezone"] == "utc"  # K2's timestamps are UTC


def test_queries_go_through_the_datasource_variable() -> None:
    (variable,) = dashboard()["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource", "datasource", "prometheus"
    )  # fmt: skip
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_rows_are_health_ingestion_storage_query_system_each_with_panels() -> None:
    rows: list[str] = []
    counts: dict[str, int] = {}
    for panel in _panels():
        if panel["type"] == "row":
            rows.append(panel["title"])
            counts[panel["title"]] = 0
            assert panel["collapsed"] is False and panel["panels"] == []
        else:
            assert rows, f"{panel['title']} comes before the first row"
            counts[rows[-1]] += 1
    assert rows == ROWS
    assert all(n >= 3 for n in counts.values()), counts


def test_panels_fit_the_grid_without_overlapping() -> None:
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in _panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_panel_explains_itself() -> None:
    for panel in _panels():
        if panel["type"] != "row":
            assert len(panel.get("description", "")) > 20, panel["title"]
            assert panel["type"] in {"stat", "timeseries"}, panel["title"]


@pytest.mark.skipif(promtool() is None, reason=NO_PROMTOOL)
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule files: each query becomes a recording rule.
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"k2:dashboard_query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = dump_yaml(rules, tmp_path / "dashboard_rules.yml")
    tool = promtool()
    assert tool is not None
    done = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(exprs)} rules found" in done.stdout


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    (source,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus", "http://prometheus:9090", True
    )  # fmt: skip
    (provider,) = load_yaml(DEPLOY / "grafana/provisioning/dashboards/k2.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

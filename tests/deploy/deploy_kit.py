"""What the deploy tests share: where deploy/ is, its rules and dashboard, the metric
names their PromQL uses, and the Prometheus binaries (when installed)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # PyYAML: via dev deps; no stubs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "k2-overview.json"

#: Why a test that needs Prometheus' tools is skipped.
NO_PROMTOOL = "promtool not installed (Debian: apt-get install prometheus)"
NO_PROMETHEUS = "prometheus not installed (Debian: apt-get install prometheus)"

#: A metric selector: a name, optionally followed by ``{label matchers}``.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_GROUPING = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([0-9]+)"')
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
#: Grafana's interval variables, replaced by a literal range so promtool can parse.
_GRAFANA_VARS = re.compile(r"\$__(rate_interval|interval|range)")


@dataclass(frozen=True)
class Selector:
    """One metric a PromQL expression selects: the label names it matches on or groups
    by, and its matchers as ``(label, operator, value)``."""

    metric: str
    labels: frozenset[str]
    source: str
    matchers: tuple[tuple[str, str, str], ...] = ()


def load_yaml(path: Path) -> Any:
    """The parsed YAML document at ``path``."""
    return yaml.safe_load(path.read_text())


def dump_yaml(doc: Any, path: Path) -> Path:
    """Write ``doc`` as YAML to ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of deploy/prometheus/alerts.yml, in file order."""
    doc = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """The K2 overview dashboard's JSON model."""
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of every dashboard query, Grafana variables replaced."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], _GRAFANA_VARS.sub("5m", target["expr"])))
    return out


def selectors(expr: str, source: str) -> list[Selector]:
    """The K2 and process metrics ``expr`` selects, with the labels it matches on or
    groups by (functions, keywords and label names are not metrics: only ``k2_*`` and
    ``process_*`` names count).

    ``by (a, b) (inner)`` is attributed to the metric of ``inner`` when it selects only
    one; grouping over several metrics is not attributed.
    """
    strings: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        strings.append(match.group(1))
        return f'"{len(strings) - 1}"'

    text = _STRING.sub(placeholder, expr)
    found = []
    for match in _SELECTOR.finditer(text):
        name = match.group(1)
        if name.startswith(("k2_", "process_")):
            matchers = tuple(
                (label, op, strings[int(i)])
                for label, op, i in _MATCHER.findall(match.group(2) or "")
            )
            labels = frozenset(label for label, _, _ in matchers)
            found.append(Selector(name, labels, source, matchers))
    for match in _GROUPING.finditer(text):
        inner = _parenthesised(text, match.end() - 1)
        metrics = {s.metric for s in selectors(inner, source)}
        if len(metrics) == 1:
            grouped = frozenset(x.strip() for x in match.group(1).split(",") if x.strip())
            found.append(Selector(metrics.pop(), grouped, source))
    return found


def _parenthesised(text: str, start: int) -> str:
    """The text inside the parenthesis opening at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    raise ValueError(f"unbalanced parentheses in {text!r}")


def deploy_selectors() -> list[Selector]:
    """Every K2/process metric selected by the alert rules and the dashboard."""
    out = []
    for rule in alert_rules():
        out += selectors(rule["expr"], f"alert {rule['alert']}")
    for title, expr in dashboard_exprs():
        out += selectors(expr, f"panel {title!r}")
    return out


def promtool() -> str | None:
    """Path of promtool, or None."""
    return shutil.which("promtool")


def prometheus() -> str | None:
    """Path of the prometheus server binary, or None."""
    return shutil.which("prometheus")

"""``k2 status``: the platform at a glance.

Read from durable state, so it answers whether or not ``k2 up`` is running:

- stages: ``up.json`` (the supervisor's view) and each stage's own status file, live
  only while fresh (:func:`~k2.ops.status_files.is_fresh`);
- lag: per data topic, records the log holds that the lake has not committed (log end
  offsets minus the offsets stored in the lake's snapshots);
- last commit: the newest snapshot of each lake table, and its age;
- gaps: recorded gaps in the log's gaps topic, repaired vs unrepairable;
- dead letters: records in the dead-letter topics;
- degradation level and circuit breakers, as the ingest last reported them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow.compute as pc

from k2.config import Settings
from k2.log.base import Log, TopicPartition
from k2.ops.status_files import is_fresh, read_status, status_path

#: Lake table → the data type of the log topic it is fed from.
_FED_BY = {"trades": "trade", "quotes": "quote", "gaps": "gap"}


@dataclass
class PlatformStatus:
    """Everything ``k2 status`` shows (``as_dict`` is its JSON form)."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_records: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    degradation: dict[str, Any] = field(default_factory=dict)
    breakers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lake_lag(settings: Settings, log_: Log | None = None) -> dict[str, int]:
    """Per lake table fed by the log, the records the log holds beyond the lake's
    offsets (0 when the lake has everything)."""
    from k2.lake.catalog import open_catalog
    from k2.lake.sink_offsets import lake_offsets
    from k2.lake.tables import ensure_tables
    from k2.log.factory import open_log, topic_layout

    own = log_ is None
    log_ = log_ or open_log(settings)
    try:
        layout = topic_layout(settings)
        tables = ensure_tables(open_catalog(settings), settings.lake.namespace)
        lag: dict[str, int] = {}
        for name, data_type in _FED_BY.items():
            topic = layout.data_topic(data_type)
            if topic not in {t.name for t in log_.list_topics()}:
                lag[name] = 0
                continue
            ends, begins = log_.end_offsets(topic), log_.begin_offsets(topic)
            lake = lake_offsets(tables[name], topic)
            lag[name] = sum(
                max(0, end - max(lake.get(p, 0), begins.get(p, 0))) for p, end in ends.items()
            )
        return lag
    finally:
        if own:
            log_.close()


def gather(settings: Settings) -> PlatformStatus:
    """Collect :class:`PlatformStatus`; a part that cannot be read is named in
    ``errors`` instead of failing the whole report."""
    from k2.log.factory import open_log, topic_layout

    out = PlatformStatus()
    interval = settings.ops.status_interval_s
    up = read_status(status_path(settings, "up"))
    up_alive = is_fresh(up, interval)
    for name, info in ((up or {}).get("stages") or {}).items():
        out.stages[name] = {**info, "supervised": up_alive}
        if not up_alive:
            out.stages[name]["state"] = "not running"
    ingest = _stage_file(out, settings, "ingest")
    if ingest is not None:
        alive, status, entry = ingest
        entry.update(
            {
                "connections": status.get("connections", 0) if alive else 0,
                "trades": status.get("stats", {}).get("trades"),
                "quotes": status.get("stats", {}).get("quotes"),
                "reconnects": status.get("stream", {}).get("reconnects"),
            }
        )
        out.degradation = status.get("degradation") or {}
    sink = _stage_file(out, settings, "sink")
    if sink is not None:
        alive, status, entry = sink
        entry.update(
            {
                "commits": status.get("commits"),
                "buffered": status.get("buffered") if alive else 0,
                "dead_lettered": status.get("dead_lettered"),
            }
        )
    try:
        log_ = open_log(settings)
    except Exception as exc:
        out.errors.append(f"log: {exc}")
        return out
    try:
        layout = topic_layout(settings)
        topics = {t.name for t in log_.list_topics()}
        for data_type in ("trade", "quote", "gap"):
            topic = layout.data_topic(data_type)
            out.log_records[data_type] = _held(log_, topic) if topic in topics else 0
        for kind, topic in layout.dead_letter_topics().items():
            out.dead_letters[kind] = _held(log_, topic) if topic in topics else 0
        gap_topic = layout.data_topic("gap")
        if gap_topic in topics:
            out.gaps = _gap_counts(log_, gap_topic)
        try:
            out.lag = lake_lag(settings, log_)
            out.commits = _commits(settings)
        except Exception as exc:
            out.errors.append(f"lake: {exc}")
    finally:
        log_.close()
    return out


def _stage_file(
    out: PlatformStatus, settings: Settings, name: str
) -> tuple[bool, dict[str, Any], dict[str, Any]] | None:
    """Merge stage ``name``'s own status file into ``out``: its state, phase, metrics
    URL and breakers. Returns ``(alive, file, entry)`` for the stage's own fields, or
    ``None`` when the stage never wrote one."""
    status = read_status(status_path(settings, name))
    if status is None:
        return None
    alive = is_fresh(status, settings.ops.status_interval_s)
    entry = out.stages.setdefault(name, {})
    entry.update(
        {
            "state": entry.get("state", "running") if alive else "not running",
            "phase": status.get("phase") if alive else "stopped",
            "metrics_url": status.get("metrics_url"),
        }
    )
    out.breakers += [{**b, "stage": name} for b in status.get("breakers") or []]
    return alive, status, entry


def _held(log_: Log, topic: str) -> int:
    ends, begins = log_.end_offsets(topic), log_.begin_offsets(topic)
    return sum(end - begins.get(p, 0) for p, end in ends.items())


def _gap_counts(log_: Log, topic: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for partition, begin in log_.begin_offsets(topic).items():
        for batch in log_.read(TopicPartition(topic, partition), begin):
            for row in pc.value_counts(batch.records.column("status")).to_pylist():
                key = str(row["values"])
                counts[key] = counts.get(key, 0) + int(row["counts"])
    return counts


def _commits(settings: Settings) -> dict[str, dict[str, Any]]:
    from k2.lake.catalog import open_catalog
    from k2.lake.tables import ensure_tables

    now = time.time()
    commits: dict[str, dict[str, Any]] = {}
    for name, table in ensure_tables(open_catalog(settings), settings.lake.namespace).items():
        snapshot = table.current_snapshot()
        if snapshot is None:
            commits[name] = {"snapshot_id": None}
            continue
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        commits[name] = {
            "snapshot_id": snapshot.snapshot_id,
            "at": datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC).isoformat(),
            "age_s": round(now - snapshot.timestamp_ms / 1000, 1),
            "operation": snapshot.summary.operation.value if snapshot.summary else None,
            "rows": int(summary.get("total-records", 0)),
        }
    return commits


def render(status: PlatformStatus) -> Any:
    """``status`` as a rich renderable (a few small tables)."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    stages = Table("stage", "state", "pid", "restarts", "detail", title="Stages")
    if not status.stages:
        stages.add_row("-", "nothing has run here (start with `k2 up`)", "", "", "")
    for name, info in status.stages.items():
        detail = []
        if name == "ingest" and info.get("phase"):
            detail.append(f"{info['phase']}, {info.get('connections', 0)} connection(s)")
            if info.get("trades") is not None:
                detail.append(f"{info['trades']:,} trades, {info.get('quotes') or 0:,} quotes")
        if name == "sink" and info.get("phase"):
            detail.append(f"{info['phase']}, {info.get('commits') or 0:,} commits")
        if info.get("last_exit") is not None:
            detail.append(f"last exit {info['last_exit']}")
        stages.add_row(name, str(info.get("state", "?")), str(info.get("pid") or "-"),
                       str(info.get("restarts", 0)), "; ".join(detail))  # fmt: skip
    parts.append(stages)
    lake = Table("table", "in log, not in lake", "last commit", "age", "rows", title="Lake")
    for name, commit in status.commits.items():
        lake.add_row(
            name, f"{status.lag.get(name, 0):,}" if name in status.lag else "-",
            str(commit.get("at") or "never"),
            f"{commit['age_s']:,.0f} s" if commit.get("age_s") is not None else "-",
            f"{commit.get('rows', 0):,}",
        )  # fmt: skip
    parts.append(lake)
    health = Table("", "", title="Quality and resilience", show_header=False)
    gaps = ", ".join(f"{k} {v:,}" for k, v in sorted(status.gaps.items())) or "none"
    health.add_row("gaps recorded", gaps)
    letters = sum(status.dead_letters.values())
    health.add_row("dead letters", f"{letters:,}" + (" (k2 dlq list)" if letters else ""))
    level = status.degradation.get("level_name", "NORMAL" if status.stages else "-")
    health.add_row("degradation level", str(level))
    tripped = [b for b in status.breakers if str(b.get("state")).lower() != "closed"]
    breakers = ", ".join(
        f"{b.get('stage')}/{b.get('name')} {b.get('state')} ({b.get('last_error') or '-'})"
        for b in tripped
    ) or (f"all {len(status.breakers)} closed" if status.breakers else "-")
    health.add_row("circuit breakers", breakers)
    for error in status.errors:
        health.add_row("[red]unreadable[/]", error)
    parts.append(health)
    return Group(*parts)

"""Topics of the embedded log: validating, creating and looking them up."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from k2.errors import ConfigError, TerminalError
from k2.log.base import Retention, TopicPartition, TopicSpec
from k2.log.embedded_db import Database, LogStorageError
from k2.records import RECORD_TYPES

#: Kafka's rule for topic names, so a topic can move between the two logs unchanged.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as stored: its spec, the Arrow schema its segments were written with,
    and the row id (``pid``) of each partition, indexed by partition number."""

    spec: TopicSpec
    schema: pa.Schema
    pids: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    def pid(self, partition: int) -> int:
        """The row id of ``partition``; :class:`TerminalError` if out of range."""
        if not 0 <= partition < len(self.pids):
            raise TerminalError(
                f"topic {self.name} has partitions 0..{len(self.pids) - 1}, not {partition}"
            )
        return self.pids[partition]

    def partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.name, p) for p in range(len(self.pids))]


def validate(spec: TopicSpec) -> None:
    """Reject a spec no log could hold, naming the field (:class:`ConfigError`)."""
    if not _TOPIC_NAME.fullmatch(spec.name) or spec.name in (".", ".."):
        raise ConfigError(
            f"topic name {spec.name!r}: use 1-249 characters of A-Z a-z 0-9 . _ - (Kafka's rule)"
        )
    if spec.partitions < 1:
        raise ConfigError(f"topic {spec.name}: partitions must be >= 1, not {spec.partitions}")
    for label, value in (("max_age_us", spec.retention.max_age_us),
                         ("max_bytes", spec.retention.max_bytes)):  # fmt: skip
        if value is not None and value < 0:
            raise ConfigError(f"topic {spec.name}: retention {label} must be >= 0, not {value}")


def create(conn: sqlite3.Connection, spec: TopicSpec, now_us: int) -> None:
    """Create ``spec`` inside the caller's write transaction; an existing topic of the
    same record type and partition count is kept, with ``spec``'s retention (so a
    changed retention setting applies on the next start). Mismatch: :class:`ConfigError`.
    """
    row = conn.execute(
        "SELECT record_type, partitions FROM topics WHERE name = ?", (spec.name,)
    ).fetchone()
    retention = (spec.retention.max_age_us, spec.retention.max_bytes)
    if row is not None:
        record_type, partitions = row
        if record_type != spec.record_type.name or partitions != spec.partitions:
            raise ConfigError(
                f"topic {spec.name} exists with {partitions} partitions of {record_type!r}; "
                f"asked for {spec.partitions} partitions of {spec.record_type.name!r}"
            )
        conn.execute(
            "UPDATE topics SET max_age_us = ?, max_bytes = ? WHERE name = ?",
            (*retention, spec.name),
        )
        return
    schema = spec.record_type.arrow_schema().serialize().to_pybytes()
    conn.execute(
        "INSERT INTO topics (name, record_type, partitions, max_age_us, max_bytes, arrow_schema,"
        " created_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (spec.name, spec.record_type.name, spec.partitions, *retention, schema, now_us),
    )
    conn.executemany(
        "INSERT INTO partitions (topic, partition, begin_offset, next_offset, bytes)"
        " VALUES (?, ?, 0, 0, 0)",
        [(spec.name, p) for p in range(spec.partitions)],
    )


_SELECT = "SELECT name, record_type, partitions, max_age_us, max_bytes, arrow_schema FROM topics"


def load(db: Database, name: str) -> TopicInfo:
    """The stored topic ``name``; :class:`TerminalError` if there is none."""
    rows = db.query(f"{_SELECT} WHERE name = ?", (name,))
    if not rows:
        raise TerminalError(f"no topic {name!r} in log {db.path}")
    return _info(db, rows[0])


def load_all(db: Database) -> list[TopicInfo]:
    """Every stored topic, by name."""
    return [_info(db, row) for row in db.query(f"{_SELECT} ORDER BY name")]


def _info(db: Database, row: tuple[Any, ...]) -> TopicInfo:
    name, record_type, partitions, max_age_us, max_bytes, schema_blob = row
    rtype = RECORD_TYPES.get(record_type)
    if rtype is None:
        raise LogStorageError(
            f"topic {name} in {db.path} holds record type {record_type!r}, unknown to this K2"
        )
    pids = tuple(
        pid
        for (pid,) in db.query(
            "SELECT pid FROM partitions WHERE topic = ? ORDER BY partition", (name,)
        )
    )
    if len(pids) != partitions:
        raise LogStorageError(f"topic {name} in {db.path}: {len(pids)} of {partitions} partitions")
    spec = TopicSpec(name, rtype, partitions, Retention(max_age_us, max_bytes))
    return TopicInfo(spec, pa.ipc.read_schema(pa.py_buffer(schema_blob)), pids)

"""Log offsets kept in Iceberg snapshot summaries: how the lake knows where it ends.

Every sink commit stores, in the summary of the snapshot it creates, one property per
log topic it covers::

    k2.offsets.<topic> = {"<partition>": <next offset to read>, ...}   (JSON)

The map is *merged*: the committing sink's new offsets plus the offsets of every other
partition as the table showed them when the commit was prepared. The lake's position
in a topic is, per partition, the maximum over every retained snapshot's map, so a
snapshot written without offsets (compaction, a backfill) or with a stale view of
other partitions never moves the position back.

Maintenance that expires snapshots must keep the position: write the result of
:func:`offsets_properties` into the summary of any snapshot it creates (compaction),
or retain at least the newest snapshot that carries offsets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from k2.errors import TerminalError

if TYPE_CHECKING:
    from pyiceberg.table import Table

PREFIX = "k2.offsets."


def offsets_key(topic: str) -> str:
    """The summary property holding ``topic``'s offsets."""
    return PREFIX + topic


def encode_offsets(offsets: Mapping[int, int]) -> str:
    """``{partition: next_offset}`` as the JSON stored in a summary (sorted keys)."""
    return json.dumps({str(p): int(o) for p, o in sorted(offsets.items())}, separators=(",", ":"))


def decode_offsets(text: str) -> dict[int, int]:
    """The inverse of :func:`encode_offsets`; :class:`TerminalError` if malformed."""
    try:
        raw = json.loads(text)
        return {int(p): int(o) for p, o in raw.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise TerminalError(f"malformed lake offsets {text!r}: {exc}") from exc


def lake_positions(table: Table) -> dict[str, dict[int, int]]:
    """Per topic, per partition, the next log offset the lake needs (max over snapshots)."""
    positions: dict[str, dict[int, int]] = {}
    for snapshot in table.metadata.snapshots:
        if snapshot.summary is None:
            continue
        for key, value in snapshot.summary.additional_properties.items():
            if not key.startswith(PREFIX):
                continue
            topic = key[len(PREFIX) :]
            current = positions.setdefault(topic, {})
            for partition, offset in decode_offsets(value).items():
                if offset > current.get(partition, -1):
                    current[partition] = offset
    return positions


def lake_offsets(table: Table, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the next log offset the lake needs (as loaded:
    call ``table.refresh()`` first for the newest view). Partitions the lake never
    saw are absent."""
    return lake_positions(table).get(topic, {})


def offsets_properties(table: Table) -> dict[str, str]:
    """Summary properties that carry ``table``'s current lake position forward: pass
    them as ``snapshot_properties`` to any other commit (compaction, backfill)."""
    return {offsets_key(t): encode_offsets(o) for t, o in lake_positions(table).items()}

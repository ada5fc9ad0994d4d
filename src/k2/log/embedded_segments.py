"""Segments: how the embedded log stores and reads back records.

A segment is the chunk of one produce call that went to one partition, stored as ONE
row: its base offset, record count, log time, sizes, and a payload holding the rows as
one Arrow IPC record-batch message (no schema: the topic's schema is stored once),
compressed as a whole. Produce and consume therefore cost per batch, not per record.

Measured on the development VM with 10,000 TRADE rows (synthetic, 5 symbols): the IPC
message is 170 B/record; zstd (level 1) brings it to 29 B/record at 4.5 M records/s to
compress and 12 M records/s to decompress; lz4 gives 68 B/record at 7.6 M / 15 M
records/s. zstd is the default: ~2.3× less disk and WAL traffic for a cost far below
the rest of the produce path. Real captures compress less (see BENCHMARKS.md).

Every row of a segment shares one log time: a segment is written by one produce call
inside one transaction, so one time (taken inside that transaction) is both exact and
free to store, instead of a per-row column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from k2.log.base import LogBatch, TopicPartition
from k2.log.embedded_db import Database

Compression = Literal["zstd", "lz4", "none"]

#: Segments fetched per query while reading; bounds memory (a segment is at most the
#: size of one produced batch's partition chunk) and the work done between yields.
_SEGMENTS_PER_QUERY = 8

_READ_SQL = f"""
SELECT base_offset, count, max_log_us, raw_bytes, codec, payload FROM segments
WHERE pid = :pid
  AND base_offset >= coalesce(
      (SELECT max(base_offset) FROM segments WHERE pid = :pid AND base_offset <= :start), 0)
  AND base_offset < :end
ORDER BY base_offset
LIMIT {_SEGMENTS_PER_QUERY}
"""


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """One partition's rows of a produce call, ready to insert."""

    partition: int
    count: int
    payload: bytes
    raw_bytes: int
    codec: Compression


def encode(partition: int, rows: pa.RecordBatch, codec: Compression) -> EncodedChunk:
    """Serialise ``rows`` (already in the topic's schema) into a segment payload."""
    message = rows.serialize()
    if codec == "none":
        payload = message.to_pybytes()
    else:
        payload = pa.compress(message, codec=codec, asbytes=True)
    return EncodedChunk(partition, rows.num_rows, payload, message.size, codec)


def decode(payload: bytes, raw_bytes: int, codec: str, schema: pa.Schema) -> pa.RecordBatch:
    """The rows of a segment payload (zero-copy over the decompressed buffer)."""
    if codec == "none":
        buf = pa.py_buffer(payload)
    else:
        buf = pa.decompress(payload, decompressed_size=raw_bytes, codec=codec)
    return pa.ipc.read_record_batch(buf, schema)


def read_range(
    db: Database,
    tp: TopicPartition,
    pid: int,
    schema: pa.Schema,
    start: int,
    end: int,
    max_records: int,
    limit: int | None = None,
) -> Iterator[LogBatch]:
    """Records of one partition with ``start <= offset < end``, in offset order, in
    :class:`LogBatch` es of at most ``max_records`` rows (one or more per segment), and
    at most ``limit`` rows in all (``None``: no limit).

    Offsets deleted by retention are skipped. Each query reads a few segments and
    finishes before anything is yielded, so a paused iterator holds no read snapshot
    (which would stop WAL checkpoints) and no statement on the shared connection.
    """
    position = start
    left = end - start if limit is None else min(limit, end - start)
    while position < end and left > 0:
        rows = db.query(_READ_SQL, {"pid": pid, "start": position, "end": end})
        before = position
        for base, count, log_us, raw_bytes, codec, payload in rows:
            lo = max(position - base, 0)
            hi = min(count, end - base, lo + left)
            if hi <= lo:
                continue
            records = decode(payload, raw_bytes, codec, schema)
            for first in range(lo, hi, max_records):
                n = min(max_records, hi - first)
                yield LogBatch(
                    tp.topic,
                    tp.partition,
                    base + first,
                    records.slice(first, n),
                    log_time_us=pa.repeat(pa.scalar(log_us, pa.int64()), n),
                )
            position = base + hi
            left -= hi - lo
            if left <= 0:
                return
        if len(rows) < _SEGMENTS_PER_QUERY or position == before:
            return

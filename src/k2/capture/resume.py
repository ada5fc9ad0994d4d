"""Where a restarted capture picks up: the last trade id per symbol already in the log.

``k2 ingest`` (alone or under ``k2 up``) may stop at any moment, SIGKILL included. On
start it reads, per captured symbol, the highest ``trade_id`` the log already holds and
seeds the pipeline with it (:class:`~k2.capture.pipeline.CapturePipeline` ``resume``):

- trades at or below it are duplicates (the exchange re-sends nothing, but the REST
  repair of the outage would otherwise fetch trades the log already has);
- the first trade received after the restart opens a gap from it, which the normal gap
  repair fills from the exchange's trade history — so the outage loses nothing.

A symbol's trades all live in one partition (keyed by symbol). Repairs are produced a
little after the newer stream trades, so the newest records of a partition may be
older ids; the scan therefore reads backwards from the end until it has seen the symbol
*and* at least ``horizon`` records of its partition. A capture killed while a gap was
still in its grace period leaves a hole below its last id: the scan reports the holes
too, and the resumed capture treats them as open gaps (repaired after the grace).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from k2.log.base import Log, TopicPartition
from k2.log.partitioner import partition_for
from k2.log.topics import TopicLayout
from k2.ops.log import get_logger

log = get_logger(__name__)

#: Records read backwards per partition at least (more if a symbol is not met yet).
HORIZON = 100_000
_CHUNK = 50_000


@dataclass(frozen=True)
class ResumePoint:
    """Where one symbol's capture resumes: the highest ``last_id`` in the log, and the
    ``runs`` of ids the log holds (ascending, disjoint ``(first, last)``; the first run
    starts at the lowest id scanned and stands for everything before it). The holes
    between runs are trades a stopped capture had not repaired yet (a gap within its
    grace period when it was killed): the resumed capture repairs them."""

    last_id: int
    runs: tuple[tuple[int, int], ...]

    @property
    def holes(self) -> list[tuple[int, int]]:
        """The missing ``(first, last)`` id ranges between the runs."""
        return [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(self.runs)]


def last_trade_ids(
    log_: Log,
    layout: TopicLayout,
    symbols: Iterable[str],
    *,
    horizon: int = HORIZON,
) -> dict[str, ResumePoint]:
    """Per symbol with any trade in ``layout``'s trade topic, its
    :class:`ResumePoint`; symbols never captured are absent. Reads only the partitions
    of ``symbols``, backwards from their end."""
    topic = layout.data_topic("trade")
    wanted = sorted({s.upper() for s in symbols})
    if not wanted or topic not in {t.name for t in log_.list_topics()}:
        return {}
    partitions = layout.trade_partitions
    by_partition: dict[int, set[str]] = {}
    for symbol in wanted:
        by_partition.setdefault(partition_for(symbol, partitions), set()).add(symbol)
    begins, ends = log_.begin_offsets(topic), log_.end_offsets(topic)
    found: dict[str, ResumePoint] = {}
    for partition, names in sorted(by_partition.items()):
        begin, end = begins.get(partition, 0), ends.get(partition, 0)
        found.update(_scan(log_, TopicPartition(topic, partition), begin, end, names, horizon))
    if found:
        holes = sum(len(p.holes) for p in found.values())
        log.info("capture resumes after the log's last trades", symbols=len(found), holes=holes)
    return found


def _scan(
    log_: Log, tp: TopicPartition, begin: int, end: int, names: set[str], horizon: int
) -> dict[str, ResumePoint]:
    seen: dict[str, list[pa.Array]] = {}
    wanted = pa.array(sorted(names), pa.string())
    hi = end
    while hi > begin and (len(seen) < len(names) or end - hi < horizon):
        lo = max(begin, hi - _CHUNK)
        for batch in log_.read(tp, lo, hi, max_records=_CHUNK):
            rows = batch.records
            mine = rows.filter(pc.is_in(rows.column("symbol"), value_set=wanted))
            for name in pc.unique(mine.column("symbol")).to_pylist():
                ids = mine.filter(pc.equal(mine.column("symbol"), name)).column("trade_id")
                seen.setdefault(name, []).append(ids.cast(pa.int64()))
        hi = lo
    return {name: _point(pa.concat_arrays(parts)) for name, parts in seen.items()}


def _point(ids: pa.Array) -> ResumePoint:
    unique = pc.unique(ids)
    ordered = pc.take(unique, pc.sort_indices(unique)).to_pylist()
    runs: list[tuple[int, int]] = []
    for value in ordered:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return ResumePoint(last_id=ordered[-1], runs=tuple(runs))

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
*and* at least ``horizon`` records of its partition, and takes the maximum.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def last_trade_ids(
    log_: Log,
    layout: TopicLayout,
    symbols: Iterable[str],
    *,
    horizon: int = HORIZON,
) -> dict[str, int]:
    """The highest ``trade_id`` per symbol in ``layout``'s trade topic, for the symbols
    that have any; symbols never captured are absent. Reads only the partitions of
    ``symbols``, backwards from their end."""
    topic = layout.data_topic("trade")
    wanted = sorted({s.upper() for s in symbols})
    if not wanted or topic not in {t.name for t in log_.list_topics()}:
        return {}
    partitions = layout.trade_partitions
    by_partition: dict[int, set[str]] = {}
    for symbol in wanted:
        by_partition.setdefault(partition_for(symbol, partitions), set()).add(symbol)
    begins, ends = log_.begin_offsets(topic), log_.end_offsets(topic)
    found: dict[str, int] = {}
    for partition, names in sorted(by_partition.items()):
        begin, end = begins.get(partition, 0), ends.get(partition, 0)
        found.update(_scan(log_, TopicPartition(topic, partition), begin, end, names, horizon))
    if found:
        log.info("capture resumes after the log's last trades", symbols=len(found))
    return found


def _scan(
    log_: Log, tp: TopicPartition, begin: int, end: int, names: set[str], horizon: int
) -> dict[str, int]:
    best: dict[str, int] = {}
    wanted = pa.array(sorted(names), pa.string())
    hi = end
    while hi > begin and (len(best) < len(names) or end - hi < horizon):
        lo = max(begin, hi - _CHUNK)
        for batch in log_.read(tp, lo, hi, max_records=_CHUNK):
            rows = batch.records
            mine = rows.filter(pc.is_in(rows.column("symbol"), value_set=wanted))
            if mine.num_rows == 0:
                continue
            grouped = pa.table(mine.select(["symbol", "trade_id"])).group_by("symbol")
            for symbol, top in zip(*grouped.aggregate([("trade_id", "max")]).columns, strict=True):
                name, value = symbol.as_py(), top.as_py()
                if value is not None and value > best.get(name, -1):
                    best[name] = value
        hi = lo
    return best

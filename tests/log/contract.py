"""The behaviour every :class:`k2.log.base.Log` implementation must show.

One suite, run against each log (as pyiceberg runs one suite over every catalog). An
implementation's test module subclasses :class:`LogContract` and overrides one fixture::

    class TestEmbeddedLog(LogContract):
        @pytest.fixture
        def log_factory(self, tmp_path: Path, clock: ManualClock) -> LogFactory:
            return lambda: EmbeddedLog(tmp_path / "log", clock=clock)

``log_factory`` returns a function that opens a NEW handle on the SAME underlying log
every time it is called: that is how the tests "restart" a producer or a consumer. The
handles it opens should take their log time (the time a record was appended, which
drives time retention) from ``clock``, a :class:`ManualClock` the tests advance.

Tests use unique topic and group names, so a shared broker works, and never sleep to
synchronise: they poll until a condition holds, with a timeout as the failure guard.

Known deviations are declared, with the reason, as class attributes (see
:attr:`LogContract.supports_exact_end_offsets`); anything else a subclass cannot pass
it overrides with a ``pytest.skip("reason")``, so the deviation is visible in the
report. Both ``Log.close`` and ``Consumer.close`` must be safe to call twice.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from k2.errors import ConfigError, TerminalError
from k2.log.base import Consumer, Log, LogBatch, Produced, Retention, TopicPartition, TopicSpec
from k2.log.partitioner import partition_column, partition_for
from k2.records import DEAD_LETTER, QUOTE, TRADE

LogFactory = Callable[[], Log]

#: With 4 partitions these land in partitions 2, 1, 1, 3, 0 (Kafka's murmur2): every
#: partition is used and two symbols share one, so per-key order is tested under mixing.
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
PARTITIONS = 4

#: 2024-01-01T00:00:00Z in µs: the trade time of trade id 0 in the test batches.
T0_US = 1_704_067_200_000_000

#: A price that uses every digit decimal(18, 8) allows: must survive exactly.
MAX_DECIMAL = "9999999999.99999999"


class ManualClock:
    """A clock in UTC µs that moves only when told to; starts at the real time so a
    broker's own time checks see plausible timestamps."""

    def __init__(self, start_us: int | None = None) -> None:
        self.now_us = time.time_ns() // 1000 if start_us is None else start_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += round(seconds * 1_000_000)


def unique(prefix: str) -> str:
    """``prefix`` with a random suffix: topics and groups never collide across tests."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def trade_topic() -> str:
    return unique("market.crypto.trades.binance")


def dlq_topic() -> str:
    return unique("market.crypto.trades.binance.dlq")


def trade_batch(start_id: int, n: int, symbols: Sequence[str] = SYMBOLS) -> pa.RecordBatch:
    """``n`` TRADE rows with trade ids ``start_id ..``, symbols taken round-robin.

    Prices and quantities use all 8 decimal places (row ``start_id == 0`` carries the
    largest decimal(18, 8)); every third row has a null ``vendor_data``.
    """
    ids = list(range(start_id, start_id + n))
    syms = [symbols[i % len(symbols)] for i in ids]
    prices = [f"{60_000 + i % 997}.{(i * 7919) % 10**8:08d}" for i in ids]
    if start_id == 0 and n:
        prices[0] = MAX_DECIMAL
    qty = [f"0.{(i * 104_729) % 10**8:08d}" for i in ids]
    times = pa.array([T0_US + i * 1000 for i in ids], pa.int64())
    ts = times.cast(pa.timestamp("us", tz="UTC"))
    columns = {
        "message_id": pa.array([f"binance:{s}:{i}" for s, i in zip(syms, ids, strict=True)]),
        "trade_id": pa.array(ids, pa.int64()),
        "exchange": pa.array(["binance"] * n),
        "symbol": pa.array(syms),
        "asset_class": pa.array(["crypto"] * n),
        "timestamp": ts,
        "event_time": pc.add(times, 1).cast(pa.timestamp("us", tz="UTC")),
        "price": _decimal(prices),
        "quantity": _decimal(qty),
        "quote_quantity": _decimal(["1.00000000"] * n),
        "currency": pa.array(["USDT"] * n),
        "side": pa.array(["BUY" if i % 2 else "SELL" for i in ids]),
        "is_buyer_maker": pa.array([i % 2 == 0 for i in ids]),
        "source_sequence": pa.array(ids, pa.int64()),
        "ingestion_timestamp": pc.add(times, 2).cast(pa.timestamp("us", tz="UTC")),
        "vendor_data": pa.array([None if i % 3 == 0 else '{"M":true}' for i in ids]),
    }
    schema = TRADE.arrow_schema()
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def dead_letter_batch(raws: Sequence[bytes], source: str = "binance.ws") -> pa.RecordBatch:
    """A DEAD_LETTER batch with one row per raw payload (kept byte for byte)."""
    n = len(raws)
    at = pa.array([T0_US + i for i in range(n)], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    columns = {
        "data_type": pa.array(["trade"] * n),
        "reason": pa.array(["malformed_json"] * n),
        "detail": pa.array([f"payload {i} could not be parsed" for i in range(n)]),
        "raw": pa.array(list(raws), pa.binary()),
        "received_at": at,
        "source": pa.array([source] * n),
        "rejected_at": at,
    }
    schema = DEAD_LETTER.arrow_schema()
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def _decimal(values: list[str]) -> pa.Array:
    return pa.array(values, pa.string()).cast(pa.decimal128(18, 8))


def expected_by_partition(
    batches: Sequence[pa.RecordBatch], partitions: int
) -> dict[int, pa.Table]:
    """What each partition must hold after producing ``batches`` in order (by symbol)."""
    table = pa.Table.from_batches(batches)
    homes = partition_column(table.column("symbol"), partitions)
    return {p: table.filter(pc.equal(homes, p)) for p in range(partitions)}


def read_partition(log: Log, tp: TopicPartition, start: int = 0) -> tuple[list[int], pa.Table]:
    """Every record of ``tp`` from ``start`` to the end: (offsets, rows)."""
    return _concat(list(log.read(tp, start)), log.topic(tp.topic).record_type.arrow_schema())


def _concat(batches: Sequence[LogBatch], schema: pa.Schema) -> tuple[list[int], pa.Table]:
    offsets = [o for b in batches for o in b.offsets().to_pylist()]
    table = pa.Table.from_batches([b.records for b in batches], schema=schema)
    return offsets, table


def same_rows(got: pa.Table, want: pa.Table) -> bool:
    """Equal values and types, column for column (schema metadata aside)."""
    same_schema = bool(got.schema.equals(want.schema, check_metadata=False))
    return same_schema and bool(got.equals(want.cast(got.schema)))


@dataclass
class Collected:
    """Everything some consumers returned, by consumer index."""

    batches: list[list[LogBatch]] = field(default_factory=list)

    def rows(self, member: int | None = None) -> int:
        picked = self.batches if member is None else [self.batches[member]]
        return sum(b.records.num_rows for bs in picked for b in bs)

    def partitions_read(self, member: int) -> set[tuple[str, int]]:
        return {(b.topic, b.partition) for b in self.batches[member] if b.records.num_rows}

    def of(self, topic: str, partition: int, schema: pa.Schema) -> tuple[list[int], pa.Table]:
        """(offsets, rows) read from one partition by any consumer, in the order read."""
        mine = [
            b
            for bs in self.batches
            for b in bs
            if b.topic == topic and b.partition == partition and b.records.num_rows
        ]
        return _concat(mine, schema)

    def message_ids(self) -> list[str]:
        return [
            m for bs in self.batches for b in bs for m in b.records.column("message_id").to_pylist()
        ]


def poll_until(
    consumers: Sequence[Consumer],
    done: Callable[[Collected], bool],
    timeout_s: float,
    what: str,
    *,
    max_records: int = 50_000,
    exclusive: bool = True,
) -> Collected:
    """Poll every consumer in turn until ``done(collected)``; fail after ``timeout_s``.

    With ``exclusive``, after every poll no partition may be assigned to two of them
    (the fencing promise: at most one member owns a partition at any moment).
    """
    got = Collected([[] for _ in consumers])
    deadline = time.monotonic() + timeout_s
    while True:
        for i, c in enumerate(consumers):
            batches = c.poll(max_records=max_records, timeout_s=0.1)
            assert sum(b.records.num_rows for b in batches) <= max_records
            got.batches[i].extend(batches)
            if exclusive:
                _assert_disjoint(consumers)
        if done(got):
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}; got {got.rows()} rows")


def _assert_disjoint(consumers: Sequence[Consumer]) -> None:
    seen: dict[TopicPartition, int] = {}
    for i, c in enumerate(consumers):
        for tp in c.assignment():
            assert tp not in seen, f"{tp} owned by members {seen[tp]} and {i} at once"
            seen[tp] = i


def _all(topic: str, partitions: int = PARTITIONS) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in range(partitions)}


class Handles:
    """Opens log handles and consumers for one test and closes them all afterwards."""

    def __init__(self, factory: LogFactory) -> None:
        self._factory = factory
        self._logs: list[Log] = []
        self._consumers: list[Consumer] = []

    def open(self) -> Log:
        log = self._factory()
        self._logs.append(log)
        return log

    def consumer(
        self, log: Log, group: str, topics: Sequence[str], start: str = "earliest"
    ) -> Consumer:
        c = log.consumer(group, topics, start=start)
        self._consumers.append(c)
        return c

    def close(self) -> None:
        for c in self._consumers:
            c.close()
        for log in self._logs:
            log.close()


class LogContract:
    """The contract tests. Subclasses override :meth:`log_factory`."""

    #: End offsets (and so lag, and ``start="latest"``) match the next offset to be
    #: produced exactly. Tansu reports a wrong high watermark, so the Kafka-on-Tansu
    #: subclass sets this False; K2's correctness never depends on end offsets (the sink
    #: reads until poll returns nothing and commits what it read), only its lag metric.
    supports_exact_end_offsets: ClassVar[bool] = True

    #: Longest a group may take to settle after a member joins or leaves (Kafka
    #: rebalances take seconds; the embedded log's take one poll).
    settle_timeout_s: ClassVar[float] = 30.0

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def log_factory(self, tmp_path: Path, clock: ManualClock) -> LogFactory:
        raise NotImplementedError("a LogContract subclass must override the log_factory fixture")

    @pytest.fixture
    def handles(self, log_factory: LogFactory) -> Iterator[Handles]:
        h = Handles(log_factory)
        yield h
        h.close()

    def _exact_end_offsets(self) -> None:
        if not self.supports_exact_end_offsets:
            pytest.skip("known deviation: end offsets inexact (supports_exact_end_offsets = False)")

    def _trade_topic(self, log: Log, partitions: int = PARTITIONS, **retention: int | None) -> str:
        name = trade_topic()
        log.create_topic(TopicSpec(name, TRADE, partitions, Retention(**retention)))
        return name

    def _drain(self, consumer: Consumer, rows: int, what: str) -> Collected:
        return poll_until([consumer], lambda g: g.rows() >= rows, self.settle_timeout_s, what)

    def _assigned(self, consumers: Sequence[Consumer], want: Sequence[set[TopicPartition]]) -> None:
        """Poll until member ``i`` owns exactly ``want[i]`` with known positions; the
        records those polls return are discarded (callers seek or count afterwards)."""

        def settled(_: Collected) -> bool:
            return all(
                set(c.assignment()) == w and all(c.position(tp) is not None for tp in w)
                for c, w in zip(consumers, want, strict=True)
            )

        poll_until(consumers, settled, self.settle_timeout_s, f"assignment {want}", max_records=1)

    # -- topics --------------------------------------------------------------------

    def test_create_topic_is_idempotent_and_checks_shape(self, handles: Handles) -> None:
        log = handles.open()
        name = trade_topic()
        spec = TopicSpec(name, TRADE, PARTITIONS, Retention(max_age_us=3600_000_000))
        log.create_topic(spec)
        log.create_topic(spec)
        got = log.topic(name)
        assert (got.name, got.record_type, got.partitions) == (name, TRADE, PARTITIONS)
        assert name in {t.name for t in log.list_topics()}
        with pytest.raises(ConfigError):
            log.create_topic(TopicSpec(name, TRADE, PARTITIONS + 1))
        with pytest.raises(ConfigError):
            log.create_topic(TopicSpec(name, QUOTE, PARTITIONS))
        with pytest.raises(TerminalError):
            log.topic(unique("no.such.topic"))
        other = handles.open()
        assert other.topic(name).partitions == PARTITIONS

    def test_produce_rejects_unknown_topic_and_wrong_schema(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log)
        with pytest.raises(TerminalError):
            log.produce(unique("no.such.topic"), trade_batch(0, 10))
        with pytest.raises(TerminalError):
            log.produce(name, trade_batch(0, 10).drop_columns(["vendor_data"]))
        with pytest.raises(TerminalError):
            log.produce(name, dead_letter_batch([b"x"]), key_column="source")
        empty = log.produce(name, TRADE.empty_batch())
        assert empty.count == 0
        assert read_partition(log, TopicPartition(name, 0))[0] == []

    # -- produce and read ----------------------------------------------------------

    def test_produce_reports_where_each_partition_chunk_landed(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log)
        first, second = trade_batch(0, 101), trade_batch(101, 57)
        counts = _counts(first)
        p1 = log.produce(name, first)
        assert isinstance(p1, Produced)
        assert p1.topic == name
        assert p1.count == 101
        assert dict(p1.ranges) == {p: (0, n) for p, n in counts.items()}
        p2 = log.produce(name, second)
        assert dict(p2.ranges) == {p: (counts.get(p, 0), n) for p, n in _counts(second).items()}
        for p, (start, n) in p2.ranges.items():
            offsets, rows = read_partition(log, TopicPartition(name, p), start)
            assert offsets == list(range(start, start + n))
            homes = partition_column(second.column("symbol"), PARTITIONS)
            assert same_rows(rows, pa.Table.from_batches([second.filter(pc.equal(homes, p))]))

    def test_records_of_a_key_keep_their_order_in_their_partition(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log)
        # Uneven batches, one symbol-only batch, and a batch that skips some symbols.
        batches = [
            trade_batch(0, 250),
            trade_batch(250, 13, ["SOLUSDT"]),
            trade_batch(263, 400, ["ETHUSDT", "BTCUSDT", "SOLUSDT"]),
            trade_batch(663, 1, ["XRPUSDT"]),
        ]
        for b in batches:
            log.produce(name, b)
        expected = expected_by_partition(batches, PARTITIONS)
        for p in range(PARTITIONS):
            offsets, rows = read_partition(log, TopicPartition(name, p))
            assert offsets == list(range(len(offsets)))
            assert same_rows(rows, expected[p]), f"partition {p} differs from what was produced"
            for sym in set(rows.column("symbol").to_pylist()):
                assert partition_for(sym, PARTITIONS) == p, f"{sym} in partition {p}"
        # Exact decimals: the largest decimal(18, 8) and an 8th-place digit survive.
        btc = partition_for("BTCUSDT", PARTITIONS)
        first = read_partition(log, TopicPartition(name, btc))[1].slice(0, 1).to_pylist()[0]
        assert first["price"] == Decimal(MAX_DECIMAL)
        assert first["trade_id"] == 0
        assert first["vendor_data"] is None

    def test_read_returns_exact_offset_ranges(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log, partitions=1)
        tp = TopicPartition(name, 0)
        batches = [trade_batch(0, 50), trade_batch(50, 30), trade_batch(80, 70)]
        for b in batches:
            log.produce(name, b)
        everything = pa.Table.from_batches(batches)
        got = list(log.read(tp, 40, 120))
        offsets, rows = _concat(got, TRADE.arrow_schema())
        assert offsets == list(range(40, 120))
        assert same_rows(rows, everything.slice(40, 80))
        small = list(log.read(tp, 3, 150, max_records=16))
        assert all(0 < b.records.num_rows <= 16 for b in small)
        offsets, rows = _concat(small, TRADE.arrow_schema())
        assert offsets == list(range(3, 150))
        assert same_rows(rows, everything.slice(3))
        for b in small:  # LogBatch bookkeeping agrees with its rows
            assert b.offsets().to_pylist() == list(range(b.first_offset, b.next_offset))
            assert b.log_time_us is None or len(b.log_time_us) == b.records.num_rows
        assert _concat(list(log.read(tp, 10)), TRADE.arrow_schema())[0] == list(range(10, 150))
        assert list(log.read(tp, 150)) == []
        assert list(log.read(tp, 20, 20)) == []

    def test_no_acknowledged_record_is_lost(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log)
        rng = random.Random(7)
        acked: list[tuple[Produced, pa.RecordBatch]] = []
        next_id = 0
        for _ in range(40):
            n = rng.randint(1, 300)
            symbols = rng.sample(SYMBOLS, rng.randint(1, len(SYMBOLS)))
            batch = trade_batch(next_id, n, symbols)
            next_id += n
            acked.append((log.produce(name, batch), batch))
        log.close()
        reopened = handles.open()
        seen: list[str] = []
        for p in range(PARTITIONS):
            offsets, rows = read_partition(reopened, TopicPartition(name, p))
            assert offsets == list(range(len(offsets))), "offsets must be dense from 0"
            seen += rows.column("message_id").to_pylist()
        produced_ids = [m for _, b in acked for m in b.column("message_id").to_pylist()]
        assert sorted(seen) == sorted(produced_ids)
        # Each acknowledgement names exactly where its records are.
        for produced, batch in acked:
            homes = partition_column(batch.column("symbol"), PARTITIONS)
            for p, (start, n) in produced.ranges.items():
                _, rows = _concat(
                    list(reopened.read(TopicPartition(name, p), start, start + n)),
                    TRADE.arrow_schema(),
                )
                assert same_rows(rows, pa.Table.from_batches([batch.filter(pc.equal(homes, p))]))

    # -- consumer groups -----------------------------------------------------------

    def test_group_resumes_after_restart_from_committed_offsets(self, handles: Handles) -> None:
        log = handles.open()
        name, group = self._trade_topic(log), unique("k2-test-group")
        first = trade_batch(0, 300)
        log.produce(name, first)
        c = handles.consumer(log, group, [name])
        got = self._drain(c, 300, "the first 300 records")
        assert got.rows() == 300
        c.commit()
        ends = {p: len(t) for p, t in expected_by_partition([first], PARTITIONS).items()}
        tps = sorted(_all(name))
        assert c.committed(tps) == {tp: ends[tp.partition] for tp in tps}
        c.close()
        log.close()

        restarted = handles.open()
        second = trade_batch(300, 120)
        restarted.produce(name, second)
        c2 = handles.consumer(restarted, group, [name])
        assert c2.committed(tps) == {tp: ends[tp.partition] for tp in tps}
        got2 = self._drain(c2, 120, "the 120 records produced after the restart")
        assert sorted(got2.message_ids()) == sorted(second.column("message_id").to_pylist())
        for p in range(PARTITIONS):
            offsets, _ = got2.of(name, p, TRADE.arrow_schema())
            assert offsets == list(range(ends[p], ends[p] + len(offsets)))
        assert _no_rows(c2.poll(timeout_s=0.2)), "records delivered twice after a commit"

    def test_uncommitted_records_are_delivered_again(self, handles: Handles) -> None:
        log = handles.open()
        name, group = self._trade_topic(log, partitions=1), unique("k2-test-group")
        tp = TopicPartition(name, 0)
        batch = trade_batch(0, 100)
        log.produce(name, batch)
        c = handles.consumer(log, group, [name])
        assert self._drain(c, 100, "100 records").rows() == 100
        c.commit({tp: 40})
        c.close()
        log.close()

        again = handles.open()
        c2 = handles.consumer(again, group, [name])
        assert c2.committed([tp]) == {tp: 40}
        got = self._drain(c2, 60, "the 60 uncommitted records")
        offsets, rows = got.of(name, 0, TRADE.arrow_schema())
        assert offsets == list(range(40, 100))
        assert same_rows(rows, pa.Table.from_batches([batch]).slice(40))

    def test_committed_is_none_for_a_partition_never_committed(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log, partitions=2)
        c = handles.consumer(log, unique("k2-test-group"), [name])
        tps = [TopicPartition(name, 0), TopicPartition(name, 1)]
        assert c.committed(tps) == {tps[0]: None, tps[1]: None}

    def test_two_members_split_the_partitions(self, handles: Handles) -> None:
        first_log, second_log = handles.open(), handles.open()
        name, group = self._trade_topic(first_log), unique("k2-test-group")
        c1 = handles.consumer(first_log, group, [name])
        c2 = handles.consumer(second_log, group, [name])

        def split(_: Collected) -> bool:
            a1, a2 = set(c1.assignment()), set(c2.assignment())
            return bool(a1) and bool(a2) and a1 | a2 == _all(name)

        poll_until([c1, c2], split, self.settle_timeout_s, "both members to own partitions")
        batch = trade_batch(0, 400)
        first_log.produce(name, batch)
        got = poll_until([c1, c2], lambda g: g.rows() >= 400, self.settle_timeout_s, "400 rows")
        assert sorted(got.message_ids()) == sorted(batch.column("message_id").to_pylist())
        assert not got.partitions_read(0) & got.partitions_read(1), "a partition read twice"
        for i, c in enumerate((c1, c2)):
            assert got.partitions_read(i) <= {(tp.topic, tp.partition) for tp in c.assignment()}
        c1.commit()
        c2.commit()

        # The survivor takes over a leaving member's partitions, from its commits.
        c2.close()
        poll_until([c1], lambda _: set(c1.assignment()) == _all(name), self.settle_timeout_s,
                   "the survivor to own every partition")  # fmt: skip
        more = trade_batch(400, 50)
        first_log.produce(name, more)
        rest = self._drain(c1, 50, "the 50 records produced after the member left")
        assert sorted(rest.message_ids()) == sorted(more.column("message_id").to_pylist())

    def test_seek_then_poll_starts_at_the_offset(self, handles: Handles) -> None:
        log = handles.open()
        name, group = self._trade_topic(log, partitions=1), unique("k2-test-group")
        tp = TopicPartition(name, 0)
        batch = trade_batch(0, 100)
        log.produce(name, batch)
        c = handles.consumer(log, group, [name])
        self._assigned([c], [{tp}])
        for start in (37, 5, 99):
            c.seek(tp, start)
            assert c.position(tp) == start
            got = self._drain(c, 100 - start, f"records from offset {start}")
            offsets, rows = got.of(name, 0, TRADE.arrow_schema())
            assert offsets == list(range(start, 100))
            assert same_rows(rows, pa.Table.from_batches([batch]).slice(start))
            assert c.position(tp) == 100

    def test_poll_returns_at_most_max_records(self, handles: Handles) -> None:
        log = handles.open()
        name, group = self._trade_topic(log), unique("k2-test-group")
        batch = trade_batch(0, 500)
        log.produce(name, batch)
        c = handles.consumer(log, group, [name])
        got = poll_until([c], lambda g: g.rows() >= 500, self.settle_timeout_s, "500 rows",
                         max_records=64)  # fmt: skip
        assert sorted(got.message_ids()) == sorted(batch.column("message_id").to_pylist())
        for p in range(PARTITIONS):  # each partition's batches come in offset order
            offsets, _ = got.of(name, p, TRADE.arrow_schema())
            assert offsets == list(range(len(offsets)))

    def test_one_member_reads_several_topics(self, handles: Handles) -> None:
        log = handles.open()
        trades, dlq = self._trade_topic(log, partitions=2), dlq_topic()
        log.create_topic(TopicSpec(dlq, DEAD_LETTER, 1))
        log.produce(trades, trade_batch(0, 30))
        log.produce(dlq, dead_letter_batch([b"{", b"}"]), key_column="source")
        c = handles.consumer(log, unique("k2-test-group"), [trades, dlq])
        got = self._drain(c, 32, "records of both topics")
        assert {b.topic for bs in got.batches for b in bs if b.records.num_rows} == {trades, dlq}
        assert set(c.assignment()) == _all(trades, 2) | _all(dlq, 1)

    def test_latest_start_skips_what_was_there(self, handles: Handles) -> None:
        self._exact_end_offsets()
        log = handles.open()
        name = self._trade_topic(log)
        log.produce(name, trade_batch(0, 200))
        c = handles.consumer(log, unique("k2-test-group"), [name], start="latest")
        self._assigned([c], [_all(name)])
        new = trade_batch(200, 40)
        log.produce(name, new)
        got = self._drain(c, 40, "the 40 records produced after joining")
        assert sorted(got.message_ids()) == sorted(new.column("message_id").to_pylist())

    def test_end_offsets_and_lag(self, handles: Handles) -> None:
        self._exact_end_offsets()
        log = handles.open()
        name, group = self._trade_topic(log), unique("k2-test-group")
        batch = trade_batch(0, 333)
        log.produce(name, batch)
        counts = _counts(batch)
        assert log.end_offsets(name) == {p: counts.get(p, 0) for p in range(PARTITIONS)}
        assert log.begin_offsets(name) == dict.fromkeys(range(PARTITIONS), 0)
        c = handles.consumer(log, group, [name])
        self._drain(c, 333, "333 rows")
        half = {TopicPartition(name, p): n // 2 for p, n in counts.items()}
        c.commit(half)
        lag = log.lag(group, name)
        for tp, committed in half.items():
            assert lag[tp.partition] == counts[tp.partition] - committed

    # -- retention -----------------------------------------------------------------

    def test_retention_by_time_deletes_old_records(
        self, handles: Handles, clock: ManualClock
    ) -> None:
        log = handles.open()
        hour = 3600 * 1_000_000
        name = self._trade_topic(log, max_age_us=hour, max_bytes=None)
        old = trade_batch(0, 100)
        log.produce(name, old)
        clock.advance(2 * 3600)
        new = trade_batch(100, 100)
        log.produce(name, new)
        # A shared broker may hold other tests' expired topics too, hence ">=".
        assert log.enforce_retention() >= 100
        old_counts = _counts(old)
        assert log.begin_offsets(name) == {p: old_counts.get(p, 0) for p in range(PARTITIONS)}
        expected = expected_by_partition([new], PARTITIONS)
        for p in range(PARTITIONS):
            offsets, rows = read_partition(log, TopicPartition(name, p))
            assert offsets == list(range(old_counts.get(p, 0), old_counts.get(p, 0) + len(rows)))
            assert same_rows(rows, expected[p])
        c = handles.consumer(log, unique("k2-test-group"), [name])
        got = self._drain(c, 100, "the records retention kept")
        assert sorted(got.message_ids()) == sorted(new.column("message_id").to_pylist())

    def test_retention_by_size_deletes_oldest_records(self, handles: Handles) -> None:
        log = handles.open()
        name = self._trade_topic(log, partitions=1, max_age_us=None, max_bytes=1)
        keep = self._trade_topic(log, partitions=1, max_age_us=None, max_bytes=1 << 30)
        for i in range(5):
            log.produce(name, trade_batch(i * 100, 100))
            log.produce(keep, trade_batch(i * 100, 100))
        assert log.enforce_retention() >= 1
        begin = log.begin_offsets(name)[0]
        assert 0 < begin <= 400, "the oldest records go, the newest produce stays"
        offsets, rows = read_partition(log, TopicPartition(name, 0))
        assert offsets == list(range(begin, 500))
        assert rows.column("trade_id").to_pylist() == list(range(begin, 500))
        assert log.begin_offsets(keep) == {0: 0}
        assert len(read_partition(log, TopicPartition(keep, 0))[0]) == 500

    # -- dead letters --------------------------------------------------------------

    def test_dead_letters_keep_raw_payloads_byte_exact(self, handles: Handles) -> None:
        log = handles.open()
        name = dlq_topic()
        log.create_topic(TopicSpec(name, DEAD_LETTER, 1))
        rng = random.Random(11)
        raws = [
            b"",
            b"\x00",
            b'{"e":"trade","s":"BTCUSDT","p":"not-a-number"}',
            b"\xff\xfe\xfd invalid utf-8 \xc3\x28",
            bytes(range(256)),
            rng.randbytes(256 * 1024),
        ]
        batch = dead_letter_batch(raws)
        produced = log.produce(name, batch, key_column="source")
        assert dict(produced.ranges) == {0: (0, len(raws))}
        _, rows = read_partition(log, TopicPartition(name, 0))
        assert rows.column("raw").to_pylist() == raws
        assert same_rows(rows, pa.Table.from_batches([batch]))
        c = handles.consumer(log, unique("k2-test-dlq"), [name])
        got = self._drain(c, len(raws), "the dead letters")
        _, consumed = got.of(name, 0, DEAD_LETTER.arrow_schema())
        assert consumed.column("raw").to_pylist() == raws


def _counts(batch: pa.RecordBatch, partitions: int = PARTITIONS) -> dict[int, int]:
    """Rows per partition for ``batch`` (partitions with no row left out)."""
    homes = partition_column(batch.column("symbol"), partitions).to_pylist()
    counts: dict[int, int] = {}
    for p in homes:
        counts[p] = counts.get(p, 0) + 1
    return counts


def _no_rows(batches: list[LogBatch]) -> bool:
    return sum(int(b.records.num_rows) for b in batches) == 0

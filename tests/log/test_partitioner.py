"""Kafka's murmur2 partitioner: the vectors Kafka and librdkafka test themselves with."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2.errors import TerminalError
from k2.log.partitioner import murmur2, partition_column, partition_for, to_positive

# Signed 32-bit results of org.apache.kafka.common.utils.Utils.murmur2, as asserted in
# Kafka's UtilsTest (and in the Kafka client ports that copy it), every tail length.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"1": -1993445489,
    b"12": 126087238,
    b"123": -267702483,
    b"1234": -1614185708,
    b"12345": -1188365604,
}

# librdkafka's rdmurmur2.c unit test: toPositive(murmur2(key)), "java_murmur2_results".
LIBRDKAFKA_POSITIVE = {b"kafka": 1348980580, b"amqp": 767747138, b"giberish123456789": 257239820}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), LIBRDKAFKA_POSITIVE.items())
def test_positive_murmur2_matches_librdkafka(key: bytes, expected: int) -> None:
    assert to_positive(murmur2(key)) == expected


def test_partition_is_positive_hash_modulo_partitions() -> None:
    # toPositive masks the sign bit; abs() would differ for negative hashes.
    h = murmur2(b"foobar")
    assert h < 0
    assert partition_for("foobar", 7) == (h & 0x7FFFFFFF) % 7 != abs(h) % 7
    assert partition_for("foobar", 1) == 0
    with pytest.raises(TerminalError):
        partition_for("foobar", 0)


def test_symbols_used_by_the_contract_suite_spread_over_four_partitions() -> None:
    homes = [partition_for(s, 4) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")]
    assert homes == [2, 1, 1, 3, 0]


@given(st.lists(st.text(max_size=12), max_size=60), st.integers(1, 64))
def test_vectorised_column_agrees_with_one_key_at_a_time(keys: list[str], partitions: int) -> None:
    got = partition_column(pa.array(keys, pa.string()), partitions).to_pylist()
    assert got == [partition_for(k, partitions) for k in keys]


def test_column_accepts_binary_dictionary_chunked_and_null_keys() -> None:
    keys = ["BTCUSDT", "ETHUSDT", "BTCUSDT", "XRPUSDT"]
    want = [partition_for(k, 4) for k in keys]
    assert partition_column(pa.array([k.encode() for k in keys]), 4).to_pylist() == want
    assert partition_column(pa.array(keys).dictionary_encode(), 4).to_pylist() == want
    assert partition_column(pa.chunked_array([keys[:1], keys[1:]]), 4).to_pylist() == want
    with_null = partition_column(pa.array(["BTCUSDT", None]), 4).to_pylist()
    assert with_null == [partition_for("BTCUSDT", 4), partition_for(b"", 4)]
    assert partition_column(pa.array(keys), 1).to_pylist() == [0, 0, 0, 0]
    with pytest.raises(TerminalError):
        partition_column(pa.array([1, 2]), 4)

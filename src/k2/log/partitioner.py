"""Key → partition, exactly as Kafka's Java client places a keyed record.

Both logs place a record with key ``k`` in partition
``toPositive(murmur2(utf8(k))) % partitions`` — the Java producer's default for keyed
records, and librdkafka's ``murmur2_random`` partitioner (which the Kafka log
configures). So one symbol lands in the same partition whichever log carries it, and a
K2 topic written by a Java or Go Kafka client agrees with K2 on where a symbol lives.

Hashing is done once per *distinct* key of a batch (a batch of 10,000 trades has a
handful of symbols), then broadcast to the rows with Arrow's ``take``: per-record
Python work is nil.
"""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import TerminalError

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data`` as a *signed* 32-bit int (Java's ``int``).

    Same seed (``0x9747b28c``), little-endian 4-byte blocks and tail handling as
    ``org.apache.kafka.common.utils.Utils.murmur2`` and librdkafka's ``rd_murmur2``.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - (length & 3)
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = length & 3
    if tail:
        # Java's switch falls through: byte 2, then 1, then 0, then one multiply.
        if tail == 3:
            h ^= data[whole + 2] << 16
        if tail >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """Java's ``Utils.toPositive``: clear the sign bit (not ``abs``)."""
    return n & 0x7FFFFFFF


@functools.lru_cache(maxsize=65_536)
def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition of one key among ``partitions`` (strings are UTF-8 encoded)."""
    if partitions < 1:
        raise TerminalError(f"a topic needs at least one partition, not {partitions}")
    raw = key.encode() if isinstance(key, str) else key
    return to_positive(murmur2(raw)) % partitions


def partition_column(keys: pa.Array | pa.ChunkedArray, partitions: int) -> pa.Array:
    """The partition (int32) of every row of ``keys`` (a string or binary column).

    Null keys go to partition ``toPositive(murmur2(b"")) % partitions``: K2's records
    always carry their key, and a fixed home keeps a null-keyed run in order (Kafka
    would spread null keys at random instead).
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if partitions == 1:
        return pa.nulls(len(keys), pa.int32()).fill_null(0)
    if pa.types.is_dictionary(keys.type):
        encoded = keys
    elif pa.types.is_string(keys.type) or pa.types.is_binary(keys.type):
        encoded = pc.dictionary_encode(keys)
    else:
        raise TerminalError(f"partition key must be a string or binary column, not {keys.type}")
    distinct = encoded.dictionary.to_pylist()
    homes = pa.array([partition_for(k, partitions) for k in distinct], pa.int32())
    indices = encoded.indices.fill_null(len(distinct))
    if encoded.indices.null_count:
        homes = pa.concat_arrays([homes, pa.array([partition_for(b"", partitions)], pa.int32())])
    return homes.take(indices)

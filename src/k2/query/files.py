"""The lake's data files as the engine plans with them: one in-memory index per snapshot.

Planning a query must not touch the catalog or the manifests: that I/O would cost more
than reading the few files a selective query needs. So the engine builds, once per
snapshot, a :class:`SnapshotIndex` of every live data file with what Iceberg already
recorded about it (partition day and symbol bucket, record count, size, lower/upper
bounds of ``symbol``, ``exchange`` and ``timestamp``) and prunes with that alone.
Building is incremental: manifests are immutable, so a :class:`FileIndexer` parses each
manifest once and a new snapshot only costs its manifest list and its new manifests.

The bounds are Iceberg's column metrics: exact for timestamps; strings may be truncated
(16 characters), which keeps them valid bounds (the upper one is rounded up), only
looser. K2 never writes delete files; a snapshot with any is refused
(:class:`UnsupportedSnapshot`) rather than read wrongly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np

from k2.errors import ConfigError, TerminalError
from k2.ops.log import get_logger

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.io import FileIO
    from pyiceberg.table.metadata import TableMetadata

log = get_logger(__name__)

#: Sentinels for a missing timestamp bound (µs): a file without metrics may hold anything.
TS_MIN = -(2**62)
TS_MAX = 2**62


class UnsupportedSnapshot(TerminalError):
    """A snapshot the engine cannot read correctly (it has delete files)."""


@dataclass(frozen=True, slots=True)
class DataFile:
    """One live data file of a snapshot and what the manifests say about it.

    ``path`` is Iceberg's (``file:///...``, ``s3://...``); ``read_path`` is what DuckDB
    is given. Bounds are ``None`` when the file carries no metrics for the column;
    timestamps are UTC µs, inclusive.
    """

    path: str
    read_path: str
    record_count: int
    size: int
    day: int | None
    bucket: int | None
    symbol_lo: str | None
    symbol_hi: str | None
    exchange_lo: str | None
    exchange_hi: str | None
    ts_lo: int | None
    ts_hi: int | None
    #: The file's rows are ordered by symbol, then timestamp (its Iceberg
    #: ``sort_order_id`` names such an order; K2's writer sets it only after checking).
    symbol_sorted: bool = False

    @property
    def single_key(self) -> tuple[str, str] | None:
        """``(exchange, symbol)`` when every row of the file has the same pair, else None.

        Only provable when both bounds agree and are not truncated (a truncated upper
        bound differs from the lower one).
        """
        if (
            self.symbol_lo is not None
            and self.symbol_lo == self.symbol_hi
            and self.exchange_lo is not None
            and self.exchange_lo == self.exchange_hi
        ):
            return self.exchange_lo, self.symbol_lo
        return None

    def may_hold_symbol(self, symbol: str) -> bool:
        """False only when the bounds prove ``symbol`` is absent."""
        if self.symbol_lo is not None and symbol < self.symbol_lo:
            return False
        return not (self.symbol_hi is not None and symbol > self.symbol_hi)

    def may_hold_exchange(self, exchange: str) -> bool:
        """False only when the bounds prove ``exchange`` is absent."""
        if self.exchange_lo is not None and exchange < self.exchange_lo:
            return False
        return not (self.exchange_hi is not None and exchange > self.exchange_hi)


@dataclass(frozen=True)
class SnapshotIndex:
    """Every live data file of one snapshot (``snapshot_id`` None: the empty table).

    Pruning is vectorised over numpy arrays of the partition and timestamp bounds,
    then the string bounds are checked on the few survivors.
    """

    snapshot_id: int | None
    files: tuple[DataFile, ...]
    _bucket: np.ndarray = field(repr=False)
    _ts_lo: np.ndarray = field(repr=False)
    _ts_hi: np.ndarray = field(repr=False)

    @classmethod
    def build(cls, snapshot_id: int | None, files: Sequence[DataFile]) -> SnapshotIndex:
        """An index over ``files`` (in any order)."""
        return cls(
            snapshot_id,
            tuple(files),
            np.array([-1 if f.bucket is None else f.bucket for f in files], dtype=np.int64),
            np.array([TS_MIN if f.ts_lo is None else f.ts_lo for f in files], dtype=np.int64),
            np.array([TS_MAX if f.ts_hi is None else f.ts_hi for f in files], dtype=np.int64),
        )

    @property
    def total_records(self) -> int:
        """Rows in the snapshot (sum of record counts; no delete files exist)."""
        return sum(f.record_count for f in self.files)

    def prune(
        self,
        *,
        symbols: Iterable[str] | None = None,
        exchange: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> list[DataFile]:
        """Files that may hold rows of ``symbols`` (None: any) on ``exchange`` (None: any)
        with ``start_us <= timestamp < end_us`` (None: unbounded), in index order."""
        if not self.files:
            return []
        keep = np.ones(len(self.files), dtype=bool)
        wanted = None if symbols is None else sorted(set(symbols))
        if wanted is not None:
            buckets = [symbol_bucket(s) for s in wanted]
            if len(buckets) == 1:
                keep &= (self._bucket < 0) | (self._bucket == buckets[0])
            else:
                keep &= (self._bucket < 0) | np.isin(self._bucket, buckets)
        if start_us is not None:
            keep &= self._ts_hi >= start_us
        if end_us is not None:
            keep &= self._ts_lo < end_us
        out: list[DataFile] = []
        for i in np.flatnonzero(keep):
            f = self.files[i]
            if wanted is not None and not any(f.may_hold_symbol(s) for s in wanted):
                continue
            if exchange is not None and not f.may_hold_exchange(exchange):
                continue
            out.append(f)
        return out


@lru_cache(maxsize=65_536)
def symbol_bucket(symbol: str) -> int:
    """The ``bucket(16, symbol)`` partition value of ``symbol`` (Iceberg's murmur3)."""
    from pyiceberg.transforms import BucketTransform
    from pyiceberg.types import StringType

    from k2.lake.tables import SYMBOL_BUCKETS

    value = BucketTransform(SYMBOL_BUCKETS).transform(StringType())(symbol)
    assert value is not None  # only a None input hashes to None
    return int(value)


def read_path(path: str) -> str:
    """The path DuckDB reads for Iceberg file location ``path``.

    Local files become plain paths; ``s3://`` and ``s3a://`` become ``s3://`` (served by
    the filesystem :func:`duckdb_filesystem` registers). Other schemes are refused.
    """
    parsed = urlparse(path)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme else path
    if parsed.scheme in ("s3", "s3a"):
        return f"s3://{parsed.netloc}{parsed.path}"
    raise ConfigError(f"the query engine cannot read {parsed.scheme}:// files ({path})")


def duckdb_filesystem(io: FileIO, sample_path: str) -> Any:
    """An fsspec filesystem DuckDB can read ``s3://`` files with, from the table's FileIO.

    DuckDB's own S3 support is an extension K2 cannot download, so the table's pyarrow
    S3 filesystem (same endpoint, keys, region as pyiceberg uses) is wrapped for fsspec,
    with a block cache (:mod:`k2.query.objectstore`).
    """
    from k2.query.objectstore import CachingArrowFS

    parsed = urlparse(sample_path)
    fs_by_scheme = getattr(io, "fs_by_scheme", None)
    if fs_by_scheme is None:
        raise ConfigError("reading S3 files needs pyiceberg's PyArrowFileIO (unset py-io-impl)")
    return CachingArrowFS(fs_by_scheme(parsed.scheme, parsed.netloc))


class FileIndexer:
    """Builds :class:`SnapshotIndex` es, caching parsed manifests and recent indexes.

    Thread-safe. Keeps the indexes of the ``keep`` most recently used snapshots and the
    parsed manifests they reference; anything else is parsed again when asked for.
    """

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._indexes: OrderedDict[int, tuple[SnapshotIndex, tuple[str, ...]]] = OrderedDict()
        self._manifests: dict[str, tuple[DataFile, ...]] = {}

    def cached(self, snapshot_id: int | None) -> SnapshotIndex | None:
        """The index of ``snapshot_id`` if it is cached (None: the empty index), else
        ``None``; never reads anything."""
        if snapshot_id is None:
            return SnapshotIndex.build(None, ())
        with self._lock:
            hit = self._indexes.get(snapshot_id)
            if hit is None:
                return None
            self._indexes.move_to_end(snapshot_id)
            return hit[0]

    def index(self, metadata: TableMetadata, io: FileIO, snapshot_id: int | None) -> SnapshotIndex:
        """The index of ``snapshot_id`` in ``metadata`` (None: an empty index).

        Raises ``KeyError`` for an id ``metadata`` does not hold and
        :class:`UnsupportedSnapshot` when the snapshot has delete files.
        """
        if snapshot_id is None:
            return SnapshotIndex.build(None, ())
        with self._lock:
            hit = self._indexes.get(snapshot_id)
            if hit is not None:
                self._indexes.move_to_end(snapshot_id)
                return hit[0]
        snapshot = metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            raise KeyError(snapshot_id)
        schema = (
            metadata.schema_by_id(snapshot.schema_id) if snapshot.schema_id is not None else None
        )
        schema = schema or metadata.schema()
        decode = _BoundsDecoder(schema)
        specs = metadata.specs()
        sorted_ids = _symbol_time_orders(metadata)
        files: list[DataFile] = []
        paths: list[str] = []
        for manifest in snapshot.manifests(io):
            if int(manifest.content) != 0:
                raise UnsupportedSnapshot(
                    f"snapshot {snapshot_id} has delete files ({manifest.manifest_path}); "
                    "K2 never writes them and the query engine does not apply them"
                )
            paths.append(manifest.manifest_path)
            with self._lock:
                parsed = self._manifests.get(manifest.manifest_path)
            if parsed is None:
                parsed = tuple(
                    _data_file(e.data_file, decode, specs, snapshot_id, sorted_ids)
                    for e in manifest.fetch_manifest_entry(io, discard_deleted=True)
                )
                with self._lock:
                    self._manifests[manifest.manifest_path] = parsed
            files.extend(parsed)
        index = SnapshotIndex.build(snapshot_id, files)
        with self._lock:
            self._indexes[snapshot_id] = (index, tuple(paths))
            while len(self._indexes) > self._keep:
                self._indexes.popitem(last=False)
            live = {p for _, ps in self._indexes.values() for p in ps}
            for stale in [p for p in self._manifests if p not in live]:
                del self._manifests[stale]
        return index


class _BoundsDecoder:
    """Decodes the bounds K2 prunes with from a manifest entry's metrics."""

    def __init__(self, schema: Any) -> None:
        self._fields = {
            name: (schema.find_field(name).field_id, schema.find_field(name).field_type)
            for name in ("symbol", "exchange", "timestamp")
            if name in schema.column_names
        }

    def get(self, bounds: dict[int, bytes] | None, name: str) -> Any:
        from pyiceberg.conversions import from_bytes

        spec = self._fields.get(name)
        if spec is None or not bounds or spec[0] not in bounds:
            return None
        return from_bytes(spec[1], bounds[spec[0]])


def _symbol_time_orders(metadata: TableMetadata) -> frozenset[int]:
    """Ids of the table's sort orders that begin with symbol, then timestamp, both
    ascending and untransformed (nulls cannot occur: both columns are required)."""
    from pyiceberg.table.sorting import SortDirection
    from pyiceberg.transforms import IdentityTransform

    schema = metadata.schema()
    out = set()
    for order in metadata.sort_orders:
        lead = [
            schema.find_column_name(f.source_id)
            for f in order.fields[:2]
            if isinstance(f.transform, IdentityTransform) and f.direction == SortDirection.ASC
        ]
        if lead == ["symbol", "timestamp"]:
            out.add(order.order_id)
    return frozenset(out)


def _data_file(
    df: Any,
    decode: _BoundsDecoder,
    specs: dict[int, Any],
    snapshot_id: int,
    sorted_ids: frozenset[int] = frozenset(),
) -> DataFile:
    if int(df.content) != 0:
        raise UnsupportedSnapshot(
            f"snapshot {snapshot_id} has delete file {df.file_path}; "
            "K2 never writes them and the query engine does not apply them"
        )
    if str(df.file_format).upper().find("PARQUET") < 0:
        raise UnsupportedSnapshot(f"{df.file_path} is not Parquet ({df.file_format})")
    day: int | None = None
    bucket: int | None = None
    spec = specs.get(df.spec_id)
    if spec is not None:
        for i, pf in enumerate(spec.fields):
            value = df.partition[i]
            if pf.name == "timestamp_day" and value is not None:
                day = int(value)
            elif pf.name == "symbol_bucket" and value is not None:
                bucket = int(value)
    lower, upper = df.lower_bounds, df.upper_bounds
    return DataFile(
        path=df.file_path,
        read_path=read_path(df.file_path),
        record_count=int(df.record_count),
        size=int(df.file_size_in_bytes),
        day=day,
        bucket=bucket,
        symbol_lo=decode.get(lower, "symbol"),
        symbol_hi=decode.get(upper, "symbol"),
        exchange_lo=decode.get(lower, "exchange"),
        exchange_hi=decode.get(upper, "exchange"),
        ts_lo=decode.get(lower, "timestamp"),
        ts_hi=decode.get(upper, "timestamp"),
        symbol_sorted=df.sort_order_id is not None and int(df.sort_order_id) in sorted_ids,
    )


@dataclass(frozen=True, slots=True)
class RowGroup:
    """One Parquet row group's row count and statistics (None: not recorded).

    Timestamps are UTC µs; strings compare as their UTF-8 bytes do, like Python's.
    """

    rows: int
    symbol_lo: str | None
    symbol_hi: str | None
    exchange_lo: str | None
    exchange_hi: str | None
    ts_lo: int | None
    ts_hi: int | None
    #: String columns that hold one value in every row, by the statistics (min = max,
    #: no nulls), with that value: read without decoding (:meth:`FooterCache.read_group`).
    constants: tuple[tuple[str, str], ...] = ()
    #: String columns stored dictionary-encoded: read as Arrow dictionaries (cheaper
    #: than building every string).
    dictionaries: tuple[str, ...] = ()


class FooterCache:
    """Row-group statistics of data files, read once per file (files are immutable),
    and the minute partials stored beside them (:meth:`minutes`).

    ``opener(read_path)`` returns what ``pyarrow.parquet.read_metadata`` accepts (a
    path or an open file). Keeps ``max_files`` files' statistics (LRU). Thread-safe.
    """

    def __init__(self, opener: Any = None, max_files: int = 100_000) -> None:
        self._opener = opener
        self._max = max_files
        self._lock = threading.Lock()
        self._by_path: OrderedDict[str, tuple[RowGroup, ...]] = OrderedDict()
        # Parquet footers of the files read lately (bigger than the statistics: fewer).
        self._meta: OrderedDict[str, Any] = OrderedDict()
        self._minutes: OrderedDict[str, pa.Table] = OrderedDict()
        self._no_minutes: OrderedDict[str, None] = OrderedDict()
        self._open_files: OrderedDict[str, _OpenFile] = OrderedDict()

    def get(self, f: DataFile) -> tuple[RowGroup, ...]:
        """The row groups of ``f``, in file order."""
        with self._lock:
            hit = self._by_path.get(f.read_path)
            if hit is not None:
                self._by_path.move_to_end(f.read_path)
                return hit
        groups = self._read_footer(f)[0]
        with self._lock:
            self._by_path[f.read_path] = groups
            while len(self._by_path) > self._max:
                self._by_path.popitem(last=False)
        return groups

    def read_group(self, f: DataFile, group: int, columns: Sequence[str]) -> pa.Table | None:
        """Row group ``group`` of ``f``, ``columns`` only; ``None`` when the file lacks
        one of them (written before the column was added).

        Decodes only what varies: a string column the group's statistics prove
        constant is not read but made as a dictionary of that one value, and a
        dictionary-encoded string column comes as an Arrow dictionary. Such columns
        have dictionary types here: cast them (as ``scan.conform`` does) after
        selecting rows, which is cheaper than casting the group. Most of a small
        group's read is per-column cost, and K2's trades have four constant string
        columns per group (exchange, asset class, currency, vendor data).

        In a file whose footer says its message ids are ``exchange:SYMBOL:<id>``
        (:mod:`k2.lake.message_ids`), ``message_id`` is not read either: the table
        lacks it, carries the rule in its schema metadata and has the parts; call
        :func:`k2.lake.message_ids.complete` once rows are selected.
        """
        return self.read_groups(f, (group,), columns)

    def read_groups(
        self, f: DataFile, groups: Sequence[int], columns: Sequence[str]
    ) -> pa.Table | None:
        """Row groups ``groups`` of ``f`` in one read (one call's fixed cost for many
        groups), as :meth:`read_group` reads one: a column is made from statistics
        only where every one of the groups holds the same single value."""
        import pyarrow as pa

        from k2.lake import message_ids

        with self._lock:
            meta = self._meta.get(f.read_path)
            if meta is not None:
                self._meta.move_to_end(f.read_path)
        if meta is None:
            meta = self._read_footer(f)[1]
        if not set(columns) <= set(meta.schema.names):
            return None
        native = message_ids.rule(meta.metadata) if message_ids.COLUMN in columns else None
        if native is not None:
            # Built later for the rows kept (message_ids.complete), not decoded here.
            kept = [c for c in columns if c != message_ids.COLUMN]
            columns = kept + [c for c in (native, "exchange", "symbol") if c not in kept]
        in_file = self.get(f)
        stats = [in_file[g] for g in groups]
        constants = {name: value for name, value in stats[0].constants if name in columns}
        for other in stats[1:]:
            theirs = dict(other.constants)
            constants = {k: v for k, v in constants.items() if theirs.get(k) == v}
        wanted = [c for c in columns if c not in constants]
        read_dictionary = sorted(_dictionary_columns(in_file))
        with self._parquet(f, meta, read_dictionary) as parquet:
            table = parquet.read_row_groups(list(groups), columns=wanted)
        if constants:
            rows = table.num_rows
            zeros = pa.array(np.zeros(rows, dtype=np.int32))
            arrays = {name: table.column(name) for name in wanted}
            for name, value in constants.items():
                one = pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string()))
                arrays[name] = pa.chunked_array([one])
            table = pa.table({name: arrays[name] for name in columns})
        if native is not None:
            table = table.replace_schema_metadata({message_ids.FOOTER_KEY: native.encode()})
        return table

    def minutes(self, f: DataFile) -> pa.Table | None:
        """The minute partials stored beside ``f`` (:mod:`k2.lake.minutes`), all rows;
        ``None`` when it has none (remembered: files never change) or they cannot be
        read (then the caller reads the trades; a warning names the file). The last
        :data:`_MINUTES_KEPT` files' partials are kept."""
        import pyarrow.parquet as pq

        from k2.lake.minutes import minutes_path

        key = f.read_path
        with self._lock:
            if key in self._no_minutes:
                return None
            hit = self._minutes.get(key)
            if hit is not None:
                self._minutes.move_to_end(key)
                return hit
        path = minutes_path(key)
        try:
            with self._open(path) as source:
                table = pq.ParquetFile(source).read()
        except FileNotFoundError:
            with self._lock:
                self._no_minutes[key] = None
                while len(self._no_minutes) > self._max:
                    self._no_minutes.popitem(last=False)
            return None
        except (OSError, ValueError) as err:  # truncated, damaged, storage down
            log.warning("minute partials unreadable", data_file=f.path, partials=path,
                        error=str(err))  # fmt: skip
            return None
        with self._lock:
            self._minutes[key] = table
            while len(self._minutes) > _MINUTES_KEPT:
                self._minutes.popitem(last=False)
        return table

    def close(self) -> None:
        """Close the files kept open for reading (the cache stays usable)."""
        with self._lock:
            kept, self._open_files = list(self._open_files.values()), OrderedDict()
        for reader in kept:
            with reader.lock:
                reader.parquet.close()

    @contextmanager
    def _parquet(self, f: DataFile, meta: Any, read_dictionary: list[str]) -> Iterator[Any]:
        """A ``ParquetFile`` of ``f`` to read from: for a local file, one of the
        :data:`_OPEN_KEPT` kept open by earlier reads when no other thread is reading
        with it (opening a file costs ~0.3 ms of a ~1 ms row-group read), else one
        opened for this read."""
        import pyarrow.parquet as pq

        if self._opener is not None:
            with self._source(f) as source:
                yield pq.ParquetFile(source, metadata=meta, read_dictionary=read_dictionary)
            return
        with self._lock:
            kept = self._open_files.get(f.read_path)
            if kept is not None:
                self._open_files.move_to_end(f.read_path)
        if kept is None:
            parquet = pq.ParquetFile(f.read_path, metadata=meta, read_dictionary=read_dictionary)
            kept = _OpenFile(parquet, threading.Lock())
            with self._lock:
                self._open_files[f.read_path] = kept
                while len(self._open_files) > _OPEN_KEPT:
                    self._open_files.popitem(last=False)  # closed once unreferenced
        if not kept.lock.acquire(blocking=False):
            # Another thread reads with it (a reader is not safe to share): a fresh one.
            yield pq.ParquetFile(f.read_path, metadata=meta, read_dictionary=read_dictionary)
            return
        try:
            yield kept.parquet
        finally:
            kept.lock.release()

    @contextmanager
    def _source(self, f: DataFile) -> Iterator[Any]:
        """What pyarrow reads ``f`` from: its path, or a file the opener opens (closed
        after)."""
        with self._open(f.read_path) as source:
            yield source

    @contextmanager
    def _open(self, read_path: str) -> Iterator[Any]:
        if self._opener is None:
            yield read_path
            return
        with self._opener(read_path) as source:
            yield source

    def _read_footer(self, f: DataFile) -> tuple[tuple[RowGroup, ...], Any]:
        with self._source(f) as source:
            groups, meta = _row_groups(source)
        with self._lock:
            self._meta[f.read_path] = meta
            while len(self._meta) > _FOOTERS_KEPT:
                self._meta.popitem(last=False)
        return groups, meta


#: Parquet footers :class:`FooterCache` keeps for reading row groups directly.
_FOOTERS_KEPT = 4_096
#: Local data files :class:`FooterCache` keeps open for reading row groups.
_OPEN_KEPT = 32


@dataclass
class _OpenFile:
    """A ``pyarrow.parquet.ParquetFile`` kept open, and who is reading with it."""

    parquet: Any
    lock: threading.Lock


def _dictionary_columns(groups: Sequence[RowGroup]) -> set[str]:
    """String columns read as Arrow dictionaries from a file: those dictionary-encoded,
    or constant, in any of its row ``groups`` (one type for every group's read)."""
    out: set[str] = set()
    for g in groups:
        out.update(g.dictionaries)
        out.update(name for name, _ in g.constants)
    return out


#: Data files whose minute partials :class:`FooterCache` keeps (~100-400 KB each).
_MINUTES_KEPT = 64


def _row_groups(source: Any) -> tuple[tuple[RowGroup, ...], Any]:
    """The row groups' statistics and the file's Parquet metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(source)
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    where = {n: names.index(n) for n in ("symbol", "exchange", "timestamp") if n in names}
    micros = "timeUnit=microseconds" in str(meta.schema.column(where["timestamp"]).logical_type) \
        if "timestamp" in where else False  # fmt: skip
    # Top-level UTF-8 columns (a nested column's path has a dot; its rows are not the
    # group's rows).
    strings = [
        i
        for i in range(meta.num_columns)
        if "." not in names[i]
        and meta.schema.column(i).physical_type == "BYTE_ARRAY"
        and str(meta.schema.column(i).logical_type) == "String"
    ]
    out = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)

        def bounds(name: str, rg: Any = rg) -> tuple[Any, Any]:
            i = where.get(name)
            stats = None if i is None else rg.column(i).statistics
            if stats is None or not stats.has_min_max:
                return None, None
            return stats.min_raw, stats.max_raw

        sym = bounds("symbol")
        exch = bounds("exchange")
        constants: list[tuple[str, str]] = []
        dictionaries: list[str] = []
        for i in strings:
            chunk = rg.column(i)
            cs = chunk.statistics
            if (
                cs is not None
                and cs.has_min_max
                and cs.has_null_count
                and cs.null_count == 0
                and cs.min_raw == cs.max_raw
            ):
                constants.append((names[i], _text(cs.min_raw) or ""))
            elif any("DICTIONARY" in e for e in chunk.encodings):
                dictionaries.append(names[i])
        ts = bounds("timestamp") if micros else (None, None)
        out.append(
            RowGroup(
                rows=rg.num_rows,
                symbol_lo=_text(sym[0]),
                symbol_hi=_text(sym[1]),
                exchange_lo=_text(exch[0]),
                exchange_hi=_text(exch[1]),
                ts_lo=None if ts[0] is None else int(ts[0]),
                ts_hi=None if ts[1] is None else int(ts[1]),
                constants=tuple(constants),
                dictionaries=tuple(dictionaries),
            )
        )
    return tuple(out), meta


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)

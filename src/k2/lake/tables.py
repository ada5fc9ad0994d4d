"""K2's Iceberg tables: names, schemas (from :mod:`k2.records`), partitioning, sort order.

=====================  ===================================  =======================
table                  partitioning                         sort order
=====================  ===================================  =======================
``trades``             day(timestamp), bucket(16, symbol)   symbol, timestamp
``quotes``             day(timestamp), bucket(16, symbol)   symbol, timestamp
``reference_data``     none (a few thousand rows a day)     symbol, valid_from
``gaps``               none (rare rows)                     symbol, first_missing_id
=====================  ===================================  =======================

K2's queries are "one or a few symbols over a time range": ``day`` prunes the range,
``bucket(16, symbol)`` prunes symbols without a partition per symbol (thousands of
symbols would mean thousands of tiny files per day), and sorting by symbol then
timestamp inside each file lets Parquet row-group statistics prune further.
``reference_data`` and ``gaps`` are small enough that partitions would only add files.

Writers must sort each batch themselves (pyiceberg 0.12 records the sort order but
does not apply it): see :func:`sort_for`.

File properties (see :data:`WRITE_PROPERTIES`): zstd, row groups of at most 16,384
rows, 128 MiB target file size. Codec, measured on 1M realistic trades
(``benchmarks/datasets.py``: real BTCUSDT prices/sizes/times, 10 symbols), sorted by
symbol and time, one Parquet file (pyarrow 26):

============  ==========  ===========  ===========================
codec         row groups  bytes/trade  read one symbol (of 10)
============  ==========  ===========  ===========================
zstd          131,072     11.8         146 ms
zstd          1,048,576   8.1          681 ms
snappy        131,072     21.9         103 ms
snappy        1,048,576   17.4         695 ms
============  ==========  ===========  ===========================

zstd halves the size against snappy for a small read cost. Row-group size, measured
on one synthetic day of 3.3M trades over 100 symbols (``benchmarks/query_data.py``'s
generator, the 100M table's daily volume) written as compaction writes it (K2's
writer, zstd 9), K2's engine, 300 random symbols each (p50 / p99):

==========  ===========  ==============  ==========================
row groups  bytes/trade  last 100 trades  1-minute bars, symbol-day
==========  ===========  ==============  ==========================
131,072     16.80        8.2 / 17.9 ms   13.4 / 31.6 ms
32,768      16.89        7.3 / 16.0 ms   12.6 / 27.8 ms
16,384      16.95        7.3 / 15.0 ms   12.7 / 25.7 ms
==========  ===========  ==============  ==========================

Smaller groups, measured again with the engine of 2026-12-06 (row groups read straight
with pyarrow, bars from minute partials): on one synthetic day, 4,096-row groups cut
the last 100 trades p50 from 3.6 to 2.5 ms and a symbol's last 12 minutes from 5.5 to
3.7 ms, for 5.5% more bytes; but on the 100M benchmark lake rebuilt with them (24,888
groups instead of 6,710), DuckDB over the same files was twice as slow (the plain
scan's symbol-day questions p50 ~800 against ~380-450 ms; the trades-only bars p99
92 against 58-71 ms), and K2's SQL, its bars with the live tail and wide windows read
through DuckDB. So 16,384 stays.

K2's questions are selective (a symbol, a time range): smaller groups let row-group
statistics skip more, for under 1% in size. Sink micro-batches write files far below
the limits (bucketing spreads a batch over many files), so the limits mainly shape
compaction's output. A table keeps the properties it was created with; set
``write.parquet.row-group-limit`` on an older one to change it (compaction then
rewrites with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from k2.records import GAP, QUOTE, REFERENCE, TRADE, RecordType

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.table import Table
    from pyiceberg.table.sorting import SortOrder

#: The default namespace and the fully qualified default table names.
NAMESPACE = "market_data"
TRADES = f"{NAMESPACE}.trades"
QUOTES = f"{NAMESPACE}.quotes"
REFERENCE_DATA = f"{NAMESPACE}.reference_data"
GAPS = f"{NAMESPACE}.gaps"

#: Symbol hash buckets of trades and quotes.
SYMBOL_BUCKETS = 16

#: Rows per Parquet row group at most (see the module doc for the measurement).
ROW_GROUP_ROWS = 16_384

#: Table properties every K2 table gets.
WRITE_PROPERTIES: dict[str, str] = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.row-group-limit": str(ROW_GROUP_ROWS),
    "write.target-file-size-bytes": str(128 * 1024 * 1024),
    "k2.schema-version": "2",
}


@dataclass(frozen=True)
class TableDef:
    """One K2 table: its short name, record type, partition fields and sort columns."""

    name: str
    record_type: RecordType
    #: (source column, transform) pairs: ``("timestamp", "day")``, ``("symbol", "bucket")``.
    partition: tuple[tuple[str, str], ...]
    sort_by: tuple[str, str]

    def identifier(self, namespace: str = NAMESPACE) -> str:
        """``namespace.name``."""
        return f"{namespace}.{self.name}"


_MARKET_PARTITION = (("timestamp", "day"), ("symbol", "bucket"))

#: Short name → definition, for every K2 table.
TABLE_DEFS: dict[str, TableDef] = {
    d.name: d
    for d in (
        TableDef("trades", TRADE, _MARKET_PARTITION, ("symbol", "timestamp")),
        TableDef("quotes", QUOTE, _MARKET_PARTITION, ("symbol", "timestamp")),
        TableDef("reference_data", REFERENCE, (), ("symbol", "valid_from")),
        TableDef("gaps", GAP, (), ("symbol", "first_missing_id")),
    )
}

#: Canonical record name (``trade``, ``quote``, ``gap`` ...) → table short name.
TABLE_FOR_RECORD: dict[str, str] = {d.record_type.name: d.name for d in TABLE_DEFS.values()}


def partition_spec(table: TableDef) -> PartitionSpec:
    """The Iceberg partition spec of ``table`` (field ids from its record schema)."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import BucketTransform, DayTransform

    schema = table.record_type.iceberg_schema()
    fields = []
    for i, (column, kind) in enumerate(table.partition):
        transform: Any
        if kind == "day":
            transform = DayTransform()
        elif kind == "bucket":
            transform = BucketTransform(SYMBOL_BUCKETS)
        else:  # pragma: no cover - TABLE_DEFS is static
            raise ValueError(f"unknown partition transform {kind!r}")
        name = f"{column}_{kind}"
        fields.append(
            PartitionField(
                source_id=schema.find_field(column).field_id,
                field_id=1000 + i,
                transform=transform,
                name=name,
            )
        )
    return PartitionSpec(*fields)


def sort_order(table: TableDef) -> SortOrder:
    """The Iceberg sort order of ``table`` (ascending, nulls first)."""
    from pyiceberg.table.sorting import SortField, SortOrder
    from pyiceberg.transforms import IdentityTransform

    schema = table.record_type.iceberg_schema()
    return SortOrder(
        *(
            SortField(source_id=schema.find_field(c).field_id, transform=IdentityTransform())
            for c in table.sort_by
        )
    )


def ensure_tables(catalog: Catalog, namespace: str = NAMESPACE) -> dict[str, Table]:
    """Create ``namespace`` and every K2 table in it if missing; return short name → table.

    Idempotent and safe when several processes race to create the same table (the
    loser loads the winner's). An existing table is loaded as it is: its schema is not
    checked or evolved here.
    """
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError

    try:
        catalog.create_namespace_if_not_exists(namespace)
    except NamespaceAlreadyExistsError:
        pass  # a concurrent creator won the race
    except Exception:
        # The SQL catalog reports the same race as an integrity error of its own
        # tables; it is only a race if the namespace is there now.
        if (namespace,) not in {tuple(n) for n in catalog.list_namespaces()}:
            raise
    tables: dict[str, Table] = {}
    for name, table_def in TABLE_DEFS.items():
        identifier = table_def.identifier(namespace)
        if catalog.table_exists(identifier):
            tables[name] = catalog.load_table(identifier)
            continue
        try:
            tables[name] = catalog.create_table(
                identifier,
                schema=table_def.record_type.iceberg_schema(),
                partition_spec=partition_spec(table_def),
                sort_order=sort_order(table_def),
                properties=WRITE_PROPERTIES,
            )
        except TableAlreadyExistsError:
            tables[name] = catalog.load_table(identifier)
        except Exception:
            if not catalog.table_exists(identifier):  # not the race (see above): a real error
                raise
            tables[name] = catalog.load_table(identifier)
    return tables


def sort_for(table: TableDef, data: pa.Table) -> pa.Table:
    """``data`` sorted by ``table``'s sort columns (ascending), ready to append."""
    if data.num_rows <= 1:
        return data
    return data.sort_by([(c, "ascending") for c in table.sort_by])

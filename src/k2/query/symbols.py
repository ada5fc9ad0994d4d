"""Is a symbol known? Reference data, the lake's files, or the live tail says so.

A question about a symbol with no rows anywhere and no reference data is answered
with ``unknown-symbol`` (404) rather than an empty result, so a typo is not mistaken
for a quiet market. Cheapest evidence first: the reference data symbols (loaded when
its snapshot changes), the symbols files provably hold alone (manifest bounds), the
tail's rows, and only then the cached per-file coverage of files whose bounds merely
allow the symbol (:mod:`k2.query.coverage`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from k2.query.coverage import CoverageCache
from k2.query.files import SnapshotIndex

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.table import Table


class SymbolBook:
    """Decides which requested symbols are unknown. Thread-safe."""

    def __init__(self, coverage: CoverageCache, keep: int = 16) -> None:
        self._coverage = coverage
        self._keep = keep
        self._lock = threading.Lock()
        self._reference_snapshot: int | None = None
        self._reference: frozenset[str] = frozenset()
        self._exact: OrderedDict[int, frozenset[str]] = OrderedDict()

    def set_reference(self, table: Table) -> None:
        """Load the reference data symbols if ``table`` has a new current snapshot."""
        snap = table.metadata.current_snapshot()
        sid = None if snap is None else int(snap.snapshot_id)
        if sid == self._reference_snapshot:
            return
        symbols: frozenset[str] = frozenset()
        if sid is not None:
            rows = table.scan(snapshot_id=sid, selected_fields=("symbol",)).to_arrow()
            symbols = frozenset(str(s) for s in pc.unique(rows.column("symbol")).to_pylist())
        with self._lock:
            self._reference, self._reference_snapshot = symbols, sid

    def unknown(
        self,
        conn: duckdb.DuckDBPyConnection,
        symbols: Sequence[str],
        indexes: Sequence[SnapshotIndex],
        tails: Sequence[pa.Table],
    ) -> list[str]:
        """The ``symbols`` none of the evidence knows, in the order given."""
        remaining = [s for s in symbols if s not in self._reference]
        for index in indexes:
            exact = self._exact_symbols(index)
            remaining = [s for s in remaining if s not in exact]
        for rows in tails:
            if remaining and rows.num_rows:
                hit = rows.column("symbol").filter(
                    pc.is_in(rows.column("symbol"), value_set=pa.array(remaining, pa.string()))
                )
                seen = set(pc.unique(hit).to_pylist())
                remaining = [s for s in remaining if s not in seen]
        for index in indexes:
            if not remaining:
                break
            doubtful = [f for f in index.prune(symbols=remaining) if f.single_key is None]
            seen = {c.symbol for cov in self._coverage.get(conn, doubtful).values() for c in cov}
            remaining = [s for s in remaining if s not in seen]
        return remaining

    def _exact_symbols(self, index: SnapshotIndex) -> frozenset[str]:
        # Snapshot ids are random 63-bit numbers, unique across tables in practice.
        key = index.snapshot_id
        if key is None:
            return frozenset()
        with self._lock:
            hit = self._exact.get(key)
            if hit is not None:
                self._exact.move_to_end(key)
                return hit
        exact = frozenset(k[1] for f in index.files if (k := f.single_key) is not None)
        with self._lock:
            self._exact[key] = exact
            while len(self._exact) > self._keep:
                self._exact.popitem(last=False)
        return exact

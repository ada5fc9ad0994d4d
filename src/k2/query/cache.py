"""Answers from the lake, remembered per snapshot.

A snapshot's data files never change, so what the lake answered for a question at a
snapshot stays right as long as that snapshot is read: "the last 100 BTCUSDT trades"
asked again before the next commit costs a dictionary lookup. Keys always include
the snapshot id; a new commit simply stops the old entries from being asked for and
they age out (least recently used first, bounded by a total row count). Only lake
parts are kept; the live tail's rows are always read fresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import pyarrow as pa

V = TypeVar("V")


class SnapshotCache(Generic[V]):
    """An LRU of ``key → (rows, value)`` holding at most ``max_rows`` rows in total.

    ``max_rows = 0`` disables it. Thread-safe.
    """

    def __init__(self, max_rows: int) -> None:
        self._max = max_rows
        self._rows = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[int, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        """The value for ``key``, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: Hashable, value: V, rows: int) -> None:
        """Remember ``value`` (``rows`` rows) for ``key``; too big a value is not kept."""
        if rows > self._max // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._rows -= old[0]
            self._items[key] = (rows, value)
            self._rows += rows
            while self._rows > self._max and self._items:
                _, (evicted, _) = self._items.popitem(last=False)
                self._rows -= evicted


def table_rows(table: pa.Table) -> int:
    """The row count a cached table is charged (at least 1, so empty answers count)."""
    return max(1, int(table.num_rows))

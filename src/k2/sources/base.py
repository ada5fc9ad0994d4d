"""What every exchange source gives the capture pipeline.

A source turns an exchange's stream into :class:`ParsedBatch` es of canonical records
and can fetch a symbol's trade history by id (for gap repair). It never validates,
deduplicates or writes: those stages are shared and exchange-agnostic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from k2.quality.rejects import Reject


@dataclass(slots=True)
class ParsedBatch:
    """The canonical output of one batch of frames.

    ``trade_raw``/``quote_raw`` hold each row's original frame, aligned with the rows,
    so later rejects (validation) can still keep the raw payload.
    """

    trades: pa.RecordBatch
    trade_raw: list[bytes]
    quotes: pa.RecordBatch
    quote_raw: list[bytes]
    rejects: list[Reject] = field(default_factory=list)
    server_shutdowns: int = 0
    control_replies: int = 0


class Source(Protocol):
    """An exchange feed: canonical batches out, trade history on request."""

    @property
    def exchange(self) -> str:
        """Exchange name as it appears in records (``binance``)."""
        ...

    @property
    def known_symbols(self) -> frozenset[str]:
        """Symbols the exchange lists (from its reference data); empty before start."""
        ...

    @property
    def reference(self) -> pa.RecordBatch:
        """Reference data fetched at start (k2.records.REFERENCE)."""
        ...

    async def start(self) -> None:
        """Fetch reference data and open the stream. Raises on unknown symbols."""
        ...

    def batches(self) -> AsyncIterator[ParsedBatch]:
        """Parsed batches until :meth:`stop` has drained the stream."""
        ...

    async def fetch_trades(self, symbol: str, from_id: int, limit: int) -> pa.RecordBatch:
        """Up to ``limit`` trades of ``symbol`` with id ≥ ``from_id``, in id order."""
        ...

    def take_rejects(self) -> list[Reject]:
        """Rejects produced outside :meth:`batches` (e.g. in REST replies) since last call."""
        ...

    async def stop(self) -> None:
        """Stop receiving; frames already received still come out of :meth:`batches`."""
        ...

    async def aclose(self) -> None:
        """Release every resource; called once, after the last :meth:`fetch_trades`."""
        ...

"""The soak's verdict on the data: is every trade the exchange printed in the lake once?

Per symbol, the captured range runs from the first trade K2 received (the lake's
lowest id; nothing before the first connection can be expected) to the last trade the
simulator had printed when the soak asked the platform to stop (K2 promises those:
on a clean stop the ingest fetches what was printed after each symbol's last received
trade), or the lake's highest id if K2 got further. Within that range:

- **lost**: ids the simulator printed that the lake does not hold;
- **duplicated**: lake rows beyond the first of each id;
- **foreign**: lake ids the simulator never printed (must be none).

The simulator's synthetic trade ids are consecutive per symbol; the check does not
assume it but verifies it (count = last − first + 1 over the whole history), after
which "every id in the range" is exact without materialising millions of ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2.config import Settings
from k2.simulator.tape import TradeHistory

__all__ = ["DataCheck", "SymbolCheck", "audit_trade_ids", "check_lake", "lake_gap_statuses"]


@dataclass(frozen=True)
class SymbolCheck:
    """The check of one symbol (ids inclusive; ``first``/``last`` None: no lake rows)."""

    symbol: str
    first: int | None
    last: int | None
    expected: int
    rows: int
    lost: int
    duplicated: int
    foreign: int
    history_contiguous: bool


@dataclass(frozen=True)
class DataCheck:
    """Every symbol's check, and the totals."""

    symbols: list[SymbolCheck]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.symbols)

    @property
    def expected(self) -> int:
        return sum(s.expected for s in self.symbols)

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.symbols)

    @property
    def duplicated(self) -> int:
        return sum(s.duplicated for s in self.symbols)

    @property
    def foreign(self) -> int:
        return sum(s.foreign for s in self.symbols)

    @property
    def exact(self) -> bool:
        """Nothing lost, duplicated or foreign, every history verified, and not empty."""
        return (
            self.rows > 0
            and self.lost == 0
            and self.duplicated == 0
            and self.foreign == 0
            and all(s.history_contiguous for s in self.symbols)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "expected": self.expected,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "foreign": self.foreign,
            "exact": self.exact,
            "symbols": [asdict(s) for s in self.symbols],
        }


def _lake_trade_ids(settings: Settings) -> pa.Table:
    from k2.lake.catalog import open_catalog
    from k2.lake.tables import ensure_tables

    table = ensure_tables(open_catalog(settings), settings.lake.namespace)["trades"]
    return table.scan(selected_fields=("symbol", "trade_id")).to_arrow()


def check_lake(
    settings: Settings,
    history: TradeHistory,
    symbols: Sequence[str],
    *,
    started: Mapping[str, int | None],
    stopped: Mapping[str, int | None],
) -> DataCheck:
    """:func:`audit_trade_ids` of every trade in the lake of ``settings``."""
    return audit_trade_ids(
        _lake_trade_ids(settings), history, symbols, started=started, stopped=stopped
    )


def audit_trade_ids(
    ids: pa.Table,
    history: TradeHistory,
    symbols: Sequence[str],
    *,
    started: Mapping[str, int | None],
    stopped: Mapping[str, int | None],
) -> DataCheck:
    """Compare ``ids`` (``symbol``, ``trade_id`` of every lake row) with ``history``
    (the simulator's, kept in full), symbol by symbol (see the module docstring).

    ``started``/``stopped``: per symbol, the simulator's last printed id when the ingest
    first connected and when the stop was asked (None: nothing printed yet). A symbol
    without lake rows is expected to hold everything printed between the two.
    """
    aggregated = ids.group_by("symbol").aggregate(
        [("trade_id", "min"), ("trade_id", "max"), ("trade_id", "count"),
         ("trade_id", "count_distinct")]
    )  # fmt: skip
    lake = {row["symbol"]: row for row in aggregated.to_pylist()}
    checks = [
        _audit_symbol(
            symbol, ids, lake.get(symbol), history, started.get(symbol), stopped.get(symbol)
        )
        for symbol in symbols
    ]
    for symbol in sorted(set(lake) - set(symbols)):  # never traded: every row is foreign
        held = lake[symbol]
        rows = int(held["trade_id_count"])
        low, high = int(held["trade_id_min"]), int(held["trade_id_max"])
        checks.append(SymbolCheck(symbol, low, high, 0, rows, 0, 0, rows, True))
    return DataCheck(checks)


def _audit_symbol(
    symbol: str,
    ids: pa.Table,
    held: dict[str, Any] | None,
    history: TradeHistory,
    started: int | None,
    stopped: int | None,
) -> SymbolCheck:
    first_row = next(iter(history.rows(symbol, 0, 1)), None)
    sim_first = first_row.trade_id if first_row is not None else None
    sim_last = history.last_id(symbol)
    contiguous = sim_first is None or (
        sim_last is not None and history.count(symbol) == sim_last - sim_first + 1
    )
    rows = duplicated = foreign = distinct = 0
    low = high = None
    if held is not None:
        rows, distinct = int(held["trade_id_count"]), int(held["trade_id_count_distinct"])
        duplicated = rows - distinct
        low, high = int(held["trade_id_min"]), int(held["trade_id_max"])
        if sim_first is None or sim_last is None:
            foreign, distinct, low, high = distinct, 0, None, None
        elif low < sim_first or high > sim_last:
            # Set the ids the simulator never printed apart; audit the rest.
            column = ids.filter(pc.equal(ids.column("symbol"), symbol)).column("trade_id")
            inside = column.filter(
                pc.and_(pc.greater_equal(column, sim_first), pc.less_equal(column, sim_last))
            )
            inside_distinct = pc.count_distinct(inside).as_py() if len(inside) else 0
            foreign, distinct = distinct - inside_distinct, inside_distinct
            low = pc.min(inside).as_py() if len(inside) else None
            high = pc.max(inside).as_py() if len(inside) else None
    if low is None or high is None:
        # Nothing of this symbol captured: everything printed between the connection
        # and the stop was lost (if nothing was printed in between, nothing was due).
        begin = started if started is not None else (sim_first - 1 if sim_first else 0)
        expected = max(0, (stopped or 0) - begin)
        return SymbolCheck(
            symbol=symbol, first=None, last=None, expected=expected, rows=rows,
            lost=expected, duplicated=duplicated, foreign=foreign, history_contiguous=contiguous,
        )  # fmt: skip
    end = max(high, stopped) if stopped is not None else high
    expected = end - low + 1
    return SymbolCheck(
        symbol=symbol, first=low, last=high, expected=expected, rows=rows,
        lost=expected - distinct, duplicated=duplicated, foreign=foreign,
        history_contiguous=contiguous,
    )  # fmt: skip


def lake_gap_statuses(settings: Settings) -> dict[str, int]:
    """Gaps the lake's gaps table records, counted by status (repaired, unrepairable)."""
    from k2.lake.catalog import open_catalog
    from k2.lake.tables import ensure_tables

    table = ensure_tables(open_catalog(settings), settings.lake.namespace)["gaps"]
    statuses = table.scan(selected_fields=("status",)).to_arrow().column("status")
    if len(statuses) == 0:
        return {}
    return {str(row["values"]): int(row["counts"]) for row in pc.value_counts(statuses).to_pylist()}

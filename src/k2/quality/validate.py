"""Validation of canonical trade and quote batches.

The parser guarantees shape (every column present, typed as in :mod:`k2.records`);
this stage checks *meaning*: positive prices, sane quantities, a known symbol, a
timestamp that is not from the future, an uncrossed book. Each function returns the
valid rows with their raw frames still aligned, and one :class:`Reject` per invalid
row carrying the raw frame, so nothing received is lost.

Rules run vectorised over the whole batch. A row that breaks several rules is
rejected once, for the *first* rule it breaks, in this order (identity, then time,
then values), so the same bad row always lands under the same reason:

trades
    1. ``UNKNOWN_SYMBOL`` — ``symbol`` not in ``known_symbols`` (only when given)
    2. ``FUTURE_TIMESTAMP`` — ``timestamp``, then ``event_time``, later than
       ``now_us + max_future_us``
    3. ``NON_POSITIVE_PRICE`` — ``price <= 0``
    4. ``NON_POSITIVE_QUANTITY`` — ``quantity <= 0``

quotes
    1. ``UNKNOWN_SYMBOL``
    2. ``FUTURE_TIMESTAMP`` — ``timestamp``
    3. ``NON_POSITIVE_PRICE`` — ``bid_price <= 0``, then ``ask_price <= 0``
    4. ``NON_POSITIVE_QUANTITY`` — ``bid_quantity < 0``, then ``ask_quantity < 0``
    5. ``CROSSED_BOOK`` — ``bid_price > ask_price``

Quote decisions, and why:

- *An empty side is rejected.* Binance's documentation does not say how an empty
  side of the book is shown, and its best bid/ask payloads have no "absent" marker;
  public responses of its ticker endpoints for halted or delisted symbols (kept as
  test fixtures by several client libraries) show it as price ``0.00000000`` with
  quantity ``0.00000000``. The canonical quote requires both prices, and a zero
  price would poison spreads and mids downstream, so such a row is rejected as
  ``NON_POSITIVE_PRICE``; its raw frame goes to the dead letters and can be replayed.
- *A zero quantity with a positive price is accepted* (``>= 0``), as asked by the
  design; only a negative quantity is impossible.
- *A locked book (``bid_price == ask_price``) is accepted*; only ``bid > ask`` is
  crossed. A continuous matching engine cannot rest a locked book, but this code is
  exchange-neutral and some venues legitimately report locked quotes (auctions,
  aggregated feeds); rejecting them would drop real data.

A null in a checked column fails that column's rule (detail ``field=null``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from k2.quality.rejects import Reject, RejectReason

__all__ = ["validate_quotes", "validate_trades"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Validated = tuple[pa.RecordBatch, list[bytes], list[Reject]]


class _Rule:
    """One check: the rows it fails (a boolean array, nulls already counted as failing)
    and how to describe a failing row."""

    __slots__ = ("describe", "failed", "reason")

    def __init__(
        self, reason: RejectReason, failed: pa.BooleanArray, describe: Callable[[int], str]
    ) -> None:
        self.reason = reason
        self.failed = failed
        self.describe = describe


def validate_trades(
    batch: pa.RecordBatch,
    raw: list[bytes],
    *,
    known_symbols: frozenset[str] | None,
    now_us: int,
    max_future_us: int,
    source: str,
) -> Validated:
    """Split a TRADE batch into valid rows and rejects.

    ``raw[i]`` is the frame row ``i`` came from. Returns ``(valid, valid_raw, rejects)``:
    ``valid`` keeps the input's row order and schema and ``valid_raw`` stays aligned
    with it; each reject carries the row's raw frame, the first rule it failed (order in
    the module docstring), and the row's ``ingestion_timestamp`` (UTC µs) as
    ``received_us``. ``now_us`` is the current UTC time in µs; a timestamp or
    event_time later than ``now_us + max_future_us`` is from the future.

    When every row is valid, ``batch`` and ``raw`` are returned as they came (no copy).
    Raises ``ValueError`` if ``raw`` is not aligned with ``batch``.
    """
    _check_aligned(batch, raw)
    limit = now_us + max_future_us
    rules = [
        *_symbol_rules(batch, known_symbols),
        _future_rule(batch, "timestamp", limit, now_us, max_future_us),
        _future_rule(batch, "event_time", limit, now_us, max_future_us),
        _decimal_rule(batch, "price", RejectReason.NON_POSITIVE_PRICE, strict=True),
        _decimal_rule(batch, "quantity", RejectReason.NON_POSITIVE_QUANTITY, strict=True),
    ]
    return _apply(batch, raw, rules, source)


def validate_quotes(
    batch: pa.RecordBatch,
    raw: list[bytes],
    *,
    known_symbols: frozenset[str] | None,
    now_us: int,
    max_future_us: int,
    source: str,
) -> Validated:
    """Split a QUOTE batch into valid rows and rejects.

    Same contract as :func:`validate_trades`; the quote rules and their order, and why
    an empty side is rejected but a locked book is not, are in the module docstring.
    """
    _check_aligned(batch, raw)
    limit = now_us + max_future_us
    rules = [
        *_symbol_rules(batch, known_symbols),
        _future_rule(batch, "timestamp", limit, now_us, max_future_us),
        _decimal_rule(batch, "bid_price", RejectReason.NON_POSITIVE_PRICE, strict=True),
        _decimal_rule(batch, "ask_price", RejectReason.NON_POSITIVE_PRICE, strict=True),
        _decimal_rule(batch, "bid_quantity", RejectReason.NON_POSITIVE_QUANTITY, strict=False),
        _decimal_rule(batch, "ask_quantity", RejectReason.NON_POSITIVE_QUANTITY, strict=False),
        _crossed_rule(batch),
    ]
    return _apply(batch, raw, rules, source)


def _check_aligned(batch: pa.RecordBatch, raw: Sequence[bytes]) -> None:
    if len(raw) != batch.num_rows:
        raise ValueError(f"raw has {len(raw)} frames for a batch of {batch.num_rows} rows")


def _apply(batch: pa.RecordBatch, raw: list[bytes], rules: list[_Rule], source: str) -> Validated:
    if batch.num_rows == 0:
        return batch, raw, []
    any_failed = rules[0].failed
    for rule in rules[1:]:
        any_failed = pc.or_(any_failed, rule.failed)
    if not pc.any(any_failed).as_py():
        return batch, raw, []

    # Slow path: only rejected rows become Python objects.
    bad_rows: list[int] = pc.indices_nonzero(any_failed).to_pylist()
    failed_rows = [rule.failed.to_pylist() for rule in rules]
    received = pc.cast(batch.column("ingestion_timestamp"), pa.int64()).to_pylist()
    rejects: list[Reject] = []
    for row in bad_rows:
        rule = next(r for r, failed in zip(rules, failed_rows, strict=True) if failed[row])
        received_us = received[row]
        rejects.append(
            Reject(
                reason=rule.reason,
                detail=rule.describe(row),
                raw=raw[row],
                # A row without a receive time is a parser bug; -1 keeps the reject
                # (and its raw frame) instead of losing it over a missing stamp.
                received_us=received_us if received_us is not None else -1,
                source=source,
            )
        )
    keep = pc.invert(any_failed)
    kept_rows: list[int] = pc.indices_nonzero(keep).to_pylist()
    return batch.filter(keep), [raw[i] for i in kept_rows], rejects


def _symbol_rules(batch: pa.RecordBatch, known: frozenset[str] | None) -> list[_Rule]:
    if known is None:
        return []
    symbols = batch.column("symbol")
    failed = pc.invert(pc.fill_null(pc.is_in(symbols, value_set=_value_set(known)), False))
    return [
        _Rule(
            RejectReason.UNKNOWN_SYMBOL,
            failed,
            lambda row: f"symbol={_text(symbols[row].as_py())} is not a known symbol",
        )
    ]


@lru_cache(maxsize=8)
def _value_set(known: frozenset[str]) -> pa.Array:
    # The same frozenset is passed batch after batch; build its Arrow form once.
    return pa.array(sorted(known), type=pa.string())


def _future_rule(
    batch: pa.RecordBatch, field: str, limit_us: int, now_us: int, max_future_us: int
) -> _Rule:
    column = batch.column(field)
    limit = pa.scalar(limit_us, type=column.type)
    failed = pc.fill_null(pc.greater(column, limit), True)

    def describe(row: int) -> str:
        # As integers: a far-future time has no Python datetime (year > 9999).
        value_us = column.view(pa.int64())[row].as_py()
        if value_us is None:
            return f"{field}=null"
        return (
            f"{field}={_iso(value_us)} is {value_us - now_us} us after now={_iso(now_us)} "
            f"(limit {max_future_us} us)"
        )

    return _Rule(RejectReason.FUTURE_TIMESTAMP, failed, describe)


def _decimal_rule(
    batch: pa.RecordBatch, field: str, reason: RejectReason, *, strict: bool
) -> _Rule:
    column = batch.column(field)
    zero = pa.scalar(Decimal(0)).cast(column.type)
    ok = pc.greater(column, zero) if strict else pc.greater_equal(column, zero)
    failed = pc.invert(pc.fill_null(ok, False))
    bound = "> 0" if strict else ">= 0"
    return _Rule(
        reason, failed, lambda row: f"{field}={_decimal_text(column[row].as_py())} must be {bound}"
    )


def _crossed_rule(batch: pa.RecordBatch) -> _Rule:
    bid = batch.column("bid_price")
    ask = batch.column("ask_price")
    # Null prices are already failed by the price rules, which come first.
    failed = pc.fill_null(pc.greater(bid, ask), False)
    return _Rule(
        RejectReason.CROSSED_BOOK,
        failed,
        lambda row: (
            f"bid_price={_decimal_text(bid[row].as_py())} > "
            f"ask_price={_decimal_text(ask[row].as_py())} (crossed book)"
        ),
    )


def _decimal_text(value: Decimal | None) -> str:
    return "null" if value is None else f"{value:f}"


def _text(value: str | None) -> str:
    return "null" if value is None else repr(value)


def _iso(us: int) -> str:
    try:
        return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")[:-6] + "Z"
    except OverflowError:  # outside years 1-9999
        return f"{us} us since 1970-01-01"
